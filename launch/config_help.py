"""The launcher's help with configs: `--print_config` and one-line override errors.

No JAX is imported here: both answer in about a second.

    python -m launch.main --config=configs/ham10000.py --print_config
    python -m launch.main --config=configs/mnist.py --config.train.num_epoch=1 ...
    error: --config.train.num_epoch=1: config.train has no key 'num_epoch'; did you mean 'num_epochs'?
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from typing import Sequence

from absl import flags

from hamforget.unlearn import catalog

CONFIG_FLAG = "config"
DEFAULT_CONFIG = "configs/mnist.py"


def describe(config) -> str:
  """The resolved config (file and overrides) and every registered operator."""
  lines = ["# The resolved config (--config.<section>.<key>=value overrides any key):", "",
           str(config).rstrip(), "",
           "# Registered operators (--config.unlearn.methods=a,b; their hyper-parameters are "
           "config.unlearn.<name>):", ""]
  kinds = catalog.request_kinds()
  for name, defaults in catalog.defaults().items():
    serves = ", ".join(kinds[name])
    lines.append(f"{name}: forgets {serves}; defaults {defaults}")
  return "\n".join(lines)


def _config_argument(argv: Sequence[str]) -> str:
  """The value of --config in `argv` (its default when absent)."""
  for i, arg in enumerate(argv):
    match = re.match(rf"^--?{CONFIG_FLAG}(=(.*))?$", arg)
    if match:
      if match.group(1) is not None:
        return match.group(2)
      return argv[i + 1] if i + 1 < len(argv) else DEFAULT_CONFIG
  return DEFAULT_CONFIG


def _overrides(argv: Sequence[str]) -> list[str]:
  """The `--config.a.b=value` arguments of `argv`, as written."""
  return [arg for arg in argv if re.match(rf"^--?{CONFIG_FLAG}\.", arg)]


def load_config(argument: str):
  """The config of `--config=path[:arg]`, as ml_collections loads it: `get_config(arg)`."""
  path, _, arg = argument.partition(":")
  spec = importlib.util.spec_from_file_location("_config_under_check", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _keys(node) -> list[str]:
  try:
    return list(node.keys())
  except AttributeError:
    return []


def override_problem(argv: Sequence[str], config) -> str | None:
  """The first `--config.` override of `argv` naming a key `config` does not
  have, as one line with the closest key; None when every path exists."""
  for override in _overrides(argv):
    path = override.lstrip("-").split("=", 1)[0].split(".")[1:]
    node, where = config, CONFIG_FLAG
    for key in path:
      keys = _keys(node)
      if key not in keys:
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else (
            f"; its keys: {', '.join(keys)}" if keys else f" ({where} is not a section)")
        return f"{override}: {where} has no key {key!r}{hint}"
      node, where = node[key], f"{where}.{key}"
  return None


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with a config override's error on one line, not a traceback.

  ml_collections resolves `--config.a.b=...` while parsing `--config` and
  raises from deep inside absl; the flag and the closest key are found here
  instead, and the run exits with status 2 (as for any other flag error).
  """
  try:
    return flags.FLAGS(list(argv))
  except flags.Error:
    raise  # absl reports these itself, on one line
  except Exception as error:  # noqa: BLE001  (whatever ml_collections raised)
    if not _overrides(argv):
      raise
    try:
      problem = override_problem(argv, load_config(_config_argument(argv)))
    except Exception:  # noqa: BLE001  (the config file itself is broken: say so below)
      problem = None
    first = str(error).strip().strip("'\"").splitlines()
    print(f"error: {problem or (first[0] if first else type(error).__name__)}", file=sys.stderr)
    sys.exit(2)
