"""Report: every file written, readable without hamforget, with the seed's table."""

import json
import math
import types

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from hamforget import report
from hamforget.evaluate import metric, metric_names

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


def _tables(text):
  """Every Markdown table of `text`: (title line above it, header cells, body rows of cells)."""
  lines, tables = text.splitlines(), []
  for i in range(1, len(lines)):
    if lines[i].startswith("|---") and lines[i - 1].startswith("| "):
      header = lines[i - 1].strip("| ").split(" | ")
      body = []
      for line in lines[i + 1:]:
        if not line.startswith("| "):
          break
        body.append(line.strip("| ").split(" | "))
      titles = [line for line in lines[:i] if line.startswith("## ")]
      tables.append((titles[-1] if titles else "", header, body))
  return tables


def test_results_md_opens_with_a_legend_that_explains_every_column(written):
  workdir, _, _, _, _ = written
  text = (workdir / "results.md").read_text()
  tables = _tables(text)
  title, header, legend_rows = tables[0]
  assert title == "## Legend" and header == ["Column", "Meaning", "Unit", "Ideal"]
  explained = {row[0].strip("`"): row for row in legend_rows}
  assert all(len(row) == 4 and all(cell.strip() for cell in row) for row in legend_rows)
  for title, header, _ in tables[1:]:
    for column in header:
      if column in ("Model", "Rank"):
        continue
      name = column.removesuffix(" (forgotten)")
      if name in CLASSES:  # the per-class table: its columns are classes
        name = "acc_test_class_<class>"
      assert name in explained, (title, column)
  # The ideals a reader could get wrong are spelled out.
  assert "not 0.5" in explained["mia_acc"][3] and "not 1" in explained["zrf"][3]
  assert explained["work_s"][2] == explained["compile_s"][2] == "seconds"


def test_legend_follows_the_registry():
  from hamforget import legend
  from hamforget.evaluate import registry
  registered = metric({"probe_top2": "share of forget examples with the label in the top 2"},
                      unit=registry.FRACTION, ideal=registry.HIGHER)(lambda c: {})
  try:
    ((column, meaning, unit, ideal),) = legend.legend_rows(["Model", "probe_top2"])
    assert (column, unit, ideal) == ("`probe_top2`", registry.FRACTION, registry.HIGHER)
    assert meaning.startswith("share of forget examples")
  finally:
    registry.unregister(registered)
  with pytest.raises(KeyError, match="probe_top2"):
    legend.legend_rows(["probe_top2"])


def test_results_md_shows_the_study_table_for_every_model(written):
  workdir, _, results, _, _ = written
  text = (workdir / "results.md").read_text()
  lines = text.splitlines()
  header = lines.index(SEED_HEADER)
  assert "retrain` against fine-tuning, in the columns of the original HAM10000 study" in \
      "\n".join(lines[header - 4:header])
  retrain_row = lines[header + 2]
  row = results["retrain"]
  forget = f"{row['loss_forget_mean']:.4f} ({row['loss_forget_std']:.4f})"
  # The losses are each model's cross-entropy at evaluation, not its run's curve.
  assert retrain_row == (f"| retrain | 0.6000 [0.550, 0.650] | 0.0500 (0.0100) | 0.6000 (0.2500) "
                         f"| {forget} | 40 |")
  assert lines[header + 3].startswith("| finetune | 0.7000 [0.650, 0.750] | ")
  assert "| inf (" in lines[header + 3]
  # Every model: the study's pair first, then the others in the run's order.
  shown = [line.split(" | ")[0][2:] for line in lines[header + 2:header + 2 + len(MODELS)]]
  assert shown == ["retrain", "finetune", "original", "scrub"]
  assert lines[header + 2 + len(MODELS)] == ""
  assert any("underpowered at this size" in line and "40 forget" in line for line in lines)
  # Columns missing for every model (ain here) are left out of the full table.
  shown = [m for m in report.MAIN_METRICS if m != "ain"]
  full = lines.index("| Model | " + " | ".join(shown) + " |")
  assert [line.split(" | ")[0] for line in lines[full + 2:full + 6]] == [f"| {m}" for m in MODELS]


def test_results_md_states_the_majority_baseline_and_every_models_class_recall(written):
  workdir, _, results, per_example, _ = written
  text = (workdir / "results.md").read_text()
  labels = per_example["original"]["test"]["labels"]
  counts = np.bincount(labels, minlength=len(CLASSES))
  majority = CLASSES[int(np.argmax(counts))]
  share = counts.max() / len(labels)
  assert (f"always answering `{majority}`, the most frequent class of the {len(labels)} test "
          f"examples, scores `acc_test` {share:.3f}") in text
  assert f"1/{len(CLASSES)} = {1 / len(CLASSES):.3f}" in text
  ((_, header, body),) = [t for t in _tables(text) if t[0] == "## Per-class recall on test"]
  assert header == ["Model", *CLASSES]
  assert body[0] == ["test examples", *map(str, counts)]
  assert [row[0] for row in body[1:]] == list(MODELS)
  for row in body[1:]:
    assert row[1:] == [f"{results[row[0]][f'acc_test_class_{c}']:.3f}" for c in CLASSES]


def test_forgotten_classes_are_marked_in_the_class_table():
  results, _, _ = _inputs()
  header = report.class_recall_header(CLASSES, forget_classes=(2,))
  assert header == ["Model", "akiec", "bcc", "mel (forgotten)", "nv"]
  table = report.class_recall_table(results, CLASSES, (2,))
  assert table.splitlines()[0] == "| " + " | ".join(header) + " |"


def test_majority_baseline_metric_is_the_share_of_the_most_frequent_test_class():
  from hamforget.evaluate import measures
  labels = np.array([3, 1, 3, 0, 3, 1], np.int32)
  context = types.SimpleNamespace(outputs={"test": {"labels": labels}}, class_names=CLASSES)
  expected = np.bincount(labels).max() / len(labels)
  assert measures.majority_baseline(context) == {"majority_acc_test": pytest.approx(expected)}


def test_relearn_steps_say_not_applicable_censored_or_already_at_target():
  nan = float("nan")
  assert report._cell({"relearn_steps": nan}, "relearn_steps") == "-"
  ran_out = {"relearn_steps": 100.0, "relearn_budget_ran_out": 1.0, "relearn_met_at_start": 0.0}
  assert report._cell(ran_out, "relearn_steps") == "> 100 (budget ran out)"
  at_start = {"relearn_steps": 1.0, "relearn_budget_ran_out": 0.0, "relearn_met_at_start": 1.0}
  assert report._cell(at_start, "relearn_steps") == "1 (already at target)"
  counted = {"relearn_steps": 1.0, "relearn_budget_ran_out": 0.0, "relearn_met_at_start": 0.0}
  assert report._cell(counted, "relearn_steps") == "1"  # a count, never "1.0000"
  assert report._cell({"relearn_steps": 126.0}, "relearn_steps") == "126"
  # Counts print as integers everywhere; fractions keep their decimals.
  assert report._cell({"steps": 1.0}, "steps") == "1"
  assert report._cell({"acc_test": 1.0}, "acc_test") == "1.000"


def test_timing_columns_are_work_and_compile_seconds_for_every_kind_of_record():
  from hamforget.evaluate import measures
  retrain = {"work_s": 10.0, "compile_s": 3.0, "steps": 100, "examples_seen": 6400}
  records = {
      # What the runner stores now, for the original and an operator alike.
      "original": {"work_s": 12.0, "compile_s": 4.0, "checkpoint_s": 2.0, "steps": 120,
                   "examples_seen": 7680},
      "finetune": {"work_s": 2.5, "compile_s": 1.0, "steps": 20, "examples_seen": 1280},
      # Stored before the two were apart: an operator's wall_s was already work.
      "old_operator": {"wall_s": 5.0, "compile_s": 1.5, "steps": 30, "examples_seen": 1920},
      # The original's old wall_s mixed compilation in: not a work time.
      "old_original": {"wall_s": 20.0, "steps": 120, "examples_seen": 7680},
  }
  expected = {"original": (12.0, 4.0), "finetune": (2.5, 1.0), "old_operator": (5.0, 1.5)}
  for name, costs in records.items():
    row = measures.cost(types.SimpleNamespace(costs=costs, retrain_costs=retrain))
    assert set(row) == {"work_s", "compile_s", "steps", "examples_seen", "work_ratio_to_retrain",
                        "steps_ratio_to_retrain", "examples_ratio_to_retrain"}
    if name in expected:
      work, compile_s = expected[name]
      assert (row["work_s"], row["compile_s"]) == (work, compile_s)
      assert row["work_ratio_to_retrain"] == pytest.approx(work / retrain["work_s"])
    else:
      assert math.isnan(row["work_s"]) and math.isnan(row["work_ratio_to_retrain"])
  assert "wall_s" not in metric_names(CLASSES)
  assert {"work_s", "compile_s"} <= set(report.MAIN_METRICS) & set(report.SHORT_METRICS)


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
  for name in ("loss_histograms.png", "per_class_accuracy.png", "confusion_matrices.png",
               "relearning_curves.png", "attack_accuracy.png"):
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
  for column in ("acc_retain", "acc_forget", "acc_test", "mia_acc", "work_s", "compile_s"):
    assert column in lines[0]
  assert [line.split()[0] for line in lines[1:]] == list(MODELS)
  assert " - " in lines[1] or lines[1].split()[2] == "-"


def test_plots_are_titled_with_sizes_marked_and_compared_on_shared_axes(monkeypatch):
  from hamforget import plots
  figures = {}
  monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.__setitem__(path, fig))
  results, per_example, _ = _inputs()
  forget = CLASSES.index("mel")
  plots.plot_loss_histograms("hist", per_example, results)
  panels = [ax for ax in figures["hist"].axes if ax.get_visible()]
  assert len(panels) == len(MODELS)
  for ax in panels[1:]:  # one scale for every compared panel
    assert ax.get_shared_x_axes().joined(panels[0], ax)
    assert ax.get_shared_y_axes().joined(panels[0], ax)
  n_test = len(per_example["original"]["test"]["loss"])
  assert f"test (n={n_test})" in [t.get_text() for t in panels[0].get_legend().get_texts()]
  plots.plot_attack_accuracy("attack", results, "retrain")
  assert "40 forget and as many class-matched test examples" in \
      figures["attack"]._suptitle.get_text()
  counts = np.bincount(per_example["original"]["test"]["labels"], minlength=len(CLASSES))
  plots.plot_per_class_accuracy("classes", results, CLASSES, (forget,), counts)
  ticks = figures["classes"].axes[0].get_xticklabels()
  assert ticks[forget].get_text() == f"mel*\nn={counts[forget]}"
  assert ticks[forget].get_color() == plots.FORGOTTEN_COLOUR != ticks[0].get_color()
  plots.plot_confusion_matrices("confusion", per_example, CLASSES, ("original", "retrain"),
                                (forget,))
  titles = [ax.get_title() for ax in figures["confusion"].axes if ax.get_title()]
  assert titles == [f"original: {n_test} test examples", f"retrain: {n_test} test examples"]
