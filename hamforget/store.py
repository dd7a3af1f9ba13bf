"""Finished models on disk, keyed by everything that made them, checksummed.

`ModelStore` keeps each finished model of a workdir under `models/<name>`
(orbax) with a JSON record beside it; a restarted run skips every model whose
record carries the current `model_fingerprint` (config values and the
prepared data's digest), and makes again the ones whose config or data
changed. The record also holds the SHA-256 of the model's arrays
(`files.tree_digest`), checked after every restore: a model damaged on disk
(flipped bytes, a truncated file, an empty record left by a kill) counts as
unfinished, with a warning naming the file, and is made again.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from hamforget import files

ORIGINAL = "original"

# Config sections that decide what a model is. The operators add their own
# `unlearn.<name>` section; `evaluate`, `mesh` and the data loading knobs
# (cache, workers) change how a result is measured or computed, not it.
_MODEL_SECTIONS = ("seed", "data", "augment", "model", "train", "forget")
# The original trains on the whole training split: what is forgotten later
# does not change it (and keying it by `forget` retrained an identical
# original for every forget request of a sweep).
_NOT_IN_ORIGINAL = ("forget",)
_NOT_IN_FINGERPRINT = {"data": ("cache_dir", "num_workers", "decode_workers")}


def model_fingerprint(config: ml_collections.ConfigDict, name: str, data: str) -> str:
  """A hash (16 hex digits) of what model `name` depends on.

  Args:
    config: the experiment's config; the sections in `_MODEL_SECTIONS` count,
      and for an operator its own `unlearn.<name>` section.
    name: `ORIGINAL` or an operator's name.
    data: the prepared data's digest: the config names the data by path, and
      a file edited in place keeps its path. For `ORIGINAL` the digest of
      what it trains on (`ExperimentData.train_fingerprint`, no forget
      request; the `forget` section does not count either), for every other
      model `ExperimentData.fingerprint`.
  """
  parts = {"data_digest": data}
  for section in _MODEL_SECTIONS:
    if name == ORIGINAL and section in _NOT_IN_ORIGINAL:
      continue
    value = config[section]
    if isinstance(value, ml_collections.ConfigDict):
      value = {k: v for k, v in value.to_dict().items()
               if k not in _NOT_IN_FINGERPRINT.get(section, ())}
    parts[section] = value
  if name != ORIGINAL:
    section = config.unlearn.get(name)
    parts["operator"] = [name, section.to_dict() if section is not None else {}]
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class DamagedModelError(ValueError):
  """A stored model cannot be read back as it was saved; the message names the file."""


class ModelStore:
  """Finished models under `workdir/models/<name>` (orbax), so restarts skip them.

  Each model's JSON record carries the fingerprint of what made it and the
  digest of its arrays; a model whose fingerprint differs from the current
  one, or that cannot be read back intact, counts as unfinished.
  """

  def __init__(self, workdir: str):
    """Keeps models under `workdir/models`; a sweep passes its root to share
    models (named by fingerprint) between its runs."""
    self._root = os.path.abspath(os.path.join(workdir, "models"))
    self._checkpointer = ocp.StandardCheckpointer()

  def _path(self, name: str) -> str:
    return os.path.join(self._root, name)

  def load(self, name: str, like, fingerprint: str) -> tuple[Any, dict] | None:
    """(variables shaped and sharded like `like`, record) of a finished model
    made by this config and data, or None (absent, changed, or damaged)."""
    record_path = self._path(name) + ".json"
    if not os.path.exists(record_path):
      return None
    try:
      record = files.read_json(record_path)
    except (OSError, ValueError) as e:
      logging.warning("%s: unreadable record, so the model is made again: %s", name, e)
      return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
      logging.info("%s: its config or data changed since it was made; making it again", name)
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      variables = self._checkpointer.restore(self._path(name), abstract)
    except Exception as e:  # pylint: disable=broad-except  # any damage: make it again
      logging.warning("%s: cannot restore %s, so the model is made again: %s",
                      name, self._path(name), files.describe_error(e))
      return None
    digest = files.tree_digest(variables)
    if digest != record.get("sha256"):
      logging.warning("%s: the arrays restored from %s do not match the checksum in %s "
                      "(sha256 %s, expected %s): damaged on disk, so the model is made again",
                      name, self._path(name), record_path, digest[:16],
                      str(record.get("sha256"))[:16])
      return None
    return variables, record

  def read(self, name: str) -> tuple[Any, dict]:
    """(variables, record) of the stored model `name`, checked against its checksum.

    For readers without the model's code or config (`launch.verify`): the
    arrays are restored as saved (shapes and dtypes from orbax's metadata)
    onto this host's first device, whatever mesh saved them. A run uses
    `load`, which also checks the fingerprint and shards like its template.

    Raises:
      DamagedModelError: naming the file, when the record or the arrays are
        absent or unreadable, or the arrays differ from the record's sha256.
    """
    record_path, path = self._path(name) + ".json", self._path(name)
    try:
      record = files.read_json(record_path)
    except (OSError, ValueError) as e:
      raise DamagedModelError(f"{name}: unreadable record {record_path}: "
                              f"{files.describe_error(e)}") from e
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
      metadata = self._checkpointer.metadata(path).item_metadata.tree
      abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              metadata)
      variables = self._checkpointer.restore(path, abstract)
    except Exception as e:  # pylint: disable=broad-except  # any damage is reported alike
      raise DamagedModelError(f"{name}: cannot restore {path}: "
                              f"{files.describe_error(e)}") from e
    digest = files.tree_digest(variables)
    if not isinstance(record, dict) or digest != record.get("sha256"):
      expected = str(record.get("sha256") if isinstance(record, dict) else None)[:16]
      raise DamagedModelError(f"{name}: the arrays in {path} do not match the checksum in "
                              f"{record_path} (sha256 {digest[:16]}, expected {expected})")
    return variables, record

  def save(self, name: str, variables, record: dict) -> None:
    """Saves `variables` with `record` (plus their sha256) as the finished model `name`."""
    record_path = self._path(name) + ".json"
    record = {**record, "sha256": files.tree_digest(variables)}
    # The record marks the model as finished: gone while the arrays are
    # rewritten, written (atomically) only once they are on disk.
    if jax.process_index() == 0 and os.path.exists(record_path):
      os.remove(record_path)
    self._checkpointer.save(self._path(name), variables, force=True)
    self._checkpointer.wait_until_finished()
    if jax.process_index() == 0:
      files.write_json(record_path, record)
