"""TensorBoard curves, the profiler trace and device memory (hamforget.tensorboard, .observe)."""

import glob

import jax.numpy as jnp
import pytest

from fixtures import read_scalars
from hamforget import observe, records


def test_metrics_lines_become_tensorboard_curves_per_model(tmp_path):
  log = records.MetricsLog(str(tmp_path), tensorboard=True)
  for epoch, loss in ((1, 0.9), (2, 0.5)):
    log.append("original", "f0", {"epoch": epoch, "train_loss": loss,
                                  "val_accuracy": 0.5 + epoch / 10})
  log.append("gkt", "f1", {"work_s": 3.0, "steps": 40, "initial_loss": float("nan"),
                           "info": {"student_retain_acc": [0.2, 0.6, 0.9], "steps": 40,
                                    "loss": [[1.0, 0.8], [0.5, 0.25]]}})
  log.close()
  original = read_scalars(str(tmp_path / "tensorboard" / "original"))
  assert original["train_loss"] == [(1, pytest.approx(0.9)), (2, 0.5)]  # float32 in the file
  assert [step for step, _ in original["val_accuracy"]] == [1, 2]
  assert "epoch" not in original and "fingerprint" not in original  # stamps are not curves
  gkt = read_scalars(str(tmp_path / "tensorboard" / "gkt"))
  assert gkt["info/student_retain_acc"] == [(1, pytest.approx(0.2)), (2, pytest.approx(0.6)),
                                            (3, pytest.approx(0.9))]
  assert [step for step, _ in gkt["info/loss"]] == [1, 2, 3, 4]  # nested curves, flattened
  assert gkt["work_s"] == [(0, 3.0)] and gkt["steps"] == [(0, 40.0)]
  assert "initial_loss" not in gkt  # NaN is left out, not drawn
  # metrics.jsonl is written as before.
  assert len(records.read_json_lines(str(tmp_path / records.METRICS_FILE))) == 3


def test_without_tensorboard_nothing_is_written(tmp_path):
  log = records.MetricsLog(str(tmp_path))
  log.append("original", "f0", {"epoch": 1, "train_loss": 0.9})
  log.close()
  assert not (tmp_path / "tensorboard").exists()


def test_profiler_traces_the_second_epoch_only_when_asked(tmp_path):
  folder = tmp_path / "profile"
  profiler = observe.EpochProfiler(str(folder))
  profiler.after_epoch(1)  # starts
  jnp.ones(3).sum().block_until_ready()
  profiler.after_epoch(2)  # stops and writes
  profiler.after_epoch(3)  # nothing more
  profiler.close()
  assert glob.glob(str(folder / "plugins" / "profile" / "*" / "*.xplane.pb"))
  off = observe.EpochProfiler("")
  off.after_epoch(1)
  off.after_epoch(2)
  assert not off._tracing  # pylint: disable=protected-access


def test_device_memory_is_none_where_the_platform_reports_none():
  # CPU reports no memory statistics; GPU and TPU report peak bytes.
  assert observe.device_memory_peak_gb() is None
