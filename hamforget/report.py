"""The results of an experiment on disk: tables (JSON, CSV, Markdown), arrays, plots.

`write_report` turns what `evaluate.suite.evaluate_models` returns into files
that need no hamforget to read: `pandas.DataFrame(json.load(...)).T` is the
table, every per-example array is in plain `.npz` files (no pickles), so any
metric can be recomputed, and the plots are PNGs (`hamforget.plots`).
results.md opens with a legend generated from the metric registry
(`hamforget.legend`): every column it shows is explained there, with its unit
and where a good model lands. `format_table` is the short table the launcher
prints at the end of a run.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from hamforget import cells, files, legend, plots
from hamforget.cells import is_missing as _is_missing
from hamforget.evaluate import metrics as metric_math

Results = Mapping[str, Mapping[str, float]]

# The columns of the original HAM10000 unlearning study (the project's seed
# table): header -> metric (or (mean, std) pair). Its losses are every
# model's cross-entropy at evaluation, one definition for every row (the
# runs' own loss curves, `loss_initial` / `loss_final`, are each operator's
# objective and not comparable across rows).
SEED_COLUMNS = (
    ("Attack Accuracy", "mia_acc"),
    ("Retain Loss mean (std)", ("loss_retain_mean", "loss_retain_std")),
    ("Test Loss mean (std)", ("loss_test_mean", "loss_test_std")),
    ("Forget Loss mean (std)", ("loss_forget_mean", "loss_forget_std")),
    ("Attack n a side", "mia_examples"),
)
# The full table of results.md: the main metrics, not every per-class one
# (those have a table of their own). majority_acc_test sits beside the
# accuracies it is the floor of.
MAIN_METRICS = (
    "gap_to_retrain", "acc_retain", "acc_forget", "acc_test", "majority_acc_test",
    "bal_acc_test", "acc_test_forget_classes", "acc_test_other_classes", "loss_forget_mean",
    "loss_test_mean", "loss_gap_forget_test", "over_forgetting", "mia_acc", "mia_auc",
    "mia_tpr_at_1pct_fpr", "mia_tpr_at_5pct_fpr", "mia_examples", "entropy_member_rate", "ain",
    "relearn_steps", "relearn_retain_acc", "zrf", "js_to_retrain_forget", "js_to_retrain_test",
    "challenge_score", "lira_acc", "work_s", "compile_s", "work_ratio_to_retrain", "steps",
    "examples_seen",
)
# The ranking by gap to retrain: its columns besides the gap.
RANK_METRICS = ("acc_retain", "acc_forget", "acc_test", "mia_acc", "over_forgetting")
# The table printed by the launcher.
SHORT_METRICS = ("acc_retain", "acc_forget", "acc_test", "bal_acc_test", "mia_acc", "ain",
                 "zrf", "js_to_retrain_forget", "work_s", "compile_s", "work_ratio_to_retrain",
                 "gap_to_retrain")
# SISA's table: its rows beside the monolithic models they replace.
SISA_METRICS = ("acc_retain", "acc_forget", "acc_test", "work_s", "compile_s", "examples_seen")
# Models that are references, not operators: never ranked as one.
NOISE_FLOOR = "retrain_seed2"
ORIGINAL = "original"
SISA_ORIGINAL, SISA = "sisa_original", "sisa"  # hamforget.sisa.runner's rows
# Per-class recall of the test split, one column per class.
CLASS_RECALL = "acc_test_class_{}"


def _format(value, digits: int = 4, missing: str = "-", integer: bool = False) -> str:
  return cells.format_value(value, digits, missing, integer)


def _cell(row: Mapping[str, float], key: str) -> str:
  """A cell of the full table: intervals where they exist, bounds and states spelled out."""
  return cells.cell(row, key, 3)


def _file_safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _json_ready(results: Results) -> dict[str, dict[str, float | None]]:
  """Plain floats; NaN and inf become null (JSON has neither)."""
  return {model: {key: None if _is_missing(float(v)) else float(v) for key, v in row.items()}
          for model, row in results.items()}


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def seed_order(results: Results, retrain_name: str = "retrain",
               compare_name: str = "finetune") -> list[str]:
  """Every model, the study's pair first: retrain, the noise floor, fine-tuning, then the rest."""
  first = [n for n in (retrain_name, NOISE_FLOOR, compare_name) if n in results]
  return first + [n for n in results if n not in first]


def seed_table(results: Results, names: Sequence[str]) -> str:
  """The original HAM10000 study's columns (Markdown) for the models `names` that are present.

  Non-finite values are shown ("nan", "inf"), not left out.
  """
  header = ["Model"] + [title for title, _ in SEED_COLUMNS]
  rows = []
  for name in names:
    if name not in results:
      continue
    row = results[name]
    cells_ = [name]
    for _, key in SEED_COLUMNS:
      if isinstance(key, tuple):
        cells_.append(f"{_format(row.get(key[0]), missing='nan')} "
                      f"({_format(row.get(key[1]), missing='nan')})")
      else:
        cells_.append(cells.with_interval(row, key, missing="nan"))
    rows.append(cells_)
  return _markdown(header, rows)


def shown_metrics(results: Results, metrics: Sequence[str] = MAIN_METRICS) -> list[str]:
  """`metrics` less those missing for every model (class metrics of a group
  request, the challenge score without populations)."""
  return [key for key in metrics
          if any(not _is_missing(row.get(key)) for row in results.values())]


def full_table(results: Results, metrics: Sequence[str] = MAIN_METRICS) -> str:
  """Every model x `metrics` (Markdown); `value [low, high]` where an interval exists.

  Columns missing for every model are left out (`shown_metrics`).
  """
  metrics = shown_metrics(results, metrics)
  rows = [[name] + [_cell(row, key) for key in metrics] for name, row in results.items()]
  return _markdown(["Model", *metrics], rows)


def class_recall_header(class_names: Sequence[str], forget_classes: Sequence[int] = ()
                        ) -> list[str]:
  """The per-class table's header: one column per class, forgotten ones marked."""
  return ["Model"] + [f"{name} (forgotten)" if i in forget_classes else str(name)
                      for i, name in enumerate(class_names)]


def class_recall_table(results: Results, class_names: Sequence[str],
                       forget_classes: Sequence[int] = (),
                       counts: Sequence[int] | None = None) -> str:
  """Every model's test recall of every class (Markdown), forgotten classes
  marked; with `counts` (test examples per class) a first row of sizes."""
  rows = []
  if counts is not None:
    rows.append(["test examples"] + [str(int(n)) for n in counts])
  rows += [[name] + [cells.with_interval(row, CLASS_RECALL.format(c), 3) for c in class_names]
           for name, row in results.items()]
  return _markdown(class_recall_header(class_names, forget_classes), rows)


def _role(name: str, retrain_name: str) -> str:
  return {NOISE_FLOOR: f"{name} (noise floor: {retrain_name} from another seed)",
          ORIGINAL: f"{name} (no unlearning)"}.get(name, name)


def ranking_table(results: Results, retrain_name: str = "retrain") -> str:
  """Every model but retrain, ranked by `gap_to_retrain` (smallest first; NaN last).

  The noise floor and the original are ranked with the operators, marked, so
  an operator reads against both: below the floor, it is as close to
  retraining as retraining is to itself by these measures.
  """
  names = [n for n in results if n != retrain_name]
  gap = lambda n: results[n].get("gap_to_retrain")
  names.sort(key=lambda n: (_is_missing(gap(n)), 0.0 if _is_missing(gap(n)) else gap(n)))
  rows = [[str(rank), _role(name, retrain_name), _format(gap(name), 4)]
          + [_cell(results[name], key) for key in RANK_METRICS]
          for rank, name in enumerate(names, 1)]
  return _markdown(["Rank", "Model", "gap_to_retrain", *RANK_METRICS], rows)


def baseline_line(results: Results, class_names: Sequence[str],
                  test_labels: np.ndarray | None) -> str:
  """The majority-class baseline in words: what always answering one class scores."""
  k = len(class_names)
  chance = f"any constant answer's balanced accuracy (`bal_acc_test`) is 1/{k} = {1 / k:.3f}"
  if test_labels is None or not len(test_labels):
    shares = [row.get("majority_acc_test") for row in results.values()]
    shares = [v for v in shares if not _is_missing(v)]
    if not shares:
      return f"Baseline: {chance}."
    return (f"Baseline: always answering the most frequent test class scores "
            f"`acc_test` {shares[0]:.3f}; {chance}.")
  index, share = metric_math.majority_class(test_labels, k)
  return (f"Baseline: always answering `{class_names[index]}`, the most frequent class of the "
          f"{len(test_labels)} test examples, scores `acc_test` {share:.3f} "
          f"(`majority_acc_test`); {chance}. Read every accuracy against these.")


def notes(results: Results, retrain_name: str = "retrain",
          powered_examples: int = 100) -> list[str]:
  """What a reader must know before reading the numbers: one sentence each."""
  lines = []
  sizes = sorted({round(row["mia_examples"]) for row in results.values()
                  if not _is_missing(row.get("mia_examples"))})
  underpowered = [n for n, row in results.items() if row.get("mia_underpowered") == 1.0]
  if underpowered:
    lines.append(
        f"The membership attack is underpowered at this size: it compares "
        f"{', '.join(map(str, sizes))} forget and as many class-matched test examples a side, "
        f"fewer than {powered_examples}. Read its interval, not its value (with no signal at "
        f"all, 50 a side already give accuracies between about 0.38 and 0.64; fewer "
        f"spread wider).")
  retrain = results.get(retrain_name, {})
  if all(_is_missing(row.get("relearn_target")) for row in results.values()):
    lines.append("AIN not computed (evaluate.anamnesis off, or no held-out forget examples).")
  elif retrain.get("relearn_met_at_start") == 1.0:
    lines.append(f"AIN measures nothing here: `{retrain_name}` already meets the relearning "
                 f"target before any relearning (it generalises to the forgotten examples).")
  censored = [n for n, row in results.items() if row.get("ain_censored") in (1.0, -1.0, 2.0)]
  if censored:
    lines.append(f"AIN is a bound, not a value, for {', '.join(censored)}: a relearning ran "
                 f"out of budget (`ain_censored`; raise evaluate.relearn_steps).")
  flagged = [n for n, row in results.items() if row.get("over_forgetting") == 1.0]
  if flagged:
    lines.append(f"Over-forgetting ({', '.join(flagged)}): the forget set's loss lies far above "
                 f"that of unseen examples of the same classes, which gives it away as well.")
  if NOISE_FLOOR not in results:
    lines.append("No noise floor (evaluate.noise_floor off): distances to retrain have no "
                 "reference for how far retraining lands from itself.")
  return lines



def sisa_table(results: Results, retrain_name: str = "retrain") -> str:
  """SISA's ensemble before deletion beside the monolithic original, after it
  beside retrain (Markdown), for the rows present."""
  rows = [[name] + [cells.with_interval(results[name], key, 4).split(" [")[0]
                    for key in SISA_METRICS]
          for pair in ((SISA_ORIGINAL, ORIGINAL), (SISA, retrain_name))
          if pair[0] in results for name in pair if name in results]
  return _markdown(["Model", *SISA_METRICS], rows)


def format_table(results: Results, metrics: Sequence[str] = SHORT_METRICS) -> str:
  """A compact fixed-width table of the key metrics, one line per model (for the terminal)."""
  names = list(results)
  width = max([len("model")] + [len(n) for n in names])
  columns = [(key, max(len(key), 8)) for key in metrics]
  lines = ["  ".join([f"{'model':<{width}}"] + [f"{key:>{w}}" for key, w in columns])]
  for name in names:
    row = results[name]
    cells_ = [f"{_format(row.get(key), 3, integer=legend.is_count(key)):>{w}}"
              for key, w in columns]
    lines.append("  ".join([f"{name:<{width}}"] + cells_))
  return "\n".join(lines)


# Headers of results.md's tables that are not metric names -> the metrics they show.
def _aliases() -> dict[str, tuple[str, ...]]:
  return {title: key if isinstance(key, tuple) else (key,) for title, key in SEED_COLUMNS}


def markdown_report(results: Results, per_example, class_names: Sequence[str],
                    retrain_name: str = "retrain", compare_name: str = "finetune",
                    forget_classes: Sequence[int] = ()) -> str:
  """results.md: legend, baseline, the study's table, notes, ranking, per-class
  recall, every model (and SISA's table when it ran)."""
  test_labels = plots.split_labels(per_example)
  counts = (None if test_labels is None else
            np.bincount(np.asarray(test_labels, np.int64), minlength=len(class_names)))
  shown = shown_metrics(results)
  rank_columns = ["gap_to_retrain", *RANK_METRICS]
  class_columns = [CLASS_RECALL.format(c) for c in class_names]
  sisa = SISA_ORIGINAL in results
  legend_names = ([title for title, _ in SEED_COLUMNS] + rank_columns + shown + class_columns
                  + (list(SISA_METRICS) if sisa else []))
  floor = f", `{NOISE_FLOOR}` (the noise floor: retrain from another seed)" \
      if NOISE_FLOOR in results else ""
  forgotten = ", ".join(f"`{class_names[i]}`" for i in forget_classes)
  request = f" Forgotten classes: {forgotten}." if forgotten else ""
  markdown = [
      "# Results\n",
      f"Each row is one model. `{retrain_name}` is the reference: trained from scratch without "
      f"the forget set, it is what perfect unlearning would give, so most columns are read as "
      f"the distance to its row, not as high or low.{request}\n",
      "## Legend\n",
      "`value [low, high]`: the value and its 95% bootstrap interval. `-`: not applicable to "
      "this model or request. `relearn_steps` reads `> N (budget ran out)` when relearning "
      "never reached its target within N steps, and `N (already at target)` when the model "
      "met it before relearning. Per-class columns are named for the class "
      "(`acc_test_class_<class>`).\n",
      legend.legend_table(legend_names, _aliases()),
      "",
      f"{baseline_line(results, class_names, test_labels)}\n",
      f"## `{retrain_name}` against fine-tuning, in the columns of the original HAM10000 study\n",
      f"The reference `{retrain_name}` against `{compare_name}`{floor}, then every other "
      "model. Attack accuracy with its 95% interval; losses are each model's per-example "
      "cross-entropy at evaluation (nats), mean (std), the same definition for every row.\n",
      seed_table(results, seed_order(results, retrain_name, compare_name)),
      "",
      *[f"- {line}" for line in notes(results, retrain_name)],
      f"\n## Ranked by gap to {retrain_name}\n\n`gap_to_retrain`: mean absolute gap to "
      f"`{retrain_name}` over acc_retain, acc_forget, acc_test and mia_acc (SalUn's average "
      "gap), smallest first: the first operator is the closest to retraining by these four "
      "measures.\n",
      ranking_table(results, retrain_name),
      "\n## Per-class recall on test\n\nEach model's recall of each class "
      "(`acc_test_class_<class>`), with the test examples of each class; a forgotten class is "
      f"marked, and `{retrain_name}`'s recall of it is what forgetting it looks like.\n",
      class_recall_table(results, class_names, forget_classes, counts),
      f"\n## Every model\n\nThe reference for each column is `{retrain_name}`'s value; "
      "columns empty for every model are left out.\n",
      full_table(results),
      *([f"\n## SISA\n\nThe shard ensemble before deletion (`{SISA_ORIGINAL}`, beside the "
         f"monolithic `{ORIGINAL}`) and after it (`{SISA}`, beside `{retrain_name}`); its "
         "work_s and examples_seen are its training's, then its deletion's.\n",
         sisa_table(results, retrain_name)] if sisa else []),
      "",
  ]
  return "\n".join(markdown)


def write_report(workdir: str, results: Results, per_example, curves: Mapping[str, np.ndarray],
                 class_names: Sequence[str], retrain_name: str = "retrain",
                 compare_name: str = "finetune",
                 forget_classes: Sequence[int] = ()) -> dict[str, str]:
  """Writes the tables, arrays and plots of an experiment into `workdir`.

  Args:
    forget_classes: label indices of a class request's forgotten classes
      (marked in the per-class table and plots); () for other requests.

  Files:
    results.json: model -> {metric: value}, NaN as null;
      `pandas.DataFrame(json.load(f)).T` is the table.
    results.csv: the same table, one row per model.
    results.md: the legend (every column shown, its unit and ideal), the
      majority-class baseline, the original study's table (`retrain_name`
      against `compare_name`, then every model), notes (an underpowered
      attack, AIN bounds, over-forgetting), the ranking by `gap_to_retrain`,
      per-class recall, then every model x the main metrics with their
      intervals.
    per_example_<model>.npz: `<split>_loss`, `<split>_logits`, `<split>_labels`
      for every split, `forget_lira_acc` (the per-example attack's accuracy on
      each forget example) where populations exist, and `class_names` (no object arrays:
      `np.load(..., allow_pickle=False)` reads it).
    relearning_curves.npz: model -> held-out forget accuracy per step.
    loss_histograms.png, per_class_accuracy.png, confusion_matrices.png
      (original and retrain), relearning_curves.png, attack_accuracy.png
      (accuracy and AUC with their 95% intervals).

  Returns:
    name -> path of every file written.
  """
  os.makedirs(workdir, exist_ok=True)
  paths: dict[str, str] = {}
  forget_classes = tuple(int(c) for c in forget_classes)

  def path_of(name: str) -> str:
    paths[name] = os.path.join(workdir, name)
    return paths[name]

  files.write_json(path_of("results.json"), _json_ready(results), indent=1, allow_nan=False)
  table = pd.DataFrame({model: dict(row) for model, row in results.items()}).T
  table.index.name = "model"
  with files.atomic_open(path_of("results.csv"), newline="") as f:
    table.to_csv(f)
  files.write_text(path_of("results.md"), markdown_report(
      results, per_example, class_names, retrain_name, compare_name, forget_classes))

  names = np.asarray([str(c) for c in class_names])
  for model, splits in per_example.items():
    arrays = {"class_names": names}
    for split, outputs in splits.items():
      for field in ("loss", "logits", "labels", "lira_acc"):
        if field in outputs:
          arrays[f"{split}_{field}"] = np.asarray(outputs[field])
    files.write_npz(path_of(f"per_example_{_file_safe(model)}.npz"), arrays)
  if curves:
    files.write_npz(path_of("relearning_curves.npz"), {m: np.asarray(c) for m, c in curves.items()})

  test_labels = plots.split_labels(per_example)
  counts = (None if test_labels is None else
            np.bincount(np.asarray(test_labels, np.int64), minlength=len(class_names)))
  plots.plot_loss_histograms(path_of("loss_histograms.png"), per_example, results)
  plots.plot_per_class_accuracy(path_of("per_class_accuracy.png"), results, class_names,
                                forget_classes, counts)
  plots.plot_confusion_matrices(path_of("confusion_matrices.png"), per_example, class_names,
                                (ORIGINAL, retrain_name), forget_classes)
  plots.plot_relearning_curves(path_of("relearning_curves.png"), curves, results)
  plots.plot_attack_accuracy(path_of("attack_accuracy.png"), results, retrain_name)
  return paths
