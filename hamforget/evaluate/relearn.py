"""Relearning curves behind the Anamnesis Index, each one XLA program.

A model is fine-tuned with Adam on a small set of forget examples and, before
the first step and after every step, its eval-mode accuracy is measured on held-out
forget examples, and on held-out examples of the retained classes (what the
relearning costs elsewhere). A model that still holds the forgotten knowledge
climbs back in a few steps; one that never had it (the retrained model) needs
many.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from hamforget import sharding, train
from hamforget.data import batches
from hamforget.data.batches import DeviceData
from hamforget.train import Variables

# `stop_at` that no accuracy reaches: the whole budget is run.
NEVER = float("nan")


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def heldout_accuracy(model, variables: Variables, data: DeviceData, batch_size: int) -> jax.Array:
  """Eval-mode accuracy, float32 scalar in [0, 1], of `variables` on `data`.

  Runs once per relearning step, so a held-out set smaller than a batch is
  not padded to `batch_size` (only to a multiple of the data-parallel size).
  """
  shards = sharding.data_size()
  batch_size = min(batch_size, -(-data.size // shards) * shards)
  logits = train.predict(model, variables, data.images, batch_size)
  return jnp.mean(jnp.argmax(logits, -1) == data.labels)


@functools.partial(jax.jit, static_argnames=(
    "model", "num_steps", "batch_size", "learning_rate", "eval_batch_size"))
def relearn_curve(model, variables: Variables, relearn: DeviceData, holdout: DeviceData,
                  retain_holdout: DeviceData, rng: jax.Array, stop_at: jax.Array | float = NEVER,
                  *, num_steps: int, batch_size: int, learning_rate: float,
                  eval_batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Held-out forget and retain accuracy after 0, 1, ..., num_steps relearning steps.

  Each step is one Adam step (fresh optimiser state, constant learning rate)
  on a batch of `relearn`, without augmentation, BatchNorm in train mode as in
  training, then both accuracies are measured. The loop is one
  `lax.while_loop`, so the whole curve costs one dispatch, and models of the
  same architecture share one compiled program (`stop_at` is traced). Give
  every model the same `rng` so they relearn on the same batches.

  The loop stops after the first step whose forget accuracy reaches
  `stop_at` (the Anamnesis Index's target): the index needs no step past it,
  and the held-out measurements are most of a step's cost. Until then the
  curve is the one the whole budget would give, step for step.

  Args:
    model: the Flax module (static).
    variables: the model to relearn from; not modified.
    relearn: the examples trained on (cycled when fewer than a batch).
    holdout: the forget examples the accuracy is measured on.
    retain_holdout: examples of the retained classes, measured at the same steps.
    rng: key of the batch order.
    stop_at: float32 scalar, the forget accuracy to stop at (checked from step
      1 on, as the reference counts); NaN, the default, runs the whole budget.
    num_steps: the budget of steps (static).
    batch_size, eval_batch_size: images per training / evaluation batch.
    learning_rate: Adam's step size.

  Returns:
    (forget, retain), float32 (num_steps + 1,) each: entry s is the accuracy
    on `holdout` / `retain_holdout` after s steps, so entry 0 is the model as
    given; NaN after the step that reached `stop_at`.
  """
  tx = optax.adam(learning_rate)

  def measured(params, batch_stats):
    after = {"params": params, "batch_stats": batch_stats}
    return (heldout_accuracy(model, after, holdout, eval_batch_size),
            heldout_accuracy(model, after, retain_holdout, eval_batch_size))

  def loss_fn(params, batch_stats, rng, step):
    images, labels = batches.sample_batch(relearn, rng, step, batch_size)
    logits, batch_stats = train.apply_model(
        model, {"params": params, "batch_stats": batch_stats}, images, train=True)
    return train.cross_entropy(logits, labels).mean(), (batch_stats, {})

  descend = train.optimizer_step(loss_fn, tx)

  def unfinished(carry) -> jax.Array:
    step, _, _, _, forget, _ = carry
    return (step < num_steps) & ~((step >= 1) & (forget[step] >= stop_at))

  def relearn_step(carry):
    step, params, batch_stats, opt_state, forget, retain = carry
    params, batch_stats, opt_state, _, _ = descend(params, batch_stats, opt_state, rng, step)
    forget_accuracy, retain_accuracy = measured(params, batch_stats)
    return (step + 1, params, batch_stats, opt_state, forget.at[step + 1].set(forget_accuracy),
            retain.at[step + 1].set(retain_accuracy))

  params, batch_stats = variables["params"], variables["batch_stats"]
  unmeasured = jnp.full((num_steps + 1,), jnp.nan, jnp.float32)
  forget_accuracy, retain_accuracy = measured(params, batch_stats)
  carry = (jnp.int32(0), params, batch_stats, tx.init(params),
           unmeasured.at[0].set(forget_accuracy), unmeasured.at[0].set(retain_accuracy))
  *_, forget, retain = jax.lax.while_loop(unfinished, relearn_step, carry)
  return forget, retain
