"""The legend of results.md: every column's meaning, unit and ideal, from the metric registry.

Nothing here is written by hand per metric: a column's row comes from what
its `@metric` registration documents (`hamforget.evaluate.registry.COLUMNS`),
so a new metric, or a changed definition, reaches the legend with the code.
A table's own headers that are not metric names (the original study's
"Attack Accuracy", ...) name the metrics they show (`aliases`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from hamforget import evaluate  # noqa: F401  (registers every metric)
from hamforget.evaluate import registry

# Free-standing headers of the tables: not columns of the results, no legend row.
ROW_LABELS = ("Model", "Rank")


def registered_name(name: str) -> str:
  """The registered name of column `name`: itself, or its per-class pattern
  (`acc_test_class_mel` -> `acc_test_class_<class>`).

  Raises:
    KeyError: `name` is not a registered column.
  """
  if name in registry.COLUMNS:
    return name
  for pattern in registry.COLUMNS:
    if registry.CLASS not in pattern:
      continue
    head, _, tail = pattern.partition(registry.CLASS)
    if name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
      return pattern
  raise KeyError(f"{name!r} is not a registered result column (hamforget.evaluate.METRICS)")


def column(name: str) -> registry.Column:
  """What the registry says of column `name` (see `registered_name`)."""
  return registry.COLUMNS[registered_name(name)]


def _short(meaning: str) -> str:
  """The first clause of a registered documentation (up to a "; " outside
  brackets): a legend row stays one sentence."""
  depth = 0
  for i, char in enumerate(meaning):
    depth += char in "(["
    depth -= char in ")]"
    if depth == 0 and meaning.startswith("; ", i):
      return meaning[:i]
  return meaning


def is_count(name: str) -> bool:
  """Whether column `name` counts things (printed as an integer)."""
  try:
    return column(name).unit.startswith(registry.COUNT)
  except KeyError:
    return False


def _escape(text: str) -> str:
  return text.replace("|", "\\|")


def legend_rows(names: Sequence[str],
                aliases: Mapping[str, Sequence[str]] | None = None) -> list[tuple[str, ...]]:
  """(column, meaning, unit, ideal) for each of `names`, in order, each once.

  Args:
    names: the headers of the tables, metric names or keys of `aliases`;
      `ROW_LABELS` are skipped.
    aliases: header -> the metric names it shows (its first one gives the
      unit and ideal), e.g. "Retain Loss mean (std)" -> (loss_retain_mean,
      loss_retain_std).

  Raises:
    KeyError: a name is neither a registered column nor an alias.
  """
  aliases = aliases or {}
  rows, seen = [], set()
  for name in names:
    key = name if name in aliases or name in ROW_LABELS else registered_name(name)
    if name in ROW_LABELS or key in seen:
      continue
    seen.add(key)
    if name in aliases:
      shown = list(aliases[name])
      first = column(shown[0])
      meaning = " and ".join(f"`{key}`" for key in shown) + ": " + _short(first.meaning)
      rows.append((name, meaning, first.unit, first.ideal))
    else:
      entry = registry.COLUMNS[key]
      rows.append((f"`{key}`", _short(entry.meaning), entry.unit, entry.ideal))
  return rows


def legend_table(names: Sequence[str],
                 aliases: Mapping[str, Sequence[str]] | None = None) -> str:
  """The legend as a Markdown table (see `legend_rows`)."""
  lines = ["| Column | Meaning | Unit | Ideal |", "|---|---|---|---|"]
  lines += ["| " + " | ".join(_escape(cell) for cell in row) + " |"
            for row in legend_rows(names, aliases)]
  return "\n".join(lines)
