"""The Anamnesis Index (Chundawat et al. 2023) from relearning curves, counted as the reference.

The reference (`relearn_time` in ayushkumartarun/zero-shot-unlearning's
metrics.py) takes an optimiser step, then measures, and stops once the
accuracy reaches the target: a count starts at 1, even for a model that
already met the target before relearning. When its budget runs out it returns
the budget as if the target had been met; here that count is kept as a bound
and flagged instead (`CENSORED_*`).
"""

from __future__ import annotations

import math

import numpy as np

# `ain_censored` codes: how far the index can be trusted.
EXACT = 0.0            # both counts met the target within the budget
LOWER_BOUND = 1.0      # this model ran out of budget: the true index is at least `ain`
UPPER_BOUND = -1.0     # retrain ran out of budget: the true index is at most `ain`
NO_BOUND = 2.0         # both ran out: `ain` is NaN, raise `evaluate.relearn_steps`


def target(original_accuracy: float, alpha: float) -> float:
  """The accuracy relearning must regain: (1 - alpha) x the original's, on
  the held-out forget examples before any relearning (float64)."""
  return (1.0 - alpha) * float(original_accuracy)


def stop_threshold(target_: float) -> np.float32:
  """`target_` as the float32 the relearning loop compares its accuracies with.

  Rounded up where float32 rounds down, so the loop never stops at a step
  whose accuracy `relearn_steps` (comparing in float64) would not count as
  reaching the target; NaN stays NaN (never stop).
  """
  single = np.float32(target_)
  # float(): numpy would compare a float32 with a Python float in float32.
  return np.nextafter(single, np.float32(np.inf)) if float(single) < target_ else single


def relearn_steps(curve: np.ndarray, target: float) -> tuple[float, bool]:
  """Relearning steps to reach `target`, counted from 1 as the reference counts.

  Args:
    curve: (budget + 1,) accuracy after 0, 1, ..., budget steps; NaN after
      the step at which a relearning loop stopped, having met the target.
    target: the accuracy to reach.

  Returns:
    (steps, censored): the first s >= 1 with curve[s] >= target and False;
    (budget, True) when no step reaches it (the true count exceeds the
    budget); (NaN, False) when the target is NaN or there is no step.
  """
  curve = np.asarray(curve, np.float64)
  budget = curve.size - 1
  if math.isnan(target) or budget < 1:
    return float("nan"), False
  reached = np.flatnonzero(curve[1:] >= target)
  if reached.size:
    return float(reached[0] + 1), False
  return float(budget), True


def anamnesis_index(steps: float, censored: bool, retrain_steps: float,
                    retrain_censored: bool) -> tuple[float, float]:
  """(AIN, censoring code): this model's relearning steps over retrain's.

  A censored count stands for "more than the budget", so the ratio is a
  lower bound when only this model's count is censored and an upper bound
  when only retrain's is; with both censored it is unknown (NaN, `NO_BOUND`).
  NaN with code NaN when a count is missing.
  """
  if math.isnan(steps) or math.isnan(retrain_steps):
    return float("nan"), float("nan")
  if censored and retrain_censored:
    return float("nan"), NO_BOUND
  code = LOWER_BOUND if censored else UPPER_BOUND if retrain_censored else EXACT
  return float(steps / retrain_steps), code
