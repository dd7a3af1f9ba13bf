r"""Runs one experiment: train, unlearn, evaluate, report.

    python -m launch.main --config=configs/mnist.py --workdir=/tmp/mnist
    python -m launch.main --config=configs/ham10000.py --workdir=/tmp/ham \
        --config.data.root=/data/HAM10000 --config.forget.kind=groups \
        --config.forget.fraction=0.1

Any config key can be overridden with --config.<section>.<key>=value;
`--print_config` prints every key of the resolved config and the registered
operators, then exits (a mistyped key is refused on one line, with the
closest key). On
several hosts (TPU VM pods, GPU clusters) run the same command on every host:
`jax.distributed.initialize()` is called when the environment says so (see
hamforget/sharding.py).

The whole config is checked before JAX starts (`hamforget.config_checks`): a
bad value exits at once with every problem listed. SIGTERM (how preemptible
TPU and cloud VMs announce their end) during the original's training stops it
at the next epoch boundary, once that epoch is checkpointed, and exits with
status 143; rerunning the same command resumes there and ends with the results
of an uninterrupted run. In other phases the first SIGTERM is only noted (each
finished model is already saved); a second one kills the run at once.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from hamforget import config_checks  # no JAX: checks the config before JAX starts
from launch import config_help  # no JAX either
from launch import runtime

_CONFIG = config_flags.DEFINE_config_file(
    config_help.CONFIG_FLAG, config_help.DEFAULT_CONFIG,
    "Experiment config file, `path` or `path:arg` (e.g. configs/mnist.py:local); override "
    "any key with --config.<section>.<key>=value (see --print_config).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output directory (created); required unless --print_config.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False,
    "Print the resolved config (file and overrides) and the registered operators, then exit.")

EXIT_PREEMPTED = runtime.EXIT_PREEMPTED


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(runtime.QuietLibraries())
  config = _CONFIG.value
  if _PRINT_CONFIG.value:
    print(config_help.describe(config))
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (the run's output directory)")
  try:  # before JAX starts: a config that cannot run fails at once
    config_checks.check_config(config, _WORKDIR.value)
  except config_checks.ConfigError as error:
    sys.exit(f"error: {error}")
  stop = runtime.stop_on_sigterm()
  mesh = runtime.start_jax(config)  # virtual CPU devices: before JAX initialises a backend
  import jax
  from hamforget import experiment, report, train
  from hamforget.data.errors import DataError

  try:
    with jax.set_mesh(mesh):
      results = experiment.run(config, _WORKDIR.value, mesh, should_stop=stop.is_set)
  except train.Preempted as preempted:
    print(f"preempted (SIGTERM): {preempted}", file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)
  except (train.DivergedError, config_checks.ConfigError, DataError) as error:
    sys.exit(f"error: {error}")  # bad input: one line naming it, nothing written is lost
  if jax.process_index() == 0:
    print(report.format_table(results))
    print(f"\nfull results: {os.path.join(_WORKDIR.value, 'results.md')}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main, flags_parser=config_help.parse_flags)
