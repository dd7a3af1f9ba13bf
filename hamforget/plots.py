"""The report's figures (PNG): every one titled, with its sample sizes, forgotten classes marked.

Panels that are compared share their axes (the loss histograms, the
confusion matrices), so a taller bar or a darker cell means the same in
every panel. Each function takes what `evaluate.suite.evaluate_models`
returns and writes one file atomically.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on TPU VMs, GPU boxes or CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from hamforget import cells, files  # noqa: E402
from hamforget.evaluate import metrics  # noqa: E402

Results = Mapping[str, Mapping[str, float]]
FORGOTTEN_COLOUR = "tab:red"


def save_figure(fig, path: str) -> None:
  """Writes `fig` as a PNG atomically and closes it."""
  with files.atomic_open(path, "wb") as f:
    fig.savefig(f, dpi=100, format="png")
  plt.close(fig)


def _grid(count: int, per_row: int = 3, **shared):
  cols = max(1, min(per_row, count))
  rows = max(1, -(-count // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False,
                           **shared)
  for ax in axes.flat[count:]:
    ax.set_visible(False)
  return fig, axes.flat


def class_labels(class_names: Sequence[str], forget_classes: Sequence[int],
                 counts: Sequence[int] | None = None) -> list[str]:
  """Tick labels: `name` (and `n=count`), forgotten classes starred."""
  labels = []
  for index, name in enumerate(class_names):
    label = f"{name}*" if index in forget_classes else str(name)
    if counts is not None:
      label += f"\nn={int(counts[index])}"
    labels.append(label)
  return labels


def _mark_forgotten_ticks(ticks, forget_classes: Sequence[int]) -> None:
  for index, tick in enumerate(ticks):
    if index in forget_classes:
      tick.set_color(FORGOTTEN_COLOUR)
      tick.set_fontweight("bold")


def split_labels(per_example, split: str = "test") -> np.ndarray | None:
  """A split's labels (the same for every model), or None when no model has them."""
  for splits in per_example.values():
    if split in splits:
      return np.asarray(splits[split]["labels"])
  return None


def plot_loss_histograms(path: str, per_example, results: Results) -> None:
  """Per-example loss of forget vs test, one panel per model, on shared axes."""
  names = [n for n in per_example if {"forget", "test"} <= set(per_example[n])]
  fig, axes = _grid(len(names), sharex=True, sharey=True)
  # One set of bins for every panel: compared panels read on one scale.
  high = max([float(np.max(per_example[n][s]["loss"], initial=0.0))
              for n in names for s in ("forget", "test")] + [1e-3])
  bins = np.linspace(0.0, high, 50)
  for ax, name in zip(axes, names):
    test = per_example[name]["test"]["loss"]
    forget = per_example[name]["forget"]["loss"]
    ax.hist(test, bins=bins, density=True, alpha=0.5, label=f"test (n={len(test)})")
    ax.hist(forget, bins=bins, density=True, alpha=0.5, label=f"forget (n={len(forget)})")
    ax.set_yscale("log")
    row = results.get(name, {})
    attack = cells.with_interval(row, "mia_acc", 3)
    size = cells.format_value(row.get("mia_examples"), integer=True)
    ax.set_title(f"{name}\nattack accuracy {attack}, {size} a side", fontsize="small")
    ax.set_xlabel("loss (nats)")
    ax.xaxis.set_tick_params(labelbottom=True)  # a panel above an empty slot keeps its scale
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize="small")
  fig.suptitle("Per-example cross-entropy at evaluation: forget set against test split")
  fig.tight_layout()
  save_figure(fig, path)


def plot_per_class_accuracy(path: str, results: Results, class_names: Sequence[str],
                            forget_classes: Sequence[int] = (),
                            counts: Sequence[int] | None = None) -> None:
  """Test recall of each class, grouped bars, one bar per model; forgotten classes marked.

  Args:
    forget_classes: label indices of a class request's forgotten classes
      (starred, in red, on a shaded band).
    counts: test examples per class (K,), shown under each class name.
  """
  names = list(results)
  x = np.arange(len(class_names))
  width = 0.8 / max(1, len(names))
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(class_names) * max(1, len(names)) / 2), 4.5))
  for index in forget_classes:
    ax.axvspan(index - 0.45, index + 0.45, color=FORGOTTEN_COLOUR, alpha=0.08, linewidth=0)
  for i, name in enumerate(names):
    values = [results[name].get(f"acc_test_class_{c}", float("nan")) for c in class_names]
    values = [np.nan if cells.is_missing(v) else v for v in values]
    ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
  ax.set_xticks(x, class_labels(class_names, forget_classes, counts))
  _mark_forgotten_ticks(ax.get_xticklabels(), forget_classes)
  ax.set_ylabel("test recall")
  ax.set_ylim(0, 1.05)
  total = f", {int(np.sum(counts))} test examples" if counts is not None else ""
  forgotten = ", * = forgotten" if len(forget_classes) else ""
  ax.set_title(f"Test recall per class{total}{forgotten}", fontsize="medium")
  ax.legend(frameon=False, fontsize="small", ncol=min(4, len(names)))
  fig.tight_layout()
  save_figure(fig, path)


def plot_confusion_matrices(path: str, per_example, class_names: Sequence[str],
                            names: Sequence[str], forget_classes: Sequence[int] = ()) -> None:
  """Test confusion matrices of `names` that are present (the original and
  retrain), rows normalised to recall, counts written in, on one colour scale."""
  names = [n for n in names if "test" in per_example.get(n, {})]
  count, k = max(1, len(names)), len(class_names)
  fig, axes = plt.subplots(1, count, figsize=(2.5 + 0.8 * k * count, 2.0 + 0.8 * k),
                           squeeze=False)
  image = None
  for ax, name in zip(axes.flat, names):
    test = per_example[name]["test"]
    matrix = metrics.confusion_matrix(test["logits"], test["labels"], k)
    totals = matrix.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
      share = np.where(totals > 0, matrix / np.maximum(totals, 1), np.nan)
    image = ax.imshow(share, vmin=0.0, vmax=1.0, cmap="Blues")
    for row in range(k):
      for col in range(k):
        ax.text(col, row, str(matrix[row, col]), ha="center", va="center", fontsize="x-small",
                color="white" if share[row, col] > 0.5 else "black")
    ticks = class_labels(class_names, forget_classes)
    ax.set_xticks(np.arange(k), ticks, rotation=45, ha="right")
    ax.set_yticks(np.arange(k), class_labels(class_names, forget_classes, totals[:, 0]))
    _mark_forgotten_ticks(ax.get_xticklabels(), forget_classes)
    _mark_forgotten_ticks(ax.get_yticklabels(), forget_classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{name}: {int(matrix.sum())} test examples", fontsize="small")
  if not names:
    axes.flat[0].text(0.5, 0.5, "no test outputs", ha="center", transform=axes.flat[0].transAxes)
  if image is not None:
    fig.colorbar(image, ax=list(axes.flat), label="share of the true class (recall on the diagonal)")
  forgotten = "; * = forgotten" if len(forget_classes) else ""
  fig.suptitle(f"Test confusion matrices (counts written in){forgotten}", fontsize="medium")
  save_figure(fig, path)


def plot_relearning_curves(path: str, curves: Mapping[str, np.ndarray], results: Results) -> None:
  """Held-out forget accuracy during relearning, with the Anamnesis target."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, curve in curves.items():
    ain = cells.ain(results.get(name, {}))
    ax.plot(np.arange(len(curve)), curve, label=f"{name} (AIN {ain})")
  targets = [row.get("relearn_target") for row in results.values()]
  targets = [t for t in targets if not cells.is_missing(t)]
  if targets:
    ax.axhline(targets[0], color="black", linestyle="--", linewidth=1, label="target")
  ax.set_xlabel("relearning steps (Adam)")
  ax.set_ylabel("held-out forget accuracy")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("Anamnesis: relearning the forgotten examples", fontsize="medium")
  if curves:
    ax.legend(frameon=False, fontsize="small")
  else:
    ax.text(0.5, 0.5, "no relearning curves (evaluate.anamnesis off)", ha="center",
            transform=ax.transAxes)
  fig.tight_layout()
  save_figure(fig, path)


def _error_bars(results: Results, names: Sequence[str], key: str) -> np.ndarray:
  """(2, len(names)) distances from each value down/up to its interval's ends (0 if none)."""
  bars = np.zeros((2, len(names)))
  for i, name in enumerate(names):
    row = results[name]
    value, low, high = (row.get(key), row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high"))
    if not any(cells.is_missing(v) for v in (value, low, high)):
      bars[:, i] = max(0.0, value - low), max(0.0, high - value)
  return bars


def attack_title(results: Results) -> str:
  """The attack figure's title: what it compares, and on how many examples."""
  sizes = sorted({round(row["mia_examples"]) for row in results.values()
                  if not cells.is_missing(row.get("mia_examples"))})
  size = ", ".join(map(str, sizes)) if sizes else "no"
  title = (f"Membership attack on loss: {size} forget and as many class-matched test "
           "examples a side")
  if any(row.get("mia_underpowered") == 1.0 for row in results.values()):
    title += " (underpowered: read the intervals)"
  return title


def plot_attack_accuracy(path: str, results: Results, retrain_name: str) -> None:
  """Membership attack accuracy and AUC per model with 95% intervals; retrain's as the target."""
  names = list(results)
  fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(names)), 4.5))
  for ax, key, label in ((axes[0], "mia_acc", "attack accuracy"),
                         (axes[1], "mia_auc", "attack ROC AUC")):
    values = [np.nan if cells.is_missing(results[n].get(key)) else results[n][key] for n in names]
    ax.bar(np.arange(len(names)), values, yerr=_error_bars(results, names, key), capsize=3,
           color="tab:blue")
    reference = results.get(retrain_name, {})
    if not cells.is_missing(reference.get(key)):
      ax.axhline(reference[key], color="tab:red", linestyle="--",
                 label=f"{retrain_name} (the target)")
      low, high = reference.get(f"{key}_ci_low"), reference.get(f"{key}_ci_high")
      if not (cells.is_missing(low) or cells.is_missing(high)):
        ax.axhspan(low, high, color="tab:red", alpha=0.1, label=f"{retrain_name} 95% interval")
      ax.legend(frameon=False, fontsize="small")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(f"{label} (95% interval)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{label}: closer to {retrain_name} is better", fontsize="small")
  fig.suptitle(attack_title(results), fontsize="medium")
  fig.tight_layout()
  save_figure(fig, path)
