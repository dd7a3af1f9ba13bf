"""Populations: a model rerun over many seeds, for the NeurIPS 2023 challenge score.

One program per operator, called once per group of `population_batch` seeds
(vmapped within the group; on CPU one seed a call, on accelerators every seed
in one call): between calls the progress bar moves, so a population that
trains for many minutes says how far it is.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from hamforget import operators, progress, sharding
from hamforget.data.prepare import ExperimentData
from hamforget.store import ModelStore, model_fingerprint


def population_batch(batch: int, size: int, platform: str) -> int:
  """Seeds per vmap of a population of `size`: `batch`, or 0's platform default."""
  if batch < 0:
    raise ValueError(f"evaluate.population_batch={batch}: expected 0 (auto) or a positive count")
  if batch == 0:
    batch = 1 if platform == "cpu" else size
  return min(batch, size)


def population_size(config, name: str, reference: str = "retrain") -> int:
  """Seeds of `name`'s population: M = `evaluate.challenge_population`, 2M for the reference.

  The reference's two halves are the challenge's reference population and a
  population scored against it like an operator's (`suite.pair_populations`),
  so every row is scored M against M.
  """
  size = config.evaluate.challenge_population
  return 2 * size if name == reference else size


def build_populations(config, model, original, data: ExperimentData, names, rng,
                      store: ModelStore | None = None, remake: bool = False,
                      reference: str = "retrain") -> dict:
  """Each model of `names` rerun with `population_size` seeds (2M for `reference`).

  A finished population is saved to `store` (as `population_<name>`) and
  reused by a restarted run of the same config, unless `remake` (a new
  original). Returns name -> variables stacked over a leading axis of seeds.
  """
  populations = {}
  for name in names:
    size = population_size(config, name, reference)
    batch = population_batch(config.evaluate.population_batch, size, jax.default_backend())
    like = jax.tree.map(
        lambda x, size=size: jax.ShapeDtypeStruct((size, *x.shape), x.dtype,
                                                  sharding=x.sharding), original)
    key = f"population_{name}"
    fingerprint = f"{model_fingerprint(config, name, data.fingerprint)}-{size}"
    finished = None if store is None or remake else store.load(key, like, fingerprint)
    if finished is not None:
      populations[name] = finished[0]
      continue
    access_rng, op_rng = jax.random.split(operators.operator_rng(rng, name))
    fn, access, hyper = operators.bind(name, config, model, data, access_rng)

    def group(variables, access, keys, hyper, fn=fn):
      """The runs of `batch` seeds (keys (batch,)), stacked: vmapped, or one run as is."""
      if batch == 1:
        return jax.tree.map(lambda x: x[None], fn(variables, access, keys[0], hyper)[0])
      return jax.vmap(lambda key: fn(variables, access, key, hyper)[0])(keys)

    run_group = jax.jit(group, out_shardings=sharding.replicated())
    # Whole groups only (one program): a last, partial group is padded with
    # copies of the last seed, whose runs are dropped.
    keys = jax.random.split(op_rng, size)
    keys = keys[jnp.minimum(jnp.arange(-(-size // batch) * batch), size - 1)]
    progress.say(f"population of {size} x {name} ({batch} at a time) ...")
    bar = progress.bar(size, f"population {name}", unit="seeds")
    start = time.perf_counter()
    groups = []
    for first in range(0, size, batch):
      groups.append(jax.block_until_ready(
          run_group(original, access, keys[first:first + batch], hyper)))
      bar.update(min(batch, size - first))
    bar.close()
    populations[name] = groups[0] if len(groups) == 1 and batch == size else jax.tree.map(
        lambda *xs: jnp.concatenate(xs)[:size], *groups)
    seconds = time.perf_counter() - start
    progress.say(f"population of {size} x {name}: {seconds:.0f} s (compile included)")
    if store is not None:
      store.save(key, populations[name], {"wall_s": seconds, "size": size,
                                          "fingerprint": fingerprint})
  return populations
