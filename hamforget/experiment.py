"""One experiment: data -> original model -> retrain -> operators -> evaluation -> report.

    results = experiment.run(config, workdir)

The workdir receives `config.json` (the resolved config), `splits.csv` (every
example's split, and for training rows whether it is forgotten),
`metrics.jsonl` (one JSON object per training epoch and per operator), orbax
checkpoints of the original training (`checkpoints/original/<fingerprint>`) and of every
finished model (`models/<name>`; challenge populations as
`models/population_<name>`), and the results and plots of
`hamforget.report`. A restarted run resumes the original training from its
last epoch and skips every model already finished, so it ends where an
uninterrupted run would. A finished model is reused only while the config
that made it is unchanged (`model_fingerprint`): change an operator's
hyper-parameters and rerun in the same workdir, and that operator (alone)
runs again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import zlib
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from hamforget import checkpoint, progress, report, sharding, train, unlearn
from hamforget.data import forget as forget_lib
from hamforget.data import pipeline, sources, splits
from hamforget.data.types import Dataset, Examples
from hamforget.evaluate import suite
from hamforget.models import build_model

ORIGINAL, RETRAIN = "original", "retrain"


@dataclasses.dataclass(frozen=True)
class ExperimentData:
  """The splits of one experiment, on the host and on the device.

  Attributes:
    dataset: what the source returned.
    split: str (N,), "train"/"val"/"test" per example.
    forget_mask: bool (N_train,), over the training rows in dataset order.
    request: what to forget.
    host: Examples for "train", "val", "test", "retain", "forget".
    device: DeviceData for the same splits.
  """
  dataset: Dataset
  split: np.ndarray
  forget_mask: np.ndarray
  request: forget_lib.ForgetRequest
  host: dict[str, Examples]
  device: dict[str, train.DeviceData]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.dataset.examples.image_shape

  @property
  def num_classes(self) -> int:
    return self.dataset.num_classes


def prepare_data(config: ml_collections.ConfigDict, mesh=None) -> ExperimentData:
  """Loads the source, splits it by group and carves the forget set out of train."""
  dataset = sources.load_dataset(config.data, config.data.cache_dir)
  examples = dataset.examples
  split = splits.assign_splits(examples, config.data.val_fraction, config.data.test_fraction,
                               config.seed, dataset.official_split)
  request = forget_lib.ForgetRequest.from_config(config.forget, dataset.class_names)
  train_examples = examples.subset(split == "train")
  mask = forget_lib.forget_mask(train_examples, request, config.seed)
  parts: dict[str, Examples] = {
      "train": train_examples,
      "val": examples.subset(split == "val"),
      "test": examples.subset(split == "test"),
      "retain": train_examples.subset(~mask),
      "forget": train_examples.subset(mask),
  }
  for name, part in parts.items():
    if len(part) == 0:
      raise ValueError(f"the {name} split is empty: {len(examples)} examples, "
                       f"val_fraction={config.data.val_fraction}, "
                       f"test_fraction={config.data.test_fraction}, forget={request}")
  logging.info("data %s: %s", dataset.name,
               ", ".join(f"{name} {len(part)}" for name, part in parts.items()))
  device = {name: train.to_device(part.images, part.labels, mesh) for name, part in parts.items()}
  return ExperimentData(dataset, split, mask, request, parts, device)


def _write_json_line(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _scalars(info: dict) -> dict[str, Any]:
  """The JSON-able summary of an operator's info: scalars as numbers, curves as lists."""
  out = {}
  for key, value in info.items():
    value = np.asarray(value)
    out[key] = value.item() if value.ndim == 0 else value.tolist()
  return out


# Config sections that decide what the original model is. The operators add
# their own `unlearn.<name>` section; `evaluate`, `mesh` and the data loading
# knobs (cache, workers) change how a result is measured or computed, not it.
_MODEL_SECTIONS = ("seed", "data", "augment", "model", "train", "forget")
_NOT_IN_FINGERPRINT = {"data": ("cache_dir", "num_workers", "decode_workers")}


def model_fingerprint(config: ml_collections.ConfigDict, name: str) -> str:
  """A hash (hex) of the config values that model `name` depends on."""
  parts = {}
  for section in _MODEL_SECTIONS:
    value = config[section]
    if isinstance(value, ml_collections.ConfigDict):
      value = {k: v for k, v in value.to_dict().items()
               if k not in _NOT_IN_FINGERPRINT.get(section, ())}
    parts[section] = value
  if name != ORIGINAL:
    section = config.unlearn.get(name)
    parts["operator"] = [name, section.to_dict() if section is not None else {}]
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def method_names(config: ml_collections.ConfigDict) -> list[str]:
  """`config.unlearn.methods` as a list of names. On the command line
  `--config.unlearn.methods=finetune,scrub` arrives as ("finetune,scrub",)."""
  methods = config.unlearn.methods
  methods = [methods] if isinstance(methods, str) else methods
  return [name.strip() for entry in methods for name in entry.split(",") if name.strip()]


def operator_rng(rng: jax.Array, name: str) -> jax.Array:
  """The operator's key: from its name, so adding or reordering methods
  changes no other operator's result."""
  return jax.random.fold_in(rng, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class ModelStore:
  """Finished models under `workdir/models/<name>` (orbax), so restarts skip them.

  Each model's JSON record carries the fingerprint of the config that made it;
  a model whose fingerprint differs from the current one counts as unfinished.
  """

  def __init__(self, workdir: str):
    self._root = os.path.abspath(os.path.join(workdir, "models"))
    self._checkpointer = ocp.StandardCheckpointer()

  def _path(self, name: str) -> str:
    return os.path.join(self._root, name)

  def load(self, name: str, like, fingerprint: str) -> tuple[Any, dict] | None:
    """(variables, record) of a finished model made by this config, or None."""
    record_path = self._path(name) + ".json"
    if not os.path.exists(record_path):
      return None
    with open(record_path) as f:
      record = json.load(f)
    if record.get("fingerprint") != fingerprint:
      logging.info("%s: its config changed since it was made; making it again", name)
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._checkpointer.restore(self._path(name), abstract), record

  def save(self, name: str, variables, record: dict) -> None:
    self._checkpointer.save(self._path(name), variables, force=True)
    self._checkpointer.wait_until_finished()
    # The record is written last: its presence marks the model as finished.
    with open(self._path(name) + ".json", "w") as f:
      json.dump(record, f)


def train_original(config, model, data: ExperimentData, workdir: str, rng,
                   mesh=None) -> tuple[Any, dict]:
  """Trains the original model on the whole training split (forget set included).

  Resumes from the last epoch checkpointed by a run of the same config; the
  checkpoints of each config live apart, so a changed config starts afresh.
  """
  train_data = data.device["train"]
  spec = train.make_fit_spec(model, config.train, config.augment, train_data.size)
  init_rng, fit_rng = jax.random.split(rng)
  variables = train.init_variables(model, data.image_shape, init_rng)
  checkpoints = checkpoint.FitCheckpoints(
      os.path.join(workdir, "checkpoints", ORIGINAL, model_fingerprint(config, ORIGINAL)))
  bar = progress.bar(spec.num_epochs, f"train {ORIGINAL}")

  def on_epoch(carry):
    epoch = int(carry.epoch) - 1
    record = {"phase": ORIGINAL, "epoch": epoch + 1,
              "train_loss": float(carry.train_loss[epoch]),
              "val_loss": float(carry.val_loss[epoch]),
              "val_accuracy": float(carry.val_accuracy[epoch])}
    _write_json_line(os.path.join(workdir, "metrics.jsonl"), record)
    bar.update(1)
    bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{record['val_accuracy']:.3f}")

  bar.update(checkpoints.latest_step() or 0)
  if config.data.pipeline == "grain":
    # Host-resident data: grain reads this process's shard of each batch.
    per_process = spec.batch_size // jax.process_count()
    batches = pipeline.make_train_iterator(
        data.host["train"].images, data.host["train"].labels, per_process, config.seed,
        shard_index=jax.process_index(), shard_count=jax.process_count(),
        num_workers=config.data.num_workers)
    to_global = None
    if mesh is not None:
      to_global = lambda batch: sharding.global_batch(batch, mesh)
    variables, info = train.fit_streaming(
        spec, variables, batches,
        pipeline.steps_per_epoch(train_data.size, per_process, jax.process_count()),
        data.device["val"], fit_rng, to_global=to_global, checkpoints=checkpoints,
        on_epoch=on_epoch)
  elif config.data.pipeline == "device":
    variables, info = train.fit(spec, variables, train_data, data.device["val"], fit_rng,
                                checkpoints=checkpoints, on_epoch=on_epoch)
  else:
    raise ValueError(f"data.pipeline={config.data.pipeline!r}: expected 'device' or 'grain'")
  bar.close()
  checkpoints.close()
  per_epoch = train.steps_per_epoch(train_data.size, spec.batch_size)
  info = dict(info, steps=info["epochs"] * per_epoch,
              examples_seen=info["epochs"] * per_epoch * spec.batch_size)
  return variables, info


def _prepare_operator(name: str, config, model, data: ExperimentData, rng):
  """(operator function of (variables, rng), its Access) for a registered operator."""
  operator = unlearn.get(name)
  op_config = operator.make_config(config.unlearn.get(name), config.train, config.augment)
  access = unlearn.make_access(
      operator, retain=data.device["retain"], forget=data.device["forget"],
      val=data.device["val"], forget_classes=list(data.request.classes),
      num_classes=data.num_classes, image_shape=data.image_shape, rng=rng,
      retain_subset_fraction=op_config.get("retain_subset_fraction", 0.0))
  return lambda v, a, r: operator.fn(model, v, a, data.request, op_config, r), access


def run_operator(name: str, config, model, variables, data: ExperimentData, rng):
  """Runs one registered operator, jitted whole; returns (variables, info, timings).

  `compile_s` and `wall_s` (execution only) are timed apart: compilation is
  paid once per shape, not per run of a grid.
  """
  access_rng, op_rng = jax.random.split(rng)
  fn, access = _prepare_operator(name, config, model, data, access_rng)
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(variables, access, op_rng).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  new_variables, info = jax.block_until_ready(compiled(variables, access, op_rng))
  return new_variables, info, {"wall_s": time.perf_counter() - start, "compile_s": compile_s}


def population_batch(batch: int, size: int, platform: str) -> int:
  """Seeds per vmap of a population of `size`: `batch`, or 0's platform default."""
  if batch < 0:
    raise ValueError(f"evaluate.population_batch={batch}: expected 0 (auto) or a positive count")
  if batch == 0:
    batch = 1 if platform == "cpu" else size
  return min(batch, size)


def build_populations(config, model, original, data: ExperimentData, names, rng,
                      store: ModelStore | None = None, remake: bool = False) -> dict:
  """Each model of `names` rerun with `config.evaluate.challenge_population` seeds.

  One program per operator: the seeds are a batch axis (`lax.map` over groups
  of `population_batch` vmapped seeds), not a Python loop. A finished
  population is saved to `store` (as `population_<name>`) and reused by a
  restarted run of the same config, unless `remake` (a new original).
  Returns name -> variables stacked over a leading axis of M seeds.
  """
  size = config.evaluate.challenge_population
  batch = population_batch(config.evaluate.population_batch, size, jax.default_backend())
  like = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((size, *x.shape), x.dtype, sharding=x.sharding), original)
  populations = {}
  for name in names:
    key, fingerprint = f"population_{name}", f"{model_fingerprint(config, name)}-{size}"
    finished = None if store is None or remake else store.load(key, like, fingerprint)
    if finished is not None:
      populations[name] = finished[0]
      continue
    access_rng, op_rng = jax.random.split(operator_rng(rng, name))
    fn, access = _prepare_operator(name, config, model, data, access_rng)

    # The variables and data are arguments, not closed over: captured arrays
    # would be baked into the program as constants.
    def seeds(variables, access, keys, fn=fn):
      return jax.lax.map(lambda key: fn(variables, access, key)[0], keys,
                         batch_size=batch if batch > 1 else None)
    progress.say(f"population of {size} x {name} ({batch} at a time) ...")
    start = time.perf_counter()
    populations[name] = jax.block_until_ready(
        jax.jit(seeds)(original, access, jax.random.split(op_rng, size)))
    seconds = time.perf_counter() - start
    progress.say(f"population of {size} x {name}: {seconds:.0f} s (compile included)")
    if store is not None:
      store.save(key, populations[name], {"wall_s": seconds, "size": size,
                                          "fingerprint": fingerprint})
  return populations


def _loss_endpoints(info: dict) -> dict[str, float]:
  """Initial and final training loss from an info's per-epoch or per-step loss curve."""
  for key in ("train_loss", "loss"):
    if key in info:
      curve = np.asarray(info[key], np.float64).reshape(-1)
      curve = curve[np.isfinite(curve)]
      if curve.size:
        return {"initial_loss": float(curve[0]), "final_loss": float(curve[-1])}
  return {"initial_loss": float("nan"), "final_loss": float("nan")}


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str):
  """Adds the wall seconds of the block to `phases[name]`."""
  start = time.perf_counter()
  yield
  phases[name] = phases.get(name, 0.0) + time.perf_counter() - start


def run(config: ml_collections.ConfigDict, workdir: str, mesh=None) -> dict[str, dict[str, float]]:
  """Runs the whole experiment and writes every output into `workdir`.

  Besides the outputs listed in the module docstring, `timings.json` holds the
  wall seconds of each phase of this invocation (data, original, each
  operator including its compilation, populations, evaluate, report, total);
  a model restored from an earlier invocation costs ~0 s here.
  """
  phases: dict[str, float] = {}
  with _timed(phases, "total"):
    results = _run(config, workdir, mesh, phases)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "timings.json"), "w") as f:
      json.dump({k: round(v, 2) for k, v in phases.items()}, f, indent=1)
  progress.say("phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
  return results


def _run(config, workdir: str, mesh, phases: dict[str, float]) -> dict[str, dict[str, float]]:
  os.makedirs(workdir, exist_ok=True)
  is_writer = jax.process_index() == 0
  if is_writer:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  with _timed(phases, "data"):
    data = prepare_data(config, mesh)
  if is_writer:
    splits.split_table(data.dataset.examples, data.split, data.forget_mask,
                       data.dataset.class_names).to_csv(
                           os.path.join(workdir, "splits.csv"), index=False)
  model = build_model(config.model, data.num_classes)
  rng = jax.random.key(config.seed)
  store = ModelStore(workdir)
  like = train.init_variables(model, data.image_shape, jax.random.key(0))

  models: dict[str, Any] = {}
  costs: dict[str, dict] = {}
  fingerprint = model_fingerprint(config, ORIGINAL)
  finished = store.load(ORIGINAL, like, fingerprint)
  if finished is None:
    with _timed(phases, ORIGINAL):
      variables, info = train_original(config, model, data, workdir,
                                       jax.random.fold_in(rng, 0), mesh)
    record = {"wall_s": phases[ORIGINAL], **_loss_endpoints(info),
              "steps": int(info["steps"]), "examples_seen": int(info["examples_seen"]),
              "fingerprint": fingerprint}
    store.save(ORIGINAL, variables, record)
  else:
    variables, record = finished
    logging.info("original: restored finished model")
  models_changed = finished is None
  models[ORIGINAL], costs[ORIGINAL] = variables, record

  methods = [RETRAIN] + [m for m in method_names(config) if m != RETRAIN]
  for name in methods:
    # A new original invalidates every model made from it.
    fingerprint = model_fingerprint(config, name)
    finished = None if models_changed else store.load(name, like, fingerprint)
    if finished is None:
      logging.info("running %s", name)
      progress.say(f"unlearn {name} ...")
      with _timed(phases, name):
        new_variables, info, timings = run_operator(
            name, config, model, models[ORIGINAL], data, operator_rng(rng, name))
      summary = _scalars(info)
      record = {**timings, **_loss_endpoints(info),
                "steps": int(summary.get("steps", 0)),
                "examples_seen": int(summary.get("examples_seen", 0)),
                "fingerprint": fingerprint}
      if is_writer:
        _write_json_line(os.path.join(workdir, "metrics.jsonl"),
                         {"phase": name, **record, "info": summary})
      store.save(name, new_variables, record)
      progress.say(f"unlearn {name}: {record['wall_s']:.1f} s "
                   f"(+{record['compile_s']:.1f} s compile)")
    else:
      new_variables, record = finished
    models[name], costs[name] = new_variables, record

  populations = None
  if config.evaluate.challenge_population:
    with _timed(phases, "populations"):
      populations = build_populations(config, model, models[ORIGINAL], data, methods,
                                      jax.random.fold_in(rng, 20_000), store, models_changed)
  progress.say("evaluate ...")
  with _timed(phases, "evaluate"):
    results, per_example, curves = suite.evaluate_models(
        model, models, data.device, data.request, data.dataset.class_names, config.evaluate,
        jax.random.fold_in(rng, 10_000), costs, populations=populations)
  if is_writer:
    with _timed(phases, "report"):
      report.write_report(workdir, results, per_example, curves, data.dataset.class_names)
  return results
