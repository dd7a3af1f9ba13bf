"""SISA inside an experiment: the `sisa_original` and `sisa` rows of the results.

`run_sisa` deals the experiment's training split into shards and slices,
trains the ensemble on all of it (`sisa_original`, to read against the
monolithic `original`), then deletes the forget set from it (`sisa`, to read
against `retrain`), each stored as a finished model like every operator's
result. Its checkpoints live in `checkpoints/sisa/<fingerprint>/`; a rerun
skips finished rows and resumes an interrupted training or deletion from the
checkpoints still valid (`StageCheckpoints.last_valid`).

Costs: `sisa_original` records the ensemble's training; `sisa` the
deletion's work seconds (restores, retraining, checkpoint writes: the
deletion relies on them; its programs are compiled before, in `compile_s`), gradient
steps and examples seen (with repetition), so the suite's cost columns read
it against retraining one monolithic model, plus the shards retrained and
the distinct examples they retrain on.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from hamforget import operators, progress, records, unlearn
from hamforget.data.prepare import ExperimentData
from hamforget.sisa import build, ensemble
from hamforget.sisa.layout import make_layout
from hamforget.store import ModelStore, model_fingerprint

NAME = "sisa"
ORIGINAL_NAME = "sisa_original"


def sisa_config(config):
  """The operator's config: its defaults overridden by `config.unlearn.sisa`."""
  return unlearn.get(NAME).make_config(config.unlearn.get(NAME), config.train, config.augment)


def check(config) -> None:
  """Refuses, before any work, a config whose `unlearn.sisa` section cannot run."""
  build.check_sisa_config(sisa_config(config))


def _stacked_like(like, num_shards: int) -> dict:
  """The Ensemble's variables' shapes from one model's (`like`), S of each."""
  stack = lambda x: jax.ShapeDtypeStruct((num_shards, *x.shape), x.dtype,
                                         sharding=getattr(x, "sharding", None))
  stacked = jax.tree.map(stack, like)
  return ensemble.ensemble_variables(stacked["params"], stacked["batch_stats"])


def _record(info: dict, fingerprint: str, **extra) -> dict:
  """The stored record (JSON-able) of one sync: cost columns and what it retrained."""
  return records.cost_record(
      info, work_s=info["wall_s"], fingerprint=fingerprint,
      shards_retrained=info["shards_retrained"], examples_retrained=info["examples_retrained"],
      first_stage=np.asarray(info["first_stage"]).tolist(), **extra)


def run_sisa(config, model, data: ExperimentData, workdir: str, store: ModelStore, like,
             rng: jax.Array, log: records.MetricsLog | None = None) -> tuple[dict, dict, dict]:
  """Trains the SISA ensemble and deletes the forget set from it, or restores both.

  Args:
    model: the shard model (the experiment's architecture).
    like: one model's variables (shapes and placement).
    rng: the experiment's key (SISA's is derived from it by name).
    log: the run's metrics.jsonl (one in `workdir` when None).

  Returns:
    (models, costs, modules): name -> ensemble variables / stored record /
    the `ensemble.Ensemble` scoring them, for `sisa_original` and `sisa`.
  """
  op_config = sisa_config(config)
  build.check_sisa_config(op_config)
  num_shards = op_config.shards
  fingerprint = model_fingerprint(config, NAME, data.fingerprint)
  stacked_like = _stacked_like(like, num_shards)
  finished = {name: store.load(name, stacked_like, fingerprint)
              for name in (ORIGINAL_NAME, NAME)}
  if all(value is not None for value in finished.values()):
    progress.say("sisa: restored finished ensembles")
  else:
    train = data.host["train"]
    layout = make_layout(train.labels, train.groups, num_shards, op_config.slices, config.seed)
    directory = os.path.join(workdir, "checkpoints", NAME, fingerprint)
    trainer = build.make_trainer(model, op_config, config.train, config.augment, layout,
                                 data.device["train"], data.image_shape,
                                 operators.operator_rng(rng, NAME), directory)
    sizes = layout.sizes()
    progress.say(f"sisa: {num_shards} shards x {op_config.slices} slices of {sizes.min()}-"
                 f"{sizes.max()} examples, {trainer.spec.lanes} lanes, "
                 f"{trainer.spec.steps_per_stage} steps per stage")
    try:
      if finished[ORIGINAL_NAME] is None:
        info = trainer.sync(layout)
        record = _record(info, fingerprint, compile_s=trainer.compile_s)
        finished[ORIGINAL_NAME] = trainer.variables(), record
        store.save(ORIGINAL_NAME, *finished[ORIGINAL_NAME])
        _log(log or records.MetricsLog(workdir), ORIGINAL_NAME, record)
      info = trainer.sync(layout.without(data.forget_mask))
      record = _record(info, fingerprint, compile_s=0.0)
      finished[NAME] = trainer.variables(), record
      store.save(NAME, *finished[NAME])
      _log(log or records.MetricsLog(workdir), NAME, record)
    finally:
      trainer.close()
  module = build.ensemble_model(model, op_config, num_shards)
  models = {name: value[0] for name, value in finished.items()}
  costs = {name: value[1] for name, value in finished.items()}
  return models, costs, {name: module for name in finished}


def _log(log: records.MetricsLog, name: str, record: dict) -> None:
  if jax.process_index() == 0:
    log.append(name, record["fingerprint"], record)
  progress.say(f"{name}: {record['work_s']:.1f} s, {record['shards_retrained']} shards "
               f"retrained on {record['examples_retrained']} examples")
