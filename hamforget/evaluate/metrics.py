"""Metrics from per-example outputs: accuracies and divergences.

Everything here works on host numpy arrays (logits of shape (N, K) float,
integer labels (N,)) in float64, so a metric can be recomputed by anyone from
the saved per-example arrays without JAX. The model-dependent part (logits,
relearning curves) lives in `suite` and `relearn`; the attacks in `attack`,
the Anamnesis Index in `anamnesis`, intervals in `intervals`; what is
reported, in `measures`.
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


def correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Whether each argmax prediction is the label: float64 (..., N) of 0/1 from (..., N, K)."""
  return (np.argmax(logits, -1) == np.asarray(labels)).astype(np.float64)


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


def majority_class(labels: np.ndarray, num_classes: int) -> tuple[int, float]:
  """(the most frequent label of (N,) int labels, its share in [0, 1]): the
  accuracy of always answering it. (-1, NaN) for no labels; ties go to the
  lowest label."""
  labels = np.asarray(labels, np.int64)
  if labels.size == 0:
    return -1, float("nan")
  counts = np.bincount(labels, minlength=num_classes)
  return int(np.argmax(counts)), float(counts.max() / labels.size)


def confusion_matrix(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts (K, K) int64: row = true label, column = argmax prediction."""
  index = np.asarray(labels, np.int64) * num_classes + np.argmax(logits, -1)
  return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


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


def js_from_logits(logits_a: np.ndarray, logits_b: np.ndarray) -> np.ndarray:
  """JS divergence (N,) nats between the softmax outputs of two models on the same examples."""
  return js_divergence(softmax(logits_a), softmax(logits_b))


def mean_js_from_logits(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
  """Mean JS divergence (nats) between the softmax outputs of two models on the same examples."""
  if len(logits_a) == 0:
    return float("nan")
  return float(np.mean(js_from_logits(logits_a, logits_b)))


def zero_retrain_forgetting(model_logits: np.ndarray, random_logits: np.ndarray) -> float:
  """ZRF (Chundawat et al. 2023): 1 - mean JS(model, random model) over the forget set.

  In [1 - ln 2, 1] with natural-log JS; 1 means the model answers the forget
  set like a randomly initialised network.
  """
  return 1.0 - mean_js_from_logits(model_logits, random_logits)


def entropy(probs: np.ndarray) -> np.ndarray:
  """Shannon entropy in nats (N,) of rows of probabilities (N, K)."""
  return special.entr(np.asarray(probs, np.float64)).sum(-1)
