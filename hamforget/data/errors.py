"""The one exception data loading raises for missing or malformed input.

Every source collects all the problems it finds in a file before raising, so
that a user fixes a broken download in one round instead of one row at a time.
"""

from __future__ import annotations

from typing import Sequence

SHOWN = 5  # how many offending rows an error message quotes


class DataError(ValueError):
  """Input data is missing or malformed. The message names the file, says what
  is wrong (with counts and the first few offending rows) and how to fix it."""


def first_few(items: Sequence[object], shown: int = SHOWN) -> str:
  """'a, b, c' or 'a, b, c, ... (+7 more)': keeps messages short on huge files."""
  text = ", ".join(str(item) for item in items[:shown])
  if len(items) > shown:
    text += f", ... (+{len(items) - shown} more)"
  return text


class Problems:
  """Collects problems found in one file and raises them as one DataError.

  Usage:
    problems = Problems(path)
    problems.add("rows with unknown dx", ["line 5: 'xyz'", ...])
    problems.raise_if_any()
  """

  def __init__(self, path: str):
    self.path = str(path)
    self._found: list[tuple[str, list[str]]] = []

  def add(self, what: str, where: Sequence[str]) -> None:
    """Records `len(where)` offending items described by `what` (no-op if none)."""
    if where:
      self._found.append((what, list(where)))

  def message(self, hint: str = "") -> str:
    lines = [f"{self.path}: bad input:"]
    for what, where in self._found:
      lines.append(f"  - {len(where)} {what}: {first_few(where)}")
    return "\n".join(lines + ([hint] if hint else []))

  def raise_if_any(self, hint: str = "") -> None:
    """Raises one DataError listing everything found, then `hint` (how to fix)."""
    if self._found:
      raise DataError(self.message(hint))
