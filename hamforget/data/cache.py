"""Decode and resize images once, in parallel, into uint8 arrays cached as .npz.

Decoding the 10,015 HAM10000 JPEGs (600x450) takes tens of seconds on two
cores; a second run must start in seconds, and a changed input must never be
served from a stale cache. So the cache key is a hash of every input file's path,
size, modification time and content (its first and last `SAMPLE_BYTES`: the
whole of any file up to twice that) plus the target size and `CACHE_VERSION`.

Files are written atomically (temporary file, then `os.replace`) so a killed
run never leaves a half-written cache, and read with `allow_pickle=False`:
strings are stored as fixed-width unicode arrays, never as pickled objects.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import os
import sys
import zipfile
from typing import Callable, Sequence

import numpy as np
from PIL import Image
import tqdm

from hamforget import files
from hamforget.data.errors import DataError, first_few

# Bump whenever decoding or resizing changes, so that old caches are rebuilt.
# 2: corrupt JPEGs and 16-bit images are refused (a cache may hold their garbage).
CACHE_VERSION = 2
# Paths per task sent to a worker process: big enough to amortise the
# inter-process round trip, small enough for a smooth progress bar.
CHUNK = 64
# Bytes read from each end of an input file for the cache key. A JPEG's ends
# are its header and the end of its entropy-coded pixels, so replacing a file by
# another image of the same size and mtime changes them. Measured on 1,000
# files of 260 KB (HAM10000's mean) in the page cache: 0.17 s, so ~1.7 s for
# its 10,015 JPEGs, against ~3.7 s to hash every byte (and twice the reads on
# a cold disk).
SAMPLE_BYTES = 64 * 1024


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


# Modes of more than 8 bits per channel. `convert("RGB")` clips them to 255, so
# a 16-bit PNG (a scanner's export, say) would come out white: refused instead.
_WIDE_MODES = {"I": "32-bit integer", "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit",
               "I;16N": "16-bit", "F": "32-bit float"}
_JPEG_EOI, _JPEG_SOS, _JPEG_DRI = 0xD9, 0xDA, 0xDD
_JPEG_RST = range(0xD0, 0xD8)
# Markers that may end a scan: tables, restart interval, next scan, end of
# image, comments, application data (progressive JPEGs have several scans).
_JPEG_AFTER_SCAN = {0xC4, 0xCC, 0xDA, 0xD9, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xE0, 0xF0)}


def _jpeg_scan_end(data: bytes, pos: int, restart_interval: int) -> tuple[int, str | None]:
  """Walks one scan's entropy-coded data from `pos`: (position of the marker
  that ends it, or -1; a description of the corruption found, or None).

  Inside a scan a 0xFF byte may only be followed by 0x00 (a stuffed byte),
  0xFF (fill), or a marker; restart markers RST0..7 must come in order, and
  only when the image declares a restart interval. libjpeg reads a bogus
  restart marker with a warning that Pillow drops, and decodes garbage.
  """
  expected = 0
  while True:
    i = data.find(b"\xff", pos)
    if i < 0 or i + 1 >= len(data):
      return -1, None
    code = data[i + 1]
    if code in (0x00, 0xFF):
      pos = i + (2 if code == 0x00 else 1)
    elif code in _JPEG_RST:
      if not restart_interval:
        return i, (f"restart marker RST{code - 0xD0} at byte {i} in an image without a "
                   "restart interval: corrupt scan data")
      if code - 0xD0 != expected:
        return i, (f"restart marker RST{code - 0xD0} at byte {i} where RST{expected} belongs: "
                   "corrupt scan data")
      expected, pos = (expected + 1) % 8, i + 2
    elif code in _JPEG_AFTER_SCAN:
      return i, None
    else:
      return i, f"invalid marker 0xFF{code:02X} inside the scan data at byte {i}: corrupt scan data"


def jpeg_corruption(data: bytes) -> str | None:
  """What is structurally wrong with the JPEG file `data`, or None.

  Checks the marker segments (lengths inside the file), every scan's
  restart markers and the final end-of-image marker: corruption Pillow decodes
  silently. Bit errors inside the Huffman data that form no marker are only
  visible to libjpeg's warnings, which Pillow does not expose.
  """
  pos, restart_interval = 2, 0
  while pos + 1 < len(data):
    if data[pos] != 0xFF:
      return f"byte {pos} is 0x{data[pos]:02x} where a marker belongs: corrupt file"
    code = data[pos + 1]
    if code == 0xFF:  # fill byte before a marker
      pos += 1
      continue
    if code == _JPEG_EOI:
      return None
    if code in _JPEG_RST or code == 0x01:  # standalone markers
      pos += 2
      continue
    if pos + 4 > len(data):
      break
    end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    if end > len(data):
      return f"segment 0xFF{code:02X} at byte {pos} runs past the end of the file: corrupt or truncated"
    if code == _JPEG_DRI and end - pos >= 6:
      restart_interval = int.from_bytes(data[pos + 4:pos + 6], "big")
    pos = end
    if code == _JPEG_SOS:
      pos, problem = _jpeg_scan_end(data, pos, restart_interval)
      if problem or pos < 0:
        return problem or "no end-of-image marker after the scan data: truncated"
  return "no end-of-image marker: truncated"


def _check_decodable(image: Image.Image, data: bytes, path: str) -> None:
  """Raises ValueError for an image that would decode silently wrong."""
  kind = image.format or "unknown format"
  named = os.path.splitext(path)[1].lower()
  what = f"{kind}{f' named {named}' if named and named.strip('.') not in kind.lower() else ''}"
  if image.mode in _WIDE_MODES:
    raise ValueError(f"{_WIDE_MODES[image.mode]} image ({what}, mode {image.mode}): expected "
                     "8 bits per channel (RGB or greyscale); converting would clip it to "
                     "white. Save it as an 8-bit JPEG or PNG.")
  if image.format == "JPEG":
    problem = jpeg_corruption(data)
    if problem:
      raise ValueError(f"{problem}. Expected a complete JPEG: download the file again.")


def _decode_one(path: str, hw: tuple[int, int]) -> np.ndarray:
  """One image file -> uint8 (h, w, 3).

  Raises:
    ValueError: more than 8 bits per channel, or a structurally corrupt JPEG.
    OSError: what Pillow cannot decode (truncated data, broken streams).
  """
  h, w = hw
  with open(path, "rb") as f:
    data = f.read()
  with Image.open(io.BytesIO(data)) as image:
    _check_decodable(image, data, path)
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


def _content_sample(path: str, size: int) -> bytes:
  """SHA-256 of the file's first and last `SAMPLE_BYTES` (all of it when small)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    if size <= 2 * SAMPLE_BYTES:
      digest.update(f.read())
    else:
      digest.update(f.read(SAMPLE_BYTES))
      f.seek(size - SAMPLE_BYTES)
      digest.update(f.read(SAMPLE_BYTES))
  return digest.digest()


def fingerprint(paths: Sequence[str], *extra: object) -> str:
  """A hex digest of each file's absolute path, size, mtime and content, plus `extra`.

  Content means both ends of each file (`SAMPLE_BYTES` each; see
  `_content_sample`): a file replaced by one of the same size whose mtime was
  set back still changes the key. About 1.7 s for HAM10000 (see `SAMPLE_BYTES`).
  """
  digest = hashlib.sha256(json.dumps([CACHE_VERSION, *map(str, extra)]).encode())
  for path in paths:
    path = os.path.abspath(path)
    try:
      stat = os.stat(path)
      sample = _content_sample(path, stat.st_size)
      digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode() + sample + b"\n")
    except OSError:
      digest.update(f"{path}\0missing\n".encode())  # decoding will report it
  return digest.hexdigest()


def _save_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
  with files.atomic_open(path, "wb") as f:  # readers see the old file or the whole new one
    np.savez(f, **arrays)


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
