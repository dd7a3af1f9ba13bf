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

from hamforget.unlearn import base, common

DEFAULTS = {"learning_rate": 0.01, "num_epochs": 5, "patience": 2, "warmup_epochs": 0.0}


@base.register("finetune", needs={base.RETAIN, base.VAL}, defaults=DEFAULTS)
def finetune(model, variables, access, request, config, rng):
  del request
  recipe = common.recipe(config, *DEFAULTS)  # each of its hyper-parameters overrides the original's
  return common.fit_and_report(model, recipe, config.augment, variables,
                               access.require(base.RETAIN), access.require(base.VAL), rng)
