"""SISA: layouts by group, exact deletion (bitwise, on CPU), the ensemble, the runner."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.datasets import load_digits

import fixtures
from operator_harness import assert_trees_equal
from configs import common
from hamforget import train
from hamforget.data import batches
from hamforget.sisa import ensemble
from hamforget.sisa.layout import PADDING, make_layout
from hamforget.sisa.trainer import ShardTrainer, auto_lanes
from hamforget.sisa.training import batch_positions, make_stage_spec

SHARDS, SLICES, LANES = 3, 3, 2  # lanes < shards: groups of lanes padded, positions moved


class TinyNet(nn.Module):
  """Two convs with BatchNorm: what SISA needs of a model, compiled in seconds."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features, stride in ((4, 1), (8, 2)):
      x = nn.Conv(features, (3, 3), (stride, stride), use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Dense(5)(x.mean(axis=(1, 2)))


@functools.lru_cache(maxsize=1)
def _digits():
  """sklearn's 8x8 digits 0-4: (train images, labels, groups), (test images, labels).

  Groups: pairs of same-class training digits, like a lesion's two images.
  """
  digits = load_digits()
  keep = digits.target < 5
  images = (digits.images[keep] * (255 / 16)).round().astype(np.uint8)[..., None]
  labels = digits.target[keep].astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  images, labels = images[order], labels[order]
  test, train_ = slice(0, 150), slice(150, None)
  train_labels = labels[train_]
  groups = np.empty(len(train_labels), object)
  for label in np.unique(train_labels):
    rows = np.flatnonzero(train_labels == label)
    groups[rows] = [f"c{label}_g{i // 2}" for i in range(len(rows))]
  return (images[train_], train_labels, groups.astype(str)), (images[test], labels[test])


@functools.lru_cache(maxsize=1)
def _setup():
  """(layout, spec, device data): one spec, so every trainer shares one program."""
  (images, labels, groups), _ = _digits()
  layout = make_layout(labels, groups, SHARDS, SLICES, seed=0)
  recipe = ml_collections.ConfigDict({"optimizer": "sgd", "learning_rate": 0.2,
                                      "momentum": 0.9, "weight_decay": 5e-4,
                                      "warmup_epochs": 0.5})
  spec = make_stage_spec(TinyNet(), recipe, None, SLICES, layout.capacity, num_epochs=6,
                         batch_size=16, lanes=LANES)
  return layout, spec, batches.to_device(images, labels)


def _trainer(directory) -> ShardTrainer:
  layout, spec, data = _setup()
  return ShardTrainer(spec, layout.num_shards, data, (8, 8, 1), jax.random.key(3), str(directory))


def _in(layout, shard: int, slice_: int, count: int = 1) -> np.ndarray:
  """`count` training rows remaining in the given shard and slice."""
  return layout.index[shard, slice_][layout.valid[shard, slice_]][:count]


# ----------------------------------------------------------------------------
# Layouts.


def test_layout_keeps_groups_whole_and_stratifies_classes():
  (_, labels, groups), _ = _digits()
  layout = make_layout(labels, groups, 4, 3, seed=1)
  rows = layout.index[layout.valid]
  assert np.array_equal(np.sort(rows), np.arange(len(labels)))  # every row once
  assert np.all(layout.index[~layout.valid] == PADDING)
  where = {}
  for k, r, c in zip(*np.nonzero(layout.valid)):
    where.setdefault(groups[layout.index[k, r, c]], set()).add((k, r))
  assert all(len(bins) == 1 for bins in where.values())  # a group in one shard and slice
  for label in np.unique(labels):
    per_bin = np.isin(layout.index, np.flatnonzero(labels == label)).sum(axis=2)
    assert per_bin.max() - per_bin.min() <= 2, (label, per_bin)  # groups of 2: within one
  assert np.array_equal(make_layout(labels, groups, 4, 3, seed=1).index, layout.index)
  assert not np.array_equal(make_layout(labels, groups, 4, 3, seed=2).index, layout.index)


def test_a_lesion_deletion_on_ham10000_touches_only_the_shard_holding_it():
  import pandas as pd  # pylint: disable=import-outside-toplevel
  table = pd.read_csv(fixtures.real_ham_metadata())
  labels = table["dx"].map({name: i for i, name in enumerate(fixtures.SKIN_CLASSES)}).to_numpy()
  groups = table["lesion_id"].to_numpy().astype(str)
  layout = make_layout(labels, groups, 10, 4, seed=0)
  lesion = table["lesion_id"].value_counts().index[0]  # the lesion with the most images
  rows = np.flatnonzero(groups == lesion)
  assert len(rows) > 1
  holding = {int(k) for k in np.nonzero(np.isin(layout.index, rows) & layout.valid)[0]}
  first = layout.first_affected_slices(rows)
  assert len(holding) == 1 and set(np.flatnonzero(first < 4)) == holding
  after = layout.without(rows)
  assert not after.deleted(rows).any() and after.index is layout.index  # same shapes
  assert after.sizes().sum() == layout.sizes().sum() - len(rows)
  # A class touches the shards holding it (df: 115 images, in every shard).
  df = np.flatnonzero(labels == fixtures.SKIN_CLASSES.index("df"))
  touched = layout.first_affected_slices(df) < 4
  assert np.array_equal(touched, np.isin(layout.index, df).any(axis=(1, 2))) and touched.all()
  # Stratified: each shard holds its share of every class, within a few images.
  for label in range(7):
    per_shard = np.isin(layout.index, np.flatnonzero(labels == label)).sum(axis=(1, 2))
    assert per_shard.max() - per_shard.min() <= 6, (label, per_shard)


def test_batches_draw_only_remaining_examples_epoch_by_epoch():
  usable = jnp.asarray(np.arange(40) % 3 != 0)  # 26 usable positions
  positions = np.asarray(jax.vmap(lambda s: batch_positions(jax.random.key(0), s, usable, 13))(
      jnp.arange(4)))
  assert np.asarray(usable)[positions].all()
  epochs = positions.reshape(2, 26)
  assert all(len(set(epoch)) == 26 for epoch in epochs)  # each an epoch without repeats
  assert not np.array_equal(epochs[0], epochs[1])        # reshuffled
  few = np.asarray(batch_positions(jax.random.key(0), jnp.int32(0), usable.at[4:].set(False), 8))
  assert set(few) == {1, 2}  # fewer usable than a batch: cycled


def test_auto_lanes():
  assert auto_lanes(20, 2, "cpu") == 2 and auto_lanes(1, 2, "cpu") == 1
  assert auto_lanes(20, 8, "gpu") == 24 and auto_lanes(5, 1, "tpu") == 5


# ----------------------------------------------------------------------------
# Exact deletion.


def _final(trainer):
  return [trainer._final[k] for k in range(trainer.num_shards)]  # pylint: disable=protected-access


def test_deletion_equals_training_from_scratch_without_the_examples_bitwise(tmp_path):
  layout, spec, _ = _setup()
  (_, _, groups), _ = _digits()
  trainer = _trainer(tmp_path / "sisa")
  info = trainer.sync(layout)
  assert info["shards_retrained"] == SHARDS and info["steps"] == SHARDS * spec.shard_steps
  before = _final(trainer)

  # One example of shard 1's middle slice: shard 1 restarts from its stage-0 checkpoint.
  one = _in(layout, 1, 1)
  first = layout.without(one)
  info = trainer.sync(first)
  assert info["first_stage"].tolist() == [SLICES, 1, SLICES]
  assert info["steps"] == (SLICES - 1) * spec.steps_per_stage
  assert info["examples_retrained"] == first.sizes()[1].sum()
  for shard in (0, 2):  # untouched
    assert_trees_equal(_final(trainer)[shard], before[shard])
  scratch = _trainer(tmp_path / "scratch_1")
  scratch.sync(first)
  assert_trees_equal(_final(trainer), _final(scratch))
  assert not any(np.array_equal(np.asarray(a.params["Dense_0"]["kernel"]),
                                np.asarray(b.params["Dense_0"]["kernel"]))
                 for a, b in [(_final(trainer)[1], before[1])])

  # Then a whole group in shard 0's first slice (from scratch) and an example of
  # shard 2's last slice: two shards, and shard 1's checkpoints of the first deletion.
  group = np.flatnonzero(groups == groups[_in(layout, 0, 0)[0]])
  second = first.without(np.concatenate([group, _in(layout, 2, 2)]))
  info = trainer.sync(second)
  assert info["first_stage"].tolist() == [0, SLICES, 2]
  scratch = _trainer(tmp_path / "scratch_2")
  scratch.sync(second)
  assert_trees_equal(_final(trainer), _final(scratch))
  assert trainer.invalid_checkpoints(second) == []
  assert trainer.invalid_checkpoints(layout) != []
  trainer.close()

  # A new trainer on the same checkpoints finds everything valid: nothing to retrain.
  reopened = _trainer(tmp_path / "sisa")
  info = reopened.sync(second)
  assert info["shards_retrained"] == 0 and reopened.compile_s == 0.0
  assert_trees_equal(reopened.variables(), trainer.variables())


def test_a_damaged_checkpoint_costs_only_an_earlier_restart(tmp_path):
  layout, _, _ = _setup()
  trainer = _trainer(tmp_path / "sisa")
  trainer.sync(layout)
  rows = _in(layout, 0, 2)
  reference = _trainer(tmp_path / "reference")
  reference.sync(layout.without(rows))
  record = tmp_path / "sisa" / "shard_000" / "stage_001.json"
  record.write_text(record.read_text().replace('"sha256": "', '"sha256": "0'))
  info = trainer.sync(layout.without(rows))
  assert info["first_stage"].tolist() == [1, SLICES, SLICES]  # stage 1 damaged: from stage 0
  assert_trees_equal(_final(trainer), _final(reference))


def test_deletion_is_exact_with_the_lanes_laid_over_two_devices(tmp_path):
  from hamforget import sharding  # pylint: disable=import-outside-toplevel
  layout, spec, _ = _setup()
  (images, labels, _), _ = _digits()
  mesh = sharding.make_mesh(2)
  with jax.set_mesh(mesh):
    data = batches.to_device(images, labels, mesh)
    make = lambda name: ShardTrainer(spec, SHARDS, data, (8, 8, 1), jax.random.key(3),
                                     str(tmp_path / name))
    trainer, scratch = make("sisa"), make("scratch")
    trainer.sync(layout)
    rows = _in(layout, 2, 1)
    assert trainer.sync(layout.without(rows))["first_stage"].tolist() == [SLICES, SLICES, 1]
    scratch.sync(layout.without(rows))
  assert_trees_equal(_final(trainer), _final(scratch))
  params = _final(trainer)[0].params["Dense_0"]["kernel"]
  assert len(params.sharding.device_set) == 2  # replicated over the mesh


def test_a_stage_with_nothing_left_leaves_the_state_unchanged():
  layout, spec, data = _setup()
  from hamforget.sisa import training  # pylint: disable=import-outside-toplevel
  state = training.init_state(spec, (8, 8, 1), jax.random.key(0), jnp.int32(0))
  none_left = np.zeros_like(layout.valid[0])
  after, metrics = jax.jit(functools.partial(training.train_stage, spec))(
      state, jnp.int32(0), layout.index[0], none_left, jnp.int32(0), data, jax.random.key(1))
  assert int(metrics["examples"]) == 0
  assert_trees_equal(after, state)


# ----------------------------------------------------------------------------
# The ensemble.


def test_vote_is_the_majority_and_softmax_the_mean():
  logits = jnp.asarray([[[0.0, 0.3, 0.0]], [[0.0, 0.3, 0.0]], [[0.0, 0.0, 9.0]],
                        [[3.0, 0.0, 2.9]]])  # 4 members, one example
  vote = ensemble.aggregate(logits, "vote")
  assert int(jnp.argmax(vote)) == 1  # two votes for class 1
  np.testing.assert_allclose(jnp.exp(vote).sum(), 1.0, rtol=1e-6)
  softmax = ensemble.aggregate(logits, "softmax")
  assert int(jnp.argmax(softmax)) == 2  # the confident member wins the mean
  np.testing.assert_allclose(jnp.exp(softmax), jax.nn.softmax(logits, -1).mean(0), rtol=1e-6)
  tie = ensemble.aggregate(logits[1:3], "vote")  # one vote each: the mean softmax decides
  assert int(jnp.argmax(tie)) == 2
  with pytest.raises(ValueError, match="aggregation"):
    ensemble.aggregate(logits, "median")


def test_the_ensemble_scores_like_a_model(tmp_path):
  layout, _, _ = _setup()
  _, (test_images, test_labels) = _digits()
  trainer = _trainer(tmp_path / "sisa")
  trainer.sync(layout)
  variables = trainer.variables()
  model = ensemble.Ensemble(TinyNet(), SHARDS, "softmax")
  logits = train.predict(model, variables, jnp.asarray(test_images), 64)
  members = jnp.stack([train.predict(TinyNet(), ensemble.member_variables(variables, k),
                                     jnp.asarray(test_images), 64) for k in range(SHARDS)])
  np.testing.assert_allclose(logits, ensemble.aggregate(members, "softmax"), atol=1e-5)
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test_labels))
  assert accuracy > 0.9, accuracy
  assert jax.tree.structure(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))) == \
      jax.tree.structure(variables)


# ----------------------------------------------------------------------------
# In an experiment.


def test_an_experiment_reports_the_ensemble_before_and_after_deletion(tmp_path):
  from configs import mnist  # pylint: disable=import-outside-toplevel
  from hamforget import experiment, sharding  # pylint: disable=import-outside-toplevel
  config = mnist.get_config("local")
  config.data.limit = 400
  config.data.image_size = 8
  config.model.name = "resnet10"  # compiles in about half a ResNet-18's time
  config.model.conv = "xla"
  config.train.num_epochs = 1
  config.forget.kind = "examples"
  config.forget.fraction = 0.01
  config.evaluate.anamnesis = False
  config.evaluate.noise_floor = False
  config.unlearn.methods = ("sisa",)
  config.unlearn.sisa.shards = 2
  config.unlearn.sisa.slices = 2
  config.unlearn.sisa.num_epochs = 1
  workdir = tmp_path / "run"
  mesh = sharding.make_mesh(2)
  with jax.set_mesh(mesh):
    results = experiment.run(config, str(workdir), mesh)
  assert list(results) == ["original", "retrain", "sisa_original", "sisa"]
  before, after = results["sisa_original"], results["sisa"]
  assert 0.0 <= before["acc_test"] <= 1.0 and 0.0 <= after["acc_test"] <= 1.0
  assert after["steps"] < before["steps"] and after["work_ratio_to_retrain"] > 0
  assert "SISA" in (workdir / "results.md").read_text()
  with jax.set_mesh(mesh):  # a rerun restores both ensembles
    again = experiment.run(config, str(workdir), mesh)
  assert again["sisa"]["acc_test"] == after["acc_test"]


def test_common_config_has_the_sisa_section():
  config = common.base_config()
  assert config.unlearn.sisa.shards == 5 and config.unlearn.sisa.aggregation == "vote"
