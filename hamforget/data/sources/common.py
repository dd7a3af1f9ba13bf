"""Pieces every source shares: the skin-lesion class order and the `limit` subset."""

from __future__ import annotations

import numpy as np

# HAM10000 `dx` codes in alphabetical order, which is also MedMNIST
# DermaMNIST's label order, so the two sources agree on label indices:
# actinic keratoses / intraepithelial carcinoma, basal cell carcinoma, benign
# keratosis-like lesions, dermatofibroma, melanoma, melanocytic nevi,
# vascular lesions.
SKIN_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

MNIST_CLASSES = tuple(str(d) for d in range(10))


def limit_index(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
  """Indices of a deterministic, class-stratified subset of at most `limit` examples.

  Each class keeps about `limit / N` of its examples (rare classes are not
  squeezed out of small smoke-run subsets), picked after a seeded shuffle.

  Args:
    labels: int (N,).
    limit: the subset size; <= 0 or >= N keeps everything.
    seed: the shuffle's seed; the same inputs always give the same subset.

  Returns:
    int64 (min(limit, N),) indices in increasing order (the source's order).
  """
  n = len(labels)
  if limit <= 0 or limit >= n:
    return np.arange(n)
  order = np.random.default_rng(seed).permutation(n)
  _, cls, counts = np.unique(labels[order], return_inverse=True, return_counts=True)
  # Rank of each shuffled example within its class, as a fraction of the class
  # size: taking the `limit` smallest fractions takes every class pro rata.
  by_class = np.argsort(cls, kind="stable")
  rank = np.empty(n)
  rank[by_class] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
  fraction = (rank + 0.5) / counts[cls]
  chosen = order[np.argsort(fraction, kind="stable")[:limit]]
  return np.sort(chosen)
