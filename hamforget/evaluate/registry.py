"""The metric registry: what a metric is given, how it is registered, how a row is made.

A metric is a function of one `Context` (everything measured of one model and
its references) returning {name: float}, registered with `@metric` and the
documentation of every name it may return:

    @metric({"acc_forget_top2": "share of forget examples whose label is in the top 2"})
    def top2_accuracy(c: Context) -> dict[str, float]:
      forget = c.outputs["forget"]
      top2 = np.argsort(forget["logits"], -1)[:, -2:]
      return {"acc_forget_top2": float(np.mean(np.any(top2 == forget["labels"][:, None], -1)))}

A summary is a function of a finished row and retrain's row, registered
with `@summary` the same way (e.g. the mean gap to retrain); it runs after
every metric of every model (`summarise`).

A registration may also say each name's unit and ideal (`unit=`, `ideal=`:
one string for every name it documents, or a mapping name -> string), so the
report's legend (`hamforget.legend`) is generated from here and never drifts
from the code:

    @metric({"acc_forget_top2": "..."}, unit=FRACTION, ideal=RETRAIN)

`METRICS` (name -> documentation), `COLUMNS` (name -> `Column`: meaning,
unit, ideal) and the table's column order follow the order of registration,
metrics before summaries. Names containing `CLASS` stand for one metric per
class name. Nothing here imports JAX: `configs/` and `report` read it cheaply.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

CLASS = "<class>"
NAN = float("nan")

# Units of the legend, the words a reader meets there.
FRACTION = "fraction (0-1)"
NATS = "nats"
SECONDS = "seconds"
COUNT = "count"
FLAG = "yes/no"
RATIO = "ratio"
# Ideals: where a good unlearned model lands. Most are relative to retrain
# (the model that never saw the forget set), not to a fixed number.
RETRAIN = "closer to retrain is better"
HIGHER = "higher is better"
LOWER = "lower is better"
CONTEXT = "none: context for reading the others"


@dataclasses.dataclass(frozen=True)
class Column:
  """What the legend says of one result column.

  Attributes:
    meaning: the registered documentation.
    unit: one of the units above or free text; "" when the registration gave none.
    ideal: one of the ideals above or free text; "" when the registration gave none.
  """
  meaning: str
  unit: str = ""
  ideal: str = ""

# split -> {"logits": float32 (N, K), "labels": int32 (N,), "loss": float64 (N,) nats}.
Outputs = Mapping[str, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Context:
  """What a metric is given about one model; arrays are host numpy arrays.

  Attributes:
    name: the model's name in the table.
    outputs: the model's per-example outputs on every split evaluated:
      "retain", "forget", "test" always, "val" when given (see `Outputs`).
    original, retrain: the references' outputs; None when the reference is
      not among the models evaluated.
    forget_classes: the request's forgotten classes; () unless a class request.
    class_names: the K class names, in label order.
    costs, retrain_costs: the runs that made this model and the retrained one:
      {"work_s", "compile_s", "steps", "examples_seen", "initial_loss",
      "final_loss"}; a
      missing key (or a missing run: {}) means unknown.
    random_forget_logits: (N_forget, K) logits of an untrained network of the
      same architecture on the forget set (ZRF's reference).
    curve, retrain_curve: held-out forget accuracy after 0, 1, ..., budget
      relearning steps of this model and of the retrained one
      (`relearn.relearn_curve`; NaN after the step that met `relearn_target`);
      None when the Anamnesis Index is off or not computable.
    relearn_target: the accuracy relearning must regain (`anamnesis.target`
      of the original's), the one every curve stopped at; NaN when the
      Anamnesis Index is off or not computable.
    retain_curve: this model's accuracy on held-out examples of the retained
      classes at the same steps; None like `curve`.
    populations: for the NeurIPS 2023 challenge score, (this model's
      population, the retrained population), each {"forget_logits" (M, N, K),
      "retain_acc" (M,), "test_acc" (M,), "<split>_correct" (M, N_split) 0/1
      for retain, forget and test}; None without populations.
    config: the `config.evaluate` section (`evaluate.config`).
  """
  name: str
  outputs: Outputs
  original: Optional[Outputs]
  retrain: Optional[Outputs]
  forget_classes: tuple[int, ...]
  class_names: tuple[str, ...]
  costs: Mapping[str, Any]
  retrain_costs: Mapping[str, Any]
  random_forget_logits: Any
  curve: Any
  retrain_curve: Any
  retain_curve: Any
  relearn_target: float
  populations: Optional[tuple[Mapping[str, Any], Mapping[str, Any]]]
  config: Any


MetricFn = Callable[[Context], Mapping[str, float]]
# (this model's row, retrain's row) -> {name: float}.
SummaryFn = Callable[[Mapping[str, float], Mapping[str, float]], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class _Registered:
  fn: Callable
  docs: Mapping[str, str]
  columns: Mapping[str, Column]


# In registration order, which is the order of every result row.
_REGISTERED: list[_Registered] = []
_SUMMARIES: list[_Registered] = []
# Every documented name -> its documentation; derived from the registrations.
_METRIC_DOCS: dict[str, str] = {}
_SUMMARY_DOCS: dict[str, str] = {}
METRICS: dict[str, str] = {}
COLUMNS: dict[str, Column] = {}

# A unit or ideal: one for every name of a registration, or name -> its own.
PerName = str | Mapping[str, str]


def _rebuild() -> None:
  METRICS.clear()
  METRICS.update(_METRIC_DOCS)
  METRICS.update(_SUMMARY_DOCS)
  COLUMNS.clear()
  for registered in _REGISTERED + _SUMMARIES:
    COLUMNS.update(registered.columns)


def _of(value: PerName, name: str) -> str:
  if isinstance(value, str):
    return value
  base = name.removesuffix("_ci_low").removesuffix("_ci_high")
  return value.get(name, value.get(base, ""))


def _columns(docs: Mapping[str, str], unit: PerName, ideal: PerName) -> dict[str, Column]:
  """name -> Column; an interval's ends share their metric's unit and have no ideal."""
  columns = {}
  for name, doc in docs.items():
    is_end = name.endswith(("_ci_low", "_ci_high"))
    columns[name] = Column(doc, _of(unit, name), "" if is_end else _of(ideal, name))
  return columns


def _registrar(kind: str, into: list[_Registered], docs_of: dict[str, str],
               docs: Mapping[str, str], unit: PerName, ideal: PerName):
  def register(fn):
    taken = sorted(set(docs) & set(METRICS))
    if taken:
      raise ValueError(f"{fn.__qualname__}: {kind} {taken} are already registered")
    into.append(_Registered(fn, dict(docs), _columns(docs, unit, ideal)))
    docs_of.update(docs)
    _rebuild()
    return fn
  return register


def metric(docs: Mapping[str, str], *, unit: PerName = "",
           ideal: PerName = "") -> Callable[[MetricFn], MetricFn]:
  """Registers a metric function with the documentation of every name it returns.

  Args:
    docs: name -> what it measures.
    unit, ideal: for the legend (see `Column`): one string for every name,
      or name -> string (an interval's ends take their metric's unit).

  Raises:
    ValueError: a name is already documented by another metric.
  """
  return _registrar("metrics", _REGISTERED, _METRIC_DOCS, docs, unit, ideal)


def summary(docs: Mapping[str, str], *, unit: PerName = "",
            ideal: PerName = "") -> Callable[[SummaryFn], SummaryFn]:
  """Registers a summary: a function of (row, retrain's row), run after every metric.

  `unit` and `ideal` as for `metric`.

  Raises:
    ValueError: a name is already documented by another metric or summary.
  """
  return _registrar("metrics", _SUMMARIES, _SUMMARY_DOCS, docs, unit, ideal)


def unregister(fn: Callable) -> None:
  """Removes a metric or summary registered here (tests use it to clean up)."""
  for into, docs_of in ((_REGISTERED, _METRIC_DOCS), (_SUMMARIES, _SUMMARY_DOCS)):
    for registered in [r for r in into if r.fn is fn]:
      into.remove(registered)
      for name in registered.docs:
        del docs_of[name]
  _rebuild()


def _expand(names, class_names: Sequence[str]) -> list[str]:
  expanded = []
  for name in names:
    if CLASS in name:
      expanded.extend(name.replace(CLASS, str(c)) for c in class_names)
    else:
      expanded.append(name)
  return expanded


def metric_names(class_names: Sequence[str]) -> list[str]:
  """Every metric of a result row, with `<class>` expanded over `class_names`."""
  return _expand(METRICS, class_names)


def measure(context: Context) -> dict[str, float]:
  """Every registered metric of one model: a row with every name of `metric_names`.

  A name a metric leaves out is NaN.

  Raises:
    RuntimeError: a metric returned a name its registration does not document.
  """
  row = {}
  for registered in _REGISTERED:
    values = registered.fn(context)
    undocumented = set(values) - set(_expand(registered.docs, context.class_names))
    if undocumented:
      raise RuntimeError(f"{registered.fn.__qualname__} returned metrics its @metric does not "
                         f"document: {sorted(undocumented)}")
    row.update(values)
  return {name: float(row.get(name, NAN)) for name in metric_names(context.class_names)}


def summarise(row: Mapping[str, float],
              reference: Optional[Mapping[str, float]]) -> dict[str, float]:
  """`row` with every registered summary filled in against `reference` (retrain's row).

  Without a reference the summaries stay NaN. Retrain's own row is
  summarised against itself.

  Raises:
    RuntimeError: a summary returned a name its registration does not document.
  """
  row = dict(row)
  if reference is None:
    return row
  for registered in _SUMMARIES:
    values = registered.fn(row, reference)
    undocumented = set(values) - set(registered.docs)
    if undocumented:
      raise RuntimeError(f"{registered.fn.__qualname__} returned metrics its @summary does not "
                         f"document: {sorted(undocumented)}")
    row.update({name: float(value) for name, value in values.items()})
  return row
