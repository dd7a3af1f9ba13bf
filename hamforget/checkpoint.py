"""Orbax checkpoints of a fit: the whole `FitCarry`, plus the data iterator's state.

A checkpoint is written after every epoch (asynchronously: training goes on
while orbax writes). On restart `restore_latest` returns the carry of the last
complete checkpoint, and since every batch and augmentation is a pure function
of (rng, step), the resumed run ends exactly where an uninterrupted one would.

Each checkpoint holds the SHA-256 of its carry (`files.tree_digest`). A newest
checkpoint that cannot be restored or fails its checksum (a disk or a kill
damaged it) is deleted with a warning, and the one before it is used; when no
kept checkpoint is readable, training starts afresh.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from hamforget import files


class FitCheckpoints:
  """Saves and restores a fit's carry under `directory` (keeps the newest `keep`)."""

  def __init__(self, directory: str, keep: int = 2, save_every: int = 1):
    self._directory = os.path.abspath(directory)
    self._damaged = False
    self._manager = ocp.CheckpointManager(
        self._directory,
        options=ocp.CheckpointManagerOptions(
            create=True,
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
        ))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, carry, iterator=None) -> None:
    """Saves `carry` (any pytree of arrays) and, given one, a grain iterator's state."""
    if not self._manager.should_save(step):
      return  # skip the digest (a copy to the host) of a step that is not kept
    items = {"state": ocp.args.StandardSave(carry),
             "checksum": ocp.args.JsonSave({"sha256": files.tree_digest(carry)})}
    if iterator is not None:
      import grain  # only the grain pipeline needs it
      items["data"] = grain.checkpoint.CheckpointSave(iterator)
    self._manager.save(step, args=ocp.args.Composite(**items))

  def restore_latest(self, like, iterator=None):
    """The newest intact saved carry (shaped like `like`), or `like` itself when none.

    Given an iterator, its position is restored in place too. Damaged
    checkpoints are deleted on the way (see the module docstring).
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      carry = self._restore(step, like, iterator)
      if carry is not None:
        return carry
      self._manager.delete(step)  # else saving this step again later would fail
    if self._damaged:
      logging.warning("%s: no readable checkpoint; training starts afresh", self._directory)
    return like

  def _restore(self, step: int, like, iterator):
    """The carry of `step`, or None (with a warning) when it is damaged."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    items = {"state": ocp.args.StandardRestore(abstract), "checksum": ocp.args.JsonRestore()}
    if iterator is not None:
      import grain
      items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    where = os.path.join(self._directory, str(step))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  # any damage: try an older one
      logging.warning("checkpoint %s cannot be restored (%s); trying an older one",
                      where, files.describe_error(e))
      self._damaged = True
      return None
    carry = type(like)(*restored["state"]) if isinstance(like, tuple) else restored["state"]
    expected = (restored["checksum"] or {}).get("sha256")
    if files.tree_digest(carry) != expected:
      logging.warning("checkpoint %s does not match its checksum (damaged on disk); "
                      "trying an older one", where)
      self._damaged = True
      return None
    return carry

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
