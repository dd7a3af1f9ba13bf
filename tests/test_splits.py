"""Splits: grouped, stratified, deterministic; official splits kept or carved."""

import numpy as np
import pandas as pd
import pytest

import fixtures
from hamforget.data.splits import assign_splits, split_table
from hamforget.data.types import Examples

HAM_CLASSES = fixtures.SKIN_CLASSES


def _examples(labels, groups) -> Examples:
  n = len(labels)
  return Examples(np.zeros((n, 1, 1, 3), np.uint8), np.asarray(labels, np.int32),
                  np.asarray(groups).astype(str), np.array([f"img{i}" for i in range(n)]))


def _synthetic(seed=0, num_groups=600) -> Examples:
  """Groups of 1-4 images, one label per group, unbalanced classes."""
  rng = np.random.default_rng(seed)
  group_labels = rng.choice(5, size=num_groups, p=[0.5, 0.2, 0.15, 0.1, 0.05])
  sizes = rng.integers(1, 5, size=num_groups)
  labels = np.repeat(group_labels, sizes)
  groups = np.repeat([f"g{i}" for i in range(num_groups)], sizes)
  order = rng.permutation(len(labels))  # rows of one group are not contiguous
  return _examples(labels[order], groups[order])


@pytest.fixture(scope="module")
def ham() -> Examples:
  table = pd.read_csv(fixtures.real_ham_metadata())
  labels = table["dx"].map({c: i for i, c in enumerate(HAM_CLASSES)}).to_numpy()
  return Examples(np.zeros((len(table), 1, 1, 3), np.uint8), labels.astype(np.int32),
                  table["lesion_id"].to_numpy().astype(str),
                  table["image_id"].to_numpy().astype(str))


def _assert_grouped(examples: Examples, split: np.ndarray):
  per_group = pd.Series(split).groupby(examples.groups).nunique()
  assert per_group.max() == 1, per_group[per_group > 1].index[:5].tolist()


def _assert_stratified(examples, split, val, test, tol, min_class_size):
  for label in np.unique(examples.labels):
    of_class = split[examples.labels == label]
    if len(of_class) < min_class_size:
      continue
    for name, target in (("val", val), ("test", test)):
      share = np.mean(of_class == name)
      assert abs(share - target) <= tol, (label, name, share)


def test_synthetic_grouped_and_stratified():
  examples = _synthetic()
  split = assign_splits(examples, 0.15, 0.2, seed=3)
  assert split.shape == (len(examples),)
  assert set(split) == {"train", "val", "test"}
  _assert_grouped(examples, split)
  _assert_stratified(examples, split, 0.15, 0.2, tol=0.03, min_class_size=100)


def test_deterministic_and_seed_dependent():
  examples = _synthetic()
  first = assign_splits(examples, 0.1, 0.1, seed=0)
  np.testing.assert_array_equal(first, assign_splits(examples, 0.1, 0.1, seed=0))
  assert np.any(first != assign_splits(examples, 0.1, 0.1, seed=1))


def test_independent_of_row_order():
  examples = _synthetic()
  order = np.random.default_rng(9).permutation(len(examples))
  split = assign_splits(examples, 0.1, 0.1, seed=0)
  shuffled = assign_splits(examples.subset(order), 0.1, 0.1, seed=0)
  np.testing.assert_array_equal(split[order], shuffled)


def test_small_classes_get_val_and_test():
  # Class 1 has 3 groups: 10% would round to none, but it must appear in each split.
  labels = [0] * 200 + [1] * 3
  groups = [f"a{i}" for i in range(200)] + ["b0", "b1", "b2"]
  examples = _examples(labels, groups)
  split = assign_splits(examples, 0.1, 0.1, seed=0)
  assert sorted(split[200:]) == ["test", "train", "val"]
  # With 2 groups there is no way to fill three splits; nothing breaks.
  split = assign_splits(_examples([0] * 50 + [1] * 2, [f"a{i}" for i in range(52)]), 0.1, 0.1, 0)
  assert set(split) <= {"train", "val", "test"}


def test_majority_label_for_mixed_group():
  labels = [0, 0, 1] + [0] * 30 + [1] * 30
  groups = ["mixed"] * 3 + [f"g{i}" for i in range(60)]
  split = assign_splits(_examples(labels, groups), 0.2, 0.2, seed=0)
  assert len(set(split[:3])) == 1


def test_zero_fractions_and_bad_fractions():
  examples = _synthetic()
  assert set(assign_splits(examples, 0.0, 0.0, seed=0)) == {"train"}
  assert set(assign_splits(examples, 0.1, 0.0, seed=0)) == {"train", "val"}
  with pytest.raises(ValueError, match="val_fraction"):
    assign_splits(examples, 1.2, 0.1, seed=0)
  with pytest.raises(ValueError, match="< 1"):
    assign_splits(examples, 0.5, 0.5, seed=0)


def test_official_three_way_split_kept():
  examples = _synthetic()
  official = np.random.default_rng(0).choice(["train", "val", "test"], len(examples))
  np.testing.assert_array_equal(assign_splits(examples, 0.1, 0.1, 5, official), official)


def test_official_train_test_carves_val_from_train():
  n = 2000
  labels = np.arange(n) % 10
  examples = _examples(labels, [f"id{i}" for i in range(n)])  # no groups: group = id
  official = np.where(np.arange(n) < 1600, "train", "test")
  split = assign_splits(examples, 0.1, 0.3, seed=0, official_split=official)
  np.testing.assert_array_equal(split[1600:], "test")  # test untouched
  assert set(split[:1600]) == {"train", "val"}
  # 10% of the whole dataset, stratified within train.
  assert abs(np.mean(split == "val") - 0.1) < 0.005
  for label in range(10):
    assert abs(np.mean(split[:1600][labels[:1600] == label] == "val") - 0.125) < 0.02
  np.testing.assert_array_equal(split, assign_splits(examples, 0.1, 0.3, 0, official))


def test_official_split_errors():
  examples = _synthetic()
  with pytest.raises(ValueError, match="unknown|expected only"):
    assign_splits(examples, 0.1, 0.1, 0, np.full(len(examples), "holdout"))
  with pytest.raises(ValueError, match="shape"):
    assign_splits(examples, 0.1, 0.1, 0, np.full(3, "train"))


def test_split_table_columns_and_forget():
  examples = _synthetic(num_groups=50)
  split = assign_splits(examples, 0.2, 0.2, seed=0)
  train = split == "train"
  mask = np.zeros(train.sum(), bool)
  mask[:3] = True
  table = split_table(examples, split, mask, class_names=("a", "b", "c", "d", "e"))
  assert list(table.columns) == ["id", "group", "label", "class", "split", "forget"]
  assert table["forget"].dtype == bool
  assert table["forget"].sum() == 3
  assert (table.loc[table["forget"], "split"] == "train").all()
  np.testing.assert_array_equal(table["id"][train][:3], examples.ids[train][:3])
  assert list(split_table(examples, split).columns) == ["id", "group", "label", "split"]
  with pytest.raises(ValueError, match="forget_mask"):
    split_table(examples, split, np.zeros(len(examples), bool))


def test_ham10000_metadata(ham):
  assert len(ham) == 10015 and len(np.unique(ham.groups)) == 7470
  split = assign_splits(ham, 0.1, 0.15, seed=0)
  _assert_grouped(ham, split)
  _assert_stratified(ham, split, 0.1, 0.15, tol=0.03, min_class_size=100)
  for label in range(len(HAM_CLASSES)):  # every class, even df (115 images), in every split
    assert set(split[ham.labels == label]) == {"train", "val", "test"}
  np.testing.assert_array_equal(split, assign_splits(ham, 0.1, 0.15, seed=0))
  assert np.any(split != assign_splits(ham, 0.1, 0.15, seed=1))
