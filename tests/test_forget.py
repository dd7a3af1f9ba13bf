"""Forget requests: parsing, masks for each kind, determinism, errors."""

import jax
import ml_collections
import numpy as np
import pytest

from hamforget.data.forget import ForgetRequest, forget_mask
from hamforget.data.types import Examples

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def _config(kind="classes", classes="0", fraction=0.1, ids=""):
  return ml_collections.ConfigDict(dict(kind=kind, classes=classes, fraction=fraction, ids=ids))


def _train(num_groups=100, seed=0) -> Examples:
  """Groups of 1-3 images; labels by group."""
  rng = np.random.default_rng(seed)
  sizes = rng.integers(1, 4, size=num_groups)
  labels = np.repeat(np.arange(num_groups) % len(CLASSES), sizes)
  groups = np.repeat([f"HAM_{i:07d}" for i in range(num_groups)], sizes)
  n = len(labels)
  return Examples(np.zeros((n, 1, 1, 3), np.uint8), labels.astype(np.int32), groups,
                  np.array([f"ISIC_{i:07d}" for i in range(n)]))


def test_from_config_classes_by_name_and_index():
  assert ForgetRequest.from_config(_config(classes="mel,nv"), CLASSES).classes == (4, 5)
  assert ForgetRequest.from_config(_config(classes="4, 0"), CLASSES).classes == (0, 4)
  assert ForgetRequest.from_config(_config(classes="mel,4"), CLASSES).classes == (4,)
  request = ForgetRequest.from_config(_config(classes="0"), CLASSES)
  assert request == ForgetRequest("classes", (0,), 0.0, ())
  assert "akiec (0)" in request.describe(CLASSES)


@pytest.mark.parametrize("classes, match", [
    ("melanoma", "unknown class 'melanoma'"),
    ("7", "class index 7 out of range"),
    ("-1", "out of range"),
    ("", "empty"),
])
def test_from_config_bad_classes(classes, match):
  with pytest.raises(ValueError, match=match):
    ForgetRequest.from_config(_config(classes=classes), CLASSES)


def test_from_config_bad_kind_and_fraction():
  with pytest.raises(ValueError, match="'patients' unknown"):
    ForgetRequest.from_config(_config(kind="patients"), CLASSES)
  for fraction in (0.0, 1.0, 1.5, -0.1):
    with pytest.raises(ValueError, match="fraction"):
      ForgetRequest.from_config(_config(kind="groups", fraction=fraction), CLASSES)
  # With explicit ids the fraction is unused, so it is not checked.
  request = ForgetRequest.from_config(_config(kind="groups", fraction=0.0, ids="a, b"), CLASSES)
  assert request.ids == ("a", "b") and request.fraction == 0.0


def test_classes_mask():
  train = _train()
  request = ForgetRequest.from_config(_config(classes="mel,nv"), CLASSES)
  mask = forget_mask(train, request, seed=0)
  np.testing.assert_array_equal(mask, np.isin(train.labels, [4, 5]))


def test_classes_without_training_examples():
  train = _train().subset(_train().labels != 6)
  with pytest.raises(ValueError, match=r"\[6\] have no training examples"):
    forget_mask(train, ForgetRequest("classes", (6,)), seed=0)


def test_groups_random_fraction_never_splits_a_group():
  train = _train()
  request = ForgetRequest.from_config(_config(kind="groups", fraction=0.1), CLASSES)
  mask = forget_mask(train, request, seed=0)
  chosen = np.unique(train.groups[mask])
  assert len(chosen) == 10  # round(0.1 * 100 groups)
  np.testing.assert_array_equal(mask, np.isin(train.groups, chosen))  # all images of each
  np.testing.assert_array_equal(mask, forget_mask(train, request, seed=0))
  assert np.any(mask != forget_mask(train, request, seed=1))
  assert "10.0% at random" in request.describe()


def test_groups_at_least_one():
  train = _train(num_groups=20)
  mask = forget_mask(train, ForgetRequest("groups", fraction=0.001), seed=0)
  assert len(np.unique(train.groups[mask])) == 1


def test_groups_by_id():
  train = _train()
  request = ForgetRequest.from_config(_config(kind="groups", ids="HAM_0000003,HAM_0000042"), CLASSES)
  mask = forget_mask(train, request, seed=0)
  np.testing.assert_array_equal(mask, np.isin(train.groups, ["HAM_0000003", "HAM_0000042"]))
  with pytest.raises(ValueError, match="group ids not in the training set: HAM_9999999"):
    forget_mask(train, ForgetRequest("groups", ids=("HAM_0000003", "HAM_9999999")), seed=0)


def test_examples_random_fraction_and_ids():
  train = _train()
  mask = forget_mask(train, ForgetRequest("examples", fraction=0.25), seed=0)
  assert mask.sum() == round(0.25 * len(train))
  np.testing.assert_array_equal(mask, forget_mask(train, ForgetRequest("examples", fraction=0.25), 0))
  mask = forget_mask(train, ForgetRequest("examples", ids=("ISIC_0000005",)), seed=0)
  assert np.flatnonzero(mask).tolist() == [5]
  with pytest.raises(ValueError, match="example ids not in the training set: nope"):
    forget_mask(train, ForgetRequest("examples", ids=("nope",)), seed=0)


def test_forgetting_everything_is_an_error():
  train = _train(num_groups=3)
  with pytest.raises(ValueError, match="nothing to retain"):
    forget_mask(train, ForgetRequest("groups", ids=tuple(np.unique(train.groups))), seed=0)


def test_request_is_frozen():
  request = ForgetRequest("classes", (1,))
  with pytest.raises(Exception):
    request.kind = "groups"


def _examples(labels):
  labels = np.asarray(labels, np.int32)
  n = len(labels)
  return Examples(np.zeros((n, 2, 2, 1), np.uint8), labels, np.arange(n).astype(str),
                  np.arange(n).astype(str))


def test_unlearning_validation_leaves_out_the_forgotten_classes():
  from hamforget.data.prepare import unlearning_validation
  val = _examples([0, 1, 2, 0, 3, 2, 1])
  kept = unlearning_validation(val, ForgetRequest("classes", classes=(0, 2)))
  np.testing.assert_array_equal(kept.labels, [1, 3, 1])
  np.testing.assert_array_equal(kept.ids, ["1", "4", "6"])
  # Group and example requests forget training examples: val is kept whole.
  for kind in ("groups", "examples"):
    assert unlearning_validation(val, ForgetRequest(kind, fraction=0.2)) is val


def test_operators_validate_on_the_unlearning_split(tmp_path):
  from configs import mnist
  from hamforget import operators
  from hamforget.data import prepare
  from hamforget.models import build_model
  config = mnist.get_config("local")
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.limit = 300
  data = prepare.prepare_data(config)
  assert 0 in data.host["val"].labels and 0 not in data.host["unlearn_val"].labels
  model = build_model(config.model, data.num_classes)
  _, access, _ = operators.bind("finetune", config, model, data, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(access.val.labels), data.host["unlearn_val"].labels)
