"""The launcher as a user runs it: a subprocess with absl flags."""

import json
import os
import subprocess
import sys

import pytest

import fixtures

from hamforget.unlearn import catalog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_flags(cache):
  return ["--config=configs/mnist.py:local", f"--config.data.cache_dir={cache}",
          "--config.train.num_epochs=1", "--config.evaluate.anamnesis=False",
          # Compilation is most of this run's time: a smaller, faster-compiling model.
          "--config.model.name=resnet10", "--config.model.conv=xla",
          "--config.unlearn.methods=neggrad_plus"]


def _launcher(module, *flags):
  env = fixtures.launcher_env()  # the launcher's own devices
  done = subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _main(workdir, cache):
  return _launcher("launch.main", f"--workdir={workdir}", *_config_flags(cache))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """(workdir, compilation cache, the launcher's output) of one short main job."""
  root = tmp_path_factory.mktemp("launch")
  return root / "run", root / "cache", _main(root / "run", root / "cache")


def test_main_prints_the_table_and_reuses_compiled_programs(finished, tmp_path):
  _, cache, done = finished
  header = done.stdout.splitlines()[0].split()
  assert header[:3] == ["model", "acc_retain", "acc_forget"]
  assert [line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()] == [
      "original", "retrain", "retrain_seed2", "neggrad_plus"]
  compiled = set(os.listdir(cache / "jax"))
  assert compiled
  # A fresh workdir reruns every model: each program comes from the
  # persistent cache, none is compiled (and written) again.
  _main(tmp_path / "again", cache)
  assert set(os.listdir(cache / "jax")) == compiled


def test_try_operator_reruns_an_operator_as_the_main_job_measured_it(finished):
  workdir, cache, _ = finished
  results = json.loads((workdir / "results.json").read_text())
  before = sorted(os.listdir(workdir))
  done = _launcher("launch.try_operator", f"--workdir={workdir}", *_config_flags(cache),
                   "--operator=neggrad_plus", "--variants=,learning_rate=0.3:num_epochs=4.0")
  lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
  measured = {name: json.loads(line[line.index("{"):]) for name, line in lines.items()}
  # Its defaults give the model the main job made, on every split it reports.
  for name, row in (("original", "original"), ("neggrad_plus[]", "neggrad_plus")):
    assert measured[name]["retain"] == round(results[row]["acc_retain"], 3)
    assert measured[name]["forget"] == round(results[row]["acc_forget"], 3)
    assert measured[name]["test"] == round(results[row]["acc_test"], 3)
  assert measured["neggrad_plus[learning_rate=0.3:num_epochs=4.0]"] != measured["neggrad_plus[]"]
  assert sorted(os.listdir(workdir)) == before  # nothing written to the workdir


def test_try_operator_names_a_key_the_operator_does_not_have():
  with pytest.raises(ValueError, match=r"'lr=0.1' is not key=value with a key among"):
    catalog.parse_variant("lr=0.1", {"learning_rate": 0.01})
  with pytest.raises(ValueError, match=r"num_epochs takes a int like 3, not '2.5'"):
    catalog.parse_variant("num_epochs=2.5", {"num_epochs": 3})
  # From the command line: refused in one line before JAX starts, sisa and non-operators too.
  for flags, first in (
      (["--operator=scrub", "--variants=lr=1"], "variant 'lr=1': 'lr=1' is not key=value"),
      (["--operator=methods"], "--operator=methods: not an operator (bad_teacher, emmn,"),
      (["--operator=sisa"], "--operator=sisa trains its own ensemble")):
    done = subprocess.run([sys.executable, "-m", "launch.try_operator", "--workdir=/nonexistent",
                           "--config=configs/mnist.py:local", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert first in done.stderr
  assert catalog.parse_variant("learning_rate=0.1:update_batch_stats=false", {
      "learning_rate": 0.01, "update_batch_stats": True}) == {
          "learning_rate": 0.1, "update_batch_stats": False}


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
