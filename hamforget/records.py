"""What a run writes about the models it makes: metrics.jsonl lines and cost records."""

from __future__ import annotations

import datetime
import json
import os
import secrets
from typing import Any

import numpy as np

from hamforget import tensorboard as tensorboard_lib

METRICS_FILE = "metrics.jsonl"


def append_json_line(path: str, record: dict) -> None:
  """Appends `record` as one JSON line to `path`.

  A run killed mid-append leaves a torn last line without its newline; the
  next record then starts on a line of its own, so only the torn one is lost.
  """
  line = json.dumps(record) + "\n"
  with open(path, "a+b") as f:
    if f.seek(0, os.SEEK_END) > 0:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        line = "\n" + line
    f.write(line.encode())


def read_json_lines(path: str) -> list[dict]:
  """The records of a JSON-lines file, skipping torn lines (a kill mid-append)."""
  out = []
  with open(path, "rb") as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        continue
  return out


def new_run_id() -> str:
  """An id for one invocation: its UTC start to the second and 6 random hex digits
  (two runs started in the same second stay apart), e.g. 20261201T120000Z-3fa2c1."""
  start = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  return f"{start}-{secrets.token_hex(3)}"


def utc_now() -> str:
  """The current UTC time, ISO 8601 to the millisecond."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class MetricsLog:
  """A workdir's metrics.jsonl, appended across invocations, every line stamped.

  Each line is {"run_id", "time", "model", "fingerprint", "phase", ...}: the
  invocation that wrote it (`new_run_id`), when (`utc_now`), the model it is
  about and that model's fingerprint (`store.model_fingerprint`: the config
  and data that made it), so the blocks of a rerun, a resumed run or a
  changed config can be told apart. "phase" repeats the model's name, the
  key older readers select on.

  With `tensorboard`, every line is also written as TensorBoard scalars
  under `WORKDIR/tensorboard/<model>/` (`hamforget.tensorboard`).
  """

  def __init__(self, workdir: str, run_id: str | None = None, tensorboard: bool = False):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.run_id = run_id or new_run_id()
    self.curves = tensorboard_lib.CurveWriter(workdir) if tensorboard else None

  def append(self, model: str, fingerprint: str, record: dict) -> dict:
    """Appends one stamped line about `model`; returns it as written."""
    line = {"run_id": self.run_id, "time": utc_now(), "model": model,
            "fingerprint": fingerprint, "phase": model, **record}
    append_json_line(self.path, line)
    if self.curves is not None:
      self.curves.write(model, line)
    return line

  def close(self) -> None:
    """Closes the TensorBoard writers (metrics.jsonl is closed after every line)."""
    if self.curves is not None:
      self.curves.close()


def info_summary(info: dict) -> dict[str, Any]:
  """The JSON-able summary of an operator's info: scalars as numbers, curves as lists."""
  out = {}
  for key, value in info.items():
    value = np.asarray(value)
    out[key] = value.item() if value.ndim == 0 else value.tolist()
  return out


def loss_endpoints(info: dict) -> dict[str, float]:
  """Initial and final training loss from an info's per-epoch or per-step loss curve."""
  for key in ("train_loss", "loss"):
    if key in info:
      curve = np.asarray(info[key], np.float64).reshape(-1)
      curve = curve[np.isfinite(curve)]
      if curve.size:
        return {"initial_loss": float(curve[0]), "final_loss": float(curve[-1])}
  return {"initial_loss": float("nan"), "final_loss": float("nan")}


def cost_record(info: dict, **extra) -> dict[str, Any]:
  """The record stored with a finished model: loss endpoints, steps, examples
  seen (0 when the info has none), and `extra` (wall_s, fingerprint, ...)."""
  summary = info_summary({k: info[k] for k in ("steps", "examples_seen") if k in info})
  return {**extra, **loss_endpoints(info), "steps": int(summary.get("steps", 0)),
          "examples_seen": int(summary.get("examples_seen", 0))}
