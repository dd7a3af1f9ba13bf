"""Forgetting quality of the NeurIPS 2023 machine unlearning challenge.

Follows the organisers' released evaluation code (google-deepmind/
unlearning_evaluation, `metric.py`) and Triantafillou et al. 2024, "Are we
making progress in unlearning? Findings from the first NeurIPS unlearning
competition":

1. Each model of a population (the unlearning run, or retraining, repeated
   over seeds) gives every forget example a logit-scaled confidence
   log p(y) - log(1 - p(y)) (the LiRA statistic), computed in float64.
2. For each example, the population whose median is larger is "positive".
   Two families of decision rules try to tell the populations apart: single
   thresholds (conf >= t) and intervals [l, r] around the peakier population,
   both on grids of 100 thresholds per unit of confidence. Each rule has a
   false-positive and a false-negative rate (FPR, FNR).
3. A rule gives epsilon = max(log((1 - delta - FPR) / FNR),
   log((1 - delta - FNR) / FPR)), clipped below at 0; inf for a perfect
   separation (FPR = FNR = 0); a rule with exactly one of them 0 is discarded
   (a sign of too few samples). The example's epsilon is the largest over the
   rules, capped at 50; a population whose spread is under 1% of the other's
   (a collapsed, "peaky" unlearned distribution) gets the cap at once.
4. Points: epsilon in [0, 0.5) earns 1, [0.5, 1) earns 1/2, and so on
   (2 / 2^n for bin n = 1, 2, ... of width 0.5), over bins up to
   ceil(ln(M - 1)), the largest epsilon M models can resolve; beyond: 0.
   (The organisers' August 2023 write-up used 13 fixed bins; the released
   code, followed here, ties the bins to M: 14 bins for their M = 512.)
   Forgetting quality F = mean points over the forget set, in [0, 1].
5. Score = F x (mean retain accuracy / retrain's) x (mean test accuracy /
   retrain's).

Deviations, each where the reference code is undefined: populations may differ
in size (the point bins use the smaller M); two constant populations get
epsilon 0 when equal and the cap when not (the reference divides 0 by 0); an
example for which every rule is discarded gets epsilon 0 (the reference
asserts). Rates are counted with sorted samples and `searchsorted` instead of
an (M, thresholds) comparison matrix, and each rule's epsilon is looked up in
a table over the (M + 1)^2 possible rate pairs: same numbers, far less work.
"""

from __future__ import annotations

import functools

import numpy as np

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
BIN_WIDTH = 0.5
# Interval rules: right edges span the peaky population +- this margin, left
# edges this far either side of (right edge - the peaky population's spread).
_BUFFER = 2.0
# Spread ratio below which the narrower population counts as collapsed.
_PEAKY_RATIO = 0.01


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """log p(label) - log(sum of the other probabilities), float64, shape logits.shape[:-1].

  Args:
    logits: (..., N, K) float.
    labels: (N,) int, broadcast over the leading axes (e.g. models).
  """
  logits = np.asarray(logits, np.float64)
  logits = logits - logits.max(-1, keepdims=True)
  probs = np.exp(logits)
  probs /= probs.sum(-1, keepdims=True)
  labels = np.broadcast_to(np.asarray(labels, np.int64), logits.shape[:-1])
  correct = np.take_along_axis(probs, labels[..., None], -1)[..., 0]
  wrong = probs.sum(-1) - correct
  # The reference's 1e-45 keeps log finite for a saturated softmax; in float64
  # it is representable and below any probability that matters.
  return np.log(correct + 1e-45) - np.log(np.maximum(wrong, 0.0) + 1e-45)


def epsilon_from_rates(fpr: np.ndarray, fnr: np.ndarray, delta: float = DELTA) -> np.ndarray:
  """Epsilon of each decision rule from its FPR and FNR (arrays of one shape).

  Returns:
    float64: inf where FPR = FNR = 0, NaN where the rule is discarded (exactly
    one rate 0, or both logarithms undefined), else
    max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR)) clipped at 0.
  """
  fpr = np.asarray(fpr, np.float64)
  fnr = np.asarray(fnr, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    first = np.log(1.0 - delta - fpr) - np.log(fnr)
    second = np.log(1.0 - delta - fnr) - np.log(fpr)
    value = np.fmax(first, second)  # NaN only where both are NaN
  value = np.where(np.isnan(value), np.nan, np.maximum(value, 0.0))
  one_zero = (fpr * fnr == 0) & (fpr + fnr > 0)
  value = np.where(one_zero, np.nan, value)
  return np.where((fpr == 0) & (fnr == 0), np.inf, value)


@functools.lru_cache(maxsize=16)
def _epsilon_grid(num_neg: int, num_pos: int, delta: float) -> np.ndarray:
  """Epsilon (num_neg + 1, num_pos + 1) of every possible (FPR, FNR) = (i / num_neg, j / num_pos).

  With M samples a rate takes only M + 1 values, so the epsilons of all
  thresholds are a lookup in this table (computed once per population sizes).
  """
  fpr = np.arange(num_neg + 1)[:, None] / num_neg
  fnr = np.arange(num_pos + 1)[None, :] / num_pos
  return epsilon_from_rates(fpr, fnr, delta)


def _max_epsilon(false_pos: np.ndarray, false_neg: np.ndarray, num_neg: int, num_pos: int,
                 delta: float) -> float:
  """Largest epsilon of rules with these false-positive/-negative counts; NaN if none is kept."""
  epsilons = _epsilon_grid(num_neg, num_pos, delta)[false_pos, false_neg]
  kept = epsilons[~np.isnan(epsilons)]
  return float(kept.max()) if kept.size else float("nan")


def _single_threshold_epsilon(pos: np.ndarray, neg: np.ndarray, delta: float) -> float:
  """Best epsilon of the rules "positive iff conf >= t", t on a grid over both populations."""
  low = min(pos[0], neg[0])
  high = max(pos[-1], neg[-1])
  thresholds = np.linspace(low, high, int(np.ceil((high - low) * THRESHOLDS_PER_UNIT)))
  false_pos = len(neg) - np.searchsorted(neg, thresholds, side="left")  # neg >= t
  false_neg = np.searchsorted(pos, thresholds, side="left")             # pos < t
  return _max_epsilon(false_pos, false_neg, len(neg), len(pos), delta)


def _interval_epsilon(pos: np.ndarray, neg: np.ndarray, delta: float) -> float:
  """Best epsilon of the rules "positive iff conf in [l, r]", positive = the peakier population."""
  if pos[-1] - pos[0] >= neg[-1] - neg[0]:
    pos, neg = neg, pos
  width = pos[-1] - pos[0]
  low = pos[0] + width - _BUFFER
  high = pos[-1] + _BUFFER
  right = np.linspace(low, high, int(np.ceil((high - low) * THRESHOLDS_PER_UNIT)))
  num_left = int(np.ceil(2 * _BUFFER * THRESHOLDS_PER_UNIT))
  # (rights, lefts): for each right edge, left edges around (right - width).
  left = np.linspace(right - width - _BUFFER, right - width + _BUFFER, num_left, axis=-1)

  def inside(values):  # count in [l, r] of every rule, 0 where l > r
    count = (np.searchsorted(values, right, side="right")[:, None]
             - np.searchsorted(values, left, side="left"))
    return np.maximum(count, 0).reshape(-1)

  return _max_epsilon(inside(neg), len(pos) - inside(pos), len(neg), len(pos), delta)


def example_epsilon(pos: np.ndarray, neg: np.ndarray, delta: float = DELTA) -> float:
  """Epsilon of one forget example from its confidences under two populations.

  Args:
    pos: (M_pos,) confidences of the population with the larger median.
    neg: (M_neg,) confidences of the other population.
    delta: the delta of (epsilon, delta)-unlearning.

  Returns:
    epsilon in [0, EPSILON_CAP].
  """
  pos = np.sort(np.asarray(pos, np.float64))
  neg = np.sort(np.asarray(neg, np.float64))
  spreads = sorted([pos[-1] - pos[0], neg[-1] - neg[0]])
  if spreads[1] == 0:  # both constant: identical, or separated by any threshold
    return 0.0 if pos[0] == neg[0] else EPSILON_CAP
  if spreads[0] / spreads[1] < _PEAKY_RATIO:
    return EPSILON_CAP
  epsilon = np.fmax(_interval_epsilon(pos, neg, delta), _single_threshold_epsilon(pos, neg, delta))
  if np.isnan(epsilon):
    return 0.0
  return float(np.clip(epsilon, 0.0, EPSILON_CAP))


def example_epsilons(unlearned_conf: np.ndarray, retrained_conf: np.ndarray,
                     delta: float = DELTA) -> np.ndarray:
  """Epsilons (N,) of every forget example.

  Args:
    unlearned_conf: (M_u, N) logit-scaled confidences under the unlearned models.
    retrained_conf: (M_r, N) the same under the retrained models.
  """
  unlearned_conf = np.asarray(unlearned_conf, np.float64)
  retrained_conf = np.asarray(retrained_conf, np.float64)
  if unlearned_conf.shape[1] != retrained_conf.shape[1]:
    raise ValueError(f"populations disagree on the forget set size: "
                     f"{unlearned_conf.shape} vs {retrained_conf.shape}")
  epsilons = np.empty(unlearned_conf.shape[1])
  for i in range(len(epsilons)):
    u, r = unlearned_conf[:, i], retrained_conf[:, i]
    pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
    epsilons[i] = example_epsilon(pos, neg, delta)
  return epsilons


def num_bins(num_models: int) -> int:
  """Epsilon bins that earn points: width 0.5 up to ceil(ln(num_models - 1))."""
  if num_models < 3:
    raise ValueError(f"the challenge score needs populations of at least 3 models, got "
                     f"{num_models}: with fewer no epsilon bin earns points")
  return int(round(np.ceil(np.log(num_models - 1)) / BIN_WIDTH))


def forget_quality(epsilons: np.ndarray, num_models: int) -> float:
  """Mean points over the examples: 1 for epsilon < 0.5, 1/2 below 1, ...; 0 past the bins."""
  epsilons = np.asarray(epsilons, np.float64)
  index = np.floor(epsilons / BIN_WIDTH)
  points = np.where(index < num_bins(num_models), 0.5 ** index, 0.0)
  return float(np.mean(points))


def challenge_score(unlearned_logits: np.ndarray, retrained_logits: np.ndarray,
                    labels: np.ndarray, unlearned_retain_acc: np.ndarray,
                    unlearned_test_acc: np.ndarray, retrained_retain_acc: np.ndarray,
                    retrained_test_acc: np.ndarray, delta: float = DELTA) -> dict[str, object]:
  """The challenge's score of an unlearning method from its population's outputs.

  Args:
    unlearned_logits: (M_u, N, K) logits of the unlearned models on the forget set.
    retrained_logits: (M_r, N, K) the same for the retrained models.
    labels: (N,) int labels of the forget set.
    unlearned_retain_acc, unlearned_test_acc: (M_u,) accuracies in [0, 1].
    retrained_retain_acc, retrained_test_acc: (M_r,) accuracies in [0, 1].
    delta: the delta of (epsilon, delta)-unlearning.

  Returns:
    {"forget_quality": F in [0, 1], "score": F times the utility ratios,
     "epsilons": (N,) float64, "num_models": the M that set the bins}.
  """
  unlearned = logit_scaled_confidence(unlearned_logits, labels)
  retrained = logit_scaled_confidence(retrained_logits, labels)
  epsilons = example_epsilons(unlearned, retrained, delta)
  num_models = min(unlearned.shape[0], retrained.shape[0])
  quality = forget_quality(epsilons, num_models)
  utility = (np.mean(unlearned_retain_acc) / np.mean(retrained_retain_acc)
             * np.mean(unlearned_test_acc) / np.mean(retrained_test_acc))
  return {"forget_quality": quality, "score": float(quality * utility),
          "epsilons": epsilons, "num_models": num_models}
