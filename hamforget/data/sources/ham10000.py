"""HAM10000 in its published layout (Harvard Dataverse / ISIC / Kaggle).

    root/
      HAM10000_metadata.csv     lesion_id,image_id,dx,dx_type,age,sex,localization
      HAM10000_images_part_1/   ISIC_0024306.jpg ... (600x450 RGB JPEGs)
      HAM10000_images_part_2/   ISIC_0029306.jpg ...

One folder holding all images (`images/`, or `root` itself) works as well.
Rows are joined to files on `image_id` (file `<image_id>.jpg`). The label is
`dx` in the order of `SKIN_CLASSES`; the group is `lesion_id`, because several
images show one lesion and must stay on one side of every split.

Images are squashed (not cropped) to `image_size` x `image_size`, as MedMNIST's
DermaMNIST is, and go through the decode cache (`hamforget.data.cache`).
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np

from hamforget.data import cache
from hamforget.data.errors import DataError, Problems
from hamforget.data.sources.common import SKIN_CLASSES, limit_index
from hamforget.data.types import Dataset, Examples

CLASS_NAMES = SKIN_CLASSES
METADATA = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
# Searched in this order; the first folder holding `<image_id>.jpg` wins.
# Kaggle's copy also ships lower-case duplicates of the two part folders.
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2",
                 "ham10000_images_part_1", "ham10000_images_part_2",
                 "HAM10000_images", "images", ".")
HOW_TO_GET = (
    "Get HAM10000 from https://doi.org/10.7910/DVN/DBW86T (or Kaggle "
    "'kmader/skin-cancer-mnist-ham10000'), unpack it so that one folder holds "
    f"{METADATA} and the image folders {IMAGE_FOLDERS[0]}/ and {IMAGE_FOLDERS[1]}/, "
    "and pass that folder as --config.data.root.")
# An image id must name a file inside the image folders: no separators, no
# "." or "..", nothing hidden.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def _read_csv(path: str) -> list[tuple[int, dict[str, str]]]:
  """(file line, row) pairs of a metadata CSV that has the required columns."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
      reader = csv.DictReader(f)
      columns = reader.fieldnames or []
      # line_num stays right across blank lines and quoted newlines.
      numbered = [(reader.line_num, row) for row in reader]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"{path}: cannot read the metadata CSV: {e}") from e
  missing = [c for c in REQUIRED_COLUMNS if c not in columns]
  if missing:
    raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found "
                    f"{', '.join(columns) or 'no header'}. Expected the published "
                    "header lesion_id,image_id,dx,dx_type,age,sex,localization.")
  if not numbered:
    raise DataError(f"{path}: no rows under the header.")
  return numbered


def _check_rows(numbered: list[tuple[int, dict[str, str]]], problems: Problems) -> None:
  """Adds every row with an unknown dx, an empty lesion_id, an image_id that is
  not a plain file name, or a duplicate image_id to `problems`."""
  unknown, no_lesion, bad_name, duplicate = [], [], [], []
  first_line: dict[str, int] = {}
  for line, row in numbered:
    image_id, dx = row["image_id"] or "", row["dx"] or ""  # None: a short row
    if dx not in SKIN_CLASSES:
      unknown.append(f"line {line} {dx!r}")
    if not row["lesion_id"]:
      no_lesion.append(f"line {line}")
    if not _PLAIN_NAME.fullmatch(image_id):
      bad_name.append(f"line {line} {image_id!r}")
    elif image_id in first_line:
      duplicate.append(f"line {line} {image_id!r} (first on line {first_line[image_id]})")
    else:
      first_line[image_id] = line
  problems.add(f"row(s) with a dx not in {', '.join(SKIN_CLASSES)}", unknown)
  problems.add("row(s) with an empty lesion_id", no_lesion)
  problems.add("row(s) whose image_id is not a plain file name", bad_name)
  problems.add("row(s) with a duplicate image_id", duplicate)


def read_metadata(path: str) -> list[dict[str, str]]:
  """The rows of a HAM10000 metadata CSV, validated (images are not checked).

  Raises:
    DataError: missing columns; or, in one message, every row with an unknown
      dx, an empty lesion_id, an image_id that is not a plain file name, or a
      duplicate image_id (counts and the first few, by file line).
  """
  numbered = _read_csv(path)
  problems = Problems(path)
  _check_rows(numbered, problems)
  problems.raise_if_any()
  return [row for _, row in numbered]


def find_images(folder: str) -> tuple[dict[str, str], list[str]]:
  """Maps image id -> JPEG path over `IMAGE_FOLDERS` under `folder`.

  Returns:
    (the map, the image folders that exist). One directory listing per folder
    rather than one stat per image: 10,015 images index in milliseconds.
  """
  index: dict[str, str] = {}
  searched = []
  for name in IMAGE_FOLDERS:
    path = os.path.normpath(os.path.join(folder, name))
    if not os.path.isdir(path) or path in searched:
      continue
    searched.append(path)
    with os.scandir(path) as entries:
      for entry in entries:
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() == ".jpg" and stem not in index and entry.is_file():
          index[stem] = entry.path
  return index, searched


def load(root: str, *, image_size: int = 0, limit: int = 0, cache_dir: str = "",
         workers: int = 0) -> Dataset:
  """Loads HAM10000 from `root`, decoding through the on-disk cache.

  Args:
    root: the folder holding HAM10000_metadata.csv and the image folders (or
      the CSV itself).
    image_size: target height = width in pixels; 0 = native (450x600).
    limit: keep a class-stratified subset of at most this many images,
      chosen before decoding (see `limit_index`); 0 = all.
    cache_dir: folder of the decode cache ("" = the default).
    workers: decode workers; 0 = all cores.

  Returns:
    A Dataset of uint8 (N, image_size, image_size, 3) images in metadata row
    order; groups = lesion_id, ids = image_id, no official split.

  Raises:
    DataError: for a missing or malformed metadata file, or missing or
      unreadable images (all of them counted in one message).
  """
  root = os.fspath(root)
  if os.path.isfile(root):
    metadata, folder = root, os.path.dirname(root)
  else:
    metadata, folder = os.path.join(root, METADATA), root
  if not os.path.isfile(metadata):
    raise DataError(f"HAM10000 metadata not found: {metadata} does not exist. {HOW_TO_GET}")
  numbered = _read_csv(metadata)
  # Bad rows and missing images go into one report: one round of fixes.
  problems = Problems(metadata)
  _check_rows(numbered, problems)
  index, searched = find_images(folder)
  missing = [f"line {line} {row['image_id']}.jpg" for line, row in numbered
             if _PLAIN_NAME.fullmatch(row["image_id"] or "") and row["image_id"] not in index]
  problems.add(f"of {len(numbered)} images not found (searched {', '.join(searched)})", missing)
  problems.raise_if_any(hint=HOW_TO_GET if missing else "")
  rows = [row for _, row in numbered]

  labels = np.array([SKIN_CLASSES.index(r["dx"]) for r in rows], np.int32)
  keep = limit_index(labels, limit)
  rows = [rows[i] for i in keep]
  images = cache.cached_decode([index[r["image_id"]] for r in rows], image_size,
                               cache_dir, workers, name="ham10000")
  examples = Examples(
      images=images,
      labels=labels[keep],
      groups=np.array([r["lesion_id"] for r in rows], dtype=str),
      ids=np.array([r["image_id"] for r in rows], dtype=str))
  return Dataset(examples, CLASS_NAMES, None, "HAM10000")
