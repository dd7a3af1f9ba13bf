"""On-device normalisation and augmentation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hamforget.data import augment as aug


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      flip_horizontal=False, flip_vertical=False, rotation_degrees=0.0,
      brightness=0.0, contrast=0.0, saturation=0.0))
  config.update(overrides)
  return config


def _augment(rng, images, config):
  """augment under jit: eager dispatch of the per-example vmap is slow."""
  return jax.jit(lambda r, x: aug.augment(r, x, config))(rng, images)


_rotate = jax.jit(aug.rotate)
_warp = jax.jit(aug._warp, static_argnums=4)


def _images(b=8, h=12, w=12, c=3, seed=0):
  raw = np.random.default_rng(seed).integers(0, 256, (b, h, w, c), dtype=np.uint8)
  return aug.normalize(jnp.asarray(raw))


def test_normalize():
  x = aug.normalize(jnp.array([0, 255, 51], jnp.uint8))
  assert x.dtype == jnp.float32
  np.testing.assert_allclose(x, [-1.0, 1.0, (51 / 255 - 0.5) / 0.5], rtol=1e-6)


def test_identity_when_all_off():
  images = _images()
  out = aug.augment(jax.random.key(0), images, _config())
  assert out is images  # skipped in Python: nothing traced


def test_shapes_dtypes_range_and_determinism():
  config = _config(flip_horizontal=True, flip_vertical=True, rotation_degrees=30.0,
                   brightness=0.4, contrast=0.4, saturation=0.4)
  images = _images()
  step = jax.jit(lambda rng, x: aug.augment(rng, x, config))
  out = step(jax.random.key(1), images)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
  np.testing.assert_array_equal(out, step(jax.random.key(1), images))
  assert not np.array_equal(out, step(jax.random.key(2), images))
  # vmap over keys (e.g. seeds of a grid) works and matches the unbatched call.
  keys = jax.random.split(jax.random.key(3), 2)
  batched = jax.jit(jax.vmap(lambda k: aug.augment(k, images, config)))(keys)
  np.testing.assert_allclose(batched[1], step(keys[1], images), atol=1e-5)


def test_grey_images():
  config = _config(flip_horizontal=True, rotation_degrees=10.0, brightness=0.2,
                   contrast=0.2, saturation=0.5)
  images = _images(c=1)
  out = _augment(jax.random.key(0), images, config)
  assert out.shape == images.shape
  # Saturation alone on grey images is a no-op and is skipped.
  assert aug.augment(jax.random.key(0), images, _config(saturation=0.5)) is images


def test_horizontal_flip_per_example():
  images = _images(b=64)
  out = np.asarray(_augment(jax.random.key(0), images, _config(flip_horizontal=True)))
  flipped = np.array([np.array_equal(o, np.asarray(x)[:, ::-1]) for o, x in zip(out, images)])
  kept = np.array([np.array_equal(o, x) for o, x in zip(out, np.asarray(images))])
  assert np.all(flipped | kept)
  assert 10 < flipped.sum() < 54  # about half, independently per example


def test_vertical_flip_on_known_image():
  image = np.zeros((20, 4, 4, 1), np.float32)
  image[:, 0, 1, 0] = 1.0  # one bright pixel in the top row
  out = np.asarray(_augment(jax.random.key(0), jnp.asarray(image), _config(flip_vertical=True)))
  moved = [o[3, 1, 0] == 1.0 and o.sum() == 1.0 for o in out]  # to the bottom row
  kept = [np.array_equal(o, x) for o, x in zip(out, image)]
  assert all(m or k for m, k in zip(moved, kept)) and any(moved) and any(kept)


def test_rotation_zero_is_identity():
  images = _images()
  np.testing.assert_array_equal(_rotate(images, jnp.zeros(len(images))), images)


def test_flips_folded_into_rotation():
  images = _images(b=1, h=7, w=9)
  degrees = jnp.float32(20.0)
  rotated = np.asarray(_rotate(images, degrees[None]))[0]
  for flip_h, flip_v, expected in ((True, False, rotated[:, ::-1]), (False, True, rotated[::-1]),
                                   (True, True, rotated[::-1, ::-1])):
    out = _warp(images[0], degrees, jnp.bool_(flip_h), jnp.bool_(flip_v), aug.FILL_VALUE)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("k, degrees", [(1, 90.0), (3, -90.0), (2, 180.0)])
def test_rotation_matches_rot90(k, degrees):
  images = _images(b=2, h=9, w=9)
  out = np.asarray(_rotate(images, jnp.full(2, degrees)))
  expected = np.rot90(np.asarray(images), k=k, axes=(1, 2))
  # cos/sin of 90 degrees in float32 are a hair off, so compare with a tolerance;
  # the interior avoids the border where that hair can reach the fill.
  np.testing.assert_allclose(out[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-4)


def test_rotation_fills_corners_with_black():
  images = jnp.ones((1, 16, 16, 3))
  out = np.asarray(_rotate(images, jnp.array([45.0])))
  np.testing.assert_allclose(out[0, 0, 0], -1.0)  # the corner came from outside
  np.testing.assert_allclose(out[0, 8, 8], 1.0)  # the centre stays


def test_random_rotation_bounded():
  images = _images(b=4, h=16, w=16)
  out = _augment(jax.random.key(0), images, _config(rotation_degrees=15.0))
  assert out.shape == images.shape
  assert not np.array_equal(out, images)


def test_brightness_on_constant_image():
  gray = 0.5  # in [0, 1]
  images = jnp.full((32, 4, 4, 3), gray * 2 - 1)
  out = np.asarray(_augment(jax.random.key(0), images, _config(brightness=0.4)))
  factors = ((out + 1) / 2 / gray)[:, 0, 0, 0]
  # Each image is scaled by one factor in [0.6, 1.4], uniformly over its pixels.
  np.testing.assert_allclose((out + 1) / 2, gray * factors[:, None, None, None] * np.ones_like(out),
                             atol=1e-6)
  assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
  assert factors.std() > 0.05


def test_contrast_and_saturation_keep_constant_and_grey_images():
  # Contrast blends towards the mean, saturation towards the grey image: a
  # constant grey image is a fixed point of both.
  images = jnp.full((4, 5, 5, 3), 0.2)
  out = _augment(jax.random.key(0), images, _config(contrast=0.5, saturation=0.5))
  np.testing.assert_allclose(out, images, atol=1e-6)


def test_brightness_clips_to_range():
  images = jnp.ones((16, 3, 3, 3)) * 0.9
  out = _augment(jax.random.key(0), images, _config(brightness=0.9))
  assert float(out.max()) <= 1.0
