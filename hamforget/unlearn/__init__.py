"""Unlearning operators, one module each, found by module name.

To add one, write `hamforget/unlearn/my_method.py` with a module-level literal
`DEFAULTS = {...}` (its hyper-parameters) and a function decorated by
`@base.register("my_method", needs={...}, defaults=DEFAULTS)`; nothing else
changes. It may import `base`, `common`, `hamforget.train`,
`hamforget.data.batches` and `hamforget.models`, never another operator.

Every module of this package is an operator except `base` (the contract and
registry), `common` (the shared helpers), `catalog` (defaults without JAX) and
any module whose name starts with "_".

Importing this package imports no JAX: `configs/` reads the operators'
defaults through `catalog`. The registry API, `get`, `names`, `make_access`,
`register`, `unregister`, `Access`, `Operator` (from `base`), is reached as
`hamforget.unlearn.get(...)` etc.; the first such access imports JAX and every
operator module.
"""

from __future__ import annotations

import os
import pkgutil

# Modules of this package that are not operators.
NOT_OPERATORS = frozenset({"base", "common", "catalog"})

_REGISTRY_API = frozenset({"Access", "Operator", "get", "join_config", "make_access", "names",
                           "register", "unregister"})


def operator_modules(path=None) -> list[tuple[str, str]]:
  """(module name, file path) of every operator module, sorted by name.

  Args:
    path: the folders to search; this package's `__path__` by default.
  """
  found = []
  for module in pkgutil.iter_modules(__path__ if path is None else path):
    if module.ispkg or module.name.startswith("_") or module.name in NOT_OPERATORS:
      continue
    found.append((module.name, os.path.join(module.module_finder.path, module.name + ".py")))
  return sorted(found)


def __getattr__(name: str):
  # PEP 562: the registry API is loaded on first use, so that importing this
  # package (for `catalog`, say) costs no JAX import.
  if name in _REGISTRY_API:
    from hamforget.unlearn import base  # pylint: disable=import-outside-toplevel
    base.load_operators()
    value = getattr(base, name)
    globals()[name] = value
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | _REGISTRY_API)


__all__ = sorted(_REGISTRY_API)
