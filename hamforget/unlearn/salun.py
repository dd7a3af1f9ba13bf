"""`salun`: random-label unlearning restricted to the weights salient for forgetting.

SalUn of Fan et al. ICLR 2024, "SalUn: Empowering Machine Unlearning via
Gradient-based Weight Saliency". The saliency of each weight is the magnitude
of the gradient of the forget loss at the original weights theta_o,

    s = | grad_theta CE(D_f; theta) at theta_o |,

and the mask m = 1[s >= gamma] keeps the top `saliency_ratio` of all weights
(gamma is the global (1 - ratio)-quantile over every parameter: the median for
the default 0.5); weights of exactly zero saliency are never kept. Then
random-label training (as the `random_label` operator,
`common.train_with_random_labels`) runs with its updates masked, so that, as the paper's theta_u = m * (theta_o + delta) + (1 - m) *
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

from hamforget import train
from hamforget.data import batches
from hamforget.unlearn import base, common

DEFAULTS = {"learning_rate": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "num_epochs": 1.0,
            "batch_size": 128, "forget_batch_size": 32, "saliency_ratio": 0.5,
            "saliency_batch_size": 128}


def forget_saliency(model, variables, forget: batches.DeviceData, batch_size: int):
  """|grad of the mean forget-set cross-entropy| w.r.t. the params, eval mode."""
  n = forget.size

  def batch_loss(params, batch):
    images, labels, is_real = batch
    logits, _ = train.apply_model(
        model, {"params": params, "batch_stats": variables["batch_stats"]},
        batches.model_input(images), train=False)
    return jnp.sum(train.cross_entropy(logits, labels) * is_real) / n

  def accumulate(total, batch):
    grads = jax.grad(batch_loss)(variables["params"], batch)
    return jax.tree.map(jnp.add, total, grads), None

  zeros = jax.tree.map(jnp.zeros_like, variables["params"])
  total, _ = jax.lax.scan(accumulate, zeros, batches.fixed_size_batches(forget, batch_size))
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


@base.register("salun", needs={base.RETAIN, base.FORGET}, defaults=DEFAULTS)
def salun(model, variables, access, request, config, rng):
  del request
  saliency = forget_saliency(model, variables, access.require(base.FORGET),
                             config.saliency_batch_size)
  mask = saliency_mask(saliency, config.saliency_ratio)
  new_variables, info = common.train_with_random_labels(
      model, variables, access, config, rng, update_mask=mask)
  info["mask_fraction"] = (
      sum(jnp.sum(m) for m in jax.tree.leaves(mask))
      / sum(m.size for m in jax.tree.leaves(mask)))
  return new_variables, info
