"""`salun`: random-label unlearning restricted to the weights salient for forgetting.

SalUn of Fan et al. ICLR 2024, "SalUn: Empowering Machine Unlearning via
Gradient-based Weight Saliency". The saliency of each weight is the magnitude
of the gradient of the forget loss at the original weights theta_o,

    s = | grad_theta CE(D_f; theta) at theta_o |,

and the mask m = 1[s >= gamma] keeps the top `saliency_ratio` of all weights
(gamma is the global (1 - ratio)-quantile over every parameter: the median for
the default 0.5); weights of exactly zero saliency are never kept. Then
random-label training (the `random_label` operator) runs with its updates
masked, so that, as the paper's theta_u = m * (theta_o + delta) + (1 - m) *
theta_o, the non-salient weights stay exactly at their original values.

The gradient is of the mean cross-entropy over the whole forget set with its
true labels, in BatchNorm eval mode (as the reference's `model.eval()`),
accumulated in-graph over fixed-size batches (the tail padded and weighted
out). The reference masks the gradients and lets SGD's weight decay move the
masked weights; masking the updates instead keeps them exactly fixed, as the
paper's equation says. The random-label training runs with BatchNorm in train
mode.

Hyper-parameters (defaults):
  saliency_ratio: 0.5, the fraction of weights updated (the paper's default
    threshold: the top 50%).
  saliency_batch_size: 128 forget examples per batch of the saliency pass.
  learning_rate: 0.01, momentum: 0.9, weight_decay: 5e-4, num_epochs: 1.0,
  batch_size: 128, forget_batch_size: 32: those of `random_label` (see there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hamforget import sharding, train
from hamforget.data import augment as augment_lib
from hamforget.unlearn import base, random_label


def forget_saliency(model, variables, forget: train.DeviceData, batch_size: int):
  """|grad of the mean forget-set cross-entropy| w.r.t. the params, eval mode."""
  n = forget.size
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  images = jnp.pad(forget.images, [(0, pad)] + [(0, 0)] * 3).reshape(
      num_batches, batch_size, *forget.images.shape[1:])
  labels = jnp.pad(forget.labels, (0, pad)).reshape(num_batches, batch_size)
  weights = (jnp.arange(num_batches * batch_size) < n).reshape(num_batches, batch_size)

  def batch_loss(params, batch):
    images, labels, weights = batch
    images = sharding.shard_batch(augment_lib.normalize(images))
    logits, _ = train.apply_model(
        model, {"params": params, "batch_stats": variables["batch_stats"]}, images, train=False)
    return jnp.sum(train.cross_entropy(logits, labels) * weights) / n

  def accumulate(total, batch):
    grads = jax.grad(batch_loss)(variables["params"], batch)
    return jax.tree.map(jnp.add, total, grads), None

  zeros = jax.tree.map(jnp.zeros_like, variables["params"])
  total, _ = jax.lax.scan(accumulate, zeros, (images, labels, weights))
  return jax.tree.map(jnp.abs, total)


def saliency_mask(saliency, ratio: float):
  """1.0 where the saliency is in the top `ratio` of all weights, else 0.0.

  A weight of zero saliency is never salient, whatever the threshold: when
  more than 1 - ratio of the weights have an exactly zero gradient (the outer
  taps of a 3x3 kernel on a 1x1 feature map only ever see padding), the
  quantile is 0 and `s >= 0` alone would select every weight.
  """
  flat = jnp.concatenate([s.reshape(-1) for s in jax.tree.leaves(saliency)])
  threshold = jnp.quantile(flat, 1.0 - ratio)
  return jax.tree.map(lambda s: ((s >= threshold) & (s > 0)).astype(s.dtype), saliency)


@base.register("salun", needs={base.RETAIN, base.FORGET},
               defaults={**random_label.DEFAULTS, "saliency_ratio": 0.5,
                         "saliency_batch_size": 128})
def salun(model, variables, access, request, config, rng):
  del request
  saliency = forget_saliency(model, variables, access.require(base.FORGET),
                             config.saliency_batch_size)
  mask = saliency_mask(saliency, config.saliency_ratio)
  new_variables, info = random_label.train_with_random_labels(
      model, variables, access, config, rng, update_mask=mask)
  info["mask_fraction"] = (
      sum(jnp.sum(m) for m in jax.tree.leaves(mask))
      / sum(m.size for m in jax.tree.leaves(mask)))
  return new_variables, info
