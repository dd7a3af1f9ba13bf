"""Grids of runs: override dicts, their names and ids, and a task's share.

A sweep is a list of override dicts (dotted config keys -> values), built
with `product` and `zip_` and joined with `chain`, declared in Python beside
the configs it sweeps (`configs/sweeps.py`), as big_vision and the flax
examples keep theirs:

    grid.product(grid.axis("unlearn.methods", [("scrub",)]),
                 grid.axis("unlearn.scrub.learning_rate", [1e-3, 1e-2]),
                 grid.axis("seed", [0, 1]))

Each run gets a readable `run_name` (its folder) and a `run_id`, a short
hash of its sorted overrides: both stable across processes and machines, so
N machines that build the same sweep agree on which run is which and
`task_share` splits it with no scheduler. No JAX here: the launcher builds
and checks the whole grid before JAX starts.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

Overrides = dict[str, Any]


def axis(key: str, values: Iterable[Any]) -> list[Overrides]:
  """One swept key: `[{key: v} for v in values]`."""
  return [{key: value} for value in values]


def product(*axes: Sequence[Overrides]) -> list[Overrides]:
  """Every combination of one entry per axis (the first axis varies slowest)."""
  runs = []
  for combination in itertools.product(*axes):
    merged: Overrides = {}
    for part in combination:
      _merge_into(merged, part)
    runs.append(merged)
  return runs


def zip_(*axes: Sequence[Overrides]) -> list[Overrides]:
  """The i-th entries of every axis together; the axes must have one length."""
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    raise ValueError(f"zip_ of axes of different lengths {sorted(lengths)}")
  runs = []
  for parts in zip(*axes):
    merged: Overrides = {}
    for part in parts:
      _merge_into(merged, part)
    runs.append(merged)
  return runs


def chain(*sweeps: Sequence[Overrides]) -> list[Overrides]:
  """The runs of every sweep, one after the other."""
  return [dict(run) for sweep in sweeps for run in sweep]


def _merge_into(merged: Overrides, part: Mapping[str, Any]) -> None:
  for key, value in part.items():
    if key in merged and merged[key] != value:
      # Two axes setting one key: the grid would not be the one declared.
      raise ValueError(f"key {key!r} set twice in one run: {merged[key]!r} and {value!r}")
    merged[key] = value


# ----------------------------------------------------------------------------
# Names and ids.

def _canonical(value: Any) -> Any:
  """A JSON-ready form that is equal for equal values (tuples and lists alike)."""
  if isinstance(value, (tuple, list)):
    return [_canonical(v) for v in value]
  return value


def run_id(overrides: Mapping[str, Any]) -> str:
  """12 hex digits of the SHA-256 of the sorted overrides (as JSON)."""
  text = json.dumps({k: _canonical(v) for k, v in sorted(overrides.items())},
                    sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _format_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return "+".join(_format_value(v) for v in value) or "none"
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
  """A readable folder name: `key=value` pairs in declaration order, joined by `,`.

  Keys are shortened to their last part (`unlearn.scrub.learning_rate` ->
  `learning_rate`) unless two keys of the run share it; characters a file
  name should not hold become `_`.
  """
  if not overrides:
    return "base"
  last = [key.rsplit(".", 1)[-1] for key in overrides]
  parts = []
  for key, short in zip(overrides, last):
    label = short if last.count(short) == 1 else key
    parts.append(f"{label}={_format_value(overrides[key])}")
  return re.sub(r"[^A-Za-z0-9=,.+_-]", "_", ",".join(parts))


def describe(overrides_list: Sequence[Overrides]) -> list[dict[str, Any]]:
  """The manifest's runs: index, name, id and overrides of each.

  Raises:
    ValueError: when two runs have one name or one id (the same overrides twice).
  """
  runs = [{"index": i, "name": run_name(o), "id": run_id(o), "overrides": dict(o)}
          for i, o in enumerate(overrides_list)]
  for field in ("id", "name"):
    seen: dict[str, int] = {}
    for run in runs:
      if run[field] in seen:
        raise ValueError(f"runs {seen[run[field]]} and {run['index']} have the same {field} "
                         f"{run[field]!r}: {runs[seen[run[field]]]['overrides']} and "
                         f"{run['overrides']}")
      seen[run[field]] = run["index"]
  return runs


def task_share(runs: Sequence[Any], num_tasks: int, task_index: int) -> list[Any]:
  """The runs of task `task_index` of `num_tasks`: every num_tasks-th, from task_index.

  Round robin over the manifest's order: deterministic, disjoint, together
  the whole grid, and balanced when neighbouring runs cost alike.
  """
  if num_tasks < 1 or not 0 <= task_index < num_tasks:
    raise ValueError(f"task_index={task_index} of num_tasks={num_tasks}: expected "
                     f"0 <= task_index < num_tasks")
  return list(runs[task_index::num_tasks])


# ----------------------------------------------------------------------------
# Configs.

def apply(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
          ) -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` (dotted keys) set.

  Raises:
    KeyError: naming the key, when a section or key does not exist (a typo
      in a sweep must not become a silently unswept run).
  """
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    *sections, leaf = key.split(".")
    node = config
    for i, section in enumerate(sections):
      if section not in node or not isinstance(node[section], ml_collections.ConfigDict):
        raise KeyError(f"sweep key {key!r}: config has no section {'.'.join(sections[:i + 1])!r}")
      node = node[section]
    if leaf not in node:
      raise KeyError(f"sweep key {key!r}: config.{'.'.join(sections) or ''} has no key "
                     f"{leaf!r}".replace("config. ", "config "))
    if isinstance(value, list):
      value = tuple(value)  # JSON gives lists back; configs hold tuples
    node[leaf] = value
  return config


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any], prefix: str = ""
            ) -> dict[str, Any]:
  """{dotted key: value} of every leaf; sequences as comma-joined strings (one cell each)."""
  values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  flat = {}
  for key, value in values.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + "."))
    elif isinstance(value, (tuple, list)):
      flat[name] = ",".join(str(v) for v in value)
    else:
      flat[name] = value
  return flat


def config_digest(config: ml_collections.ConfigDict) -> str:
  """16 hex digits of the whole resolved config: a finished run counts as
  finished only for the config that made it (a changed base config reruns)."""
  text = json.dumps(flatten(config), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
