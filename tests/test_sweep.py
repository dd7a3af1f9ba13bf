"""Sweeps: grids, manifests, shares, restarts, failures, the shared original, collect.

Most behaviours run on a fake experiment (a function that writes the
results.json a run would); one short end-to-end sweep of three real runs
checks what only the real one can: one original for all, one retrain per request.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import mnist, sweeps
from hamforget import collect, config_checks, files, grid, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _base():
  config = mnist.get_config("local")
  config.unlearn.methods = ("finetune",)
  return config


def _grid():
  return grid.product(grid.axis("unlearn.methods", [("finetune",), ("scrub",)]),
                      grid.axis("unlearn.scrub.learning_rate", [1e-3, 1e-2]),
                      grid.axis("seed", [0, 1, 2]))


def _fake_run(calls, fail=()):
  """A stand-in for experiment.run: results that depend on the config, on disk."""

  def run(config, workdir):
    calls.append(workdir)
    if config.seed in fail:
      raise RuntimeError(f"boom at seed {config.seed}")
    os.makedirs(workdir, exist_ok=True)
    method = config.unlearn.methods[0]
    lr = config.unlearn.scrub.learning_rate
    results = {
        "original": {"acc_retain": 0.9, "acc_forget": 0.9, "acc_test": 0.85, "mia_acc": 0.6},
        "retrain": {"acc_retain": 0.9, "acc_forget": 0.0, "acc_test": 0.8, "mia_acc": 0.5},
        method: {"acc_retain": 0.8 + config.seed / 100, "acc_forget": lr * 10,
                 "acc_test": 0.75, "mia_acc": 0.5 + lr, "gap_to_retrain": 0.1 + lr}}
    files.write_json(os.path.join(workdir, "results.json"), results)
    return results

  return run


# ----------------------------------------------------------------------------
# Grids, names, ids, shares.

def test_grid_helpers_names_and_ids_are_stable():
  runs = grid.product(grid.axis("a.x", [1, 2]),
                      grid.zip_(grid.axis("b", ["p", "q"]), grid.axis("c.x", [0.5, 0.25])))
  assert runs == [{"a.x": 1, "b": "p", "c.x": 0.5}, {"a.x": 1, "b": "q", "c.x": 0.25},
                  {"a.x": 2, "b": "p", "c.x": 0.5}, {"a.x": 2, "b": "q", "c.x": 0.25}]
  # Two keys ending alike keep their whole names; others are shortened.
  assert grid.run_name(runs[0]) == "a.x=1,b=p,c.x=0.5"
  assert grid.run_name({"unlearn.methods": ("scrub",), "seed": 3}) == "methods=scrub,seed=3"
  # The id depends on the overrides, not on their order or on tuple vs list
  # (a manifest read back from JSON holds lists); pinned across versions.
  assert grid.run_id({"seed": 1, "unlearn.methods": ("scrub",)}) == grid.run_id(
      {"unlearn.methods": ["scrub"], "seed": 1})
  assert grid.run_id({"seed": 1}) == "a4bbadc1c789"  # sha256('{"seed": 1}')[:12]
  assert len({grid.run_id(r) for r in runs}) == 4
  with pytest.raises(ValueError, match="set twice"):
    grid.product(grid.axis("seed", [0]), grid.axis("seed", [1]))
  with pytest.raises(ValueError, match="different lengths"):
    grid.zip_(grid.axis("a", [1]), grid.axis("b", [1, 2]))
  with pytest.raises(ValueError, match="same id"):
    grid.describe([{"seed": 0}, {"seed": 0}])


def test_task_shares_are_disjoint_deterministic_and_cover_the_grid():
  runs = list(range(11))
  shares = [grid.task_share(runs, 3, i) for i in range(3)]
  assert sorted(sum(shares, [])) == runs
  assert shares[1] == [1, 4, 7, 10]
  with pytest.raises(ValueError):
    grid.task_share(runs, 2, 2)


def test_shipped_sweeps_plan_and_pass_the_config_checks(tmp_path):
  for name in sweeps.SWEEPS:
    runs = sweep.plan(mnist.get_config("local"), sweeps.get_sweep(name))
    sweep.check(runs, str(tmp_path))
  digits = sweep.plan(mnist.get_config(), sweeps.get_sweep("digits"))
  assert len(digits) == 60 and digits[0].config.forget.classes == "0"


def test_an_invalid_operator_or_key_is_refused_before_any_work(tmp_path):
  runs = sweep.plan(_base(), grid.axis("unlearn.methods", [("finetune",), ("scrubb",)]))
  with pytest.raises(config_checks.ConfigError, match="(?s)1 of 2 runs.*'scrubb'.*did you mean"):
    sweep.check(runs, str(tmp_path))
  with pytest.raises(config_checks.ConfigError, match="no key 'num_epoch'"):
    sweep.plan(_base(), [{"train.num_epoch": 1}])
  with pytest.raises(config_checks.ConfigError, match="cannot vary within a sweep"):
    sweep.plan(_base(), [{"mesh.num_devices": 1}])


def test_the_launcher_refuses_an_invalid_operator_before_jax_starts(tmp_path):
  sweep_file = tmp_path / "bad.py"
  sweep_file.write_text("from hamforget import grid\n"
                        "def get_sweep(name):\n"
                        "  return grid.axis('unlearn.methods', [('finetune',), ('scrubb',)])\n")
  done = subprocess.run([sys.executable, "-m", "launch.sweep", "--config=configs/mnist.py:local",
                         f"--sweep={sweep_file}:x", f"--workdir={tmp_path / 'grid'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  assert "'scrubb', which is not an operator" in done.stderr
  assert not (tmp_path / "grid").exists()  # nothing written, nothing trained


# ----------------------------------------------------------------------------
# Running shares (a fake experiment).

def test_two_tasks_split_the_grid_and_collect_merges_their_roots(tmp_path):
  runs = sweep.plan(_base(), _grid())
  calls = []
  roots = [str(tmp_path / "host0"), str(tmp_path / "host1")]
  for i, root in enumerate(roots):  # two machines, each its own folder
    summary = sweep.run_share(root, runs, _fake_run(calls), num_tasks=2, task_index=i)
    assert len(summary.finished) == 6 and not summary.failed
  assert len(calls) == len(runs) == 12
  manifest = files.read_json(os.path.join(roots[0], sweep.MANIFEST))
  assert [r["id"] for r in manifest["runs"]] == [r.id for r in runs]
  assert manifest["counts"] == {"finished": 6, "failed": 0, "running": 0, "pending": 6}

  long = collect.gather(roots)
  assert long["run_id"].nunique() == 12
  # Long format: every value with its run's id, seed and swept keys.
  row = long[(long["model"] == "scrub") & (long["metric"] == "acc_forget")].iloc[0]
  assert row["value"] == pytest.approx(row["cfg.unlearn.scrub.learning_rate"] * 10)
  long_csv = os.path.join(runs[0].folder(roots[0]), sweep.LONG_RESULTS)
  assert {"run_id", "seed", "cfg.seed", "model", "metric", "value"} <= set(
      open(long_csv).readline().strip().split(","))

  # One machine's share alone: seeds 0 and 2 of some settings, 1 of others.
  alone = collect.aggregate(collect.gather(roots[:1]))
  scrub = alone[(alone["model"] == "scrub")]
  assert scrub["n"].tolist() == [2, 1] and scrub["acc_retain_lo"].notna().tolist() == [True, False]

  table, text = collect.write(roots)
  scrub = table[(table["model"] == "scrub") & (table["cfg.unlearn.scrub.learning_rate"] == 1e-2)]
  assert len(scrub) == 1 and scrub["n"].item() == 3
  values = np.array([0.80, 0.81, 0.82])
  half = 4.302653 * values.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 dof)
  assert scrub["acc_retain"].item() == pytest.approx(values.mean())
  assert scrub["acc_retain_hi"].item() == pytest.approx(values.mean() + half, rel=1e-5)
  # original and retrain repeat in the runs of both methods: three seeds, not six.
  assert set(table.loc[table["model"] == "retrain", "n"]) == {3}
  assert "| scrub | 0.01 | 3 |" in text
  for name in ("grid_results.csv", "grid_results.md", "grid_long.csv", "forget_vs_retain.png",
               "mia_vs_retrain.png", "metrics_vs_unlearn_scrub_learning_rate.png"):
    assert os.path.getsize(os.path.join(roots[0], name)) > 0, name


def test_a_restarted_sweep_skips_finished_runs_and_a_failure_does_not_stop_the_rest(tmp_path):
  root = str(tmp_path / "grid")
  runs = sweep.plan(_base(), _grid())
  calls = []
  summary = sweep.run_share(root, runs, _fake_run(calls, fail=(1,)))
  assert len(summary.failed) == 4 and len(summary.finished) == 8
  failed = runs[1]  # seed 1
  assert "boom at seed 1" in open(os.path.join(failed.folder(root), sweep.ERROR)).read()
  entry = files.read_json(os.path.join(root, sweep.MANIFEST))["runs"][1]
  assert entry["status"] == "failed" and "boom at seed 1" in entry["error"]

  # A kill mid-run leaves no finished marker: that run, and the failed ones, run again.
  os.remove(os.path.join(runs[0].folder(root), sweep.STATUS))
  calls.clear()
  summary = sweep.run_share(root, runs, _fake_run(calls))
  assert sorted(calls) == sorted(r.folder(root) for r in runs if r.config.seed == 1 or r is runs[0])
  assert len(summary.skipped) == 7
  # A changed base config is another grid: nothing counts as finished.
  changed = _base()
  changed.train.num_epochs = 7
  assert not any(sweep.is_finished(root, r) for r in sweep.plan(changed, _grid()))


def _tiny_base(tmp_path):
  base = mnist.get_config("local")
  base.data.cache_dir = str(tmp_path / "cache")
  base.data.limit = 200
  base.data.image_size = 8
  base.train.num_epochs = 1
  base.train.batch_size = 32
  base.model.name = "allcnn"  # compiles in a fraction of a ResNet's time
  base.evaluate.anamnesis = False
  base.evaluate.noise_floor = False
  base.evaluate.ci_resamples = 20
  base.evaluate.mia_splits = 2
  return base


# ----------------------------------------------------------------------------
# End to end: the real experiment, three runs sharing one original and one retrain.

def test_runs_share_the_original_across_forget_requests_and_retrain_across_operators(tmp_path, monkeypatch):
  import jax
  from hamforget import experiment, sharding
  base = _tiny_base(tmp_path)
  base.unlearn.methods = ()
  # The third run differs from the second only in a hyper-parameter of an
  # operator it does not run: it shares the second's retrain as well.
  runs = sweep.plan(base, [{"forget.classes": "0"}, {"forget.classes": "1"},
                           {"forget.classes": "1", "unlearn.finetune.learning_rate": 0.02}])
  root = str(tmp_path / "grid")
  trained, made = [], []
  original_train = experiment.original.train_original
  monkeypatch.setattr(experiment.original, "train_original",
                      lambda *a, **k: trained.append(1) or original_train(*a, **k))
  run_operator = experiment.operators.run_operator
  monkeypatch.setattr(experiment.operators, "run_operator",
                      lambda name, *a, **k: made.append(name) or run_operator(name, *a, **k))
  mesh = sharding.make_mesh(2)

  def run_one(config, workdir):
    with jax.set_mesh(mesh):
      return experiment.run(config, workdir, mesh, shared_models=root)

  summary = sweep.run_share(root, runs, run_one)
  assert len(summary.finished) == 3, summary
  assert len(trained) == 1  # the later runs restored the first's original
  assert made == ["retrain", "retrain"]  # one per forget request
  shared = sorted(n for n in os.listdir(os.path.join(root, "models")) if n.endswith(".json"))
  assert [n.split("-")[0] for n in shared] == ["original", "retrain", "retrain"]
  def record(run, name):
    return json.load(open(os.path.join(run.folder(root), "models", f"{name}.json")))

  # One original (same key, same arrays) in both runs; retrain made per request.
  assert record(runs[0], "original") == record(runs[1], "original")
  assert record(runs[0], "retrain")["fingerprint"] != record(runs[1], "retrain")["fingerprint"]
  # Each run's workdir is whole on its own: its audit verifies from its folder.
  from hamforget import audit
  assert all(problem is None for _, problem in audit.verify_workdir(runs[1].folder(root)))
  table, _ = collect.write([root])
  assert set(table["model"]) == {"original", "retrain"}
  assert set(table["cfg.forget.classes"]) == {"0", "1"}
  # The retrain both class-1 runs share, measured alike in each.
  retrain = [json.load(open(os.path.join(r.folder(root), "results.json")))["retrain"]
             for r in runs[1:]]
  assert retrain[0]["acc_forget"] == retrain[1]["acc_forget"]




def test_runs_that_differ_in_traced_hyperparameters_run_as_one_program(tmp_path, monkeypatch):
  import jax
  from hamforget import experiment, operators, sharding
  base = _tiny_base(tmp_path)
  base.unlearn.methods = ("neggrad_plus",)
  overrides = [{"unlearn.neggrad_plus.learning_rate": lr, "unlearn.neggrad_plus.alpha": alpha}
               for lr, alpha in [(0.01, 0.99), (0.05, 0.9), (0.02, 0.95)]]
  batches, singles = [], []
  batch_fn, single_fn = operators.run_operator_batch, operators.run_operator
  monkeypatch.setattr(experiment.operators, "run_operator_batch",
                      lambda name, configs, *a: batches.append(len(configs)) or batch_fn(
                          name, configs, *a))
  monkeypatch.setattr(experiment.operators, "run_operator",
                      lambda name, *a: singles.append(name) or single_fn(name, *a))
  mesh = sharding.make_mesh(2)

  def sweep_results(root, **kwargs):
    runs = sweep.plan(base, overrides)

    def run_one(config, workdir, batch_with=()):
      with jax.set_mesh(mesh):
        return experiment.run(config, workdir, mesh, shared_models=root, batch_with=batch_with)

    assert len(sweep.run_share(root, runs, run_one, **kwargs).finished) == 3
    return [json.load(open(os.path.join(r.folder(root), "results.json"))) for r in runs]

  batched = sweep_results(str(tmp_path / "batched"), batch_key=operators.batch_key)
  assert batches == [3] and singles == ["retrain"]  # one program for the three runs
  one_by_one = sweep_results(str(tmp_path / "loop"))
  assert singles == ["retrain"] + ["retrain"] + ["neggrad_plus"] * 3
  for batch_run, single_run in zip(batched, one_by_one):
    for metric, value in single_run["neggrad_plus"].items():
      if metric.endswith("_s") or "ratio_to_retrain" in metric or value is None:
        continue
      # vmapped convolutions may sum in another order: equal to float rounding.
      np.testing.assert_allclose(batch_run["neggrad_plus"][metric], value, rtol=1e-4,
                                 atol=1e-5, err_msg=metric)
  assert batched[0]["neggrad_plus"]["acc_forget"] != batched[1]["neggrad_plus"]["acc_forget"] or (
      batched[0]["neggrad_plus"]["loss_forget_mean"] != batched[1]["neggrad_plus"]["loss_forget_mean"])


def test_the_speedup_benchmark_times_the_points_it_was_given(tmp_path):
  from launch import sweep_speedup  # pylint: disable=import-outside-toplevel
  assert sweep_speedup.flag_value(("finetune", "scrub")) == "finetune,scrub"
  assert sweep_speedup.flag_value(0.0025) == "0.0025"
  points = sweeps.get_sweep("scrub_lr")[:3]
  path = sweep_speedup.write_points_file(str(tmp_path / "points.py"), points)
  loaded = sweep.load_overrides(f"{path}:points")
  # The same runs (ids are of the overrides, tuples and lists alike).
  assert [grid.run_id(o) for o in loaded] == [grid.run_id(o) for o in points]
