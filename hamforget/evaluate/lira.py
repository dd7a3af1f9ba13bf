"""A per-example likelihood-ratio attack on unlearning (U-LiRA), from populations.

Hayes et al. 2024, "Inexact unlearning needs more careful evaluations to avoid
a false sense of privacy": an attacker who can train models of both kinds
(unlearned, and retrained without the example) fits, for every forget example,
one Gaussian to each kind's logit-scaled confidences
log p(y) - log(1 - p(y)) and asks of a model it is shown which Gaussian its
confidence is likelier under. Averaged over examples, an attack accuracy of
0.5 means the unlearned models cannot be told from retraining example by
example; a population-level attack (`attack`) can miss this, as it pools
examples and so averages away per-example differences.

Here the two kinds are the challenge's populations (`suite.pair_populations`):
M unlearned models and M held-out retrained ones. Each model is attacked with
Gaussians fitted to the others (leave one model out), so no model is scored by
a Gaussian that saw it. Leaving one out leaves a model's own side a little
wider and further away than the side it is compared with, so even two
populations of one distribution score a little under 0.5: read an operator's
value against retrain's row, which attacks retrained models against retrained
ones at the same M.
"""

from __future__ import annotations

import numpy as np

# Standard deviations below this (in units of logit-scaled confidence) are
# raised to it: a collapsed population would otherwise give a zero-width
# Gaussian, and its log-density an inf.
MIN_STD = 1e-3


def _log_normal(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
  return -0.5 * (np.log(2.0 * np.pi * var) + (x - mean) ** 2 / var)


def _fit(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-example mean and variance (N,) of values (M, N) (unbiased, floored)."""
  return values.mean(0), np.maximum(values.var(0, ddof=1), MIN_STD ** 2)


def _fit_leaving_out(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-example mean and variance (M, N) of the M - 1 values other than each one."""
  m = values.shape[0]
  total, squares = values.sum(0), (values ** 2).sum(0)
  mean = (total - values) / (m - 1)
  var = ((squares - values ** 2) - (m - 1) * mean ** 2) / (m - 2)
  return mean, np.maximum(var, MIN_STD ** 2)


def example_accuracies(unlearned_conf: np.ndarray, retrained_conf: np.ndarray) -> np.ndarray:
  """Balanced accuracy (N,) of the per-example attack on every forget example.

  Args:
    unlearned_conf: (M_u, N) logit-scaled confidences under the unlearned models.
    retrained_conf: (M_r, N) the same under the retrained models; M_u, M_r >= 3.

  Returns:
    float64 (N,): for each example, the mean of the share of unlearned models
    called unlearned and the share of retrained models called retrained, in
    [0, 1]; 0.5 is chance.
  """
  unlearned = np.asarray(unlearned_conf, np.float64)
  retrained = np.asarray(retrained_conf, np.float64)
  if min(len(unlearned), len(retrained)) < 3:
    raise ValueError(f"the per-example attack needs at least 3 models a side (one left out, "
                     f"a variance from the rest), got {len(unlearned)} and {len(retrained)}")
  if unlearned.shape[1:] != retrained.shape[1:]:
    raise ValueError(f"populations disagree on the forget set: {unlearned.shape} vs "
                     f"{retrained.shape}")
  unlearned_fit, retrained_fit = _fit(unlearned), _fit(retrained)
  # Each unlearned model against its own side without it and the whole other side.
  own = _log_normal(unlearned, *_fit_leaving_out(unlearned))
  called_unlearned = own > _log_normal(unlearned, *retrained_fit)
  own = _log_normal(retrained, *_fit_leaving_out(retrained))
  called_retrained = own > _log_normal(retrained, *unlearned_fit)
  return 0.5 * (called_unlearned.mean(0) + called_retrained.mean(0))
