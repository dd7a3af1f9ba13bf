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
SEED_COLUMNS = (
    ("Attack Accuracy", "mia_acc"),
    ("Initial Loss", "loss_initial"),
    ("Final Loss", "loss_final"),
    ("Test Loss mean (std)", ("loss_test_mean", "loss_test_std")),
    ("Forget Loss mean (std)", ("loss_forget_mean", "loss_forget_std")),
)
# The full table of results.md: the main metrics, not every per-class one.
MAIN_METRICS = (
    "acc_retain", "acc_forget", "acc_test", "bal_acc_test", "acc_test_forget_classes",
    "acc_test_other_classes", "loss_forget_mean", "loss_test_mean", "mia_acc",
    "entropy_member_rate", "ain", "relearn_steps", "zrf", "js_to_retrain_forget",
    "js_to_retrain_test", "challenge_score", "wall_s", "wall_ratio_to_retrain", "steps",
    "examples_seen",
)
# The table printed by the launcher.
SHORT_METRICS = ("acc_retain", "acc_forget", "acc_test", "bal_acc_test", "mia_acc", "ain",
                 "zrf", "js_to_retrain_forget", "wall_s", "wall_ratio_to_retrain")


def _is_missing(value) -> bool:
  return value is None or (isinstance(value, float) and not math.isfinite(value))


def _format(value, digits: int = 4) -> str:
  if _is_missing(value):
    return "-"
  value = float(value)
  if value.is_integer() and abs(value) >= 2:  # counts: steps, examples
    return f"{int(value)}"
  return f"{value:.{digits}f}"


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
  """The seed's table (Markdown) for the models `names` that are present."""
  header = ["Model"] + [title for title, _ in SEED_COLUMNS]
  rows = []
  for name in names:
    if name not in results:
      continue
    row = results[name]
    cells = [name]
    for _, key in SEED_COLUMNS:
      if isinstance(key, tuple):
        cells.append(f"{_format(row.get(key[0]))} ({_format(row.get(key[1]))})")
      else:
        cells.append(_format(row.get(key)))
    rows.append(cells)
  return _markdown(header, rows)


def full_table(results: Results, metrics: Sequence[str] = MAIN_METRICS) -> str:
  """Every model x `metrics` (Markdown)."""
  rows = [[name] + [_format(row.get(key)) for key in metrics] for name, row in results.items()]
  return _markdown(["Model", *metrics], rows)


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
    ax.set_title(f"{name}\nattack accuracy {_format(results.get(name, {}).get('mia_acc'), 3)}")
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
    ain = _format(results.get(name, {}).get("ain"), 2)
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


def plot_attack_accuracy(path: str, results: Results, retrain_name: str) -> None:
  """Membership attack accuracy per model; the retrained model's value is the target line."""
  names = list(results)
  values = [results[n].get("mia_acc") for n in names]
  errors = [results[n].get("mia_acc_std") for n in names]
  values = [np.nan if _is_missing(v) else v for v in values]
  errors = [0.0 if _is_missing(e) else e for e in errors]
  fig, ax = plt.subplots(figsize=(max(5.0, 1.0 * len(names)), 4))
  ax.bar(np.arange(len(names)), values, yerr=errors, capsize=3, color="tab:blue")
  reference = results.get(retrain_name, {}).get("mia_acc")
  if not _is_missing(reference):
    ax.axhline(reference, color="tab:red", linestyle="--", label=f"{retrain_name} (reference)")
    ax.legend(frameon=False)
  ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
  ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
  ax.set_ylabel("attack accuracy")
  ax.set_ylim(0, 1.05)
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
    results.md: the seed's table (`retrain_name` vs `compare_name`), then
      every model x the main metrics.
    per_example_<model>.npz: `<split>_loss`, `<split>_logits`, `<split>_labels`
      for every split, and `class_names` (no object arrays:
      `np.load(..., allow_pickle=False)` reads it).
    relearning_curves.npz: model -> held-out forget accuracy per step.
    loss_histograms.png, per_class_accuracy.png, relearning_curves.png,
      attack_accuracy.png.

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

  markdown = [
      f"# Results\n\nThe seed's table: `{retrain_name}` (the reference) against "
      f"`{compare_name}`.\n",
      seed_table(results, [retrain_name, compare_name]),
      "\n## Every model\n\nMetrics are defined in `hamforget.evaluate.METRICS`; the "
      f"reference for each is `{retrain_name}`'s value. `-` = not applicable.\n",
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
