"""SISA's pure part: one stage of training of a batch of shard models.

A stage r of shard k trains its model, from its state after stage r - 1, for
a fixed number of steps on what remains of slices 0..r. Every quantity is a
pure function of (rng, shard, stage, step) and of the set of examples that
remain, never of the examples that were deleted or of the padding:

- the shard's positions are a fixed (R * C,) grid with a validity mask, so
  shapes never change (one compiled program serves training and every
  deletion);
- a batch holds only valid examples (no masked rows, so BatchNorm's batch
  statistics see none of the padding): epoch e of a stage visits the usable
  positions in the order of uniform keys drawn from the epoch's key, padding
  and deleted positions sorted last (`batch_positions`);
- the number of steps per stage is static (from the capacity, not from what
  remains), so the learning-rate schedule of a shard does not move when a
  deletion shrinks it.

Hence a shard restored from its state after stage r0 - 1 and trained on the
layout without the deleted examples performs, bit for bit, the computation of
a shard trained from scratch on that layout: stages before r0 saw the same
examples in the same order.

A lane is one shard model in a vmapped batch of `lanes` of them (`lanes`
static). XLA:CPU's results for one lane do not depend on the other lanes or on
the lane's position, but do depend on the batch's width (batched matmuls and
convolutions sum in another order), so the trainer always calls the one
compiled program of `lanes` lanes and pads a partial batch with copies.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec as P

from hamforget import sharding, train
from hamforget.data import augment as augment_lib
from hamforget.data.batches import DeviceData

# Key streams derived from the trainer's key (jax.random.fold_in(rng, ...)).
_INIT_STREAM, _TRAIN_STREAM = 0, 1
# Sub-streams of a stage's key.
_ORDER, _AUGMENT, _SMALL = 0, 1, 2


class ShardState(NamedTuple):
  """One shard model's training state (leading lane axis when batched)."""
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class StageSpec:
  """The static part of a stage: the model, its optimiser, shapes and sizes.

  Attributes:
    model: the shard model (a Flax module; every shard has its shapes).
    tx: the optimiser; its schedule spans all `num_slices * steps_per_stage`
      steps of a shard, its state is part of the checkpointed ShardState.
    batch_size: examples per step (all valid; see `batch_positions`).
    steps_per_stage: steps of each stage, the same for every stage.
    num_slices, capacity: R and C of the layout.
    augment_config: the `augment` config section, or None.
    lanes: shard models per vmapped program.
  """
  model: Any = flax.struct.field(pytree_node=False)
  tx: Any = flax.struct.field(pytree_node=False)
  batch_size: int = flax.struct.field(pytree_node=False)
  steps_per_stage: int = flax.struct.field(pytree_node=False)
  num_slices: int = flax.struct.field(pytree_node=False)
  capacity: int = flax.struct.field(pytree_node=False)
  augment_config: Any = flax.struct.field(pytree_node=False)
  lanes: int = flax.struct.field(pytree_node=False)

  @property
  def shard_steps(self) -> int:
    """Steps of a shard trained through all of its stages."""
    return self.num_slices * self.steps_per_stage


def make_stage_spec(model, recipe, augment_config, num_slices: int, capacity: int,
                    num_epochs: int, batch_size: int, lanes: int) -> StageSpec:
  """A StageSpec whose R stages add up to `num_epochs` passes over a full shard.

  Each stage takes ceil(num_epochs * C / B) steps (C: one slice's capacity),
  so the R stages of a shard take as many steps as `num_epochs` epochs over
  its R * C positions: slicing adds no training to a shard's budget, and
  stage r makes about num_epochs / (r + 1) passes over the slices it sees.
  The optimiser is `train.make_optimizer` of `recipe` (the original's, with
  SISA's learning rate), its warmup in shard epochs.
  """
  steps = max(1, -(-num_epochs * capacity // batch_size))
  shard_epoch = max(1, -(-num_slices * capacity // batch_size))
  tx = train.make_optimizer(recipe, num_slices * steps, shard_epoch)
  frozen = None if augment_config is None else ml_collections.FrozenConfigDict(augment_config)
  return StageSpec(model, tx, batch_size, steps, num_slices, capacity, frozen, lanes)


def init_state(spec: StageSpec, image_shape: tuple[int, int, int], rng: jax.Array,
               shard: jax.Array) -> ShardState:
  """Shard `shard`'s state before its first stage: fresh variables from
  fold_in(fold_in(rng, 0), shard), a fresh optimiser state."""
  key = jax.random.fold_in(jax.random.fold_in(rng, _INIT_STREAM), shard)
  variables = train.init_variables(spec.model, image_shape, key)
  return ShardState(variables["params"], variables["batch_stats"],
                    spec.tx.init(variables["params"]))


def stage_key(rng: jax.Array, shard: jax.Array, stage: jax.Array) -> jax.Array:
  """The key of one stage of one shard: fold_in(fold_in(fold_in(rng, 1), shard), stage)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, _TRAIN_STREAM), shard),
                            stage)


def batch_positions(key: jax.Array, step: jax.Array, usable: jax.Array,
                    batch_size: int) -> jax.Array:
  """Positions (batch_size,) int32 of usable examples forming step `step`'s batch.

  The stage's stream of examples is a sequence of epochs over the n usable
  positions: epoch e visits them in the order of uniform keys drawn from
  fold_in(fold_in(key, 0), e), unusable positions sorted last, and the batch
  of step s is entries s*B .. s*B + B - 1 of that stream. With n < B a batch
  cannot be an epoch's part: each step then cycles a shuffle of its own (key
  fold_in(fold_in(key, 2), step)). With n = 0 the positions are meaningless
  and the stage leaves its state unchanged (`train_stage`).

  Args:
    key: the stage's key.
    step: the step within the stage, int32 scalar.
    usable: bool (P,), positions the stage may draw.
    batch_size: B.
  """
  n = jnp.sum(usable, dtype=jnp.int32)
  safe = jnp.maximum(n, 1)

  def order(k):
    return jnp.argsort(jnp.where(usable, jax.random.uniform(k, usable.shape), 2.0))

  offsets = jnp.arange(batch_size, dtype=jnp.int32)
  epoch, within = jnp.divmod(step * batch_size + offsets, safe)
  # With n >= B a batch spans at most two epochs.
  epochs_key = jax.random.fold_in(key, _ORDER)
  first = order(jax.random.fold_in(epochs_key, epoch[0]))
  second = order(jax.random.fold_in(epochs_key, epoch[0] + 1))
  regular = jnp.where(epoch == epoch[0], first[within], second[within])
  small = order(jax.random.fold_in(jax.random.fold_in(key, _SMALL), step))[offsets % safe]
  return jnp.where(n >= batch_size, regular, small).astype(jnp.int32)


def _lanes_sharded(lanes: int) -> bool:
  """True when the lanes split evenly over the `data` axis of the mesh in
  context: each device then trains its own shard models, whole batches."""
  devices = sharding.data_size()
  return devices > 1 and lanes % devices == 0


def train_stage(spec: StageSpec, state: ShardState, shard: jax.Array, index: jax.Array,
                valid: jax.Array, stage: jax.Array, data: DeviceData, rng: jax.Array):
  """Stage `stage` of one shard: `steps_per_stage` steps on its usable examples.

  Args:
    state: the shard's state after stage - 1 (or `init_state` for stage 0).
    shard: the shard's number, int32 scalar (its key stream).
    index: int32 (R, C), training rows at the shard's positions (-1: padding).
    valid: bool (R, C), positions whose example remains.
    stage: int32 scalar in [0, R): slices 0..stage are usable.
    data: the whole training split (uint8 images, labels), indexed by row.
    rng: the trainer's key.

  Returns:
    (state after the stage, {"loss": float32 (steps,), "examples": int32, the
    usable examples}). With no usable example the state is returned unchanged.
  """
  slice_of = jnp.repeat(jnp.arange(spec.num_slices), spec.capacity)
  usable = valid.reshape(-1) & (slice_of <= stage)
  rows = jnp.maximum(index.reshape(-1), 0)
  key = stage_key(rng, shard, stage)
  shard_examples = not _lanes_sharded(spec.lanes)

  def loss_fn(params, batch_stats, key, step):
    picked = rows[batch_positions(key, step, usable, spec.batch_size)]
    images, labels = augment_lib.normalize(data.images[picked]), data.labels[picked]
    if spec.augment_config is not None:
      images = augment_lib.augment(jax.random.fold_in(jax.random.fold_in(key, _AUGMENT), step),
                                   images, spec.augment_config)
    if shard_examples:  # lanes replicated: split each batch over the devices instead
      images, labels = sharding.shard_batch((images, labels))
    return train.supervised_loss(spec.model, params, batch_stats, images, labels)

  params, batch_stats, opt_state, metrics = train.minimize(
      loss_fn, state.params, state.batch_stats, spec.tx, state.opt_state, key, 0,
      spec.steps_per_stage)
  examples = jnp.sum(usable, dtype=jnp.int32)
  trained = ShardState(params, batch_stats, opt_state)
  new_state = jax.tree.map(lambda new, old: jnp.where(examples > 0, new, old), trained, state)
  return new_state, {"loss": metrics["loss"], "examples": examples}


def _constrain_lanes(spec: StageSpec, tree):
  """Lays the leading (lane) axis of every leaf along the `data` mesh axis when
  the lanes split evenly over it; else leaves the tree to propagation."""
  if not _lanes_sharded(spec.lanes):
    return tree
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, P(sharding.DATA_AXIS)), tree)


def init_lanes(spec: StageSpec, image_shape: tuple[int, int, int], rng: jax.Array,
               shards: jax.Array) -> ShardState:
  """`init_state` of each of `shards` (int32 (lanes,)), stacked over lanes."""
  states = jax.vmap(lambda shard: init_state(spec, image_shape, rng, shard))(shards)
  return _constrain_lanes(spec, states)


def train_lanes(spec: StageSpec, states: ShardState, shards: jax.Array, index: jax.Array,
                valid: jax.Array, stage: jax.Array, data: DeviceData, rng: jax.Array):
  """`train_stage` of `lanes` shards at once: one vmapped program.

  Args:
    states: ShardState stacked over lanes.
    shards: int32 (lanes,); index int32 (lanes, R, C); valid bool (lanes, R, C).
    stage, data, rng: shared by the lanes.

  Returns:
    (states, metrics), each stacked over lanes.
  """
  states, shards, index, valid = _constrain_lanes(spec, (states, shards, index, valid))
  out = jax.vmap(functools.partial(train_stage, spec),
                 in_axes=(0, 0, 0, 0, None, None, None))(states, shards, index, valid, stage,
                                                         data, rng)
  return _constrain_lanes(spec, out)
