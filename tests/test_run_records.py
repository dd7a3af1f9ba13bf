"""What a run writes besides results: stamped metrics.jsonl lines, work and
compile seconds apart, progress in the log when no terminal is attached."""

import logging
import time

import jax
import jax.numpy as jnp
import pytest

from hamforget import progress, records, timing


def test_every_metrics_line_says_which_run_model_fingerprint_and_when(tmp_path):
  first, second = records.MetricsLog(str(tmp_path)), records.MetricsLog(str(tmp_path))
  assert first.run_id != second.run_id and first.path == second.path
  first.append("original", "fp-a", {"epoch": 1, "train_loss": 0.5})
  second.append("original", "fp-b", {"epoch": 1, "train_loss": 0.4})
  second.append("finetune", "fp-c", {"work_s": 1.0})
  lines = records.read_json_lines(str(tmp_path / records.METRICS_FILE))
  assert [(l["run_id"], l["model"], l["fingerprint"]) for l in lines] == [
      (first.run_id, "original", "fp-a"), (second.run_id, "original", "fp-b"),
      (second.run_id, "finetune", "fp-c")]
  assert all(l["phase"] == l["model"] for l in lines)  # the key older readers select on
  times = [l["time"] for l in lines]
  assert times == sorted(times) and all(t.endswith("+00:00") for t in times)
  assert lines[0]["train_loss"] == 0.5  # the record's own fields stay


def test_stopwatch_keeps_compilation_and_paused_io_out_of_the_work():
  # A shape never compiled before in this process: its first call compiles.
  f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.25)
  x = jnp.ones((37, 29))
  with timing.Stopwatch() as watch:
    f(x).block_until_ready()
    with watch.pause():
      time.sleep(0.05)
  assert watch.compile_s > 0.0
  assert watch.paused_s >= 0.05
  assert watch.work_s == pytest.approx(watch.wall_s - watch.compile_s - watch.paused_s)
  with timing.Stopwatch() as again:  # compiled: nothing more to pay
    f(x).block_until_ready()
  assert again.compile_s == 0.0
  assert set(watch.record("checkpoint_s")) == {"work_s", "compile_s", "checkpoint_s"}


def test_compilation_is_told_per_program():
  def scaled_tanh_sum(x):
    return jnp.tanh(x @ x.T).sum() * 1.75

  def other_program(x):
    return jnp.cos(x).mean()

  x = jnp.ones((31, 23))
  with timing.Stopwatch() as watch:
    jax.jit(scaled_tanh_sum)(x).block_until_ready()
    jax.jit(other_program)(x).block_until_ready()
  assert watch.compile_by_program["scaled_tanh_sum"] > 0.0
  assert watch.compile_by_program["other_program"] > 0.0
  assert sum(watch.compile_by_program.values()) == pytest.approx(watch.compile_s)
  slowest = watch.slowest_programs(1)
  assert len(slowest) == 1 and list(slowest.values())[0] == round(
      max(watch.compile_by_program.values()), 2)


def test_progress_reaches_the_log_when_no_terminal_is_attached(monkeypatch, caplog):
  monkeypatch.setattr(progress, "interactive", lambda: False)
  caplog.set_level(logging.INFO, logger="absl")
  bar = progress.bar(3, "train original", unit="epoch")
  bar.update(0)  # a fresh start resumes at 0: nothing to say
  for epoch in range(3):
    bar.set_postfix(loss=f"{1.0 / (epoch + 1):.3f}")
    bar.update(1)
  bar.close()
  progress.say("evaluate ...")
  messages = [r.getMessage() for r in caplog.records if r.name == "absl"]
  assert messages == ["train original: 1/3 epoch (loss=1.000)",
                      "train original: 2/3 epoch (loss=0.500)",
                      "train original: 3/3 epoch (loss=0.333)", "evaluate ..."]
