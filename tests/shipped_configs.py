"""Running a shipped config's `:local` variant end to end as shipped (test_shipped_config*.py).

Each runs on a fixture in its own data layout (the HAM10000 folder with the
real metadata, a Kaggle hmnist CSV, a MedMNIST npz, the embedded MNIST), with
its own forget request and its own list of operators; only sizes and
schedules shrink (fewer examples, 8x8 images, a ResNet-10, one epoch, short
operator budgets), so a config whose operators cannot serve its request, or
whose data path is broken, fails its test.
"""

import importlib
import json

import jax

import fixtures
from hamforget import experiment, sharding
from hamforget.unlearn import catalog


def _ham10000(root):
  rows = fixtures.read_ham_rows(fixtures.real_ham_metadata(), limit=200)
  fixtures.write_ham10000(root, rows, image_hw=(12, 16))
  return str(root)


def _hmnist(root):
  root.mkdir()
  path = root / "hmnist_8_8_RGB.csv"
  fixtures.write_hmnist_csv(path, size=8, n=140)
  return str(path)


def _dermamnist(root):
  root.mkdir()
  path = root / "dermamnist.npz"
  fixtures.write_dermamnist_npz(path, size=28, n_per_split=(84, 28, 28))
  return str(path)


# config module -> writer of a fixture in its layout (None: the embedded data).
LAYOUTS = {"mnist": None, "ham10000": _ham10000, "hmnist": _hmnist, "dermamnist": _dermamnist}


def _shrink(config):
  """Sizes and schedules only: the data layout, request and operators stay as shipped."""
  config.data.image_size = 8
  config.data.limit = min(config.data.limit, 200)
  config.train.num_epochs = 1
  config.train.batch_size = 32
  config.evaluate.anamnesis = False
  # Compilation is most of a tiny run's time on CPU: half the depth, and XLA's
  # own convolution (it compiles faster than the patch lowering; both are
  # tested in test_fast_conv and test_experiment).
  if config.model.name.startswith("resnet"):
    config.model.name = "resnet10"
  config.model.conv = "xla"
  for name in catalog.method_names(config):
    settings = config.unlearn[name]
    for key in ("num_epochs", "impair_epochs", "repair_epochs"):
      if key in settings:
        settings[key] = type(settings[key])(1)
    for key in ("num_iterations", "noise_steps", "forget_noise_steps", "retain_noise_steps"):
      if key in settings:
        settings[key] = 2
  if "gkt" in config.unlearn.methods:
    config.unlearn.gkt.eval_every = 1


def run_local_variant(name, tmp_path):
  """Runs configs/<name>.py:local on a fixture of its layout; checks every listed model ran."""
  config = importlib.import_module(f"configs.{name}").get_config("local")
  if LAYOUTS[name] is not None:
    config.data.root = LAYOUTS[name](tmp_path / "data")
  config.data.cache_dir = str(tmp_path / "cache")
  _shrink(config)
  methods = catalog.method_names(config)
  assert methods, f"configs/{name}.py:local lists no operator"

  workdir = tmp_path / "run"
  mesh = sharding.make_mesh(2)
  with jax.set_mesh(mesh):
    experiment.run(config, str(workdir), mesh)

  rows = json.loads((workdir / "results.json").read_text())
  assert set(rows) == {"original", "retrain", "retrain_seed2", *methods}  # + the noise floor
  for model, row in rows.items():
    assert 0.0 <= row["acc_test"] <= 1.0, (model, row["acc_test"])
  assert "| Model |" in (workdir / "results.md").read_text()
