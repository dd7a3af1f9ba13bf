"""Operators that train on data (neggrad_plus, random_label, salun, l1_sparse,
bad_teacher, scrub) on a small real problem (tests/learnable.py): they compile
under jit, are deterministic, leave their inputs alone, forget class 0 while
keeping the rest, and batch under vmap.

Each operator is compiled once and run once per input set (`_run` is cached);
the overrides only shrink batches and stretch epochs to the 8x8 problem's 566
retain and 135 forget examples.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learnable
from hamforget import train, unlearn

# Test-time overrides: the defaults are sized for MNIST (3,600 retain, 400
# forget); here the splits are 6x smaller, so batches shrink and epochs grow.
OVERRIDES = {
    "neggrad_plus": {"batch_size": 32, "forget_batch_size": 16, "num_epochs": 4.0,
                     "learning_rate": 0.03},
    "random_label": {"batch_size": 32, "forget_batch_size": 16, "num_epochs": 2.0},
    "salun": {"batch_size": 32, "forget_batch_size": 16, "num_epochs": 2.0},
    "l1_sparse": {"batch_size": 32, "num_epochs": 4.0},
    "bad_teacher": {"num_epochs": 8.0, "learning_rate": 1e-3},
    "scrub": {"batch_size": 32, "forget_batch_size": 16, "learning_rate": 2e-3},
}
OPERATORS = sorted(OVERRIDES)


def _access(op, problem, forget, rng):
  config = _config(op.name)
  return unlearn.make_access(
      op, retain=problem.retain, forget=forget, val=problem.val, forget_classes=[0],
      num_classes=learnable.NUM_CLASSES, image_shape=(8, 8, 1), rng=rng,
      retain_subset_fraction=config.get("retain_subset_fraction", 0.0))


@functools.lru_cache(maxsize=None)
def _config(name):
  problem = learnable.problem()
  return unlearn.get(name).make_config(OVERRIDES[name], problem.config.train,
                                       problem.config.augment)


@functools.lru_cache(maxsize=None)
def _jitted(name):
  op, problem, config = unlearn.get(name), learnable.problem(), _config(name)
  return jax.jit(lambda variables, access, rng: op.fn(
      problem.model, variables, access, problem.request, config, rng))


@functools.lru_cache(maxsize=None)
def _run(name, seed=0):
  """(access, copy of the inputs before, output, info) for class-0 forgetting."""
  op, problem = unlearn.get(name), learnable.problem()
  access = _access(op, problem, problem.forget, jax.random.key(100))
  rng = jax.random.key(seed)
  before = jax.tree.map(np.array, (problem.variables, access, jax.random.key_data(rng)))
  new_variables, info = _jitted(name)(problem.variables, access, rng)
  return access, before, new_variables, info


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@functools.lru_cache(maxsize=None)
def _predict():
  """Eval-mode logits, compiled once for all tests (the eager path takes seconds)."""
  model = learnable.problem().model
  return jax.jit(lambda variables, images: train.predict(model, variables, images, 256))


def _accuracy(variables, data):
  logits = _predict()(variables, data.images)
  return float(jnp.mean(jnp.argmax(logits, -1) == data.labels))


def _true_class_probability(variables, data):
  probs = jax.nn.softmax(_predict()(variables, data.images))
  return float(jnp.mean(jnp.take_along_axis(probs, data.labels[:, None], -1)))


@pytest.mark.parametrize("name", OPERATORS)
def test_runs_under_jit_and_reports(name):
  _, _, new_variables, info = _run(name)
  problem = learnable.problem()
  assert jax.tree.structure(new_variables) == jax.tree.structure(problem.variables)
  for key in ("steps", "examples_seen", "loss"):
    assert key in info, f"{name} info lacks {key}"
  assert int(info["steps"]) > 0 and int(info["examples_seen"]) > 0
  assert info["loss"].shape == (int(info["steps"]),)
  assert np.all(np.isfinite(np.asarray(info["loss"])))
  for leaf in jax.tree.leaves(new_variables):
    assert np.all(np.isfinite(np.asarray(leaf)))


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
  assert _accuracy(problem.variables, problem.forget) > 0.95  # the original knows it
  retain_accuracy = _accuracy(new_variables, problem.retain)
  assert retain_accuracy > 0.8, f"{name}: retain accuracy {retain_accuracy:.3f}"
  if name == "bad_teacher":
    # The incompetent teacher is a random network: its predictions are nearly
    # uniform, with an argmax that is one arbitrary class for every input. The
    # student copies that distribution, so the forget *accuracy* is the toss of
    # near-equal logits; what falls is the confidence in the true class.
    confidence = _true_class_probability(new_variables, problem.forget)
    assert confidence < 0.5, f"{name}: p(true class) on forget {confidence:.3f}"
  else:
    forget_accuracy = _accuracy(new_variables, problem.forget)
    assert forget_accuracy < 0.2, f"{name}: forget accuracy {forget_accuracy:.3f}"


def test_salun_moves_only_salient_weights():
  problem = learnable.problem()
  _, _, new_variables, info = _run("salun")
  changed = [np.asarray(new) != np.asarray(old) for new, old in zip(
      jax.tree.leaves(new_variables["params"]), jax.tree.leaves(problem.variables["params"]))]
  fraction = sum(c.sum() for c in changed) / sum(c.size for c in changed)
  ratio = _config("salun").saliency_ratio
  assert 0.0 < float(info["mask_fraction"]) <= ratio + 1e-6
  assert 0.0 < fraction <= float(info["mask_fraction"]) + 1e-6


@pytest.mark.parametrize("name", ["neggrad_plus", "scrub"])
def test_vmap_over_requests_matches_separate_runs(name):
  """Two forget requests of one size (class 0, and class 0 in reverse order)
  and two keys, batched with vmap, give what two separate calls give."""
  op, problem = unlearn.get(name), learnable.problem()
  reverse = train.DeviceData(problem.forget.images[::-1], problem.forget.labels[::-1])
  accesses = [_access(op, problem, problem.forget, jax.random.key(100)),
              _access(op, problem, reverse, jax.random.key(100))]
  rngs = [jax.random.key(0), jax.random.key(1)]
  separate = [_jitted(name)(problem.variables, a, r) for a, r in zip(accesses, rngs)]
  stack = lambda *xs: jnp.stack(xs)
  batched = jax.jit(jax.vmap(_jitted(name), in_axes=(None, 0, 0)))(
      problem.variables, jax.tree.map(stack, *accesses), jnp.stack(rngs))
  for i, (variables, info) in enumerate(separate):
    member_variables, member_info = jax.tree.map(lambda x: x[i], batched)
    # The same steps: equal to float precision at first. Batched convolutions
    # sum in another order, and gradient ascent amplifies that 1e-7 drift over
    # the run (to a few % in some weights), so the end is compared by outcome.
    np.testing.assert_allclose(np.asarray(member_info["loss"][:16]),
                               np.asarray(info["loss"][:16]), rtol=1e-4, atol=1e-5)
    for data in (problem.retain, problem.forget):
      agree = jnp.mean(jnp.argmax(_predict()(member_variables, data.images), -1)
                       == jnp.argmax(_predict()(variables, data.images), -1))
      assert float(agree) > 0.97, f"{name}: member {i} predictions agree on {float(agree):.3f}"
  # The two requests really differ, so the comparison is not vacuous.
  assert not np.allclose(np.asarray(separate[0][1]["loss"]), np.asarray(separate[1][1]["loss"]))
