"""The noise and generator operators: unsir (impair-repair with a retain
subset), emmn and gkt (zero-shot) on a small real problem (tests/learnable.py).

They compile under jit, are deterministic, leave their inputs alone, forget
class 0 while keeping the rest, and the zero-shot ones run on an Access that
holds no training example at all. Each operator is compiled once and run once
(`_run` is cached).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learnable
from hamforget import unlearn
from hamforget.unlearn import base, emmn

# Test-time overrides. The defaults are sized for MNIST (3,600 retain images,
# 28x28); the 8x8 problem has 566 retain images, so unsir's subset fraction
# grows to keep a few hundred of them, and gkt runs fewer, smaller iterations.
OVERRIDES = {
    "unsir": {"retain_subset_fraction": 0.5, "noise_per_class": 64},
    "emmn": {},
    "gkt": {"num_iterations": 40, "batch_size": 128},
}
OPERATORS = sorted(OVERRIDES)
ZERO_SHOT = ["emmn", "gkt"]
# Retain accuracy the unlearned model must keep (the original has ~1.0; chance 0.2).
MIN_RETAIN_ACCURACY = {"unsir": 0.8, "emmn": 0.6, "gkt": 0.6}


@functools.lru_cache(maxsize=None)
def _config(name):
  problem = learnable.problem()
  return unlearn.get(name).make_config(OVERRIDES[name], problem.config.train,
                                       problem.config.augment)


def _access(name, rng=jax.random.key(100)):
  op, problem = unlearn.get(name), learnable.problem()
  return unlearn.make_access(
      op, retain=problem.retain, forget=problem.forget, val=problem.val, forget_classes=[0],
      num_classes=learnable.NUM_CLASSES, image_shape=(8, 8, 1), rng=rng,
      retain_subset_fraction=_config(name).get("retain_subset_fraction", 0.0))


@functools.lru_cache(maxsize=None)
def _jitted(name):
  op, problem, config = unlearn.get(name), learnable.problem(), _config(name)
  return jax.jit(lambda variables, access, rng: op.fn(
      problem.model, variables, access, problem.request, config, rng))


@functools.lru_cache(maxsize=None)
def _run(name):
  """(access, copy of the inputs before, output, info) for class-0 forgetting."""
  problem = learnable.problem()
  access = _access(name)
  rng = jax.random.key(0)
  before = jax.tree.map(np.array, (problem.variables, access, jax.random.key_data(rng)))
  new_variables, info = _jitted(name)(problem.variables, access, rng)
  return access, before, new_variables, info


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", OPERATORS)
def test_runs_under_jit_and_reports(name):
  _, _, new_variables, info = _run(name)
  problem = learnable.problem()
  assert jax.tree.structure(new_variables) == jax.tree.structure(problem.variables)
  for key in ("steps", "examples_seen", "loss"):
    assert key in info, f"{name} info lacks {key}"
  assert int(info["steps"]) > 0
  assert np.all(np.isfinite(np.asarray(info["loss"])))
  for leaf in jax.tree.leaves(new_variables):
    assert np.all(np.isfinite(np.asarray(leaf)))
  if name == "unsir":
    # Real images: subset examples in the impair and repair batches.
    assert 0 < int(info["examples_seen"]) <= int(info["steps"]) * _config(name).batch_size
    assert int(info["noise_samples"]) == _config(name).noise_per_class
  else:
    assert int(info["examples_seen"]) == 0


@pytest.mark.parametrize("name", OPERATORS)
def test_deterministic_and_inputs_untouched(name):
  access, before, new_variables, info = _run(name)
  problem = learnable.problem()
  again = _jitted(name)(problem.variables, access, jax.random.key(0))
  _assert_trees_equal((new_variables, info), again)
  _assert_trees_equal(before, jax.tree.map(
      np.asarray, (problem.variables, access, jax.random.key_data(jax.random.key(0)))))


@pytest.mark.parametrize("name", OPERATORS)
def test_forgets_class_and_keeps_the_rest(name):
  problem = learnable.problem()
  _, _, new_variables, _ = _run(name)
  assert problem.accuracy(problem.variables, problem.forget) > 0.95  # the original knows it
  forget_accuracy = problem.accuracy(new_variables, problem.forget)
  retain_accuracy = problem.accuracy(new_variables, problem.retain)
  assert forget_accuracy < 0.2, f"{name}: forget accuracy {forget_accuracy:.3f}"
  assert retain_accuracy > MIN_RETAIN_ACCURACY[name], (
      f"{name}: retain accuracy {retain_accuracy:.3f}")


@pytest.mark.parametrize("name", ZERO_SHOT)
def test_zero_shot_operators_get_no_data(name):
  """The runner's Access holds no example for a zero-shot operator, so an
  operator that reached for one would fail: its run (above, on this very
  Access) proves it never does."""
  op = unlearn.get(name)
  assert op.zero_shot and op.needs == frozenset()
  access = _access(name)
  for field in ("retain", "forget", "retain_subset", "val"):
    assert getattr(access, field) is None
    with pytest.raises(PermissionError, match="did not declare"):
      access.require(field)
  # Nothing in the Access but the forget classes: no array there holds an image.
  leaves = jax.tree.leaves(access)
  assert len(leaves) == 1 and leaves[0].shape == (1,)
  _, _, new_variables, _ = _run(name)  # ran on this Access
  assert jax.tree.leaves(new_variables)


def test_unsir_needs_its_subset():
  access = _access("unsir")
  assert access.retain is None and access.forget is None and access.val is None
  assert access.retain_subset.size == round(0.5 * learnable.problem().retain.size)
  problem = learnable.problem()
  no_subset = access.replace(retain_subset=None)
  with pytest.raises(PermissionError, match="retain_subset"):
    unlearn.get("unsir").fn(problem.model, problem.variables, no_subset, problem.request,
                            _config("unsir"), jax.random.key(0))


@pytest.mark.parametrize("name", OPERATORS)
def test_class_request_required(name):
  problem = learnable.problem()
  access = _access(name).replace(forget_classes=jnp.zeros((0,), jnp.int32))
  with pytest.raises(ValueError, match="class forget request"):
    unlearn.get(name).fn(problem.model, problem.variables, access, problem.request,
                         _config(name), jax.random.key(0))


def test_retained_classes_are_static_and_sorted():
  split = jax.jit(emmn.class_split, static_argnums=1)
  np.testing.assert_array_equal(split(jnp.array([3, 0], jnp.int32), 5), [1, 2, 4])
  batched = jax.vmap(emmn.class_split, in_axes=(0, None))(jnp.array([[0], [4]], jnp.int32), 5)
  np.testing.assert_array_equal(batched, [[1, 2, 3, 4], [0, 1, 2, 3]])


def test_unsir_vmap_over_keys_matches_separate_runs():
  problem = learnable.problem()
  access = _access("unsir")
  rngs = [jax.random.key(0), jax.random.key(1)]
  separate = [_jitted("unsir")(problem.variables, access, r) for r in rngs]
  batched = jax.jit(jax.vmap(_jitted("unsir"), in_axes=(None, None, 0)))(
      problem.variables, access, jnp.stack(rngs))
  for i, (variables, info) in enumerate(separate):
    member = jax.tree.map(lambda x: x[i], batched)
    for x, y in zip(jax.tree.leaves(member[0]), jax.tree.leaves(variables)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(member[1]["loss"]), np.asarray(info["loss"]),
                               rtol=1e-3, atol=1e-4)
  assert not np.allclose(np.asarray(separate[0][1]["loss"]), np.asarray(separate[1][1]["loss"]))
