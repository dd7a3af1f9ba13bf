"""Decode and resize images once, in parallel, into uint8 arrays cached as .npz.

Decoding the 10,015 HAM10000 JPEGs (600x450) takes tens of seconds on two
cores; a second run must start in seconds, and a changed input must never be
served from a stale cache. So the cache key is a hash of every input file's path,
size and modification time plus the target size and `CACHE_VERSION`.

Files are written atomically (temporary file, then `os.replace`) so a killed
run never leaves a half-written cache, and read with `allow_pickle=False`:
strings are stored as fixed-width unicode arrays, never as pickled objects.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import zipfile
from typing import Callable, Sequence

import numpy as np
from PIL import Image
import tqdm

from hamforget.data.errors import DataError, first_few

# Bump whenever decoding or resizing changes, so that old caches are rebuilt.
CACHE_VERSION = 1
# Paths per task sent to a worker process: big enough to amortise the
# inter-process round trip, small enough for a smooth progress bar.
CHUNK = 64


def default_cache_dir(cache_dir: str = "") -> str:
  """`cache_dir`, else $HAMFORGET_CACHE, else ~/.cache/hamforget."""
  return (cache_dir or os.environ.get("HAMFORGET_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "hamforget"))


# ----------------------------------------------------------------- resizing --


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 (N, H, W, C) images to (N, size, size, C), C = 1 or 3.

  Bilinear with PIL, which widens the filter when shrinking (antialiasing).
  Returns `images` itself when `size` is 0 or already the native size.
  """
  n, h, w, c = images.shape
  if size <= 0 or (h, w) == (size, size):
    return images
  out = np.empty((n, size, size, c), np.uint8)
  for i, image in enumerate(images):
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR)).reshape(size, size, c)
  return out


# ----------------------------------------------------------------- decoding --


def _decode_one(path: str, hw: tuple[int, int]) -> np.ndarray:
  """One image file -> uint8 (h, w, 3)."""
  h, w = hw
  with Image.open(path) as image:
    # For JPEGs, decode at 1/2, 1/4 or 1/8 scale (still >= the target) straight
    # from the DCT coefficients: several times faster than a full decode when
    # shrinking 600x450 to 28 or 64. A no-op for other formats.
    image.draft("RGB", (w, h))
    image = image.convert("RGB")
    if image.size != (w, h):
      image = image.resize((w, h), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _decode_chunk(paths: Sequence[str], hw: tuple[int, int]
                  ) -> tuple[np.ndarray, list[tuple[int, str]]]:
  """Decodes `paths` into uint8 (len(paths), h, w, 3).

  Returns the images (zeros where decoding failed) and (index, reason) for
  every failure: the caller reports all bad files at once.
  """
  out = np.zeros((len(paths), *hw, 3), np.uint8)
  failures = []
  for i, path in enumerate(paths):
    try:
      out[i] = _decode_one(path, hw)
    except Exception as e:  # pylint: disable=broad-except  # reported below
      failures.append((i, f"{type(e).__name__}: {e}"))
  return out, failures


def _native_hw(paths: Sequence[str]) -> tuple[int, int]:
  """(height, width) of the first readable image; reads headers only."""
  for path in paths:
    try:
      with Image.open(path) as image:
        return image.size[1], image.size[0]
    except Exception:  # pylint: disable=broad-except  # bad files reported later
      continue
  raise DataError(f"none of the {len(paths)} images can be read, e.g. {first_few(paths, 3)}")


def _progress(total: int, desc: str) -> tqdm.tqdm:
  # Off when stderr is a log file or a pipe: a bar there is just noise.
  return tqdm.tqdm(total=total, desc=desc, unit="img", disable=not sys.stderr.isatty())


def _available_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))  # what this process may use, not the host's count
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def _decoded_chunks(paths: list[str], hw: tuple[int, int], workers: int):
  """Yields (start, images, failures) for each chunk of `paths`, in any order."""
  starts = range(0, len(paths), CHUNK)
  if min(workers, len(starts)) <= 1:
    for start in starts:
      yield (start, *_decode_chunk(paths[start:start + CHUNK], hw))
    return
  # "spawn", not fork: the parent may already run JAX's threads, and a forked
  # copy of a multithreaded process can deadlock. (So scripts calling this
  # need the usual `if __name__ == "__main__":` guard.)
  context = multiprocessing.get_context("spawn")
  pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(starts)), mp_context=context)
  try:
    futures = {pool.submit(_decode_chunk, paths[s:s + CHUNK], hw): s for s in starts}
    for future in concurrent.futures.as_completed(futures):
      yield (futures[future], *future.result())
  finally:
    pool.shutdown(cancel_futures=True)  # on Ctrl-C, do not decode the rest first


def decode_and_resize(paths: Sequence[str], size: int, workers: int = 0,
                      desc: str = "decoding") -> np.ndarray:
  """Decodes image files into one uint8 array, in parallel.

  Args:
    paths: image files (any format PIL reads; JPEGs take the fast draft path).
    size: target height = width in pixels; 0 keeps the first image's native
      size (and resizes any image that differs to it).
    workers: decode processes; 0 = all available cores, 1 = in this process
      (also used whenever there is at most one chunk of `CHUNK` images).
    desc: progress-bar label.

  Returns:
    uint8 (N, size, size, 3), RGB, in the order of `paths`.

  Raises:
    DataError: some files are missing or cannot be decoded; says how many and
      shows the first few, after trying all of them.
  """
  paths = [os.fspath(p) for p in paths]
  hw = (size, size) if size > 0 else _native_hw(paths)
  images = np.zeros((len(paths), *hw, 3), np.uint8)
  failures: list[tuple[int, str]] = []
  with _progress(len(paths), desc) as bar:
    for start, chunk, bad in _decoded_chunks(paths, hw, workers or _available_cpus()):
      images[start:start + len(chunk)] = chunk
      failures += [(start + i, reason) for i, reason in bad]
      bar.update(len(chunk))
  if failures:
    failures.sort()
    shown = [f"{paths[i]} ({reason})" for i, reason in failures]
    raise DataError(f"{len(failures)} of {len(paths)} images cannot be read: {first_few(shown)}")
  return images


# ------------------------------------------------------------------ caching --


def fingerprint(paths: Sequence[str], *extra: object) -> str:
  """A hex digest of each file's absolute path, size and mtime, plus `extra`.

  Cheap (one stat per file, no reading), and any edit, replacement or touch
  of an input changes it.
  """
  digest = hashlib.sha256(json.dumps([CACHE_VERSION, *map(str, extra)]).encode())
  for path in paths:
    path = os.path.abspath(path)
    try:
      stat = os.stat(path)
      digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    except OSError:
      digest.update(f"{path}\0missing\n".encode())  # decoding will report it
  return digest.hexdigest()


def _save_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
  except BaseException:
    os.unlink(tmp)
    raise


def _load(path: str) -> dict[str, np.ndarray] | None:
  """The arrays in `path`, or None if it is absent or unreadable (e.g. truncated)."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {key: npz[key] for key in npz.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
    return None


def load_or_build(cache_dir: str, name: str, key: str,
                  build: Callable[[], dict[str, np.ndarray]],
                  is_valid: Callable[[dict[str, np.ndarray]], bool] | None = None,
                  ) -> dict[str, np.ndarray]:
  """Returns the arrays cached under (`name`, `key`), building and saving them if absent.

  Args:
    cache_dir: folder of the cache files ("" -> `default_cache_dir()`).
    name: a readable file-name prefix, e.g. "ham10000-64px".
    key: a digest of everything the arrays depend on (see `fingerprint`).
    build: computes the arrays; numeric or unicode ('<U') arrays only.
    is_valid: an extra check of a loaded cache; False rebuilds it.
  """
  cache_dir = default_cache_dir(cache_dir)
  path = os.path.join(cache_dir, f"{name}-{key[:24]}.npz")
  arrays = _load(path)
  if arrays is not None and (is_valid is None or is_valid(arrays)):
    return arrays
  arrays = build()
  for k, v in arrays.items():
    if v.dtype == object:  # would need pickling to store
      raise TypeError(f"cache array {k!r} has dtype object; store strings as dtype str")
  os.makedirs(cache_dir, exist_ok=True)
  _save_atomic(path, arrays)
  return arrays


def cached_decode(paths: Sequence[str], size: int, cache_dir: str = "",
                  workers: int = 0, name: str = "images") -> np.ndarray:
  """`decode_and_resize(paths, size, workers)`, cached on disk.

  The key covers the paths, their sizes and mtimes and `size`. The cache also
  stores the paths and checks them on load, so a hit is never misaligned.

  Returns:
    uint8 (N, size, size, 3) (native size when `size` is 0).
  """
  paths = [os.fspath(p) for p in paths]
  expected = np.asarray(paths, dtype=str)

  def build():
    images = decode_and_resize(paths, size, workers, desc=f"decoding {name}")
    return {"images": images, "paths": expected}

  def is_valid(arrays):
    return ("images" in arrays and len(arrays["images"]) == len(paths)
            and np.array_equal(arrays.get("paths"), expected))

  arrays = load_or_build(cache_dir, f"{name}-{size}px", fingerprint(paths, size),
                         build, is_valid)
  return arrays["images"]
