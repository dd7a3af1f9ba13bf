"""Kaggle's HMNIST CSVs: HAM10000 pre-shrunk to 28x28 or 8x8 pixel tables.

Files `hmnist_28_28_RGB.csv`, `hmnist_28_28_L.csv`, `hmnist_8_8_RGB.csv` and
`hmnist_8_8_L.csv` from Kaggle 'kmader/skin-cancer-mnist-ham10000': a header
`pixel0000,...,label`, then one image per row, pixels in row-major order with
the RGB channels interleaved per pixel (28*28*3 = 2,352 columns), then the label.

Kaggle's label order (0 akiec, 1 bcc, 2 bkl, 3 df, 4 nv, 5 vasc, 6 mel) is not
HAM10000's alphabetical one; labels are remapped onto `SKIN_CLASSES`.

The rows carry no lesion id, so each row is its own group: splits of this
source can put two images of one lesion on both sides. Prefer the `ham10000`
source when splits must be by lesion.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from hamforget.data import cache
from hamforget.data.errors import DataError, Problems
from hamforget.data.sources.common import SKIN_CLASSES, limit_index
from hamforget.data.types import Dataset, Examples

CLASS_NAMES = SKIN_CLASSES
KAGGLE_CLASSES = ("akiec", "bcc", "bkl", "df", "nv", "vasc", "mel")
# Kaggle label -> index into SKIN_CLASSES.
KAGGLE_TO_CLASS = np.array([SKIN_CLASSES.index(c) for c in KAGGLE_CLASSES], np.int32)
_FILE_NAME = re.compile(r"hmnist_(\d+)_(\d+)_(RGB|L)\.csv")
HOW_TO_GET = ("Get hmnist_28_28_RGB.csv (or _L, or the 8_8 variants) from Kaggle "
              "'kmader/skin-cancer-mnist-ham10000' and pass the file as --config.data.root.")


def _shape_from_name(path: str) -> tuple[int, int, int]:
  match = _FILE_NAME.fullmatch(os.path.basename(path))
  if not match:
    raise DataError(f"{path}: cannot tell the image size from the file name; expected "
                    "hmnist_<H>_<W>_<RGB|L>.csv as published, e.g. hmnist_28_28_RGB.csv.")
  h, w, mode = match.groups()
  return int(h), int(w), 3 if mode == "RGB" else 1


def read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Parses and validates one HMNIST CSV.

  Returns:
    images uint8 (N, H, W, C) and Kaggle labels int32 (N,) in 0..6.

  Raises:
    DataError: missing label column, wrong pixel-column count for the size in
      the name, unparsable cells, or labels/pixels out of range (with lines).
  """
  h, w, c = _shape_from_name(path)
  try:
    # pandas' C parser: ~2 s for the 10,015 x 2,353 RGB table, and its errors
    # name the file line of a ragged row.
    frame = pd.read_csv(path, encoding="utf-8-sig", index_col=False)
  except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
    raise DataError(f"{path}: cannot parse as CSV: {e}") from e
  header = [str(column) for column in frame.columns]
  if "label" not in header:
    raise DataError(f"{path}: no 'label' column in the header "
                    f"({len(header)} columns: {', '.join(header[:3])}...).")
  if len(header) - 1 != h * w * c:
    raise DataError(f"{path}: {len(header) - 1} pixel columns, but a {h}x{w}x{c} image "
                    f"(from the file name) needs {h * w * c}.")
  if frame.empty:
    raise DataError(f"{path}: no rows under the header.")

  problems = Problems(path)
  lines = np.arange(len(frame)) + 2  # line 1 is the header
  not_integer = np.zeros(len(frame), bool)
  for column in frame.columns:
    if frame[column].dtype.kind not in "iu":  # text, empty cells or decimals
      values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
      not_integer |= ~np.isfinite(values) | (values != np.round(values))
  problems.add("row(s) with empty or non-integer cells", [f"line {l}" for l in lines[not_integer]])
  problems.raise_if_any()
  table = frame.to_numpy(np.int64)
  labels = table[:, header.index("label")]
  pixels = np.delete(table, header.index("label"), axis=1)
  problems.add("row(s) with a label outside 0..6",
               [f"line {l} label {v}" for l, v in zip(lines, labels) if not 0 <= v <= 6])
  bad = np.flatnonzero(((pixels < 0) | (pixels > 255)).any(axis=1))
  problems.add("row(s) with pixels outside 0..255", [f"line {lines[i]}" for i in bad])
  problems.raise_if_any()
  return pixels.astype(np.uint8).reshape(-1, h, w, c), labels.astype(np.int32)


def load(root: str, *, image_size: int = 0, limit: int = 0, cache_dir: str = "",
         workers: int = 0) -> Dataset:
  """Loads one HMNIST CSV (`root` is the file).

  Args:
    root: path of hmnist_<H>_<W>_<RGB|L>.csv.
    image_size: target height = width in pixels; 0 = native.
    limit: keep a class-stratified subset of at most this many rows; 0 = all.
    cache_dir, workers: unused (the table is small and already decoded).

  Returns:
    A Dataset of uint8 (N, S, S, C) images, C = 3 (RGB) or 1 (L); labels in
    `SKIN_CLASSES` order; ids = groups = "row00000"... (data row index).
  """
  del cache_dir, workers
  root = os.fspath(root)
  if not os.path.isfile(root):
    raise DataError(f"HMNIST CSV not found: {root} is not a file. {HOW_TO_GET}")
  images, kaggle_labels = read_csv(root)
  labels = KAGGLE_TO_CLASS[kaggle_labels]
  keep = limit_index(labels, limit)
  ids = np.array([f"row{i:05d}" for i in keep], dtype=str)
  examples = Examples(cache.resize_images(images[keep], image_size), labels[keep], ids, ids)
  return Dataset(examples, CLASS_NAMES, None, f"HMNIST {os.path.basename(root)}")
