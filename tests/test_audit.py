"""The audit record of a run's deletions, and `launch.verify`, which checks a
workdir's stored models against it.

One small MNIST run (module fixture); the tests that damage something work
on a copy of its workdir and run the verifier as a user would.
"""

import datetime
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pandas as pd
import pytest

from configs import mnist
from hamforget import audit, experiment, files, sharding
from hamforget.data import prepare
from hamforget.data.forget import ForgetRequest
from hamforget.store import ModelStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOFTWARE = {"python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "hamforget"}
# Models whose name is not their operator's (evaluate.noise_floor's second retrain).
_OPERATOR_OF = {"retrain_seed2": "retrain"}


def _config(cache_dir):
  """mnist.py:local, shrunk: 300 digits at 8x8, one epoch, finetune only."""
  config = mnist.get_config("local")
  config.data.cache_dir = str(cache_dir)
  config.data.limit = 300
  config.data.image_size = 8
  config.train.num_epochs = 1
  config.model.name = "allcnn"  # compiles in half the time of a ResNet
  config.unlearn.methods = ("finetune",)
  config.unlearn.finetune.num_epochs = 1
  config.evaluate.anamnesis = False
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """(config, workdir, results) of one finished run; tests that change it copy it."""
  root = tmp_path_factory.mktemp("audited")
  config = _config(root / "cache")
  mesh = sharding.make_mesh(2)
  with jax.set_mesh(mesh):
    results = experiment.run(config, str(root / "run"), mesh)
  return config, root / "run", results


@pytest.fixture
def workdir_copy(finished, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(finished[1], copy)
  return copy


def _forgotten_ids(workdir) -> list[str]:
  table = pd.read_csv(workdir / "splits.csv", dtype={"id": str})
  return list(table.loc[table["forget"].astype(bool), "id"])


def _verify(workdir):
  """(exit status, stdout lines, stderr) of `python -m launch.verify WORKDIR`."""
  result = subprocess.run([sys.executable, "-m", "launch.verify", str(workdir)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  return result.returncode, result.stdout.splitlines(), result.stderr


def _none_if_nan(value):
  return None if value is None or math.isnan(value) else value


# ------------------------------------------------------------------ the record --


def test_the_record_holds_every_deletion_with_its_digests_and_figures(finished):
  config, workdir, results = finished
  record = json.loads((workdir / "audit.json").read_text())
  assert record["format"] == audit.FORMAT
  assert set(record["software"]) == SOFTWARE
  assert record["software"]["jax"] == jax.__version__
  assert record["software"]["numpy"] == np.__version__
  started, written = (datetime.datetime.fromisoformat(record[k])
                      for k in ("started_at", "written_at"))
  assert started <= written <= datetime.datetime.now(datetime.timezone.utc)
  assert record["data"]["digest"] == prepare.prepare_data(config).fingerprint

  # The digests are the ones the store recorded when it saved each model.
  stored = {name: json.loads((workdir / "models" / f"{name}.json").read_text())["sha256"]
            for name in results}
  assert record["originals"] == [{"model": "original", "store": "models/original",
                                  "tree_digest": stored["original"]}]
  unlearned = [name for name in results if name != "original"]
  assert unlearned[0] == "retrain" and "finetune" in unlearned
  assert [entry["model"] for entry in record["deletions"]] == unlearned

  ids = _forgotten_ids(workdir)
  assert len(ids) > 10  # every training "0" of 300 digits
  ids_digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
  for entry in record["deletions"]:
    name = entry["model"]
    assert entry["operator"] == _OPERATOR_OF.get(name, name)
    assert entry["store"] == f"models/{name}" and entry["made_from"] == "original"
    assert entry["before"] == stored["original"]
    assert entry["after"] == stored[name] != entry["before"]
    assert entry["forgotten"] == len(ids)
    assert entry["request"] == {
        "kind": "classes", "classes": [0], "class_names": ["0"], "fraction": 0.0,
        "explicit_ids": 0, "explicit_ids_sha256": None, "forgotten": len(ids),
        "forgotten_ids_sha256": ids_digest}
    assert entry["hyperparameters"]["train"]["batch_size"] == config.train.batch_size
    figures, row, reference = entry["verification"], results[name], results["retrain"]
    assert figures["reference"] == "retrain"
    for key in ("acc_forget", "acc_test", "acc_retain", "mia_acc"):
      assert figures[key] == _none_if_nan(row[key]), key
    assert figures["acc_forget_gap"] == pytest.approx(
        abs(row["acc_forget"] - reference["acc_forget"]))
    assert figures["acc_test_gap"] == pytest.approx(row["acc_test"] - reference["acc_test"])
  finetune = record["deletions"][unlearned.index("finetune")]["hyperparameters"]
  assert finetune["learning_rate"] == config.unlearn.finetune.learning_rate
  assert finetune["num_epochs"] == 1
  assert record["deletions"][0]["verification"]["acc_forget_gap"] == 0.0  # retrain itself

  # The self-digest, recomputed here from its definition.
  content = {k: v for k, v in record.items() if k != "record_sha256"}
  canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
  assert record["record_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()


def test_the_record_holds_no_forgotten_id_in_clear(finished):
  _, workdir, _ = finished
  text = (workdir / "audit.json").read_text()
  ids = _forgotten_ids(workdir)
  assert ids and all(example_id.startswith("mnist") for example_id in ids)
  assert [example_id for example_id in ids if example_id in text] == []


def test_explicit_ids_are_counted_and_digested_not_written(finished):
  """A GDPR request names people's records: the ids themselves stay out."""
  config, _, _ = finished
  asked = ("patient-0007", "patient-0003")
  data = types.SimpleNamespace(
      request=ForgetRequest("examples", ids=asked),
      host={"forget": types.SimpleNamespace(ids=np.asarray(["img-7a", "img-7b", "img-3"]))},
      dataset=types.SimpleNamespace(class_names=[str(i) for i in range(10)]),
      fingerprint="f" * 64)
  models = {"original": {"w": np.zeros(3, np.float32)}, "finetune": {"w": np.ones(3, np.float32)}}
  record = audit.build_record(config, data, models, {}, started_at=audit.now())
  text = json.dumps(record)
  assert not any(name in text for name in (*asked, "img-7a", "img-7b", "img-3"))
  request = record["deletions"][0]["request"]
  assert request["explicit_ids"] == 2 and request["forgotten"] == 3
  assert request["explicit_ids_sha256"] == hashlib.sha256(
      b"patient-0003\npatient-0007").hexdigest()
  assert request["forgotten_ids_sha256"] == hashlib.sha256(b"img-3\nimg-7a\nimg-7b").hexdigest()
  # No results: the figures are undefined, not invented.
  assert record["deletions"][0]["verification"]["acc_forget_gap"] is None
  assert audit.check_record(record) == []


def test_a_model_unlearned_from_another_original_is_recorded_against_it(finished):
  """SISA deletes from its own ensemble: `before` is that ensemble's digest."""
  config, _, _ = finished
  data = types.SimpleNamespace(
      request=ForgetRequest("classes", classes=(0,)),
      host={"forget": types.SimpleNamespace(ids=np.asarray(["a"]))},
      dataset=types.SimpleNamespace(class_names=[str(i) for i in range(10)]),
      fingerprint="f" * 64)
  tree = lambda value: {"w": np.full(3, value, np.float32)}
  models = {"original": tree(0), "ensemble": tree(1), "ensemble_after": tree(2),
            "finetune": tree(3)}
  record = audit.build_record(config, data, models, {}, started_at=audit.now(),
                              made_from={"ensemble_after": "ensemble"},
                              operator_of={"ensemble_after": "finetune"})
  digest = {name: files.tree_digest(variables) for name, variables in models.items()}
  assert record["originals"] == [
      {"model": name, "store": f"models/{name}", "tree_digest": digest[name]}
      for name in ("original", "ensemble")]
  (after, finetune) = record["deletions"]
  assert (after["model"], after["operator"], after["made_from"]) == (
      "ensemble_after", "finetune", "ensemble")
  assert (after["before"], after["after"]) == (digest["ensemble"], digest["ensemble_after"])
  assert (finetune["made_from"], finetune["before"]) == ("original", digest["original"])
  with pytest.raises(KeyError, match=r"model 'ensemble_after' names no registered operator "
                     r"\('ensemble_after'\)"):
    audit.build_record(config, data, models, {}, started_at=audit.now(),
                       made_from={"ensemble_after": "ensemble"})


# ----------------------------------------------------------------- the verifier --


def _all_ok(results):
  """What the verifier prints for an intact workdir of a run with `results`."""
  return ["audit.json: OK"] + [f"{name}: OK" for name in results]


def test_verify_accepts_the_run(finished):
  status, lines, stderr = _verify(finished[1])
  assert status == 0, (lines, stderr[-2000:])
  assert lines == _all_ok(finished[2])
  record = json.loads((finished[1] / "audit.json").read_text())
  assert f"record_sha256 {record['record_sha256']}" in stderr


def _flip_bytes(path):
  data = bytearray(open(path, "rb").read())
  for i in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def test_verify_rejects_flipped_bytes_in_a_stored_model(finished, workdir_copy):
  folder = workdir_copy / "models" / "finetune"
  paths = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
  _flip_bytes(max(paths, key=os.path.getsize))  # the arrays' data file
  status, lines, stderr = _verify(workdir_copy)
  assert status == 1, lines
  failed = lines.pop(list(finished[2]).index("finetune") + 1)
  assert failed.startswith("finetune: FAILED: after: finetune: "), failed
  assert lines == [line for line in _all_ok(finished[2]) if not line.startswith("finetune")]
  assert f"1 of {len(lines) + 1} failed: finetune" in stderr


@pytest.mark.parametrize("changed", ["finetune", "original"])
def test_verify_rejects_a_model_changed_through_the_store(finished, workdir_copy, changed):
  """Arrays and the store's checksum rewritten together: the store is satisfied,
  the audit is not."""
  store = ModelStore(str(workdir_copy))
  variables, record = store.read(changed)
  leaves, treedef = jax.tree.flatten(variables)
  leaves[0] = leaves[0] + 1e-3
  store.save(changed, treedef.unflatten(leaves),
             {k: v for k, v in record.items() if k != "sha256"})
  assert store.read(changed)[1]["sha256"] != record["sha256"]  # readable, checksum matches

  if changed == "original":  # every model made from it fails its `before`
    failures = {name: "before: tree_digest of models/original is " for name in finished[2]}
    failures["original"] = "tree_digest: tree_digest of models/original is "
  else:
    failures = {changed: f"after: tree_digest of models/{changed} is "}
  status, lines, _ = _verify(workdir_copy)
  assert status == 1, lines
  assert len(lines) == 1 + len(finished[2])
  for line in lines:
    subject, _, verdict = line.partition(": ")
    if subject in failures:
      assert verdict.startswith("FAILED: " + failures[subject]), line
      assert "not the one audited" in verdict, line
    else:
      assert verdict == "OK", line


def test_verify_rejects_an_edited_record(finished, workdir_copy):
  path = workdir_copy / "audit.json"
  record = json.loads(path.read_text())
  record["deletions"][-1]["hyperparameters"]["train"]["learning_rate"] *= 10  # not what ran
  path.write_text(json.dumps(record, indent=1))
  status, lines, stderr = _verify(workdir_copy)
  assert status == 1, lines
  assert lines[0].startswith("audit.json: FAILED: record_sha256 is "), lines
  assert "edited or damaged" in lines[0]
  assert lines[1:] == _all_ok(finished[2])[1:]  # the models are fine
  assert f"1 of {len(lines)} failed: audit.json" in stderr


def test_verify_without_a_record_names_it(tmp_path):
  status, lines, _ = _verify(tmp_path)
  assert status == 1
  assert lines == [f"audit.json: FAILED: FileNotFoundError: [Errno 2] No such file or directory: "
                   f"'{tmp_path / 'audit.json'}'"]


def test_record_digest_covers_every_field():
  record = {"format": audit.FORMAT, "deletions": [{"after": "a" * 64}], "seed": 0}
  record["record_sha256"] = audit.content_digest(record)
  assert audit.check_record(record) == []
  for edit in (lambda r: r["deletions"][0].update(after="b" * 64),
               lambda r: r.update(seed=1), lambda r: r.update(extra=True),
               lambda r: r.pop("seed")):
    edited = json.loads(json.dumps(record))
    edit(edited)
    assert audit.check_record(edited) != [], edited


def test_an_error_is_described_on_one_line_cut_to_its_limit():
  """tensorstore's read errors carry a spec printed over many lines: the
  verifier prints one line per subject, so the description must be one."""
  error = ValueError("cannot read chunk:\n  {\n    'driver': 'zarr',\n  }\n" + "x" * 400)
  text = files.describe_error(error)
  assert "\n" not in text and text.startswith("ValueError: cannot read chunk: { 'driver'")
  assert text.endswith(" ...") and len(text) == 300 + len(" ...")
