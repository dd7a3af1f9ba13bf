"""What every launcher does around its runs: SIGTERM, and JAX's start-up.

`launch.main` (one run) and `launch.sweep` (a grid of runs in one process,
so JAX starts and programs compile once) share these. Imports no JAX at
module level: the launchers check configs before JAX starts.
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import threading

from absl import flags, logging

COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "Folder of JAX's persistent compilation cache: a rerun (another workdir, one "
    "operator's hyper-parameter changed, a preempted run) loads the programs it "
    "compiled before instead of compiling them again. Default: `jax/` in the data "
    "cache folder (~/.cache/hamforget or $HAMFORGET_CACHE); '' turns it off.")

# 128 + SIGTERM: what a shell reports for a process that SIGTERM ended.
EXIT_PREEMPTED = 128 + signal.SIGTERM


def stop_on_sigterm() -> threading.Event:
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


class QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax (a line per file written) from the absl log."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def start_jax(config):
  """Starts JAX as `config.mesh` and the flags ask; returns the mesh.

  Virtual CPU devices, `jax.distributed.initialize()` when the environment
  says so (hamforget/sharding.py), and the persistent compilation cache, all
  before JAX's first operation.
  """
  import jax  # pylint: disable=g-import-not-at-top  (after the config checks)
  from hamforget import sharding  # pylint: disable=g-import-not-at-top
  if config.mesh.cpu_devices and "xla_force_host_platform_device_count" not in os.environ.get(
      "XLA_FLAGS", ""):
    sharding.configure_cpu_devices(config.mesh.cpu_devices)
  sharding.maybe_initialize_distributed()
  cache = COMPILATION_CACHE.value
  if cache is None:
    from hamforget.data import cache as data_cache  # pylint: disable=g-import-not-at-top
    cache = os.path.join(data_cache.default_cache_dir(config.data.cache_dir), "jax")
  if cache:  # before the first compilation
    jax.config.update("jax_compilation_cache_dir", cache)
    # Every program, not only those that took over a second to compile: which
    # ones those are depends on the machine's load, and many small programs
    # (the evaluation's) add up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  mesh = sharding.make_mesh(config.mesh.num_devices)
  logging.info("devices: %s; mesh %s", jax.devices(), dict(mesh.shape))
  return mesh
