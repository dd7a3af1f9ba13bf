"""What a workdir and the caches hold is what made it, read back intact.

Data edited in place, models and checkpoints damaged on disk, files torn by a
kill, two runs on one workdir, a cached image replaced behind the cache's back.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import fixtures
from configs import hmnist
from hamforget import (checkpoint, experiment, files, records, sharding, superseded,
                       workdir_lock)
from hamforget.data import cache
from hamforget.store import ModelStore

# Results that measure the clock, not the model: they differ between two runs.
_CLOCK_METRICS = ("work_s", "compile_s", "work_ratio_to_retrain")


def _config(csv_path, cache_dir):
  """The smallest whole run: 8x8 HMNIST, one epoch, finetune only, no relearning."""
  config = hmnist.get_config("local")
  config.data.root = str(csv_path)
  config.data.cache_dir = str(cache_dir)
  config.train.num_epochs = 1
  config.train.batch_size = 16
  config.model.name = "allcnn"  # compiles in half the time of a ResNet
  config.unlearn.methods = ("finetune",)
  config.unlearn.finetune.num_epochs = 1
  config.evaluate.anamnesis = False
  return config


def _run(config, workdir):
  mesh = sharding.make_mesh(2)
  with jax.set_mesh(mesh):
    return experiment.run(config, str(workdir), mesh)


def _phases(workdir) -> list[str]:
  return [r["phase"] for r in records.read_json_lines(os.path.join(workdir, "metrics.jsonl"))]


def _model_results(results):
  return {name: {k: v for k, v in row.items() if k not in _CLOCK_METRICS}
          for name, row in results.items()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """(config, workdir, results) of one finished run; tests copy the workdir."""
  root = tmp_path_factory.mktemp("finished")
  csv_path = root / "hmnist_8_8_RGB.csv"
  fixtures.write_hmnist_csv(csv_path, size=8, n=120)
  config = _config(csv_path, root / "cache")
  results = _run(config, root / "run")
  return config, root / "run", results


@pytest.fixture
def copy_of(finished, tmp_path):
  """A private copy of the finished workdir (with its config and results)."""
  config, workdir, results = finished
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  return config, copy, results


# --------------------------------------------------------------- data digest --


def test_data_edited_in_place_retrains_the_original(copy_of):
  config, workdir, _ = copy_of
  before = _phases(workdir)
  # Same path, same config: only the labels inside the file changed.
  csv_path = config.data.root
  lines = open(csv_path).read().splitlines()
  edited = [lines[0]] + [line.rsplit(",", 1)[0] + f",{(int(line.rsplit(',', 1)[1]) + 1) % 7}"
                         for line in lines[1:]]
  backup = open(csv_path).read()
  try:
    with open(csv_path, "w") as f:
      f.write("\n".join(edited) + "\n")
    _run(config, workdir)
  finally:
    with open(csv_path, "w") as f:  # the module's other tests share the file
      f.write(backup)
  new = _phases(workdir)[len(before):]
  assert "original" in new and new[-1] == "finetune"
  # The original's training checkpoints are keyed by the data too.
  assert len(os.listdir(workdir / "checkpoints" / "original")) == 2


# ------------------------------------------------------- damaged stored models --


def _largest_file(folder) -> str:
  paths = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
  return max(paths, key=os.path.getsize)


def _flip_bytes(path):
  data = bytearray(open(path, "rb").read())
  for i in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _truncate(path):
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])


def test_damaged_models_are_made_again_and_the_results_equal_a_fresh_run(copy_of, caplog):
  config, workdir, results = copy_of
  before = _phases(workdir)
  # Flipped bytes (same size) in retrain's arrays; an empty record (a kill
  # mid-write) for finetune.
  _flip_bytes(_largest_file(workdir / "models" / "retrain"))
  (workdir / "models" / "finetune.json").write_text("")
  with caplog.at_level("WARNING"):
    again = _run(config, workdir)
  # Those two models alone are made again; each damage is named in a warning.
  assert _phases(workdir)[len(before):] == ["retrain", "finetune"]
  for named in (workdir / "models" / "retrain", workdir / "models" / "finetune.json"):
    assert any(str(named) in message for message in caplog.messages), (named, caplog.messages)
  np.testing.assert_equal(_model_results(again), _model_results(results))


def test_store_remakes_a_truncated_model_and_saves_over_it(tmp_path, caplog):
  store = ModelStore(str(tmp_path))
  variables = {"params": {"w": jnp.arange(600.0).reshape(20, 30)}}
  store.save("m", variables, {"fingerprint": "f"})
  _truncate(_largest_file(tmp_path / "models" / "m"))
  with caplog.at_level("WARNING"):
    assert store.load("m", variables, "f") is None
  assert any(str(tmp_path / "models" / "m") in m for m in caplog.messages), caplog.messages
  store.save("m", variables, {"fingerprint": "f"})
  restored, _ = store.load("m", variables, "f")
  np.testing.assert_array_equal(restored["params"]["w"], variables["params"]["w"])


def test_store_refuses_a_model_whose_arrays_differ_from_its_checksum(tmp_path):
  store = ModelStore(str(tmp_path))
  variables = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}}
  store.save("m", variables, {"fingerprint": "f"})
  restored, record = store.load("m", variables, "f")
  np.testing.assert_array_equal(restored["params"]["w"], variables["params"]["w"])
  assert record["sha256"] == files.tree_digest(variables)
  # Another model's arrays under this record: readable, but not what was stored.
  record["sha256"] = files.tree_digest({"params": {"w": jnp.zeros((2, 3))}})
  files.write_json(tmp_path / "models" / "m.json", record)
  assert store.load("m", variables, "f") is None
  # A record that is not JSON (a kill mid-write) is named, never raised.
  (tmp_path / "models" / "m.json").write_text('{"fingerprint": "f", "sha2')
  assert store.load("m", variables, "f") is None


# ----------------------------------------------------- training checkpoints --


def _carry(value: float):
  return {"params": jnp.full((4, 3), value), "epoch": jnp.int32(value)}


def _damage_step(directory, step):
  for root, _, names in os.walk(os.path.join(directory, str(step))):
    for name in names:
      if os.path.basename(root) == "d":  # the arrays' data files (zstd-compressed)
        _flip_bytes(os.path.join(root, name))


def test_checkpoints_fall_back_to_the_previous_step_then_start_afresh(tmp_path, caplog):
  directory = str(tmp_path / "ckpt")
  saver = checkpoint.FitCheckpoints(directory, keep=2)
  for step in (1, 2, 3):
    saver.save(step, _carry(step))
  saver.wait()
  saver.close()
  assert sorted(os.listdir(directory)) == ["2", "3"]

  _damage_step(directory, 3)
  with caplog.at_level("WARNING"):
    restored = checkpoint.FitCheckpoints(directory).restore_latest(_carry(0))
  assert int(restored["epoch"]) == 2
  np.testing.assert_array_equal(restored["params"], np.full((4, 3), 2.0))
  assert any(os.path.join(directory, "3") in m for m in caplog.messages), caplog.messages

  # The damaged step is gone, so training can save it again.
  saver = checkpoint.FitCheckpoints(directory)
  assert saver.latest_step() == 2
  saver.save(3, _carry(3))
  saver.wait()
  assert int(saver.restore_latest(_carry(0))["epoch"]) == 3
  saver.close()

  for step in (2, 3):
    _damage_step(directory, step)
  caplog.clear()
  with caplog.at_level("WARNING"):
    fresh = checkpoint.FitCheckpoints(directory).restore_latest(_carry(0))
  assert int(fresh["epoch"]) == 0
  assert any("starts afresh" in m for m in caplog.messages)


def test_checkpoint_with_arrays_unlike_its_checksum_is_skipped(tmp_path):
  directory = str(tmp_path / "ckpt")
  saver = checkpoint.FitCheckpoints(directory, keep=2)
  saver.save(1, _carry(1))
  saver.save(2, _carry(2))
  saver.wait()
  saver.close()
  # Step 2's arrays replaced by step 1's: each file is whole, the pair is not.
  shutil.rmtree(os.path.join(directory, "2", "state"))
  shutil.copytree(os.path.join(directory, "1", "state"), os.path.join(directory, "2", "state"))
  assert int(checkpoint.FitCheckpoints(directory).restore_latest(_carry(0))["epoch"]) == 1


# ----------------------------------------------------------- atomic writing --


def test_atomic_open_keeps_the_old_file_when_writing_fails(tmp_path):
  path = tmp_path / "results.json"
  files.write_json(path, {"a": 1})
  with pytest.raises(RuntimeError):
    with files.atomic_open(path) as f:
      f.write('{"a": 2, "b"')
      raise RuntimeError("killed mid-write")
  assert json.loads(path.read_text()) == {"a": 1}
  assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left


def test_every_file_of_a_run_is_written_through_atomic_open(finished, tmp_path, monkeypatch):
  """No output of a run is written in place: each comes from a renamed temp file."""
  config, _, _ = finished
  written = []
  real = files.atomic_open

  def spy(path, *args, **kwargs):
    written.append(os.path.basename(os.fspath(path)))
    return real(path, *args, **kwargs)

  monkeypatch.setattr(files, "atomic_open", spy)
  workdir = tmp_path / "run"
  shutil.copytree(finished[1], workdir)
  for name in ("results.json", "results.csv", "results.md", "timings.json", "config.json",
               "splits.csv", "loss_histograms.png", "per_example_finetune.npz"):
    (workdir / name).unlink()
  _run(config, workdir)
  top_level = {name for name in os.listdir(workdir) if os.path.isfile(workdir / name)}
  assert top_level - set(written) == {"metrics.jsonl"}  # appended, torn lines tolerated


def test_json_lines_tolerate_a_torn_last_line(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  records.append_json_line(path, {"phase": "original", "epoch": 1})
  with open(path, "a") as f:
    f.write('{"phase": "orig')  # a kill mid-append
  records.append_json_line(path, {"phase": "finetune"})
  assert [r["phase"] for r in records.read_json_lines(path)] == ["original", "finetune"]


# -------------------------------------------------------- another config's workdir --


def test_a_rerun_with_another_config_sets_the_old_outputs_aside(copy_of, caplog):
  config, workdir, _ = copy_of
  old_config = (workdir / "config.json").read_text()
  old_results = (workdir / "results.json").read_text()
  before = _phases(workdir)
  config.unlearn.methods = ()  # finetune dropped: its outputs must not stay beside the new ones
  with caplog.at_level("WARNING"):
    results = _run(config, workdir)
  assert set(results) == set(json.loads(old_results)) - {"finetune"}
  # The old config's outputs, whole, in one folder; none left at the top level.
  (aside,) = (workdir / superseded.FOLDER).iterdir()
  assert (aside / "config.json").read_text() == old_config
  assert (aside / "results.json").read_text() == old_results
  assert (aside / "per_example_finetune.npz").exists() and (aside / "audit.json").exists()
  assert not (workdir / "per_example_finetune.npz").exists()
  assert set(json.loads((workdir / "results.json").read_text())) == set(results)
  deletions = json.loads((workdir / "audit.json").read_text())["deletions"]
  assert [entry["model"] for entry in deletions] == [name for name in results
                                                     if name != "original"]
  assert any(str(aside) in m and "per_example_finetune.npz" in m for m in caplog.messages)
  # The models stay, keyed by what made them: nothing was trained again.
  assert _phases(workdir) == before
  assert (workdir / "models" / "finetune.json").exists()
  # The same config again (a resumed or repeated run) sets nothing aside.
  assert superseded.set_aside(str(workdir), (workdir / "config.json").read_text()) is None
  assert len(list((workdir / superseded.FOLDER).iterdir())) == 1


# -------------------------------------------------------------- workdir lock --


def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_holder(tmp_path):
  csv_path = tmp_path / "hmnist_8_8_RGB.csv"
  fixtures.write_hmnist_csv(csv_path, size=8, n=120)
  config = _config(csv_path, tmp_path / "cache")
  with workdir_lock.hold(str(tmp_path / "run")):
    with pytest.raises(workdir_lock.WorkdirBusyError,
                       match=rf"pid {os.getpid()} on host .+, started 20"):
      _run(config, tmp_path / "run")
    # Refused before writing anything.
    assert os.listdir(tmp_path / "run") == [workdir_lock.LOCK_NAME]
  # Released on the way out: the workdir is free again.
  with workdir_lock.hold(str(tmp_path / "run")):
    pass
  assert not (tmp_path / "run" / workdir_lock.LOCK_NAME).exists()


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path, caplog):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  pid = int(dead.stdout)
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps(
      {"pid": pid, "host": os.uname().nodename, "started": "2024-01-01 00:00:00 +0000"}))
  with caplog.at_level("WARNING"):
    with workdir_lock.hold(str(workdir)):
      holder = json.loads((workdir / workdir_lock.LOCK_NAME).read_text())
      assert holder["pid"] == os.getpid()
  assert any(f"pid {pid}" in m for m in caplog.messages), caplog.messages


def test_a_lock_held_on_another_host_is_not_taken_over(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps(
      {"pid": 1, "host": "elsewhere", "started": "2024-01-01 00:00:00 +0000"}))
  with pytest.raises(workdir_lock.WorkdirBusyError, match="pid 1 on host elsewhere"):
    workdir_lock.acquire(str(workdir))


# --------------------------------------------------------------- decode cache --


def test_cache_sees_a_file_replaced_with_the_same_size_and_mtime(tmp_path, monkeypatch):
  folder = tmp_path / "img"
  folder.mkdir()
  paths = []
  for i in range(3):
    paths.append(str(folder / f"{i}.bmp"))  # uncompressed: its size is its shape's
    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(paths[-1])
  first = cache.cached_decode(paths, 8, str(tmp_path / "cache"), workers=1)
  # Same size, same mtime, other pixels: a copy tool that keeps times, say.
  stat = os.stat(paths[1])
  data = bytearray(open(paths[1], "rb").read())
  other = np.full((8, 8, 3), 200, np.uint8)
  Image.fromarray(other).save(paths[1])
  assert os.path.getsize(paths[1]) == stat.st_size, "the fixture needs equal sizes"
  os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert bytes(data) != open(paths[1], "rb").read()
  second = cache.cached_decode(paths, 8, str(tmp_path / "cache"), workers=1)
  np.testing.assert_array_equal(second[1], other)
  np.testing.assert_array_equal(second[0], first[0])
