"""`retrain`: train from scratch on the retain set with the original recipe.

The gold standard of unlearning: a model that never saw the forget set. Every
metric of every other operator is read against this one.

Hyper-parameters: none of its own; it uses the experiment's `train` and
`augment` sections (optimizer, learning rate, epochs, batch size, patience),
with early stopping on the validation split.
"""

from __future__ import annotations

import jax

from hamforget import train
from hamforget.unlearn import base


@base.register("retrain", needs={base.RETAIN, base.VAL}, defaults={})
def retrain(model, variables, access, request, config, rng):
  del variables, request  # starts from scratch, whatever is forgotten
  init_rng, fit_rng = jax.random.split(rng)
  retain = access.require(base.RETAIN)
  fresh = train.init_variables(model, access.image_shape, init_rng)
  spec = train.make_fit_spec(model, config.train, config.augment, retain.size)
  new_variables, info = train.fit_in_graph(spec, fresh, retain, access.require(base.VAL), fit_rng)
  per_epoch = train.steps_per_epoch(retain.size, spec.batch_size)
  info["steps"] = info["epochs"] * per_epoch
  info["examples_seen"] = info["steps"] * spec.batch_size
  return new_variables, info
