"""Every operator's default hyper-parameters, read from source without importing it.

Each operator module holds its defaults as a module-level literal,
`DEFAULTS = {...}`. This module parses each operator file (found as the
registry finds them, `hamforget.unlearn.operator_modules`) and evaluates that
one assignment with `ast.literal_eval`, so `configs/` can list every
operator's hyper-parameters without importing JAX, Flax or optax.
"""

from __future__ import annotations

import ast
import copy
import functools
from typing import Any

from hamforget import unlearn

DEFAULTS_NAME = "DEFAULTS"


def read_defaults(path: str) -> dict[str, Any]:
  """The literal `DEFAULTS = {...}` of the module at `path`; a clear error if
  there is none, or if it is not a plain literal dict with string keys."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  assignments = [
      node for node in tree.body
      if isinstance(node, (ast.Assign, ast.AnnAssign))
      and any(isinstance(target, ast.Name) and target.id == DEFAULTS_NAME
              for target in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
  if not assignments:
    raise ValueError(f"{path}: an operator module needs a module-level literal "
                     f"`{DEFAULTS_NAME} = {{...}}` (its hyper-parameters; {{}} for none)")
  if len(assignments) > 1:
    raise ValueError(f"{path}: {DEFAULTS_NAME} is assigned {len(assignments)} times "
                     f"(lines {[node.lineno for node in assignments]}); assign it once")
  node = assignments[0]
  try:
    value = ast.literal_eval(node.value)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
    raise ValueError(
        f"{path}:{node.lineno}: {DEFAULTS_NAME} must be a plain literal dict (numbers, "
        f"strings, booleans, tuples; no names, calls or ** unpacking), so that configs can "
        f"read it without importing the module: {error}") from None
  if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
    raise ValueError(f"{path}:{node.lineno}: {DEFAULTS_NAME} must be a dict with string keys, "
                     f"not {type(value).__name__}")
  return value


@functools.lru_cache(maxsize=None)
def _defaults(path: tuple[str, ...] | None) -> dict[str, dict[str, Any]]:
  modules = unlearn.operator_modules(None if path is None else list(path))
  return {name: read_defaults(file) for name, file in modules}


def defaults(path=None) -> dict[str, dict[str, Any]]:
  """Operator name -> its DEFAULTS (a fresh copy), for every operator module.

  Args:
    path: the folders to search; the `hamforget.unlearn` package by default.
  """
  return copy.deepcopy(_defaults(tuple(unlearn.__path__ if path is None else path)))


def names(path=None) -> list[str]:
  """Every operator's name, as `hamforget.unlearn.names()` lists them."""
  return list(defaults(path))
