"""Outputs of another config, set aside before a run writes its own.

A run into a workdir that another config made would otherwise overwrite
some of the old outputs and leave the rest beside its own: an operator
dropped from `unlearn.methods` keeps its `per_example_<name>.npz`, and the
workdir no longer says which config made which file. So when `config.json`
differs from the new run's, `set_aside` first moves every output a run writes
at the top level into `superseded/<time>-<old config digest>/`, with a
warning naming them; nothing is deleted.

Kept in place, because they are keyed by the config and data that made them
and reused where unchanged (that is what makes changing one operator's
hyper-parameter rerun that operator alone): `models/` and `checkpoints/`. Kept
too: `metrics.jsonl`, the log of every invocation, and the lock.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import time

from absl import logging

FOLDER = "superseded"
CONFIG_NAME = "config.json"
# What a run writes at the top level of its workdir (experiment, report:
# tables, arrays, plots; audit), and the temporary files a killed write leaves
# (`files.atomic_open`). Patterns, so that a new table or plot is covered; a
# person's own files (notes, say) match none and stay.
OUTPUTS = ("splits.csv", "timings.json", "audit.json", "results*", "*.npz", "*.png", ".*.tmp")


def set_aside(workdir: str, config_json: str) -> str | None:
  """Moves the outputs of another config out of the way of this one's.

  Args:
    workdir: the run's workdir.
    config_json: the text this run writes to `config.json`.

  Returns:
    The folder the old outputs went to, or None when the workdir holds no
    config or this same one (a resumed or repeated run keeps everything).
  """
  path = os.path.join(workdir, CONFIG_NAME)
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      old = f.read()
  except FileNotFoundError:
    return None
  if old == config_json:
    return None
  names = sorted(name for name in os.listdir(workdir)
                 if name != CONFIG_NAME and os.path.isfile(os.path.join(workdir, name))
                 and any(fnmatch.fnmatchcase(name, pattern) for pattern in OUTPUTS))
  digest = hashlib.sha256(old.encode()).hexdigest()[:8]
  folder = os.path.join(workdir, FOLDER, f"{time.strftime('%Y%m%d-%H%M%S')}-{digest}")
  os.makedirs(folder, exist_ok=True)
  # config.json last: a run killed mid-move still sees another config, and
  # moves the rest on its rerun.
  for name in names + [CONFIG_NAME]:
    os.replace(os.path.join(workdir, name), os.path.join(folder, name))
  logging.warning("workdir %s was made by another config: its outputs (%s) are moved to %s; "
                  "models/ and checkpoints/ stay (reused where config and data are unchanged)",
                  workdir, ", ".join(names + [CONFIG_NAME]), folder)
  return folder
