"""Helpers the operators share: optimisers, step counts, batches, losses,
random-label training, learned noise and impair-repair training.

An operator module imports this module, `base`, `hamforget.train` (and
`hamforget.data.batches`, `hamforget.models` where it needs them), never
another operator: what two operators share lives here.

Every helper is a pure function of its arguments and keeps the PRNG key
derivations documented on it, so operators built from them stay
deterministic, jittable and vmappable.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from hamforget import config_checks, train
from hamforget.data import augment as augment_lib
from hamforget.data import batches
from hamforget.unlearn import base

# ----------------------------------------------------------------------------
# Optimisation: recipes, step counts, the minimise-and-report step.


def recipe(config, *overridden: str) -> ml_collections.ConfigDict:
  """A mutable copy of the original training recipe (`config.train`) in which
  the operator's own values of the keys `overridden` replace the original's."""
  # Built whole from a dict: an overridden value may be a tracer (a traced
  # hyper-parameter), which ConfigDict's typed assignment would refuse.
  return ml_collections.ConfigDict(
      {**config.train.to_dict(), **{key: config[key] for key in overridden}})


def sgd(learning_rate: float, momentum: float, weight_decay: float) -> optax.GradientTransformation:
  """SGD with momentum at a constant learning rate, weight decay on kernels only."""
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=train.kernels_only),
                     optax.sgd(learning_rate, momentum=momentum))


def num_steps_for(num_epochs: float, num_examples: int, batch_size: int) -> int:
  """Steps for `num_epochs` (possibly fractional) passes over `num_examples`, at least 1."""
  return max(1, int(round(num_epochs * batches.steps_per_epoch(num_examples, batch_size))))


def minimize_variables(loss_fn: train.LossFn, variables, tx: optax.GradientTransformation,
                       rng: jax.Array, num_steps: int):
  """`train.minimize` of `loss_fn` over the params, from `variables` and a fresh
  optimiser state, the BatchNorm statistics carried as its aux.

  Returns:
    (new variables {"params", "batch_stats"}, metrics stacked to (num_steps,),
    "loss" and whatever `loss_fn` reports).
  """
  params, batch_stats, _, metrics = train.minimize(
      loss_fn, variables["params"], variables["batch_stats"], tx,
      tx.init(variables["params"]), rng, 0, num_steps)
  return {"params": params, "batch_stats": batch_stats}, metrics


def minimize_and_report(loss_fn: train.LossFn, variables, tx: optax.GradientTransformation,
                        rng: jax.Array, num_steps: int, examples_seen: int):
  """`minimize_variables`, then the operator's `info`.

  Args:
    examples_seen: training examples the steps touch, with repetition.

  Returns:
    (new variables, info): "steps", "examples_seen" (int32) and the metric
    curves, one value per step.
  """
  new_variables, metrics = minimize_variables(loss_fn, variables, tx, rng, num_steps)
  info = {"steps": jnp.int32(num_steps), "examples_seen": jnp.int32(examples_seen), **metrics}
  return new_variables, info


def fit_and_report(model, recipe_config, augment_config, variables, retain: batches.DeviceData,
                   val: batches.DeviceData, rng: jax.Array):
  """`train.fit_in_graph` of `variables` on `retain` with the training recipe
  `recipe_config` (early stopping on `val`), then the operator's `info`: the
  fit's curves plus "steps" and "examples_seen"."""
  spec = train.make_fit_spec(model, recipe_config, augment_config, retain.size)
  new_variables, info = train.fit_in_graph(spec, variables, retain, val, rng)
  info["steps"] = info["epochs"] * batches.steps_per_epoch(retain.size, spec.batch_size)
  info["examples_seen"] = info["steps"] * spec.batch_size
  return new_variables, info


def retain_class_weights(config, retain: batches.DeviceData, num_classes: int):
  """Class weights (K,) of the recipe's `train.class_weighting`, by the retain
  set's counts (the forgotten examples never count), or None (plain mean).

  Operators weight their retain cross-entropy with these so that they keep
  the minority classes the balanced original learnt; they sample uniformly.
  """
  if "train" not in config:
    return None
  return train.make_balance(config.train).weights(retain.labels, num_classes)


# ----------------------------------------------------------------------------
# Batches.

SampleFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


def paired_batch(retain: batches.DeviceData, forget: batches.DeviceData, rng: jax.Array,
                 step: jax.Array, batch_size: int, forget_batch_size: int, augment_config):
  """The retain and forget batches of `step`, each with its own shuffle stream
  (keys fold_in(rng, 0) and fold_in(rng, 1))."""
  retain_batch = batches.sample_batch(retain, jax.random.fold_in(rng, 0), step, batch_size,
                                      augment_config)
  forget_batch = batches.sample_batch(forget, jax.random.fold_in(rng, 1), step,
                                      forget_batch_size, augment_config)
  return retain_batch, forget_batch


def mixed_batch(noise: jax.Array | None, noise_labels: jax.Array | None, repeats: int,
                real: batches.DeviceData | None, batch_size: int) -> tuple[SampleFn, int]:
  """A batch sampler over `repeats` copies of the noise followed by the real examples.

  Index i of the virtual dataset is noise sample i mod len(noise) below
  repeats * len(noise), else real example i - repeats * len(noise); batches are
  epoch-wise shuffles of it (batches.batch_indices). No copy of the noise is made.
  Either part may be absent (None, or repeats 0).

  Returns:
    (sample, size): sample(rng, step) -> (images float32 (B, H, W, C), labels
    int32 (B,), is_real bool (B,)); size, the examples in one epoch.
  """
  num_noise = 0 if noise is None else noise.shape[0] * repeats
  num_real = 0 if real is None else real.size
  size = num_noise + num_real
  if size == 0:
    raise ValueError("nothing to train on: no noise and no real examples")

  def sample(rng, step):
    index = batches.batch_indices(rng, step, size, batch_size)
    is_real = index >= num_noise
    if num_noise:
      noise_index = index % noise.shape[0]
      noise_images, labels = noise[noise_index], noise_labels[noise_index]
    if not num_real:
      return noise_images, labels, is_real
    real_index = jnp.clip(index - num_noise, 0, num_real - 1)
    images = augment_lib.normalize(real.images[real_index])
    real_labels = real.labels[real_index]
    if not num_noise:
      return images, real_labels, is_real
    mask = is_real[:, None, None, None]
    return (jnp.where(mask, images, noise_images), jnp.where(is_real, real_labels, labels),
            is_real)

  return sample, size


# ----------------------------------------------------------------------------
# Losses.


def kl_divergence(teacher_probs: jax.Array, student_logits: jax.Array,
                  temperature: float) -> jax.Array:
  """Per-example KL(teacher_probs || softmax(student_logits / T)), summed over classes: (B,).

  For a teacher that is a constant (distillation: pass it through
  `jax.lax.stop_gradient`); `optax.losses.kl_divergence` takes 0 log 0 = 0.
  When the gradient must flow through the teacher too, use
  `kl_divergence_of_logits`.
  """
  return optax.losses.kl_divergence(jax.nn.log_softmax(student_logits / temperature),
                                    teacher_probs)


def kl_divergence_of_logits(teacher_logits: jax.Array, student_logits: jax.Array,
                            temperature: float) -> jax.Array:
  """Per-example KL(softmax(teacher / T) || softmax(student / T)), summed over classes: (B,).

  Both distributions enter in log space (`optax.losses.kl_divergence_with_log_targets`),
  so a teacher probability that underflows to 0 gives neither NaN nor an
  infinite gradient to whatever made the teacher's input (gkt's generator).
  """
  return optax.losses.kl_divergence_with_log_targets(
      jax.nn.log_softmax(student_logits / temperature),
      jax.nn.log_softmax(teacher_logits / temperature))


# ----------------------------------------------------------------------------
# Random-label training (random_label; salun masks its updates).


def wrong_labels(rng: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """A label drawn uniformly from the classes other than `labels`, per example."""
  shift = jax.random.randint(rng, labels.shape, 1, num_classes)
  return ((labels + shift) % num_classes).astype(labels.dtype)


def random_label_loss(model, retain: batches.DeviceData, forget: batches.DeviceData,
                      num_classes: int, batch_size: int, forget_batch_size: int,
                      augment_config=None, retain_weights: jax.Array | None = None
                      ) -> train.LossFn:
  """A `minimize` loss: mean CE over [retain batch; forget batch with wrong labels].

  The wrong labels of step t are drawn with fold_in(fold_in(rng, 2), t); one
  forward pass over the concatenated batch, BatchNorm in train mode. With
  `retain_weights` (K,) each retain example's CE is weighted by its class.
  """

  def loss_fn(params, batch_stats, rng, step):
    (retain_images, retain_labels), (forget_images, forget_labels) = paired_batch(
        retain, forget, rng, step, batch_size, forget_batch_size, augment_config)
    forget_labels = wrong_labels(jax.random.fold_in(jax.random.fold_in(rng, 2), step),
                                 forget_labels, num_classes)
    logits, batch_stats = train.apply_model(
        model, {"params": params, "batch_stats": batch_stats},
        jnp.concatenate([retain_images, forget_images]), train=True)
    losses = train.cross_entropy(logits, jnp.concatenate([retain_labels, forget_labels]))
    if retain_weights is not None:
      losses = losses.at[:batch_size].multiply(retain_weights[retain_labels])
    return losses.mean(), (batch_stats, {"retain_loss": losses[:batch_size].mean(),
                                         "forget_loss": losses[batch_size:].mean()})

  return loss_fn


def mask_updates(tx: optax.GradientTransformation, update_mask) -> optax.GradientTransformation:
  """`tx` whose updates are multiplied elementwise by `update_mask`."""

  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)
    return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, update_mask), state

  return optax.GradientTransformation(tx.init, update)


def train_with_random_labels(model, variables, access: base.Access, config, rng: jax.Array,
                             update_mask=None):
  """Random-label training of `variables` on retain + relabelled forget; (new_variables, info).

  `config` holds learning_rate, momentum, weight_decay, num_epochs,
  batch_size, forget_batch_size and augment. With `update_mask` (a 0/1 pytree
  like the params) only the weights where it is 1 move: the mask multiplies
  the optimiser's updates, so the others stay exactly at their original
  values, momentum and weight decay included.
  """
  retain, forget = access.require(base.RETAIN), access.require(base.FORGET)
  loss_fn = random_label_loss(model, retain, forget, access.num_classes, config.batch_size,
                              config.forget_batch_size, config.augment,
                              retain_class_weights(config, retain, access.num_classes))
  tx = sgd(config.learning_rate, config.momentum, config.weight_decay)
  if update_mask is not None:
    tx = mask_updates(tx, update_mask)
  num_steps = num_steps_for(config.num_epochs, retain.size, config.batch_size)
  return minimize_and_report(loss_fn, variables, tx, rng, num_steps,
                             num_steps * (config.batch_size + config.forget_batch_size))


# ----------------------------------------------------------------------------
# Learned noise and impair-repair training (unsir, emmn; gkt's class check).


def check_class_request(name: str, access: base.Access) -> int:
  """The number K of forget classes; an error when the request names none."""
  num_forget = access.forget_classes.shape[-1]
  if num_forget == 0:
    raise ValueError(f"{name} forgets whole classes: it needs a class forget request "
                     "(forget.kind='classes')")
  return num_forget


def learn_noise(model, variables, labels: jax.Array, direction: jax.Array,
                image_shape: tuple[int, int, int], num_steps: int, learning_rate: float,
                weight: float, rng: jax.Array, space: str = "normalized"):
  """Noise (N, H, W, C) that drives the frozen model's loss on `labels` up or down.

  Minimises  mean_i direction_i * CE(f(N_i), labels_i) + weight * mean_i ||N_i||^2
  with Adam (drawn with `rng`); direction -1 maximises the error of a sample's
  label (error-maximising noise), +1 minimises it. The model is in eval mode
  and its variables are constants. The `space` decides where the noise lives:

  - "normalized": the model's input itself, unbounded, from normal(0, 1); the
    norm pulls it to the normalisation mean (UNSIR's reference on CIFAR-10).
  - "pixels": an image in [0, 1] pixel units, sigmoid(u) of a free u from
    normal(0, 1), normalised as real images are before the model, so it
    never leaves the range of real inputs ([-1, 1] once normalised). The
    norm pulls it to black. Unbounded noise drifts to inputs of magnitude ~8
    within a few steps, and impairing or repairing on such inputs trains the
    model far from its data.

  Returns:
    (noise float32 (N, H, W, C) in the model's input space, metrics
    (num_steps,): "loss", and the mean cross-entropy of the maximising
    ("max_cross_entropy") and minimising ("min_cross_entropy") samples, 0
    where there are none).
  """
  if space not in ("normalized", "pixels"):
    raise ValueError(f"noise space {space!r}: expected 'normalized' or 'pixels'")
  if space == "pixels":
    as_image = jax.nn.sigmoid                      # free parameter -> pixels in (0, 1)
    to_input = lambda u: (jax.nn.sigmoid(u) - 0.5) / 0.5
  else:
    as_image = to_input = lambda u: u
  free = jax.random.normal(rng, (labels.shape[0], *image_shape), jnp.float32)
  frozen = jax.lax.stop_gradient(variables)

  def loss_fn(free, aux, rng, step):
    del rng, step
    logits, _ = train.apply_model(model, frozen, to_input(free), train=False)
    cross_entropy = train.cross_entropy(logits, labels)
    norm = jnp.sum(jnp.square(as_image(free)), axis=(1, 2, 3))
    loss = jnp.mean(direction * cross_entropy) + weight * jnp.mean(norm)
    maximising = direction < 0
    mean_over = lambda mask: (jnp.sum(jnp.where(mask, cross_entropy, 0.0))
                              / jnp.maximum(jnp.sum(mask), 1))
    return loss, (aux, {"max_cross_entropy": mean_over(maximising),
                        "min_cross_entropy": mean_over(~maximising)})

  tx = optax.adam(learning_rate)
  free, _, _, metrics = train.minimize(loss_fn, free, None, tx, tx.init(free), rng, 0, num_steps)
  return to_input(free), metrics


def trainable_mask(params, trainable: str):
  """Bool pytree like `params`: the leaves `trainable` names.

  "all" is every leaf; "head" the classifier, the last top-level `Dense`
  module of the models in `hamforget.models` (their logits layer).
  """
  if trainable == "all":
    return jax.tree.map(lambda _: True, params)
  if trainable != "head":
    raise ValueError(f"trainable={trainable!r}: expected one of {config_checks.TRAINABLE_PARTS}")
  dense = sorted((k for k in params if k.startswith("Dense_")), key=lambda k: int(k[6:]))
  if not dense:
    raise ValueError("trainable='head': the model's params hold no top-level Dense module")
  return {key: jax.tree.map(lambda _, is_head=key == dense[-1]: is_head, value)
          for key, value in params.items()}


def fit_classifier(model, variables, sample: SampleFn, num_steps: int, learning_rate: float,
                   update_batch_stats: bool, rng: jax.Array, trainable: str = "all"):
  """`num_steps` Adam steps on the mean cross-entropy of `sample`'s batches.

  With update_batch_stats False BatchNorm stays in eval mode: the running
  statistics are used and returned unchanged (for batches of pure noise, whose
  statistics are nothing like the data's). `trainable` ("all" or "head",
  `trainable_mask`) names the parameters the steps move; the others keep
  their values exactly.

  Returns:
    (variables, metrics with "loss", "accuracy" and "real" (real examples) per step).
  """

  def loss_fn(params, batch_stats, rng, step):
    images, labels, is_real = sample(rng, step)
    logits, new_stats = train.apply_model(
        model, {"params": params, "batch_stats": batch_stats}, images, train=update_batch_stats)
    loss = train.cross_entropy(logits, labels).mean()
    return loss, (new_stats, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
                              "real": jnp.sum(is_real, dtype=jnp.int32)})

  labels = jax.tree.map(lambda moves: "moves" if moves else "frozen",
                        trainable_mask(variables["params"], trainable))
  tx = optax.multi_transform({"moves": optax.adam(learning_rate), "frozen": optax.set_to_zero()},
                             labels)
  return minimize_variables(loss_fn, variables, tx, rng, num_steps)


def impair_repair_info(noise_metrics, impair_metrics, repair_metrics, num_noise: int,
                       noise_steps: int) -> dict[str, jax.Array]:
  """The `info` entries every impair-repair operator reports: steps, the noise
  ascent's loss curve, and each phase's loss and accuracy per step."""
  return {
      "steps": jnp.int32(impair_metrics["loss"].shape[0] + repair_metrics["loss"].shape[0]),
      "noise_samples": jnp.int32(num_noise),
      "noise_steps": jnp.int32(noise_steps),
      "noise_loss": noise_metrics["loss"],
      "loss": jnp.concatenate([impair_metrics["loss"], repair_metrics["loss"]]),
      "impair_loss": impair_metrics["loss"],
      "impair_accuracy": impair_metrics["accuracy"],
      "repair_loss": repair_metrics["loss"],
      "repair_accuracy": repair_metrics["accuracy"],
  }
