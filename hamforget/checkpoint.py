"""Orbax checkpoints of a fit: the whole `FitCarry`, plus the data iterator's state.

A checkpoint is written after every epoch (asynchronously: training goes on
while orbax writes). On restart `restore_latest` returns the carry of the last
complete checkpoint, and since every batch and augmentation is a pure function
of (rng, step), the resumed run ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class FitCheckpoints:
  """Saves and restores a fit's carry under `directory` (keeps the newest `keep`)."""

  def __init__(self, directory: str, keep: int = 2, save_every: int = 1):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            create=True,
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
        ))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, carry, iterator=None) -> None:
    """Saves `carry` (any pytree of arrays) and, given one, a grain iterator's state."""
    items = {"state": ocp.args.StandardSave(carry)}
    if iterator is not None:
      import grain  # only the grain pipeline needs it
      items["data"] = grain.checkpoint.CheckpointSave(iterator)
    self._manager.save(step, args=ocp.args.Composite(**items))

  def restore_latest(self, like, iterator=None):
    """The newest saved carry (shaped like `like`), or `like` itself when none exists.

    Given an iterator, its position is restored in place too.
    """
    step = self._manager.latest_step()
    if step is None:
      return like
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if iterator is not None:
      import grain
      items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return type(like)(*restored["state"]) if isinstance(like, tuple) else restored["state"]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
