"""Train/val/test splits: deterministic, stratified by class, grouped.

HAM10000 has several images of one lesion (`lesion_id`); if two of them land in
different splits, the test set leaks into training. So the unit of assignment
is the group, never the image. A group's stratum is its majority label
(HAM10000 lesions carry one diagnosis each), and within each class stratum the
groups are shuffled with the seed and taken in order for test, then val, until
each reaches its share of that class's images; the rest is train.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from hamforget.data.types import SPLITS, Examples


def _group_table(labels: np.ndarray, groups: np.ndarray):
  """Unique groups (sorted), their majority label and their image count.

  Returns:
    (names str (G,), label int (G,), size int (G,), inverse int (N,)) where
    `names[inverse] == groups`.
  """
  names, inverse = np.unique(groups, return_inverse=True)
  inverse = inverse.reshape(-1)
  labels = np.asarray(labels, np.int64)
  num_classes = int(labels.max()) + 1 if len(labels) else 0
  # Counts per (group, class); argmax picks the majority, ties to the lowest
  # class index so the result does not depend on row order.
  counts = np.zeros((len(names), max(num_classes, 1)), np.int64)
  np.add.at(counts, (inverse, labels), 1)
  return names, counts.argmax(axis=1), counts.sum(axis=1), inverse


def _prefix_closest(sizes: np.ndarray, target: float) -> int:
  """How many leading groups have a total image count closest to `target`."""
  cumulative = np.concatenate([[0], np.cumsum(sizes)])
  # Ties go to the smaller prefix (argmin returns the first).
  return int(np.argmin(np.abs(cumulative - target)))


def _stratified_group_assign(
    labels: np.ndarray,
    groups: np.ndarray,
    fractions: Sequence[tuple[str, float]],
    seed: int,
) -> np.ndarray:
  """Assigns whole groups to the named splits in `fractions` order, rest train.

  Args:
    labels: int (N,).
    groups: str (N,).
    fractions: (split name, fraction of each class's images) pairs, filled in
      this order from the front of each class's shuffled group list.
    seed: the seed; each class draws from its own stream `(seed, class)`, so
      the split of one class does not move when another class changes.

  Returns:
    str (N,) of split names.
  """
  names, group_label, group_size, inverse = _group_table(labels, groups)
  group_split = np.full(len(names), "train", dtype=object)
  wanted = [(name, f) for name, f in fractions if f > 0]
  for label in np.unique(group_label):
    members = np.flatnonzero(group_label == label)
    rng = np.random.default_rng([seed, int(label)])
    members = members[rng.permutation(len(members))]
    sizes = group_size[members]
    total = sizes.sum()
    start = 0
    for position, (split, fraction) in enumerate(wanted):
      count = _prefix_closest(sizes[start:], fraction * total)
      # A small class (say 4 groups at 10%) would otherwise round to zero
      # groups and be missing from val/test entirely. With >= 3 groups we can
      # give each requested split one and still keep one for train.
      if len(members) >= len(wanted) + 1:
        count = max(count, 1)
      # Never take the groups that later splits and train still need.
      reserve = len(wanted) - position if len(members) >= len(wanted) + 1 else 0
      count = min(count, len(members) - start - reserve)
      count = max(count, 0)
      group_split[members[start:start + count]] = split
      start += count
  return group_split[inverse].astype(str)


def assign_splits(
    examples: Examples,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    official_split: np.ndarray | None = None,
) -> np.ndarray:
  """Assigns every example to "train", "val" or "test".

  Args:
    examples: the whole dataset (only labels and groups are read).
    val_fraction: share of each class's images for val, in [0, 1).
    test_fraction: share of each class's images for test, in [0, 1).
    seed: the same seed gives the same split.
    official_split: str (N,) fixed by the publisher, or None. With a "val"
      split in it, it is returned as is; with only "train"/"test" (MNIST IDX),
      val is carved out of train by the same grouped stratified procedure, with
      `val_fraction` relative to the whole dataset. `test_fraction` is then
      unused.

  Returns:
    str (N,) with values in {"train", "val", "test"}.

  Raises:
    ValueError: fractions out of range, or an official split with unknown
      values or without "train".
  """
  for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{name} must be in [0, 1), got {value}")
  n = len(examples)
  if official_split is not None:
    official = np.asarray(official_split).astype(str)
    if official.shape != (n,):
      raise ValueError(f"official_split has shape {official.shape}, expected ({n},)")
    unknown = sorted(set(official.tolist()) - set(SPLITS))
    if unknown:
      raise ValueError(f"official_split has values {unknown}, expected only {SPLITS}")
    if "val" in official:
      return official.copy()
    if "train" not in official:
      raise ValueError("official_split has neither 'val' nor 'train' to carve val from")
    train = np.flatnonzero(official == "train")
    relative = min(val_fraction * n / len(train), 1.0)
    if relative >= 1.0:
      raise ValueError(
          f"val_fraction={val_fraction} of {n} examples needs more than the "
          f"{len(train)} official training examples")
    carved = _stratified_group_assign(
        examples.labels[train], examples.groups[train], [("val", relative)], seed)
    result = official.copy()
    result[train] = carved
    return result
  if val_fraction + test_fraction >= 1.0:
    raise ValueError(
        f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
  return _stratified_group_assign(
      examples.labels, examples.groups,
      [("test", test_fraction), ("val", val_fraction)], seed)


def split_table(
    examples: Examples,
    split: np.ndarray,
    forget_mask: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
  """The table written as the run's `splits.csv`: one row per example.

  Args:
    examples: the whole dataset.
    split: str (N,) from `assign_splits`.
    forget_mask: bool (N_train,) over the training rows in dataset order (as
      `examples.subset(split == "train")` orders them), or None.
    class_names: if given, adds a `class` column with the label's name.

  Returns:
    Columns id, group, label, [class,] split, and with a mask a bool `forget`
    column (True for forgotten training rows, False elsewhere, including all
    val/test rows).
  """
  split = np.asarray(split).astype(str)
  table = pd.DataFrame({
      "id": np.asarray(examples.ids).astype(str),
      "group": np.asarray(examples.groups).astype(str),
      "label": np.asarray(examples.labels).astype(np.int64),
  })
  if class_names is not None:
    table["class"] = np.asarray(class_names, dtype=object)[table["label"].to_numpy()]
  table["split"] = split
  if forget_mask is not None:
    forget_mask = np.asarray(forget_mask, bool)
    train = split == "train"
    if forget_mask.shape != (int(train.sum()),):
      raise ValueError(
          f"forget_mask has shape {forget_mask.shape}, expected ({int(train.sum())},) "
          "(one entry per training example)")
    forget = np.zeros(len(split), bool)
    forget[train] = forget_mask
    table["forget"] = forget
  return table
