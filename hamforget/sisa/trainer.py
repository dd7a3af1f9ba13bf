"""SISA training and exact deletion: S shard models kept in line with a layout.

    trainer = ShardTrainer(spec, num_shards, data, image_shape, rng, directory)
    info = trainer.sync(layout)                # trains every (shard, stage)
    info = trainer.sync(layout.without(rows))  # deletes: retrains what saw `rows`
    variables = trainer.variables()            # for `ensemble.Ensemble`

`sync` is both training and deletion: for each shard it finds the latest
checkpoint that saw exactly what remains of its slices (`StageCheckpoints
.last_valid`) and retrains the stages after it, stage by stage, the shards
due at a stage `spec.lanes` at a time in the one compiled program
(`training.train_lanes`), checkpointing every (shard, stage) it trains.
Shards whose last stage is valid are not touched, nor are their checkpoints.
The host loops over stages and groups of lanes (a checkpoint is written
between stages); the steps run inside the compiled program.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hamforget import sharding
from hamforget.data.batches import DeviceData
from hamforget.sisa import ensemble
from hamforget.sisa.checkpoints import StageCheckpoints
from hamforget.sisa.layout import Layout
from hamforget.sisa.training import StageSpec, init_lanes, train_lanes


def auto_lanes(num_shards: int, devices: int, platform: str) -> int:
  """Shard models per vmapped program when `sisa.lanes` is 0.

  On an accelerator all S at once (rounded up to a multiple of the devices,
  so the lanes split over the mesh): a width-S step costs little more than
  one of a small model. On CPU a lane costs its full FLOPs, and a deletion
  runs whole programs of `lanes` lanes however few shards it touches, so one
  lane per device (S if fewer): the devices train shards side by side.
  """
  if platform == "cpu":
    return max(1, min(num_shards, devices))
  return -(-num_shards // devices) * devices


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class _Programs(NamedTuple):
  init: Any       # (rng, shards (lanes,)) -> ShardState stacked over lanes
  unstack: Any    # stacked ShardState -> [ShardState] * lanes (replicated)
  stack: Any      # [ShardState] * lanes -> stacked
  train: Any      # `train_lanes`, compiled ahead of time
  compile_s: float


def _abstract(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


@functools.lru_cache(maxsize=8)
def _programs(spec: StageSpec, image_shape: tuple[int, int, int], data, rng, mesh) -> _Programs:
  """The compiled programs of `spec` for data and key of these shapes, on `mesh`
  (the one in context; part of the key), shared by the trainers of one spec."""
  del mesh  # only a cache key: the programs are traced under the mesh in context
  init = jax.jit(functools.partial(init_lanes, spec, image_shape))
  unstack = jax.jit(lambda tree: [jax.tree.map(lambda x, i=i: x[i], tree)
                                  for i in range(spec.lanes)], out_shardings=sharding.replicated())
  grid = jax.ShapeDtypeStruct((spec.lanes, spec.num_slices, spec.capacity), jnp.int32)
  start = time.perf_counter()
  train = jax.jit(functools.partial(train_lanes, spec)).lower(
      jax.eval_shape(init, rng, jax.ShapeDtypeStruct((spec.lanes,), jnp.int32)),
      jax.ShapeDtypeStruct((spec.lanes,), jnp.int32), grid, grid.update(dtype=jnp.bool_),
      jax.ShapeDtypeStruct((), jnp.int32), data, rng).compile()
  return _Programs(init, unstack, jax.jit(_stack), train, time.perf_counter() - start)


class ShardTrainer:
  """The S shard models of one SISA ensemble, their checkpoints and their layout.

  Trainers of one `spec` (the same object) share its compiled programs.

  Args:
    spec: the stage's static part (model, optimiser, sizes, lanes).
    num_shards: S.
    data: the whole training split on the device(s) (rows as the layout's).
    image_shape: (H, W, C).
    rng: the ensemble's key (init and batches derive from it, per shard).
    directory: where the (shard, stage) checkpoints live.

  Attributes:
    compile_s: seconds spent compiling the training program for this trainer
      (0 when an earlier trainer of the spec compiled it).
  """

  def __init__(self, spec: StageSpec, num_shards: int, data: DeviceData,
               image_shape: tuple[int, int, int], rng: jax.Array, directory: str):
    self.spec, self.num_shards, self._data, self._rng = spec, num_shards, data, rng
    self.checkpoints = StageCheckpoints(directory)
    hits = _programs.cache_info().hits
    self._programs = _programs(spec, tuple(image_shape), jax.tree.map(_abstract, data),
                               _abstract(rng), jax.sharding.get_mesh())
    self.compile_s = 0.0 if _programs.cache_info().hits > hits else self._programs.compile_s
    self._like = self._programs.unstack(
        self._programs.init(rng, jnp.zeros(spec.lanes, jnp.int32)))[0]
    self._programs.stack([self._like] * spec.lanes)  # compiled here, not in the first sync
    self._final: dict[int, Any] = {}

  def _run(self, states, shards, index, valid, stage):
    args = (states, shards, index, valid, stage, self._data, self._rng)
    # The executable takes its inputs where it was compiled to find them.
    train = self._programs.train
    return train(*jax.device_put(args, train.input_shardings[0]))

  def sync(self, layout: Layout) -> dict:
    """Brings every shard in line with `layout`: retrains each from its latest
    valid checkpoint (from scratch without one), checkpointing each stage.

    Returns:
      {"wall_s": seconds (restores, training and checkpoint writes),
       "first_stage": int (S,), the first stage retrained per shard (R: none),
       "shards_retrained": count, "steps": gradient steps, summed over the
       retrained (shard, stage) pairs, "examples_seen": steps * batch size,
       "examples_retrained": distinct examples in the retrained shards (their
       last stage sees every remaining one), "final_loss": float (S,), the
       last step's loss of each retrained shard (NaN elsewhere), "loss":
       float32 (stages retrained * steps per stage,), the retrained shards'
       mean loss at each step}.
    """
    spec, num_slices = self.spec, self.spec.num_slices
    if layout.index.shape != (self.num_shards, num_slices, spec.capacity):
      raise ValueError(f"layout of shape {layout.index.shape}; the trainer's is "
                       f"{(self.num_shards, num_slices, spec.capacity)}")
    start_time = time.perf_counter()
    first_stage = np.full(self.num_shards, num_slices)
    states = {}
    for shard in range(self.num_shards):
      rows_through = functools.partial(layout.rows, shard)
      last = num_slices - 1
      seen = self.checkpoints.seen(shard, last)
      if shard in self._final and seen is not None and np.array_equal(seen, rows_through(last)):
        continue  # untouched: its model in memory is its last checkpoint's
      valid_through, states[shard] = self.checkpoints.last_valid(
          shard, rows_through, num_slices, self._like)
      first_stage[shard] = num_slices if valid_through == last else valid_through + 1
    steps, curve = 0, []
    final_loss = np.full(self.num_shards, np.nan)
    for stage in range(int(first_stage.min(initial=num_slices)), num_slices):
      due = [int(k) for k in np.flatnonzero(first_stage <= stage)]
      losses = [self._train_group(stage, due[i:i + spec.lanes], states, layout)
                for i in range(0, len(due), spec.lanes)]
      self.checkpoints.flush()  # a stage's records, before the next stage's writes
      losses = np.concatenate(losses)  # (due, steps per stage)
      final_loss[due] = losses[:, -1]
      curve.append(losses.mean(axis=0))
      steps += len(due) * spec.steps_per_stage
    self._final.update(states)
    jax.block_until_ready(list(self._final.values()))
    retrained = first_stage < num_slices
    return {"wall_s": time.perf_counter() - start_time, "first_stage": first_stage,
            "shards_retrained": int(retrained.sum()), "steps": steps,
            "examples_seen": steps * spec.batch_size,
            "examples_retrained": int(layout.sizes()[retrained].sum()),
            "final_loss": final_loss,
            "loss": np.concatenate(curve) if curve else np.zeros(0, np.float32)}

  def _train_group(self, stage: int, group: list[int], states: dict, layout: Layout) -> np.ndarray:
    """Trains stage `stage` of the shards `group` (at most `lanes`) in one call,
    updating `states` and checkpointing each; returns their losses (len(group), steps)."""
    programs, lanes = self._programs, self.spec.lanes
    # Missing lanes repeat the group's first shard; their results are dropped.
    shards = np.asarray(group + [group[0]] * (lanes - len(group)), np.int32)
    if stage == 0:  # every shard due at stage 0 starts afresh
      lane_states = programs.unstack(programs.init(self._rng, shards))
    else:
      lane_states = [states[k] for k in shards]
    new_states, metrics = self._run(programs.stack(lane_states), shards, layout.index[shards],
                                    layout.valid[shards], np.int32(stage))
    new_states = programs.unstack(new_states)
    for i, shard in enumerate(group):
      states[shard] = new_states[i]
      self.checkpoints.save(shard, stage, states[shard], layout.rows(shard, stage))
    return np.asarray(metrics["loss"])[:len(group)]

  def variables(self) -> dict:
    """The ensemble's variables (`ensemble.Ensemble`), stacked over S, after `sync`."""
    if len(self._final) != self.num_shards:
      raise RuntimeError("ShardTrainer.variables before sync: no shard model yet")
    stacked = _stack([self._final[k] for k in range(self.num_shards)])
    return ensemble.ensemble_variables(stacked.params, stacked.batch_stats)

  def invalid_checkpoints(self, layout: Layout) -> list[tuple[int, int]]:
    """(shard, stage) pairs without a checkpoint that saw exactly what remains
    of the shard's slices 0..stage: empty when all agree with `layout`."""
    invalid = []
    for shard in range(self.num_shards):
      for stage in range(self.spec.num_slices):
        seen = self.checkpoints.seen(shard, stage)
        if seen is None or not np.array_equal(seen, layout.rows(shard, stage)):
          invalid.append((shard, stage))
    return invalid

  def close(self) -> None:
    self.checkpoints.close()
