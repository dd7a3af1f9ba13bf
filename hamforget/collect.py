"""One table over a grid's finished runs: gather, aggregate over seeds, plot.

    long = collect.gather(["/tmp/grid", "/mnt/other_machine/grid"])
    table = collect.aggregate(long)      # per model and setting: mean, 95% interval, n
    collect.markdown(table)

A run counts once it is finished (`hamforget.sweep`'s marker); roots from
several machines merge, each run once by its id. A *setting* is the swept
keys other than `seed` (and `unlearn.methods`: the method is the model's
row), so each row of the table is one model at one setting, over its seeds.
Rows of `original` and `retrain` repeat in every run of one seed and
setting (one per method run); they count once per seed.
"""

from __future__ import annotations

import glob
import math
import os
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from absl import logging

from hamforget import files, grid, sweep

# The table's columns, in order, where the runs have them.
METRICS = ("acc_retain", "acc_forget", "acc_test", "mia_acc", "gap_to_retrain", "bal_acc_test",
           "mia_auc", "ain", "zrf", "js_to_retrain_forget", "work_s")
NOT_A_SETTING = ("seed", "unlearn.methods")
RETRAIN = "retrain"
LEVEL = 0.95


def gather(roots: Iterable[str]) -> pd.DataFrame:
  """Long table of every finished run under `roots`: one row per (run, model,
  metric), with `run_id`, `run`, `root`, `seed` and `cfg.<key>` for every key
  swept in any run (its value from each run's whole config)."""
  records = {}
  for root in roots:
    for path in sorted(glob.glob(os.path.join(root, sweep.RUNS, "*", sweep.STATUS))):
      try:
        record = files.read_json(path)
      except (OSError, ValueError) as e:
        logging.warning("%s: unreadable, skipped: %s", path, e)
        continue
      if record.get("status") != sweep.FINISHED or record.get("run_id") in records:
        continue  # unfinished, or the same run gathered from another root
      folder = os.path.dirname(path)
      try:
        results = files.read_json(os.path.join(folder, "results.json"))
      except (OSError, ValueError) as e:
        logging.warning("%s: finished but its results are unreadable, skipped: %s", folder, e)
        continue
      records[record["run_id"]] = (root, record, results)
  swept = sorted({key for _, record, _ in records.values() for key in record["overrides"]})
  rows = []
  for run_id, (root, record, results) in records.items():
    config = record.get("config", {})
    settings = {f"cfg.{key}": config.get(key, grid.flatten(record["overrides"]).get(key))
                for key in swept}
    for model, values in results.items():
      for metric, value in values.items():
        rows.append({"run_id": run_id, "run": record["name"], "root": root,
                     "seed": record["seed"], **settings, "model": model, "metric": metric,
                     "value": np.nan if value is None else value})
  return pd.DataFrame(rows, columns=["run_id", "run", "root", "seed",
                                     *(f"cfg.{k}" for k in swept), "model", "metric", "value"])


def setting_columns(long: pd.DataFrame) -> list[str]:
  """The `cfg.` columns that vary a result other than by seed or method."""
  return [c for c in long.columns
          if c.startswith("cfg.") and c[len("cfg."):] not in NOT_A_SETTING]


def _t_quantile(n: int) -> float:
  """Student's t at (1 + LEVEL) / 2 with n - 1 degrees of freedom."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return float(stats.t.ppf((1 + LEVEL) / 2, n - 1))


def aggregate(long: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
  """Per model and setting: `n` (seeds), and for each metric its mean and the
  95% t-interval over seeds (`<metric>_lo`, `<metric>_hi`; NaN with one seed)."""
  settings = setting_columns(long)
  keys = ["model", *settings]
  present = [m for m in metrics if m in set(long["metric"])]
  frame = long[long["metric"].isin(present)]
  # One value per model, setting, seed and metric: original and retrain repeat
  # in each method's run (identical models), and must not count as seeds.
  frame = frame.drop_duplicates(subset=[*keys, "seed", "metric"]).copy()
  frame[settings] = frame[settings].fillna("")  # a key some runs lack is a setting of its own
  # unstack, not pivot_table: only the (setting, seed) pairs that ran, no cartesian product.
  wide = frame.set_index([*keys, "seed", "metric"])["value"].unstack("metric").reset_index()
  rows = []
  for key_values, group in wide.groupby(keys, sort=True, dropna=False):
    key_values = key_values if isinstance(key_values, tuple) else (key_values,)
    row = dict(zip(keys, key_values))
    row["n"] = int(group["seed"].nunique())
    for metric in present:
      values = pd.to_numeric(group[metric], errors="coerce").dropna().to_numpy(float)
      mean = float(values.mean()) if len(values) else math.nan
      half = (_t_quantile(len(values)) * values.std(ddof=1) / math.sqrt(len(values))
              if len(values) > 1 else math.nan)
      row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = mean, mean - half, mean + half
    rows.append(row)
  return pd.DataFrame(rows)


def _cell(row, metric: str) -> str:
  mean, low = row.get(metric), row.get(f"{metric}_lo")
  if mean is None or pd.isna(mean):
    return "-"
  if low is None or pd.isna(low):
    return f"{mean:.4g}"
  return f"{mean:.4g} ± {mean - low:.2g}"


def markdown(table: pd.DataFrame, metrics: Sequence[str] = METRICS) -> str:
  """The table as markdown: `mean ± half-width of the 95% interval` per cell."""
  settings = [c for c in table.columns if c.startswith("cfg.")]
  shown = [m for m in metrics if m in table.columns]
  header = ["model", *(c[len("cfg."):] for c in settings), "n", *shown]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
  for _, row in table.iterrows():
    cells = [str(row["model"]), *(str(row[c]) for c in settings), str(row["n"]),
             *(_cell(row, m) for m in shown)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _label(row, columns: Sequence[str]) -> str:
  return ", ".join([str(row["model"])] + [f"{c[len('cfg.'):].rsplit('.', 1)[-1]}={row[c]}"
                                          for c in columns])


def plot(table: pd.DataFrame, folder: str, metrics: Sequence[str] = METRICS) -> list[str]:
  """Writes the grid's plots into `folder`; returns their paths.

  `forget_vs_retain.png`: every model and setting at its mean forget and
  retain accuracy, with 95% intervals, one colour per model.
  `mia_vs_retrain.png`: every model's attack accuracy against retrain's at
  its setting.
  `metrics_vs_<key>.png`: for each numeric swept key with several values,
  each metric against it, a line per model and value of the other settings.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  written = []
  settings = [c for c in table.columns if c.startswith("cfg.")]
  if {"acc_retain", "acc_forget"} <= set(table.columns):
    fig, ax = plt.subplots(figsize=(6, 5))
    for model, group in table.groupby("model", sort=True):
      x, y = group["acc_retain"].to_numpy(float), group["acc_forget"].to_numpy(float)
      xerr = np.nan_to_num(x - group["acc_retain_lo"].to_numpy(float))
      yerr = np.nan_to_num(y - group["acc_forget_lo"].to_numpy(float))
      ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=str(model))
    ax.set_xlabel("retain accuracy")
    ax.set_ylabel("forget accuracy")
    # Accuracies: a t-interval over 2 seeds reaches far past [0, 1].
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    low, high = int(table["n"].min()), int(table["n"].max())
    ax.set_title(f"forget vs retain accuracy (mean, {LEVEL:.0%} interval over seeds; "
                 f"n={low if low == high else f'{low}-{high}'})", fontsize=9)
    ax.legend(fontsize=7)
    written.append(_save(fig, os.path.join(folder, "forget_vs_retain.png")))
  if "mia_acc" in table.columns and RETRAIN in set(table["model"]):
    written.append(_attack_against_retrain(table, settings, folder, plt))
  for key in settings:
    values = table[key].dropna().unique()
    if len(values) < 2 or not all(grid.is_number(v) for v in values):
      continue
    others = [c for c in settings if c != key]
    shown = [m for m in metrics if m in table.columns]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], shown):
      for _, group in table.groupby(["model", *others], sort=True, dropna=False):
        group = group.sort_values(key)
        x, y = group[key].to_numpy(float), group[metric].to_numpy(float)
        ax.errorbar(x, y, yerr=np.nan_to_num(y - group[f"{metric}_lo"].to_numpy(float)),
                    marker="o", capsize=2, label=_label(group.iloc[0], others))
      ax.set_xscale("log" if min(values) > 0 and max(values) / min(values) > 20 else "linear")
      ax.set_xlabel(key[len("cfg."):])
      ax.set_title(metric, fontsize=9)
    axes[0][0].legend(fontsize=6)
    name = key[len("cfg."):].replace(".", "_")
    written.append(_save(fig, os.path.join(folder, f"metrics_vs_{name}.png")))
  return written


def _attack_against_retrain(table: pd.DataFrame, settings: Sequence[str], folder: str, plt
                            ) -> str:
  """`mia_vs_retrain.png`: each model's attack accuracy against retrain's at
  the same setting: the attack's reference is retrain's value, not 0.5."""
  reference = table[table["model"] == RETRAIN][[*settings, "mia_acc"]].rename(
      columns={"mia_acc": "retrain_mia_acc"})
  merged = table[table["model"] != RETRAIN].merge(reference, on=settings) if settings else (
      table[table["model"] != RETRAIN].assign(retrain_mia_acc=reference["mia_acc"].iloc[0]))
  fig, ax = plt.subplots(figsize=(5, 5))
  for model, group in merged.groupby("model", sort=True):
    y = group["mia_acc"].to_numpy(float)
    ax.errorbar(group["retrain_mia_acc"].to_numpy(float), y, fmt="o", capsize=3,
                yerr=np.nan_to_num(y - group["mia_acc_lo"].to_numpy(float)), label=str(model))
  ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--", label="= retrain")
  ax.set_xlim(-0.02, 1.02)
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("retrain's mia_acc (the reference)")
  ax.set_ylabel("mia_acc")
  ax.set_title("attack accuracy against retrain's, per setting", fontsize=9)
  ax.legend(fontsize=7)
  return _save(fig, os.path.join(folder, "mia_vs_retrain.png"))


def _save(fig, path: str) -> str:
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.tight_layout()
  with files.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)
  return path


def write(roots: Sequence[str], out: str | None = None) -> tuple[pd.DataFrame, str]:
  """Gathers `roots`, writes `grid_results.csv` (aggregated), `grid_long.csv`
  (every value) and `grid_results.md` and the plots into `out` (the first
  root by default); returns (table, markdown)."""
  out = out or roots[0]
  long = gather(roots)
  if long.empty:
    raise ValueError(f"no finished run under {', '.join(roots)} "
                     f"(each run's {sweep.RUNS}/<name>/{sweep.STATUS} says finished)")
  table = aggregate(long)
  text = markdown(table)
  os.makedirs(out, exist_ok=True)
  for name, frame in (("grid_results.csv", table), ("grid_long.csv", long)):
    with files.atomic_open(os.path.join(out, name), newline="") as f:
      frame.to_csv(f, index=False)
  runs = long["run_id"].nunique()
  files.write_text(os.path.join(out, "grid_results.md"),
                   f"# Grid results: {runs} finished runs from {', '.join(roots)}\n\n"
                   f"Mean ± half-width of the {LEVEL:.0%} t-interval over seeds (n).\n\n"
                   + text + "\n")
  plot(table, out)
  return table, text
