"""Progress for long phases: tqdm bars and status lines on a terminal, quiet
when piped (the same facts then go to the absl log at INFO)."""

from __future__ import annotations

import sys

import tqdm
from absl import logging


def interactive() -> bool:
  return sys.stderr.isatty()


def bar(total: int, desc: str) -> tqdm.tqdm:
  """A progress bar over `total` units, disabled when stderr is not a terminal."""
  return tqdm.tqdm(total=total, desc=desc, disable=not interactive(), dynamic_ncols=True,
                   leave=True)


def say(message: str) -> None:
  """A status line: on stderr at a terminal, to the log (INFO) otherwise."""
  if interactive():
    print(message, file=sys.stderr, flush=True)
  else:
    logging.info(message)
