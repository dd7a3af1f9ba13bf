"""Evaluation suite: metrics on cases known by hand, then the whole suite on a trained model."""

import math
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from sklearn import linear_model, metrics as sk_metrics, model_selection

from hamforget.data.forget import ForgetRequest
from hamforget.evaluate import CLASS, METRICS, challenge, metric, metric_names, metrics, suite
from hamforget.evaluate import config as evaluate_config
from hamforget.evaluate import registry, relearn

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------
# Membership attacks.

def test_membership_attack_separates_distinct_losses_and_not_identical_ones():
  rng = np.random.default_rng(0)
  members = rng.normal(0.05, 0.01, 300)
  nonmembers = rng.normal(3.0, 0.3, 300)
  assert metrics.membership_attack(members, nonmembers).mean() > 0.99
  same = rng.exponential(1.0, 1000)
  assert abs(metrics.membership_attack(same, same.copy()).mean() - 0.5) < 0.06


def test_membership_attack_is_the_kits_cross_validation():
  rng = np.random.default_rng(1)
  members, nonmembers = rng.exponential(0.5, 80), rng.exponential(1.0, 80)
  ours = metrics.membership_attack(members, nonmembers, n_splits=10, seed=3)
  samples = np.concatenate([nonmembers, members]).reshape(-1, 1)
  labels = np.array([0] * 80 + [1] * 80)
  theirs = model_selection.cross_val_score(
      linear_model.LogisticRegression(), samples, labels,
      cv=model_selection.StratifiedShuffleSplit(n_splits=10, random_state=3), scoring="accuracy")
  np.testing.assert_array_equal(ours, theirs)


def test_membership_attack_balances_sides_and_refuses_tiny_ones():
  a, b = metrics.balanced_subsample(np.arange(10.0), np.arange(100.0, 130.0), seed=0)
  assert len(a) == len(b) == 10 and np.all(np.diff(b) > 0)
  assert np.all(np.isnan(metrics.membership_attack(np.ones(3), np.zeros(50), n_splits=4)))


def test_entropy_member_rate_follows_confidence():
  rng = np.random.default_rng(2)
  peaky = np.eye(4)[rng.integers(0, 4, 200)] * 12 + rng.normal(0, 0.1, (200, 4))
  flat = rng.normal(0, 0.1, (200, 4))
  assert metrics.entropy_member_rate(peaky, flat, peaky[:50]) == 1.0
  assert metrics.entropy_member_rate(peaky, flat, flat[:50]) == 0.0


# ----------------------------------------------------------------------------
# Accuracies and divergences.

def test_accuracies_per_class_and_balanced():
  labels = np.array([0, 0, 0, 1, 2, 2])
  logits = np.eye(3)[[0, 0, 1, 1, 2, 0]]
  assert metrics.accuracy(logits, labels) == pytest.approx(4 / 6)
  np.testing.assert_allclose(metrics.per_class_accuracy(logits, labels, 4), [2 / 3, 1, 0.5, np.nan])
  assert metrics.balanced_accuracy(logits, labels, 4) == pytest.approx(
      sk_metrics.balanced_accuracy_score(labels, logits.argmax(-1)))
  np.testing.assert_allclose(metrics.per_example_loss(np.zeros((2, 4)), np.array([0, 3])),
                             [math.log(4)] * 2)


def test_js_divergence_bounds_and_zrf():
  p = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
  np.testing.assert_allclose(metrics.js_divergence(p, p), 0.0, atol=1e-15)
  one_hots = np.eye(3)
  np.testing.assert_allclose(metrics.js_divergence(one_hots, np.roll(one_hots, 1, 0)), LN2)
  q = np.random.default_rng(0).dirichlet(np.ones(5), 100)
  r = np.random.default_rng(1).dirichlet(np.ones(5), 100)
  js = metrics.js_divergence(q, r)
  np.testing.assert_allclose(js, metrics.js_divergence(r, q))
  assert np.all((js >= 0) & (js <= LN2))
  logits = np.random.default_rng(2).normal(size=(7, 3))
  assert metrics.zero_retrain_forgetting(logits, logits) == pytest.approx(1.0)
  far = np.array([[50.0, 0.0], [0.0, 50.0]])
  assert metrics.zero_retrain_forgetting(far, far[::-1]) == pytest.approx(1.0 - LN2)


# ----------------------------------------------------------------------------
# Anamnesis Index.

def test_anamnesis_index_from_curves():
  target = 0.95 * 1.0
  unlearned = metrics.steps_to_target([0.1, 0.5, 0.96, 1.0], target)
  retrained = metrics.steps_to_target([0.0, 0.1, 0.2, 0.5, 0.9, 0.96], target)
  assert (unlearned, retrained) == (2.0, 5.0)
  assert metrics.anamnesis_index(unlearned, retrained) == pytest.approx(0.4)
  assert metrics.steps_to_target([0.97, 0.9], target) == 0.0  # met before relearning
  assert math.isnan(metrics.steps_to_target([0.1, 0.2], target))  # budget ran out
  assert math.isnan(metrics.anamnesis_index(3.0, float("nan")))
  assert math.isnan(metrics.anamnesis_index(3.0, 0.0))


# ----------------------------------------------------------------------------
# NeurIPS 2023 challenge score.

def _official_epsilon(pos, neg, delta):
  """The organisers' metric.py (`_get_epsilons` for one example), dense and in numpy."""
  pos_diff, neg_diff = np.ptp(pos), np.ptp(neg)
  if min(pos_diff, neg_diff) / max(pos_diff, neg_diff) < 0.01:
    return challenge.EPSILON_CAP
  # Double-threshold rules around the peakier distribution.
  p, n = (neg, pos) if pos_diff >= neg_diff else (pos, neg)
  width = min(pos_diff, neg_diff)
  low, high = p.min() + width - 2.0, p.max() + 2.0
  rights = np.linspace(low, high, int(np.ceil((high - low) * 100)))
  left = np.concatenate([np.linspace(r - width - 2.0, r - width + 2.0, 400) for r in rights])
  right = np.repeat(rights, 400)
  inside = lambda c: (left[None] <= c[:, None]) & (c[:, None] <= right[None])
  fpr_d, fnr_d = inside(n).mean(0), 1 - inside(p).mean(0)
  # Single-threshold rules.
  everything = np.concatenate([pos, neg])
  t = np.linspace(everything.min(), everything.max(),
                  int(np.ceil((everything.max() - everything.min()) * 100)))
  fpr_s, fnr_s = (neg[:, None] >= t).mean(0), (pos[:, None] < t).mean(0)
  fpr, fnr = np.concatenate([fpr_d, fpr_s]), np.concatenate([fnr_d, fnr_s])
  eps = np.where(fpr + fnr == 0, np.inf, 0.0)
  eps = np.where((eps == 0) & (fpr * fnr == 0), np.nan, eps)
  with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # nanmax of all-NaN columns
    value = np.clip(np.nanmax([np.log(1 - delta - fpr) - np.log(fnr),
                               np.log(1 - delta - fnr) - np.log(fpr)], axis=0), 0, None)
  eps = np.where(eps == 0, value, eps)
  return float(np.clip(np.nanmax(eps[~np.isnan(eps)]), 0, challenge.EPSILON_CAP))


def test_challenge_epsilon_of_rates_by_hand():
  eps = challenge.epsilon_from_rates(np.array([0.1, 0.0, 0.0, 0.5]), np.array([0.2, 0.0, 0.3, 0.5]),
                                     delta=0.0)
  assert eps[0] == pytest.approx(math.log(0.8 / 0.1))  # max(log(.9/.2), log(.8/.1))
  assert eps[1] == np.inf and np.isnan(eps[2]) and eps[3] == 0.0


def test_challenge_epsilons_match_the_organisers_code():
  rng = np.random.default_rng(0)
  for _ in range(6):
    pos = rng.normal(rng.uniform(0, 2), rng.uniform(0.2, 1.5), 7)
    neg = rng.normal(0.0, rng.uniform(0.2, 1.5), 9)
    assert challenge.example_epsilon(pos, neg, 1e-5) == pytest.approx(
        _official_epsilon(pos, neg, 1e-5), abs=1e-12)


def test_challenge_points_and_confidence_by_hand():
  # 512 models: bins of 0.5 up to ceil(ln 511) = 7, so 14 bins earn points.
  assert challenge.num_bins(512) == 14
  assert challenge.forget_quality([0.0, 0.49, 0.6, 6.9, 7.0, 50.0], 512) == pytest.approx(
      (1 + 1 + 0.5 + 0.5 ** 13 + 0 + 0) / 6)
  with pytest.raises(ValueError, match="at least 3"):
    challenge.num_bins(2)
  confidence = challenge.logit_scaled_confidence(np.log([[0.5, 0.25, 0.25], [0.8, 0.1, 0.1]]),
                                                 np.array([0, 1]))
  np.testing.assert_allclose(confidence, [0.0, math.log(0.1 / 0.9)])


def test_challenge_score_of_identical_and_separable_populations():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 30)
  retrained = rng.normal(size=(8, 30, 4))
  ones = np.ones(8)
  same = challenge.challenge_score(retrained, retrained.copy(), labels, ones, ones, ones, ones)
  assert same["forget_quality"] == 1.0 and same["score"] == 1.0
  scaled = challenge.challenge_score(retrained, retrained.copy(), labels, 0.9 * ones, 0.8 * ones,
                                     ones, ones)
  assert scaled["score"] == pytest.approx(0.72)
  memorised = retrained.copy()
  memorised[np.arange(8)[:, None], np.arange(30), labels] += 40.0  # far more confident
  apart = challenge.challenge_score(memorised, retrained, labels, ones, ones, ones, ones)
  assert apart["forget_quality"] == 0.0
  assert np.all(apart["epsilons"] == challenge.EPSILON_CAP)


# ----------------------------------------------------------------------------
# The whole suite on a trained model (tests/learnable.py).

# "Retrained-like" models: the original with the class-0 output pushed down,
# so they do not answer class 0 yet relearn it within the test's budget.
RETRAIN_HEAD = (1.0, -12.0)   # (scale of the class-0 weights, shift of its bias)
FINETUNE_HEAD = (0.0, -6.0)


def _without_class_0(variables, scale, shift):
  head = dict(variables["params"]["Dense_0"])
  head["kernel"] = head["kernel"].at[:, 0].multiply(scale)
  head["bias"] = head["bias"].at[0].add(shift)
  return {"params": {**variables["params"], "Dense_0": head},
          "batch_stats": variables["batch_stats"]}


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _config():
  config = evaluate_config.evaluate_config()
  config.batch_size = 256
  config.relearn_steps = 30
  config.relearn_batch_size = 16
  config.relearn_learning_rate = 1e-2
  return config


@pytest.fixture(scope="module")
def evaluated():
  import learnable
  problem = learnable.problem()
  models = {"original": problem.variables,
            "retrain": _without_class_0(problem.variables, *RETRAIN_HEAD),
            "finetune": _without_class_0(problem.variables, *FINETUNE_HEAD)}
  splits = {"retain": problem.retain, "forget": problem.forget, "test": problem.test,
            "val": problem.val}
  costs = {name: {"wall_s": w, "steps": s, "examples_seen": 64 * s, "initial_loss": 1.6,
                  "final_loss": 0.01} for name, w, s in
           (("original", 9.0, 80), ("retrain", 8.0, 70), ("finetune", 2.0, 14))}
  populations = {  # 6 retrained seeds: enough to score retraining against itself (3 vs 3)
      name: _stack([_without_class_0(problem.variables, scale, shift + 0.1 * i)
                    for i in range(size)])
      for name, (scale, shift), size in (("retrain", RETRAIN_HEAD, 6),
                                         ("finetune", FINETUNE_HEAD, 3))}
  class_names = [f"digit{i}" for i in range(learnable.NUM_CLASSES)]
  config = _config()
  results, per_example, curves = suite.evaluate_models(
      problem.model, models, splits, problem.request, class_names, config,
      jax.random.key(0), costs, populations=populations)
  return problem, config, class_names, results, per_example, curves


def test_suite_reports_every_documented_metric(evaluated):
  problem, _, class_names, results, per_example, _ = evaluated
  names = metric_names(class_names)
  assert len(METRICS) < len(names)  # per-class patterns expanded
  for row in results.values():
    assert list(row) == names
  original, retrain = results["original"], results["retrain"]
  # Defined for a class request with references and costs: only the
  # per-class cells of absent classes and the reference's own score are NaN.
  undefined = {n for n in names if ("retain_class_digit0" in n)
               or ("forget_class_" in n and not n.endswith("digit0"))}
  assert not [n for n in names if math.isnan(original[n]) and n not in undefined
              and not n.startswith("challenge_") and n != "ain"]
  assert original["acc_forget"] >= 0.95 and retrain["acc_forget"] < 0.2
  assert retrain["acc_test_forget_classes"] < 0.2 < retrain["acc_test_other_classes"]
  assert retrain["js_to_retrain_forget"] == 0.0 and original["js_to_retrain_forget"] > 0.1
  assert 1 - LN2 <= original["zrf"] <= 1
  assert retrain["wall_ratio_to_retrain"] == 1.0
  assert results["finetune"]["steps_ratio_to_retrain"] == pytest.approx(14 / 70)
  assert 0.0 <= results["finetune"]["challenge_score"] <= 1.0
  assert results["finetune"]["challenge_population"] == 3
  # Retrain's row: its first three seeds scored against the other three.
  assert retrain["challenge_population"] == 3
  assert 0.0 <= retrain["challenge_score"] <= 1.0
  test = per_example["original"]["test"]
  assert test["logits"].shape == (problem.test.size, 5)
  assert test["labels"].shape == (problem.test.size,)
  np.testing.assert_allclose(test["loss"].mean(), original["loss_test_mean"])
  assert set(per_example["retrain"]) == {"retain", "forget", "test", "val"}


def test_suite_relearning_curves_and_anamnesis_index(evaluated):
  problem, config, _, results, _, curves = evaluated
  assert set(curves) == {"original", "retrain", "finetune"}
  for curve in curves.values():
    assert curve.shape == (config.relearn_steps + 1,)
    assert np.all((curve >= 0) & (curve <= 1))
  original, retrain = results["original"], results["retrain"]
  assert original["relearn_met_at_start"] == 1.0 and original["relearn_steps"] == 0.0
  assert original["relearn_target"] == pytest.approx(0.95 * curves["original"][0])
  assert retrain["relearn_start_acc"] < 0.2
  # The target is met after some relearning here; the index is the step ratio.
  assert 0 < retrain["relearn_steps"] <= config.relearn_steps
  assert retrain["ain"] == 1.0 and original["ain"] == 0.0
  assert results["finetune"]["ain"] == pytest.approx(
      results["finetune"]["relearn_steps"] / retrain["relearn_steps"])


def test_relearning_curve_is_measured_on_held_out_forget_examples(evaluated):
  problem, config, _, _, _, curves = evaluated
  relearn_set, holdout, _ = suite.relearn_sets(
      {"forget": problem.forget, "test": problem.test}, problem.request, config)
  labels = np.asarray(holdout.labels)
  assert holdout.size == int(np.sum(np.asarray(problem.test.labels) == 0)) and np.all(labels == 0)
  assert relearn_set.size == problem.forget.size  # 135 < relearn_examples
  relearn_rng = jax.random.split(jax.random.key(0))[1]  # as evaluate_models derives it
  curve = relearn.relearn_curve(
      problem.model, problem.variables, relearn_set, holdout, relearn_rng,
      num_steps=config.relearn_steps, batch_size=config.relearn_batch_size,
      learning_rate=config.relearn_learning_rate, eval_batch_size=config.batch_size)
  np.testing.assert_allclose(curve, curves["original"])
  assert curve[0] == pytest.approx(problem.accuracy(problem.variables, holdout))


def test_relearn_sets_of_group_requests_relearn_and_measure_the_same_examples(evaluated):
  problem, config, _, _, _, _ = evaluated
  config = evaluate_config.evaluate_config()
  config.relearn_examples = 40
  request = ForgetRequest(kind="groups", fraction=0.1)
  relearn_set, holdout, description = suite.relearn_sets(
      {"forget": problem.forget, "test": problem.test}, request, config)
  assert relearn_set.size == 40 and holdout is relearn_set and "relearn time" in description


# ----------------------------------------------------------------------------
# The registry: a metric is one registered function.

@pytest.fixture
def register():
  """`register(docs, fn)` registers a metric for one test and removes it afterwards."""
  registered = []

  def register_(docs, fn):
    registered.append(metric(docs)(fn))

  yield register_
  for fn in registered:
    registry.unregister(fn)


def _evaluate_original_only():
  """`evaluate_models` of the learnable original alone, without relearning: seconds."""
  import learnable
  problem = learnable.problem()
  config = _config()
  config.anamnesis = False
  splits = {"retain": problem.retain, "forget": problem.forget, "test": problem.test}
  results, _, _ = suite.evaluate_models(
      problem.model, {"original": problem.variables}, splits, problem.request,
      ["zero", "one", "two", "three", "four"], config, jax.random.key(0))
  return problem, results["original"]


def test_a_registered_metric_is_documented_and_reported(register):
  def forget_size(c):
    return {"forget_examples": float(len(c.outputs["forget"]["labels"])),
            **{f"test_examples_class_{name}": float(np.sum(c.outputs["test"]["labels"] == k))
               for k, name in enumerate(c.class_names)}}

  before = list(METRICS)
  register({"forget_examples": "examples in the forget set",
            f"test_examples_class_{CLASS}": "test examples of one class"}, forget_size)
  assert list(METRICS) == before + ["forget_examples", f"test_examples_class_{CLASS}"]
  assert metric_names(["a", "b"])[-3:] == ["forget_examples", "test_examples_class_a",
                                           "test_examples_class_b"]
  problem, row = _evaluate_original_only()
  assert list(row) == metric_names(["zero", "one", "two", "three", "four"])
  assert row["forget_examples"] == problem.forget.size
  assert row["test_examples_class_zero"] == np.sum(np.asarray(problem.test.labels) == 0)
  assert math.isnan(row["js_to_retrain_test"]) and math.isnan(row["ain"])  # no retrain, no curves


def test_undocumented_or_twice_documented_metrics_are_errors(register):
  register({"documented": "a documented name"},
           lambda c: {"documented": 1.0, "not_documented": 2.0})
  with pytest.raises(RuntimeError, match="not_documented"):
    _evaluate_original_only()
  with pytest.raises(ValueError, match="already registered"):
    register({"acc_test": "accuracy again"}, lambda c: {})
  assert METRICS["acc_test"] == "accuracy on the test split"


def test_registry_is_cleaned_up_after_a_test():
  assert not {"documented", "forget_examples", f"test_examples_class_{CLASS}"} & set(METRICS)


def test_the_package_imports_without_jax_or_sklearn():
  # configs/ and report read METRICS; the registered metrics must stay cheap to import.
  code = "import sys, hamforget.evaluate; assert not {'jax', 'sklearn'} & set(sys.modules)"
  subprocess.run([sys.executable, "-c", code], check=True,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
