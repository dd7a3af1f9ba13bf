r"""A sweep against the same runs one at a time: wall seconds of each, and the speed-up.

    python -m launch.sweep_speedup --config=configs/mnist.py:local --sweep=scrub_lr --points=8

Takes the first `--points` runs of the sweep and times, each from fresh
caches (dataset and compilation) and fresh folders:

- `launch.sweep` over those runs: one process, the original trained once
  per training config, retrain once per forget request and seed, programs
  compiled once, the shared models' evaluation measured once, the operator
  models of runs that differ only in traced hyper-parameters made in one
  vmapped program where `--batch=auto` batches (GPU, TPU);
- the same with `--batch=on` and `--batch=off` (what batching gains on this
  platform; `--nobatching` skips both);
- `launch.main` once per run, as a shell loop would (each process starts
  JAX and trains its own original and retrains; the loop's runs share one
  persistent compilation cache, as every `launch.main` on one machine does by
  default).

Prints one JSON object: the points, both wall times, the speed-up, and each
looped run's seconds. Measure on an otherwise idle machine: a timing taken
beside other work is wrong by up to the load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

from hamforget import sweep
from launch import config_help

_CONFIG = config_flags.DEFINE_config_file(
    config_help.CONFIG_FLAG, config_help.DEFAULT_CONFIG, "Base config of every run.")
_SWEEP = flags.DEFINE_string("sweep", "scrub_lr", "NAME (configs/sweeps.py) or FILE.py:NAME.")
_POINTS = flags.DEFINE_integer("points", 8, "Runs of the sweep timed (its first ones).")
_BATCHING = flags.DEFINE_bool("batching", True,
                              "Also time the sweep with --batch=on and with --batch=off.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flag_value(value) -> str:
  """An override's value as `--config.key=` reads it: sequences comma-joined."""
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value)
  return str(value)


def write_points_file(path: str, points: list[dict]) -> str:
  """A sweep file whose `get_sweep(any name)` returns `points` (for `--sweep=PATH:points`)."""
  with open(path, "w") as f:
    f.write(f"import json\n\nPOINTS = {json.dumps(points)!r}\n\n\n"
            "def get_sweep(name):\n  del name\n  return json.loads(POINTS)\n")
  return path


def _run(command: list[str]) -> float:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the launchers' own devices
  start = time.perf_counter()
  subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  return time.perf_counter() - start


def main(argv):
  del argv
  config_argument = config_help._config_argument(sys.argv)  # pylint: disable=protected-access
  extra = config_help._overrides(sys.argv)  # pylint: disable=protected-access
  points = sweep.load_overrides(_SWEEP.value)[:_POINTS.value]
  with tempfile.TemporaryDirectory() as folder:
    sweep_file = write_points_file(os.path.join(folder, "points.py"), points)
    sweep_s = _run([sys.executable, "-m", "launch.sweep", f"--config={config_argument}",
                    f"--sweep={sweep_file}:points", f"--workdir={folder}/sweep",
                    f"--config.data.cache_dir={folder}/sweep_cache", *extra])
    # The same sweep with batching forced on and off: what the batching gains here.
    batched_s = _run([sys.executable, "-m", "launch.sweep", f"--config={config_argument}",
                      f"--sweep={sweep_file}:points", f"--workdir={folder}/batched",
                      f"--config.data.cache_dir={folder}/batched_cache", "--batch=on",
                      *extra]) if _BATCHING.value else float("nan")
    unbatched_s = _run([sys.executable, "-m", "launch.sweep", f"--config={config_argument}",
                        f"--sweep={sweep_file}:points", f"--workdir={folder}/unbatched",
                        f"--config.data.cache_dir={folder}/unbatched_cache", "--batch=off",
                        *extra]) if _BATCHING.value else float("nan")
    loop = []
    for index, overrides in enumerate(points):
      flags_ = [f"--config.{key}={flag_value(value)}" for key, value in overrides.items()]
      loop.append(_run([sys.executable, "-m", "launch.main", f"--config={config_argument}",
                        f"--workdir={folder}/loop/{index}",
                        f"--config.data.cache_dir={folder}/loop_cache", *extra, *flags_]))
  print(json.dumps({"config": config_argument, "sweep": _SWEEP.value, "points": len(points),
                    "sweep_s": round(sweep_s, 1), "sweep_batched_s": round(batched_s, 1),
                    "sweep_unbatched_s": round(unbatched_s, 1),
                    "one_at_a_time_s": round(sum(loop), 1),
                    "speedup": round(sum(loop) / sweep_s, 2),
                    "one_at_a_time_each_s": [round(s, 1) for s in loop]}, indent=1))


if __name__ == "__main__":
  app.run(main)
