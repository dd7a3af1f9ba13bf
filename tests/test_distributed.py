"""Two local processes with jax.distributed run one sharded step and agree."""

import json
import os
import socket
import subprocess
import sys

import pytest

import fixtures

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env():
  return fixtures.launcher_env(PYTHONPATH=ROOT)  # the worker sets its own device count


def _result(process) -> dict:
  out, err = process.communicate(timeout=240)
  assert process.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def test_two_processes_agree_with_one():
  port = _free_port()
  workers = [subprocess.Popen([sys.executable, WORKER, str(i), str(port)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
  results = [_result(w) for w in workers]
  reference = _result(subprocess.Popen([sys.executable, WORKER, "0", "0", "1"], env=_env(),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True))
  assert [r["devices"] for r in results] == [4, 4]
  assert results[0]["loss"] == results[1]["loss"]
  assert results[0]["checksum"] == results[1]["checksum"]
  assert results[0]["loss"] == pytest.approx(reference["loss"], rel=1e-5)
  assert results[0]["checksum"] == pytest.approx(reference["checksum"], rel=1e-5)


# The main job as a user launches it, on each process the same command; only
# the coordinator's environment differs.
_MAIN_FLAGS = ["--config=configs/mnist.py:local", "--config.train.num_epochs=1",
               "--config.evaluate.anamnesis=False", "--config.model.name=resnet10",
               "--config.model.conv=xla", "--config.unlearn.methods=neggrad_plus",
               "--compilation_cache="]


def _main(workdir, cache, process_id=0, num_processes=1, port=0, devices_per_process=2):
  env = _env()
  if num_processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id))
  return subprocess.Popen(
      [sys.executable, "-m", "launch.main", *_MAIN_FLAGS, f"--workdir={workdir}",
       f"--config.data.cache_dir={cache}", f"--config.mesh.cpu_devices={devices_per_process}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process) -> str:
  out, err = process.communicate(timeout=900)
  assert process.returncode == 0, err[-3000:]
  return out


def _is_timing(metric: str) -> bool:
  return metric.endswith("_s") or "ratio_to_retrain" in metric


def test_the_main_job_on_two_processes_equals_one_process(tmp_path):
  # Two processes of one CPU device each make the same 2-device mesh as one
  # process of two devices, so XLA partitions every program the same way.
  port = _free_port()
  pair = [_main(tmp_path / "two", tmp_path / "cache", i, 2, port, devices_per_process=1)
          for i in range(2)]
  outputs = [_finish(p) for p in pair]
  one = _finish(_main(tmp_path / "one", tmp_path / "cache"))

  two_results = json.loads((tmp_path / "two" / "results.json").read_text())
  one_results = json.loads((tmp_path / "one" / "results.json").read_text())
  assert list(two_results) == list(one_results) == [
      "original", "retrain", "retrain_seed2", "neggrad_plus"]
  for model, row in one_results.items():
    assert set(two_results[model]) == set(row), model
    measured = {k: v for k, v in row.items() if not _is_timing(k)}
    # Every number equal to the last bit: the same programs on the same mesh
    # reduce in the same order (null where a metric is undefined, in both).
    assert {k: two_results[model][k] for k in measured} == measured, model
  # One writer: process 0 printed the table and wrote every record once.
  assert "acc_retain" in outputs[0] and "acc_retain" not in outputs[1]
  lines = lambda run: (tmp_path / run / "metrics.jsonl").read_text().splitlines()
  assert len(lines("two")) == len(lines("one"))
  assert "acc_retain" in one
