"""Relearning curves behind the Anamnesis Index, each one XLA program.

A model is fine-tuned with Adam on a small set of forget examples and, before
every step and after the last, its eval-mode accuracy is measured on held-out
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
                  retain_holdout: DeviceData, rng: jax.Array, *, num_steps: int,
                  batch_size: int, learning_rate: float,
                  eval_batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Held-out forget and retain accuracy after 0, 1, ..., num_steps relearning steps.

  Each step is one Adam step (fresh optimiser state, constant learning rate)
  on a batch of `relearn`, without augmentation, BatchNorm in train mode as in
  training. The loop is one `lax.scan` (`train.minimize`), so the whole curve
  costs one dispatch, and models of the same architecture share one compiled
  program. Give every model the same `rng` so they relearn on the same batches.

  Args:
    model: the Flax module (static).
    variables: the model to relearn from; not modified.
    relearn: the examples trained on (cycled when fewer than a batch).
    holdout: the forget examples the accuracy is measured on.
    retain_holdout: examples of the retained classes, measured at the same steps.
    rng: key of the batch order.
    num_steps: the budget of steps (static).
    batch_size, eval_batch_size: images per training / evaluation batch.
    learning_rate: Adam's step size.

  Returns:
    (forget, retain), float32 (num_steps + 1,) each: entry s is the accuracy
    on `holdout` / `retain_holdout` after s steps, so entry 0 is the model as
    given.
  """
  tx = optax.adam(learning_rate)

  def loss_fn(params, batch_stats, rng, step):
    # Measured on the parameters before this step's update, so the stacked
    # metric of step s is the accuracy after s steps; no gradient flows here.
    before = {"params": jax.lax.stop_gradient(params), "batch_stats": batch_stats}
    accuracy = heldout_accuracy(model, before, holdout, eval_batch_size)
    retain_accuracy = heldout_accuracy(model, before, retain_holdout, eval_batch_size)
    images, labels = batches.sample_batch(relearn, rng, step, batch_size)
    logits, batch_stats = train.apply_model(
        model, {"params": params, "batch_stats": batch_stats}, images, train=True)
    loss = train.cross_entropy(logits, labels).mean()
    return loss, (batch_stats, {"heldout_accuracy": accuracy,
                                "retain_accuracy": retain_accuracy})

  params, batch_stats, _, metrics = train.minimize(
      loss_fn, variables["params"], variables["batch_stats"], tx,
      tx.init(variables["params"]), rng, 0, num_steps)
  last = {"params": params, "batch_stats": batch_stats}
  return (jnp.concatenate([metrics["heldout_accuracy"],
                           heldout_accuracy(model, last, holdout, eval_batch_size)[None]]),
          jnp.concatenate([metrics["retain_accuracy"],
                           heldout_accuracy(model, last, retain_holdout, eval_batch_size)[None]]))
