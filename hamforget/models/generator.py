"""The generator of gated knowledge transfer (Chundawat et al. 2023, after
Micaelli & Storkey 2019): noise z -> an image the teacher finds informative."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax


class Generator(nn.Module):
  """Maps z (B, latent) to images (B, H, W, C) in the classifier's input space.

  Dense to (H/4, W/4, 2*width), two nearest-neighbour x2 upsamplings with 3x3
  convs, BatchNorm and LeakyReLU, a 3x3 conv to C channels and a final affine
  BatchNorm, as the zero-shot unlearning reference's generator (Chundawat et
  al. 2023, after Micaelli and Storkey 2019) ends: each channel comes out
  standardised and then scaled and shifted by learned parameters, unbounded,
  so the generator can reach the input statistics the teacher responds to (a
  tanh saturates there and starves the generator of gradient). H and W
  must be divisible by 4. `conv` is the convolution module: pass the
  classifier's (`hamforget.models.fast_conv` on CPU), since XLA:CPU's own
  gradient convolutions are ~10x slower inside the training scan.
  """
  image_shape: tuple[int, int, int]
  width: int = 64
  conv: Any = nn.Conv

  @nn.compact
  def __call__(self, z, train: bool = True):
    h, w, c = self.image_shape
    if h % 4 or w % 4:
      raise ValueError(f"generator image size {h}x{w} must be divisible by 4")
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    x = nn.Dense(h // 4 * w // 4 * 2 * self.width)(z)
    x = norm()(x.reshape(z.shape[0], h // 4, w // 4, 2 * self.width))
    for features in (2 * self.width, self.width):
      x = jax.image.resize(x, (x.shape[0], x.shape[1] * 2, x.shape[2] * 2, x.shape[3]), "nearest")
      x = nn.leaky_relu(norm()(self.conv(features, (3, 3))(x)), 0.2)
    return norm()(self.conv(c, (3, 3))(x))
