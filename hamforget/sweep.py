"""A grid of experiments in one process: plan, check, run a task's share, record.

    runs = sweep.plan(base_config, overrides_list)   # names, ids, configs
    sweep.check(runs, root)                          # every config, before any work
    sweep.run_share(root, runs, mesh, num_tasks=2, task_index=0)

Layout under the sweep's root:

    manifest.json          every run (index, name, id, overrides, status)
    models/                originals and retrains shared by the runs
                           (`experiment.run(shared_models=)`)
    runs/<name>/           one experiment's workdir, plus:
      sweep_run.json       the run's status record, its id, config digest and
                           flattened config; `status: finished` is the marker
                           a restarted sweep skips the run on
      sweep_error.txt      the traceback of a failed run
      results_long.csv     one row per (model, metric): run id, seed, swept keys

Every file is written atomically, and each run's status lives in its own
folder: N machines running their shares of one root never write the same
file, except the manifest, which each rewrites whole from the run folders
(a manifest a moment stale is refreshed by the next write; `launch.collect`
reads the run folders).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import ml_collections
from absl import logging

from hamforget import config_checks, files, grid, progress

MANIFEST = "manifest.json"
RUNS = "runs"
STATUS = "sweep_run.json"
ERROR = "sweep_error.txt"
LONG_RESULTS = "results_long.csv"
FINISHED, FAILED, RUNNING, PENDING = "finished", "failed", "running", "pending"
# A run sweeps these in one process, after JAX has started with the base's mesh.
_FIXED_SECTIONS = ("mesh",)


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of the grid."""
  index: int
  name: str
  id: str
  overrides: dict[str, Any]
  config: ml_collections.ConfigDict

  def folder(self, root: str) -> str:
    return os.path.join(root, RUNS, self.name)


def load_overrides(argument: str) -> list[dict]:
  """The override dicts of a `--sweep` argument: NAME (of configs/sweeps.py) or
  FILE.py:NAME (that file's `get_sweep(NAME)`)."""
  path, sep, name = argument.rpartition(":")
  if sep and path.endswith(".py"):
    spec = importlib.util.spec_from_file_location("_sweep_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    module, name = importlib.import_module("configs.sweeps"), argument
  return list(module.get_sweep(name))


def plan(base: ml_collections.ConfigDict, overrides_list: Sequence[Mapping[str, Any]]
         ) -> list[Run]:
  """The runs of a grid: `base` with each override dict applied.

  Raises:
    config_checks.ConfigError: listing every run with an unknown key, a key
      of a section a sweep cannot vary, or a name or id of another run.
  """
  try:
    described = grid.describe(overrides_list)
  except ValueError as e:
    raise config_checks.ConfigError(str(e)) from e
  runs, problems = [], []
  for entry in described:
    fixed = [k for k in entry["overrides"] if k.split(".")[0] in _FIXED_SECTIONS]
    if fixed:
      problems.append(f"run {entry['name']}: {fixed} cannot vary within a sweep "
                      "(one process, one mesh); set them with --config.")
      continue
    try:
      config = grid.apply(base, entry["overrides"])
    except (KeyError, TypeError, ValueError) as e:
      problems.append(f"run {entry['name']}: {e.args[0] if e.args else e}")
      continue
    runs.append(Run(entry["index"], entry["name"], entry["id"], entry["overrides"], config))
  if problems:
    raise config_checks.ConfigError("\n".join(problems))
  return runs


def check(runs: Sequence[Run], root: str) -> None:
  """`config_checks.check_config` of every run (operator names included), all
  problems of all runs in one error: a typo in run 40 must not wait for the
  39 before it."""
  problems = []
  for run in runs:
    try:
      config_checks.check_config(run.config, run.folder(root))
    except config_checks.ConfigError as e:
      problems.append(f"run {run.name}:\n  " + str(e).replace("\n", "\n  "))
  if problems:
    raise config_checks.ConfigError(f"{len(problems)} of {len(runs)} runs cannot run:\n"
                                    + "\n".join(problems))


# ----------------------------------------------------------------------------
# Status of runs, in their folders.

def read_status(root: str, run: Run) -> dict | None:
  """The run's status record, or None (never started, or an unreadable record)."""
  path = os.path.join(run.folder(root), STATUS)
  try:
    record = files.read_json(path)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    logging.warning("%s: unreadable, so the run counts as not started: %s", path, e)
    return None
  return record if isinstance(record, dict) else None


def is_finished(root: str, run: Run) -> bool:
  """True when the run finished with this id and this whole config (a changed
  base config, `--config.` flags included, makes it run again)."""
  record = read_status(root, run)
  return (record is not None and record.get("status") == FINISHED
          and record.get("run_id") == run.id
          and record.get("config_digest") == grid.config_digest(run.config))


def _status_record(run: Run, status: str, **extra) -> dict:
  config = run.config
  return {"run_id": run.id, "name": run.name, "index": run.index, "status": status,
          "overrides": {k: grid._canonical(v) for k, v in run.overrides.items()},  # pylint: disable=protected-access
          "seed": int(config.seed), "config_digest": grid.config_digest(config),
          "config": grid.flatten(config), **extra}


def _write_status(root: str, run: Run, status: str, **extra) -> None:
  os.makedirs(run.folder(root), exist_ok=True)
  files.write_json(os.path.join(run.folder(root), STATUS),
                   _status_record(run, status, **extra), indent=1, default=str)


def write_manifest(root: str, runs: Sequence[Run], meta: Mapping[str, Any] | None = None) -> str:
  """Writes `root/manifest.json`: every run with its status as its folder says."""
  os.makedirs(root, exist_ok=True)
  entries = []
  for run in runs:
    record = read_status(root, run) or {}
    status = record.get("status", PENDING) if record.get("run_id") == run.id else PENDING
    entry = {"index": run.index, "name": run.name, "id": run.id,
             "folder": os.path.join(RUNS, run.name),
             "overrides": {k: grid._canonical(v) for k, v in run.overrides.items()},  # pylint: disable=protected-access
             "status": status}
    if status == FAILED:
      entry["error"] = record.get("error")
    entries.append(entry)
  counts = {s: sum(e["status"] == s for e in entries) for s in (FINISHED, FAILED, RUNNING, PENDING)}
  path = os.path.join(root, MANIFEST)
  files.write_json(path, {**(meta or {}), "num_runs": len(runs), "counts": counts,
                          "runs": entries}, indent=1, default=str)
  return path


def long_rows(run: Run, results: Mapping[str, Mapping[str, Any]]) -> list[dict]:
  """One row per (model, metric) of `results`, with the run's id, name, seed
  and swept keys (`cfg.<key>`): rows of many runs concatenate into one table."""
  swept = {f"cfg.{k}": grid.flatten({k: v})[k] for k, v in run.overrides.items()}
  return [{"run_id": run.id, "run": run.name, "seed": int(run.config.seed), **swept,
           "model": model, "metric": metric, "value": value}
          for model, row in results.items() for metric, value in row.items()]


def _write_long(root: str, run: Run, results) -> None:
  import pandas as pd  # pylint: disable=g-import-not-at-top
  with files.atomic_open(os.path.join(run.folder(root), LONG_RESULTS), newline="") as f:
    pd.DataFrame(long_rows(run, results)).to_csv(f, index=False)


# ----------------------------------------------------------------------------
# Running a share.

RunFn = Callable[[ml_collections.ConfigDict, str], Mapping[str, Mapping[str, float]]]


@dataclasses.dataclass
class Summary:
  finished: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: list[str] = dataclasses.field(default_factory=list)


def _batches(root: str, share: Sequence[Run], batch_key) -> dict[str, list[Run]]:
  """First run's id -> the other runs of its group: the unfinished runs of
  `share` with one `batch_key` (not None), in share order."""
  groups: dict[Any, list[Run]] = {}
  for run in share:
    key = batch_key(run.config)
    if key is not None and not is_finished(root, run):
      groups.setdefault(key, []).append(run)
  return {group[0].id: group[1:] for group in groups.values() if len(group) > 1}


def run_share(root: str, runs: Sequence[Run], run_fn: RunFn, *, num_tasks: int = 1,
              task_index: int = 0, meta: Mapping[str, Any] | None = None,
              is_writer: bool = True, stop_errors: tuple[type[BaseException], ...] = (),
              batch_key: Callable[[ml_collections.ConfigDict], Any] | None = None) -> Summary:
  """Runs this task's share of `runs`, one by one, in `root/runs/<name>`.

  Args:
    root: the sweep's folder.
    runs: the whole grid (`plan`), in manifest order.
    run_fn: (config, workdir) -> results, e.g. `experiment.run` with the
      mesh and the shared store bound.
    num_tasks, task_index: this task's share (`grid.task_share`).
    meta: written into the manifest (the config argument, the sweep's name).
    is_writer: whether this process writes files (process 0 of a multi-host run).
    stop_errors: errors that stop the whole sweep (preemption) instead of
      being recorded as the run's failure; re-raised.
    batch_key: config -> a key or None (`operators.batch_key`). The first
      unfinished run of each group of equal keys in this share is called as
      `run_fn(config, workdir, batch_with=[the others' configs])`, and makes
      the group's models in one program; the others then find theirs made.

  Returns:
    The names finished, skipped (already finished) and failed in this call.
  """
  share = grid.task_share(runs, num_tasks, task_index)
  if is_writer:
    write_manifest(root, runs, meta)
  summary = Summary()
  bar = progress.bar(len(share), f"sweep (task {task_index + 1}/{num_tasks})", unit="run")
  batches = _batches(root, share, batch_key) if batch_key else {}
  try:
    for k, run in enumerate(share, 1):
      workdir = run.folder(root)
      if is_finished(root, run):
        summary.skipped.append(run.name)
        bar.update(1)
        continue
      others = batches.get(run.id, [])
      progress.say(f"sweep: run {k}/{len(share)} of this task ({len(runs)} in the grid): "
                   f"{run.name} [{run.id}]")
      if is_writer:
        _write_status(root, run, RUNNING, started=time.strftime("%Y-%m-%d %H:%M:%S %z"))
      start = time.perf_counter()
      try:
        results = run_fn(run.config, workdir, batch_with=[other.config for other in others]
                         ) if others else run_fn(run.config, workdir)
      except stop_errors:
        raise
      except Exception as e:  # pylint: disable=broad-except  # one run's failure is recorded
        seconds = round(time.perf_counter() - start, 2)
        logging.exception("sweep: run %s failed", run.name)
        summary.failed.append(run.name)
        if is_writer:
          files.write_text(os.path.join(workdir, ERROR), traceback.format_exc())
          _write_status(root, run, FAILED, seconds=seconds, error=files.describe_error(e))
      else:
        seconds = round(time.perf_counter() - start, 2)
        summary.finished.append(run.name)
        if is_writer:
          _write_long(root, run, results)
          # Last: the marker says every output above is complete.
          _write_status(root, run, FINISHED, seconds=seconds)
      if is_writer:
        write_manifest(root, runs, meta)
      bar.set_postfix(done=len(summary.finished) + len(summary.skipped),
                      failed=len(summary.failed))
      bar.update(1)
  finally:
    bar.close()
  return summary
