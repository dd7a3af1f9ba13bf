"""The decode cache: parallel decode, draft decoding, hits, rebuilds, atomic files."""

import os

import numpy as np
import pytest
from PIL import Image

import fixtures
from hamforget.data import cache
from hamforget.data.errors import DataError
from hamforget.data.sources import ham10000


def write_images(folder, n=6, hw=(45, 60)):
  folder.mkdir(parents=True, exist_ok=True)
  paths = [folder / f"img{i}.jpg" for i in range(n)]
  for i, path in enumerate(paths):
    fixtures.write_jpeg(path, fixtures.ham_colour(i), hw)
  return [str(p) for p in paths]


def mean_colours(images):
  return images.reshape(len(images), -1, images.shape[-1]).mean(axis=1)


@pytest.fixture
def decode_calls(monkeypatch):
  """Records the paths of every `decode_and_resize` call (still decoding)."""
  calls = []
  real = cache.decode_and_resize

  def spy(paths, *args, **kwargs):
    calls.append(list(paths))
    return real(paths, *args, **kwargs)

  monkeypatch.setattr(cache, "decode_and_resize", spy)
  return calls


# ----------------------------------------------------------------- decoding --


def test_decode_and_resize_shapes_colours_and_order(tmp_path):
  paths = write_images(tmp_path, n=70)  # more than one chunk
  images = cache.decode_and_resize(paths, 8, workers=1)
  assert images.shape == (70, 8, 8, 3) and images.dtype == np.uint8
  np.testing.assert_allclose(mean_colours(images), [fixtures.ham_colour(i) for i in range(70)], atol=4)
  np.testing.assert_array_equal(cache.decode_and_resize(paths, 8, workers=2), images)


def test_decode_native_size(tmp_path):
  paths = write_images(tmp_path, n=2, hw=(45, 60))
  assert cache.decode_and_resize(paths, 0, workers=1).shape == (2, 45, 60, 3)


def test_decode_converts_grey_and_png_to_rgb(tmp_path):
  Image.fromarray(np.full((20, 30), 200, np.uint8)).save(tmp_path / "grey.jpg")
  Image.fromarray(np.full((20, 30, 3), 50, np.uint8)).save(tmp_path / "rgb.png")
  images = cache.decode_and_resize([tmp_path / "grey.jpg", tmp_path / "rgb.png"], 8, workers=1)
  assert images.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(mean_colours(images), [[200] * 3, [50] * 3], atol=2)


def test_draft_decodes_large_jpegs_at_reduced_scale(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  smooth = np.kron(rng.integers(0, 256, (9, 12, 3)), np.ones((50, 50, 1))).astype(np.uint8)
  Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)  # 600x450, like HAM10000
  sizes = []
  real_resize = Image.Image.resize

  def spy(self, *args, **kwargs):
    sizes.append(self.size)
    return real_resize(self, *args, **kwargs)

  monkeypatch.setattr(Image.Image, "resize", spy)
  fast = cache.decode_and_resize([tmp_path / "big.jpg"], 28, workers=1)[0]
  assert sizes == [(75, 57)]  # decoded at 1/8 scale, the smallest that is >= 28
  with Image.open(tmp_path / "big.jpg") as image:  # full decode, then resize
    slow = np.asarray(real_resize(image.convert("RGB"), (28, 28), Image.BILINEAR))
  error = np.abs(fast.astype(int) - slow)
  assert np.median(error) <= 2 and error.mean() < 8


def test_decode_reports_every_bad_file(tmp_path):
  paths = write_images(tmp_path, n=8)
  open(paths[1], "wb").close()                                # empty
  open(paths[4], "wb").write(b"\xff\xd8 not really a jpeg")   # garbage
  os.remove(paths[6])                                         # missing
  with pytest.raises(DataError) as error:
    cache.decode_and_resize(paths, 8, workers=1)
  message = str(error.value)
  assert "3 of 8 images cannot be read" in message
  assert all(paths[i] in message for i in (1, 4, 6))
  assert paths[0] not in message


def test_resize_images_grey_and_rgb():
  grey = np.zeros((3, 28, 28, 1), np.uint8)
  rgb = np.full((2, 8, 8, 3), 77, np.uint8)
  assert cache.resize_images(grey, 16).shape == (3, 16, 16, 1)
  np.testing.assert_array_equal(cache.resize_images(rgb, 4), np.full((2, 4, 4, 3), 77))
  assert cache.resize_images(rgb, 8) is rgb and cache.resize_images(rgb, 0) is rgb


# ------------------------------------------------------------------ caching --


def test_cache_hit_skips_decoding(tmp_path, decode_calls):
  paths = write_images(tmp_path / "img")
  first = cache.cached_decode(paths, 8, str(tmp_path / "cache"), workers=1, name="test")
  second = cache.cached_decode(paths, 8, str(tmp_path / "cache"), workers=1, name="test")
  assert len(decode_calls) == 1
  np.testing.assert_array_equal(first, second)
  files = os.listdir(tmp_path / "cache")
  assert len(files) == 1 and files[0].startswith("test-8px-") and files[0].endswith(".npz")
  with np.load(tmp_path / "cache" / files[0], allow_pickle=False) as npz:
    assert npz["paths"].dtype.kind == "U" and list(npz["paths"]) == paths


def test_cache_rebuilds_on_changed_image_size_or_paths(tmp_path, decode_calls):
  paths = write_images(tmp_path / "img")
  cache_dir = str(tmp_path / "cache")
  cache.cached_decode(paths, 8, cache_dir, workers=1)
  fixtures.write_jpeg(paths[2], (0, 0, 0))  # same size on disk is possible: mtime counts
  stat = os.stat(paths[2])
  os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  images = cache.cached_decode(paths, 8, cache_dir, workers=1)
  assert len(decode_calls) == 2 and images[2].max() < 10
  cache.cached_decode(paths, 4, cache_dir, workers=1)
  cache.cached_decode(paths[:-1], 4, cache_dir, workers=1)
  assert len(decode_calls) == 4
  cache.cached_decode(paths, 8, cache_dir, workers=1)
  assert len(decode_calls) == 4


def test_corrupt_cache_is_rebuilt_and_no_temp_files_remain(tmp_path, decode_calls):
  paths = write_images(tmp_path / "img", n=3)
  cache_dir = tmp_path / "cache"
  expected = cache.cached_decode(paths, 8, str(cache_dir), workers=1)
  (name,) = os.listdir(cache_dir)
  (cache_dir / name).write_bytes((cache_dir / name).read_bytes()[:100])  # a killed writer
  np.testing.assert_array_equal(cache.cached_decode(paths, 8, str(cache_dir), workers=1), expected)
  assert len(decode_calls) == 2 and os.listdir(cache_dir) == [name]


def test_load_or_build_refuses_object_arrays(tmp_path):
  with pytest.raises(TypeError, match="dtype object"):
    cache.load_or_build(str(tmp_path), "x", "0" * 64, lambda: {"a": np.array([{}], dtype=object)})
  assert os.listdir(tmp_path) == []


def test_default_cache_dir(monkeypatch):
  monkeypatch.setenv("HAMFORGET_CACHE", "/somewhere")
  assert cache.default_cache_dir("") == "/somewhere"
  assert cache.default_cache_dir("/explicit") == "/explicit"
  monkeypatch.delenv("HAMFORGET_CACHE")
  assert cache.default_cache_dir("").endswith(os.path.join(".cache", "hamforget"))


# ------------------------------------------------- HAM10000 through the cache --


def test_ham10000_second_load_is_a_cache_hit_and_edits_rebuild(tmp_path, decode_calls):
  root, cache_dir = tmp_path / "ham", str(tmp_path / "cache")
  rows = fixtures.write_ham10000(root, n_lesions=8)
  first = ham10000.load(root, image_size=8, cache_dir=cache_dir, workers=1)
  second = ham10000.load(root, image_size=8, cache_dir=cache_dir, workers=1)
  assert len(decode_calls) == 1
  np.testing.assert_array_equal(first.examples.images, second.examples.images)

  # A relabelled row needs no decode: labels come from the metadata each time.
  rows[0]["dx"] = "vasc"
  fixtures.write_ham10000(root, rows, write_images=False)
  assert ham10000.load(root, image_size=8, cache_dir=cache_dir, workers=1).examples.labels[0] == 6
  assert len(decode_calls) == 1

  # A dropped row or a replaced image does.
  fixtures.write_ham10000(root, rows[1:], write_images=False)
  assert len(ham10000.load(root, image_size=8, cache_dir=cache_dir, workers=1).examples) == len(rows) - 1
  image = root / "HAM10000_images_part_1" / f"{rows[1]['image_id']}.jpg"
  fixtures.write_jpeg(image, (255, 255, 255), image_hw=(30, 30))
  dataset = ham10000.load(root, image_size=8, cache_dir=cache_dir, workers=1)
  assert len(decode_calls) == 3 and dataset.examples.images[0].min() > 245
