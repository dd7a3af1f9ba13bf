"""How a result value reads in a table or a plot label: one convention for every output.

- `-`: not applicable to this model or request (a NaN in results.json's
  sense: no class metric for a group request, no AIN without relearning).
- counts (the registered unit is a count: steps, examples) are integers;
  every other value has fixed decimals.
- `value [low, high]`: the value and its 95% bootstrap interval.
- flags read yes/no; AIN and relearn_steps say when a count is a bound.
"""

from __future__ import annotations

import math
from typing import Mapping

from hamforget import legend

MISSING = "-"
# 0/1 flags, shown as words.
FLAGS = ("over_forgetting", "mia_underpowered", "relearn_met_at_start", "relearn_budget_ran_out")


def is_missing(value) -> bool:
  return value is None or (isinstance(value, float) and not math.isfinite(value))


def format_value(value, digits: int = 4, missing: str = MISSING, integer: bool = False) -> str:
  """One value: `missing` for None and NaN, "inf"/"-inf" as such, `integer` as a whole number."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return missing
  value = float(value)
  if math.isinf(value):
    return "inf" if value > 0 else "-inf"
  if integer:
    return f"{round(value)}"
  return f"{value:.{digits}f}"


def with_interval(row: Mapping[str, float], key: str, digits: int = 4,
                  missing: str = MISSING) -> str:
  """`value [low, high]` where the row has the interval of `key`, else the value alone."""
  integer = legend.is_count(key)
  cell = format_value(row.get(key), digits, missing, integer)
  low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
  if cell == missing or is_missing(low) or is_missing(high):
    return cell
  return f"{cell} [{format_value(low, digits - 1)}, {format_value(high, digits - 1)}]"


def relearn_steps(row: Mapping[str, float]) -> str:
  """`relearn_steps` with its state: `-` (not measured), `> N (budget ran out)`,
  `N (already at target)` (met before any relearning), or the count."""
  value = row.get("relearn_steps")
  if is_missing(value):
    return MISSING
  steps = round(float(value))
  if row.get("relearn_budget_ran_out") == 1.0:
    return f"> {steps} (budget ran out)"
  if row.get("relearn_met_at_start") == 1.0:
    return f"{steps} (already at target)"
  return f"{steps}"


def ain(row: Mapping[str, float]) -> str:
  """AIN with its censoring (`ain_censored`): `>= x`, `<= x`, or `budget ran out` (both)."""
  value, code = row.get("ain"), row.get("ain_censored")
  if code == 2.0:
    return "budget ran out"
  if is_missing(value):
    return MISSING
  return {1.0: ">= ", -1.0: "<= "}.get(code, "") + format_value(value, 3)


def cell(row: Mapping[str, float], key: str, digits: int = 3) -> str:
  """A table cell of column `key`: intervals where they exist, flags as words, bounds as such."""
  if key in FLAGS and row.get(key) in (0.0, 1.0):
    return "yes" if row[key] == 1.0 else "no"
  if key == "ain":
    return ain(row)
  if key == "relearn_steps":
    return relearn_steps(row)
  return with_interval(row, key, digits)
