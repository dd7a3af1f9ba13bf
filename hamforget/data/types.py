"""The in-memory form every source produces and every later stage consumes."""

from __future__ import annotations

import dataclasses

import numpy as np

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Examples:
  """A set of labelled images, all arrays aligned on the first axis.

  Attributes:
    images: uint8 (N, H, W, C), C = 1 (grey) or 3 (RGB), values 0..255.
    labels: int32 (N,), indices into the dataset's `class_names`.
    groups: str (N,), the unit that must never straddle two splits (HAM10000:
      `lesion_id`; datasets without groups use the example id).
    ids: str (N,), unique example ids (HAM10000: `image_id`).
  """
  images: np.ndarray
  labels: np.ndarray
  groups: np.ndarray
  ids: np.ndarray

  def __post_init__(self):
    n = len(self.images)
    for name in ("labels", "groups", "ids"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"Examples.{name} has {len(getattr(self, name))} rows, images has {n}")

  def __len__(self) -> int:
    return len(self.images)

  def subset(self, index: np.ndarray) -> "Examples":
    """The examples at `index` (int indices or a boolean mask), in that order."""
    return Examples(self.images[index], self.labels[index], self.groups[index], self.ids[index])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What a source returns.

  Attributes:
    examples: every example of the dataset.
    class_names: label index -> class name, fixed per dataset.
    official_split: str (N,) of "train"/"val"/"test" when the publisher fixes
      the split (DermaMNIST, MNIST IDX train/test); None when the project makes
      it. Where only train/test is given, the project carves val out of train.
    name: a short human name for logs and reports.
  """
  examples: Examples
  class_names: tuple[str, ...]
  official_split: np.ndarray | None = None
  name: str = ""

  @property
  def num_classes(self) -> int:
    return len(self.class_names)
