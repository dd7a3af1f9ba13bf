"""What a run writes about the models it makes: metrics.jsonl lines and cost records."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


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
