"""The grain pipeline: epochs, shards, determinism, state, eval padding."""

import pickle

import grain
import numpy as np
import pytest
from absl import flags

from hamforget.data import pipeline


def _data(n):
  """Image i holds the value i (mod 256) everywhere; label i exactly."""
  images = (np.arange(n) % 256).astype(np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  return images, np.arange(n)


def _labels(batches):
  return [np.asarray(b["label"]).tolist() for b in batches]


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_batches_and_epochs():
  images, labels = _data(24)
  iterator = pipeline.make_train_iterator(images, labels, 6, seed=0, num_epochs=2)
  batches = list(iterator)
  assert len(batches) == 2 * pipeline.steps_per_epoch(24, 6) == 8
  for b in batches:
    assert b["image"].shape == (6, 2, 2, 1) and b["image"].dtype == np.uint8
    assert b["label"].shape == (6,) and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["label"])  # rows stay paired
  epochs = _labels(batches)
  first, second = sum(epochs[:4], []), sum(epochs[4:], [])
  assert sorted(first) == sorted(second) == list(range(24))  # every example once per epoch
  assert first != second  # reshuffled each epoch
  assert first != list(range(24))


def test_remainder_dropped_without_repeats():
  images, labels = _data(26)
  batches = _labels(pipeline.make_train_iterator(images, labels, 4, seed=0, num_epochs=1))
  seen = sum(batches, [])
  assert len(batches) == 6 and len(set(seen)) == 24


def test_shards_disjoint_and_covering_with_equal_lengths():
  images, labels = _data(50)  # 50 % 3 == 2: two examples sit out each epoch
  shards = [
      _labels(pipeline.make_train_iterator(images, labels, 4, seed=7, shard_index=i,
                                           shard_count=3, num_epochs=2))
      for i in range(3)]
  assert {len(s) for s in shards} == {2 * pipeline.steps_per_epoch(50, 4, 3)} == {8}
  # Batch size 4 over 16 examples per shard: the full shard each epoch.
  for epoch in range(2):
    parts = [set(sum(s[4 * epoch:4 * epoch + 4], [])) for s in shards]
    assert all(len(p) == 16 for p in parts)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 48


def test_determinism_by_seed():
  images, labels = _data(40)
  make = lambda seed: _labels(pipeline.make_train_iterator(images, labels, 8, seed, num_epochs=3))
  assert make(1) == make(1)
  assert make(1) != make(2)


def test_state_restore_resumes_identically():
  images, labels = _data(30)
  make = lambda: pipeline.make_train_iterator(images, labels, 4, seed=3)  # endless
  iterator = make()
  _take(iterator, 9)  # past the first epoch boundary (7 batches per epoch)
  state = iterator.get_state()
  expected = _labels(_take(iterator, 10))
  resumed = make()
  resumed.set_state(state)
  assert _labels(_take(resumed, 10)) == expected


def test_orbax_checkpoint_of_iterator(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  images, labels = _data(30)
  make = lambda: pipeline.make_train_iterator(images, labels, 4, seed=3)
  iterator = make()
  _take(iterator, 5)
  with ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(create=True)) as manager:
    manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    expected = _labels(_take(iterator, 6))
    restored = manager.restore(
        5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(make())))["data"]
  assert _labels(_take(restored, 6)) == expected


def test_bad_arguments():
  images, labels = _data(10)
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.make_train_iterator(images, labels, 2, 0, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="no full batch"):
    pipeline.make_train_iterator(images, labels, 8, 0, shard_index=0, shard_count=2)
  with pytest.raises(ValueError, match="uint8"):
    pipeline.make_train_iterator(images.astype(np.float32), labels, 2, 0)


def test_memmap_source_pickles_by_reference(tmp_path):
  images, labels = _data(64)
  images = np.repeat(np.repeat(images, 32, axis=1), 32, axis=2)  # 64 KiB of pixels
  path = tmp_path / "images.npy"
  np.save(path, images)
  mapped = np.load(path, mmap_mode="r")
  # The whole file, and a slice (whose np.memmap.offset attribute is stale).
  for lo, hi in ((0, 64), (10, 30)):
    source = pipeline.ArraySource(mapped[lo:hi], labels[lo:hi])
    payload = pickle.dumps(source)
    assert len(payload) < 4096  # the file name, not the pixels
    clone = pickle.loads(payload)
    assert len(clone) == hi - lo
    np.testing.assert_array_equal(clone[7]["image"], images[lo + 7])
    assert clone[7]["label"] == lo + 7
  # A strided view cannot be re-mapped: it is pickled by value, still correct.
  clone = pickle.loads(pickle.dumps(pipeline.ArraySource(mapped[::2], labels[::2])))
  np.testing.assert_array_equal(clone[3]["image"], images[6])


def test_worker_processes_match_in_process(tmp_path):
  # Grain reads absl flags in the parent; pytest does not parse them (a run
  # under absl.app.run does), so mark them parsed with their defaults.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  images, labels = _data(40)
  np.save(tmp_path / "images.npy", images)
  images = np.load(tmp_path / "images.npy", mmap_mode="r")  # workers re-map the file
  expected = _labels(pipeline.make_train_iterator(images, labels, 4, seed=5, num_epochs=1))
  iterator = pipeline.make_train_iterator(images, labels, 4, seed=5, num_workers=2, num_epochs=1)
  head = _labels(_take(iterator, 3))
  state = iterator.get_state()
  rest = _labels(iterator)
  assert head + rest == expected
  resumed = pipeline.make_train_iterator(images, labels, 4, seed=5, num_workers=2, num_epochs=1)
  resumed.set_state(state)
  assert _labels(resumed) == rest
