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

import logging as std_logging
import os
import signal
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

from hamforget import config_checks  # no JAX: checks the config before JAX starts
from launch import config_help  # no JAX either

_CONFIG = config_flags.DEFINE_config_file(
    config_help.CONFIG_FLAG, config_help.DEFAULT_CONFIG,
    "Experiment config file, `path` or `path:arg` (e.g. configs/mnist.py:local); override "
    "any key with --config.<section>.<key>=value (see --print_config).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output directory (created); required unless --print_config.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False,
    "Print the resolved config (file and overrides) and the registered operators, then exit.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "Folder of JAX's persistent compilation cache: a rerun (another workdir, one "
    "operator's hyper-parameter changed, a preempted run) loads the programs it "
    "compiled before instead of compiling them again. Default: `jax/` in the data "
    "cache folder (~/.cache/hamforget or $HAMFORGET_CACHE); '' turns it off.")


# 128 + SIGTERM: what a shell reports for a process that SIGTERM ended.
EXIT_PREEMPTED = 128 + signal.SIGTERM


def _stop_on_sigterm() -> threading.Event:
  """An event set by the first SIGTERM; a second SIGTERM kills as usual.

  The fit loop polls it at epoch boundaries (`train.fit(should_stop=...)`):
  stopping there costs at most one epoch, and the checkpoint it leaves is a
  complete one.
  """
  requested = threading.Event()

  def handler(signum, frame):
    del frame
    if requested.is_set():  # asked twice: stop waiting for the epoch
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    requested.set()
    logging.warning("SIGTERM: stopping after the current epoch's checkpoint")

  signal.signal(signal.SIGTERM, handler)
  return requested


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax (a line per file written) from the absl log."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
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
  stop = _stop_on_sigterm()
  # Virtual CPU devices must be requested before JAX initialises a backend.
  import jax
  from hamforget import sharding
  if config.mesh.cpu_devices and "xla_force_host_platform_device_count" not in os.environ.get(
      "XLA_FLAGS", ""):
    sharding.configure_cpu_devices(config.mesh.cpu_devices)
  sharding.maybe_initialize_distributed()
  cache = _COMPILATION_CACHE.value
  if cache is None:
    from hamforget.data import cache as data_cache
    cache = os.path.join(data_cache.default_cache_dir(config.data.cache_dir), "jax")
  if cache:  # before the first compilation
    jax.config.update("jax_compilation_cache_dir", cache)
    # Every program, not only those that took over a second to compile: which
    # ones those are depends on the machine's load, and many small programs
    # (the evaluation's) add up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  from hamforget import experiment, report, train

  mesh = sharding.make_mesh(config.mesh.num_devices)
  logging.info("devices: %s; mesh %s", jax.devices(), dict(mesh.shape))
  try:
    with jax.set_mesh(mesh):
      results = experiment.run(config, _WORKDIR.value, mesh, should_stop=stop.is_set)
  except train.Preempted as preempted:
    print(f"preempted (SIGTERM): {preempted}", file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)
  except (train.DivergedError, config_checks.ConfigError) as error:
    sys.exit(f"error: {error}")
  if jax.process_index() == 0:
    print(report.format_table(results))
    print(f"\nfull results: {os.path.join(_WORKDIR.value, 'results.md')}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main, flags_parser=config_help.parse_flags)
