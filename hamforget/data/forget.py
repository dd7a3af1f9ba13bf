"""Forget requests: what to forget, and the mask over the training set it picks.

Three kinds, each a real deletion scenario:
  classes:  every training image of some classes (the classic benchmark).
  groups:   every image of some groups (a patient withdraws a lesion: the GDPR
            case), named by id or drawn at random. A group is never split: all
            of its training images are forgotten together.
  examples: single images, named by id or drawn at random.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from hamforget.data.errors import DataError
from hamforget.data.types import Examples

KINDS = ("classes", "groups", "examples")
# The config defaults (configs/common.py): a key the kind ignores must keep its
# default, so a value set there is seen (`config_checks`), not silently unused.
DEFAULT_CLASSES = "0"
DEFAULT_FRACTION = 0.1


def _tokens(text: Any) -> list[str]:
  """Comma-separated config value -> stripped non-empty tokens."""
  if isinstance(text, (list, tuple)):
    return [str(t).strip() for t in text if str(t).strip()]
  return [t.strip() for t in str(text).split(",") if t.strip()]


def parse_classes(text: Any, class_names: Sequence[str]) -> tuple[int, ...]:
  """"mel,nv" or "0,4" (or a mix) -> sorted unique class indices."""
  indices = []
  for token in _tokens(text):
    if token in class_names:
      indices.append(list(class_names).index(token))
    elif token.lstrip("-").isdigit():
      index = int(token)
      if not 0 <= index < len(class_names):
        raise ValueError(
            f"forget.classes: class index {index} out of range, expected "
            f"0..{len(class_names) - 1} or a name in {tuple(class_names)}")
      indices.append(index)
    else:
      raise ValueError(
          f"forget.classes: unknown class {token!r}, expected a name in "
          f"{tuple(class_names)} or an index 0..{len(class_names) - 1}")
  if not indices:
    raise ValueError(f"forget.classes is empty ({text!r}); expected e.g. '0' or 'mel,nv'")
  return tuple(sorted(set(indices)))


@dataclasses.dataclass(frozen=True)
class ForgetRequest:
  """What to forget.

  Attributes:
    kind: "classes", "groups" or "examples".
    classes: class indices (kind "classes"; empty otherwise).
    fraction: share of training groups/examples to draw at random, in (0, 1)
      (kind "groups"/"examples" without ids; 0.0 when unused).
    ids: explicit group ids (kind "groups") or example ids (kind "examples").
  """
  kind: str
  classes: tuple[int, ...] = ()
  fraction: float = 0.0
  ids: tuple[str, ...] = ()

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"forget.kind {self.kind!r} unknown, expected one of {KINDS}")
    if self.kind == "classes" and not self.classes:
      raise ValueError("forget.kind='classes' needs at least one class in forget.classes")
    if self.kind != "classes" and not self.ids and not 0.0 < self.fraction < 1.0:
      raise ValueError(
          f"forget.fraction={self.fraction} must be in (0, 1) for kind={self.kind!r} "
          "without explicit forget.ids")

  @classmethod
  def from_config(cls, forget_config: Any, class_names: Sequence[str]) -> "ForgetRequest":
    """Parses `config.forget` (kind, classes, fraction, ids).

    Only the fields the kind uses are kept: classes for "classes", ids or else
    fraction for "groups"/"examples". Explicit ids win over fraction.

    Raises:
      ValueError: bad kind, unknown class name or index, fraction outside
        (0, 1) when it is used.
    """
    kind = str(forget_config.kind).strip()
    if kind not in KINDS:
      raise ValueError(f"forget.kind {kind!r} unknown, expected one of {KINDS}")
    if kind == "classes":
      return cls(kind, classes=parse_classes(forget_config.classes, class_names))
    ids = tuple(_tokens(forget_config.ids))
    if ids:
      return cls(kind, ids=ids)
    return cls(kind, fraction=float(forget_config.fraction))

  def describe(self, class_names: Sequence[str] | None = None) -> str:
    """One line for logs, e.g. "classes: mel (4)" or "groups: 10.0% at random"."""
    if self.kind == "classes":
      if class_names is None:
        return "classes: " + ", ".join(str(c) for c in self.classes)
      return "classes: " + ", ".join(f"{class_names[c]} ({c})" for c in self.classes)
    if self.ids:
      shown = ", ".join(self.ids[:5]) + (", ..." if len(self.ids) > 5 else "")
      return f"{self.kind}: {len(self.ids)} ids ({shown})"
    return f"{self.kind}: {100 * self.fraction:.1f}% at random"


def _check_ids_present(wanted: Sequence[str], present: np.ndarray, what: str) -> None:
  missing = sorted(set(wanted) - set(np.asarray(present).astype(str).tolist()))
  if missing:
    shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
    raise DataError(f"forget.ids: {what} not in the training set: {shown} (the training "
                    f"rows of a run's splits.csv list them; with data.limit, only the kept "
                    f"examples count)")


def forget_mask(train: Examples, request: ForgetRequest, seed: int) -> np.ndarray:
  """The training examples the request forgets.

  Args:
    train: the training split.
    request: what to forget.
    seed: draws the random groups/examples; the same seed gives the same set.

  Returns:
    bool (N_train,), True = forget, False = retain.

  Raises:
    ValueError: ids not in the training set, a class without training
      examples, or a request that would forget every training example.
  """
  n = len(train)
  rng = np.random.default_rng(seed)
  if request.kind == "classes":
    labels = np.asarray(train.labels)
    empty = [c for c in request.classes if not np.any(labels == c)]
    if empty:
      raise ValueError(f"forget.classes: classes {empty} have no training examples")
    mask = np.isin(labels, request.classes)
  elif request.kind == "groups":
    groups = np.asarray(train.groups).astype(str)
    if request.ids:
      _check_ids_present(request.ids, groups, "group ids")
      chosen = np.asarray(request.ids)
    else:
      names = np.unique(groups)  # sorted, so the draw does not depend on row order
      count = max(1, int(round(request.fraction * len(names))))
      chosen = rng.choice(names, size=min(count, len(names)), replace=False)
    mask = np.isin(groups, chosen)
  elif request.kind == "examples":
    if request.ids:
      ids = np.asarray(train.ids).astype(str)
      _check_ids_present(request.ids, ids, "example ids")
      mask = np.isin(ids, np.asarray(request.ids))
    else:
      count = max(1, int(round(request.fraction * n)))
      mask = np.zeros(n, bool)
      mask[rng.choice(n, size=min(count, n), replace=False)] = True
  else:  # unreachable: __post_init__ checks the kind
    raise ValueError(f"forget.kind {request.kind!r} unknown, expected one of {KINDS}")
  if mask.all():
    raise ValueError(
        f"forget request ({request.describe()}) would forget all {n} training "
        "examples and leave nothing to retain")
  return mask
