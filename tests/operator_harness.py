"""Runs registered operators on the small real problem of tests/learnable.py.

Shared by the operator test modules: each builds one `Harness` from its
test-time hyper-parameter overrides. Each operator is compiled once and run
once per input set (the methods are cached), as compiling dominates on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import learnable
from hamforget import train, unlearn
from hamforget.data import batches


def assert_trees_equal(a, b):
  """Same structure, and every leaf bitwise equal."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@functools.lru_cache(maxsize=1)
def _predict():
  """Eval-mode logits, compiled once for all tests (the eager path takes seconds)."""
  model = learnable.problem().model
  return jax.jit(lambda variables, images: train.predict(model, variables, images, 256))


def predict(variables, data: batches.DeviceData) -> jax.Array:
  """Logits (N, num_classes) of `variables` on `data`."""
  return _predict()(variables, data.images)


def accuracy(variables, data: batches.DeviceData) -> float:
  return float(jnp.mean(jnp.argmax(predict(variables, data), -1) == data.labels))


def agreement(variables_a, variables_b, data: batches.DeviceData) -> float:
  """Fraction of `data` on which the two models predict the same class."""
  return float(jnp.mean(jnp.argmax(predict(variables_a, data), -1)
                        == jnp.argmax(predict(variables_b, data), -1)))


class Harness:
  """Class-0 forgetting on the learnable problem, with per-operator overrides."""

  def __init__(self, overrides: dict[str, dict]):
    self.overrides = overrides

  @functools.cache
  def config(self, name: str):
    problem = learnable.problem()
    return unlearn.get(name).make_config(self.overrides[name], problem.config.train,
                                         problem.config.augment)

  def access(self, name: str, forget: batches.DeviceData | None = None,
             rng: jax.Array = jax.random.key(100)) -> unlearn.Access:
    """What the runner would hand operator `name` (forget: the problem's by default)."""
    problem = learnable.problem()
    return unlearn.make_access(
        unlearn.get(name), retain=problem.retain,
        forget=problem.forget if forget is None else forget, val=problem.val,
        forget_classes=[learnable.FORGET_CLASS], num_classes=learnable.NUM_CLASSES,
        image_shape=problem.retain.images.shape[1:], rng=rng,
        retain_subset_fraction=self.config(name).get("retain_subset_fraction", 0.0))

  def hyper(self, name: str) -> dict:
    """The operator's traced hyper-parameters as the runner passes them (float32 scalars)."""
    return unlearn.get(name).split_config(self.config(name))[1]

  @functools.cache
  def jitted(self, name: str):
    """(variables, access, rng, hyper=None) -> (new variables, info), jitted as
    the runner does it: the traced hyper-parameters are arguments (None: the
    config's own values)."""
    op, problem = unlearn.get(name), learnable.problem()
    static, default_hyper = op.split_config(self.config(name))
    jitted = jax.jit(lambda variables, access, rng, hyper: op.fn(
        problem.model, variables, access, problem.request, unlearn.join_config(static, hyper),
        rng))
    return lambda variables, access, rng, hyper=None: jitted(
        variables, access, rng, default_hyper if hyper is None else hyper)

  @functools.cache
  def run(self, name: str):
    """(access, copy of the inputs before, new variables, info) with key 0."""
    problem = learnable.problem()
    access = self.access(name)
    rng = jax.random.key(0)
    before = jax.tree.map(np.array, (problem.variables, access, jax.random.key_data(rng)))
    new_variables, info = self.jitted(name)(problem.variables, access, rng)
    return access, before, new_variables, info

  def check_deterministic_and_inputs_untouched(self, name: str):
    """A second run gives bitwise the same output; the inputs are unchanged."""
    access, before, new_variables, info = self.run(name)
    problem = learnable.problem()
    again = self.jitted(name)(problem.variables, access, jax.random.key(0))
    assert_trees_equal((new_variables, info), again)
    assert_trees_equal(before, jax.tree.map(
        np.asarray, (problem.variables, access, jax.random.key_data(jax.random.key(0)))))

  def check_vmap_matches_separate(self, name: str, accesses, rngs, hypers=None):
    """vmap over (access, rng, hyper) triples gives what separate calls give
    (hypers: traced hyper-parameter dicts, the config's own by default).

    Batched convolutions sum in another order; over a run, gradient ascent
    and Adam's sign-like steps amplify that 1e-7 drift, most in near-dead
    channels and near-zero BatchNorm biases (to ~1e-2 of such a leaf's norm
    after the dozens of steps of a short run, to percents of the weights over
    a full one). So callers pass a harness with short runs, and the models are
    compared by what they compute: logits on the test split within 1% in
    relative L2 norm, and loss curves within 1%. A member given another's data
    or key is off by O(1)."""
    problem = learnable.problem()
    hypers = hypers or [self.hyper(name)] * len(accesses)
    separate = [self.jitted(name)(problem.variables, a, r, h)
                for a, r, h in zip(accesses, rngs, hypers)]
    stack = lambda *xs: jnp.stack(xs)
    batched = jax.jit(jax.vmap(self.jitted(name), in_axes=(None, 0, 0, 0)))(
        problem.variables, jax.tree.map(stack, *accesses), jnp.stack(rngs),
        jax.tree.map(stack, *hypers))
    relative = lambda x, y: float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y))
    for i, (variables, info) in enumerate(separate):
      member_variables, member_info = jax.tree.map(lambda x: x[i], batched)
      error = relative(predict(member_variables, problem.test), predict(variables, problem.test))
      assert error < 1e-2, f"{name}: member {i} logits differ by {error:.2e}"
      error = relative(member_info["loss"], info["loss"])
      assert error < 1e-2, f"{name}: member {i} loss curves differ by {error:.2e}"
    # The members really differ, so the comparison is not vacuous.
    assert relative(separate[0][1]["loss"], separate[1][1]["loss"]) > 1e-2

  def check_finite_and_reported(self, name: str):
    """The output has the input's structure, finite leaves, and the info keys."""
    _, _, new_variables, info = self.run(name)
    problem = learnable.problem()
    assert jax.tree.structure(new_variables) == jax.tree.structure(problem.variables)
    for key in ("steps", "examples_seen", "loss"):
      assert key in info, f"{name} info lacks {key}"
    assert int(info["steps"]) > 0
    assert np.all(np.isfinite(np.asarray(info["loss"])))
    for leaf in jax.tree.leaves(new_variables):
      assert np.all(np.isfinite(np.asarray(leaf)))
