"""Two local processes with jax.distributed run one sharded step and agree."""

import json
import os
import socket
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)  # the worker sets its own device count
  return env


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
