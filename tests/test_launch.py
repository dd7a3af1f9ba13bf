"""The launcher as a user runs it: a subprocess with absl flags."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(workdir, cache):
  command = [sys.executable, "-m", "launch.main", "--config=configs/mnist.py:local",
             f"--workdir={workdir}", f"--config.data.cache_dir={cache}",
             "--config.train.num_epochs=1", "--config.evaluate.anamnesis=False",
             "--config.unlearn.methods="]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the launcher's own devices
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def test_main_prints_the_table_and_reuses_compiled_programs(tmp_path):
  cache = tmp_path / "cache"
  done = _main(tmp_path / "run", cache)
  header = done.stdout.splitlines()[0].split()
  assert header[:3] == ["model", "acc_retain", "acc_forget"]
  assert [line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()] == [
      "original", "retrain", "retrain_seed2"]
  compiled = set(os.listdir(cache / "jax"))
  assert compiled
  # A fresh workdir reruns every model: each program comes from the
  # persistent cache, none is compiled (and written) again.
  _main(tmp_path / "again", cache)
  assert set(os.listdir(cache / "jax")) == compiled
