"""Metrics from per-example outputs: accuracies, divergences, attacks, relearning.

Everything here works on host numpy arrays (logits of shape (N, K) float,
integer labels (N,)) in float64, so a metric can be recomputed by anyone from
the saved per-example arrays without JAX. The model-dependent part (logits,
relearning curves) lives in `suite` and `relearn`; what is reported, in
`measures`.
"""

from __future__ import annotations

import numpy as np
from scipy import special


def softmax(logits: np.ndarray) -> np.ndarray:
  """Probabilities (N, K) float64 from logits (N, K)."""
  return special.softmax(np.asarray(logits, np.float64), axis=-1)


def per_example_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Cross-entropy in nats (N,) float64 of logits (N, K) against int labels (N,)."""
  log_probs = special.log_softmax(np.asarray(logits, np.float64), axis=-1)
  labels = np.asarray(labels, np.int64)
  return -np.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Share of argmax predictions equal to the label; NaN for no examples."""
  if len(labels) == 0:
    return float("nan")
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Recall of each class (K,) float64; NaN for a class without examples."""
  labels = np.asarray(labels)
  correct = np.argmax(logits, -1) == labels
  hits = np.bincount(labels[correct], minlength=num_classes).astype(np.float64)
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def balanced_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Mean recall over the classes present (sklearn's balanced_accuracy_score); NaN if none."""
  recalls = per_class_accuracy(logits, labels, num_classes)
  return float(np.nanmean(recalls)) if np.any(~np.isnan(recalls)) else float("nan")


# ----------------------------------------------------------------------------
# Divergences between predictive distributions.

def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """Jensen-Shannon divergence in nats (N,) between rows of p and q (N, K).

  The textbook symmetric form 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2,
  with natural logarithms, so it lies in [0, ln 2]: 0 for equal rows, ln 2 for
  rows with disjoint support. Summed over classes, not averaged (averaging is
  the known bug of the ZRF reference code, which also used KL, not JS).
  """
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  m = 0.5 * (p + q)
  # rel_entr(x, y) = x log(x / y) with 0 log 0 = 0: zero-probability classes are exact.
  return 0.5 * special.rel_entr(p, m).sum(-1) + 0.5 * special.rel_entr(q, m).sum(-1)


def mean_js_from_logits(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
  """Mean JS divergence (nats) between the softmax outputs of two models on the same examples."""
  if len(logits_a) == 0:
    return float("nan")
  return float(np.mean(js_divergence(softmax(logits_a), softmax(logits_b))))


def zero_retrain_forgetting(model_logits: np.ndarray, random_logits: np.ndarray) -> float:
  """ZRF (Chundawat et al. 2023): 1 - mean JS(model, random model) over the forget set.

  In [1 - ln 2, 1] with natural-log JS; 1 means the model answers the forget
  set like a randomly initialised network.
  """
  return 1.0 - mean_js_from_logits(model_logits, random_logits)


def entropy(probs: np.ndarray) -> np.ndarray:
  """Shannon entropy in nats (N,) of rows of probabilities (N, K)."""
  return special.entr(np.asarray(probs, np.float64)).sum(-1)


# ----------------------------------------------------------------------------
# Membership attacks.

def balanced_subsample(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Equal-sized (a, b): the larger is subsampled without replacement, order kept.

  Equal sizes keep the attack's chance level at 0.5. Sets already of equal
  size are returned unchanged, so the attack on them is the kit's exactly.
  """
  n = min(len(a), len(b))
  rng = np.random.default_rng(seed)
  if len(a) > n:
    a = a[np.sort(rng.choice(len(a), n, replace=False))]
  if len(b) > n:
    b = b[np.sort(rng.choice(len(b), n, replace=False))]
  return a, b


def membership_attack(member_loss: np.ndarray, nonmember_loss: np.ndarray, *,
                      n_splits: int = 10, test_size: float = 0.1, seed: int = 0,
                      min_examples: int = 5) -> np.ndarray:
  """Accuracies (n_splits,) of a loss-threshold attack, as the challenge kit's `simple_mia`.

  The larger side is first subsampled (seeded) to the size of the smaller.
  Samples are [non-members, members] with labels [0, 1], one feature (the
  loss); a default `LogisticRegression` is scored by `cross_val_score` over
  `StratifiedShuffleSplit(n_splits, test_size, random_state=seed)`.

  Returns:
    float64 (n_splits,); all NaN when a side has fewer than `min_examples`.
  """
  from sklearn import linear_model, model_selection  # seconds to import: only when attacking

  member, nonmember = balanced_subsample(np.asarray(member_loss), np.asarray(nonmember_loss), seed)
  if len(member) < min_examples:
    return np.full(n_splits, np.nan)
  samples = np.concatenate([nonmember, member]).astype(np.float64).reshape(-1, 1)
  labels = np.array([0] * len(nonmember) + [1] * len(member))
  splitter = model_selection.StratifiedShuffleSplit(
      n_splits=n_splits, test_size=test_size, random_state=seed)
  return model_selection.cross_val_score(
      linear_model.LogisticRegression(), samples, labels, cv=splitter, scoring="accuracy")


def entropy_member_rate(retain_logits: np.ndarray, test_logits: np.ndarray,
                        forget_logits: np.ndarray, *, seed: int = 0,
                        min_examples: int = 5) -> float:
  """Share of forget examples called members by an entropy attack fit on retain vs test.

  A logistic regression on softmax entropy learns members (retain, label 1)
  from non-members (test, label 0) on equal numbers of each (the larger
  subsampled, seeded), then labels the forget set. A model that forgot should
  score near retrain's rate. NaN when a side has fewer than `min_examples`.
  """
  from sklearn import linear_model  # seconds to import: only when attacking

  member = entropy(softmax(retain_logits))
  nonmember = entropy(softmax(test_logits))
  member, nonmember = balanced_subsample(member, nonmember, seed)
  if len(member) < min_examples or len(forget_logits) == 0:
    return float("nan")
  samples = np.concatenate([nonmember, member]).reshape(-1, 1)
  labels = np.array([0] * len(nonmember) + [1] * len(member))
  attack = linear_model.LogisticRegression().fit(samples, labels)
  return float(np.mean(attack.predict(entropy(softmax(forget_logits)).reshape(-1, 1)) == 1))


# ----------------------------------------------------------------------------
# Anamnesis Index.

def steps_to_target(curve: np.ndarray, target: float) -> float:
  """First index of `curve` (accuracy after 0, 1, ... steps) at or above `target`.

  Returns:
    the number of relearning steps needed (0 = met before relearning), or NaN
    when the curve never reaches the target (the budget ran out) or the target
    is NaN.
  """
  curve = np.asarray(curve)
  if np.isnan(target) or curve.size == 0:
    return float("nan")
  reached = np.flatnonzero(curve >= target)
  return float(reached[0]) if reached.size else float("nan")


def anamnesis_index(model_steps: float, retrain_steps: float) -> float:
  """AIN = model's relearning steps / retrained model's; NaN when undefined.

  Undefined when either count is NaN (budget ran out) or the retrained model
  needs 0 steps (it already knows the forgotten data, so nothing was erased).
  """
  if np.isnan(model_steps) or np.isnan(retrain_steps) or retrain_steps == 0:
    return float("nan")
  return float(model_steps / retrain_steps)
