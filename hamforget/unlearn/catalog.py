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
from typing import Any, NamedTuple

from hamforget import unlearn
from hamforget.data import forget

DEFAULTS_NAME = "DEFAULTS"
REQUEST_KINDS_NAME = "REQUEST_KINDS"
# Every kind of forget request.
REQUEST_KINDS = forget.KINDS


class Declaration(NamedTuple):
  """What one operator module declares: its hyper-parameters and the forget
  request kinds it serves (every kind when it sets no REQUEST_KINDS)."""
  defaults: dict[str, Any]
  request_kinds: tuple[str, ...]


def _literal(tree: ast.Module, path: str, name: str):
  """(line, value) of the module-level literal `name = ...`, or None if absent."""
  nodes = [node for node in tree.body
           if isinstance(node, (ast.Assign, ast.AnnAssign))
           and any(isinstance(target, ast.Name) and target.id == name
                   for target in (node.targets if isinstance(node, ast.Assign)
                                  else [node.target]))]
  if not nodes:
    return None
  if len(nodes) > 1:
    raise ValueError(f"{path}: {name} is assigned {len(nodes)} times "
                     f"(lines {[node.lineno for node in nodes]}); assign it once")
  try:
    return nodes[0].lineno, ast.literal_eval(nodes[0].value)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
    raise ValueError(
        f"{path}:{nodes[0].lineno}: {name} must be a plain literal (numbers, strings, booleans, "
        f"tuples, dicts; no names, calls or ** unpacking), so that configs can read it "
        f"without importing the module: {error}") from None


def read_declaration(path: str) -> Declaration:
  """The `DEFAULTS` and `REQUEST_KINDS` literals of the operator module at
  `path`; a clear error naming the file (and line) when either is malformed."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  found = _literal(tree, path, DEFAULTS_NAME)
  if found is None:
    raise ValueError(f"{path}: an operator module needs a module-level literal "
                     f"`{DEFAULTS_NAME} = {{...}}` (its hyper-parameters; {{}} for none)")
  lineno, defaults_ = found
  if not isinstance(defaults_, dict) or not all(isinstance(key, str) for key in defaults_):
    raise ValueError(f"{path}:{lineno}: {DEFAULTS_NAME} must be a dict with string keys, "
                     f"not {type(defaults_).__name__}")
  found = _literal(tree, path, REQUEST_KINDS_NAME)
  if found is None:
    return Declaration(defaults_, REQUEST_KINDS)
  lineno, kinds = found
  if not isinstance(kinds, (tuple, list)) or not kinds or not set(kinds) <= set(REQUEST_KINDS):
    raise ValueError(f"{path}:{lineno}: {REQUEST_KINDS_NAME} must be a non-empty tuple of "
                     f"{REQUEST_KINDS}, not {kinds!r}")
  return Declaration(defaults_, tuple(kinds))


@functools.lru_cache(maxsize=None)
def _declarations(path: tuple[str, ...]) -> dict[str, Declaration]:
  return {name: read_declaration(file) for name, file in unlearn.operator_modules(list(path))}


def declarations(path=None) -> dict[str, Declaration]:
  """Operator name -> its Declaration, for every operator module (a fresh copy).

  Args:
    path: the folders to search; the `hamforget.unlearn` package by default.
  """
  return copy.deepcopy(_declarations(tuple(unlearn.__path__ if path is None else path)))


def defaults(path=None) -> dict[str, dict[str, Any]]:
  """Operator name -> its DEFAULTS, for every operator module."""
  return {name: d.defaults for name, d in declarations(path).items()}


def request_kinds(path=None) -> dict[str, tuple[str, ...]]:
  """Operator name -> the forget request kinds it serves, for every operator module."""
  return {name: d.request_kinds for name, d in declarations(path).items()}


def names(path=None) -> list[str]:
  """Every operator's name, as `hamforget.unlearn.names()` lists them."""
  return list(declarations(path))


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


def parse_variant(text: str, defaults) -> dict:
  """`key=value:key=value` -> {key: value} typed like each key's default.

  `defaults`: an operator's hyper-parameters (its DEFAULTS or its config
  section); a variant of `launch.try_operator` sets some of them.

  Raises:
    ValueError: naming the key that is not a hyper-parameter of the operator,
      or the value that does not parse as its default's type.
  """
  overrides = {}
  for item in filter(None, text.split(":")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"variant {text!r}: {item!r} is not key=value with a key among "
                       f"{sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      if value not in ("True", "False", "true", "false"):
        raise ValueError(f"variant {text!r}: {key} takes True or False, not {value!r}")
      overrides[key] = value.lower() == "true"
    else:
      try:
        overrides[key] = type(default)(value)
      except ValueError:
        raise ValueError(f"variant {text!r}: {key} takes a {type(default).__name__} like "
                         f"{default!r}, not {value!r}") from None
  return overrides
