"""Writers of tiny synthetic datasets in the exact published on-disk layouts.

Shared by the tests of every stage that needs files on disk: each writer
returns what it wrote, so a test can check the loader's output against it.
"""

from __future__ import annotations

import csv
import glob
import gzip
import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tensorboardX.proto import event_pb2

SKIN_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
HMNIST_KAGGLE_CLASSES = ("akiec", "bcc", "bkl", "df", "nv", "vasc", "mel")
# The real HAM10000 metadata (no images): $HAMFORGET_HAM_METADATA, else the
# project's shared folder beside the clone (where CI puts it).
REAL_HAM_METADATA = Path(os.environ.get(
    "HAMFORGET_HAM_METADATA",
    Path(__file__).resolve().parents[2] / "shared" / "data" / "HAM10000_metadata.csv"))


def launcher_env(**overrides: str) -> dict[str, str]:
  """The environment for a launcher a test starts: this one without the
  tests' XLA_FLAGS (a launcher sets its own device count from its config),
  with the tests' compile-time flags (conftest.py), plus `overrides`."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["XLA_FLAGS"] = os.environ.get("HAMFORGET_TEST_XLA_FLAGS", "")
  env.update(overrides)
  return env


def real_ham_metadata() -> Path:
  """The path of the real HAM10000 metadata.

  Skips the calling test (with the path in the reason, shown by `-ra`) when it
  is absent, and fails instead under CI (CI=true), where it must be present:
  a silently skipped real-data test is a test that never runs.
  """
  import pytest
  if not REAL_HAM_METADATA.exists():
    message = (f"no real HAM10000 metadata at {REAL_HAM_METADATA} "
               "(set HAMFORGET_HAM_METADATA to its path)")
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    pytest.skip(message)
  return REAL_HAM_METADATA


def ham_rows(n_lesions: int = 12, seed: int = 0) -> list[dict[str, str]]:
  """Metadata rows: lesions of 1-3 images each, dx cycling over the classes."""
  rng = np.random.default_rng(seed)
  rows = []
  for lesion in range(n_lesions):
    for _ in range(rng.integers(1, 4)):
      rows.append({"lesion_id": f"HAM_{lesion:07d}", "image_id": f"ISIC_{len(rows):07d}",
                   "dx": SKIN_CLASSES[lesion % len(SKIN_CLASSES)], "dx_type": "histo",
                   "age": str(5 * int(rng.integers(4, 17))), "sex": "female",
                   "localization": "back"})
  return rows


def read_ham_rows(path: str | os.PathLike, limit: int = 0) -> list[dict[str, str]]:
  """The first `limit` (0 = all) rows of a HAM10000 metadata CSV, as dicts."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return rows[:limit] if limit else rows


def ham_colour(index: int) -> tuple[int, int, int]:
  """The flat colour of the `index`-th fixture image: lets a test check that
  decoded images stay aligned with their metadata rows."""
  return (index * 37) % 256, (index * 11 + 60) % 256, 255 - (index * 23) % 256


def write_jpeg(path: str | os.PathLike, rgb: tuple[int, int, int],
               image_hw: tuple[int, int] = (45, 60), quality: int = 95) -> None:
  """A flat-colour RGB JPEG (JPEG keeps flat colours within a few levels)."""
  image = np.empty((*image_hw, 3), np.uint8)
  image[...] = rgb
  Image.fromarray(image).save(path, quality=quality)


def write_ham10000(root: str | os.PathLike, metadata_rows: Sequence[dict] | None = None, *,
                   n_lesions: int = 12, image_hw: tuple[int, int] = (45, 60),
                   split_parts: bool = True, image_folder: str = "images",
                   seed: int = 0, columns: Sequence[str] = HAM_COLUMNS,
                   write_images: bool = True, hardlink_repeats: bool = False,
                   ) -> list[dict[str, str]]:
  """Writes HAM10000 in its published layout under `root`.

  root/HAM10000_metadata.csv, and `<image_id>.jpg` (H, W = image_hw; the
  real ones are 450x600) split over HAM10000_images_part_1/ and _part_2/ (or
  all in `image_folder` when not `split_parts`; "." = root itself). Image i
  is a flat `ham_colour(i)`.

  Args:
    metadata_rows: rows to write (e.g. from `read_ham_rows`); None makes
      `n_lesions` lesions with `ham_rows`.
    columns: the CSV header; rows may carry other keys (ignored).
    write_images: False writes the CSV only.
    hardlink_repeats: write each of the 256 colours once and hard-link the
      other images to them: 20x faster for thousands of images, but editing
      one image file then edits its twins too.

  Returns:
    The rows written, in order.
  """
  root = Path(root)
  root.mkdir(parents=True, exist_ok=True)
  rows = [dict(r) for r in metadata_rows] if metadata_rows is not None else ham_rows(n_lesions, seed)
  with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  if write_images:
    written: dict[tuple[int, int, int], Path] = {}
    for i, row in enumerate(rows):
      if split_parts:
        folder = root / f"HAM10000_images_part_{1 if i < (len(rows) + 1) // 2 else 2}"
      else:
        folder = root / image_folder
      folder.mkdir(exist_ok=True)
      path, colour = folder / f"{row['image_id']}.jpg", ham_colour(i)
      if hardlink_repeats and colour in written:
        os.link(written[colour], path)
      else:
        write_jpeg(path, colour, image_hw)
        written[colour] = path
  return rows


def write_hmnist_csv(path: str | os.PathLike, size: int = 8, rgb: bool = True, n: int = 21,
                     seed: int = 0, kaggle_labels: Sequence[int] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Writes a Kaggle HMNIST CSV: header pixel0000..., label; RGB interleaved per pixel.

  Name `path` like the published files (hmnist_8_8_RGB.csv ...): the loader
  reads the size from it.

  Returns:
    images uint8 (n, size, size, 3 or 1) and Kaggle labels int (n,) (by
    default every class in turn).
  """
  rng = np.random.default_rng(seed)
  c = 3 if rgb else 1
  images = rng.integers(0, 256, (n, size, size, c), dtype=np.uint8)
  labels = np.asarray(kaggle_labels if kaggle_labels is not None else np.arange(n) % 7)
  header = [f"pixel{i:04d}" for i in range(size * size * c)] + ["label"]
  table = np.concatenate([images.reshape(n, -1).astype(np.int64), labels[:, None]], axis=1)
  with open(path, "w", newline="") as f:
    f.write(",".join(header) + "\n")
    np.savetxt(f, table, fmt="%d", delimiter=",")
  return images, labels


def write_dermamnist_npz(path: str | os.PathLike, size: int = 28,
                         n_per_split: tuple[int, int, int] = (14, 7, 7), seed: int = 0,
                         drop_keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """Writes a MedMNIST DermaMNIST .npz: {train,val,test}_{images,labels}.

  Images uint8 (N, size, size, 3), labels uint8 (N, 1) cycling over 0..6.
  `drop_keys` leaves keys out, for error tests.

  Returns:
    The arrays written.
  """
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in zip(("train", "val", "test"), n_per_split):
    arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    arrays[f"{split}_labels"] = (np.arange(n) % 7).astype(np.uint8)[:, None]
  for key in drop_keys:
    del arrays[key]
  np.savez(path, **arrays)
  return arrays


def write_idx(path: str | os.PathLike, array: np.ndarray, gz: bool = False) -> None:
  """Writes one IDX file of unsigned bytes (magic 0x0000 08 <ndim>)."""
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  with (gzip.open if gz else open)(path, "wb") as f:
    f.write(header + array.tobytes())


def write_mnist_idx(folder: str | os.PathLike, n: tuple[int, int] = (30, 10), gz: bool = True,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Writes LeCun's four MNIST files (train n[0], test n[1] digits) into `folder`.

  Returns:
    {"train_images": uint8 (n0, 28, 28), "train_labels": (n0,), "test_...": ...}.
  """
  rng = np.random.default_rng(seed)
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  suffix = ".gz" if gz else ""
  arrays = {}
  for split, prefix, count in (("train", "train", n[0]), ("test", "t10k", n[1])):
    arrays[f"{split}_images"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    arrays[f"{split}_labels"] = (np.arange(count) % 10).astype(np.uint8)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", arrays[f"{split}_images"], gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", arrays[f"{split}_labels"], gz)
  return arrays


def read_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] of every TensorBoard event file in `folder`.

  Event files are TFRecords: a uint64 length, its CRC, the serialised Event,
  its CRC. Read here without TensorFlow or TensorBoard.
  """
  out = {}
  for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out
