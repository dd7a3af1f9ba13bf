"""Membership-inference attacks on per-example outputs, with their intervals.

The loss attack is the NeurIPS 2023 challenge kit's `simple_mia` (a logistic
regression on the per-example loss, forget examples as members against unseen
test examples), reported as the field reports attacks: accuracy, ROC AUC and
the true-positive rate at a low false-positive rate (Carlini et al. 2022).
Four changes make it trustworthy at the sizes of this project (the fourth:
the loss is standardised before the fit, see `out_of_fold_scores`):

- The two sides are matched by class histogram (`class_matched`): for every
  request kind, not only class requests, so the attack cannot score by
  learning which classes are hard (or forgotten) instead of membership.
- Every example is scored once, out of fold, by a stratified k-fold
  cross-validation (k = min(splits, examples per side)); all statistics come
  from those pooled scores. The kit's 10 shuffle splits of 10% raise with
  fewer than 10 examples a side and give fold accuracies of only 0, 1/2 or 1
  with 6 to 9; the standard deviation over their overlapping folds overstates
  the noise.
- Intervals come from a bootstrap, each side resampled apart. The learned
  attack is refit on every resample (`fit_logistic`, all fits at once): with
  few examples the fitted threshold is much of the noise. Simulated (150 runs
  each, 20 and 50 examples a side), its 95% interval held the true accuracy
  in 93-95% of runs with no signal and in 92-95% with one.

Everything here is host numpy and scikit-learn; no JAX.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import special

from hamforget.evaluate import intervals

# False-positive rates at which the true-positive rate is reported.
LOW_FPRS = (0.01, 0.05)


def class_matched(member_labels: np.ndarray, nonmember_labels: np.ndarray,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of equal-sized member and non-member sets with one class histogram.

  For each class, min(members, non-members) of that class are kept from each
  side, the larger drawn at random (seeded) without replacement. A class
  absent from one side drops out of both.

  Args:
    member_labels: (N_m,) int labels of the members (the forget set).
    nonmember_labels: (N_n,) int labels of the candidates (the test split).

  Returns:
    (member_index, nonmember_index), sorted int64 arrays of one length.
  """
  member_labels = np.asarray(member_labels)
  nonmember_labels = np.asarray(nonmember_labels)
  rng = np.random.default_rng(seed)
  chosen_members, chosen_nonmembers = [], []
  for label in np.unique(member_labels):
    members = np.flatnonzero(member_labels == label)
    nonmembers = np.flatnonzero(nonmember_labels == label)
    count = min(len(members), len(nonmembers))
    chosen_members.append(rng.choice(members, count, replace=False))
    chosen_nonmembers.append(rng.choice(nonmembers, count, replace=False))
  if not chosen_members:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return (np.sort(np.concatenate(chosen_members)).astype(np.int64),
          np.sort(np.concatenate(chosen_nonmembers)).astype(np.int64))


def balanced_subsample(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Equal-sized (a, b): the larger is subsampled without replacement, order kept.

  Equal sizes keep an attack's chance level at 0.5 and its decision threshold
  at the midpoint between the sides rather than moved towards the larger one.
  """
  n = min(len(a), len(b))
  rng = np.random.default_rng(seed)
  if len(a) > n:
    a = a[np.sort(rng.choice(len(a), n, replace=False))]
  if len(b) > n:
    b = b[np.sort(rng.choice(len(b), n, replace=False))]
  return a, b


def out_of_fold_scores(member_feature: np.ndarray, nonmember_feature: np.ndarray, *,
                       n_splits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Held-out logistic-regression scores of every example of a balanced attack.

  A default `LogisticRegression` on the one feature, standardised on the
  training folds (`StandardScaler`), is fit on k - 1 folds of a
  `StratifiedKFold(k = min(n_splits, N), shuffle=True)` and scores the k-th;
  every fold keeps both sides at one size, so no fit leans to a side. The
  kit fits the raw loss; standardised, the attack does not depend on the
  loss's scale (losses of 1e-4 nats leave the unscaled fit at w ~ 0, its
  predictions set by the solver's tolerance).

  Args:
    member_feature, nonmember_feature: (N,) each, equal sizes, N >= 2.

  Returns:
    (member_scores (N,), nonmember_scores (N,)): decision values; > 0 means
    "member" (the attack's prediction).
  """
  # Seconds to import: only when attacking.
  from sklearn import linear_model, model_selection, pipeline, preprocessing

  n = len(member_feature)
  if n != len(nonmember_feature) or n < 2:
    raise ValueError(f"expected two sides of one size >= 2, got {n} and {len(nonmember_feature)}")
  samples = np.concatenate([nonmember_feature, member_feature]).astype(np.float64).reshape(-1, 1)
  labels = np.repeat([0, 1], n)
  folds = model_selection.StratifiedKFold(n_splits=min(n_splits, n), shuffle=True,
                                          random_state=seed)
  attack = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                  linear_model.LogisticRegression())
  scores = model_selection.cross_val_predict(attack, samples, labels, cv=folds,
                                             method="decision_function")
  return scores[n:], scores[:n]


def roc_statistics(member_scores: np.ndarray, nonmember_scores: np.ndarray,
                   fprs: Sequence[float] = LOW_FPRS) -> dict[str, np.ndarray]:
  """AUC and TPR at each false-positive rate, vectorised over leading axes.

  The same numbers as scikit-learn's `roc_auc_score` and the largest TPR of
  `roc_curve(..., drop_intermediate=False)` among its points with FPR <= fpr
  (the tests check both), for many resamples at once.

  Args:
    member_scores: (..., N_m) scores, larger = "member".
    nonmember_scores: (..., N_n) scores.
    fprs: false-positive rates in [0, 1].

  Returns:
    {"auc": (...,), "tpr_at_<fpr>": (...,) for each fpr} float64.
  """
  from scipy import stats  # a second to import: only when attacking

  member_scores = np.asarray(member_scores, np.float64)
  nonmember_scores = np.asarray(nonmember_scores, np.float64)
  n_m, n_n = member_scores.shape[-1], nonmember_scores.shape[-1]
  ranks = stats.rankdata(np.concatenate([member_scores, nonmember_scores], -1), axis=-1)
  auc = (ranks[..., :n_m].sum(-1) - n_m * (n_m + 1) / 2) / (n_m * n_n)
  out = {"auc": auc}
  descending = -np.sort(-nonmember_scores, axis=-1)
  for fpr in fprs:
    allowed = int(np.floor(fpr * n_n + 1e-9))  # false positives a threshold may admit
    if allowed >= n_n:
      tpr = np.ones(auc.shape)
    else:
      # The threshold just above the (allowed + 1)-th largest non-member score.
      tpr = np.mean(member_scores > descending[..., allowed:allowed + 1], -1)
    out[f"tpr_at_{fpr}"] = tpr
  return out


def fit_logistic(feature: np.ndarray, labels: np.ndarray, weights: np.ndarray, *,
                 c: float = 1.0, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
  """Many one-feature logistic regressions at once, as scikit-learn's default fits them.

  Minimises 0.5 w^2 + c sum_i weights_i log(1 + exp(-s_i (w x_i + b))), s_i =
  +-1 (L2 penalty on the weight, none on the intercept: `LogisticRegression()`'s
  objective, whose optimum the tests check this reaches) by Newton steps with
  backtracking, vectorised over the leading axes. It exists so a bootstrap can
  refit the attack on every resample: thousands of fits in about a second.

  Args:
    feature: (..., N) float; labels: (..., N) 0/1; weights: (..., N) 0/1,
      which examples each fit sees (broadcast together).

  Returns:
    (w, b), each of the broadcast leading shape.
  """
  feature = np.asarray(feature, np.float64)
  labels = np.asarray(labels, np.float64)
  weights = np.asarray(weights, np.float64)
  shape = np.broadcast_shapes(feature.shape, labels.shape, weights.shape)[:-1]
  sign = 2.0 * labels - 1.0
  w, b = np.zeros(shape), np.zeros(shape)

  def objective(w, b):
    margin = sign * (w[..., None] * feature + b[..., None])
    return 0.5 * w ** 2 + c * np.sum(weights * np.logaddexp(0.0, -margin), -1)

  value = objective(w, b)
  for _ in range(iterations):
    p = special.expit(w[..., None] * feature + b[..., None])
    residual, curvature = weights * (p - labels), weights * p * (1.0 - p)
    grad_w = w + c * np.sum(residual * feature, -1)
    grad_b = c * np.sum(residual, -1)
    if np.max(np.abs(grad_w) + np.abs(grad_b)) < 1e-9:
      break
    h_ww = 1.0 + c * np.sum(curvature * feature ** 2, -1)
    h_wb = c * np.sum(curvature * feature, -1)
    h_bb = c * np.sum(curvature, -1) + 1e-12
    det = h_ww * h_bb - h_wb ** 2
    step_w = (h_bb * grad_w - h_wb * grad_b) / det
    step_b = (h_ww * grad_b - h_wb * grad_w) / det
    # Backtracking: halve the step of every fit whose objective would rise.
    scale, pending = np.ones(shape), np.ones(shape, bool)
    for _ in range(40):
      pending &= objective(w - scale * step_w, b - scale * step_b) > value + 1e-12
      if not pending.any():
        break
      scale = np.where(pending, scale / 2, scale)
    w, b = w - scale * step_w, b - scale * step_b
    value = objective(w, b)
  return w, b


def _refit_accuracies(member: np.ndarray, nonmember: np.ndarray, n_splits: int,
                      rng: np.random.Generator, member_index: np.ndarray,
                      nonmember_index: np.ndarray) -> np.ndarray:
  """Cross-validated attack accuracy (R,) of R resamples, the attack refit on each.

  Folds are stratified as `out_of_fold_scores` makes them: each side's
  original examples dealt at random into k folds of (nearly) equal size. A
  resampled example goes to the fold of the example it copies, so no copy is
  scored by a fit that saw another copy of it (which would flatter the attack).
  """
  resamples, n = member_index.shape
  k = min(n_splits, n)
  feature = np.concatenate([nonmember[nonmember_index], member[member_index]], -1)  # (R, 2N)
  labels = np.repeat([0.0, 1.0], n)
  # Fold of each original example: its position in a random order of its side, mod k.
  source_fold = np.argsort(np.argsort(rng.random((resamples, 2, n)), -1), -1) % k
  fold = np.concatenate([np.take_along_axis(source_fold[:, 0], nonmember_index, -1),
                         np.take_along_axis(source_fold[:, 1], member_index, -1)], -1)
  train = fold[:, None, :] != np.arange(k)[None, :, None]  # (R, k, 2N): fold f fit without f
  # Copies leave a fold's training sides unequal (three copies of a member
  # held out, none of a non-member): weight each side to half the training
  # weight, as the balanced folds of the data itself are, or the fit leans to
  # the side left larger and misses the held-out copies ("anti-learning").
  side = np.repeat([0, 1], n)
  count = np.stack([np.sum(train & (side == s), -1) for s in (0, 1)], -1)  # (R, k, 2)
  total = count.sum(-1, keepdims=True)
  weights = train * (total / (2.0 * np.maximum(count, 1)))[..., side]
  # Standardised on each fit's training examples, as `out_of_fold_scores`.
  mean = np.sum(weights * feature[:, None, :], -1) / np.sum(weights, -1)  # (R, k)
  spread = np.sqrt(np.sum(weights * (feature[:, None, :] - mean[..., None]) ** 2, -1)
                   / np.sum(weights, -1))
  spread = np.where(spread > 0, spread, 1.0)  # a constant feature: StandardScaler's 1
  w, b = fit_logistic((feature[:, None, :] - mean[..., None]) / spread[..., None], labels,
                      weights)  # (R, k)
  own = lambda per_fold: np.take_along_axis(per_fold, fold, -1)  # each example's fold's value
  decision = own(w) * (feature - own(mean)) / own(spread) + own(b)
  return np.mean((decision > 0) == (labels > 0), -1)


def loss_attack(member_loss: np.ndarray, nonmember_loss: np.ndarray, *, n_splits: int,
                seed: int, num_resamples: int, level: float,
                fprs: Sequence[float] = LOW_FPRS) -> dict[str, tuple[float, float, float]]:
  """The loss attack on equal-sized, class-matched sides, with intervals.

  "acc" is the kit's attack: a logistic regression on the loss, its accuracy
  from out-of-fold predictions (`out_of_fold_scores`); its interval comes
  from resampling both sides and refitting the cross-validated attack on each
  resample (`fit_logistic`), since with few examples the fitted threshold
  itself is much of the noise (bias-corrected: `intervals.percentile_interval`). "auc" and "tpr_at_<fpr>" score each example by
  its negated loss (lower loss = more likely a member; no fitting, as the
  threshold attacks of Yeom et al. 2018 and Carlini et al. 2022): 0.5 and
  fpr are what indistinguishable sides give; an AUC well below 0.5 means the
  members' losses are higher than those of unseen examples (over-forgetting),
  which tells them apart just as well. Intervals resample the examples.

  Args:
    member_loss, nonmember_loss: (N,) per-example losses of each side.
    n_splits: folds of the cross-validation (fewer when N is smaller).
    seed: of the folds and the bootstrap.
    num_resamples, level: of the bootstrap intervals.

  Returns:
    {"acc", "auc", "tpr_at_<fpr>"...} -> (value, ci_low, ci_high); every value
    NaN when N < 2 (nothing to cross-validate).
  """
  names = ["acc", "auc"] + [f"tpr_at_{fpr}" for fpr in fprs]
  member = np.asarray(member_loss, np.float64)
  nonmember = np.asarray(nonmember_loss, np.float64)
  n = len(member)
  if n < 2:
    return {name: (np.nan, np.nan, np.nan) for name in names}
  member_scores, nonmember_scores = out_of_fold_scores(member, nonmember, n_splits=n_splits,
                                                       seed=seed)
  point = roc_statistics(-member, -nonmember, fprs)
  point["acc"] = (np.sum(member_scores > 0) + np.sum(nonmember_scores <= 0)) / (2 * n)
  rng = np.random.default_rng(seed)
  member_index = intervals.indices(n, num_resamples, rng)
  nonmember_index = intervals.indices(n, num_resamples, rng)
  replicates = roc_statistics(-member[member_index], -nonmember[nonmember_index], fprs)
  # In chunks of resamples: the refits hold (chunk, k, 2N) arrays.
  chunk = max(1, 200_000 // (min(n_splits, n) * 2 * n))
  replicates["acc"] = np.concatenate([
      _refit_accuracies(member, nonmember, n_splits, rng, member_index[i:i + chunk],
                        nonmember_index[i:i + chunk]) for i in range(0, num_resamples, chunk)])
  # The refit accuracy's resamples are biased low (their repeated examples
  # leave fewer distinct ones to fit): bias-corrected; the others are not refit.
  return {name: (float(point[name]), *intervals.percentile_interval(
      replicates[name], level, point[name] if name == "acc" else None)) for name in names}


def entropy_member_rate(member_entropy: np.ndarray, nonmember_entropy: np.ndarray,
                        query_entropy: np.ndarray, *, seed: int) -> float:
  """Share of `query_entropy` a logistic regression on entropy calls members.

  The attack is fit on equal numbers of members and non-members (the larger
  side subsampled, seeded): unbalanced, its threshold moves towards the
  smaller side and it calls most queries members whatever they are.

  Args:
    member_entropy, nonmember_entropy, query_entropy: 1-D entropies in nats.

  Returns:
    A share in [0, 1]; NaN when a side is empty or there is no query.
  """
  from sklearn import linear_model  # seconds to import: only when attacking

  member, nonmember = balanced_subsample(np.asarray(member_entropy),
                                         np.asarray(nonmember_entropy), seed)
  if len(member) == 0 or len(query_entropy) == 0:
    return float("nan")
  samples = np.concatenate([nonmember, member]).astype(np.float64).reshape(-1, 1)
  labels = np.repeat([0, 1], len(member))
  attack = linear_model.LogisticRegression().fit(samples, labels)
  return float(np.mean(attack.predict(np.asarray(query_entropy, np.float64).reshape(-1, 1)) == 1))


def entropy_member_rate_interval(member_entropy: np.ndarray, nonmember_entropy: np.ndarray,
                                 query_entropy: np.ndarray, *, seed: int, num_resamples: int,
                                 level: float) -> tuple[float, float]:
  """Bootstrap interval of `entropy_member_rate`, refitting the attack on every resample.

  Refitting matters here: when members and non-members look alike the fitted
  threshold falls anywhere and the rate jumps between near 0 and near 1, and
  only resampling the fit shows that. The sides are balanced once, as
  `entropy_member_rate` balances them; each resample redraws both sides and
  the queries, and all the fits run at once (`fit_logistic`).
  """
  member, nonmember = balanced_subsample(np.asarray(member_entropy, np.float64),
                                         np.asarray(nonmember_entropy, np.float64), seed)
  query = np.asarray(query_entropy, np.float64)
  if min(len(member), len(query)) < 2:
    return float("nan"), float("nan")
  n = len(member)
  rng = np.random.default_rng(seed)
  feature = np.concatenate([nonmember[intervals.indices(n, num_resamples, rng)],
                            member[intervals.indices(n, num_resamples, rng)]], -1)
  w, b = fit_logistic(feature, np.repeat([0.0, 1.0], n), np.ones(2 * n))
  queries = query[intervals.indices(len(query), num_resamples, rng)]
  rates = np.mean(w[:, None] * queries + b[:, None] > 0, -1)
  return intervals.percentile_interval(rates, level, entropy_member_rate(
      member, nonmember, query, seed=seed))
