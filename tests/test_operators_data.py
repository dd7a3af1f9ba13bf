"""Operators that train on data (neggrad_plus, random_label, salun, l1_sparse,
bad_teacher, scrub) on a small real problem (tests/learnable.py): they compile
under jit, are deterministic, leave their inputs alone, forget class 0 while
keeping the rest, and batch under vmap.

Each operator is compiled once and run once per input set (tests/operator_harness.py);
the overrides only shrink batches and stretch epochs to the 8x8 problem's 566
retain and 135 forget examples.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learnable
import operator_harness
from hamforget import sharding, train, unlearn
from hamforget.data import batches

# Test-time overrides: the defaults are sized for MNIST (3,600 retain, 400
# forget); here the splits are 6x smaller, so batches shrink and epochs grow.
OVERRIDES = {
    "neggrad_plus": {"batch_size": 32, "forget_batch_size": 16, "num_epochs": 4.0,
                     "learning_rate": 0.03},
    "random_label": {"batch_size": 32, "forget_batch_size": 16, "num_epochs": 2.0},
    "salun": {"batch_size": 32, "forget_batch_size": 16, "num_epochs": 2.0},
    # 177 steps, the first 66 penalised: gamma 1e-2 keeps the paper's L1
    # integral lr * gamma * T_penalised / 2 ~0.01 (at the default 5e-3
    # forgetting is seed-dependent); the rest recover the retained classes.
    "l1_sparse": {"batch_size": 32, "num_epochs": 10.0, "gamma": 1e-2},
    "bad_teacher": {"num_epochs": 8.0, "learning_rate": 1e-3},
    "scrub": {"batch_size": 32, "forget_batch_size": 16, "learning_rate": 2e-3},
}
OPERATORS = sorted(OVERRIDES)


harness = operator_harness.Harness(OVERRIDES)
# A few steps each, for comparisons to float precision (see check_vmap_matches_separate).
short = operator_harness.Harness({
    "neggrad_plus": {**OVERRIDES["neggrad_plus"], "num_epochs": 0.25},
    "scrub": {**OVERRIDES["scrub"], "num_epochs": 1, "min_steps": 4, "forget_batch_size": 64},
    "retrain": {},
})


def _true_class_probability(variables, data):
  probs = jax.nn.softmax(operator_harness.predict(variables, data))
  return float(jnp.mean(jnp.take_along_axis(probs, data.labels[:, None], -1)))


@pytest.mark.parametrize("name", OPERATORS)
def test_runs_under_jit_and_reports(name):
  harness.check_finite_and_reported(name)
  _, _, _, info = harness.run(name)
  assert int(info["examples_seen"]) > 0
  assert info["loss"].shape == (int(info["steps"]),)


@pytest.mark.parametrize("name", OPERATORS)
def test_deterministic_and_inputs_untouched(name):
  harness.check_deterministic_and_inputs_untouched(name)


@pytest.mark.parametrize("name", OPERATORS)
def test_forgets_class_and_keeps_the_rest(name):
  problem = learnable.problem()
  _, _, new_variables, _ = harness.run(name)
  assert operator_harness.accuracy(problem.variables, problem.forget) > 0.95  # it knows it
  retain_accuracy = operator_harness.accuracy(new_variables, problem.retain)
  assert retain_accuracy > 0.8, f"{name}: retain accuracy {retain_accuracy:.3f}"
  if name == "bad_teacher":
    # The incompetent teacher is a random network: its predictions are nearly
    # uniform, with an argmax that is one arbitrary class for every input. The
    # student copies that distribution, so the forget *accuracy* is the toss of
    # near-equal logits; what falls is the confidence in the true class.
    confidence = _true_class_probability(new_variables, problem.forget)
    assert confidence < 0.5, f"{name}: p(true class) on forget {confidence:.3f}"
  else:
    forget_accuracy = operator_harness.accuracy(new_variables, problem.forget)
    assert forget_accuracy < 0.2, f"{name}: forget accuracy {forget_accuracy:.3f}"


def test_salun_moves_only_salient_weights():
  problem = learnable.problem()
  _, _, new_variables, info = harness.run("salun")
  changed = [np.asarray(new) != np.asarray(old) for new, old in zip(
      jax.tree.leaves(new_variables["params"]), jax.tree.leaves(problem.variables["params"]))]
  fraction = sum(c.sum() for c in changed) / sum(c.size for c in changed)
  ratio = harness.config("salun").saliency_ratio
  assert 0.0 < float(info["mask_fraction"]) <= ratio + 1e-6
  assert 0.0 < fraction <= float(info["mask_fraction"]) + 1e-6


def test_l1_penalty_decays_to_zero_over_its_fraction_of_the_steps():
  _, _, _, info = harness.run("l1_sparse")
  weight = np.asarray(info["l1_weight"])
  config = harness.config("l1_sparse")
  penalized = config.penalty_fraction * weight.size
  assert 0 < config.penalty_fraction < 1  # the defaults end with penalty-free steps
  np.testing.assert_allclose(weight[0], config.gamma)
  assert np.all(np.diff(weight) <= 0)
  assert np.all(weight[int(np.ceil(penalized)):] == 0) and weight[int(penalized) - 1] > 0


def test_l1_penalty_fraction_outside_its_range_is_an_error():
  empty = operator_harness.Harness({"l1_sparse": {**OVERRIDES["l1_sparse"],
                                                  "penalty_fraction": 0.0}})
  with pytest.raises(ValueError, match=r"penalty_fraction 0.0: expected a share .* \(0, 1\]"):
    empty.run("l1_sparse")


@pytest.mark.parametrize("name", ["neggrad_plus", "scrub"])
def test_vmap_over_requests_matches_separate_runs(name):
  """Two forget requests of one size (class 0, and class 0 in reverse order)
  and two keys, batched with vmap, give what two separate calls give."""
  forget = learnable.problem().forget
  reverse = batches.DeviceData(forget.images[::-1], forget.labels[::-1])
  short.check_vmap_matches_separate(
      name, [short.access(name), short.access(name, forget=reverse)],
      [jax.random.key(0), jax.random.key(1)])


@pytest.mark.parametrize("name", ["neggrad_plus", "scrub"])
def test_vmap_over_learning_rates_matches_separate_runs(name):
  """Learning rates are traced arguments: two of them, batched with vmap in
  one program (one compilation), give what two separate calls give."""
  hyper = short.hyper(name)
  faster = {**hyper, "learning_rate": hyper["learning_rate"] * 3}
  access = short.access(name)
  short.check_vmap_matches_separate(name, [access, access],
                                    [jax.random.key(0), jax.random.key(0)], [hyper, faster])


def test_a_new_learning_rate_compiles_no_new_program():
  """The lowered program does not depend on a traced hyper-parameter's value
  (so JAX's caches, in memory and on disk, serve every value of a grid);
  the test above shows the value reaches the computation."""
  problem, name = learnable.problem(), "neggrad_plus"
  op = unlearn.get(name)
  static, hyper = op.split_config(short.config(name))
  assert {"learning_rate", "alpha", "momentum", "weight_decay"} <= set(hyper)
  assert "num_epochs" not in hyper  # a step count stays static
  fn = jax.jit(lambda variables, access, rng, hyper: op.fn(
      problem.model, variables, access, problem.request, unlearn.join_config(static, hyper), rng))
  access = short.access(name)
  lower = lambda hyper: fn.lower(problem.variables, access, jax.random.key(0), hyper).as_text()
  assert lower(hyper) == lower({**hyper, "learning_rate": jnp.float32(0.5)})


def test_retrain_on_8_devices_matches_one():
  """The gold standard does not depend on the device count: retrain with its
  batches sharded over 8 virtual devices computes what it computes on one."""
  assert jax.device_count() == 8, "conftest asks for 8 virtual CPU devices"
  problem = learnable.problem()
  # One epoch (9 steps): the sharded batches sum in another order, and over
  # the original recipe's 72 SGD steps that drift grows chaotically (1.5e-2
  # to 8e-2 of the logits, by machine). Over 9 steps it stays within 1e-2;
  # a wrong shard or per-device BatchNorm statistics are not held to that.
  one_epoch = problem.config.train.to_dict() | {"num_epochs": 1}
  config = unlearn.get("retrain").make_config({}, one_epoch, problem.config.augment)
  retrain = jax.jit(lambda variables, access, rng: unlearn.get("retrain").fn(
      problem.model, variables, access, problem.request, config, rng))
  access = short.access("retrain")
  single, single_info = retrain(problem.variables, access, jax.random.key(0))
  mesh = sharding.make_mesh(8)
  with jax.set_mesh(mesh):
    sharded, sharded_info = retrain(sharding.replicate(problem.variables, mesh),
                                    sharding.replicate(access, mesh), jax.random.key(0))
    sharded, sharded_info = jax.device_get((sharded, sharded_info))
  relative = lambda x, y: float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y))
  reference = operator_harness.predict(single, problem.test)
  error = relative(operator_harness.predict(sharded, problem.test), reference)
  assert error < 1e-2, f"retrain on 8 devices: logits differ by {error:.2e}"
  error = relative(sharded_info["train_loss"], single_info["train_loss"])
  assert error < 1e-2, f"retrain on 8 devices: epoch losses differ by {error:.2e}"
