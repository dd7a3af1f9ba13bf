"""One run per workdir at a time.

Two runs writing into one workdir would overwrite each other's checkpoints,
models and results. `hold(workdir)` creates `workdir/.lock` with O_CREAT |
O_EXCL (atomic: of two runs starting at once, one wins) holding the holder's
pid, host and start time; a second run is refused with those in the message.
A lock left by a run that died (its pid is gone, on this host) is taken over
with a warning. Only process 0 of a multi-host run takes the lock: the other
processes are part of the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Iterator

from absl import logging

LOCK_NAME = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir; the message names it."""


def _holder_info() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def _read_holder(path: str) -> dict | None:
  """The holder recorded in the lock file, or None when it is gone or unreadable."""
  try:
    with open(path) as f:
      holder = json.load(f)
    return holder if isinstance(holder, dict) else None
  except (OSError, ValueError):
    return None


def _is_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)  # signal 0: only asks whether the process exists
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by another user
  return True


def _is_stale(holder: dict | None) -> bool:
  """True when the holder is known to be dead: a pid gone from this host."""
  if holder is None:
    return False  # being written this instant, or damaged: a person decides
  return holder.get("host") == socket.gethostname() and not _is_alive(int(holder.get("pid", -1)))


def _describe(holder: dict | None) -> str:
  if holder is None:
    return "an unknown run (the lock file is empty or unreadable)"
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, "
          f"started {holder.get('started')}")


def acquire(workdir: str) -> str:
  """Takes the lock of `workdir` (created if needed); returns the lock file's path.

  Raises:
    WorkdirBusyError: another live run holds it (names its pid, host, start).
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  for _ in range(3):  # a takeover races other takers at most a couple of times
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read_holder(path)
      if not _is_stale(holder):
        raise WorkdirBusyError(
            f"workdir {workdir} is in use by {_describe(holder)}: wait for it to finish or "
            f"use another workdir. If no run is using it, delete {path}.") from None
      logging.warning("workdir %s: taking over the lock of %s, which is no longer running",
                      workdir, _describe(holder))
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(_holder_info(), f)
    return path
  raise WorkdirBusyError(f"workdir {workdir}: could not take the lock {path}")


def release(path: str) -> None:
  """Removes the lock file at `path` if this process holds it."""
  holder = _read_holder(path)
  if holder is not None and holder.get("pid") == os.getpid() and (
      holder.get("host") == socket.gethostname()):
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


@contextlib.contextmanager
def hold(workdir: str, take: bool = True) -> Iterator[None]:
  """Holds the lock of `workdir` for the block (nothing when not `take`)."""
  if not take:
    yield
    return
  path = acquire(workdir)
  try:
    yield
  finally:
    release(path)
