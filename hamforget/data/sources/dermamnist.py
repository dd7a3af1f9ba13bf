"""MedMNIST's DermaMNIST `.npz` files: HAM10000 pre-shrunk, with an official split.

`dermamnist.npz` (28x28), `dermamnist_64.npz`, `dermamnist_128.npz` and
`dermamnist_224.npz` from https://zenodo.org/records/10519652 (MedMNIST v2/+),
each with keys train_images / train_labels / val_images / val_labels /
test_images / test_labels: images uint8 (N, H, W, 3), labels (N, 1) in
`SKIN_CLASSES` order (MedMNIST's order is the alphabetical dx order too).

MedMNIST's split is kept as `Dataset.official_split`. The files carry no lesion
id, so each image is its own group.
"""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np

from hamforget.data import cache
from hamforget.data.errors import DataError
from hamforget.data.sources.common import SKIN_CLASSES, limit_index
from hamforget.data.types import SPLITS, Dataset, Examples

CLASS_NAMES = SKIN_CLASSES
KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
_FILE_NAME = re.compile(r"dermamnist(?:_(\d+))?\.npz")
HOW_TO_GET = ("Get dermamnist.npz (or dermamnist_64/_128/_224.npz) from "
              "https://zenodo.org/records/10519652 and pass the file, or the folder "
              "holding it, as --config.data.root.")


def pick_file(folder: str, image_size: int) -> str:
  """The DermaMNIST file in `folder` best suited to `image_size`.

  The one whose native size equals `image_size`, else the smallest larger one
  (shrinking loses less than enlarging), else the largest.
  """
  sizes = {}
  for name in sorted(os.listdir(folder)):
    match = _FILE_NAME.fullmatch(name)
    if match:
      sizes[int(match.group(1) or 28)] = os.path.join(folder, name)
  if not sizes:
    raise DataError(f"no dermamnist*.npz in {folder}. {HOW_TO_GET}")
  larger = [s for s in sizes if s >= image_size]
  return sizes[min(larger) if larger else max(sizes)]


def read_npz(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads and validates one DermaMNIST file; never unpickles.

  Returns:
    images uint8 (N, H, W, 3), labels int32 (N,), official split str (N,),
    the train, val and test parts concatenated in that order.
  """
  try:
    npz = np.load(path, allow_pickle=False)  # user data: never unpickle
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise DataError(f"{path}: not a readable .npz file: {e}. {HOW_TO_GET}") from e
  if not isinstance(npz, np.lib.npyio.NpzFile):  # a .npy holds one bare array
    raise DataError(f"{path}: a single {npz.dtype} {npz.shape} array (.npy), not an .npz "
                    f"archive: expected MedMNIST's .npz with the arrays {', '.join(KEYS)}. "
                    f"{HOW_TO_GET}")
  with npz:
    missing = [k for k in KEYS if k not in npz.files]
    if missing:
      raise DataError(f"{path}: missing key(s) {', '.join(missing)}; found "
                      f"{', '.join(npz.files) or 'none'}. Expected MedMNIST's "
                      f"{', '.join(KEYS)}.")
    try:
      parts = {k: npz[k] for k in KEYS}
    except ValueError as e:  # object arrays, which would need unpickling
      raise DataError(f"{path}: {e}") from e

  images, labels, split = [], [], []
  for name in SPLITS:
    x, y = parts[f"{name}_images"], parts[f"{name}_labels"]
    if x.ndim == 3:  # MedMNIST's grey datasets store (N, H, W)
      x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8:
      raise DataError(f"{path}: {name}_images is {x.dtype} {x.shape}; expected uint8 (N, H, W, 3).")
    if y.dtype.kind not in "iu" or y.size != len(x):
      raise DataError(f"{path}: {name}_labels is {y.dtype} {y.shape}; expected "
                      f"{len(x)} integer labels, shape ({len(x)}, 1).")
    y = y.reshape(-1)
    bad = np.flatnonzero((y < 0) | (y >= len(SKIN_CLASSES)))
    if bad.size:
      raise DataError(f"{path}: {bad.size} {name}_labels outside 0..{len(SKIN_CLASSES) - 1}, "
                      f"e.g. index {bad[0]} = {y[bad[0]]}.")
    images.append(x)
    labels.append(y.astype(np.int32))
    split.append(np.full(len(x), name))
  if len({x.shape[1:] for x in images}) != 1:
    raise DataError(f"{path}: the splits' image shapes differ: {[x.shape for x in images]}.")
  return np.concatenate(images), np.concatenate(labels), np.concatenate(split)


def load(root: str, *, image_size: int = 0, limit: int = 0, cache_dir: str = "",
         workers: int = 0) -> Dataset:
  """Loads DermaMNIST from a .npz file or a folder holding some.

  Args:
    root: a dermamnist*.npz file, or a folder (see `pick_file`).
    image_size: target height = width in pixels; 0 = native.
    limit: keep a class-stratified subset of at most this many; 0 = all.
    cache_dir, workers: unused (the arrays are already decoded).

  Returns:
    A Dataset of uint8 (N, S, S, 3) images with `official_split`; ids =
    groups = "train00000", "val00000", "test00000"...
  """
  del cache_dir, workers
  root = os.fspath(root)
  path = pick_file(root, image_size) if os.path.isdir(root) else root
  if not os.path.isfile(path):
    raise DataError(f"DermaMNIST file not found: {path}. {HOW_TO_GET}")
  images, labels, split = read_npz(path)
  # Ids number the examples within their official split, as MedMNIST does.
  ids = np.array([f"{s}{i:05d}" for s in SPLITS for i in range(np.sum(split == s))], dtype=str)
  keep = limit_index(labels, limit)
  ids = ids[keep]
  examples = Examples(cache.resize_images(images[keep], image_size), labels[keep], ids, ids)
  return Dataset(examples, CLASS_NAMES, split[keep],
                 f"DermaMNIST {os.path.basename(path)}")
