"""Evaluation suite: metrics on cases known by hand, then the whole suite on a trained model."""

import dataclasses
import math
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from scipy.spatial import distance
from sklearn import linear_model, metrics as sk_metrics, model_selection, pipeline, preprocessing

from hamforget.data.forget import ForgetRequest
from hamforget.evaluate import (CLASS, METRICS, anamnesis, attack, challenge, intervals, lira,
                                measures, metric, metric_names, metrics, suite)
from hamforget.evaluate import config as evaluate_config
from hamforget.evaluate import registry, relearn

LN2 = math.log(2.0)


def _outputs(loss, labels, num_classes=2):
  """Per-example outputs of one split from losses alone (logits consistent with them)."""
  loss = np.asarray(loss, np.float64)
  labels = np.asarray(labels, np.int64)
  # Two-class logits whose cross-entropy at the label is `loss`: p = exp(-loss).
  p = np.clip(np.exp(-loss), 1e-12, 1 - 1e-12)
  logits = np.zeros((len(loss), num_classes))
  logits[np.arange(len(loss)), labels] = np.log(p) - np.log1p(-p)
  return {"logits": logits, "labels": labels, "loss": loss}


def _context(outputs, *, forget_classes=(), populations=None, **config_overrides):
  """A `Context` made of numpy arrays, no model: for metric functions on known cases."""
  config = evaluate_config.evaluate_config()
  for key, value in config_overrides.items():
    config[key] = value
  num_classes = outputs["test"]["logits"].shape[1]
  return registry.Context(
      name="model", outputs=outputs, original=None, retrain=None, forget_classes=forget_classes,
      class_names=tuple(f"c{k}" for k in range(num_classes)), costs={}, retrain_costs={},
      random_forget_logits=np.zeros_like(outputs["forget"]["logits"]), curve=None,
      retrain_curve=None, retain_curve=None, relearn_target=math.nan, populations=populations,
      config=config)


# ----------------------------------------------------------------------------
# Membership attacks.

def test_loss_attack_separates_distinct_losses_and_not_identical_ones():
  rng = np.random.default_rng(0)
  apart = attack.loss_attack(rng.normal(0.05, 0.01, 300), rng.normal(3.0, 0.3, 300), n_splits=10,
                             seed=0, num_resamples=200, level=0.95)
  assert apart["acc"][0] > 0.99 and apart["acc"][1] > 0.95
  assert apart["auc"][0] > 0.99 and apart["tpr_at_0.01"][0] > 0.9
  same = rng.exponential(1.0, 200)
  alike = attack.loss_attack(same[:100], same[100:], n_splits=10, seed=0, num_resamples=300,
                             level=0.95)
  for name in ("acc", "auc"):
    value, low, high = alike[name]
    assert low < 0.5 < high and abs(value - 0.5) < 0.12, (name, alike[name])
    assert 0.08 < high - low < 0.35  # about 4 standard deviations of a 100-a-side attack
  # At 1% FPR with 100 non-members the attack may admit one false positive.
  assert alike["tpr_at_0.01"][0] < 0.1


def test_attack_scores_are_sklearns_stratified_cross_validation():
  rng = np.random.default_rng(1)
  members, nonmembers = rng.exponential(0.5, 80), rng.exponential(1.0, 80)
  ours = attack.out_of_fold_scores(members, nonmembers, n_splits=10, seed=3)
  samples = np.concatenate([nonmembers, members]).reshape(-1, 1)
  labels = np.repeat([0, 1], 80)
  theirs = model_selection.cross_val_predict(
      pipeline.make_pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression()),
      samples, labels, method="decision_function",
      cv=model_selection.StratifiedKFold(n_splits=10, shuffle=True, random_state=3))
  np.testing.assert_array_equal(np.concatenate([ours[1], ours[0]]), theirs)
  accuracy = attack.loss_attack(members, nonmembers, n_splits=10, seed=3, num_resamples=10,
                                level=0.95)["acc"][0]
  assert accuracy == pytest.approx(np.mean((theirs > 0) == labels))


def test_roc_statistics_are_sklearns_with_and_without_ties():
  rng = np.random.default_rng(2)
  for trial in range(40):
    n_m, n_n = rng.integers(2, 150, 2)
    if trial % 2:  # ties everywhere
      member, nonmember = rng.integers(0, 6, n_m) * 1.0, rng.integers(0, 6, n_n) * 1.0
    else:
      member, nonmember = rng.normal(0.7, 1, n_m), rng.normal(0, 1, n_n)
    ours = attack.roc_statistics(member, nonmember, (0.01, 0.05, 0.25))
    labels, scores = np.r_[np.ones(n_m), np.zeros(n_n)], np.r_[member, nonmember]
    assert ours["auc"] == pytest.approx(sk_metrics.roc_auc_score(labels, scores))
    fpr, tpr, _ = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    for rate in (0.01, 0.05, 0.25):
      assert ours[f"tpr_at_{rate}"] == pytest.approx(tpr[fpr <= rate].max()), (trial, rate)
  # Vectorised over resamples: row by row the same numbers.
  member, nonmember = rng.normal(1, 1, (3, 20)), rng.normal(0, 1, (3, 30))
  batched = attack.roc_statistics(member, nonmember)
  for i in range(3):
    assert batched["auc"][i] == pytest.approx(attack.roc_statistics(member[i], nonmember[i])["auc"])


def test_vectorised_logistic_fits_reach_sklearns_optimum():
  rng = np.random.default_rng(3)
  for trial in range(12):
    n = int(rng.integers(3, 200))
    scale = [0.01, 1.0, 20.0][trial % 3]
    feature = np.r_[rng.exponential(scale, n), rng.exponential(scale * rng.uniform(0.1, 3), n)]
    if trial == 5:  # separable: the penalty alone bounds the weight
      feature = np.r_[rng.uniform(0, 0.01, n), rng.uniform(5, 30, n)]
    labels = np.repeat([0, 1], n)
    w, b = attack.fit_logistic(feature, labels, np.ones(2 * n))
    theirs = linear_model.LogisticRegression(tol=1e-12, max_iter=10_000).fit(
        feature[:, None], labels)
    np.testing.assert_allclose([w, b], [theirs.coef_[0, 0], theirs.intercept_[0]],
                               rtol=1e-5, atol=1e-6)
  # Weights select the examples of each fit: a zero weight is a left-out example.
  keep = rng.uniform(size=2 * n) > 0.3
  w, b = attack.fit_logistic(feature, labels, keep)
  theirs = linear_model.LogisticRegression(tol=1e-12, max_iter=10_000).fit(
      feature[keep, None], labels[keep])
  np.testing.assert_allclose([w, b], [theirs.coef_[0, 0], theirs.intercept_[0]], rtol=1e-5,
                             atol=1e-6)


def test_attack_runs_and_is_flagged_with_a_handful_of_examples():
  # 5 forget examples: the kit's 10 shuffle splits of 10% raised here.
  rng = np.random.default_rng(4)
  outputs = {"forget": _outputs(rng.exponential(1.0, 5), np.zeros(5)),
             "test": _outputs(rng.exponential(1.0, 40), np.repeat([0, 1], 20)),
             "retain": _outputs(rng.exponential(1.0, 40), np.repeat([0, 1], 20))}
  row = measures.loss_attack(_context(outputs))
  assert row["mia_examples"] == 5 and row["mia_underpowered"] == 1.0
  for name in ("mia_acc", "mia_auc", "mia_tpr_at_1pct_fpr", "mia_tpr_at_5pct_fpr"):
    assert 0.0 <= row[f"{name}_ci_low"] <= row[f"{name}_ci_high"] <= 1.0, name
  assert row["mia_acc_ci_high"] - row["mia_acc_ci_low"] > 0.3  # five a side say little
  one = {**outputs, "forget": _outputs([0.5], [0])}
  row = measures.loss_attack(_context(one))
  assert row["mia_examples"] == 1 and row["mia_underpowered"] == 1.0 and "mia_acc" not in row
  powered = {**outputs, "forget": _outputs(rng.exponential(1.0, 150), np.zeros(150)),
             "test": _outputs(rng.exponential(1.0, 300), np.repeat([0, 1], 150))}
  assert measures.loss_attack(_context(powered))["mia_underpowered"] == 0.0


def test_class_matching_keeps_one_histogram_per_side():
  member_labels = np.array([0] * 10 + [1] * 3 + [2] * 4)
  nonmember_labels = np.array([0] * 4 + [1] * 9 + [3] * 5)
  member, nonmember = attack.class_matched(member_labels, nonmember_labels, seed=0)
  np.testing.assert_array_equal(np.bincount(member_labels[member], minlength=4), [4, 3, 0, 0])
  np.testing.assert_array_equal(np.bincount(nonmember_labels[nonmember], minlength=4),
                                [4, 3, 0, 0])
  assert len(set(member)) == len(member) and np.all(np.diff(nonmember) > 0)


def test_attack_on_a_named_patient_compares_like_classes():
  # An example/group request whose forgotten examples are all of a class
  # that is easy, while another class of the test split is hard: the losses
  # of the forget set and of unseen examples of its class are alike, so a
  # fair attack is at chance. Against the whole test split it would score by
  # telling the classes apart.
  rng = np.random.default_rng(5)
  test_loss = np.r_[rng.exponential(0.3, 300), 4.0 + rng.exponential(0.3, 300)]
  outputs = {"forget": _outputs(rng.exponential(0.3, 300), np.zeros(300)),
             "test": _outputs(test_loss, np.repeat([0, 1], 300)),
             "retain": _outputs(rng.exponential(0.3, 50), np.zeros(50))}
  row = measures.loss_attack(_context(outputs, ci_resamples=300))
  assert row["mia_examples"] == 300
  assert row["mia_auc_ci_low"] < 0.5 < row["mia_auc_ci_high"]
  assert abs(row["mia_acc"] - 0.5) < 0.08


def test_over_forgetting_is_flagged_only_when_forget_losses_stand_out():
  rng = np.random.default_rng(6)
  test = _outputs(rng.exponential(1.0, 200), np.repeat([0, 1], 100))
  alike = {"forget": _outputs(rng.exponential(1.0, 100), np.zeros(100)), "test": test}
  row = measures.over_forgetting(_context(alike))
  assert row["over_forgetting"] == 0.0
  assert row["loss_gap_forget_test_ci_low"] < 0.0 < row["loss_gap_forget_test_ci_high"]
  apart = {"forget": _outputs(6.0 + rng.exponential(1.0, 100), np.zeros(100)), "test": test}
  row = measures.over_forgetting(_context(apart))
  assert row["over_forgetting"] == 1.0 and row["loss_gap_forget_test"] == pytest.approx(
      np.mean(apart["forget"]["loss"]) - np.mean(test["loss"][:100]))


def test_entropy_attack_is_fit_on_balanced_sides():
  # Members' entropies around 0, non-members' around 1, a twentieth as many;
  # the forget set lies half way. Balanced, the attack's threshold sits half
  # way too and calls about half of them members; fit on the unbalanced sides
  # it would call nearly all of them members.
  rng = np.random.default_rng(7)
  members, nonmembers = rng.normal(0.0, 0.5, 2000), rng.normal(1.0, 0.5, 100)
  query = rng.normal(0.5, 0.5, 400)
  rate = attack.entropy_member_rate(members, nonmembers, query, seed=0)
  assert 0.3 < rate < 0.7
  assert attack.entropy_member_rate(members, nonmembers, query - 2.0, seed=0) > 0.95
  low, high = attack.entropy_member_rate_interval(members, nonmembers, query, seed=0,
                                                  num_resamples=50, level=0.95)
  assert low < rate < high


def test_entropy_member_rate_of_a_model_follows_confidence():
  rng = np.random.default_rng(2)
  peaky = np.eye(4)[rng.integers(0, 4, 200)] * 12 + rng.normal(0, 0.1, (200, 4))
  flat = rng.normal(0, 0.1, (200, 4))
  labels = np.zeros(200, np.int64)
  loss = lambda logits: metrics.per_example_loss(logits, labels[:len(logits)])
  split = lambda logits: {"logits": logits, "labels": labels[:len(logits)], "loss": loss(logits)}
  for forget, expected in ((peaky[:50], 1.0), (flat[:50], 0.0)):
    row = measures.entropy_attack(_context(
        {"retain": split(peaky), "test": split(flat), "forget": split(forget)},
        ci_resamples=50))
    assert row["entropy_member_rate"] == expected


# ----------------------------------------------------------------------------
# Intervals.

def test_mean_interval_covers_the_mean_about_as_often_as_it_says():
  rng = np.random.default_rng(8)
  covered = [intervals.mean_interval(rng.binomial(1, 0.7, 120), num_resamples=400, level=0.95,
                                     seed=i)
             for i in range(200)]
  coverage = np.mean([low <= 0.7 <= high for low, high in covered])
  assert 0.88 <= coverage <= 0.99
  assert intervals.mean_interval(np.ones(1), num_resamples=10, level=0.95, seed=0) == (
      pytest.approx(float("nan"), nan_ok=True),) * 2


def test_bias_corrected_interval_moves_with_the_point():
  replicates = np.random.default_rng(10).normal(0.45, 0.05, 4000)
  plain = intervals.percentile_interval(replicates, 0.95)
  np.testing.assert_allclose(plain, [0.45 - 1.96 * 0.05, 0.45 + 1.96 * 0.05], atol=0.01)
  # Replicates centred on the point: the plain interval.
  np.testing.assert_allclose(
      intervals.percentile_interval(replicates, 0.95, np.median(replicates)), plain, atol=0.002)
  # Replicates biased low of the point: the interval moves up towards it.
  low, high = intervals.percentile_interval(replicates, 0.95, 0.5)
  assert low > plain[0] + 0.02 and high > plain[1] + 0.02 and low < 0.5 < high


def test_seed_interval_is_wider_when_seeds_disagree():
  rng = np.random.default_rng(9)
  agree = rng.binomial(1, 0.8, (1, 400)).repeat(6, 0)
  disagree = np.stack([rng.binomial(1, p, 400) for p in (0.6, 0.7, 0.8, 0.8, 0.9, 1.0)])
  width = lambda values: np.diff(intervals.seed_and_example_mean_interval(
      values, num_resamples=500, level=0.95, seed=0))[0]
  assert width(disagree) > 2 * width(agree)
  # With identical seeds it is the examples' interval.
  assert width(agree) == pytest.approx(np.diff(intervals.mean_interval(
      agree[0], num_resamples=500, level=0.95, seed=0))[0], rel=0.3)


def test_accuracy_intervals_and_summary_gap_by_hand():
  outputs = {split: _outputs(np.full(n, 0.1), np.zeros(n))
             for split, n in (("retain", 50), ("forget", 10), ("test", 30))}
  outputs["test"]["logits"][:6] = outputs["test"]["logits"][:6, ::-1]  # 6 of 30 wrong
  row = measures.accuracy(_context(outputs))
  assert row["acc_test"] == pytest.approx(0.8)
  assert 0.6 < row["acc_test_ci_low"] < 0.8 < row["acc_test_ci_high"] < 0.95
  assert row["acc_retain_ci_low"] == row["acc_retain_ci_high"] == 1.0
  unlearned = {"acc_retain": 0.9, "acc_forget": 0.2, "acc_test": 0.85, "mia_acc": 0.6}
  reference = {"acc_retain": 1.0, "acc_forget": 0.0, "acc_test": 0.8, "mia_acc": float("nan")}
  assert measures.gap_to_retrain(unlearned, reference)["gap_to_retrain"] == pytest.approx(
      (0.1 + 0.2 + 0.05) / 3)  # mia_acc undefined for retrain: left out, not NaN


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
  # scipy's Jensen-Shannon distance (natural log) is the square root of the divergence.
  np.testing.assert_allclose(js, distance.jensenshannon(q, r, axis=1) ** 2, rtol=1e-10)
  logits = np.random.default_rng(2).normal(size=(7, 3))
  assert metrics.zero_retrain_forgetting(logits, logits) == pytest.approx(1.0)
  far = np.array([[50.0, 0.0], [0.0, 50.0]])
  assert metrics.zero_retrain_forgetting(far, far[::-1]) == pytest.approx(1.0 - LN2)


# ----------------------------------------------------------------------------
# Anamnesis Index.

def test_relearn_steps_count_from_one_as_the_reference():
  target = 0.95
  # The reference steps, then measures: a model already at the target needs 1.
  assert anamnesis.relearn_steps([0.97, 0.96, 0.99], target) == (1.0, False)
  assert anamnesis.relearn_steps([0.97, 0.90, 0.96], target) == (2.0, False)
  assert anamnesis.relearn_steps([0.1, 0.5, 0.96, 1.0], target) == (2.0, False)
  assert anamnesis.relearn_steps([0.0, 0.1, 0.2, 0.5, 0.9, 0.96], target) == (5.0, False)
  # Out of budget: the budget, flagged (the true count is larger).
  assert anamnesis.relearn_steps([0.1, 0.2, 0.3], target) == (2.0, True)
  assert math.isnan(anamnesis.relearn_steps([0.1, 0.2], float("nan"))[0])


def test_anamnesis_index_reports_censored_counts_as_bounds():
  assert anamnesis.anamnesis_index(2.0, False, 5.0, False) == (pytest.approx(0.4),
                                                               anamnesis.EXACT)
  # This model ran out at 100 steps, retrain needed 40: AIN >= 2.5.
  assert anamnesis.anamnesis_index(100.0, True, 40.0, False) == (2.5, anamnesis.LOWER_BOUND)
  # Retrain ran out at 100, this model needed 10: AIN <= 0.1.
  assert anamnesis.anamnesis_index(10.0, False, 100.0, True) == (0.1, anamnesis.UPPER_BOUND)
  value, code = anamnesis.anamnesis_index(100.0, True, 100.0, True)
  assert math.isnan(value) and code == anamnesis.NO_BOUND


def test_anamnesis_metric_records_retain_accuracy_where_the_target_is_met():
  outputs = {split: _outputs(np.full(4, 0.1), np.zeros(4)) for split in ("retain", "forget",
                                                                          "test")}
  context = dataclasses.replace(
      _context(outputs), relearn_target=0.95,
      curve=np.array([0.2, 0.5, 0.97, 0.99]), retain_curve=np.array([0.9, 0.8, 0.7, 0.6]),
      retrain_curve=np.array([0.0, 0.1, 0.2, 0.3]))
  row = measures.anamnesis_index(context)
  assert row["relearn_steps"] == 2.0 and row["relearn_retain_acc"] == 0.7
  assert row["ain"] == pytest.approx(2 / 3) and row["ain_censored"] == anamnesis.UPPER_BOUND
  assert row["relearn_budget_ran_out"] == 0.0 and row["relearn_met_at_start"] == 0.0


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


# Fixed confidences of one forget example under 8 unlearned and 8 retrained
# models. The unlearned population is narrow and has the larger median, so it
# is the positive one. Its best rule, worked out by hand: "positive iff
# conf >= t" for t in (2.08, 2.47] misses one positive (1.25) and admits one
# negative (6.39): FPR = FNR = 1/8, epsilon = log((1 - delta - 1/8) / (1/8)).
# Rules with no false negative (t <= 1.25) or no false positive (t > 6.39)
# would say "infinite" on one rate alone and are discarded; intervals around
# the narrow population cannot leave out 1.55 and 2.08 and keep 1.25.
_NARROW = np.array([1.25, 2.47, 2.84, 2.94, 3.19, 3.37, 3.57, 3.69])
_WIDE = np.array([-4.64, -4.49, -3.11, -0.65, 1.55, 2.08, 2.08, 6.39])


def test_challenge_epsilon_of_fixed_cases_by_hand():
  delta = 1e-5
  by_hand = math.log((1 - delta - 1 / 8) / (1 / 8))
  assert challenge.example_epsilon(_NARROW, _WIDE, delta) == pytest.approx(by_hand, abs=1e-12)
  assert _official_epsilon(_NARROW, _WIDE, delta) == pytest.approx(by_hand, abs=1e-12)
  # The median decides which population is positive; whichever way round
  # they are given, the example's epsilon is the same.
  for unlearned, retrained in ((_NARROW, _WIDE), (_WIDE, _NARROW)):
    eps = challenge.example_epsilons(unlearned[:, None], retrained[:, None], delta)
    assert eps[0] == pytest.approx(by_hand, abs=1e-12)
  # Peaky: a spread under 1% of the other's gets the cap at once.
  assert challenge.example_epsilon(np.array([0.0, 0.005, 0.009]), np.array([-1.0, 0.5, 1.0])) == 50
  # Infinite: a threshold separates the populations (FPR = FNR = 0): capped.
  assert challenge.example_epsilon(np.array([10.0, 11.0, 12.0]), np.array([0.0, 1.0, 2.0])) == 50
  # Identical populations: every kept rule gives log(1 - delta - r) - log(r) <= 0 at best.
  same = np.array([0.0, 1.0, 2.0, 3.0])
  assert challenge.example_epsilon(same, same.copy()) == 0.0
  # Bins for M = 8: width 0.5 up to ceil(ln 7) = 2; ln 7 falls in [1.5, 2): 1/8 point.
  assert challenge.forget_quality([by_hand], 8) == pytest.approx(0.125)


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


def test_per_example_attack_leaves_each_model_out_by_hand():
  rng = np.random.default_rng(1)
  unlearned, retrained = rng.normal(size=(5, 3)), rng.normal(0.5, 2.0, size=(4, 3))
  gauss = lambda x, v: -0.5 * (np.log(2 * np.pi * np.var(v, ddof=1))
                               + (x - np.mean(v)) ** 2 / np.var(v, ddof=1))
  expected = np.empty(3)
  for i in range(3):
    u, r = unlearned[:, i], retrained[:, i]
    hits_u = [gauss(u[j], np.delete(u, j)) > gauss(u[j], r) for j in range(5)]
    hits_r = [gauss(r[j], np.delete(r, j)) > gauss(r[j], u) for j in range(4)]
    expected[i] = 0.5 * (np.mean(hits_u) + np.mean(hits_r))
  np.testing.assert_allclose(lira.example_accuracies(unlearned, retrained), expected)


def test_per_example_attack_tells_shifted_populations_apart_and_not_equal_ones():
  rng = np.random.default_rng(0)
  retrained = rng.normal(size=(8, 400))
  same = lira.example_accuracies(rng.normal(size=(8, 400)), retrained)
  assert 0.35 < same.mean() <= 0.5  # chance, a little under from leaving one out
  # Only the first half of the examples is remembered (4 sd more confident):
  # the per-example attack finds those and no others.
  unlearned = rng.normal(size=(8, 400))
  unlearned[:, :200] += 4.0
  scores = lira.example_accuracies(unlearned, retrained)
  assert scores[:200].mean() > 0.95 and scores[200:].mean() < 0.55
  with pytest.raises(ValueError, match="at least 3 models"):
    lira.example_accuracies(unlearned[:2], retrained)


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
  config.ci_resamples = 200
  return config


@pytest.fixture(scope="module")
def evaluated():
  import learnable
  problem = learnable.problem()
  models = {"original": problem.variables,
            "retrain": _without_class_0(problem.variables, *RETRAIN_HEAD),
            # The noise floor: retrain "from another seed", a little different.
            "retrain_seed2": _without_class_0(problem.variables, RETRAIN_HEAD[0] * 0.9,
                                              RETRAIN_HEAD[1] + 1.0),
            "finetune": _without_class_0(problem.variables, *FINETUNE_HEAD)}
  splits = {"retain": problem.retain, "forget": problem.forget, "test": problem.test,
            "val": problem.val}
  costs = {name: {"work_s": w, "compile_s": 1.0, "steps": s, "examples_seen": 64 * s, "initial_loss": 1.6,
                  "final_loss": 0.01} for name, w, s in
           (("original", 9.0, 80), ("retrain", 8.0, 70), ("finetune", 2.0, 14))}
  populations = {  # 2M = 6 retrained seeds, M = 3 of finetune: scored 3 against 3
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
  original, retrain, floor = results["original"], results["retrain"], results["retrain_seed2"]
  # Defined for a class request with references and costs: only the
  # per-class cells of absent classes and the reference's own score are NaN.
  undefined = {n for n in names if ("retain_class_digit0" in n)
               or ("forget_class_" in n and not n.endswith("digit0"))}
  assert not [n for n in names if math.isnan(original[n]) and n not in undefined
              and not n.startswith(("challenge_", "lira_")) and n != "relearn_retain_acc"]
  assert original["acc_forget"] >= 0.95 and retrain["acc_forget"] < 0.2
  assert retrain["acc_test_forget_classes"] < 0.2 < retrain["acc_test_other_classes"]
  # Distances to retrain read against the noise floor's: the original is far
  # beyond it, the floor itself is small but not zero.
  assert 0.0 < floor["js_to_retrain_forget"] < original["js_to_retrain_forget"]
  assert floor["gap_to_retrain"] < original["gap_to_retrain"]
  # ZRF recomputed from scratch: the untrained network the suite draws, and
  # scipy's Jensen-Shannon distance squared.
  random_variables = suite.train.init_replicated(problem.model, (8, 8, 1),
                                                 jax.random.split(jax.random.key(0))[0])
  random_logits = suite.model_outputs(problem.model, random_variables, problem.forget,
                                      256)["logits"]
  ours = per_example["original"]["forget"]["logits"]
  js = distance.jensenshannon(metrics.softmax(ours), metrics.softmax(random_logits), axis=1) ** 2
  assert original["zrf"] == pytest.approx(1.0 - js.mean(), rel=1e-6)
  assert results["finetune"]["steps_ratio_to_retrain"] == pytest.approx(14 / 70)
  test = per_example["original"]["test"]
  assert test["logits"].shape == (problem.test.size, 5)
  assert test["labels"].shape == (problem.test.size,)
  np.testing.assert_allclose(test["loss"].mean(), original["loss_test_mean"])
  assert set(per_example["retrain"]) == {"retain", "forget", "test", "val"}


def test_suite_intervals_hold_their_values(evaluated):
  _, _, _, results, _, _ = evaluated
  for name, row in results.items():
    for key in ("acc_retain", "acc_forget", "acc_test", "bal_acc_test", "loss_forget_mean",
                "loss_test_mean", "zrf", "js_to_retrain_forget", "mia_auc"):
      low, high = row[f"{key}_ci_low"], row[f"{key}_ci_high"]
      if not math.isnan(row[key]):
        assert low <= row[key] + 1e-12 and row[key] <= high + 1e-12, (name, key, low, high)
  # The attack compares the ~20 class-0 test digits with as many forget ones.
  assert results["original"]["mia_examples"] == np.sum(
      np.asarray(evaluated[0].test.labels) == 0)
  assert results["original"]["mia_underpowered"] == 1.0


def test_suite_scores_the_challenge_like_for_like(evaluated):
  _, _, _, results, _, _ = evaluated
  # Retrain's row: 3 of its seeds against the other 3, the reference of every row.
  assert results["retrain"]["challenge_population"] == 3
  assert results["finetune"]["challenge_population"] == 3
  assert 0.0 <= results["finetune"]["challenge_score"] <= 1.0
  assert math.isnan(results["original"]["challenge_score"])  # no population of its own
  # The per-example attack of every scored row, saved example by example.
  forget_size = evaluated[0].forget.size
  for name in ("retrain", "finetune"):
    scores = evaluated[4][name]["forget"]["lira_acc"]
    assert scores.shape == (forget_size,)
    assert results[name]["lira_acc"] == pytest.approx(scores.mean())
  assert "lira_acc" not in evaluated[4]["original"]["forget"]
  assert math.isnan(results["original"]["lira_acc"])


def test_outputs_of_an_unchanged_model_are_reused_and_a_changed_one_measured(tmp_path,
                                                                             monkeypatch):
  import learnable
  problem = learnable.problem()
  splits = {"retain": problem.retain, "forget": problem.forget, "test": problem.test}
  class_names = [f"digit{i}" for i in range(learnable.NUM_CLASSES)]
  config = _config()
  config.relearn_steps = 5
  models = {"original": problem.variables,
            "retrain": _without_class_0(problem.variables, *RETRAIN_HEAD)}
  evaluate = lambda models: suite.evaluate_models(
      problem.model, models, splits, problem.request, class_names, config, jax.random.key(0),
      cache_dir=str(tmp_path / "evaluations"))
  first, first_examples, first_curves = evaluate(models)

  measured, relearned = [], []
  predict, relearn_curve = suite.model_outputs, relearn.relearn_curve
  monkeypatch.setattr(suite, "model_outputs", lambda *a: measured.append(a[2].size) or predict(*a))
  monkeypatch.setattr(relearn, "relearn_curve",
                      lambda *a, **k: relearned.append(1) or relearn_curve(*a, **k))
  finetune = _without_class_0(problem.variables, *FINETUNE_HEAD)
  second, examples, curves = evaluate({**models, "finetune": finetune})
  # Only finetune is measured (its 3 splits, and ZRF's random model on forget).
  assert len(measured) == len(splits) + 1 and len(relearned) == 1
  for name in models:
    np.testing.assert_equal(second[name], first[name])
    np.testing.assert_array_equal(curves[name], first_curves[name])
    for split in splits:
      np.testing.assert_array_equal(examples[name][split]["logits"],
                                    first_examples[name][split]["logits"])
  # Keyed by content, not by name: finetune's arrays named retrain are reused,
  # a new model under a known name is measured.
  measured.clear()
  renamed = evaluate({"original": problem.variables, "retrain": finetune})[0]
  assert len(measured) == 1  # ZRF's random model only
  np.testing.assert_equal(renamed["retrain"]["acc_forget"], second["finetune"]["acc_forget"])
  evaluate({"original": problem.variables, "retrain": _without_class_0(problem.variables, 0.5,
                                                                       -3.0)})
  assert len(measured) == 1 + len(splits) + 1


def test_population_pairs_are_disjoint_halves_of_one_size():
  def population(size, first_seed):
    return {"test_acc": np.arange(first_seed, first_seed + size, dtype=float),
            "forget_logits": np.zeros((size, 2, 3))}

  pairs = suite.pair_populations({"retrain": population(8, 0), "op": population(4, 100)},
                                 "retrain")
  own, reference = pairs["retrain"]
  np.testing.assert_array_equal(own["test_acc"], [0, 1, 2, 3])
  np.testing.assert_array_equal(reference["test_acc"], [4, 5, 6, 7])
  assert pairs["op"][1] is reference and len(pairs["op"][0]["test_acc"]) == 4
  # A smaller retrained population (an older run: M, not 2M): everyone at M/2.
  pairs = suite.pair_populations({"retrain": population(6, 0), "op": population(6, 100)},
                                 "retrain")
  assert {len(pair[0]["test_acc"]) for pair in pairs.values()} == {3}
  assert {len(pair[1]["test_acc"]) for pair in pairs.values()} == {3}
  assert suite.pair_populations({"retrain": population(4, 0), "op": population(4, 9)},
                                "retrain") == {}


def _first_step_at(curve, target):
  """The reference's count, spelled out: step, measure, stop once at the target."""
  for step in range(1, len(curve)):
    if curve[step] >= target:
      return step
  return None


def test_suite_relearning_curves_and_anamnesis_index(evaluated):
  problem, config, _, results, _, curves = evaluated
  assert set(curves) == {"original", "retrain", "retrain_seed2", "finetune"}
  original, retrain = results["original"], results["retrain"]
  target = original["relearn_target"]
  assert target == pytest.approx(0.95 * curves["original"][0])
  for name, curve in curves.items():
    # Measured up to the step that met the target, NaN after it.
    assert curve.shape == (config.relearn_steps + 1,)
    steps = int(results[name]["relearn_steps"])
    assert np.all((curve[:steps + 1] >= 0) & (curve[:steps + 1] <= 1))
    assert curve[steps] >= target and np.all(np.isnan(curve[steps + 1:]))
  assert original["relearn_met_at_start"] == 1.0
  assert original["relearn_steps"] == _first_step_at(curves["original"], target) >= 1
  assert retrain["relearn_start_acc"] < 0.2
  # The target is met after some relearning here; the index is the step ratio.
  retrain_steps = _first_step_at(curves["retrain"], target)
  assert retrain_steps is not None and retrain["relearn_steps"] == retrain_steps
  finetune_steps = _first_step_at(curves["finetune"], target)
  assert results["finetune"]["ain"] == pytest.approx(finetune_steps / retrain_steps)
  assert original["ain"] == pytest.approx(original["relearn_steps"] / retrain_steps)
  assert {row["ain_censored"] for row in results.values()} == {anamnesis.EXACT}
  # The other classes' accuracy where the original meets the target.
  assert 0.8 <= original["relearn_retain_acc"] <= 1.0


def test_relearning_curve_is_measured_on_held_out_forget_examples(evaluated):
  problem, config, _, _, _, curves = evaluated
  splits = {"forget": problem.forget, "test": problem.test}
  relearn_set, holdout, _ = suite.relearn_sets(splits, problem.request, config)
  labels = np.asarray(holdout.labels)
  assert holdout.size == int(np.sum(np.asarray(problem.test.labels) == 0)) and np.all(labels == 0)
  assert relearn_set.size == problem.forget.size  # 135 < relearn_examples
  retain_holdout = suite.retain_holdout_set(splits, problem.request, config)
  assert not np.any(np.asarray(retain_holdout.labels) == 0)
  assert retain_holdout.size == min(config.relearn_retain_examples,
                                    int(np.sum(np.asarray(problem.test.labels) != 0)))
  relearn_rng = jax.random.split(jax.random.key(0))[1]  # as evaluate_models derives it
  curve, retain_curve = relearn.relearn_curve(
      problem.model, problem.variables, relearn_set, holdout, retain_holdout, relearn_rng,
      num_steps=config.relearn_steps, batch_size=config.relearn_batch_size,
      learning_rate=config.relearn_learning_rate, eval_batch_size=config.batch_size)
  stopped = curves["original"]
  measured = ~np.isnan(stopped)
  np.testing.assert_allclose(curve[measured], stopped[measured])
  assert curve[0] == pytest.approx(problem.accuracy(problem.variables, holdout))
  assert retain_curve[0] == pytest.approx(problem.accuracy(problem.variables, retain_holdout))


def test_a_relearning_curve_stopped_at_the_target_is_the_whole_curve_until_then(evaluated):
  problem, config, _, results, _, curves = evaluated
  splits = {"forget": problem.forget, "test": problem.test}
  relearn_set, holdout, _ = suite.relearn_sets(splits, problem.request, config)
  retain_holdout = suite.retain_holdout_set(splits, problem.request, config)
  retrain = _without_class_0(problem.variables, *RETRAIN_HEAD)
  whole, whole_retain = relearn.relearn_curve(
      problem.model, retrain, relearn_set, holdout, retain_holdout,
      jax.random.split(jax.random.key(0))[1], num_steps=config.relearn_steps,
      batch_size=config.relearn_batch_size, learning_rate=config.relearn_learning_rate,
      eval_batch_size=config.batch_size)
  assert not np.any(np.isnan(whole))  # no target: the whole budget
  target = results["original"]["relearn_target"]
  steps = _first_step_at(np.asarray(whole), target)
  assert 1 < steps < config.relearn_steps  # the suite's curve stopped partway
  stopped = curves["retrain"]
  np.testing.assert_allclose(stopped[:steps + 1], whole[:steps + 1], rtol=1e-6)
  assert np.all(np.isnan(stopped[steps + 1:])) and results["retrain"]["relearn_steps"] == steps
  assert results["retrain"]["relearn_retain_acc"] == pytest.approx(float(whole_retain[steps]))


def test_the_loop_threshold_never_stops_short_of_the_float64_target():
  for target in (0.95 * 0.7, 0.95 * 53 / 57, 0.95 * 1 / 3, 0.5):
    threshold = anamnesis.stop_threshold(target)
    assert threshold.dtype == np.float32 and float(threshold) >= target
    assert float(threshold) - target < 1e-7
  assert np.isnan(anamnesis.stop_threshold(float("nan")))


def test_relearn_sets_of_group_requests_relearn_and_measure_the_same_examples(evaluated):
  problem, config, _, _, _, _ = evaluated
  config = evaluate_config.evaluate_config()
  config.relearn_examples = 40
  request = ForgetRequest(kind="groups", fraction=0.1)
  relearn_set, holdout, description = suite.relearn_sets(
      {"forget": problem.forget, "test": problem.test}, request, config)
  assert relearn_set.size == 40 and holdout is relearn_set and "relearn time" in description


def test_suite_with_five_forgotten_examples_flags_the_attack_instead_of_crashing():
  # `forget.kind=examples` with 5 named ids: the attack used to raise here.
  import learnable
  problem = learnable.problem()
  forget, retain = problem.retain.take(np.arange(5)), problem.retain.take(
      np.arange(5, problem.retain.size))
  request = ForgetRequest(kind="examples", ids=("a", "b", "c", "d", "e"))
  config = _config()
  config.relearn_steps = 3
  results, _, _ = suite.evaluate_models(
      problem.model, {"original": problem.variables, "retrain": problem.variables},
      {"retain": retain, "forget": forget, "test": problem.test}, request,
      [f"digit{i}" for i in range(learnable.NUM_CLASSES)], config, jax.random.key(0))
  row = results["original"]
  assert row["mia_examples"] <= 5 and row["mia_underpowered"] == 1.0
  assert 0.0 <= row["mia_acc_ci_low"] <= row["mia_acc"] <= row["mia_acc_ci_high"] <= 1.0
  assert not math.isnan(row["ain"])


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
  # After every metric registered before it, before the summaries.
  assert [n for n in METRICS if n not in before] == ["forget_examples",
                                                     f"test_examples_class_{CLASS}"]
  assert metric_names(["a", "b"])[-4:] == ["forget_examples", "test_examples_class_a",
                                           "test_examples_class_b", "gap_to_retrain"]
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
  assert METRICS["acc_test"].startswith("accuracy on the test split")  # unchanged


def test_registry_is_cleaned_up_after_a_test():
  assert not {"documented", "forget_examples", f"test_examples_class_{CLASS}"} & set(METRICS)


def test_the_package_imports_without_jax_or_sklearn():
  # configs/ and report read METRICS; the registered metrics must stay cheap to import.
  code = "import sys, hamforget.evaluate; assert not {'jax', 'sklearn'} & set(sys.modules)"
  subprocess.run([sys.executable, "-c", code], check=True,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
