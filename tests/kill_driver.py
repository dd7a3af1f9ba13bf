r"""Runs `launch.main` and SIGKILLs it when a named point of the run is reached.

    python tests/kill_driver.py POINT --config=configs/mnist.py:local --workdir=...

tests/test_reliability.py uses it to cut a run short wherever a crash, an
OOM kill or a pulled plug could: SIGKILL runs no handler and no `finally`,
so what the workdir holds afterwards is exactly what was on disk. The points
are reached by wrapping the function that does the work, in this process
only (no hook in the code under test). POINT is one of:

  checkpoint:N   the original's epoch-N checkpoint is being written (orbax
                 writes it asynchronously: killed while it is in flight).
  record:NAME    model NAME's arrays are stored and half of its JSON record is
                 in the temporary file, not yet renamed into place.
  operator:NAME  operator NAME has computed its model, which is not yet stored.
  metrics:NAME   half of NAME's metrics.jsonl line is appended.
  evaluate:N     the evaluation is about to compute its N-th model output.
  write:FILE     the top-level output FILE is written to its temporary file,
                 not yet renamed into place.

Before the kill it prints `KILLED AT POINT` to stderr; a run that ends without
reaching the point exits 3, so a test can tell "killed there" from "never got
there".
"""

import contextlib
import json
import os
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NOT_REACHED = 3


def _die(point: str):
  print(f"KILLED AT {point}", file=sys.stderr, flush=True)
  os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str) -> None:
  """Wraps the function that reaches `point` so that it kills the process there."""
  kind, _, arg = point.partition(":")
  from hamforget import checkpoint, files, operators, records
  from hamforget.evaluate import suite

  if kind == "checkpoint":
    real_save = checkpoint.FitCheckpoints.save

    def save(self, step, carry, iterator=None):
      real_save(self, step, carry, iterator)
      if step == int(arg):
        _die(point)

    checkpoint.FitCheckpoints.save = save
  elif kind == "record":
    real_write_json = files.write_json

    def write_json(path, value, **kwargs):
      if os.fspath(path).endswith(os.path.join("models", f"{arg}.json")):
        text = json.dumps(value, **kwargs)
        with files.atomic_open(path) as f:
          f.write(text[:len(text) // 2])
          f.flush()
          _die(point)
      real_write_json(path, value, **kwargs)

    files.write_json = write_json
  elif kind == "operator":
    real_run = operators.run_operator

    def run_operator(name, *args, **kwargs):
      out = real_run(name, *args, **kwargs)
      if name == arg:
        _die(point)
      return out

    operators.run_operator = run_operator
  elif kind == "metrics":
    real_append = records.append_json_line

    def append_json_line(path, record):
      if record.get("phase") == arg and "epoch" not in record:
        line = json.dumps(record)
        with open(path, "ab") as f:
          f.write(line[:len(line) // 2].encode())
          f.flush()
        _die(point)
      real_append(path, record)

    records.append_json_line = append_json_line
  elif kind == "evaluate":
    real_outputs, calls = suite.model_outputs, []

    def model_outputs(*args, **kwargs):
      calls.append(None)
      if len(calls) == int(arg):
        _die(point)
      return real_outputs(*args, **kwargs)

    suite.model_outputs = model_outputs
  elif kind == "write":
    real_open = files.atomic_open

    @contextlib.contextmanager
    def atomic_open(path, mode="w", **kwargs):
      with real_open(path, mode, **kwargs) as f:
        yield f
        if os.path.basename(os.fspath(path)) == arg:
          f.flush()
          _die(point)

    files.atomic_open = atomic_open
  else:
    raise SystemExit(f"unknown kill point {point!r}")


def main():
  point, args = sys.argv[1], sys.argv[2:]
  _install(point)
  from absl import app
  from launch import main as launcher
  try:
    app.run(launcher.main, argv=["launch.main", *args])
  except SystemExit as exit_:
    if exit_.code not in (0, None):
      raise
  print(f"kill point {point} not reached", file=sys.stderr, flush=True)
  sys.exit(NOT_REACHED)


if __name__ == "__main__":
  main()
