"""Whole runs through the launcher's code path, on small real and synthetic data."""

import json
import os

import jax
import numpy as np
import pandas as pd

import fixtures
from configs import ham10000, mnist
from hamforget import experiment, sharding

REAL_METADATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                             "data", "HAM10000_metadata.csv")


def _run(config, workdir):
  mesh = sharding.make_mesh(2)
  with jax.set_mesh(mesh):
    return experiment.run(config, str(workdir), mesh)


def test_ham10000_run_on_the_published_layout_writes_every_output(tmp_path):
  root = tmp_path / "HAM10000"
  rows = (fixtures.read_ham_rows(REAL_METADATA, limit=240) if os.path.exists(REAL_METADATA)
          else fixtures.ham_rows(n_lesions=150))
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

  assert set(results) == {"original", "retrain", "finetune"}
  for name in ("config.json", "splits.csv", "metrics.jsonl", "timings.json", "results.json",
               "results.csv", "results.md", "loss_histograms.png", "per_class_accuracy.png",
               "relearning_curves.png", "attack_accuracy.png", "per_example_finetune.npz"):
    assert (workdir / name).stat().st_size > 0, name
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
  assert experiment.method_names(config) == ["finetune", "scrub"]
  config.unlearn.methods = ("finetune", "scrub")
  assert experiment.method_names(config) == ["finetune", "scrub"]
  config.unlearn.methods = ()
  assert experiment.method_names(config) == []


def test_short_mnist_training_is_well_above_chance(tmp_path):
  config = mnist.get_config("local")
  config.data.cache_dir = str(tmp_path / "cache")
  config.unlearn.methods = ()
  config.evaluate.anamnesis = False
  results = _run(config, tmp_path / "run")
  assert results["original"]["acc_test"] > 0.6  # chance is 0.1
  # The retrained model never saw digit 0 and cannot name it.
  assert results["retrain"]["acc_forget"] < 0.05
