"""The catalogue of bad input: every case fails early, with the error's type,
and a message that names the key (or file) and says what is expected.

Config cases need no JAX work at all (`config_checks.check_config`); data-file
cases decode a file or two; a refused rerun leaves the workdir as it was.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import fixtures
from configs import mnist
from hamforget import config_checks
from hamforget.config_checks import ConfigError
from hamforget.data import cache, sources
from hamforget.data.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  config = mnist.get_config("local")
  config.unlearn.methods = ("finetune",)  # serves every kind: one problem per case
  return config


def _set(path, value):
  """A mutation `config -> None` setting the dotted `path` to `value`."""

  def mutate(config, tmp_path):
    del tmp_path
    *sections, key = path.split(".")
    section = config
    for name in sections:
      section = section[name]
    section[key] = value

  return mutate


def _both(*mutations):
  def mutate(config, tmp_path):
    for mutation in mutations:
      mutation(config, tmp_path)
  return mutate


def _file_as(key):
  """Points `data.cache_dir` (or the workdir) at an existing file."""

  def mutate(config, tmp_path):
    (tmp_path / "a_file").write_text("x")
    if key == "data.cache_dir":
      config.data.cache_dir = str(tmp_path / "a_file")

  return mutate


# (id, mutation, text the message must contain: the key=value, then what is expected)
CONFIG_CASES = [
    ("batch_size_zero", _set("train.batch_size", 0), "train.batch_size=0", "integer > 0"),
    ("batch_size_negative", _set("train.batch_size", -5), "train.batch_size=-5", "integer > 0"),
    ("eval_batch_size_zero", _set("train.eval_batch_size", 0), "train.eval_batch_size=0",
     "integer > 0"),
    ("learning_rate_zero", _set("train.learning_rate", 0.0), "train.learning_rate=0.0",
     "finite number > 0"),
    ("learning_rate_nan", _set("train.learning_rate", math.nan), "train.learning_rate=nan",
     "finite number > 0"),
    ("learning_rate_inf", _set("train.learning_rate", math.inf), "train.learning_rate=inf",
     "finite number > 0"),
    ("num_epochs_zero", _set("train.num_epochs", 0), "train.num_epochs=0", "integer >= 1"),
    ("patience_negative", _set("train.patience", -1), "train.patience=-1", "integer >= 0"),
    ("optimizer_unknown", _set("train.optimizer", "adam"), "train.optimizer='adam'",
     "one of 'sgd', 'adamw'"),
    ("momentum_above_one", _set("train.momentum", 1.5), "train.momentum=1.5", "in [0, 1)"),
    ("weight_decay_negative", _set("train.weight_decay", -1e-4), "train.weight_decay=-0.0001",
     ">= 0"),
    ("image_size_negative", _set("data.image_size", -1), "data.image_size=-1", "integer >= 0"),
    ("limit_negative", _set("data.limit", -10), "data.limit=-10", "integer >= 0"),
    ("decode_workers_negative", _set("data.decode_workers", -1), "data.decode_workers=-1",
     "integer >= 0"),
    ("val_fraction_one", _set("data.val_fraction", 1.0), "data.val_fraction=1.0", "in [0, 1)"),
    ("test_fraction_negative", _set("data.test_fraction", -0.1), "data.test_fraction=-0.1",
     "in [0, 1)"),
    ("split_fractions_sum_to_one",
     _both(_set("data.val_fraction", 0.5), _set("data.test_fraction", 0.5)),
     "data.val_fraction + data.test_fraction=1.0", "sum < 1"),
    ("source_unknown", _set("data.name", "mnist_png"), "data.name='mnist_png'", "'ham10000'"),
    ("pipeline_unknown", _set("data.pipeline", "tfdata"), "data.pipeline='tfdata'",
     "one of 'device', 'grain'"),
    ("root_missing_for_ham10000", _set("data.name", "ham10000"), "data.root=''",
     "expected its path"),
    ("root_not_found", _both(_set("data.name", "hmnist"), _set("data.root", "/no/such.csv")),
     "data.root='/no/such.csv'", "no such file or folder"),
    ("cache_dir_is_a_file", _file_as("data.cache_dir"), "data.cache_dir=", "expected a folder"),
    ("model_unknown", _set("model.name", "vgg16"), "model.name='vgg16'", "'resnet18'"),
    ("stem_unknown", _set("model.stem", "tiny"), "model.stem='tiny'", "'imagenet', 'small'"),
    ("dtype_unknown", _set("model.dtype", "float8"), "model.dtype='float8'", "'bfloat16'"),
    ("conv_unknown", _set("model.conv", "cudnn"), "model.conv='cudnn'", "'auto', 'xla'"),
    ("width_zero", _set("model.width", 0.0), "model.width=0.0", "finite number > 0"),
    ("num_devices_negative", _set("mesh.num_devices", -1), "mesh.num_devices=-1",
     "integer >= 0"),
    ("forget_kind_unknown", _set("forget.kind", "patients"), "forget.kind='patients'",
     "'classes', 'groups', 'examples'"),
    ("ids_with_kind_classes", _set("forget.ids", "mnist0001"), "forget.ids='mnist0001'",
     "reads forget.classes only"),
    ("fraction_with_kind_classes", _set("forget.fraction", 0.3), "forget.fraction=0.3",
     "forgets whole classes"),
    ("classes_with_kind_groups",
     _both(_set("forget.kind", "groups"), _set("forget.classes", "3")),
     "forget.classes='3'", "classes apply to kind 'classes'"),
    ("classes_with_kind_examples",
     _both(_set("forget.kind", "examples"), _set("forget.classes", "1,2")),
     "forget.classes='1,2'", "classes apply to kind 'classes'"),
    ("fraction_above_one", _both(_set("forget.kind", "examples"), _set("forget.fraction", 1.5)),
     "forget.fraction=1.5", "in (0, 1)"),
    ("fraction_zero", _both(_set("forget.kind", "groups"), _set("forget.fraction", 0.0)),
     "forget.fraction=0.0", "in (0, 1)"),
    ("class_index_out_of_range", _set("forget.classes", "11"), "forget.classes='11'",
     "0..9"),
    ("class_name_unknown", _set("forget.classes", "cat"), "forget.classes='cat'",
     "unknown class 'cat'"),
    ("operator_unknown", _set("unlearn.methods", ("scurb",)), "'scurb'",
     "did you mean 'scrub'"),
    ("operator_cannot_serve_kind",
     _both(_set("forget.kind", "examples"), _set("unlearn.methods", ("unsir",))),
     "'unsir' cannot serve forget.kind='examples'", "classes only"),
    ("operator_learning_rate_zero",
     _both(_set("unlearn.methods", ("finetune",)), _set("unlearn.finetune.learning_rate", 0.0)),
     "unlearn.finetune.learning_rate=0.0", "finite number > 0"),
    ("operator_batch_size_zero",
     _both(_set("unlearn.methods", ("scrub",)), _set("unlearn.scrub.batch_size", 0)),
     "unlearn.scrub.batch_size=0", "integer > 0"),
    ("operator_fractional_epochs_zero",
     _both(_set("unlearn.methods", ("neggrad_plus",)), _set("unlearn.neggrad_plus.num_epochs", 0.0)),
     "unlearn.neggrad_plus.num_epochs=0.0", "finite number > 0"),
    ("operator_epochs_zero",
     _both(_set("unlearn.methods", ("emmn",)), _set("unlearn.emmn.repair_epochs", 0)),
     "unlearn.emmn.repair_epochs=0", "integer >= 1"),
    ("operator_subset_fraction_above_one",
     _both(_set("unlearn.methods", ("bad_teacher",)),
           _set("unlearn.bad_teacher.retain_subset_fraction", 1.5)),
     "unlearn.bad_teacher.retain_subset_fraction=1.5", "in (0, 1]"),
    ("operator_trainable_part_unknown",
     _both(_set("unlearn.methods", ("emmn",)), _set("unlearn.emmn.trainable", "heda")),
     "unlearn.emmn.trainable='heda'", "one of 'all', 'head'"),
    ("challenge_population_two", _set("evaluate.challenge_population", 2),
     "evaluate.challenge_population=2", "integer >= 3"),
    ("evaluate_batch_size_zero", _set("evaluate.batch_size", 0), "evaluate.batch_size=0",
     "integer > 0"),
]


@pytest.mark.parametrize("mutate, key, expected", [case[1:] for case in CONFIG_CASES],
                         ids=[case[0] for case in CONFIG_CASES])
def test_bad_config_value(mutate, key, expected, tmp_path):
  config = _config()
  mutate(config, tmp_path)
  with pytest.raises(ConfigError) as error:
    config_checks.check_config(config, str(tmp_path / "run"))
  message = str(error.value)
  assert key in message and expected in message, message
  assert message.count("\n  - ") == 1, f"one problem expected, got: {message}"


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / "run").write_text("x")
  with pytest.raises(ConfigError, match=r"workdir='.*run': is a file: expected a folder"):
    config_checks.check_config(_config(), str(tmp_path / "run"))


def test_every_problem_is_reported_at_once(tmp_path):
  config = _config()
  config.train.batch_size = 0
  config.model.name = "vgg16"
  config.forget.ids = "x"
  with pytest.raises(ConfigError) as error:
    config_checks.check_config(config, str(tmp_path))
  message = str(error.value)
  assert all(key in message for key in ("train.batch_size=0", "model.name='vgg16'",
                                        "forget.ids='x'"))


@pytest.mark.parametrize("name, arg", [("mnist", ""), ("mnist", "local"), ("mnist", "challenge"),
                                       ("ham10000", "local"), ("hmnist", ""),
                                       ("dermamnist", "local")])
def test_shipped_configs_pass(name, arg, tmp_path):
  import importlib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  if name != "mnist":
    config.data.root = str(tmp_path)  # where the data would be
  config_checks.check_config(config, str(tmp_path / "run"))


def test_fixed_sets_agree_with_the_code_that_reads_them():
  from hamforget import models  # pylint: disable=import-outside-toplevel
  assert set(config_checks.MODEL_NAMES) == set(models._RESNETS) | {"allcnn"}  # pylint: disable=protected-access
  assert set(config_checks.CLASS_NAMES) == set(sources.SOURCES)
  config = _config()
  for optimizer in config_checks.OPTIMIZERS:
    config.train.optimizer = optimizer
    from hamforget import train  # pylint: disable=import-outside-toplevel
    train.make_optimizer(config.train, 10, 5)  # accepted by the code too


def test_check_config_imports_no_jax():
  code = textwrap.dedent("""
      import sys
      from configs import mnist
      from hamforget import config_checks
      config_checks.check_config(mnist.get_config("local"), "/tmp/unused")
      heavy = [m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "optax")]
      assert not heavy, heavy
      """)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr


# ----------------------------------------------------- a refused rerun keeps the workdir --


def _finished_workdir(tmp_path):
  """A workdir as a finished run leaves it (the files that matter here)."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  files = {"results.json": json.dumps({"original": {"acc_test": 0.9}}),
           "config.json": "{}", "metrics.jsonl": '{"phase": "original"}\n'}
  for name, text in files.items():
    (workdir / name).write_text(text)
  return workdir, files


def _unchanged(workdir, files):
  assert sorted(os.listdir(workdir)) == sorted(files)
  assert all((workdir / name).read_text() == text for name, text in files.items())


def test_refused_rerun_in_process_keeps_the_workdir(tmp_path):
  from hamforget import experiment  # pylint: disable=import-outside-toplevel
  workdir, files = _finished_workdir(tmp_path)
  config = _config()
  config.train.learning_rate = -1.0
  with pytest.raises(ConfigError, match=r"train\.learning_rate=-1\.0"):
    experiment.run(config, str(workdir))
  _unchanged(workdir, files)


def test_refused_rerun_by_the_launcher_keeps_the_workdir(tmp_path):
  workdir, files = _finished_workdir(tmp_path)
  result = subprocess.run(
      [sys.executable, "-m", "launch.main", "--config=configs/mnist.py:local",
       f"--workdir={workdir}", "--config.train.batch_size=0", "--config.model.dtype=fp8"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "train.batch_size=0: expected an integer > 0" in result.stderr
  assert "model.dtype='fp8': expected one of" in result.stderr
  assert "Traceback" not in result.stderr  # a message, not a crash
  _unchanged(workdir, files)


def test_forget_ids_not_in_the_data_are_one_line_from_the_launcher(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "launch.main", "--config=configs/mnist.py:local",
       f"--workdir={tmp_path / 'run'}", f"--config.data.cache_dir={tmp_path / 'cache'}",
       "--config.forget.kind=examples", "--config.forget.ids=mnist0004,no_such_image",
       "--config.unlearn.methods=finetune"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert ("error: forget.ids: example ids not in the training set: no_such_image"
          in result.stderr)
  assert "Traceback" not in result.stderr  # a message, not a crash


def test_batch_larger_than_the_training_split(tmp_path):
  from hamforget.data import prepare  # pylint: disable=import-outside-toplevel
  config = _config()
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.limit = 100
  config.train.batch_size = 128
  with pytest.raises(ConfigError, match=r"train\.batch_size=128: larger than the training "
                     r"split \(\d+ examples\): expected at most \d+"):
    prepare.prepare_data(config)


def test_batch_sizes_the_data_axis_does_not_divide_are_named_with_the_fix(tmp_path):
  from hamforget import experiment, sharding  # pylint: disable=import-outside-toplevel
  config = _config()
  config.train.batch_size = 66
  config.unlearn.methods = ("scrub",)
  config.unlearn.scrub = {"batch_size": 30}
  config_checks.check_batch_sizes(config, 2)  # both even: two devices take them
  with pytest.raises(ConfigError) as refused:
    config_checks.check_batch_sizes(config, 4, processes=2)
  message = str(refused.value)
  assert "train.batch_size=66: not divisible by the 4 devices of the data axis (2 processes)" \
      in message and "e.g. 64 or 68" in message
  assert "unlearn.scrub.batch_size=30" in message
  # An operator's default counts too: scrub's min-pass batch (64) does not
  # split over 3 devices, nor does the evaluation's 512.
  config.train.batch_size, config.unlearn.scrub = 66, {}
  with pytest.raises(ConfigError, match=r"unlearn\.scrub\.batch_size=64"):
    config_checks.check_batch_sizes(config, 3)
  # The runner asks before anything is loaded: the workdir stays empty.
  mesh = sharding.make_mesh(2)
  config.train.batch_size = 33
  with pytest.raises(ConfigError, match=r"train\.batch_size=33"):
    experiment.run(config, str(tmp_path / "run"), mesh)
  assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------- data files --


def _ham_with_first_image(tmp_path, write):
  """A HAM10000 fixture whose first image is replaced by `write(path)`."""
  root = tmp_path / "ham"
  rows = fixtures.write_ham10000(root, n_lesions=4, split_parts=False)
  path = root / "images" / f"{rows[0]['image_id']}.jpg"
  write(path)
  return root, path


def _load_ham(root, tmp_path):
  return sources.ham10000.load(str(root), image_size=8, cache_dir=str(tmp_path / "cache"),
                               workers=1)


def _png16(path):
  Image.fromarray((np.arange(45 * 60).reshape(45, 60) * 20).astype(np.uint16)).save(
      path, format="PNG")


def _jpeg_bytes(path):
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (45, 60, 3)).astype(np.uint8)).save(path, quality=95)
  data = bytearray(path.read_bytes())
  return data, (data.find(b"\xff\xda") + len(data)) // 2  # the middle of the scan data


def _bogus_restart_marker(path):
  data, middle = _jpeg_bytes(path)
  data[middle:middle + 2] = b"\xff\xd0"  # RST0 in an image without a restart interval
  path.write_bytes(bytes(data))


def _invalid_marker_in_scan(path):
  data, middle = _jpeg_bytes(path)
  data[middle:middle + 2] = b"\xff\x4a"
  path.write_bytes(bytes(data))


def _truncated(path):
  data, middle = _jpeg_bytes(path)
  path.write_bytes(bytes(data[:middle]))


def _not_an_image(path):
  path.write_bytes(b"<html>404 Not Found</html>")


IMAGE_CASES = [
    ("png16_named_jpg", _png16, "16-bit image (PNG named .jpg, mode I;16): expected 8 bits"),
    ("jpeg_bogus_restart_marker", _bogus_restart_marker,
     "restart marker RST0 at byte"),
    ("jpeg_invalid_marker_in_scan", _invalid_marker_in_scan,
     "invalid marker 0xFF4A inside the scan data"),
    ("jpeg_truncated", _truncated, "no end-of-image marker after the scan data: truncated"),
    ("not_an_image", _not_an_image, "cannot identify image file"),
]


@pytest.mark.parametrize("write, expected", [case[1:] for case in IMAGE_CASES],
                         ids=[case[0] for case in IMAGE_CASES])
def test_bad_image_file(write, expected, tmp_path):
  root, path = _ham_with_first_image(tmp_path, write)
  with pytest.raises(DataError) as error:
    _load_ham(root, tmp_path)
  message = str(error.value)
  assert "1 of " in message and str(path) in message and expected in message, message


def test_valid_jpeg_variants_still_decode(tmp_path):
  """Progressive scans, restart markers, comments, greyscale: none is corruption."""
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (45, 60, 3)).astype(np.uint8)
  paths = [tmp_path / f"{i}.jpg" for i in range(4)]
  Image.fromarray(image).save(paths[0], progressive=True)
  Image.fromarray(image).save(paths[1], restart_marker_blocks=2)
  Image.fromarray(image).save(paths[2], progressive=True, restart_marker_rows=1, comment=b"c")
  Image.fromarray(image[..., 0]).save(paths[3], optimize=True)
  for path in paths:
    assert cache.jpeg_corruption(path.read_bytes()) is None, path
  assert cache.decode_and_resize(paths, 8, workers=1).shape == (4, 8, 8, 3)


def test_npy_given_as_the_dermamnist_npz(tmp_path):
  path = tmp_path / "dermamnist.npy"
  np.save(path, np.zeros((4, 28, 28, 3), np.uint8))
  with pytest.raises(DataError, match=r"dermamnist\.npy: a single uint8 \(4, 28, 28, 3\) "
                     r"array \(\.npy\), not an \.npz archive: expected MedMNIST's \.npz with "
                     r"the arrays train_images"):
    sources.dermamnist.load(str(path))
