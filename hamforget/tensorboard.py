"""Training curves for TensorBoard: `tensorboard --logdir WORKDIR/tensorboard`.

Every line a run appends to metrics.jsonl (`records.MetricsLog`) is also
written here, one TensorBoard run per model (`tensorboard/<model>/`):

- a per-epoch record (the original's training: it has "epoch") gives each of
  its numbers at step = epoch: train_loss, val_loss, val_accuracy, and
  device memory where the platform reports it;
- a finished model's record gives every curve of its operator's info (lists:
  per-epoch losses, per-step accuracies of gkt's student, ...) as
  `info/<name>` at steps 1, 2, ..., and its costs (work_s, steps, ...) at
  step 0.

Written with tensorboardX (no TensorFlow needed), flushed after every record
so a killed run keeps what it wrote; only the process that writes
metrics.jsonl (process 0) writes here.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Mapping

FOLDER = "tensorboard"
# Stamps of a metrics.jsonl line that are not measurements.
_STAMPS = ("run_id", "time", "model", "fingerprint", "phase", "epoch", "info")


def _number(value: Any) -> float | None:
  """`value` as a float when it is a real, finite number (not a bool); else None."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return None
  value = float(value)
  return value if math.isfinite(value) else None


class CurveWriter:
  """TensorBoard event files of one workdir, a writer per model, opened when first used."""

  def __init__(self, workdir: str):
    self.root = os.path.join(workdir, FOLDER)
    self._writers = {}

  def _writer(self, model: str):
    if model not in self._writers:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top  (optional cost)
      self._writers[model] = SummaryWriter(logdir=os.path.join(self.root, model))
    return self._writers[model]

  def write(self, model: str, record: Mapping[str, Any]) -> None:
    """Writes the numbers of one metrics.jsonl record about `model` (module docstring)."""
    writer = self._writer(model)
    step = int(record.get("epoch", 0))
    for key, value in record.items():
      number = _number(value)
      if key not in _STAMPS and number is not None:
        writer.add_scalar(key, number, step)
    for key, value in (record.get("info") or {}).items():
      if isinstance(value, list):
        for index, item in enumerate(_flat(value)):
          number = _number(item)
          if number is not None:
            writer.add_scalar(f"info/{key}", number, index + 1)
    writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers = {}


def _flat(values: list) -> list:
  """A nested list's items in order (curves of curves: per-epoch lists of steps)."""
  out = []
  for value in values:
    out.extend(_flat(value) if isinstance(value, list) else [value])
  return out
