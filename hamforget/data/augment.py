"""Normalisation and augmentation on the device, inside jitted steps.

This is the one augmentation implementation: both the device-resident path and
the grain path hand uint8 batches to the jitted step, which calls `normalize`
then `augment`. Keeping it in JAX means no CPU work per image, the same result
on both paths, and randomness that follows `jax.random` keys (so a `vmap` over
seeds or forget requests augments each member differently but reproducibly).

`config_augment` (the `config.augment` section) is read at trace time: its
values are Python constants, so an option that is 0/False is skipped in Python
and costs nothing in the compiled program.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# Black after normalisation, used to fill the corners a rotation uncovers.
FILL_VALUE = -1.0
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def normalize(images: jax.Array) -> jax.Array:
  """uint8 0..255 -> float32 in [-1, 1]: mean 0.5, std 0.5 in [0, 1] units."""
  return (images.astype(jnp.float32) / 255.0 - 0.5) / 0.5


def rotate(images: jax.Array, degrees: jax.Array, fill: float = FILL_VALUE) -> jax.Array:
  """Rotates each image counter-clockwise about its centre, bilinear.

  Args:
    images: float (B, H, W, C).
    degrees: float (B,), counter-clockwise angle in degrees (the convention of
      torchvision's `rotate` and `np.rot90`).
    fill: value of pixels that come from outside the input.

  Returns:
    float (B, H, W, C), same dtype as `images`.
  """
  return jax.vmap(lambda image, d: _warp(image, d, False, False, fill))(images, degrees)


def _warp(image: jax.Array, degrees: jax.Array, flip_horizontal: jax.Array,
          flip_vertical: jax.Array, fill: float) -> jax.Array:
  """flip(rotate(image)) for one (H, W, C) image, as a single bilinear gather.

  Flips are folded into the sampling grid rather than applied to the rotated
  image: XLA on CPU fuses the gather into every consumer, so a select between
  the rotated image and its reverse would run the gather twice (about 2x
  slower, measured on a 128x224x224x3 batch).
  """
  height, width, _ = image.shape
  theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  rows, cols = jnp.meshgrid(
      jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
      indexing="ij")
  rows = jnp.where(flip_vertical, height - 1 - rows, rows)
  cols = jnp.where(flip_horizontal, width - 1 - cols, cols)
  center_row, center_col = (height - 1) / 2.0, (width - 1) / 2.0
  d_row, d_col = rows - center_row, cols - center_col
  # Inverse map: the output pixel at offset (d_row, d_col) reads the input at
  # that offset turned by -theta visually. With rows pointing down this is
  # (cos*dr + sin*dc, -sin*dr + cos*dc); at 90 degrees it reduces to np.rot90.
  src_row = center_row + cos * d_row + sin * d_col
  src_col = center_col - sin * d_row + cos * d_col
  return _bilinear(image, src_row, src_col, fill)


def _bilinear(image: jax.Array, src_row: jax.Array, src_col: jax.Array, fill: float) -> jax.Array:
  """Samples (H, W, C) `image` at float (H', W') coordinates, bilinear.

  The same as `jax.scipy.ndimage.map_coordinates(order=1, mode="constant")` per
  channel (taps outside the image read `fill`), but one gather fetches all
  channels of a tap (about 1.5x faster on CPU at 224x224).
  """
  height, width, _ = image.shape
  row0, col0 = jnp.floor(src_row), jnp.floor(src_col)
  w_row, w_col = (src_row - row0)[..., None], (src_col - col0)[..., None]
  row0, col0 = row0.astype(jnp.int32), col0.astype(jnp.int32)

  def tap(r, c):
    inside = ((r >= 0) & (r < height) & (c >= 0) & (c < width))[..., None]
    value = image[jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)].astype(jnp.float32)
    return jnp.where(inside, value, fill)

  out = ((1 - w_row) * (1 - w_col) * tap(row0, col0) + (1 - w_row) * w_col * tap(row0, col0 + 1)
         + w_row * (1 - w_col) * tap(row0 + 1, col0) + w_row * w_col * tap(row0 + 1, col0 + 1))
  return out.astype(image.dtype)


def _grayscale(image01: jax.Array) -> jax.Array:
  """(H, W, C) in [0, 1] -> (H, W, 1) luma (C = 3) or the image (C = 1)."""
  if image01.shape[-1] == 3:
    # A weighted sum, not a tensordot: XLA on CPU lowers the latter to an
    # (N, 3) x (3, 1) dot that does not fuse with the elementwise ops around it.
    red, green, blue = image01[..., 0], image01[..., 1], image01[..., 2]
    return (_LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue)[..., None]
  return image01.mean(axis=-1, keepdims=True)


def _blend(image01: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision's _blend: factor * image + (1 - factor) * other, clipped to [0, 1]."""
  return jnp.clip(factor * image01 + (1.0 - factor) * other, 0.0, 1.0)


def _factor(key: jax.Array, strength: float) -> jax.Array:
  """Uniform in [max(0, 1 - s), 1 + s], as torchvision's ColorJitter."""
  return jax.random.uniform(key, (), jnp.float32, max(0.0, 1.0 - strength), 1.0 + strength)


def _colour_jitter(keys, image: jax.Array, config: Any) -> jax.Array:
  """Brightness, contrast, saturation on one (H, W, C) normalised image.

  Defined on [0, 1] images as torchvision's ColorJitter; its clips are what
  keep the output inside [-1, 1]. Fixed order brightness, contrast, saturation
  (torchvision draws a random order).
  """
  k_bright, k_contrast, k_saturation = keys
  dtype = image.dtype
  x = jnp.clip((image.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)
  if config.brightness:
    x = _blend(x, jnp.zeros_like(x), _factor(k_bright, float(config.brightness)))
  if config.contrast:
    mean = _grayscale(x).mean()
    x = _blend(x, mean, _factor(k_contrast, float(config.contrast)))
  if config.saturation and image.shape[-1] == 3:
    x = _blend(x, _grayscale(x), _factor(k_saturation, float(config.saturation)))
  return (x * 2.0 - 1.0).astype(dtype)


def _augment_one(key: jax.Array, image: jax.Array, config: Any) -> jax.Array:
  """One (H, W, C) normalised image; `config` is read in Python (static)."""
  # A fixed key per operation, so turning one option on or off leaves the
  # random draws of the others unchanged.
  k_hflip, k_vflip, k_rotate, *k_colour = jax.random.split(key, 6)
  # Colour before geometry, for two reasons. The corners a rotation uncovers
  # stay black rather than being brightened or pulled towards the mean, and the
  # contrast mean is that of the picture, not of picture plus corners. And the
  # rotation's gather is the last op: XLA on CPU fuses a gather into each of
  # its consumers, so colour ops after it (a mean, then a blend) re-ran it:
  # 0.39 s against 0.07 s for 32x224x224x3 on 2 CPU cores. Per-pixel colour
  # ops commute with the flips and, up to float rounding, with bilinear
  # interpolation.
  if config.brightness or config.contrast or (config.saturation and image.shape[-1] == 3):
    image = _colour_jitter(k_colour, image, config)
  flip_h = jax.random.bernoulli(k_hflip) if config.flip_horizontal else False
  flip_v = jax.random.bernoulli(k_vflip) if config.flip_vertical else False
  if config.rotation_degrees:
    limit = float(config.rotation_degrees)
    degrees = jax.random.uniform(k_rotate, (), jnp.float32, -limit, limit)
    image = _warp(image, degrees, flip_h, flip_v, FILL_VALUE)
  else:
    if config.flip_horizontal:
      image = jnp.where(flip_h, image[:, ::-1, :], image)
    if config.flip_vertical:
      image = jnp.where(flip_v, image[::-1, :, :], image)
  return image


def augment(rng: jax.Array, images: jax.Array, config_augment: Any) -> jax.Array:
  """Random colour jitter, rotation and flips (in that order), per example.

  Args:
    rng: a `jax.random` key; the same key gives the same output.
    images: float (B, H, W, C) in [-1, 1] (the output of `normalize`).
    config_augment: `config.augment`: flip_horizontal, flip_vertical (bools),
      rotation_degrees (angle uniform in [-d, d]; corners filled with black,
      -1), brightness, contrast, saturation (factors uniform in [1-s, 1+s];
      saturation only for C = 3). 0/False turns an option off.

  Returns:
    float (B, H, W, C), same dtype, in [-1, 1] when the input is.
  """
  c = config_augment
  if not (c.flip_horizontal or c.flip_vertical or c.rotation_degrees or c.brightness
          or c.contrast or (c.saturation and images.shape[-1] == 3)):
    return images
  keys = jax.random.split(rng, images.shape[0])
  return jax.vmap(lambda k, x: _augment_one(k, x, c))(keys, images)
