"""Training: losses, optimisers, scanned steps, and one fit loop over any batch source.

Everything here is a pure function of pytrees. The unit of work is `minimize`:
`num_steps` optimiser steps inside one `lax.scan`, so a whole epoch (or a whole
unlearning phase) is one XLA dispatch with no host round-trip per step.
Batches come from `hamforget.data.batches`: gathered by index from uint8
arrays already on the device, or streamed from the host by grain.

`fit` (host loop over epochs: checkpoints, progress, either batch source) and
`fit_in_graph` (`lax.while_loop` over epochs, jittable and vmappable whole,
used by the `retrain` and `finetune` operators) share one epoch body and one
stopping rule, so both give the same parameters for the same inputs.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hamforget import sharding
from hamforget.data import batches
from hamforget.data.batches import DeviceData, StreamedData

Variables = dict[str, Any]   # {"params": ..., "batch_stats": ...}


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
  """Fresh variables for images of shape (H, W, C), as a plain dict (traceable)."""
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


@functools.cache
def _init_program(out_sharding) -> Callable:
  return jax.jit(init_variables, static_argnums=(0, 1), out_shardings=out_sharding)


def init_replicated(model, image_shape: tuple[int, int, int], rng: jax.Array) -> Variables:
  """`init_variables` outside a jit: one compiled program per model and shape,
  its output replicated over the mesh in context. (Run eagerly, every
  initialiser of every layer would compile apart, seconds each on CPU.)"""
  return _init_program(sharding.replicated())(model, tuple(image_shape), rng)


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
  descend = optimizer_step(loss_fn, tx)

  def step_fn(carry, step):
    params, aux, opt_state, loss, metrics = descend(*carry, rng, step)
    return (params, aux, opt_state), {"loss": loss, **metrics}

  steps = jnp.arange(num_steps) + first_step
  (params, aux, opt_state), metrics = jax.lax.scan(step_fn, (params, aux, opt_state), steps)
  return params, aux, opt_state, metrics


def optimizer_step(loss_fn: LossFn, tx: optax.GradientTransformation) -> Callable:
  """One step of `tx` on `loss_fn` (as `minimize`'s), for loops of their own.

  Returns:
    (params, aux, opt_state, rng, step) -> (params, aux, opt_state, loss,
    metrics): the body of `minimize`'s scan, and of loops that end early
    (a `lax.while_loop`, `relearn.relearn_curve`).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(params, aux, opt_state, rng, step):
    (loss, (aux, metrics)), grads = grad_fn(params, aux, rng, step)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), aux, opt_state, loss, metrics

  return step_fn


def kernels_only(params):
  """True for the leaves weight decay applies to: kernels, not BatchNorm scales or biases."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


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
  if train_config.optimizer == "sgd":
    return optax.chain(
        optax.add_decayed_weights(train_config.weight_decay, mask=kernels_only),
        optax.sgd(schedule, momentum=train_config.momentum, nesterov=True))
  if train_config.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=train_config.weight_decay, mask=kernels_only)
  raise ValueError(f"train.optimizer={train_config.optimizer!r}: expected 'sgd' or 'adamw'")


# ----------------------------------------------------------------------------
# Class balance: HAM10000 is 67% `nv`; a plain mean of the cross-entropy lets a
# model ignore the minority classes and still score 0.67 accuracy.

CLASS_WEIGHTINGS = ("none", "inverse_frequency", "effective_number")
SAMPLINGS = ("uniform", "class_balanced")


def class_weights(labels: jax.Array, num_classes: int, weighting: str,
                  beta: float = 0.999) -> jax.Array | None:
  """Per-class loss weights (K,) float32 from the labels (N,) trained on, or None.

  - "inverse_frequency": w_k proportional to 1 / n_k, sklearn's "balanced"
    (King and Zeng 2001): every present class weighs as much in the loss.
  - "effective_number": w_k proportional to (1 - beta) / (1 - beta^n_k), the
    class-balanced loss of Cui et al. (CVPR 2019); softer than 1 / n_k for
    large classes (beta = 0.999: 9x between HAM10000's `df` and `nv` where
    1 / n_k gives 58x).
  - "none": None (a plain mean).

  Weights are scaled so that sum_k w_k n_k = N (an example weighs 1 on
  average, the loss keeps its scale and the learning rate its meaning); a
  class absent from `labels` (a forgotten one) weighs 0. Computed in-graph
  from the data a run actually trains on, so retrain and the operators
  weight by the retain set's counts, never the forgotten examples'.
  """
  if weighting == "none":
    return None
  return weights_of_counts(jnp.bincount(labels, length=num_classes), weighting, beta)


def weights_of_counts(counts: jax.Array, weighting: str, beta: float = 0.999) -> jax.Array:
  """`class_weights` from the examples per class (K,) (a stream knows its counts,
  not its labels on the device); weighting is not "none"."""
  counts = jnp.asarray(counts, jnp.float32)
  present = counts > 0
  if weighting == "inverse_frequency":
    raw = 1.0 / jnp.maximum(counts, 1.0)
  elif weighting == "effective_number":
    raw = (1.0 - beta) / (1.0 - jnp.power(beta, jnp.maximum(counts, 1.0)))
  else:
    raise ValueError(f"train.class_weighting={weighting!r}: expected one of {CLASS_WEIGHTINGS}")
  raw = jnp.where(present, raw, 0.0)
  return raw * jnp.sum(counts) / jnp.sum(raw * counts)


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array,
                           weights: jax.Array | None) -> jax.Array:
  """Mean over the batch of w[label] * CE (nats); the plain mean when weights is None."""
  losses = cross_entropy(logits, labels)
  return losses.mean() if weights is None else jnp.mean(weights[labels] * losses)


def supervised_loss(model, params, batch_stats, images, labels, weights: jax.Array | None = None):
  """Cross-entropy of a prepared batch (class-weighted given `weights` (K,)),
  BatchNorm in train mode.

  Returns (loss, (new batch_stats, {"accuracy": ...})), the `minimize` shape.
  """
  logits, batch_stats = apply_model(
      model, {"params": params, "batch_stats": batch_stats}, images, train=True)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return weighted_cross_entropy(logits, labels, weights), (batch_stats, {"accuracy": accuracy})


def classification_loss(model, batch_size: int, data: DeviceData, augment_config=None,
                        weights: jax.Array | None = None,
                        probabilities: jax.Array | None = None):
  """A `minimize` loss: cross-entropy on the sampled batch of each step.

  `weights` (K,) weigh each example's loss by its class (`class_weights`);
  `probabilities` (N,) draw the batches with replacement (`sample_batch`).
  """

  def loss_fn(params, batch_stats, rng, step):
    images, labels = batches.sample_batch(data, rng, step, batch_size, augment_config,
                                          probabilities)
    return supervised_loss(model, params, batch_stats, images, labels, weights)

  return loss_fn


@flax.struct.dataclass
class Balance:
  """How a run trained on data counters class imbalance (static; `train` config keys).

  Attributes:
    class_weighting: one of CLASS_WEIGHTINGS (see `class_weights`).
    effective_number_beta: beta of "effective_number".
    sampling: "uniform" (epoch-wise shuffles) or "class_balanced": each
      example drawn with probability proportional to 1 / n_(its class), with
      replacement, so every class fills 1/K of a batch on average (class-aware
      sampling, Shen et al. ECCV 2016). Only `fit` (original, retrain,
      finetune, SISA shards) samples; operators weight their retain loss.
  """
  class_weighting: str = flax.struct.field(pytree_node=False, default="none")
  effective_number_beta: float = flax.struct.field(pytree_node=False, default=0.999)
  sampling: str = flax.struct.field(pytree_node=False, default="uniform")

  def weights(self, labels: jax.Array, num_classes: int) -> jax.Array | None:
    return class_weights(labels, num_classes, self.class_weighting, self.effective_number_beta)

  def sampling_probabilities(self, labels: jax.Array, num_classes: int) -> jax.Array | None:
    """Per-example probabilities (N,) of class-balanced sampling, or None (uniform)."""
    if self.sampling == "uniform":
      return None
    if self.sampling != "class_balanced":
      raise ValueError(f"train.sampling={self.sampling!r}: expected one of {SAMPLINGS}")
    counts = jnp.bincount(labels, length=num_classes).astype(jnp.float32)
    per_example = 1.0 / counts[labels]
    return per_example / jnp.sum(per_example)


def make_balance(train_config) -> Balance:
  """The `Balance` of a `train` config section (keys absent in old configs: none)."""
  get = lambda key, default: train_config.get(key, default)
  return Balance(get("class_weighting", "none"), float(get("effective_number_beta", 0.999)),
                 get("sampling", "uniform"))


# ----------------------------------------------------------------------------
# Evaluation.

def predict(model, variables: Variables, images: jax.Array, batch_size: int) -> jax.Array:
  """Eval-mode logits (N, K) float32 for uint8 images (N, H, W, C), in fixed-size batches.

  The tail is padded to a full batch so one compiled program serves any N of
  the same batch size; `lax.map` keeps it one dispatch.
  """
  n = images.shape[0]
  padded, _, _ = batches.fixed_size_batches(DeviceData(images, jnp.zeros(n, jnp.int32)),
                                            batch_size)
  logits_of = lambda batch: apply_model(model, variables, batches.model_input(batch),
                                        train=False)[0]
  logits = jax.lax.map(logits_of, padded)
  return logits.reshape(-1, logits.shape[-1])[:n]


def mean_loss_and_accuracy(model, variables, data: DeviceData, batch_size: int):
  """(mean cross-entropy, accuracy) of eval-mode predictions on `data`."""
  logits = predict(model, variables, data.images, batch_size)
  return (cross_entropy(logits, data.labels).mean(),
          jnp.mean(jnp.argmax(logits, -1) == data.labels))


SELECTION_METRICS = ("loss", "balanced_accuracy", "macro_f1")


def validation_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Scalars of eval-mode logits (N, K) on labels (N,): "loss" (mean CE,
  nats), "accuracy", "balanced_accuracy" (mean recall over the classes present
  in `labels`) and "macro_f1" (mean F1 over those classes).

  Classes absent from `labels` (forgotten ones, in an unlearning run's
  validation split) are left out of both means; predicting them still costs
  recall of the true classes.
  """
  num_classes = logits.shape[-1]
  predicted = jnp.argmax(logits, -1)
  truth, guess = jax.nn.one_hot(labels, num_classes), jax.nn.one_hot(predicted, num_classes)
  true_positives = jnp.sum(truth * guess, 0)
  support, predicted_count = jnp.sum(truth, 0), jnp.sum(guess, 0)
  present = support > 0
  recall = true_positives / jnp.maximum(support, 1.0)
  f1 = 2 * true_positives / jnp.maximum(support + predicted_count, 1.0)
  over_present = lambda per_class: jnp.sum(jnp.where(present, per_class, 0.0)) / jnp.sum(present)
  return {"loss": cross_entropy(logits, labels).mean(),
          "accuracy": jnp.mean(predicted == labels),
          "balanced_accuracy": over_present(recall), "macro_f1": over_present(f1)}


# ----------------------------------------------------------------------------
# Fitting with early stopping: one epoch body, driven by the host or in-graph.

class FitCarry(NamedTuple):
  """Everything a fit needs to continue; also what a checkpoint holds.

  Attributes:
    epoch: int32 scalar, epochs completed.
    params, batch_stats, opt_state: the current training state.
    best: variables of the best validation score so far.
    best_score: float32 scalar, the selection metric of `best` (higher is
      better: minus the loss when selecting on loss); -inf before the first
      epoch.
    best_val_loss: float32 scalar, the validation loss of `best`; inf before.
    bad_epochs: int32 scalar, epochs since the last improvement.
    train_loss, val_loss, val_accuracy, val_balanced_accuracy, val_macro_f1:
      float32 (num_epochs,), NaN until run.
  """
  epoch: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  best: Variables
  best_score: jax.Array
  best_val_loss: jax.Array
  bad_epochs: jax.Array
  train_loss: jax.Array
  val_loss: jax.Array
  val_accuracy: jax.Array
  val_balanced_accuracy: jax.Array
  val_macro_f1: jax.Array


@flax.struct.dataclass
class FitSpec:
  """The static part of a fit: what to train, how, on how much data.

  `select_on` (one of SELECTION_METRICS) picks the best epoch and drives early
  stopping; `balance` says how the loss and the batches counter imbalance.
  """
  model: Any = flax.struct.field(pytree_node=False)
  tx: Any = flax.struct.field(pytree_node=False)
  batch_size: int = flax.struct.field(pytree_node=False)
  eval_batch_size: int = flax.struct.field(pytree_node=False)
  num_epochs: int = flax.struct.field(pytree_node=False)
  patience: int = flax.struct.field(pytree_node=False)
  augment_config: Any = flax.struct.field(pytree_node=False)
  select_on: str = flax.struct.field(pytree_node=False, default="loss")
  balance: Balance = flax.struct.field(pytree_node=False, default=Balance())


def make_fit_spec(model, train_config, augment_config, num_train: int) -> FitSpec:
  """A FitSpec from the `train` and `augment` config sections."""
  per_epoch = batches.steps_per_epoch(num_train, train_config.batch_size)
  tx = make_optimizer(train_config, per_epoch * train_config.num_epochs, per_epoch)
  select_on = train_config.get("select_on", "loss")
  if select_on not in SELECTION_METRICS:
    raise ValueError(f"train.select_on={select_on!r}: expected one of {SELECTION_METRICS}")
  return FitSpec(model, tx, train_config.batch_size, train_config.eval_batch_size,
                 train_config.num_epochs, train_config.patience,
                 ml_collections.FrozenConfigDict(augment_config), select_on,
                 make_balance(train_config))


def init_fit(spec: FitSpec, variables: Variables) -> FitCarry:
  """The carry before the first epoch, starting from `variables`."""
  nan = jnp.full((spec.num_epochs,), jnp.nan, jnp.float32)
  carry = FitCarry(
      epoch=jnp.int32(0), params=variables["params"], batch_stats=variables["batch_stats"],
      opt_state=spec.tx.init(variables["params"]), best=variables,
      best_score=jnp.float32(-jnp.inf), best_val_loss=jnp.float32(jnp.inf),
      bad_epochs=jnp.int32(0), train_loss=nan, val_loss=nan, val_accuracy=nan,
      val_balanced_accuracy=nan, val_macro_f1=nan)
  # Every leaf gets a buffer of its own: `fit` donates the carry to each epoch,
  # and a buffer shared by two leaves (or with the caller's variables) cannot
  # be donated twice.
  return jax.tree.map(lambda x: jnp.array(x, copy=True), carry)


def end_epoch(spec: FitSpec, carry: FitCarry, params, batch_stats, opt_state,
              train_loss: jax.Array, val: DeviceData) -> FitCarry:
  """Validates the epoch's parameters and updates the early-stopping state."""
  variables = {"params": params, "batch_stats": batch_stats}
  metrics = validation_metrics(
      predict(spec.model, variables, val.images, spec.eval_batch_size), val.labels)
  score = -metrics["loss"] if spec.select_on == "loss" else metrics[spec.select_on]
  improved = score > carry.best_score
  best = jax.tree.map(lambda new, old: jnp.where(improved, new, old), variables, carry.best)
  record = lambda history, value: history.at[carry.epoch].set(value)
  return FitCarry(
      epoch=carry.epoch + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      # `where`, not `maximum`: a diverged (NaN) epoch must not poison the best.
      best=best, best_score=jnp.where(improved, score, carry.best_score),
      best_val_loss=jnp.where(improved, metrics["loss"], carry.best_val_loss),
      bad_epochs=jnp.where(improved, 0, carry.bad_epochs + 1),
      train_loss=record(carry.train_loss, train_loss),
      val_loss=record(carry.val_loss, metrics["loss"]),
      val_accuracy=record(carry.val_accuracy, metrics["accuracy"]),
      val_balanced_accuracy=record(carry.val_balanced_accuracy, metrics["balanced_accuracy"]),
      val_macro_f1=record(carry.val_macro_f1, metrics["macro_f1"]))


def fit_epoch(spec: FitSpec, carry: FitCarry, train: DeviceData, val: DeviceData,
              rng: jax.Array) -> FitCarry:
  """One epoch over device-resident data (one `lax.scan`), then `end_epoch`."""
  per_epoch = batches.steps_per_epoch(train.size, spec.batch_size)
  weights = probabilities = None
  if spec.balance != Balance():  # plain training asks nothing of the model (any module fits)
    num_classes = spec.model.num_classes
    weights = spec.balance.weights(train.labels, num_classes)
    probabilities = spec.balance.sampling_probabilities(train.labels, num_classes)
  loss_fn = classification_loss(spec.model, spec.batch_size, train, spec.augment_config,
                                weights, probabilities)
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
          "best_score": carry.best_score,
          "train_loss": carry.train_loss, "val_loss": carry.val_loss,
          "val_accuracy": carry.val_accuracy,
          "val_balanced_accuracy": carry.val_balanced_accuracy,
          "val_macro_f1": carry.val_macro_f1}
  return carry.best, info


def fit_in_graph(spec: FitSpec, variables: Variables, train: DeviceData, val: DeviceData,
                 rng: jax.Array) -> tuple[Variables, dict]:
  """Trains with early stopping entirely inside one XLA program (`lax.while_loop`)."""
  carry = jax.lax.while_loop(
      functools.partial(fit_should_continue, spec),
      lambda c: fit_epoch(spec, c, train, val, rng),
      init_fit(spec, variables))
  return fit_result(carry)


def _streamed_epoch(spec: FitSpec, stream: StreamedData, rng: jax.Array):
  """`fit_epoch` for batches streamed from the host: a jitted step per batch.

  The one Python loop over steps: each step waits on the input pipeline anyway.
  """

  if spec.balance.sampling != "uniform":
    raise ValueError(f"train.sampling={spec.balance.sampling!r} needs data.pipeline='device' "
                     "(grain streams epoch-wise shuffles); class_weighting works with both")
  weights = None
  if spec.balance.class_weighting != "none":
    if stream.class_counts is None:
      raise ValueError("train.class_weighting needs the stream's class counts")
    counts = np.zeros(spec.model.num_classes, np.int64)
    counts[:stream.class_counts.size] = stream.class_counts
    weights = weights_of_counts(counts, spec.balance.class_weighting,
                                spec.balance.effective_number_beta)

  def loss_fn(params, batch_stats, images, labels, step):
    images, labels = batches.prepare_batch(images, labels, rng, step, spec.augment_config)
    return supervised_loss(spec.model, params, batch_stats, images, labels, weights)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, batch_stats, opt_state, images, labels, step):
    (loss, (batch_stats, _)), grads = grad_fn(params, batch_stats, images, labels, step)
    updates, opt_state = spec.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  finish_epoch = jax.jit(functools.partial(end_epoch, spec), donate_argnums=0,
                         out_shardings=sharding.replicated())

  def run_epoch(carry: FitCarry, val: DeviceData) -> FitCarry:
    # Copies: the step donates its state, and the carry must stay intact.
    params, batch_stats, opt_state = jax.tree.map(
        lambda x: jnp.array(x, copy=True), (carry.params, carry.batch_stats, carry.opt_state))
    first = int(carry.epoch) * stream.steps_per_epoch
    losses = []
    for step in range(first, first + stream.steps_per_epoch):
      images, labels = stream.next_batch()
      params, batch_stats, opt_state, loss = train_step(
          params, batch_stats, opt_state, images, labels, step)
      losses.append(loss)
    return finish_epoch(carry, params, batch_stats, opt_state, jnp.mean(jnp.stack(losses)), val)

  return run_epoch


class DivergedError(FloatingPointError):
  """A training loss became NaN or infinite: the run stops instead of reporting
  metrics of a broken model. The message names the model, where and the value."""


class Preempted(Exception):
  """Training stopped at an epoch boundary because `should_stop` said so (a
  SIGTERM from a preemptible VM, say); the carry of that epoch is checkpointed
  and a rerun resumes there."""

  def __init__(self, epochs_done: int):
    super().__init__(f"stopped after epoch {epochs_done}: checkpoint saved; rerun the same "
                     "command to resume")
    self.epochs_done = epochs_done


def check_epoch_losses(name: str, carry: FitCarry) -> None:
  """Raises DivergedError when the epoch just finished has a non-finite loss.

  Reads two scalars the host fetches for progress anyway: no extra sync per step.
  """
  epoch = int(carry.epoch)
  for what, history in (("train loss", carry.train_loss), ("validation loss", carry.val_loss)):
    value = float(history[epoch - 1])
    if not math.isfinite(value):
      raise DivergedError(
          f"{name}: {what} is {value} at epoch {epoch}: training diverged (expected a finite "
          "loss). Lower the learning rate or raise the warmup, then rerun.")


def check_info_losses(name: str, info: dict) -> None:
  """Raises DivergedError when a finished run's loss curve in `info` is not finite.

  Looks at `train_loss` (per epoch; only the `epochs` run, the rest are NaN
  placeholders) and `loss` (per step), the curves every operator reports.
  """
  for key, unit in (("train_loss", "epoch"), ("loss", "step")):
    if key not in info:
      continue
    curve = np.asarray(info[key], np.float64).reshape(-1)
    if key == "train_loss" and "epochs" in info:
      curve = curve[:int(np.asarray(info["epochs"]))]
    bad = np.flatnonzero(~np.isfinite(curve))
    if bad.size:
      raise DivergedError(
          f"{name}: {key} is {curve[bad[0]]} at {unit} {bad[0] + 1} of {curve.size} "
          f"({bad.size} non-finite): the run diverged (expected a finite loss). Lower its "
          "learning rate, then rerun.")


def fit(spec: FitSpec, variables: Variables, train: DeviceData | StreamedData, val: DeviceData,
        rng: jax.Array, *, checkpoints=None, on_epoch=None,
        stop_after_epochs: int | None = None, should_stop: Callable[[], bool] | None = None,
        name: str = "model") -> tuple[Variables, dict]:
  """Trains with early stopping, one epoch at a time, checkpointing each epoch.

  Args:
    train: device-resident data (each epoch one jitted `lax.scan`, the carry
      donated) or a host stream (`StreamedData`: a jitted step per batch; the
      iterator's position is checkpointed with the carry).
    checkpoints: a `hamforget.checkpoint.FitCheckpoints` or None. When it holds
      a checkpoint, training resumes from it and ends where an uninterrupted
      run would.
    on_epoch: called with the carry after each epoch (progress, logging).
    stop_after_epochs: stop (as if preempted) once this many epochs are done.
    should_stop: asked after each epoch (once its checkpoint is written); True
      raises `Preempted`. A pure hook: the caller decides what it watches.
    name: the model's name in error messages.

  Raises:
    DivergedError: an epoch's train or validation loss is not finite (checked
      before that epoch is checkpointed, so a rerun does not resume from it).
    Preempted: `should_stop()` returned True.
  """
  iterator = train.iterator if isinstance(train, StreamedData) else None
  if iterator is None:
    epoch_fn = jax.jit(functools.partial(fit_epoch, spec), donate_argnums=0,
                       out_shardings=sharding.replicated())
    run_epoch = lambda carry, val: epoch_fn(carry, train, val, rng)
  else:
    run_epoch = _streamed_epoch(spec, train, rng)
  carry = init_fit(spec, variables)
  if checkpoints is not None:
    carry = checkpoints.restore_latest(carry, iterator=iterator)
  while bool(fit_should_continue(spec, carry)):
    if stop_after_epochs is not None and int(carry.epoch) >= stop_after_epochs:
      break
    carry = run_epoch(carry, val)
    check_epoch_losses(name, carry)
    if checkpoints is not None:
      checkpoints.save(int(carry.epoch), carry, iterator=iterator)
    if on_epoch is not None:
      on_epoch(carry)
    if should_stop is not None and should_stop():
      if checkpoints is not None:
        checkpoints.wait()  # the epoch just saved must be on disk before the exit
      raise Preempted(int(carry.epoch))
  if checkpoints is not None:
    checkpoints.wait()
  return fit_result(carry)
