"""Training over device-resident data: losses, optimisers, scanned steps, fit loops.

Everything here is a pure function of pytrees. The unit of work is `minimize`:
`num_steps` optimiser steps inside one `lax.scan`, so a whole epoch (or a whole
unlearning phase) is one XLA dispatch with no host round-trip per step.
Batches are gathered by index from uint8 arrays already on the device, then
normalised and augmented inside the same program.

`fit` (host loop over epochs, checkpoints, progress) and `fit_in_graph`
(`lax.while_loop` over epochs, jittable and vmappable whole, used by the
`retrain` and `finetune` operators) share one epoch body and one stopping rule,
so both give the same parameters for the same inputs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hamforget import sharding
from hamforget.data import augment as augment_lib

Variables = dict[str, Any]   # {"params": ..., "batch_stats": ...}


@flax.struct.dataclass
class DeviceData:
  """A labelled split resident on the device(s).

  Attributes:
    images: uint8 (N, H, W, C); normalised and augmented per batch inside jit.
    labels: int32 (N,).
  """
  images: jax.Array
  labels: jax.Array

  @property
  def size(self) -> int:
    return self.images.shape[0]


def to_device(images: np.ndarray, labels: np.ndarray, mesh=None) -> DeviceData:
  """Copies a split to the device(s); replicated over `mesh` when given."""
  data = DeviceData(np.asarray(images, np.uint8), np.asarray(labels, np.int32))
  if mesh is not None:
    return sharding.replicate(data, mesh)
  return jax.device_put(data)


# ----------------------------------------------------------------------------
# Model application and losses.

def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy in nats: logits (B, K), int labels (B,) -> (B,)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def apply_model(model, variables: Variables, images: jax.Array, train: bool):
  """Logits (B, K) float32 and the batch statistics after this batch.

  In train mode BatchNorm uses and updates batch statistics; in eval mode it
  uses the running averages, which are returned unchanged.
  """
  if train:
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  return model.apply(variables, images, train=False), variables["batch_stats"]


def init_variables(model, image_shape: tuple[int, int, int], rng: jax.Array) -> Variables:
  """Fresh variables for images of shape (H, W, C), as a plain dict."""
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


# ----------------------------------------------------------------------------
# Batches from device-resident data.

def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per pass over the data (the ragged tail is dropped), at least 1."""
  return max(1, num_examples // batch_size)


def batch_indices(rng: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """Indices (batch_size,) of global step `step`: epoch-wise shuffles, without replacement.

  Epoch e uses the permutation drawn from fold_in(rng, e), so any step's batch
  is a pure function of (rng, step): resuming mid-run needs no sampler state.
  """
  per_epoch = steps_per_epoch(num_examples, batch_size)
  epoch, position = jnp.divmod(step, per_epoch)
  order = jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)
  if num_examples < batch_size:  # a tiny split: cycle through it
    order = jnp.tile(order, -(-batch_size // num_examples))
  return jax.lax.dynamic_slice(order, (position * batch_size,), (batch_size,))


def prepare_batch(images: jax.Array, labels: jax.Array, rng: jax.Array, step: jax.Array,
                  augment_config=None) -> tuple[jax.Array, jax.Array]:
  """uint8 images (B, H, W, C) -> normalised, optionally augmented float32, sharded.

  The augmentation key is fold_in(fold_in(rng, 1), step): a pure function of
  the step, like the batch indices.
  """
  images = augment_lib.normalize(images)
  if augment_config is not None:
    images = augment_lib.augment(jax.random.fold_in(jax.random.fold_in(rng, 1), step),
                                 images, augment_config)
  return sharding.shard_batch((images, labels))


def sample_batch(data: DeviceData, rng: jax.Array, step: jax.Array, batch_size: int,
                 augment_config=None) -> tuple[jax.Array, jax.Array]:
  """The normalised (and, given a config, augmented) batch of `step`.

  Returns images float32 (B, H, W, C) in [-1, 1] and labels int32 (B,), both
  sharded over the `data` mesh axis when a mesh is in context.
  """
  index = batch_indices(jax.random.fold_in(rng, 0), step, data.size, batch_size)
  return prepare_batch(data.images[index], data.labels[index], rng, step, augment_config)


# ----------------------------------------------------------------------------
# Optimisation.

LossFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, tuple[Any, dict]]]


def minimize(loss_fn: LossFn, params, aux, tx: optax.GradientTransformation,
             opt_state, rng: jax.Array, first_step: jax.Array | int, num_steps: int):
  """Runs `num_steps` optimiser steps inside one `lax.scan`.

  Args:
    loss_fn: (params, aux, rng, step) -> (loss, (new_aux, metrics)); `aux` is
      state that is not differentiated (BatchNorm statistics, for instance) and
      `metrics` a dict of scalars recorded at every step.
    params: the pytree to optimise.
    aux: carried, non-differentiated state.
    tx: an optax transformation; `opt_state` its state for `params`.
    rng: base key; the loss receives it unchanged with the global step, and
      derives per-step randomness by fold_in, so runs resume exactly.
    first_step: global index of the first step (for schedules and batches).
    num_steps: static number of steps.

  Returns:
    (params, aux, opt_state, metrics) with metrics stacked to (num_steps,).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(carry, step):
    params, aux, opt_state = carry
    (loss, (aux, metrics)), grads = grad_fn(params, aux, rng, step)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, aux, opt_state), {"loss": loss, **metrics}

  steps = jnp.arange(num_steps) + first_step
  (params, aux, opt_state), metrics = jax.lax.scan(step_fn, (params, aux, opt_state), steps)
  return params, aux, opt_state, metrics


def make_optimizer(train_config, total_steps: int, steps_per_epoch_: int) -> optax.GradientTransformation:
  """SGD with momentum or AdamW, linear warmup then cosine decay to zero.

  Weight decay applies to kernels only (not BatchNorm scales or biases), the
  usual recipe for ResNets.
  """
  warmup = int(train_config.warmup_epochs * steps_per_epoch_)
  if warmup:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train_config.learning_rate, warmup, max(total_steps, warmup + 1))
  else:  # the same curve; optax warns about a zero-length warmup
    schedule = optax.cosine_decay_schedule(train_config.learning_rate, max(total_steps, 1))
  kernels_only = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if train_config.optimizer == "sgd":
    return optax.chain(
        optax.add_decayed_weights(train_config.weight_decay, mask=kernels_only),
        optax.sgd(schedule, momentum=train_config.momentum, nesterov=True))
  if train_config.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=train_config.weight_decay, mask=kernels_only)
  raise ValueError(f"train.optimizer={train_config.optimizer!r}: expected 'sgd' or 'adamw'")


def supervised_loss(model, params, batch_stats, images, labels):
  """Mean cross-entropy of a prepared batch, BatchNorm in train mode.

  Returns (loss, (new batch_stats, {"accuracy": ...})), the `minimize` shape.
  """
  logits, batch_stats = apply_model(
      model, {"params": params, "batch_stats": batch_stats}, images, train=True)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return cross_entropy(logits, labels).mean(), (batch_stats, {"accuracy": accuracy})


def classification_loss(model, batch_size: int, data: DeviceData, augment_config=None):
  """A `minimize` loss: cross-entropy on the sampled batch of each step."""

  def loss_fn(params, batch_stats, rng, step):
    images, labels = sample_batch(data, rng, step, batch_size, augment_config)
    return supervised_loss(model, params, batch_stats, images, labels)

  return loss_fn


# ----------------------------------------------------------------------------
# Evaluation.

def predict(model, variables: Variables, images: jax.Array, batch_size: int) -> jax.Array:
  """Eval-mode logits (N, K) float32 for uint8 images (N, H, W, C), in fixed-size batches.

  The tail is padded to a full batch so one compiled program serves any N of
  the same batch size; `lax.map` keeps it one dispatch.
  """
  n = images.shape[0]
  num_batches = -(-n // batch_size)
  padded = jnp.pad(images, [(0, num_batches * batch_size - n)] + [(0, 0)] * 3)
  batches = padded.reshape(num_batches, batch_size, *images.shape[1:])

  def logits_of(batch):
    batch = sharding.shard_batch(augment_lib.normalize(batch))
    return apply_model(model, variables, batch, train=False)[0]

  logits = jax.lax.map(logits_of, batches)
  return logits.reshape(num_batches * batch_size, -1)[:n]


def mean_loss_and_accuracy(model, variables, data: DeviceData, batch_size: int):
  """(mean cross-entropy, accuracy) of eval-mode predictions on `data`."""
  logits = predict(model, variables, data.images, batch_size)
  return (cross_entropy(logits, data.labels).mean(),
          jnp.mean(jnp.argmax(logits, -1) == data.labels))


# ----------------------------------------------------------------------------
# Fitting with early stopping: one epoch body, driven by the host or in-graph.

class FitCarry(NamedTuple):
  """Everything a fit needs to continue; also what a checkpoint holds.

  Attributes:
    epoch: int32 scalar, epochs completed.
    params, batch_stats, opt_state: the current training state.
    best: variables with the lowest validation loss so far.
    best_val_loss: float32 scalar; inf before the first epoch.
    bad_epochs: int32 scalar, epochs since the last improvement.
    train_loss, val_loss, val_accuracy: float32 (num_epochs,), NaN until run.
  """
  epoch: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  best: Variables
  best_val_loss: jax.Array
  bad_epochs: jax.Array
  train_loss: jax.Array
  val_loss: jax.Array
  val_accuracy: jax.Array


@flax.struct.dataclass
class FitSpec:
  """The static part of a fit: what to train, how, on how much data."""
  model: Any = flax.struct.field(pytree_node=False)
  tx: Any = flax.struct.field(pytree_node=False)
  batch_size: int = flax.struct.field(pytree_node=False)
  eval_batch_size: int = flax.struct.field(pytree_node=False)
  num_epochs: int = flax.struct.field(pytree_node=False)
  patience: int = flax.struct.field(pytree_node=False)
  augment_config: Any = flax.struct.field(pytree_node=False)


def make_fit_spec(model, train_config, augment_config, num_train: int) -> FitSpec:
  """A FitSpec from the `train` and `augment` config sections."""
  per_epoch = steps_per_epoch(num_train, train_config.batch_size)
  tx = make_optimizer(train_config, per_epoch * train_config.num_epochs, per_epoch)
  return FitSpec(model, tx, train_config.batch_size, train_config.eval_batch_size,
                 train_config.num_epochs, train_config.patience,
                 ml_collections.FrozenConfigDict(augment_config))


def init_fit(spec: FitSpec, variables: Variables) -> FitCarry:
  """The carry before the first epoch, starting from `variables`."""
  nan = jnp.full((spec.num_epochs,), jnp.nan, jnp.float32)
  carry = FitCarry(
      epoch=jnp.int32(0), params=variables["params"], batch_stats=variables["batch_stats"],
      opt_state=spec.tx.init(variables["params"]), best=variables,
      best_val_loss=jnp.float32(jnp.inf), bad_epochs=jnp.int32(0),
      train_loss=nan, val_loss=nan, val_accuracy=nan)
  # Every leaf gets a buffer of its own: `fit` donates the carry to each epoch,
  # and a buffer shared by two leaves (or with the caller's variables) cannot
  # be donated twice.
  return jax.tree.map(lambda x: jnp.array(x, copy=True), carry)


def end_epoch(spec: FitSpec, carry: FitCarry, params, batch_stats, opt_state,
              train_loss: jax.Array, val: DeviceData) -> FitCarry:
  """Validates the epoch's parameters and updates the early-stopping state."""
  variables = {"params": params, "batch_stats": batch_stats}
  val_loss, val_accuracy = mean_loss_and_accuracy(spec.model, variables, val, spec.eval_batch_size)
  improved = val_loss < carry.best_val_loss
  best = jax.tree.map(lambda new, old: jnp.where(improved, new, old), variables, carry.best)
  record = lambda history, value: history.at[carry.epoch].set(value)
  return FitCarry(
      epoch=carry.epoch + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      # `where`, not `minimum`: a diverged (NaN) epoch must not poison the best.
      best=best, best_val_loss=jnp.where(improved, val_loss, carry.best_val_loss),
      bad_epochs=jnp.where(improved, 0, carry.bad_epochs + 1),
      train_loss=record(carry.train_loss, train_loss),
      val_loss=record(carry.val_loss, val_loss),
      val_accuracy=record(carry.val_accuracy, val_accuracy))


def fit_epoch(spec: FitSpec, carry: FitCarry, train: DeviceData, val: DeviceData,
              rng: jax.Array) -> FitCarry:
  """One epoch over device-resident data (one `lax.scan`), then `end_epoch`."""
  per_epoch = steps_per_epoch(train.size, spec.batch_size)
  loss_fn = classification_loss(spec.model, spec.batch_size, train, spec.augment_config)
  params, batch_stats, opt_state, metrics = minimize(
      loss_fn, carry.params, carry.batch_stats, spec.tx, carry.opt_state, rng,
      carry.epoch * per_epoch, per_epoch)
  return end_epoch(spec, carry, params, batch_stats, opt_state, metrics["loss"].mean(), val)


def fit_should_continue(spec: FitSpec, carry: FitCarry) -> jax.Array:
  """True while epochs remain and (with patience > 0) validation loss still improves."""
  more = carry.epoch < spec.num_epochs
  if spec.patience > 0:
    more = more & (carry.bad_epochs < spec.patience)
  return more


def fit_result(carry: FitCarry) -> tuple[Variables, dict]:
  """The best variables and a history dict (per-epoch arrays, NaN after a stop)."""
  info = {"epochs": carry.epoch, "best_val_loss": carry.best_val_loss,
          "train_loss": carry.train_loss, "val_loss": carry.val_loss,
          "val_accuracy": carry.val_accuracy}
  return carry.best, info


def fit_in_graph(spec: FitSpec, variables: Variables, train: DeviceData, val: DeviceData,
                 rng: jax.Array) -> tuple[Variables, dict]:
  """Trains with early stopping entirely inside one XLA program (`lax.while_loop`)."""
  carry = jax.lax.while_loop(
      functools.partial(fit_should_continue, spec),
      lambda c: fit_epoch(spec, c, train, val, rng),
      init_fit(spec, variables))
  return fit_result(carry)


def fit(spec: FitSpec, variables: Variables, train: DeviceData, val: DeviceData,
        rng: jax.Array, *, checkpoints=None, on_epoch=None,
        stop_after_epochs: int | None = None) -> tuple[Variables, dict]:
  """Trains with early stopping, one dispatch per epoch, checkpointing each epoch.

  Args:
    checkpoints: a `hamforget.checkpoint.FitCheckpoints` or None. When it holds
      a checkpoint, training resumes from it and ends where an uninterrupted
      run would.
    on_epoch: called with the carry after each epoch (progress, logging).
    stop_after_epochs: stop (as if preempted) once this many epochs are done.
  """
  epoch_fn = jax.jit(functools.partial(fit_epoch, spec), donate_argnums=0)
  carry = init_fit(spec, variables)
  if checkpoints is not None:
    carry = checkpoints.restore_latest(carry)
  while bool(fit_should_continue(spec, carry)):
    if stop_after_epochs is not None and int(carry.epoch) >= stop_after_epochs:
      break
    carry = epoch_fn(carry, train, val, rng)
    if checkpoints is not None:
      checkpoints.save(int(carry.epoch), carry)
    if on_epoch is not None:
      on_epoch(carry)
  if checkpoints is not None:
    checkpoints.wait()
  return fit_result(carry)


def fit_streaming(spec: FitSpec, variables: Variables, batches, steps_per_epoch_: int,
                  val: DeviceData, rng: jax.Array, *, to_global=None, checkpoints=None,
                  on_epoch=None, stop_after_epochs: int | None = None) -> tuple[Variables, dict]:
  """`fit` for data that stays on the host: batches come from an iterator.

  Args:
    batches: an iterator of {"image": uint8 (B, H, W, C), "label": int32 (B,)},
      e.g. `hamforget.data.pipeline.make_train_iterator` (grain). Its state is
      checkpointed with the carry, so a resumed run sees the same batches.
    steps_per_epoch_: batches per epoch.
    to_global: maps a process-local batch to a global array (multi-host:
      `partial(sharding.global_batch, mesh=mesh)`); identity when None.
    Other arguments as in `fit`.

  This is the one place with a Python loop over steps: each step waits on the
  input pipeline anyway. The step itself is one jitted call with donated state.
  """
  def loss_fn(params, batch_stats, images, labels, step):
    images, labels = prepare_batch(images, labels, rng, step, spec.augment_config)
    return supervised_loss(spec.model, params, batch_stats, images, labels)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, batch_stats, opt_state, images, labels, step):
    (loss, (batch_stats, _)), grads = grad_fn(params, batch_stats, images, labels, step)
    updates, opt_state = spec.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  finish_epoch = jax.jit(functools.partial(end_epoch, spec), donate_argnums=0)
  to_global = to_global or (lambda batch: batch)
  carry = init_fit(spec, variables)
  if checkpoints is not None:
    carry = checkpoints.restore_latest(carry, iterator=batches)
  while bool(fit_should_continue(spec, carry)):
    if stop_after_epochs is not None and int(carry.epoch) >= stop_after_epochs:
      break
    params, batch_stats, opt_state = jax.tree.map(
        lambda x: jnp.array(x, copy=True), (carry.params, carry.batch_stats, carry.opt_state))
    first = int(carry.epoch) * steps_per_epoch_
    losses = []
    for step in range(first, first + steps_per_epoch_):
      batch = to_global(next(batches))
      params, batch_stats, opt_state, loss = train_step(
          params, batch_stats, opt_state, batch["image"], batch["label"], step)
      losses.append(loss)
    carry = finish_epoch(carry, params, batch_stats, opt_state, jnp.mean(jnp.stack(losses)), val)
    if checkpoints is not None:
      checkpoints.save(int(carry.epoch), carry, iterator=batches)
    if on_epoch is not None:
      on_epoch(carry)
  if checkpoints is not None:
    checkpoints.wait()
  return fit_result(carry)
