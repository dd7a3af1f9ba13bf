"""The results of an experiment on disk: tables (JSON, CSV, Markdown), arrays, plots.

`write_report` turns what `evaluate.suite.evaluate_models` returns into files
that need no hamforget to read: `pandas.DataFrame(json.load(...)).T` is the
table, every per-example array is in plain `.npz` files (no pickles), so any
metric can be recomputed, and the plots are PNGs. `format_table` is the short
table the launcher prints at the end of a run.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on TPU VMs, GPU boxes or CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hamforget import files  # noqa: E402

Results = Mapping[str, Mapping[str, float]]

# The seed's table, column by column: header -> metric (or (mean, std) pair).
# Its losses are every model's cross-entropy at evaluation, one definition
# for every row (the runs' own loss curves, `loss_initial` / `loss_final`, are
# each operator's objective and not comparable across rows).
SEED_COLUMNS = (
    ("Attack Accuracy", "mia_acc"),
    ("Retain Loss mean (std)", ("loss_retain_mean", "loss_retain_std")),
    ("Test Loss mean (std)", ("loss_test_mean", "loss_test_std")),
    ("Forget Loss mean (std)", ("loss_forget_mean", "loss_forget_std")),
    ("Attack n a side", "mia_examples"),
)
# The full table of results.md: the main metrics, not every per-class one.
MAIN_METRICS = (
    "gap_to_retrain", "acc_retain", "acc_forget", "acc_test", "bal_acc_test",
    "acc_test_forget_classes", "acc_test_other_classes", "loss_forget_mean", "loss_test_mean",
    "loss_gap_forget_test", "over_forgetting", "mia_acc", "mia_auc", "mia_tpr_at_1pct_fpr",
    "mia_tpr_at_5pct_fpr", "mia_examples", "entropy_member_rate", "ain", "relearn_steps",
    "relearn_retain_acc", "zrf", "js_to_retrain_forget", "js_to_retrain_test", "challenge_score",
    "wall_s", "wall_ratio_to_retrain", "steps", "examples_seen",
)
# The ranking by gap to retrain: its columns besides the gap.
RANK_METRICS = ("acc_retain", "acc_forget", "acc_test", "mia_acc", "over_forgetting")
# The table printed by the launcher.
SHORT_METRICS = ("acc_retain", "acc_forget", "acc_test", "bal_acc_test", "mia_acc", "ain",
                 "zrf", "js_to_retrain_forget", "wall_s", "wall_ratio_to_retrain",
                 "gap_to_retrain")
# Models that are references, not operators: never ranked as one.
NOISE_FLOOR = "retrain_seed2"
ORIGINAL = "original"


def _is_missing(value) -> bool:
  return value is None or (isinstance(value, float) and not math.isfinite(value))


def _format(value, digits: int = 4, missing: str = "-") -> str:
  """A cell: `missing` for None and NaN, "inf"/"-inf" shown as such, counts as integers."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return missing
  value = float(value)
  if math.isinf(value):
    return "inf" if value > 0 else "-inf"
  if value.is_integer() and abs(value) >= 2:  # counts: steps, examples
    return f"{int(value)}"
  return f"{value:.{digits}f}"


def _with_interval(row: Mapping[str, float], key: str, digits: int = 4,
                   missing: str = "-") -> str:
  """`value [low, high]` where the row has the interval of `key`, else the value alone."""
  cell = _format(row.get(key), digits, missing)
  low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
  if cell == missing or _is_missing(low) or _is_missing(high):
    return cell
  return f"{cell} [{_format(low, digits - 1)}, {_format(high, digits - 1)}]"


# 0/1 flags, shown as words.
_FLAGS = ("over_forgetting", "mia_underpowered")


def _cell(row: Mapping[str, float], key: str) -> str:
  """A cell of the full table: intervals where they exist, AIN's censoring as a bound."""
  if key in _FLAGS and row.get(key) in (0.0, 1.0):
    return "yes" if row[key] == 1.0 else "no"
  if key == "ain":  # `ain_censored`: 1 a lower bound, -1 an upper bound, 2 none
    value, code = row.get("ain"), row.get("ain_censored")
    if code == 2.0:
      return "budget ran out"
    if _is_missing(value):
      return "-"
    return {1.0: ">= ", -1.0: "<= "}.get(code, "") + _format(value, 3)
  return _with_interval(row, key, 3)


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


def seed_table(results: Results, names: Sequence[str]) -> str:
  """The seed's table (Markdown) for the models `names` that are present.

  Non-finite values are shown ("nan", "inf"), not left out.
  """
  header = ["Model"] + [title for title, _ in SEED_COLUMNS]
  rows = []
  for name in names:
    if name not in results:
      continue
    row = results[name]
    cells = [name]
    for _, key in SEED_COLUMNS:
      if isinstance(key, tuple):
        cells.append(f"{_format(row.get(key[0]), missing='nan')} "
                     f"({_format(row.get(key[1]), missing='nan')})")
      else:
        cells.append(_with_interval(row, key, missing="nan"))
    rows.append(cells)
  return _markdown(header, rows)


def full_table(results: Results, metrics: Sequence[str] = MAIN_METRICS) -> str:
  """Every model x `metrics` (Markdown); `value [low, high]` where an interval exists.

  Columns missing for every model (class metrics of a group request, the
  challenge score without populations) are left out.
  """
  metrics = [key for key in metrics
             if any(not _is_missing(row.get(key)) for row in results.values())]
  rows = [[name] + [_cell(row, key) for key in metrics] for name, row in results.items()]
  return _markdown(["Model", *metrics], rows)


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


def notes(results: Results, retrain_name: str = "retrain",
          powered_examples: int = 100) -> list[str]:
  """What a reader must know before reading the numbers: one sentence each."""
  lines = []
  sizes = sorted({int(row["mia_examples"]) for row in results.values()
                  if not _is_missing(row.get("mia_examples"))})
  underpowered = [n for n, row in results.items() if row.get("mia_underpowered") == 1.0]
  if underpowered:
    lines.append(
        f"The membership attack is underpowered at this size: it compares "
        f"{', '.join(map(str, sizes))} forget and as many class-matched test examples a side, "
        f"fewer than {powered_examples}. Read its interval, not its value (with no signal at "
        f"all, 50 a side give accuracies between about 0.38 and 0.64).")
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
SISA_ORIGINAL, SISA = "sisa_original", "sisa"  # hamforget.sisa.runner's rows


def sisa_table(results: Results, retrain_name: str = "retrain") -> str:
  """SISA's ensemble before deletion beside the monolithic original, after it
  beside retrain (Markdown), for the rows present."""
  keys = ("acc_retain", "acc_forget", "acc_test", "wall_s", "examples_seen")
  rows = [[name] + [_format(results[name].get(key), 4) for key in keys]
          for pair in ((SISA_ORIGINAL, ORIGINAL), (SISA, retrain_name))
          if pair[0] in results for name in pair if name in results]
  return _markdown(["Model", *keys], rows)


def format_table(results: Results, metrics: Sequence[str] = SHORT_METRICS) -> str:
  """A compact fixed-width table of the key metrics, one line per model (for the terminal)."""
  names = list(results)
  width = max([len("model")] + [len(n) for n in names])
  columns = [(key, max(len(key), 8)) for key in metrics]
  lines = ["  ".join([f"{'model':<{width}}"] + [f"{key:>{w}}" for key, w in columns])]
  for name in names:
    cells = [f"{_format(results[name].get(key), 3):>{w}}" for key, w in columns]
    lines.append("  ".join([f"{name:<{width}}"] + cells))
  return "\n".join(lines)


def _save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  with files.atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


def _save_figure(fig, path: str) -> None:
  """Writes `fig` as a PNG atomically and closes it."""
  with files.atomic_open(path, "wb") as f:
    fig.savefig(f, dpi=100, format="png")
  plt.close(fig)


# ----------------------------------------------------------------------------
# Plots.

def _grid(count: int, per_row: int = 3):
  cols = max(1, min(per_row, count))
  rows = max(1, -(-count // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
  for ax in axes.flat[count:]:
    ax.set_visible(False)
  return fig, axes.flat


def plot_loss_histograms(path: str, per_example, results: Results) -> None:
  """Per-example loss of forget vs test, one panel per model (the kit's figure)."""
  names = [n for n in per_example if {"forget", "test"} <= set(per_example[n])]
  fig, axes = _grid(len(names))
  for ax, name in zip(axes, names):
    test = per_example[name]["test"]["loss"]
    forget = per_example[name]["forget"]["loss"]
    high = max(float(np.max(test, initial=0.0)), float(np.max(forget, initial=0.0)), 1e-3)
    bins = np.linspace(0.0, high, 50)
    ax.hist(test, bins=bins, density=True, alpha=0.5, label="test")
    ax.hist(forget, bins=bins, density=True, alpha=0.5, label="forget")
    ax.set_yscale("log")
    attack = _with_interval(results.get(name, {}), "mia_acc", 3)
    ax.set_title(f"{name}\nattack accuracy {attack}", fontsize="small")
    ax.set_xlabel("loss (nats)")
    ax.legend(frameon=False)
  fig.tight_layout()
  _save_figure(fig, path)


def plot_per_class_accuracy(path: str, results: Results, class_names: Sequence[str]) -> None:
  """Test accuracy of each class, grouped bars, one bar per model (original first)."""
  names = list(results)
  x = np.arange(len(class_names))
  width = 0.8 / max(1, len(names))
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(class_names) * max(1, len(names)) / 2), 4))
  for i, name in enumerate(names):
    values = [results[name].get(f"acc_test_class_{c}", float("nan")) for c in class_names]
    values = [np.nan if _is_missing(v) else v for v in values]
    ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
  ax.set_xticks(x, list(class_names))
  ax.set_ylabel("test accuracy")
  ax.set_ylim(0, 1.05)
  ax.legend(frameon=False, fontsize="small", ncol=min(4, len(names)))
  fig.tight_layout()
  _save_figure(fig, path)


def plot_relearning_curves(path: str, curves: Mapping[str, np.ndarray], results: Results) -> None:
  """Held-out forget accuracy during relearning, with the Anamnesis target."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, curve in curves.items():
    ain = _cell(results.get(name, {}), "ain")
    ax.plot(np.arange(len(curve)), curve, label=f"{name} (AIN {ain})")
  targets = [row.get("relearn_target") for row in results.values()]
  targets = [t for t in targets if not _is_missing(t)]
  if targets:
    ax.axhline(targets[0], color="black", linestyle="--", linewidth=1, label="target")
  ax.set_xlabel("relearning steps")
  ax.set_ylabel("held-out forget accuracy")
  ax.set_ylim(-0.02, 1.02)
  if curves:
    ax.legend(frameon=False, fontsize="small")
  else:
    ax.text(0.5, 0.5, "no relearning curves (evaluate.anamnesis off)", ha="center",
            transform=ax.transAxes)
  fig.tight_layout()
  _save_figure(fig, path)


def _error_bars(results: Results, names: Sequence[str], key: str) -> np.ndarray:
  """(2, len(names)) distances from each value down/up to its interval's ends (0 if none)."""
  bars = np.zeros((2, len(names)))
  for i, name in enumerate(names):
    row = results[name]
    value, low, high = (row.get(key), row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high"))
    if not any(_is_missing(v) for v in (value, low, high)):
      bars[:, i] = max(0.0, value - low), max(0.0, high - value)
  return bars


def plot_attack_accuracy(path: str, results: Results, retrain_name: str) -> None:
  """Membership attack accuracy and AUC per model with 95% intervals; retrain's as the target."""
  names = list(results)
  fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(names)), 4))
  for ax, key, label in ((axes[0], "mia_acc", "attack accuracy"),
                         (axes[1], "mia_auc", "attack ROC AUC")):
    values = [np.nan if _is_missing(results[n].get(key)) else results[n][key] for n in names]
    ax.bar(np.arange(len(names)), values, yerr=_error_bars(results, names, key), capsize=3,
           color="tab:blue")
    reference = results.get(retrain_name, {})
    if not _is_missing(reference.get(key)):
      ax.axhline(reference[key], color="tab:red", linestyle="--",
                 label=f"{retrain_name} (reference)")
      low, high = reference.get(f"{key}_ci_low"), reference.get(f"{key}_ci_high")
      if not (_is_missing(low) or _is_missing(high)):
        ax.axhspan(low, high, color="tab:red", alpha=0.1, label=f"{retrain_name} 95% interval")
      ax.legend(frameon=False, fontsize="small")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(f"{label} (95% interval)")
    ax.set_ylim(0, 1.05)
  underpowered = [n for n in names if results[n].get("mia_underpowered") == 1.0]
  if underpowered:
    sizes = sorted({int(results[n]["mia_examples"]) for n in underpowered})
    fig.suptitle(f"underpowered: {', '.join(map(str, sizes))} examples a side", fontsize="small")
  fig.tight_layout()
  _save_figure(fig, path)


# ----------------------------------------------------------------------------
# Everything at once.

def write_report(workdir: str, results: Results, per_example, curves: Mapping[str, np.ndarray],
                 class_names: Sequence[str], retrain_name: str = "retrain",
                 compare_name: str = "finetune") -> dict[str, str]:
  """Writes the tables, arrays and plots of an experiment into `workdir`.

  Files:
    results.json: model -> {metric: value}, NaN as null;
      `pandas.DataFrame(json.load(f)).T` is the table.
    results.csv: the same table, one row per model.
    results.md: the seed's table (`retrain_name`, the noise floor and
      `compare_name`), notes (an underpowered attack, AIN bounds,
      over-forgetting), the ranking by `gap_to_retrain`, then every model x
      the main metrics with their intervals.
    per_example_<model>.npz: `<split>_loss`, `<split>_logits`, `<split>_labels`
      for every split, and `class_names` (no object arrays:
      `np.load(..., allow_pickle=False)` reads it).
    relearning_curves.npz: model -> held-out forget accuracy per step.
    loss_histograms.png, per_class_accuracy.png, relearning_curves.png,
      attack_accuracy.png (accuracy and AUC with their 95% intervals).

  Returns:
    name -> path of every file written.
  """
  os.makedirs(workdir, exist_ok=True)
  paths: dict[str, str] = {}

  def path_of(name: str) -> str:
    paths[name] = os.path.join(workdir, name)
    return paths[name]

  files.write_json(path_of("results.json"), _json_ready(results), indent=1, allow_nan=False)
  table = pd.DataFrame({model: dict(row) for model, row in results.items()}).T
  table.index.name = "model"
  with files.atomic_open(path_of("results.csv"), newline="") as f:
    table.to_csv(f)

  seed_names = [retrain_name, NOISE_FLOOR, compare_name]
  floor = f" and `{NOISE_FLOOR}` (the noise floor)" if NOISE_FLOOR in results else ""
  markdown = [
      f"# Results\n\nThe seed's table: `{retrain_name}` (the reference) against "
      f"`{compare_name}`{floor}. "
      "Attack accuracy with its 95% interval; losses are each model's per-example "
      "cross-entropy at evaluation (nats), mean (std), the same definition for every row.\n",
      seed_table(results, seed_names),
      "",
      *[f"- {line}" for line in notes(results, retrain_name)],
      *([f"\n## SISA\n\nThe shard ensemble before deletion (`{SISA_ORIGINAL}`, beside the "
         f"monolithic `{ORIGINAL}`) and after it (`{SISA}`, beside `{retrain_name}`); its "
         "wall_s and examples_seen are its training's, then its deletion's.\n",
         sisa_table(results, retrain_name)] if SISA_ORIGINAL in results else []),
      f"\n## Ranked by gap to {retrain_name}\n\n`gap_to_retrain`: mean absolute gap to "
      f"`{retrain_name}` over acc_retain, acc_forget, acc_test and mia_acc (SalUn's average "
      "gap), smallest first.\n",
      ranking_table(results, retrain_name),
      "\n## Every model\n\nMetrics are defined in `hamforget.evaluate.METRICS`; the "
      f"reference for each is `{retrain_name}`'s value; `[low, high]` is its 95% bootstrap "
      "interval. `-` = not applicable; columns empty for every model are left out.\n",
      full_table(results),
      "",
  ]
  files.write_text(path_of("results.md"), "\n".join(markdown))

  names = np.asarray([str(c) for c in class_names])
  for model, splits in per_example.items():
    arrays = {"class_names": names}
    for split, outputs in splits.items():
      for field in ("loss", "logits", "labels"):
        arrays[f"{split}_{field}"] = np.asarray(outputs[field])
    _save_npz(path_of(f"per_example_{_file_safe(model)}.npz"), arrays)
  if curves:
    _save_npz(path_of("relearning_curves.npz"), {m: np.asarray(c) for m, c in curves.items()})

  plot_loss_histograms(path_of("loss_histograms.png"), per_example, results)
  plot_per_class_accuracy(path_of("per_class_accuracy.png"), results, class_names)
  plot_relearning_curves(path_of("relearning_curves.png"), curves, results)
  plot_attack_accuracy(path_of("attack_accuracy.png"), results, retrain_name)
  return paths
