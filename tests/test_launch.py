"""The launcher as a user runs it: a subprocess with absl flags."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(workdir, cache):
  command = [sys.executable, "-m", "launch.main", "--config=configs/mnist.py:local",
             f"--workdir={workdir}", f"--config.data.cache_dir={cache}",
             "--config.train.num_epochs=1", "--config.evaluate.anamnesis=False",
             # Compilation is most of this run's time: a smaller, faster-compiling model.
             "--config.model.name=resnet10", "--config.model.conv=xla",
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


def _launch(*flags):
  """The launcher on `flags`, for what it answers before any work (no JAX started)."""
  return subprocess.run([sys.executable, "-m", "launch.main", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_print_config_shows_the_resolved_config_and_every_operator():
  from hamforget.unlearn import catalog
  done = _launch("--config=configs/mnist.py:local", "--config.train.num_epochs=7",
                 "--print_config")
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.splitlines()
  start = lines.index("train:")
  end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
  assert "  num_epochs: 7" in lines[start + 1:end]  # the override, resolved in
  header = next(i for i, line in enumerate(lines) if line.startswith("# Registered operators"))
  operators = [line.split(":")[0] for line in lines[header + 1:] if line.strip()]
  assert operators == catalog.names()


def test_a_mistyped_config_key_is_refused_on_one_line_with_the_closest_key(tmp_path):
  done = _launch("--config=configs/mnist.py:local", f"--workdir={tmp_path}",
                 "--config.train.num_epoch=1")
  assert done.returncode == 2
  first = done.stderr.strip().splitlines()[0]
  assert first == ("error: --config.train.num_epoch=1: config.train has no key 'num_epoch'; "
                   "did you mean 'num_epochs'?")
  assert "Traceback" not in done.stderr
  done = _launch("--config=configs/mnist.py:local", "--config.trian.num_epochs=1")
  assert done.stderr.strip().splitlines()[0] == (
      "error: --config.trian.num_epochs=1: config has no key 'trian'; did you mean 'train'?")
