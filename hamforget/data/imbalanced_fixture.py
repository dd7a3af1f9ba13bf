"""Synthetic skin-lesion images with HAM10000's real class imbalance.

For tests and demos of class-balanced training when the real images are not
at hand: the labels are the real ones (a HAM10000_metadata.csv's `dx`
column, 67% `nv`), each image is its class's fixed colour pattern plus
noise, and the minority classes carry a weaker cue (their pattern at a
fraction of the contrast). A model trained with a plain mean of the loss
then leans on the prior and misses them, as it does on the real data;
balancing the loss or the batches recovers part of them. Written as a
Kaggle `hmnist_<S>_<S>_RGB.csv`, so the `hmnist` source reads it unchanged.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from hamforget.data.sources.common import SKIN_CLASSES
from hamforget.data.sources.hmnist import KAGGLE_CLASSES


def metadata_labels(metadata_csv: str | os.PathLike) -> np.ndarray:
  """Class indices (N,) int64 into SKIN_CLASSES of a HAM10000 metadata CSV's rows."""
  with open(metadata_csv, newline="") as f:
    rows = list(csv.DictReader(f))
  unknown = sorted({row["dx"] for row in rows} - set(SKIN_CLASSES))
  if unknown:
    raise ValueError(f"{metadata_csv}: dx values {unknown}: expected {SKIN_CLASSES}")
  return np.asarray([SKIN_CLASSES.index(row["dx"]) for row in rows], np.int64)


def images_for(labels: np.ndarray, size: int = 8, seed: int = 0, *, noise: float = 70.0,
               weak_cue: float = 0.35, minority_share: float = 0.1) -> np.ndarray:
  """uint8 images (N, size, size, 3) whose class shows as a colour pattern.

  Args:
    labels: class indices (N,) into SKIN_CLASSES.
    size: image side in pixels.
    seed: draws the class patterns (from `seed`) and the noise.
    noise: per-pixel Gaussian noise, in grey levels.
    weak_cue: contrast of a minority class's pattern relative to the others'.
    minority_share: classes below this share of `labels` are minority classes.
  """
  rng = np.random.default_rng(seed)
  num_classes = len(SKIN_CLASSES)
  patterns = rng.uniform(-90.0, 90.0, (num_classes, size, size, 3))  # grey levels about 128
  share = np.bincount(labels, minlength=num_classes) / len(labels)
  contrast = np.where(share < minority_share, weak_cue, 1.0)
  images = (128.0 + contrast[labels, None, None, None] * patterns[labels]
            + rng.normal(0.0, noise, (len(labels), size, size, 3)))
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def write_hmnist_csv(path: str | os.PathLike, labels: np.ndarray, size: int = 8,
                     seed: int = 0, **image_options) -> np.ndarray:
  """Writes `images_for(labels, ...)` as a Kaggle HMNIST CSV at `path` (name it
  hmnist_<size>_<size>_RGB.csv); returns the images (N, size, size, 3)."""
  images = images_for(labels, size, seed, **image_options)
  kaggle = np.asarray([KAGGLE_CLASSES.index(SKIN_CLASSES[k]) for k in labels], np.int64)
  header = [f"pixel{i:04d}" for i in range(size * size * 3)] + ["label"]
  table = np.concatenate([images.reshape(len(labels), -1).astype(np.int64), kaggle[:, None]], 1)
  with open(path, "w", newline="") as f:
    f.write(",".join(header) + "\n")
    np.savetxt(f, table, fmt="%d", delimiter=",")
  return images
