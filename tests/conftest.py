"""Shared fixtures. Tests run on CPU with tiny models and 8x8 images."""

import os
import shutil
import tempfile

# The tests' programs are tiny and compiled once each: most of the suite's
# time is XLA compiling them (91% of a shipped-config run), and LLVM at
# optimisation level 1 compiles them in about half the time of the default
# level with no loss at the few compute-bound ones (a shipped config's run 154
# -> 87 s, gkt's jit test 104 -> 72 s). Same HLO, same numerics contract.
# Launchers the tests start get it through `fixtures.launcher_env`.
os.environ.setdefault("HAMFORGET_TEST_XLA_FLAGS", "--xla_backend_optimization_level=1")
# Several virtual CPU devices for the sharding tests; must precede JAX's first use.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      + os.environ["HAMFORGET_TEST_XLA_FLAGS"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the session, shared by the xdist
# workers (made by the first process to import this file, pytest's own, and
# inherited through the environment): the whole-run tests build the same
# programs in fresh closures (every run, every operator's train step), and
# load them instead of compiling them again. Fresh each session, so a run here
# pays what CI's clean clone pays. Launchers started by tests set their own.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hamforget-tests-jax-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, "workerinput"):  # the session's owner, at its end
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
