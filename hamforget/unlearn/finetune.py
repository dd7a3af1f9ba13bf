"""`finetune`: continue training the original on the retain set only.

Catastrophic forgetting as unlearning (the seed's baseline; Golatkar et al.
2020, Warnecke et al. 2023): the forget set is never shown again and fades.
Uses the experiment's augmentation (flips, rotation, colour jitter) and early
stopping on the validation split.

Hyper-parameters (defaults): learning_rate 0.01 (peak, warmup then cosine, the
original's optimizer), num_epochs 5, patience 2 (epochs without a better
validation loss; 0 = off), warmup_epochs 0.
"""

from __future__ import annotations

from hamforget import train
from hamforget.unlearn import base


@base.register("finetune", needs={base.RETAIN, base.VAL},
               defaults={"learning_rate": 0.01, "num_epochs": 5, "patience": 2,
                         "warmup_epochs": 0.0})
def finetune(model, variables, access, request, config, rng):
  del request
  retain = access.require(base.RETAIN)
  recipe = base.recipe(config, "learning_rate", "num_epochs", "patience", "warmup_epochs")
  spec = train.make_fit_spec(model, recipe, config.augment, retain.size)
  new_variables, info = train.fit_in_graph(spec, variables, retain, access.require(base.VAL), rng)
  info["steps"] = info["epochs"] * train.steps_per_epoch(retain.size, spec.batch_size)
  info["examples_seen"] = info["steps"] * spec.batch_size
  return new_variables, info
