"""Bootstrap intervals of the evaluation's metrics.

Every interval is a percentile bootstrap: the examples a metric averages over
are resampled with replacement (`numpy.random.default_rng`, seeded), the
metric is recomputed on each resample, and the interval is the central
`level` share of those replicates (bias-corrected where the resamples are
biased: `percentile_interval`). Two-sample metrics (an attack's members
against non-members) resample each side apart, so both sides keep their
sizes. Where a population of seeds exists, `seed_and_example_mean_interval`
resamples a seed as well, so the interval holds both sources of noise.

An interval needs at least two examples: with fewer it is (NaN, NaN).
"""

from __future__ import annotations

import statistics
from typing import Callable

import numpy as np

NAN = float("nan")


def indices(size: int, num_resamples: int, rng: np.random.Generator) -> np.ndarray:
  """Resampled indices (num_resamples, size) int64, drawn with replacement from range(size)."""
  return rng.integers(0, size, (num_resamples, size))


def percentile_interval(replicates: np.ndarray, level: float,
                        point: float | None = None) -> tuple[float, float]:
  """(low, high): the central `level` share of finite `replicates`; NaN if none is finite.

  With `point` (the statistic on the data itself), the bias-corrected
  percentile interval (Efron 1987, BCa without acceleration): the percentiles
  move by how far the replicates' median lies from `point`. For statistics
  whose resamples are biased (a cross-validated attack refit on resamples with
  repeated examples scores lower than on the data), it keeps the interval
  around the value; for unbiased ones it is the plain interval.
  """
  replicates = np.asarray(replicates, np.float64)
  replicates = replicates[np.isfinite(replicates)]
  if replicates.size == 0:
    return NAN, NAN
  tail = (1.0 - level) / 2.0
  low, high = tail, 1.0 - tail
  if point is not None and np.isfinite(point):
    # Share of replicates below the point (ties count half), kept off 0 and 1.
    below = (np.sum(replicates < point) + 0.5 * np.sum(replicates == point)) / replicates.size
    below = min(max(below, 1.0 / replicates.size), 1.0 - 1.0 / replicates.size)
    normal = statistics.NormalDist()
    bias, z = normal.inv_cdf(below), normal.inv_cdf(high)
    low, high = normal.cdf(2 * bias - z), normal.cdf(2 * bias + z)
  low, high = np.percentile(replicates, [100.0 * low, 100.0 * high])
  return float(low), float(high)


def mean_interval(values: np.ndarray, *, num_resamples: int, level: float,
                  seed: int) -> tuple[float, float]:
  """Interval of the mean of `values` (N,) over resampled examples; (NaN, NaN) for N < 2."""
  values = np.asarray(values, np.float64)
  if values.size < 2:
    return NAN, NAN
  rng = np.random.default_rng(seed)
  return percentile_interval(values[indices(values.size, num_resamples, rng)].mean(-1), level)


def two_sample_interval(statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
                        a: np.ndarray, b: np.ndarray, *, num_resamples: int, level: float,
                        seed: int) -> tuple[float, float]:
  """Interval of `statistic(a, b)`, each sample resampled apart; (NaN, NaN) if one has < 2.

  Args:
    statistic: maps resampled (R, N_a) and (R, N_b) arrays to R replicates.
    a, b: (N_a,) and (N_b,) samples.
  """
  a, b = np.asarray(a), np.asarray(b)
  if a.size < 2 or b.size < 2:
    return NAN, NAN
  rng = np.random.default_rng(seed)
  replicates = statistic(a[indices(a.size, num_resamples, rng)],
                         b[indices(b.size, num_resamples, rng)])
  return percentile_interval(replicates, level)


def seed_and_example_mean_interval(values: np.ndarray, *, num_resamples: int, level: float,
                                   seed: int) -> tuple[float, float]:
  """Interval of one run's mean when both the run's seed and the examples vary.

  Each replicate draws one of the M seeds at random and resamples the N
  examples: the spread of the value a rerun of the experiment would report.

  Args:
    values: (M, N) per-example values (e.g. 0/1 correctness) of M seeds.
  """
  values = np.asarray(values, np.float64)
  if values.ndim != 2 or values.shape[1] < 2:
    return NAN, NAN
  rng = np.random.default_rng(seed)
  seeds = rng.integers(0, values.shape[0], num_resamples)
  replicates = values[seeds[:, None], indices(values.shape[1], num_resamples, rng)].mean(-1)
  return percentile_interval(replicates, level)
