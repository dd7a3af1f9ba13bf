"""The evaluation suite: what is measured of every model, in one place.

`suite.evaluate_models` measures the original, the retrained and every
unlearned model with every metric registered in `measures` (one function
each, its documentation beside it; see `registry`). Each row of its results
holds every name of `METRICS` (NaN where a metric does not apply, e.g. class
metrics of a group request or the challenge score without populations);
headline metrics have `<name>_ci_low` / `<name>_ci_high` beside them (95%
bootstrap intervals, `intervals`), and every row ends with the summaries
(`gap_to_retrain`), computed against retrain's row.

`METRICS` maps each name to its documentation, in the table's column order;
names with `<class>` stand for one metric per class name (see `metric_names`).

This package imports nothing heavy (no JAX): `configs/` and `report` read it
cheaply; `suite` is the part that runs models.
"""

from hamforget.evaluate import measures  # noqa: F401  (registers every metric)
from hamforget.evaluate.registry import CLASS, METRICS, Context, metric, metric_names, summary

__all__ = ["CLASS", "METRICS", "Context", "metric", "metric_names", "summary"]
