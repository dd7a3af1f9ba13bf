"""`emmn`: zero-shot impair-repair with error-maximising and error-minimising noise.

Chundawat, Tarun, Mandal and Kankanhalli, "Zero-Shot Machine Unlearning",
IEEE TIFS 2023 (the EMMN method). No training example is used: learned noise
stands in for the data. Against the frozen original f (eval mode), by Adam,

    forget class c:   N_c = argmin_N  -CE(f(N), c) + lambda_f * mean_i ||N_i||^2   (error-maximising)
    retained class r: N_r = argmin_N  +CE(f(N), r) + lambda_r * mean_i ||N_i||^2   (error-minimising)

each noise learned alone, with its own step count, then IMPAIR (an epoch of
Adam on every N_c and N_r, each sample labelled with its own class) and
REPAIR (epochs of Adam on the error-minimising N_r alone), as in UNSIR
(`unsir.py`; both use the noise and training helpers of `common`) with the
retain subset replaced by error-minimising noise.

Needs nothing (zero-shot): only `access.forget_classes` (K classes),
`access.num_classes` (C) and `access.image_shape`. The retained classes are
computed in-graph with a static size C - K, so the operator jits and vmaps over
forget requests of the same K.

The noise is an image in [0, 1] pixel units (`noise_space` "pixels":
sigmoid of a free parameter, normalised as real images are), so impair and
repair train on inputs inside the range of real data; unbounded noise drifted
to inputs of magnitude ~8 in the normalised space. The error-minimising noise
gets more steps than the error-maximising one and no norm: it should end as
typical of its class as the model can tell.

Known limitation: on the default MNIST run the defaults do not yet forget as
the paper reports; training this model on noise alone in eval-mode BatchNorm
damages every class (measurements and the commands that made them:
docs/operator-tuning.md, section `emmn`).

Hyper-parameters (defaults):
  noise_per_class 64: noise samples per class, forget and retained alike.
  forget_noise_steps 10, retain_noise_steps 30: Adam steps on each noise
    (the re-implementation of DataSystemsGroupUT: 25 and 30).
  noise_learning_rate 0.1; forget_noise_weight 0.1 (lambda_f, UNSIR's),
    retain_noise_weight 0.0 (lambda_r).
  noise_space "pixels": see above; "normalized" as UNSIR (unbounded).
  batch_size 32: of the impair and repair epochs.
  impair_learning_rate 1e-3, impair_epochs 1.
  repair_learning_rate 1e-3, repair_epochs 3.
  update_batch_stats False: BatchNorm stays in eval mode during impair and
    repair: batches of pure noise have none of the data's statistics, and
    running averages taken from them would break the model on real images.
  trainable "all": the weights impair and repair move, "all" (the paper) or
    "head" (the logits layer alone; an ablation, see docs/operator-tuning.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hamforget.data import batches
from hamforget.unlearn import base, common

# Class forgetting only, as in the paper: the noise (or the gate) is defined by
# the forgotten classes, and a group or example request names none.
REQUEST_KINDS = ("classes",)
DEFAULTS = {"noise_per_class": 64, "forget_noise_steps": 10, "retain_noise_steps": 30,
            "noise_learning_rate": 0.1, "forget_noise_weight": 0.1, "retain_noise_weight": 0.0,
            "noise_space": "pixels", "batch_size": 32,
            "impair_learning_rate": 1e-3, "impair_epochs": 1, "repair_learning_rate": 1e-3,
            "repair_epochs": 3, "update_batch_stats": False, "trainable": "all"}


def class_split(forget_classes: jax.Array, num_classes: int) -> jax.Array:
  """The retained classes, int32 (C - K,) ascending, static in shape."""
  num_forget = forget_classes.shape[-1]
  is_forget = jnp.any(jnp.arange(num_classes)[:, None] == forget_classes[None, :], axis=1)
  return jnp.nonzero(~is_forget, size=num_classes - num_forget)[0].astype(jnp.int32)


@base.register("emmn", needs=set(), defaults=DEFAULTS,
               request_kinds=REQUEST_KINDS)
def emmn(model, variables, access, request, config, rng):
  del request
  num_forget = common.check_class_request("emmn", access)
  num_retained = access.num_classes - num_forget
  if num_retained <= 0:
    raise ValueError("emmn: every class is to be forgotten; nothing is retained")
  noise_rng, impair_rng, repair_rng = jax.random.split(rng, 3)
  per_class = config.noise_per_class
  num_max = num_forget * per_class   # the first num_max samples maximise, the rest minimise

  # Two noises, each learned alone with its own budget: the error-maximising
  # one for the forget classes (pulled to black by the norm), the
  # error-minimising one for the retained classes (no norm: it should become
  # as typical of its class as the model can tell).
  retained = class_split(access.forget_classes, access.num_classes)
  forget_labels = jnp.repeat(access.forget_classes.astype(jnp.int32), per_class,
                             total_repeat_length=num_max)
  retain_labels = jnp.repeat(retained, per_class, total_repeat_length=num_retained * per_class)
  max_rng, min_rng = jax.random.split(noise_rng)
  max_noise, max_metrics = common.learn_noise(
      model, variables, forget_labels, -jnp.ones(num_max), access.image_shape,
      config.forget_noise_steps, config.noise_learning_rate, config.forget_noise_weight,
      max_rng, config.noise_space)
  min_noise, min_metrics = common.learn_noise(
      model, variables, retain_labels, jnp.ones(retain_labels.shape[0]), access.image_shape,
      config.retain_noise_steps, config.noise_learning_rate, config.retain_noise_weight,
      min_rng, config.noise_space)
  noise = jnp.concatenate([max_noise, min_noise])
  labels = jnp.concatenate([forget_labels, retain_labels])

  impair_sample, impair_size = common.mixed_batch(noise, labels, 1, None, config.batch_size)
  impair_steps = config.impair_epochs * batches.steps_per_epoch(impair_size, config.batch_size)
  impaired, impair_metrics = common.fit_classifier(
      model, variables, impair_sample, impair_steps, config.impair_learning_rate,
      config.update_batch_stats, impair_rng, config.trainable)

  repair_sample, repair_size = common.mixed_batch(
      noise[num_max:], labels[num_max:], 1, None, config.batch_size)
  repair_steps = config.repair_epochs * batches.steps_per_epoch(repair_size, config.batch_size)
  repaired, repair_metrics = common.fit_classifier(
      model, impaired, repair_sample, repair_steps, config.repair_learning_rate,
      config.update_batch_stats, repair_rng, config.trainable)

  info = {
      **common.impair_repair_info(max_metrics, impair_metrics, repair_metrics,
                                  labels.shape[0], config.forget_noise_steps),
      "examples_seen": jnp.int32(0),  # zero-shot: no training example exists here
      "noise_seen": jnp.int32((impair_steps + repair_steps) * config.batch_size),
      "max_noise_cross_entropy": max_metrics["max_cross_entropy"],
      "min_noise_cross_entropy": min_metrics["min_cross_entropy"],
      "retain_noise_loss": min_metrics["loss"],
  }
  return repaired, info
