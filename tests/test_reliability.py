"""Runtime reliability: a diverging run stops with an error that says where,
and a SIGTERM during training checkpoints, exits, and resumes to the same end."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fixtures
from configs import common, mnist
from hamforget import audit, checkpoint, operators, records, train
from hamforget.data import batches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Linear(nn.Module):
  """BatchNorm + a linear layer: the fit loop's contract, compiled in a second."""

  @nn.compact
  def __call__(self, x, train):
    x = nn.BatchNorm(use_running_average=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(3)(x)


def _tiny_fit(learning_rate=0.1, num_epochs=3):
  """(spec, variables, data) of a 3-class problem on 8x8 images and a linear model."""
  config = common.base_config()
  config.train.batch_size = 32
  config.train.num_epochs = num_epochs
  config.train.patience = 0
  config.train.eval_batch_size = 64
  config.train.learning_rate = learning_rate
  config.train.warmup_epochs = 0.0
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 96).astype(np.int32)
  images = (labels[:, None, None, None] * 80 + rng.integers(0, 40, (96, 8, 8, 1))).astype(np.uint8)
  model = _Linear()
  variables = train.init_variables(model, (8, 8, 1), jax.random.key(0))
  spec = train.make_fit_spec(model, config.train, config.augment, len(labels))
  return spec, variables, batches.to_device(images, labels)


# ---------------------------------------------------------------- divergence --


def test_a_diverging_fit_stops_naming_the_model_epoch_and_value():
  spec, variables, data = _tiny_fit(learning_rate=1e12)
  with pytest.raises(train.DivergedError,
                     match=r"^original: (train|validation) loss is (nan|inf|-inf) at epoch \d: "
                           r"training diverged \(expected a finite loss\)"):
    train.fit(spec, variables, data, data, jax.random.key(1), name="original")


def test_a_diverged_epoch_is_not_checkpointed(tmp_path):
  spec, variables, data = _tiny_fit(learning_rate=1e12)
  checkpoints = checkpoint.FitCheckpoints(str(tmp_path / "ckpt"))
  with pytest.raises(train.DivergedError) as error:
    train.fit(spec, variables, data, data, jax.random.key(1), checkpoints=checkpoints)
  checkpoints.wait()
  diverged_at = int(str(error.value).split(" at epoch ")[1].split(":")[0])
  assert (checkpoints.latest_step() or 0) == diverged_at - 1


def test_info_losses_are_checked_where_they_ran():
  nan, inf = math.nan, math.inf
  # fit histories hold NaN placeholders after the epochs that ran: fine.
  train.check_info_losses("retrain", {"train_loss": jnp.array([1.0, 0.5, nan]),
                                      "epochs": jnp.int32(2)})
  with pytest.raises(train.DivergedError,
                     match=r"retrain: train_loss is nan at epoch 2 of 2 \(1 non-finite\)"):
    train.check_info_losses("retrain", {"train_loss": jnp.array([1.0, nan, nan]),
                                        "epochs": jnp.int32(2)})
  with pytest.raises(train.DivergedError,
                     match=r"scrub: loss is inf at step 3 of 4 \(2 non-finite\)"):
    train.check_info_losses("scrub", {"loss": jnp.array([1.0, 0.5, inf, nan])})
  train.check_info_losses("gkt", {"steps": jnp.int32(3)})  # no curve: nothing to check


def test_run_operator_refuses_a_diverged_operator(monkeypatch):
  """The runner's check: an operator whose loss went NaN is not stored or evaluated."""

  def diverging(variables, access, rng, hyper):
    del access, rng, hyper
    return variables, {"loss": jnp.array([0.7, jnp.nan]), "steps": jnp.int32(2)}

  monkeypatch.setattr(operators, "bind", lambda *args: (diverging, {}, {}))
  variables = {"params": {"w": jnp.ones(3)}, "batch_stats": {}}
  with pytest.raises(train.DivergedError, match=r"^finetune: loss is nan at step 2 of 2"):
    operators.run_operator("finetune", mnist.get_config("local"), None, variables,
                           types.SimpleNamespace(request=None), jax.random.key(0))


# ---------------------------------------------------------------- preemption --


def test_should_stop_checkpoints_the_epoch_and_resume_ends_the_same(tmp_path):
  spec, variables, data = _tiny_fit(num_epochs=3)
  whole, whole_info = train.fit(spec, variables, data, data, jax.random.key(1))
  checkpoints = checkpoint.FitCheckpoints(str(tmp_path / "ckpt"))
  asked = []

  def stop_after_first():
    asked.append(True)
    return len(asked) == 1

  with pytest.raises(train.Preempted, match="stopped after epoch 1: checkpoint saved"):
    train.fit(spec, variables, data, data, jax.random.key(1), checkpoints=checkpoints,
              should_stop=stop_after_first)
  assert checkpoints.latest_step() == 1
  resumed, resumed_info = train.fit(spec, variables, data, data, jax.random.key(1),
                                    checkpoints=checkpoints, should_stop=stop_after_first)
  checkpoints.close()
  assert int(resumed_info["epochs"]) == 3 and len(asked) == 3
  jax.tree.map(np.testing.assert_array_equal, resumed, whole)


def _args(workdir, cache):
  """The launcher's flags of the runs below: 8x8 MNIST, 3 epochs, finetune for 1 epoch."""
  return ["--config=configs/mnist.py:local", f"--workdir={workdir}",
          f"--config.data.cache_dir={cache}",  # compiled programs too: cache/jax
          "--config.train.num_epochs=3", "--config.train.patience=0", "--config.data.limit=400",
          "--config.evaluate.anamnesis=False", "--config.data.image_size=8",
          "--config.unlearn.methods=finetune", "--config.unlearn.finetune.num_epochs=1"]


def _command(workdir, cache):
  return [sys.executable, "-m", "launch.main", *_args(workdir, cache)]


def _env():
  return fixtures.launcher_env()  # the launcher's own devices


def _original_epochs(workdir):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  lines = records.read_json_lines(str(path))  # a kill may leave a torn line
  return [line["epoch"] for line in lines if line.get("phase") == "original" and "epoch" in line]


def _is_clock(key: str) -> bool:
  """Whether results column `key` measures time (work_s, compile_s, work_ratio_to_retrain)."""
  return key.endswith("_s") or key.startswith(("work", "compile"))


def _comparable(results):
  """results.json without timings (they differ between any two runs)."""
  return {model: {k: v for k, v in metrics.items() if not _is_clock(k)}
          for model, metrics in results.items()}


def _load_results(workdir):
  return json.loads((workdir / "results.json").read_text())


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  """(cache, workdir) of an uninterrupted run. The interrupted runs of this
  module share its cache, so they load the programs it compiled."""
  root = tmp_path_factory.mktemp("whole")
  cache = root / "cache"
  result = subprocess.run(_command(root / "run", cache), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return cache, root / "run"


def test_sigterm_during_training_checkpoints_exits_and_resumes(whole, tmp_path):
  cache, reference = whole
  workdir = tmp_path / "preempted"
  log = open(tmp_path / "preempted.log", "w")
  process = subprocess.Popen(_command(workdir, cache), cwd=REPO, env=_env(), stdout=log,
                             stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + 600
    while not _original_epochs(workdir) and process.poll() is None:
      assert time.monotonic() < deadline, "no epoch finished in 10 minutes"
      time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    returncode = process.wait(timeout=600)
  finally:
    if process.poll() is None:
      process.kill()
    log.close()
  output = (tmp_path / "preempted.log").read_text()
  assert returncode == 143, output[-3000:]
  stopped = re.search(r"preempted \(SIGTERM\): stopped after epoch (\d+)", output)
  assert stopped, output[-3000:]
  # It stopped at the first epoch boundary after the signal, with that epoch saved.
  assert _original_epochs(workdir) == list(range(1, int(stopped[1]) + 1)), output[-3000:]
  assert not (workdir / "results.json").exists()
  assert os.listdir(workdir / "checkpoints" / "original")  # the stop point is on disk

  resumed = subprocess.run(_command(workdir, cache), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  # The rerun trained only the epochs that were left.
  assert _original_epochs(workdir) == list(range(1, 4))
  assert _comparable(_load_results(workdir)) == _comparable(_load_results(reference))


# Where a SIGKILL lands (tests/kill_driver.py), in the order a run reaches them:
# the original's training (its checkpoint in flight), a stored model's record,
# an operator, the evaluation, the report's first file, the audit record (the
# last write: every other output is on disk).
KILL_POINTS = ("checkpoint:2", "record:original", "operator:retrain", "evaluate:5",
               "write:results.json", "write:audit.json")


def _json_files_are_whole(workdir):
  """Every JSON file in place parses: a kill leaves a temporary file, never half a file."""
  for folder in (workdir, workdir / "models"):
    for path in folder.glob("*.json") if folder.exists() else ():
      json.loads(path.read_text())


def _without_times(audit_record):
  return {k: v for k, v in audit_record.items()
          if k not in ("started_at", "written_at", "record_sha256")}


def test_sigkill_at_any_point_then_rerun_ends_as_an_uninterrupted_run(whole, tmp_path):
  """One workdir, SIGKILLed at each point in turn: every rerun starts from what
  the last kill left on disk and is killed at the next point (so it got there:
  the work the kill lost was done again); the last rerun finishes. Chained,
  the points cost one run's work instead of one run each."""
  cache, reference = whole
  workdir = tmp_path / "killed"
  for point in KILL_POINTS:
    killed = subprocess.run([sys.executable, os.path.join("tests", "kill_driver.py"), point,
                             *_args(workdir, cache)], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL and f"KILLED AT {point}" in killed.stderr, (
        point, killed.returncode, killed.stderr[-3000:])
    _json_files_are_whole(workdir)
    if point == "checkpoint:2":  # killed while epoch 2 was saved: it was never logged
      assert _original_epochs(workdir) == [1]

  final = subprocess.run(_command(workdir, cache), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stderr[-3000:]
  epochs = _original_epochs(workdir)
  assert epochs.count(1) == 1 and epochs[-1] == 3, epochs
  results = _load_results(workdir)
  assert _comparable(results) == _comparable(_load_results(reference))
  # The same models to the bit (the audit's digests), and a record that verifies.
  audit_record = json.loads((workdir / "audit.json").read_text())
  assert _without_times(audit_record) == _without_times(
      json.loads((reference / "audit.json").read_text()))
  lines = audit.verify_workdir(str(workdir))
  assert [subject for subject, _ in lines] == ["audit.json", *results]
  assert [problem for _, problem in lines] == [None] * len(lines)
