"""Where SISA puts each training example: its shard, its slice, its position.

The training split is dealt into S shards x R slices (S * R bins). The unit
dealt is the group, so all images of one lesion land in one shard and one
slice, and deleting a patient's lesion touches one shard and, in it, one
slice. Within each class stratum (a group's majority label) groups are shuffled
with the seed and dealt, largest first, to the bin holding the fewest images
of that class so far: every bin gets its share of every class.

Each shard's positions are a fixed (R, C) grid (C, the capacity of one slice:
the largest bin), padded and masked, so every shard has the same shapes (they
are vmapped together) and a deletion only clears mask bits: no shape changes,
nothing recompiles. The layout is host data (numpy); the trainer ships its
arrays to the device.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PADDING = -1


@dataclasses.dataclass(frozen=True)
class Layout:
  """The shards and slices of a training split, and what remains in them.

  Attributes:
    index: int32 (S, R, C), the training-split row at each position;
      `PADDING` (-1) where a slice holds fewer than C examples.
    valid: bool (S, R, C), True where a position holds an example still in
      the training data: False for padding and for deleted examples.
  """
  index: np.ndarray
  valid: np.ndarray

  def __post_init__(self):
    if self.index.shape != self.valid.shape or self.index.ndim != 3:
      raise ValueError(f"Layout: index {self.index.shape} and valid {self.valid.shape} must "
                       "both be (shards, slices, capacity)")
    if np.any(self.valid & (self.index == PADDING)):
      raise ValueError("Layout: a padding position is marked valid")

  @property
  def num_shards(self) -> int:
    return self.index.shape[0]

  @property
  def num_slices(self) -> int:
    return self.index.shape[1]

  @property
  def capacity(self) -> int:
    """C, positions per slice."""
    return self.index.shape[2]

  def rows(self, shard: int, last_slice: int | None = None) -> np.ndarray:
    """Sorted training rows remaining in `shard`, in its slices 0..last_slice (all by default)."""
    stop = self.num_slices if last_slice is None else last_slice + 1
    index, valid = self.index[shard, :stop], self.valid[shard, :stop]
    return np.sort(index[valid])

  def sizes(self) -> np.ndarray:
    """int (S, R): examples remaining in each slice of each shard."""
    return self.valid.sum(axis=2)

  def deleted(self, rows: np.ndarray) -> np.ndarray:
    """bool (S, R, C): the positions of `rows` (training rows, int or a bool
    mask over the split) that are still valid."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
      rows = np.flatnonzero(rows)
    return self.valid & np.isin(self.index, rows)

  def first_affected_slices(self, rows: np.ndarray) -> np.ndarray:
    """int (S,): per shard, the first slice holding one of `rows`; R where none does.

    A deletion restores each shard's state from before this slice; shards at R
    are untouched.
    """
    hit = self.deleted(rows).any(axis=2)  # (S, R)
    return np.where(hit.any(axis=1), hit.argmax(axis=1), self.num_slices)

  def without(self, rows: np.ndarray) -> "Layout":
    """The layout after deleting `rows` (training rows, int or a bool mask): same shapes."""
    return Layout(self.index, self.valid & ~self.deleted(rows))


def _group_table(labels: np.ndarray, groups: np.ndarray):
  """Unique groups (sorted), their majority label (ties to the lowest class),
  their size, and each row's group number."""
  names, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
  inverse = inverse.reshape(-1)
  labels = np.asarray(labels, np.int64)
  counts = np.zeros((len(names), int(labels.max()) + 1 if len(labels) else 1), np.int64)
  np.add.at(counts, (inverse, labels), 1)
  return counts.argmax(axis=1), counts.sum(axis=1), inverse


def make_layout(labels: np.ndarray, groups: np.ndarray, num_shards: int, num_slices: int,
                seed: int) -> Layout:
  """Deals the training split's groups into `num_shards` x `num_slices` bins.

  Args:
    labels: int (N,) of the training split.
    groups: str (N,), the unit never split (HAM10000's lesion_id; the example
      id where the data has no groups).
    num_shards, num_slices: S and R, both >= 1.
    seed: the same seed gives the same layout; each class draws its own
      stream (seed, class).

  Returns:
    The Layout, every example valid. Within a bin, rows keep their order in
    the split (batches are drawn from a bin in a random order anyway).

  Raises:
    ValueError: S or R below 1, or more bins than groups (a bin would be
      empty: a shard model with nothing to learn from).
  """
  if num_shards < 1 or num_slices < 1:
    raise ValueError(f"sisa: shards={num_shards}, slices={num_slices}: expected both >= 1")
  group_label, group_size, inverse = _group_table(labels, groups)
  num_bins = num_shards * num_slices
  if len(group_size) < num_bins:
    raise ValueError(f"sisa: {num_shards} shards x {num_slices} slices = {num_bins} bins for "
                     f"{len(group_size)} groups: expected at least one group per bin")
  bin_of_group = np.zeros(len(group_size), np.int64)
  total = np.zeros(num_bins, np.int64)
  for label in np.unique(group_label):
    members = np.flatnonzero(group_label == label)
    members = members[np.random.default_rng([seed, int(label)]).permutation(len(members))]
    # Largest groups first (stable: the shuffle orders equal sizes), each to the
    # bin with the fewest images of this class, then the fewest overall.
    members = members[np.argsort(-group_size[members], kind="stable")]
    of_class = np.zeros(num_bins, np.int64)
    for group in members:
      target = np.lexsort((np.arange(num_bins), total, of_class))[0]
      bin_of_group[group] = target
      of_class[target] += group_size[group]
      total[target] += group_size[group]
  bin_of_row = bin_of_group[inverse]
  capacity = int(total.max())
  index = np.full((num_bins, capacity), PADDING, np.int32)
  for b in range(num_bins):
    rows = np.flatnonzero(bin_of_row == b)
    index[b, :len(rows)] = rows
  # Bin b is shard b % S, slice b // S: consecutive bins (dealt to first on
  # ties) spread over shards before slices.
  index = index.reshape(num_slices, num_shards, capacity).transpose(1, 0, 2)
  return Layout(np.ascontiguousarray(index), index != PADDING)
