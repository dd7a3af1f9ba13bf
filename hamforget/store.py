"""Finished models on disk, keyed by the config that made them.

`ModelStore` keeps each finished model of a workdir under `models/<name>`
(orbax) with a JSON record beside it; a restarted run skips every model whose
record carries the current config's `model_fingerprint`, and makes again the
ones whose config changed.
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

ORIGINAL = "original"

# Config sections that decide what the original model is. The operators add
# their own `unlearn.<name>` section; `evaluate`, `mesh` and the data loading
# knobs (cache, workers) change how a result is measured or computed, not it.
_MODEL_SECTIONS = ("seed", "data", "augment", "model", "train", "forget")
_NOT_IN_FINGERPRINT = {"data": ("cache_dir", "num_workers", "decode_workers")}


def model_fingerprint(config: ml_collections.ConfigDict, name: str) -> str:
  """A hash (16 hex digits) of the config values that model `name` depends on."""
  parts = {}
  for section in _MODEL_SECTIONS:
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


class ModelStore:
  """Finished models under `workdir/models/<name>` (orbax), so restarts skip them.

  Each model's JSON record carries the fingerprint of the config that made it;
  a model whose fingerprint differs from the current one counts as unfinished.
  """

  def __init__(self, workdir: str):
    self._root = os.path.abspath(os.path.join(workdir, "models"))
    self._checkpointer = ocp.StandardCheckpointer()

  def _path(self, name: str) -> str:
    return os.path.join(self._root, name)

  def load(self, name: str, like, fingerprint: str) -> tuple[Any, dict] | None:
    """(variables shaped and sharded like `like`, record) of a finished model
    made by this config, or None."""
    record_path = self._path(name) + ".json"
    if not os.path.exists(record_path):
      return None
    with open(record_path) as f:
      record = json.load(f)
    if record.get("fingerprint") != fingerprint:
      logging.info("%s: its config changed since it was made; making it again", name)
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._checkpointer.restore(self._path(name), abstract), record

  def save(self, name: str, variables, record: dict) -> None:
    self._checkpointer.save(self._path(name), variables, force=True)
    self._checkpointer.wait_until_finished()
    # The record is written last: its presence marks the model as finished.
    with open(self._path(name) + ".json", "w") as f:
      json.dump(record, f)
