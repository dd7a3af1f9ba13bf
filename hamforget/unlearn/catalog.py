"""What every operator declares, read from source without importing it.

Each operator module holds its defaults as a module-level literal,
`DEFAULTS = {...}`, and, when it cannot serve every kind of forget request,
`REQUEST_KINDS = ("classes",)`. This module parses each operator file (found
as the registry finds them, `hamforget.unlearn.operator_modules`) and
evaluates those assignments with `ast.literal_eval`, so `configs/` can list
every operator's hyper-parameters, and the launcher can refuse a config whose
operators cannot serve it (`check_methods`), without importing JAX.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
from typing import Any

from hamforget import unlearn
from hamforget.data import forget

DEFAULTS_NAME = "DEFAULTS"
REQUEST_KINDS_NAME = "REQUEST_KINDS"
# Every kind of forget request.
REQUEST_KINDS = forget.KINDS


def _assignments(tree: ast.Module, name: str) -> list[ast.stmt]:
  return [node for node in tree.body
          if isinstance(node, (ast.Assign, ast.AnnAssign))
          and any(isinstance(target, ast.Name) and target.id == name
                  for target in (node.targets if isinstance(node, ast.Assign) else [node.target]))]


def _read_literal(path: str, name: str, required: bool, default=None):
  """The value of the module-level literal `name = ...` in the file at `path`."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  assignments = _assignments(tree, name)
  if not assignments:
    if required:
      raise ValueError(f"{path}: an operator module needs a module-level literal "
                       f"`{name} = {{...}}` (its hyper-parameters; {{}} for none)")
    return default
  if len(assignments) > 1:
    raise ValueError(f"{path}: {name} is assigned {len(assignments)} times "
                     f"(lines {[node.lineno for node in assignments]}); assign it once")
  node = assignments[0]
  try:
    return node.lineno, ast.literal_eval(node.value)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
    raise ValueError(
        f"{path}:{node.lineno}: {name} must be a plain literal (numbers, strings, booleans, "
        f"tuples, dicts; no names, calls or ** unpacking), so that configs can read it "
        f"without importing the module: {error}") from None


def read_defaults(path: str) -> dict[str, Any]:
  """The literal `DEFAULTS = {...}` of the module at `path`; a clear error if
  there is none, or if it is not a plain literal dict with string keys."""
  lineno, value = _read_literal(path, DEFAULTS_NAME, required=True)
  if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
    raise ValueError(f"{path}:{lineno}: {DEFAULTS_NAME} must be a dict with string keys, "
                     f"not {type(value).__name__}")
  return value


def read_request_kinds(path: str) -> tuple[str, ...]:
  """The literal `REQUEST_KINDS = (...)` of the module at `path`: the forget
  request kinds the operator serves; every kind when the module sets none."""
  found = _read_literal(path, REQUEST_KINDS_NAME, required=False)
  if found is None:
    return REQUEST_KINDS
  lineno, value = found
  if (not isinstance(value, (tuple, list)) or not value
      or not set(value) <= set(REQUEST_KINDS)):
    raise ValueError(f"{path}:{lineno}: {REQUEST_KINDS_NAME} must be a non-empty tuple of "
                     f"{REQUEST_KINDS}, not {value!r}")
  return tuple(value)


@functools.lru_cache(maxsize=None)
def _request_kinds(path: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
  return {name: read_request_kinds(file) for name, file in unlearn.operator_modules(list(path))}


def request_kinds(path=None) -> dict[str, tuple[str, ...]]:
  """Operator name -> the forget request kinds it serves, for every operator module."""
  return dict(_request_kinds(tuple(unlearn.__path__ if path is None else path)))


def method_names(config) -> list[str]:
  """`config.unlearn.methods` as a list of names. On the command line
  `--config.unlearn.methods=finetune,scrub` arrives as ("finetune,scrub",)."""
  methods = config.unlearn.methods
  methods = [methods] if isinstance(methods, str) else methods
  return [name.strip() for entry in methods for name in entry.split(",") if name.strip()]


def check_methods(config) -> None:
  """Refuses, before any work starts, a config whose operators cannot serve it.

  Raises:
    ValueError: an operator of `config.unlearn.methods` is unknown (with the
      closest names), or cannot serve the request kind `config.forget.kind`
      (with the kinds it serves).
  """
  kind = config.forget.kind
  if kind not in REQUEST_KINDS:
    raise ValueError(f"forget.kind={kind!r}: expected one of {REQUEST_KINDS}")
  served = request_kinds()
  for name in method_names(config):
    if name not in served:
      close = difflib.get_close_matches(name, served, n=3)
      raise ValueError(f"unlearn.methods names {name!r}, which is not an operator"
                       + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
                       + f" Known: {', '.join(sorted(served))}")
    if kind not in served[name]:
      raise ValueError(
          f"operator {name!r} cannot serve forget.kind={kind!r}: it forgets "
          f"{' or '.join(served[name])} only. Remove it from unlearn.methods or change "
          f"forget.kind.")


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
