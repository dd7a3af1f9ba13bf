"""The grain input pipeline: shuffle, shard, batch, worker processes, state.

For data that does not fit on the device and for multi-host runs. The pipeline
only moves uint8 pixels: normalisation and augmentation run on the device
inside the jitted step (`hamforget.data.augment`), so there is one augmentation
implementation for this path and the device-resident one, and each host-to-
device transfer is 4x smaller than float32 would be.

Order of operations, and why:
  source -> shuffle(seed) -> [:N - N % shard_count] -> [shard::shard_count]
         -> batch(drop_remainder) -> repeat(num_epochs) -> iter [-> mp_prefetch]
- Every process shuffles the whole index set with the same seed, then takes
  its own stride, so within an epoch the shards are disjoint and cover the
  data; grain reseeds the shuffle each epoch.
- Dropping `N % shard_count` examples (a different random few each epoch)
  gives every process the same number of batches; otherwise one host would
  run one step more than the others and hang in a collective.
- Batching before repeating keeps epochs aligned with batches: each epoch is
  exactly `steps_per_epoch(...)` batches and sees each of its examples once.

Iterator state is a small dict (`get_state()`/`set_state()`); with orbax it is
saved by `grain.checkpoint.CheckpointSave(iterator)` and restored by
`grain.checkpoint.CheckpointRestore(iterator)` (one JSON file per process).
Worker processes (num_workers > 0) are spawned, so absl flags must be parsed in
the parent (run under `absl.app.run`) and the dataset is pickled to each
worker: pass images as `np.load(path, mmap_mode="r")` for large data and the
workers reopen the file instead of receiving a copy.
"""

from __future__ import annotations

import mmap

import grain
import numpy as np


class ArraySource:
  """Random access to (image, label) rows of aligned arrays, for grain.

  A memory-mapped `images` array (np.memmap, e.g. from `np.load(...,
  mmap_mode="r")`) is pickled as its file name, so spawned workers map the
  same file instead of receiving a copy of the pixels.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f"images has {len(images)} rows, labels has {len(labels)}")
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    self._images = images
    self._labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": np.asarray(self._images[index]), "label": self._labels[index]}

  def __getstate__(self):
    state = dict(self.__dict__)
    reference = _memmap_reference(self._images)
    if reference is not None:
      state["_images"] = reference
    return state

  def __setstate__(self, state):
    images = state["_images"]
    if isinstance(images, tuple) and images[0] == "memmap":
      _, filename, offset, shape, dtype = images
      state["_images"] = np.memmap(filename, dtype=dtype, mode="r", offset=offset, shape=shape)
    self.__dict__.update(state)


def _memmap_reference(images: np.ndarray):
  """("memmap", file, byte offset, shape, dtype) for a C-contiguous view of a
  file mapping, else None (then the pixels are pickled).

  The offset is computed from data pointers, because a slice of an np.memmap
  keeps its parent's `offset` attribute unchanged.
  """
  if not isinstance(images, np.memmap) or not images.flags.c_contiguous:
    return None
  root = images
  while isinstance(root.base, np.ndarray):
    root = root.base
  if not isinstance(root, np.memmap) or not isinstance(root.base, mmap.mmap) or not root.filename:
    return None
  offset = root.offset + images.ctypes.data - root.ctypes.data
  return ("memmap", root.filename, offset, images.shape, images.dtype.str)


def steps_per_epoch(num_examples: int, batch_size_per_process: int, shard_count: int = 1) -> int:
  """Batches per epoch per process for `make_train_iterator`."""
  return (num_examples // shard_count) // batch_size_per_process


def make_train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size_per_process: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
) -> grain.MapDataset:
  """The batched, sharded, repeated MapDataset behind `make_train_iterator`."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  if batch_size_per_process <= 0:
    raise ValueError(f"batch_size_per_process must be positive, got {batch_size_per_process}")
  source = ArraySource(images, labels)
  if steps_per_epoch(len(source), batch_size_per_process, shard_count) == 0:
    raise ValueError(
        f"{len(source)} examples over {shard_count} shards give no full batch of "
        f"{batch_size_per_process}")
  usable = len(source) - len(source) % shard_count
  dataset = grain.MapDataset.source(source).shuffle(seed=seed)
  dataset = dataset[:usable][shard_index::shard_count]
  dataset = dataset.batch(batch_size_per_process, drop_remainder=True)
  return dataset.repeat(num_epochs)


def make_train_iterator(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size_per_process: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_workers: int = 0,
    num_epochs: int | None = None,
) -> grain.DatasetIterator:
  """A checkpointable iterator over shuffled training batches of this process.

  Args:
    images: uint8 (N, H, W, C), in memory or memory-mapped.
    labels: int (N,).
    batch_size_per_process: B, the global batch over `shard_count`.
    seed: shuffle seed, the same on every process.
    shard_index: this process's shard (`jax.process_index()`).
    shard_count: number of shards (`jax.process_count()`).
    num_workers: grain worker processes; 0 reads in this process.
    num_epochs: epochs to yield, or None for endless.

  Returns:
    An iterator of {"image": uint8 (B, H, W, C), "label": int32 (B,)} with
    `get_state()`/`set_state()`; `steps_per_epoch(N, B, shard_count)` batches
    per epoch.
  """
  dataset = make_train_dataset(images, labels, batch_size_per_process, seed, shard_index,
                               shard_count, num_epochs).to_iter_dataset()
  if num_workers > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(dataset)
