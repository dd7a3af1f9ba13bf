"""Batches for the model: the two ways data reaches a jitted step, behind one vocabulary.

- `DeviceData`: a split resident on the device(s) as uint8 arrays. A step's
  batch is gathered by index inside the jitted program (`sample_batch`), so a
  whole epoch is one `lax.scan` with no host round-trip. The fast path
  whenever a split fits in device memory (HAM10000 at 224x224 is ~1.5 GB).
- `StreamedData`: a grain iterator over host-resident (possibly memory-mapped)
  arrays, one batch per step (`hamforget.data.pipeline`); for data that does
  not fit and for multi-host runs, where each process reads its own slice.

Either way the arrays stay uint8 until the step, where `model_input` turns
them into the model's input: normalised (mean 0.5, std 0.5, once, here),
augmented when asked, and sharded over the `data` mesh axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from hamforget import sharding
from hamforget.data import augment as augment_lib


@flax.struct.dataclass
class DeviceData:
  """A labelled split resident on the device(s).

  Attributes:
    images: uint8 (N, H, W, C); normalised and augmented per batch inside jit.
    labels: int32 (N,).
  """
  images: jax.Array
  labels: jax.Array

  @property
  def size(self) -> int:
    return self.images.shape[0]

  def take(self, index: jax.Array) -> "DeviceData":
    """The examples at `index` (int (M,)), in that order."""
    return DeviceData(self.images[index], self.labels[index])


def to_device(images: np.ndarray, labels: np.ndarray, mesh=None) -> DeviceData:
  """Copies a split to the device(s); replicated over `mesh` when given."""
  data = DeviceData(np.asarray(images, np.uint8), np.asarray(labels, np.int32))
  if mesh is not None:
    return sharding.replicate(data, mesh)
  return jax.device_put(data)


@dataclasses.dataclass
class StreamedData:
  """Training batches that stay on the host until their step.

  Attributes:
    iterator: yields {"image": uint8 (B_local, H, W, C), "label": int32
      (B_local,)}, this process's share of each global batch; checkpointable
      (`get_state`/`set_state`), as grain's iterators are.
    steps_per_epoch: batches per epoch.
    to_global: maps a process-local batch to the global (sharded) batch;
      the identity on one process without a mesh.
    class_counts: int64 (K,) examples per class of the whole stream (what
      class-weighted losses weigh by), or None when unknown.
  """
  iterator: Iterator[dict[str, np.ndarray]]
  steps_per_epoch: int
  to_global: Callable[[Any], Any] = lambda batch: batch
  class_counts: np.ndarray | None = None

  def next_batch(self) -> tuple[jax.Array, jax.Array]:
    """(images uint8 (B, H, W, C), labels int32 (B,)) of the next step, global."""
    batch = self.to_global(next(self.iterator))
    return batch["image"], batch["label"]


def stream(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, *,
           num_workers: int = 0, mesh=None) -> StreamedData:
  """A grain stream of global batches of `batch_size`, each process reading its slice.

  Raises a ValueError when `batch_size` does not split evenly over processes
  (each would silently train on a smaller global batch).
  """
  from hamforget.data import pipeline  # grain is imported only by the streaming path

  processes = jax.process_count()
  if batch_size % processes:
    raise ValueError(f"train.batch_size={batch_size} does not split over {processes} processes")
  per_process = batch_size // processes
  iterator = pipeline.make_train_iterator(
      images, labels, per_process, seed, shard_index=jax.process_index(),
      shard_count=processes, num_workers=num_workers)
  to_global = (lambda batch: batch) if mesh is None else (
      lambda batch: sharding.global_batch(batch, mesh))
  return StreamedData(iterator, pipeline.steps_per_epoch(len(labels), per_process, processes),
                      to_global, np.bincount(np.asarray(labels, np.int64)))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per pass over the data (the ragged tail is dropped), at least 1."""
  return max(1, num_examples // batch_size)


def batch_indices(rng: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """Indices (batch_size,) of global step `step`: epoch-wise shuffles, without replacement.

  Epoch e uses the permutation drawn from fold_in(rng, e), so any step's batch
  is a pure function of (rng, step): resuming mid-run needs no sampler state.
  """
  per_epoch = steps_per_epoch(num_examples, batch_size)
  epoch, position = jnp.divmod(step, per_epoch)
  order = jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)
  if num_examples < batch_size:  # a tiny split: cycle through it
    order = jnp.tile(order, -(-batch_size // num_examples))
  return jax.lax.dynamic_slice(order, (position * batch_size,), (batch_size,))


def model_input(images: jax.Array, rng: jax.Array | None = None, step: jax.Array | None = None,
                augment_config=None) -> jax.Array:
  """uint8 images (B, H, W, C) -> the model's float32 input in [-1, 1], sharded.

  With an augmentation config the images are augmented with the key
  fold_in(fold_in(rng, 1), step): a pure function of the step, like the batch
  indices.
  """
  images = augment_lib.normalize(images)
  if augment_config is not None:
    images = augment_lib.augment(jax.random.fold_in(jax.random.fold_in(rng, 1), step),
                                 images, augment_config)
  return sharding.shard_batch(images)


def prepare_batch(images: jax.Array, labels: jax.Array, rng: jax.Array, step: jax.Array,
                  augment_config=None) -> tuple[jax.Array, jax.Array]:
  """A training batch: (`model_input` of the images, labels), both sharded."""
  return (model_input(images, rng, step, augment_config), sharding.shard_batch(labels))


def sample_batch(data: DeviceData, rng: jax.Array, step: jax.Array, batch_size: int,
                 augment_config=None, probabilities: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """The normalised (and, given a config, augmented) batch of `step`.

  With `probabilities` (N,) the batch is drawn with replacement from them
  (class-balanced sampling, say) with the key fold_in(fold_in(rng, 0), step),
  still a pure function of the step; without, epoch-wise shuffles.

  Returns images float32 (B, H, W, C) in [-1, 1] and labels int32 (B,), both
  sharded over the `data` mesh axis when a mesh is in context.
  """
  if probabilities is None:
    index = batch_indices(jax.random.fold_in(rng, 0), step, data.size, batch_size)
  else:
    index = jax.random.choice(jax.random.fold_in(jax.random.fold_in(rng, 0), step), data.size,
                              (batch_size,), p=probabilities)
  return prepare_batch(data.images[index], data.labels[index], rng, step, augment_config)


def fixed_size_batches(data: DeviceData, batch_size: int):
  """Every example once, in order, in batches of one shape (the tail padded).

  One compiled program then serves any number of examples.

  Returns:
    (images uint8 (NB, B, H, W, C), labels int32 (NB, B), is_real bool (NB, B)),
    NB = ceil(N / B); padded rows are zero images with label 0.
  """
  n = data.size
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  images = jnp.pad(data.images, [(0, pad)] + [(0, 0)] * (data.images.ndim - 1))
  labels = jnp.pad(data.labels, (0, pad))
  is_real = jnp.arange(num_batches * batch_size) < n
  return (images.reshape(num_batches, batch_size, *data.images.shape[1:]),
          labels.reshape(num_batches, batch_size), is_real.reshape(num_batches, batch_size))
