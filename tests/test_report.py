"""Report: every file written, readable without hamforget, with the seed's table."""

import json
import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from hamforget import report
from hamforget.evaluate import metric_names

CLASSES = ("akiec", "bcc", "mel", "nv")
MODELS = ("original", "retrain", "finetune", "scrub")
SEED_HEADER = ("| Model | Attack Accuracy | Retain Loss mean (std) | Test Loss mean (std) "
               "| Forget Loss mean (std) | Attack n a side |")


def _inputs():
  """What `evaluate_models` returns, made up: 4 models, 3 splits, a NaN here and there."""
  rng = np.random.default_rng(0)
  names = metric_names(CLASSES)
  results = {}
  for i, model in enumerate(MODELS):
    row = {name: float(rng.uniform(0, 1)) for name in names}
    row.update(mia_acc=0.5 + 0.1 * i, mia_acc_ci_low=0.45 + 0.1 * i,
               mia_acc_ci_high=0.55 + 0.1 * i, loss_initial=1.5 + i, loss_final=0.1 * i,
               loss_retain_mean=0.05, loss_retain_std=0.01, loss_test_mean=0.6,
               loss_test_std=0.25, mia_examples=40.0, mia_underpowered=1.0,
               ain=float("nan"), steps=120.0 * (i + 1), gap_to_retrain=[0.3, 0.0, 0.2, 0.1][i],
               over_forgetting=0.0)
    results[model] = row
  results["finetune"]["loss_forget_mean"] = float("inf")  # shown, not dropped
  sizes = {"retain": 40, "forget": 12, "test": 20}
  per_example = {
      model: {split: {"loss": rng.exponential(1.0, n),
                      "logits": rng.normal(size=(n, 4)).astype(np.float32),
                      "labels": rng.integers(0, 4, n).astype(np.int32)}
              for split, n in sizes.items()}
      for model in MODELS}
  curves = {model: np.linspace(0.1 * i, 1.0, 21).astype(np.float32)
            for i, model in enumerate(MODELS)}
  return results, per_example, curves


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("report")
  results, per_example, curves = _inputs()
  paths = report.write_report(str(workdir), results, per_example, curves, CLASSES)
  return workdir, paths, results, per_example, curves


def test_results_json_and_csv_are_the_table(written):
  workdir, _, results, _, _ = written
  with open(workdir / "results.json") as f:
    loaded = json.load(f)
  table = pd.DataFrame(loaded).T
  assert list(table.index) == list(MODELS)
  assert list(table.columns) == metric_names(CLASSES)
  assert loaded["retrain"]["ain"] is None  # NaN -> null
  assert table.loc["scrub", "mia_acc"] == pytest.approx(0.8)
  csv = pd.read_csv(workdir / "results.csv", index_col="model")
  assert csv.shape == table.shape and math.isnan(csv.loc["original", "ain"])
  assert csv.loc["finetune", "steps"] == 360


def test_results_md_opens_with_the_seed_table(written):
  workdir, _, results, _, _ = written
  text = (workdir / "results.md").read_text()
  lines = text.splitlines()
  header = lines.index(SEED_HEADER)
  assert header < 5
  retrain_row = lines[header + 2]
  row = results["retrain"]
  forget = f"{row['loss_forget_mean']:.4f} ({row['loss_forget_std']:.4f})"
  # The losses are each model's cross-entropy at evaluation, not its run's curve.
  assert retrain_row == (f"| retrain | 0.6000 [0.550, 0.650] | 0.0500 (0.0100) | 0.6000 (0.2500) "
                         f"| {forget} | 40 |")
  assert lines[header + 3].startswith("| finetune | 0.7000 [0.650, 0.750] | ")
  assert "| inf (" in lines[header + 3]
  assert lines[header + 4] == ""  # only retrain and finetune (no noise floor here)
  assert any("underpowered at this size" in line and "40 forget" in line for line in lines)
  # Columns missing for every model (ain here) are left out of the full table.
  shown = [m for m in report.MAIN_METRICS if m != "ain"]
  full = lines.index("| Model | " + " | ".join(shown) + " |")
  assert [line.split(" | ")[0] for line in lines[full + 2:full + 6]] == [f"| {m}" for m in MODELS]


def test_results_md_ranks_models_by_gap_to_retrain(written):
  workdir, _, _, _, _ = written
  lines = (workdir / "results.md").read_text().splitlines()
  header = lines.index("| Rank | Model | gap_to_retrain | " + " | ".join(report.RANK_METRICS)
                       + " |")
  ranked = [line.split(" | ")[1] for line in lines[header + 2:header + 5]]
  assert ranked == ["scrub", "finetune", "original (no unlearning)"]  # retrain is the reference


def test_ranking_marks_the_noise_floor_and_a_censored_ain():
  results, _, _ = _inputs()
  results["retrain_seed2"] = {**results["retrain"], "gap_to_retrain": 0.15}
  assert "| 2 | retrain_seed2 (noise floor" in report.ranking_table(results)
  results["scrub"].update(ain=2.5, ain_censored=1.0)
  results["finetune"].update(ain=float("nan"), ain_censored=2.0)
  assert report._cell(results["scrub"], "ain") == ">= 2.500"
  assert report._cell(results["finetune"], "ain") == "budget ran out"
  assert any("AIN is a bound" in line for line in report.notes(results))


def test_per_example_arrays_load_without_pickle(written):
  workdir, _, _, per_example, curves = written
  for model in MODELS:
    with np.load(workdir / f"per_example_{model}.npz", allow_pickle=False) as arrays:
      assert list(arrays["class_names"]) == list(CLASSES)
      for split, outputs in per_example[model].items():
        for field in ("loss", "logits", "labels"):
          np.testing.assert_array_equal(arrays[f"{split}_{field}"], outputs[field])
  with np.load(workdir / "relearning_curves.npz", allow_pickle=False) as arrays:
    np.testing.assert_array_equal(arrays["scrub"], curves["scrub"])


def test_plots_are_images(written):
  workdir, paths, _, _, _ = written
  for name in ("loss_histograms.png", "per_class_accuracy.png", "relearning_curves.png",
               "attack_accuracy.png"):
    assert paths[name] == str(workdir / name)
    image = matplotlib.image.imread(workdir / name)
    assert image.ndim == 3 and min(image.shape[:2]) > 200
    assert image[..., :3].std() > 0.01  # something was drawn


def test_format_table_lists_every_model_and_the_key_columns():
  results, _, _ = _inputs()
  results["original"]["acc_forget"] = float("nan")
  text = report.format_table(results)
  lines = text.splitlines()
  assert len(lines) == 1 + len(MODELS)
  for column in ("acc_retain", "acc_forget", "acc_test", "mia_acc", "wall_s"):
    assert column in lines[0]
  assert [line.split()[0] for line in lines[1:]] == list(MODELS)
  assert " - " in lines[1] or lines[1].split()[2] == "-"
