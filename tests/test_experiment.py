"""Whole runs through the launcher's code path, on small real and synthetic data."""

import json
import logging

import jax
import numpy as np
import pandas as pd
import pytest

import fixtures
from operator_harness import assert_trees_equal
from configs import ham10000, mnist
from hamforget import experiment, operators, populations, sharding, train
from hamforget.data import prepare
from hamforget.models import build_model
from hamforget.store import ModelStore
from hamforget.unlearn import catalog


def _run(config, workdir):
  mesh = sharding.make_mesh(2)
  with jax.set_mesh(mesh):
    return experiment.run(config, str(workdir), mesh)


# An operator in a file of its own, found by module name like the shipped ones.
_PROBE_OPERATOR = '''
"""`probe_operator`: shifts every 1-D parameter (biases, BatchNorm scales) by `shift`."""
import jax
import jax.numpy as jnp

from hamforget.unlearn import base

DEFAULTS = {"shift": 0.0}


@base.register("probe_operator", needs=set(), defaults=DEFAULTS)
def probe_operator(model, variables, access, request, config, rng):
  params = jax.tree.map(lambda p: p + config.shift if p.ndim == 1 else p, variables["params"])
  return {**variables, "params": params}, {"steps": jnp.int32(0),
                                           "examples_seen": jnp.int32(0)}
'''


@pytest.fixture
def probe_operator(tmp_path, monkeypatch):
  """Adds `probe_operator` by writing one file into a folder of the operator package."""
  from hamforget import unlearn
  folder = tmp_path / "more_operators"
  folder.mkdir()
  (folder / "probe_operator.py").write_text(_PROBE_OPERATOR)
  monkeypatch.setattr(unlearn, "__path__", [*unlearn.__path__, str(folder)])
  yield "probe_operator"
  unlearn.unregister("probe_operator")


def test_ham10000_run_on_the_published_layout_writes_every_output(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")  # pytest's stderr is no terminal: the log speaks
  root = tmp_path / "HAM10000"
  rows = fixtures.read_ham_rows(fixtures.real_ham_metadata(), limit=240)
  fixtures.write_ham10000(root, rows, image_hw=(30, 40))
  config = ham10000.get_config("local")
  config.data.root = str(root)
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.image_size = 16
  config.train.num_epochs = 1
  config.evaluate.relearn_steps = 5
  config.unlearn.methods = ("finetune",)
  workdir = tmp_path / "run"
  results = _run(config, workdir)

  assert set(results) == {"original", "retrain", "retrain_seed2", "finetune"}  # + noise floor
  for name in ("config.json", "splits.csv", "metrics.jsonl", "timings.json", "results.json",
               "results.csv", "results.md", "loss_histograms.png", "per_class_accuracy.png",
               "relearning_curves.png", "attack_accuracy.png", "confusion_matrices.png",
               "per_example_finetune.npz"):
    assert (workdir / name).stat().st_size > 0, name
  # Training curves for TensorBoard, a run per model, the original's per epoch.
  curves = fixtures.read_scalars(str(workdir / "tensorboard" / "original"))
  assert [step for step, _ in curves["train_loss"]] == list(range(1, config.train.num_epochs + 1))
  assert "work_s" in fixtures.read_scalars(str(workdir / "tensorboard" / "finetune"))
  table = pd.read_csv(workdir / "splits.csv")
  assert len(table) == len(rows)
  # Grouped: no lesion in two splits; whole lesions forgotten.
  assert (table.groupby("group")["split"].nunique() == 1).all()
  forgotten = table[table["forget"]]
  assert len(forgotten) > 0 and (forgotten["split"] == "train").all()
  train_rows = table[table["split"] == "train"]
  assert (train_rows.groupby("group")["forget"].nunique() == 1).all()
  assert "| Model | Attack Accuracy |" in (workdir / "results.md").read_text()
  saved = json.loads((workdir / "results.json").read_text())
  assert pd.DataFrame(saved).T.loc["retrain", "acc_forget"] == results["retrain"]["acc_forget"]
  with np.load(workdir / "per_example_finetune.npz", allow_pickle=False) as arrays:
    assert arrays["forget_loss"].shape == (len(forgotten),)
  # Work and compilation apart for every model, the original included.
  for name, row in results.items():
    assert row["work_s"] > 0 and row["compile_s"] >= 0, name
  assert results["original"]["compile_s"] > 0  # its first epoch compiled, not counted as work
  # Every metrics.jsonl line says which run, model and fingerprint, and when.
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {line["model"] for line in lines} == {"original", "retrain", "retrain_seed2", "finetune"}
  assert len({line["run_id"] for line in lines}) == 1
  assert all(line["fingerprint"] and line["time"] for line in lines)
  # Per-epoch and evaluation progress reached the log (no terminal attached).
  messages = [r.getMessage() for r in caplog.records if r.name == "absl"]
  assert any(m.startswith(f"train original: {config.train.num_epochs}/") for m in messages)
  evaluated = [m for m in messages if m.startswith("evaluate: ")]
  assert evaluated and evaluated[-1].endswith("(metrics of finetune)")
  total = evaluated[-1].split()[1].split("/")[1]
  assert evaluated[-1].split()[1] == f"{total}/{total}"

  # A restarted run finds every model finished, reruns nothing and reproduces
  # the results.
  phases = lambda: [json.loads(line)["phase"]
                    for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  done = phases()
  again = _run(config, workdir)
  assert phases() == done
  assert again["finetune"]["acc_test"] == results["finetune"]["acc_test"]

  # A changed hyper-parameter of one operator reruns that operator alone.
  config.unlearn.finetune.learning_rate = 0.05
  _run(config, workdir)
  assert phases()[len(done):] == ["finetune"]


def test_methods_from_the_command_line_or_a_config_file():
  config = mnist.get_config()
  config.unlearn.methods = ("finetune, scrub",)  # what --config.unlearn.methods=... gives
  assert catalog.method_names(config) == ["finetune", "scrub"]
  config.unlearn.methods = ("finetune", "scrub")
  assert catalog.method_names(config) == ["finetune", "scrub"]
  config.unlearn.methods = ()
  assert catalog.method_names(config) == []


def test_short_mnist_training_is_well_above_chance_and_runs_a_new_operator_file(
    tmp_path, probe_operator):
  config = mnist.get_config("local")
  config.data.cache_dir = str(tmp_path / "cache")
  config.model.name = "resnet10"  # compiles in about half a ResNet-18's time
  config.model.conv = "xla"
  config.unlearn.methods = (probe_operator,)
  config.unlearn[probe_operator].shift = 0.25  # its defaults reached the config
  config.evaluate.anamnesis = False
  results = _run(config, tmp_path / "run")
  assert results["original"]["acc_test"] > 0.6  # chance is 0.1
  # The run used the new operator's output: the original, changed by it.
  assert set(results) == {"original", "retrain", "retrain_seed2", probe_operator}
  assert results[probe_operator]["loss_test_mean"] != results["original"]["loss_test_mean"]
  # The retrained model never saw digit 0 and cannot name it.
  assert results["retrain"]["acc_forget"] < 0.05


def test_population_members_are_the_seeds_runs_however_many_are_vmapped(tmp_path, monkeypatch):
  config = mnist.get_config("challenge,local")
  config.data.cache_dir = str(tmp_path / "cache")
  config.unlearn.neggrad_plus.num_epochs = 0.3  # 5 steps: enough to tell seeds apart
  config.evaluate.challenge_population = 3
  mesh = sharding.make_mesh(2)
  with jax.set_mesh(mesh):
    data = prepare.prepare_data(config, mesh)
    model = build_model(config.model, data.num_classes)
    original = train.init_variables(model, data.image_shape, jax.random.key(0))
    store = ModelStore(str(tmp_path / "run"))
    build = lambda: populations.build_populations(config, model, original, data, ["neggrad_plus"],
                                                 jax.random.key(1), store)["neggrad_plus"]
    members = {}
    for batch in (1, 2, 3):  # a scan of 3, a vmap of 2 then 1, one vmap of 3
      config.evaluate.population_batch = batch
      population = build()
      members[batch] = [jax.tree.map(lambda x, i=i: np.asarray(x[i]), population)
                        for i in range(3)]
      # Saved once made: a restarted run of the same config reuses it.
      monkeypatch.setattr(operators, "bind", None)
      assert_trees_equal(build(), population)
      monkeypatch.undo()
      (tmp_path / "run" / "models" / "population_neggrad_plus.json").unlink()

  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree["params"])])
  start = flat(original)

  def distance(a, b):
    """Relative distance between two runs' parameter updates."""
    a, b = flat(a) - start, flat(b) - start
    return np.linalg.norm(a - b) / np.linalg.norm(b)

  # Vmapped convolutions sum in another order: equal up to float drift, while
  # two seeds' runs (other batches, other augmentations) are far apart.
  for batch in (2, 3):
    for i in range(3):
      assert distance(members[batch][i], members[1][i]) < 1e-4
  assert distance(members[1][0], members[1][1]) > 0.1


def test_retrain_population_is_twice_the_others_for_like_for_like_scoring():
  config = mnist.get_config("challenge")
  size = config.evaluate.challenge_population
  assert populations.population_size(config, "retrain") == 2 * size  # reference + scored half
  assert populations.population_size(config, "finetune") == size


def test_population_batch_defaults_to_the_platform():
  assert populations.population_batch(0, 8, "cpu") == 1
  assert populations.population_batch(0, 8, "gpu") == 8
  assert populations.population_batch(16, 8, "tpu") == 8
  with pytest.raises(ValueError, match="population_batch=-1"):
    populations.population_batch(-1, 8, "cpu")
