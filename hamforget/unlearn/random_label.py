"""`random_label`: train on the forget set with random wrong labels, and on retain.

Random labelling (RL) of Golatkar et al. 2020 and Graves et al. 2021
("Amnesiac Machine Learning"), in the form of SalUn's RL baseline (Fan et al.
ICLR 2024). Each step draws a retain batch B_r with its true labels and a
forget batch B_f whose labels are redrawn uniformly from the *other* classes,
y~ = (y + U{1, ..., K-1}) mod K, and minimises the cross-entropy on both:

    L(theta) = mean over B_r u B_f of CE(f_theta(x), y or y~)

The forget examples are mixed into every step (like SalUn's concatenated
retain + relabelled forget loader) rather than run as a separate forget epoch.
Labels are drawn afresh at every step. Unlike the reference, which draws from
all K classes, the true class is excluded: a "random" label equal to the true
one would reinforce what is to be forgotten.

`salun` is this operator with its updates restricted to the weights most
salient for the forget loss; both share `train_with_random_labels`.

BatchNorm: the student runs in train mode (as the reference), one forward pass
over the concatenated batch.

Hyper-parameters (defaults):
  learning_rate: 0.01, constant (SGD, as SalUn's RL baseline).
  momentum: 0.9.
  weight_decay: 5e-4 on kernels.
  num_epochs: 1.0 passes over the retain set (fractions allowed). SalUn runs
    10 epochs on CIFAR-10 (retraining: 160); on the default MNIST run one
    epoch (a tenth of retraining's cost) takes the forgotten class to 0%
    accuracy, the retain set staying at ~96%.
  batch_size: 128 retain examples per step.
  forget_batch_size: 32 relabelled forget examples per step (the forget set is
    cycled through).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from hamforget import train
from hamforget.unlearn import base
from hamforget.unlearn.neggrad_plus import num_steps_for, paired_batch, sgd

DEFAULTS = {"learning_rate": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "num_epochs": 1.0,
            "batch_size": 128, "forget_batch_size": 32}


def wrong_labels(rng: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """A label drawn uniformly from the classes other than `labels`, per example."""
  shift = jax.random.randint(rng, labels.shape, 1, num_classes)
  return ((labels + shift) % num_classes).astype(labels.dtype)


def random_label_loss(model, retain: train.DeviceData, forget: train.DeviceData,
                      num_classes: int, batch_size: int, forget_batch_size: int,
                      augment_config=None):
  """A `minimize` loss: mean CE over [retain batch; forget batch with wrong labels]."""

  def loss_fn(params, batch_stats, rng, step):
    (retain_images, retain_labels), (forget_images, forget_labels) = paired_batch(
        retain, forget, rng, step, batch_size, forget_batch_size, augment_config)
    forget_labels = wrong_labels(jax.random.fold_in(jax.random.fold_in(rng, 2), step),
                                 forget_labels, num_classes)
    logits, batch_stats = train.apply_model(
        model, {"params": params, "batch_stats": batch_stats},
        jnp.concatenate([retain_images, forget_images]), train=True)
    losses = train.cross_entropy(logits, jnp.concatenate([retain_labels, forget_labels]))
    return losses.mean(), (batch_stats, {"retain_loss": losses[:batch_size].mean(),
                                         "forget_loss": losses[batch_size:].mean()})

  return loss_fn


def mask_updates(tx: optax.GradientTransformation, update_mask) -> optax.GradientTransformation:
  """`tx` whose updates are multiplied elementwise by `update_mask`."""

  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)
    return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, update_mask), state

  return optax.GradientTransformation(tx.init, update)


def train_with_random_labels(model, variables, access, config, rng, update_mask=None):
  """Random-label training of `variables`; returns (new_variables, info).

  With `update_mask` (a 0/1 pytree like the params) only the weights where it
  is 1 move: the mask multiplies the optimiser's updates, so the others stay
  exactly at their original values, momentum and weight decay included.
  """
  retain, forget = access.require(base.RETAIN), access.require(base.FORGET)
  loss_fn = random_label_loss(model, retain, forget, access.num_classes, config.batch_size,
                              config.forget_batch_size, config.augment)
  tx = sgd(config.learning_rate, config.momentum, config.weight_decay)
  if update_mask is not None:
    tx = mask_updates(tx, update_mask)
  num_steps = num_steps_for(config.num_epochs, retain.size, config.batch_size)
  params, batch_stats, _, metrics = train.minimize(
      loss_fn, variables["params"], variables["batch_stats"], tx,
      tx.init(variables["params"]), rng, 0, num_steps)
  info = {"steps": jnp.int32(num_steps),
          "examples_seen": base.examples_seen(num_steps,
                                              config.batch_size + config.forget_batch_size),
          **metrics}
  return {"params": params, "batch_stats": batch_stats}, info


@base.register("random_label", needs={base.RETAIN, base.FORGET}, defaults=DEFAULTS)
def random_label(model, variables, access, request, config, rng):
  del request
  return train_with_random_labels(model, variables, access, config, rng)
