"""ResNet-18/34/50 in Flax Linen.

Linen rather than NNX because the project's contract is "plain pytrees at every
function boundary": a Linen module is stateless and its variables are the
`{"params", "batch_stats"}` dict that operators take and return, so `jit`,
`vmap` over seeds and orbax need no split/merge step.

Two stems: `imagenet` (7x7/2 conv + 3x3/2 max-pool, for 224x224 inputs) and
`small` (one 3x3/1 conv, no pool, for 8x8 to 64x64 inputs such as MNIST).
Each stage's output is sown into the `intermediates` collection under
`stage{i}` so that attention transfer (GKT) can read feature maps without a
second model definition.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any


class BasicBlock(nn.Module):
  """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    # Zero-init the last BN scale so each block starts as the identity
    # (Goyal et al. 2017): faster, more stable early training.
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides),
                           name="proj_conv")(residual)
      residual = self.norm(name="proj_norm")(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (x4), as in ResNet-50."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1),
                           (self.strides, self.strides), name="proj_conv")(residual)
      residual = self.norm(name="proj_norm")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet classifier.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block_cls: BasicBlock or BottleneckBlock.
    num_classes: size of the logits.
    width: multiplier on the base width of 64 channels (0.125 -> 8 channels).
    stem: "imagenet" (224x224 inputs) or "small" (<= 64x64 inputs).
    dtype: compute dtype (parameters stay float32); bfloat16 on accelerators.
    conv: the convolution module; swappable for a faster lowering.
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  width: float = 1.0
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Maps images (B, H, W, C) float in [-1, 1] to logits (B, num_classes) float32."""
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    base = max(1, int(round(64 * self.width)))
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(base, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
      x = nn.relu(norm(name="stem_norm")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    elif self.stem == "small":
      x = conv(base, (3, 3), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_norm")(x))
    else:
      raise ValueError(f"unknown stem {self.stem!r}: expected 'imagenet' or 'small'")
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(base * 2**i, conv=conv, norm=norm, strides=strides)(x)
      self.sow("intermediates", f"stage{i}", x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


# ResNet-10: one basic block per stage, ResNet-18's widths and strides at half
# its depth (and about half its compile time: smoke runs and tests).
ResNet10 = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock)
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
