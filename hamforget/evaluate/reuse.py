"""Model outputs measured once, reused by every run that evaluates the same model.

In a sweep every run evaluates `original`, `retrain` and `retrain_seed2`,
and most runs share them: their logits on every split and their relearning
curves, the model-dependent half of the evaluation, are the same arrays each
time. This cache keeps them in `.npz` files (no pickles) named by a digest of
everything they depend on:

- the model's arrays (`files.tree_digest`: content-addressed, so a model
  remade under the same name is never confused with the old one) and its
  Flax module (architecture and dtype);
- the bytes of every split it is measured on (so the forget request too);
- the evaluation config, the key of the relearning batches and the target
  the relearning curves stop at (the original's).

Metrics are always recomputed from these arrays (cheap, and a changed metric
applies at once). A damaged file counts as absent. One process only: on
several hosts each would decide alone whether to compute, and a collective
could wait for a host that does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from hamforget import files

# Per-model arrays besides each split's outputs: the relearning curves.
CURVES = ("forget_curve", "retain_curve")


def splits_digest(splits: Mapping[str, Any]) -> str:
  """SHA-256 of every split's images and labels (DeviceData), names included."""
  digest = hashlib.sha256()
  for name in sorted(splits):
    for array in (splits[name].images, splits[name].labels):
      host = np.ascontiguousarray(np.asarray(array))
      digest.update(f"{name}\0{host.dtype.str}\0{host.shape}\n".encode())
      digest.update(host.data)
  return digest.hexdigest()


class OutputsCache:
  """Per-model evaluation arrays in `folder`, keyed by content (module docstring).

  Args:
    folder: where the files go ("" or None: no cache; always none on several
      processes, where the splits are not whole on any one host).
    splits: name -> DeviceData measured (their bytes are part of every key).
    config: the evaluation config (a ConfigDict).
    relearn_rng: the key of the relearning batches; relearning: whether the
      curves are measured; relearn_target: the accuracy they stop at.
  """

  def __init__(self, folder: str | None, splits: Mapping[str, Any], config, relearn_rng,
               relearning: bool, relearn_target: float):
    self.folder = folder if folder and jax.process_count() == 1 else ""
    self._context = "" if not self.folder else json.dumps({
        "splits": splits_digest(splits), "evaluate": config.to_dict(),
        "relearn_key": np.asarray(jax.random.key_data(relearn_rng)).tolist(),
        "relearning": relearning, "relearn_target": repr(float(relearn_target))},
        sort_keys=True, default=str)

  def key(self, module, variables) -> str:
    """The file name of `variables` measured through `module` in this context."""
    digest = hashlib.sha256(self._context.encode())
    digest.update(repr(module).encode())
    digest.update(files.tree_digest(variables).encode())
    return digest.hexdigest()

  def _path(self, key: str) -> str:
    return os.path.join(self.folder, f"{key}.npz")

  def get(self, key: str) -> dict[str, Any] | None:
    """{"outputs": split -> {"logits", "labels"}, "forget_curve", "retain_curve"
    (absent when not measured)}, or None when not cached or unreadable."""
    if not self.folder or not os.path.exists(self._path(key)):
      return None
    try:
      with np.load(self._path(key), allow_pickle=False) as arrays:
        stored = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError) as e:
      logging.warning("evaluation cache: %s unreadable, measuring again: %s", self._path(key),
                      files.describe_error(e))
      return None
    outputs = {}
    for name, array in stored.items():
      if name.startswith("split__"):
        _, split, field = name.split("__")
        outputs.setdefault(split, {})[field] = array
    entry = {"outputs": outputs}
    entry.update({name: stored[name] for name in CURVES if name in stored})
    return entry

  def put(self, key: str, outputs: Mapping[str, Mapping[str, np.ndarray]],
          curves: Mapping[str, np.ndarray]) -> None:
    """Stores one model's outputs (split -> logits, labels) and curves (CURVES)."""
    if not self.folder:
      return
    arrays = {f"split__{split}__{field}": np.asarray(values[field])
              for split, values in outputs.items() for field in ("logits", "labels")}
    arrays.update({name: np.asarray(curve) for name, curve in curves.items()})
    os.makedirs(self.folder, exist_ok=True)
    files.write_npz(self._path(key), arrays)
