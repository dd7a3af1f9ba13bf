r"""Runs a grid of experiments in one process: JAX starts once, originals are shared.

    python -m launch.sweep --config=configs/mnist.py:local --sweep=scrub_lr --workdir=/tmp/grid
    python -m launch.sweep --config=configs/mnist.py --sweep=digits --workdir=runs/digits \
        --num_tasks=4 --task_index=0          # this machine's quarter of the grid
    python -m launch.collect /tmp/grid        # the table over every finished run

`--sweep=NAME` is a sweep of `configs/sweeps.py`; `--sweep=FILE.py:NAME` one of
another file's `get_sweep(NAME)`. Each run is the config (file, argument and
`--config.` flags, which apply to every run) with one override dict of the
sweep. Every run's whole config is checked before anything trains, a
manifest of the grid is written to WORKDIR/manifest.json, and this task's
share (every num_tasks-th run from task_index) runs one run after another in
WORKDIR/runs/<run name>/ (`hamforget.sweep` lists what each holds). A run
finished with the same config is skipped, so a grid stopped at any point
(SIGKILL included) restarts where it stopped; a failed run's error is
recorded in its folder and the manifest, and the others go on. The original
model is trained once per distinct training config and data, and retrain
once per forget request and seed, in WORKDIR/models, and restored by every
run that shares them.

Exit status: 0 when every run of the share finished, 1 when some failed,
2 for a config or sweep that cannot run (nothing trained), 143 on SIGTERM
(rerun to resume).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from hamforget import config_checks, grid  # no JAX: the grid is checked before JAX starts
from launch import config_help, runtime

_CONFIG = config_flags.DEFINE_config_file(
    config_help.CONFIG_FLAG, config_help.DEFAULT_CONFIG,
    "Base config file of every run, `path` or `path:arg`; --config.<section>.<key>=value "
    "overrides a key in every run.")
_SWEEP = flags.DEFINE_string(
    "sweep", None, "NAME (of configs/sweeps.py) or FILE.py:NAME (that file's get_sweep(NAME)).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's root folder (created).")
_NUM_TASKS = flags.DEFINE_integer("num_tasks", 1, "Machines (or processes) splitting the grid.")
_TASK_INDEX = flags.DEFINE_integer("task_index", 0, "This one's index, 0 <= i < num_tasks.")
_BATCH = flags.DEFINE_enum(
    "batch", "auto", ["auto", "on", "off"],
    "Make the operator models of runs that differ only in that operator's traced "
    "hyper-parameters (learning rates, loss weights, ...) in one vmapped program. auto: on "
    "GPU and TPU; off on CPU, where a batch of N costs N runs' time and each new N compiles.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False,
                             "Check every run, write the manifest, list this task's runs; "
                             "train nothing.")


def _batching(jax) -> bool:
  """Whether `--batch` asks for batched runs on this platform."""
  if _BATCH.value == "auto":
    return jax.default_backend() != "cpu"
  return _BATCH.value == "on"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _SWEEP.value or not _WORKDIR.value:
    raise app.UsageError("--sweep and --workdir are required")
  logging.get_absl_handler().addFilter(runtime.QuietLibraries())
  from hamforget import sweep  # pylint: disable=g-import-not-at-top  (no JAX either)
  root = _WORKDIR.value
  try:  # every run, before JAX starts
    grid.task_share([], _NUM_TASKS.value, _TASK_INDEX.value)
    runs = sweep.plan(_CONFIG.value, sweep.load_overrides(_SWEEP.value))
    sweep.check(runs, root)
  except (config_checks.ConfigError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  meta = {"config": config_help._config_argument(sys.argv),  # pylint: disable=protected-access
          "config_overrides": config_help._overrides(sys.argv),  # pylint: disable=protected-access
          "sweep": _SWEEP.value}
  share = grid.task_share(runs, _NUM_TASKS.value, _TASK_INDEX.value)
  if _DRY_RUN.value:
    print(f"manifest: {sweep.write_manifest(root, runs, meta)}")
    for run in share:
      done = "finished" if sweep.is_finished(root, run) else "to run"
      print(f"{run.index:4d}  {run.id}  {run.name}  ({done})")
    return
  stop = runtime.stop_on_sigterm()
  mesh = runtime.start_jax(_CONFIG.value)  # one mesh for every run (mesh.* cannot vary)
  import jax  # pylint: disable=g-import-not-at-top
  from hamforget import experiment, operators, train  # pylint: disable=g-import-not-at-top

  def run_one(config, workdir, batch_with=()):
    with jax.set_mesh(mesh):
      return experiment.run(config, workdir, mesh, should_stop=stop.is_set, shared_models=root,
                            batch_with=batch_with)

  try:
    summary = sweep.run_share(root, runs, run_one, num_tasks=_NUM_TASKS.value,
                              task_index=_TASK_INDEX.value, meta=meta,
                              is_writer=jax.process_index() == 0,
                              stop_errors=(train.Preempted,),
                              batch_key=operators.batch_key if _batching(jax) else None)
  except train.Preempted as preempted:
    print(f"preempted (SIGTERM): {preempted}; rerun the same command to resume",
          file=sys.stderr)
    sys.exit(runtime.EXIT_PREEMPTED)
  print(f"sweep task {_TASK_INDEX.value + 1}/{_NUM_TASKS.value}: {len(share)} runs: "
        f"{len(summary.finished)} finished, {len(summary.skipped)} already finished, "
        f"{len(summary.failed)} failed" + (f" ({', '.join(summary.failed)})"
                                            if summary.failed else ""))
  print(f"manifest: {root}/manifest.json; table: python -m launch.collect {root}",
        file=sys.stderr)
  if summary.failed:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=config_help.parse_flags)
