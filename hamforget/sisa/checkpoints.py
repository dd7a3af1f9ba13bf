"""Orbax checkpoints of SISA's shard models, one per (shard, stage).

`directory/shard_<k>/stage_<r>` holds shard k's ShardState after stage r,
and `stage_<r>.json` beside it records the training rows that state has seen
(slices 0..r as they were when it was trained) and the SHA-256 of its arrays.
The record is written once the arrays are on disk, so a checkpoint without
one counts as absent.

A checkpoint is valid for a layout when it saw exactly what remains of
slices 0..r: `last_valid` finds, for a shard, the latest such checkpoint that
reads back intact. After a deletion that is the checkpoint before the first
slice holding a deleted example (the latest one that never saw it); for an
untouched shard, its last stage. The same rule resumes an interrupted
training or deletion, and makes a damaged checkpoint cost only retraining
from the one before it: every valid checkpoint is exactly what training on
the remaining data gives.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from hamforget import files


class StageCheckpoints:
  """The (shard, stage) checkpoints of one SISA ensemble under `directory`."""

  def __init__(self, directory: str):
    self._directory = os.path.abspath(directory)
    self._checkpointer = ocp.StandardCheckpointer()
    self._pending: list[tuple[str, dict]] = []

  def _path(self, shard: int, stage: int) -> str:
    return os.path.join(self._directory, f"shard_{shard:03d}", f"stage_{stage:03d}")

  def record(self, shard: int, stage: int) -> dict | None:
    """The record of (shard, stage), or None when absent or unreadable."""
    path = self._path(shard, stage) + ".json"
    if not os.path.exists(path):
      return None
    try:
      record = files.read_json(path)
    except (OSError, ValueError) as e:
      logging.warning("%s: unreadable record, so the checkpoint counts as absent: %s", path, e)
      return None
    return record if isinstance(record, dict) else None

  def seen(self, shard: int, stage: int) -> np.ndarray | None:
    """Sorted training rows that (shard, stage)'s state has seen, or None without a record."""
    record = self.record(shard, stage)
    return None if record is None else np.asarray(record.get("seen", []), np.int64)

  def save(self, shard: int, stage: int, state, seen: np.ndarray) -> None:
    """Starts writing `state` (asynchronously); `flush` writes its record."""
    path = self._path(shard, stage)
    # The record marks the checkpoint as finished: gone while it is rewritten.
    if jax.process_index() == 0 and os.path.exists(path + ".json"):
      os.remove(path + ".json")
    self._checkpointer.save(path, state, force=True)
    self._pending.append((path, {"shard": shard, "stage": stage,
                                 "seen": np.asarray(seen, np.int64).tolist(),
                                 "sha256": files.tree_digest(state)}))

  def flush(self) -> None:
    """Waits for the writes started by `save`, then writes their records."""
    self._checkpointer.wait_until_finished()
    if jax.process_index() == 0:
      for path, record in self._pending:
        files.write_json(path + ".json", record)
    self._pending = []

  def restore(self, shard: int, stage: int, like) -> Any | None:
    """(shard, stage)'s state, shaped and placed like `like`; None when
    absent, unreadable or not matching its checksum (with a warning)."""
    record, path = self.record(shard, stage), self._path(shard, stage)
    if record is None:
      return None
    try:
      restored = self._checkpointer.restore(
          path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))
    except Exception as e:  # pylint: disable=broad-except  # any damage: use an older one
      logging.warning("%s cannot be restored (%s); using an older stage",
                      path, files.describe_error(e))
      return None
    # Orbax returns NamedTuples as lists: put the leaves back into `like`'s structure.
    state = jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(restored))
    if files.tree_digest(state) != record.get("sha256"):
      logging.warning("%s does not match its checksum (damaged on disk); using an older stage",
                      path)
      return None
    return state

  def last_valid(self, shard: int, rows_through, num_slices: int, like) -> tuple[int, Any]:
    """(stage, state) of `shard`'s latest checkpoint valid for the layout, or (-1, None).

    Args:
      rows_through: stage -> sorted training rows remaining in the shard's
        slices 0..stage (`Layout.rows`).
      num_slices: R.
      like: a ShardState of the right shapes and placement.
    """
    for stage in range(num_slices - 1, -1, -1):
      seen = self.seen(shard, stage)
      if seen is None or not np.array_equal(seen, rows_through(stage)):
        continue
      state = self.restore(shard, stage, like)
      if state is not None:
        return stage, state
    return -1, None

  def close(self) -> None:
    self.flush()
    self._checkpointer.close()
