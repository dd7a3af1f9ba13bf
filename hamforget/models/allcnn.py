"""AllCNN (Springenberg et al. 2015), the MNIST network of the zero-shot
unlearning paper (Chundawat et al. 2023): all-convolutional, strided convs in
place of pooling, BatchNorm after every conv, global average pooling.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class AllCNN(nn.Module):
  """Attributes: num_classes; width (1.0 = 96/192 channels); dropout rate; dtype; conv."""
  num_classes: int
  width: float = 1.0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  conv: Any = nn.Conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Images (B, H, W, C) in [-1, 1] -> logits (B, num_classes) float32."""
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype)
    narrow, wide = max(1, int(96 * self.width)), max(1, int(192 * self.width))
    x = x.astype(self.dtype)
    stages = [(narrow, 1), (narrow, 1), (narrow, 2), (wide, 1), (wide, 1), (wide, 2)]
    for i, (features, stride) in enumerate(stages):
      x = nn.relu(norm()(conv(features, (3, 3), (stride, stride))(x)))
      if stride == 2:
        self.sow("intermediates", f"stage{i // 3}", x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(norm()(conv(wide, (3, 3))(x)))
    x = nn.relu(norm()(conv(wide, (1, 1))(x)))
    self.sow("intermediates", "stage2", x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
