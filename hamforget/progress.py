"""Progress for long phases: tqdm bars and status lines on a terminal; the
same facts as absl INFO lines when no terminal is attached (nohup, TPU VM
logs, CI), one line per step of a bar, so a log shows every epoch."""

from __future__ import annotations

import sys

import tqdm
from absl import logging


def interactive() -> bool:
  return sys.stderr.isatty()


class LoggedBar:
  """tqdm's interface (update, set_postfix, set_postfix_str, close) writing
  one INFO line per update: `desc: n/total unit (postfix)`."""

  def __init__(self, total: int, desc: str, unit: str = "it"):
    self.total, self.desc, self.unit, self.n = int(total), desc, unit, 0
    self._postfix = ""

  def set_postfix(self, **values) -> None:
    self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

  def set_postfix_str(self, text: str) -> None:
    self._postfix = text

  def update(self, n: int = 1) -> None:
    if n <= 0:
      return  # nothing done (a fresh start's "resumed at 0")
    self.n += n
    postfix = f" ({self._postfix})" if self._postfix else ""
    logging.info("%s: %d/%d %s%s", self.desc, self.n, self.total, self.unit, postfix)

  def close(self) -> None:
    pass


def bar(total: int, desc: str, unit: str = "it"):
  """A progress bar over `total` units: tqdm at a terminal, a `LoggedBar` otherwise."""
  if not interactive():
    return LoggedBar(total, desc, unit)
  return tqdm.tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)


def say(message: str) -> None:
  """A status line: on stderr at a terminal, to the log (INFO) otherwise."""
  if interactive():
    print(message, file=sys.stderr, flush=True)
  else:
    logging.info(message)
