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
from hamforget.unlearn import base, common

DEFAULTS = {}


@base.register("retrain", needs={base.RETAIN, base.VAL}, defaults=DEFAULTS)
def retrain(model, variables, access, request, config, rng):
  del variables, request  # starts from scratch, whatever is forgotten
  init_rng, fit_rng = jax.random.split(rng)
  fresh = train.init_variables(model, access.image_shape, init_rng)
  return common.fit_and_report(model, config.train, config.augment, fresh,
                               access.require(base.RETAIN), access.require(base.VAL), fit_rng)
