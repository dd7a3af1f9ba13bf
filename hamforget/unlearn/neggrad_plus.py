"""`neggrad_plus`: descend on the retain loss while ascending on the forget loss.

NegGrad+ of Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning"
(NeurIPS 2023; reference code `train_negrad` in meghdadk/SCRUB). Each step
draws a retain batch B_r and a forget batch B_f and minimises

    L(theta) = alpha * CE(B_r; theta) - (1 - alpha) * CE(B_f; theta)

with SGD. Plain NegGrad (pure ascent, alpha = 0) destroys the model; the
retain term keeps it a classifier while the forget loss is pushed up.

Steps are counted in passes over the retain set, the forget set being cycled
through alongside, as in the reference (`zip(retain_loader, cycle(forget_loader))`).

BatchNorm: the student runs in train mode (as the reference's `model.train()`),
on one forward pass over the concatenated batch [B_r; B_f] rather than the
reference's two passes: one program per step instead of two (faster to compile
and run), with batch statistics taken over the mixed batch.

Hyper-parameters (defaults; the measurements behind them are in
docs/operator-tuning.md, section `neggrad_plus`):
  alpha: 0.95, the weight of the retain loss (the forget loss gets 1 - alpha).
  learning_rate: 0.025, constant SGD. The reference uses 0.01 for several
    epochs. The ascent is unbounded and has a cliff: a confident original's
    forget loss barely moves (its gradient vanishes with the loss), then runs
    away and takes the retain accuracy with it; the default sits before the
    cliff at one epoch.
  momentum: 0.9.
  weight_decay: 5e-4 on kernels.
  num_epochs: 1.0 passes over the retain set (fractions allowed): on the
    default MNIST run a tenth of the cost of retraining (12 epochs).
  batch_size: 128 retain examples per step.
  forget_batch_size: 32 forget examples per step (the reference's 128 / 32
    split of the SCRUB notebooks).
"""

from __future__ import annotations

import jax.numpy as jnp

from hamforget import train
from hamforget.unlearn import base, common

DEFAULTS = {"alpha": 0.95, "learning_rate": 0.025, "momentum": 0.9, "weight_decay": 5e-4,
            "num_epochs": 1.0, "batch_size": 128, "forget_batch_size": 32}


@base.register("neggrad_plus", needs={base.RETAIN, base.FORGET}, defaults=DEFAULTS)
def neggrad_plus(model, variables, access, request, config, rng):
  del request
  retain, forget = access.require(base.RETAIN), access.require(base.FORGET)
  batch_size, forget_batch_size = config.batch_size, config.forget_batch_size

  def loss_fn(params, batch_stats, rng, step):
    (retain_images, retain_labels), (forget_images, forget_labels) = common.paired_batch(
        retain, forget, rng, step, batch_size, forget_batch_size, config.augment)
    logits, batch_stats = train.apply_model(
        model, {"params": params, "batch_stats": batch_stats},
        jnp.concatenate([retain_images, forget_images]), train=True)
    retain_loss = train.cross_entropy(logits[:batch_size], retain_labels).mean()
    forget_loss = train.cross_entropy(logits[batch_size:], forget_labels).mean()
    loss = config.alpha * retain_loss - (1.0 - config.alpha) * forget_loss
    return loss, (batch_stats, {"retain_loss": retain_loss, "forget_loss": forget_loss})

  tx = common.sgd(config.learning_rate, config.momentum, config.weight_decay)
  num_steps = common.num_steps_for(config.num_epochs, retain.size, batch_size)
  return common.minimize_and_report(loss_fn, variables, tx, rng, num_steps,
                                    num_steps * (batch_size + forget_batch_size))
