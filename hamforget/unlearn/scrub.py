"""`scrub`: alternate steps away from the teacher on forget data and towards it on retain data.

SCRUB of Kurmanji et al. NeurIPS 2023, "Towards Unbounded Machine
Unlearning" (reference: meghdadk/SCRUB). The teacher is the original model,
the student starts as a copy of it. With the distillation divergence

    d(x; theta) = T^2 * KL(softmax(f_orig(x) / T) || softmax(f_theta(x) / T)),

each epoch e = 1..num_epochs runs, if e <= msteps, a "max" pass over the
forget set, descending on

    -mean over B_f of d(x; theta),

then a "min" pass of retain batches, descending on

    mean over B_r of gamma * CE(f_theta(x), y) + alpha * d(x; theta).

All steps share one SGD optimiser (and its momentum), as in the reference.
The whole schedule is one `lax.scan`; each step picks its phase with
`lax.cond` on the (static) schedule, so only the chosen phase's pass runs.

BatchNorm: the student runs in train mode (the reference's `train()`), the
teacher in eval mode.

`info` holds one value per step of `loss`, `forget_kl` (NaN on min steps),
`retain_ce` and `retain_kl` (NaN on max steps), and `is_max_step`.

The min pass is the reference's: a full pass over the retain set (at batch
64 here, the reference's 128). A pass shortened to `min_steps` batches is
cheaper but repairs less than the max passes damage (docs/operator-tuning.md,
section `scrub`).

Hyper-parameters (defaults):
  learning_rate: 5e-4, constant SGD (the reference's).
  momentum: 0.9; weight_decay: 5e-4 on kernels (the reference's).
  alpha: 0.001, the weight of the KL to the teacher on retain (the reference's).
  gamma: 0.99, the weight of the retain cross-entropy (the reference's).
  temperature: 4.0 (the reference's kd_T).
  msteps: 2, the epochs that start with a max pass (the reference's).
  num_epochs: 3 (the reference's sgda_epochs).
  batch_size: 64 retain examples per min step (the reference: 128).
  forget_batch_size: 32 forget examples per max step (the reference's).
  min_steps: 0, a full pass over retain per min pass (N > 0: N batches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hamforget import train
from hamforget.data import batches
from hamforget.unlearn import base, common

DEFAULTS = {"learning_rate": 5e-4, "momentum": 0.9, "weight_decay": 5e-4, "alpha": 0.001,
            "gamma": 0.99, "temperature": 4.0, "msteps": 2, "num_epochs": 3, "batch_size": 64,
            "forget_batch_size": 32, "min_steps": 0}


def schedule(num_epochs: int, msteps: int, max_steps: int, min_steps: int):
  """Static per-step arrays: is it a max step, and its index within its phase's stream."""
  is_max = np.concatenate([
      np.concatenate([np.ones(max_steps if epoch < msteps else 0, bool),
                      np.zeros(min_steps, bool)])
      for epoch in range(num_epochs)])
  phase_step = np.where(is_max, np.cumsum(is_max) - 1, np.cumsum(~is_max) - 1)
  return is_max, phase_step.astype(np.int32)


@base.register("scrub", needs={base.RETAIN, base.FORGET}, defaults=DEFAULTS)
def scrub(model, variables, access, request, config, rng):
  del request
  retain, forget = access.require(base.RETAIN), access.require(base.FORGET)
  weights = common.retain_class_weights(config, retain, access.num_classes)
  batch_size, forget_batch_size = config.batch_size, config.forget_batch_size
  temperature = config.temperature
  max_steps = batches.steps_per_epoch(forget.size, forget_batch_size)
  min_steps = config.min_steps or batches.steps_per_epoch(retain.size, batch_size)
  is_max_np, phase_step_np = schedule(config.num_epochs, config.msteps, max_steps, min_steps)
  num_steps, num_max = len(is_max_np), int(np.sum(is_max_np))
  is_max, phase_step = jnp.asarray(is_max_np), jnp.asarray(phase_step_np)
  nan = jnp.float32(jnp.nan)

  def divergence(params, batch_stats, images):
    teacher_logits, _ = train.apply_model(model, variables, images, train=False)
    logits, batch_stats = train.apply_model(
        model, {"params": params, "batch_stats": batch_stats}, images, train=True)
    teacher_probs = jax.lax.stop_gradient(jax.nn.softmax(teacher_logits / temperature))
    kl = temperature ** 2 * common.kl_divergence(teacher_probs, logits, temperature)
    return logits, batch_stats, kl.mean()

  def max_loss(params, batch_stats, rng, step):
    images, _ = batches.sample_batch(forget, jax.random.fold_in(rng, 1), step,
                                     forget_batch_size, config.augment)
    _, batch_stats, kl = divergence(params, batch_stats, images)
    return -kl, (batch_stats, {"forget_kl": kl, "retain_kl": nan, "retain_ce": nan})

  def min_loss(params, batch_stats, rng, step):
    images, labels = batches.sample_batch(retain, jax.random.fold_in(rng, 0), step, batch_size,
                                          config.augment)
    logits, batch_stats, kl = divergence(params, batch_stats, images)
    ce = train.weighted_cross_entropy(logits, labels, weights)
    return config.gamma * ce + config.alpha * kl, (
        batch_stats, {"forget_kl": nan, "retain_kl": kl, "retain_ce": ce})

  def loss_fn(params, batch_stats, rng, step):
    return jax.lax.cond(is_max[step], max_loss, min_loss,
                        params, batch_stats, rng, phase_step[step])

  tx = common.sgd(config.learning_rate, config.momentum, config.weight_decay)
  new_variables, info = common.minimize_and_report(
      loss_fn, variables, tx, rng, num_steps,
      num_max * forget_batch_size + (num_steps - num_max) * batch_size)
  return new_variables, {**info, "is_max_step": is_max}
