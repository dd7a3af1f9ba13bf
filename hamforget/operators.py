"""Running registered unlearning operators on an experiment's data.

The runner's side of the operator contract (`hamforget.unlearn.base`): hand an
operator exactly the data it declared, give it a key derived from its name,
jit it whole with replicated outputs, and time compilation and execution apart.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hamforget import sharding, train, unlearn
from hamforget.unlearn import catalog
from hamforget.data.prepare import ExperimentData


def operator_rng(rng: jax.Array, name: str) -> jax.Array:
  """The operator's key: from its name, so adding or reordering methods
  changes no other operator's result."""
  return jax.random.fold_in(rng, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def bind(name: str, config: ml_collections.ConfigDict, model, data: ExperimentData, rng):
  """(fn, access, hyper) for operator `name`: fn of (variables, access, rng,
  hyper) -> (variables, info), the Access it is handed and its traced
  hyper-parameters (`Operator.traced_keys`: name -> float32 scalar).

  The data and the traced hyper-parameters reach the function as arguments,
  not closed over: captured values would be baked into the program as
  constants, and a new learning rate would compile a new program.
  """
  operator = unlearn.get(name)
  if data.request.kind not in operator.request_kinds:
    raise ValueError(f"operator {name!r} cannot serve a {data.request.kind!r} forget request: "
                     f"it forgets {' or '.join(operator.request_kinds)} only")
  op_config = operator.make_config(config.unlearn.get(name), config.train, config.augment)
  access = unlearn.make_access(
      operator, retain=data.device["retain"], forget=data.device["forget"],
      val=data.device["unlearn_val"], probe=data.device["val"],
      forget_classes=list(data.request.classes),
      num_classes=data.num_classes, image_shape=data.image_shape, rng=rng,
      retain_subset_fraction=op_config.get("retain_subset_fraction", 0.0))
  static, hyper = operator.split_config(op_config)

  def fn(variables, access, rng, hyper):
    return operator.fn(model, variables, access, data.request, unlearn.join_config(static, hyper),
                       rng)

  # The program's name in compile logs and timings.json: jit(scrub), not jit(fn).
  fn.__name__ = fn.__qualname__ = name
  return fn, access, hyper


# The compiled programs of this process, by everything that makes one. A
# grid's runs (another learning rate; another seed or request of the same
# shapes) trace and lower an operator once, not once per run: JAX's
# persistent cache spares only XLA's part, and a fresh closure per run
# defeats jit's own cache.
_PROGRAMS: dict[tuple, Any] = {}


def _signature(tree) -> tuple:
  """Structure, shapes, dtypes and shardings of a pytree's leaves: what a jit specialises on."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x))),
                         getattr(x, "sharding", None)) for x in leaves)


def _compiled(name: str, static, model, data: ExperimentData, fn, *args):
  """(compiled `jax.jit(fn)` for `args`, seconds spent compiling: 0 when reused).

  `fn` must close over nothing but operator `name`, its `static` config,
  `model` and `data.request` (what `bind` gives it): the key is those, the
  arguments' signature and the mesh in context.
  """
  key = (name, json.dumps(static, sort_keys=True, default=str), repr(model), repr(data.request),
         _signature(args), repr(jax.sharding.get_abstract_mesh()))
  if key in _PROGRAMS:
    return _PROGRAMS[key], 0.0
  start = time.perf_counter()
  compiled = jax.jit(fn, out_shardings=sharding.replicated()).lower(*args).compile()
  _PROGRAMS[key] = compiled
  return compiled, time.perf_counter() - start


def run_operator(name: str, config, model, variables, data: ExperimentData, rng):
  """Runs one registered operator, jitted whole; returns (variables, info, timings).

  `compile_s` and `work_s` (execution only) are timed apart: compilation is
  paid once per shape, not per run of a grid.

  Raises:
    train.DivergedError: the operator's loss curve in `info` is not finite.
  """
  access_rng, op_rng = jax.random.split(rng)
  fn, access, hyper = bind(name, config, model, data, access_rng)
  compiled, compile_s = _compiled(name, _config_halves(name, config)[0], model, data, fn,
                                  variables, access, op_rng, hyper)
  start = time.perf_counter()
  new_variables, info = jax.block_until_ready(compiled(variables, access, op_rng, hyper))
  work_s = time.perf_counter() - start
  train.check_info_losses(name, info)  # before a broken model is stored and evaluated
  return new_variables, info, {"work_s": work_s, "compile_s": compile_s}


def run_operator_batch(name: str, configs, model, variables, data: ExperimentData, rng):
  """`run_operator` for runs that differ only in `name`'s traced hyper-parameters.

  One program, `jax.vmap` over the stacked hyper-parameters: one compilation
  and one pass over the data advance every run (what a grid of learning rates
  or loss weights costs on an accelerator, which has the width for it). The
  variables, data and key are shared: every run starts from the same
  original, as its own run would.

  Args:
    configs: the runs' experiment configs; equal but for `unlearn.<name>`'s
      traced keys (`Operator.traced_keys`).

  Returns:
    One (variables, info, timings) per config, in order; `timings` are the
    batch's seconds shared out equally, with `batched_runs` the batch size.

  Raises:
    ValueError: the configs differ in more than traced hyper-parameters.
    train.DivergedError: a run's loss curve is not finite.
  """
  access_rng, op_rng = jax.random.split(rng)
  fn, access, _ = bind(name, configs[0], model, data, access_rng)
  halves = [_config_halves(name, c) for c in configs]
  if any(static != halves[0][0] for static, _ in halves):
    raise ValueError(f"a batch of {name!r} runs may differ only in its traced keys "
                     f"{unlearn.get(name).traced_keys}")
  hypers = jax.tree.map(lambda *values: jnp.stack(values), *[hyper for _, hyper in halves])
  batched = jax.vmap(fn, in_axes=(None, None, None, 0))
  compiled, compile_s = _compiled(f"{name} (vmapped)", halves[0][0], model, data, batched,
                                  variables, access, op_rng, hypers)
  start = time.perf_counter()
  new_variables, info = jax.block_until_ready(compiled(variables, access, op_rng, hypers))
  work_s = time.perf_counter() - start
  timings = {"work_s": work_s / len(configs), "compile_s": compile_s / len(configs),
             "batched_runs": len(configs)}
  outputs = []
  for i in range(len(configs)):
    run_variables, run_info = jax.tree.map(lambda x, i=i: x[i], (new_variables, info))
    train.check_info_losses(name, run_info)
    outputs.append((run_variables, run_info, timings))
  return outputs


def _config_halves(name: str, config) -> tuple[dict, dict]:
  """Operator `name`'s config in `config` as (static: baked into its program,
  traced: float32 arguments), `Operator.split_config`."""
  operator = unlearn.get(name)
  return operator.split_config(operator.make_config(
      config.unlearn.get(name), config.train, config.augment))


def batch_key(config) -> str | None:
  """What runs batchable with `run_operator_batch` share: the config without
  its one operator's traced hyper-parameters; None for a config that runs
  several operators (or SISA, which trains its own ensemble)."""
  methods = [m for m in catalog.method_names(config) if m != "retrain"]
  if len(methods) != 1 or methods[0] == "sisa":
    return None
  name = methods[0]
  flat = config.to_dict()
  section = dict(flat["unlearn"].get(name) or {})
  for key in unlearn.get(name).traced_keys:
    section.pop(key, None)
  flat["unlearn"] = {**flat["unlearn"], name: section}
  return json.dumps(flat, sort_keys=True, default=str)
