"""One experiment: data -> original model -> retrain -> operators -> evaluation -> report.

    results = experiment.run(config, workdir)

The workdir receives `config.json` (the resolved config), `splits.csv` (every
example's split, and for training rows whether it is forgotten),
`metrics.jsonl` (one JSON object per training epoch and per operator, each
stamped with the run id, the time, the model and its fingerprint), orbax
checkpoints of the original training (`checkpoints/original/<fingerprint>`)
and of every finished model (`models/<name>`; challenge populations as
`models/population_<name>`), `timings.json`, and the results and plots of
`hamforget.report`, and `audit.json`, the record of every deletion
(`hamforget.audit`; `python -m launch.verify WORKDIR` checks it). A run
with another config than the workdir's first moves the old one's outputs
aside (`hamforget.superseded`). A restarted run resumes the original
training from its last epoch and skips every model already finished, so it
ends where an uninterrupted run would. A finished model is reused only while the config
and the data that made it are unchanged (`store.model_fingerprint`) and it
reads back intact (its checksum): change an operator's hyper-parameters and
rerun in the same workdir, and that operator (alone) runs again; edit the
data file in place, and everything does. The workdir is locked while a run
uses it (`hamforget.workdir_lock`), and every file is written atomically
(`hamforget.files`). Each model's outputs (logits on every split,
relearning curves) are kept in `evaluations/` (of the sweep's root when
models are shared), named by a digest of the model's arrays, the splits and
the evaluation config (`hamforget.evaluate.reuse`): a rerun, or another run
of a sweep, measures only the models it has not measured before.

Where each step lives: data (`hamforget.data.prepare`), the original
(`hamforget.original`), operators (`hamforget.operators`, `hamforget.unlearn`),
populations (`hamforget.populations`), finished models (`hamforget.store`),
metrics (`hamforget.evaluate`), the report (`hamforget.report`).
"""

from __future__ import annotations

import contextlib
import os
import time

import jax
import ml_collections
from absl import logging

from hamforget import (audit, config_checks, files, observe, operators, original, populations,
                       progress, records, report, sharding, superseded, timing, workdir_lock)
from hamforget.data import prepare
from hamforget.evaluate import suite
from hamforget.models import build_model
from hamforget.sisa import runner as sisa_runner
from hamforget.store import ORIGINAL, ModelStore, model_fingerprint
from hamforget.unlearn import catalog

RETRAIN = "retrain"
EVALUATIONS = "evaluations"  # folder of the models' measured outputs (evaluate.reuse)
NOISE_FLOOR = "retrain_seed2"  # retrain from another seed (evaluate.noise_floor)


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str):
  """Adds the wall seconds of the block to `phases[name]`."""
  start = time.perf_counter()
  yield
  phases[name] = phases.get(name, 0.0) + time.perf_counter() - start


def run(config: ml_collections.ConfigDict, workdir: str, mesh=None,
        should_stop=None, shared_models: str | None = None,
        batch_with=()) -> dict[str, dict[str, float]]:
  """Runs the whole experiment and writes every output into `workdir`.

  Besides the outputs listed in the module docstring, `timings.json` holds the
  wall seconds of each phase of this invocation (data, original, each
  operator including its compilation, populations, evaluate, report, total);
  a model restored from an earlier invocation costs ~0 s here.

  `should_stop` (no arguments -> bool) is asked after each epoch of the
  original's training; when true, training stops at that checkpoint with
  `train.Preempted`, and a rerun resumes there.

  `shared_models` (a folder; a sweep's root) holds the models that several
  runs share, each under `models/<name>-<fingerprint>`: the original (one
  per training config and data) and the retrainings (one per forget request
  and seed, whatever the operator). A run whose model is there restores it
  instead of making it, and a run that makes one leaves it there. The run's
  own store keeps its copy too, so the workdir stays complete
  (`launch.verify` reads it alone).

  `batch_with` (configs of other runs, `operators.batch_key` equal to this
  one's; needs `shared_models`) makes this run's operator for them too, in
  one vmapped program (`operators.run_operator_batch`), and leaves their
  models in the shared store: their own runs then only evaluate them.
  """
  if batch_with and not shared_models:
    raise ValueError("batch_with needs shared_models: the batch's models are left there")
  config_checks.check_config(config, workdir)  # before any work: a bad value fails in seconds
  config_checks.check_batch_sizes(
      config, mesh.shape[sharding.DATA_AXIS] if mesh is not None else 1, jax.process_count())
  phases: dict[str, float] = {}
  # One run per workdir: a second one would overwrite this one's files.
  with workdir_lock.hold(workdir, take=jax.process_index() == 0):
    # One writer of metrics.jsonl's TensorBoard copy: process 0.
    log = records.MetricsLog(workdir, tensorboard=jax.process_index() == 0 and bool(
        observe.setting(config, "tensorboard", False)))
    try:
      with _timed(phases, "total"), timing.Stopwatch() as watch:
        results = _run(config, workdir, mesh, phases, log, should_stop, shared_models,
                       tuple(batch_with))
    finally:
      log.close()
    if jax.process_index() == 0:
      files.write_json(os.path.join(workdir, "timings.json"), {
          **{k: round(v, 2) for k, v in phases.items()},
          # What compilation cost this invocation (a program loaded from the
          # persistent cache costs its load), and where it went.
          "compile_s": round(watch.compile_s, 2),
          "compile_by_program": watch.slowest_programs()}, indent=1)
  progress.say("phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
  return results


def _from_shared(store: ModelStore, shared: ModelStore | None, shared_name: str, name: str,
                 like, fingerprint: str):
  """Model `name` from the shared store (copied into the run's), or None."""
  if shared is None:
    return None
  finished = shared.load(shared_name, like, fingerprint)
  if finished is not None:
    logging.info("%s: restored from the shared store (%s)", name, shared_name)
    store.save(name, *finished)
  return finished


def _share(shared: ModelStore | None, name: str, finished) -> None:
  """Leaves a newly made model in the shared store, best effort: the
  run already has it, and a failed copy (another machine writing the same
  model at once) costs a later run one training, never a wrong model (the
  checksum refuses a mixed one)."""
  if shared is None:
    return
  try:
    shared.save(name, *finished)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("%s: not shared (%s)", name, files.describe_error(e))


def _share_batch(shared: ModelStore, operator: str, configs, outputs, data_fingerprint: str):
  """Leaves the other runs' models of a batch in the shared store, each under
  the name and fingerprint its own run looks for."""
  for config, (variables, info, timings) in zip(configs, outputs):
    fingerprint = model_fingerprint(config, operator, data_fingerprint)
    _share(shared, f"{operator}-{fingerprint}",
           (variables, records.cost_record(info, **timings, fingerprint=fingerprint)))


def _run(config, workdir: str, mesh, phases: dict[str, float], log: records.MetricsLog,
         should_stop=None, shared_models: str | None = None,
         batch_with: tuple = ()) -> dict[str, dict[str, float]]:
  os.makedirs(workdir, exist_ok=True)
  is_writer = jax.process_index() == 0
  started_at = audit.now()
  logging.info("run %s in %s", log.run_id, workdir)
  if is_writer:
    config_json = config.to_json_best_effort(indent=2)
    superseded.set_aside(workdir, config_json)  # another config's outputs go out of the way
    files.write_text(os.path.join(workdir, "config.json"), config_json)
  if sisa_runner.NAME in catalog.method_names(config):
    sisa_runner.check(config)  # before any work, like the rest of the config
  with _timed(phases, "data"):
    data = prepare.prepare_data(config, mesh)
  if is_writer:
    with files.atomic_open(os.path.join(workdir, "splits.csv"), newline="") as f:
      data.split_table().to_csv(f, index=False)
  model = build_model(config.model, data.num_classes)
  rng = jax.random.key(config.seed)
  store = ModelStore(workdir)
  like = original.init_variables(model, data.image_shape, jax.random.key(0))

  # The original: trained once per training config and data, then restored
  # (in a sweep, by every run that shares them).
  fingerprint = original.fingerprint(config, data)
  shared = ModelStore(shared_models) if shared_models else None
  shared_name = f"{ORIGINAL}-{fingerprint}"
  finished = store.load(ORIGINAL, like, fingerprint) or _from_shared(
      store, shared, shared_name, ORIGINAL, like, fingerprint)
  if finished is None:
    with _timed(phases, ORIGINAL):
      variables, info = original.train_original(config, model, data, workdir,
                                                jax.random.fold_in(rng, 0), mesh,
                                                should_stop=should_stop, log=log)
    # Work and compilation apart, as for every operator (`timing`).
    finished = variables, records.cost_record(
        info, work_s=info["work_s"], compile_s=info["compile_s"],
        checkpoint_s=info["checkpoint_s"], fingerprint=fingerprint)
    store.save(ORIGINAL, *finished)
    _share(shared, shared_name, finished)
    original_is_new = True
  else:
    logging.info("original: restored finished model")
    original_is_new = False
  models, costs = {ORIGINAL: finished[0]}, {ORIGINAL: finished[1]}

  # Retrain (the reference) and every operator, each from the original; and,
  # with evaluate.noise_floor, retrain again from another seed: how far
  # retraining lands from itself, the floor of every distance to retrain.
  methods = [RETRAIN] + [m for m in catalog.method_names(config) if m != RETRAIN]
  runs = [(name, name) for name in methods]  # (model name, operator)
  if config.evaluate.noise_floor:
    runs.insert(1, (NOISE_FLOOR, RETRAIN))
  modules = {}  # name -> Flax module, for models that are not `model` (SISA's ensembles)
  for name, operator in runs:
    if operator == sisa_runner.NAME:  # trains its own ensemble, two rows (see unlearn/sisa.py)
      with _timed(phases, name):
        sisa_models, sisa_costs, sisa_modules = sisa_runner.run_sisa(
            config, model, data, workdir, store, like, rng, log=log)
      models.update(sisa_models)
      costs.update(sisa_costs)
      modules.update(sisa_modules)
      continue
    fingerprint = model_fingerprint(config, operator, data.fingerprint)
    if name != operator:
      fingerprint += f"-{name}"
    # A new original invalidates every model made from it.
    finished = None if original_is_new else store.load(name, like, fingerprint)
    # Retrain starts from scratch, whatever the original: in a sweep it is
    # made once per forget request and seed, whatever the operator. An
    # operator's model is there when another run made it in its batch.
    shared_name = f"{name}-{fingerprint}"
    if finished is None and (operator == RETRAIN or not original_is_new):
      finished = _from_shared(store, shared, shared_name, name, like, fingerprint)
    if finished is None:
      key = operators.operator_rng(rng, name)  # from the name: retrain_seed2 gets its own
      with _timed(phases, name):
        if batch_with and name == operator != RETRAIN:
          progress.say(f"unlearn {name} for {1 + len(batch_with)} runs in one program ...")
          batch = operators.run_operator_batch(operator, [config, *batch_with], model,
                                               models[ORIGINAL], data, key)
          _share_batch(shared, operator, batch_with, batch[1:], data.fingerprint)
          variables, info, timings = batch[0]
        else:
          progress.say(f"unlearn {name} ...")
          variables, info, timings = operators.run_operator(
              operator, config, model, models[ORIGINAL], data, key)
      finished = variables, records.cost_record(info, **timings, fingerprint=fingerprint)
      if is_writer:
        log.append(name, fingerprint, {**finished[1], "info": records.info_summary(info)})
      store.save(name, *finished)
      if operator == RETRAIN:
        _share(shared, shared_name, finished)
      progress.say(f"unlearn {name}: {finished[1]['work_s']:.1f} s "
                   f"(+{finished[1]['compile_s']:.1f} s compile)")
    models[name], costs[name] = finished

  stacked = None
  if config.evaluate.challenge_population:
    with _timed(phases, "populations"):
      stacked = populations.build_populations(
          config, model, models[ORIGINAL], data, [m for m in methods if m != sisa_runner.NAME],
          jax.random.fold_in(rng, 20_000),
          store, remake=original_is_new)
  progress.say("evaluate ...")
  with _timed(phases, "evaluate"):
    # Every split but train, which is retain and forget together: no metric
    # reads it, and predicting it would add ~40% to every model's outputs.
    measured = {split: arrays for split, arrays in data.device.items() if split != "train"}
    results, per_example, curves = suite.evaluate_models(
        model, models, measured, data.request, data.dataset.class_names, config.evaluate,
        jax.random.fold_in(rng, 10_000), costs, populations=stacked, modules=modules,
        # Content-addressed: a sweep's runs share the original's and the
        # retrains' outputs, a rerun reuses those of every unchanged model.
        cache_dir=os.path.join(shared_models or workdir, EVALUATIONS))
  if is_writer:
    with _timed(phases, "report"):
      report.write_report(workdir, results, per_example, curves, data.dataset.class_names,
                          forget_classes=suite.forget_classes(data.request))
      audit.write_record(workdir, audit.build_record(
          config, data, models, results, started_at=started_at,
          made_from={sisa_runner.NAME: sisa_runner.ORIGINAL_NAME},  # SISA deletes from its own
          operator_of={NOISE_FLOOR: RETRAIN}))
  return results
