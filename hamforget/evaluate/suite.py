"""The evaluation suite: every registered metric (`measures`) for every model.

The runner hands over the original, the retrained and the unlearned models;
`evaluate_models` does the model-dependent work once: their logits on every
split (jitted, fixed batch size: no recompilation between models), a random
model's logits for ZRF, the relearning curves of the Anamnesis Index
(in-graph) and the challenge's populations. Every registered metric then reads
those arrays on the host, and it returns the table rows, the per-example
arrays and the curves.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hamforget import progress, sharding, train
from hamforget.data.batches import DeviceData
from hamforget.evaluate import anamnesis, challenge, lira, metrics, registry, reuse
from hamforget.evaluate import relearn as relearn_lib
from hamforget.train import Variables

# Splits the Anamnesis Index may be given explicitly instead of derived.
RELEARN, FORGET_HOLDOUT = "relearn", "forget_holdout"


@functools.partial(jax.jit, static_argnums=(0, 3))
def _predict(model, variables: Variables, images: jax.Array, batch_size: int) -> jax.Array:
  return train.predict(model, variables, images, batch_size)


def model_outputs(model, variables: Variables, data: DeviceData,
                  batch_size: int) -> dict[str, np.ndarray]:
  """Per-example arrays of one model on one split, on the host.

  Returns:
    {"logits": float32 (N, K), "labels": int32 (N,), "loss": float64 (N,) nats}.
  """
  logits = np.asarray(sharding.to_host(_predict(model, variables, data.images, batch_size)),
                      np.float32)
  labels = np.asarray(data.labels, np.int32)
  return {"logits": logits, "labels": labels, "loss": metrics.per_example_loss(logits, labels)}


def forget_classes(request) -> tuple[int, ...]:
  """The label indices a class request forgets; () for group and example requests."""
  return tuple(int(c) for c in request.classes) if request.kind == "classes" else ()


def _first(count: int, limit: int, rng: np.random.Generator) -> np.ndarray:
  """Sorted indices of `limit` of `count` items drawn at random (all when limit is 0 or more)."""
  if limit <= 0 or limit >= count:
    return np.arange(count)
  return np.sort(rng.choice(count, limit, replace=False))


def relearn_sets(splits: Mapping[str, DeviceData], request,
                 config) -> tuple[DeviceData, DeviceData, str]:
  """The relearning set and the held-out set of the Anamnesis Index.

  `splits["relearn"]` / `splits["forget_holdout"]` are used when given.
  Otherwise the relearning set is `config.relearn_examples` forget examples
  drawn with `config.seed`, and the held-out set is:
    - class requests: the test examples of the forgotten classes (never
      trained on by any model, never relearned on), as Chundawat et al.
      intended; the reference code's global validation loader is a known bug.
    - group/example requests: the relearning examples themselves. There is no
      held-out data of a forgotten lesion or image, so this measures how fast
      the model re-memorises the forgotten examples (the "relearn time" of
      Golatkar et al. 2020).

  Returns:
    (relearn, holdout, a one-line description for logs and the report).
  """
  rng = np.random.default_rng(config.seed)
  forget = splits["forget"]
  if RELEARN in splits:
    relearn = splits[RELEARN]
  else:
    relearn = forget.take(jnp.asarray(_first(forget.size, config.relearn_examples, rng)))
  if FORGET_HOLDOUT in splits:
    return relearn, splits[FORGET_HOLDOUT], "held-out forget examples given by the runner"
  if request.kind == "classes":
    test_labels = np.asarray(splits["test"].labels)
    candidates = np.flatnonzero(np.isin(test_labels, request.classes))
    chosen = candidates[_first(len(candidates), config.relearn_holdout_examples, rng)]
    return relearn, splits["test"].take(jnp.asarray(chosen)), "test examples of the forgotten classes"
  return relearn, relearn, "the relearning examples themselves (relearn time)"


def _population_outputs(model, stacked: Variables, splits: Mapping[str, DeviceData],
                        batch_size: int) -> dict[str, np.ndarray]:
  """What the challenge score and the seed intervals need of a population of M models.

  A Python loop over members with the one jitted `_predict`: no new program
  to compile, and memory of one model's activations at a time.

  Returns:
    {"forget_logits": (M, N, K), "retain_acc", "test_acc": (M,), and
     "<split>_correct": (M, N_split) 0/1 for retain, forget and test}.
  """
  size = jax.tree.leaves(stacked)[0].shape[0]
  out = {key: [] for key in ("forget_logits", "retain_acc", "test_acc", "retain_correct",
                             "forget_correct", "test_correct")}
  for i in range(size):
    member = jax.tree.map(lambda x: x[i], stacked)
    for split in ("retain", "forget", "test"):
      outputs = model_outputs(model, member, splits[split], batch_size)
      correct = metrics.correct(outputs["logits"], outputs["labels"])
      out[f"{split}_correct"].append(correct)
      if split == "forget":
        out["forget_logits"].append(outputs["logits"])
      else:
        out[f"{split}_acc"].append(float(np.mean(correct)) if correct.size else np.nan)
  return {key: np.stack(values) if key.endswith(("logits", "correct")) else np.asarray(values)
          for key, values in out.items()}


def retain_holdout_set(splits: Mapping[str, DeviceData], request, config) -> DeviceData:
  """Held-out examples of the retained classes, measured at every relearning step.

  Class requests: `config.relearn_retain_examples` test examples of the other
  classes (0 = all); other requests: as many test examples (every class is
  retained). Drawn with `config.seed`; the forget holdout when none is left.
  """
  rng = np.random.default_rng(config.seed + 1)
  labels = np.asarray(splits["test"].labels)
  candidates = np.arange(len(labels))
  if request.kind == "classes":
    candidates = np.flatnonzero(~np.isin(labels, request.classes))
  chosen = candidates[_first(len(candidates), config.relearn_retain_examples, rng)]
  if not len(chosen):
    return relearn_sets(splits, request, config)[1]
  return splits["test"].take(jnp.asarray(chosen))


def relearn_target(model, original: Variables, splits: Mapping[str, DeviceData], request,
                   config) -> float:
  """The Anamnesis Index's target for `original` (`anamnesis.target`); NaN
  without relearning or held-out examples."""
  relearn, holdout, _ = relearn_sets(splits, request, config)
  if not (relearn.size and holdout.size):
    return float("nan")
  start = relearn_lib.heldout_accuracy(model, original, holdout, int(config.batch_size))
  return anamnesis.target(float(start), config.anamnesis_alpha)


def _relearn_curves(model, models: Mapping[str, Variables], splits: Mapping[str, DeviceData],
                    request, config, rng: jax.Array, target: float,
                    modules: Mapping[str, Any] | None = None,
                    done=None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Every model's relearning curves (forget, retain), on the same batches; {} when a set is empty.

  `target`: the Anamnesis Index's (`relearn_target`); each curve stops there
  when `config.relearn_stop_at_target`.
  `modules`: name -> the Flax module of a model that is not `model` (SISA's ensemble).
  `done`: called with a description after each model (progress).
  """
  modules = modules or {}
  done = done or (lambda what: None)
  relearn, holdout, _ = relearn_sets(splits, request, config)
  if not (relearn.size and holdout.size):
    for name in models:
      done(f"no relearning of {name} (no relearning or held-out examples)")
    return {}, {}
  retain_holdout = retain_holdout_set(splits, request, config)
  stop_at = (anamnesis.stop_threshold(target) if config.relearn_stop_at_target
             else relearn_lib.NEVER)
  forget_curves, retain_curves = {}, {}
  for name, variables in models.items():
    forget_curve, retain_curve = relearn_lib.relearn_curve(
        modules.get(name, model), variables, relearn, holdout, retain_holdout, rng, stop_at,
        num_steps=int(config.relearn_steps), batch_size=int(config.relearn_batch_size),
        learning_rate=float(config.relearn_learning_rate), eval_batch_size=int(config.batch_size))
    forget_curves[name], retain_curves[name] = np.asarray(forget_curve), np.asarray(retain_curve)
    steps = int(np.sum(~np.isnan(forget_curves[name]))) - 1
    done(f"relearning curve of {name} ({steps} steps)")
  return forget_curves, retain_curves


def pair_populations(outputs: Mapping[str, Mapping[str, np.ndarray]],
                     retrain_name: str) -> dict[str, tuple[dict, dict]]:
  """name -> (its population's outputs, the reference's), every pair of one size M.

  Like for like: the retrained population is split in two. Its last M seeds
  are the reference of every row; its first M are scored against them on
  retrain's row (what exact unlearning earns at M: a few seeds are easily
  told apart, so small populations score low whatever the method), and each
  operator's first M seeds on its own. M is half the retrained population
  (the runner trains 2 x challenge_population retrains), or the smallest
  operator population if smaller; below 3 nothing is scored.

  Args:
    outputs: name -> `_population_outputs` (arrays with a leading seed axis);
      must hold `retrain_name`.
  """
  outputs = dict(outputs)
  retrained = outputs.pop(retrain_name)
  total = len(retrained["test_acc"])
  size = min([total // 2] + [len(own["test_acc"]) for own in outputs.values()])
  if size < 3:
    return {}
  first = lambda population: {k: v[:size] for k, v in population.items()}
  reference = {k: v[total - size:] for k, v in retrained.items()}
  pairs = {name: (first(own), reference) for name, own in outputs.items()}
  pairs[retrain_name] = (first(retrained), reference)
  return pairs


def _challenge_populations(model, populations: Mapping[str, Variables],
                           splits: Mapping[str, DeviceData], batch_size: int,
                           retrain_name: str) -> dict[str, tuple[dict, dict]]:
  """name -> (its population's outputs, the reference's) for the challenge score.

  The population's outputs gain "forget_lira_acc" (N,), the per-example
  attack's accuracy on every forget example (`lira.example_accuracies`).
  """
  pairs = pair_populations({name: _population_outputs(model, stacked, splits, batch_size)
                            for name, stacked in populations.items()}, retrain_name)
  if not pairs:
    return {}
  labels = np.asarray(splits["forget"].labels)
  confidence = lambda population: challenge.logit_scaled_confidence(
      population["forget_logits"], labels)
  reference = next(iter(pairs.values()))[1]  # one held-out population for every row
  reference_confidence = confidence(reference)
  # Every pair's per-example attack (N,), once: the metric and the report read it.
  return {name: ({**own, "forget_lira_acc": lira.example_accuracies(confidence(own),
                                                                    reference_confidence)},
                 reference)
          for name, (own, _) in pairs.items()}


def evaluate_models(model, models: Mapping[str, Variables], splits: Mapping[str, DeviceData],
                    request, class_names: Sequence[str], config, rng: jax.Array,
                    costs: Mapping[str, Mapping[str, Any]] | None = None, *,
                    populations: Mapping[str, Variables] | None = None,
                    original_name: str = "original", retrain_name: str = "retrain",
                    modules: Mapping[str, Any] | None = None,
                    cache_dir: str | None = None,
                    ) -> tuple[dict[str, dict[str, float]],
                               dict[str, dict[str, dict[str, np.ndarray]]], dict[str, np.ndarray]]:
  """Measures every model with every metric of `hamforget.evaluate.METRICS`.

  Args:
    model: the Flax module shared by all models.
    models: name -> variables, in table order; `original_name` and
      `retrain_name` are the references (metrics that need one are NaN
      without it).
    splits: name -> DeviceData; "retain", "forget", "test" required, "val"
      optional, "relearn" / "forget_holdout" optional (see `relearn_sets`).
      Every split given is predicted and returned per example.
    request: the `ForgetRequest` (kind, classes).
    class_names: names of the K classes, in label order.
    config: the `config.evaluate` section.
    rng: key of the random model of ZRF and of the relearning batches.
    costs: name -> {"work_s", "compile_s", "steps", "examples_seen", "initial_loss",
      "final_loss"} from the runs that made the models (missing = NaN).
    populations: optional name -> variables stacked over a leading axis of
      seeds (the runner's vmapped runs); with `retrain_name` present (2M
      seeds) every name gets the NeurIPS 2023 challenge score, M against M
      (`pair_populations`), and its accuracies intervals over seeds.
    modules: optional name -> the Flax module of a model that is not `model`
      (SISA's ensemble, `hamforget.sisa.ensemble.Ensemble`); it is scored
      through `module.apply` like any model.
    cache_dir: optional folder of `reuse.OutputsCache`: a model measured
      before on the same splits with the same evaluation config (a sweep's
      original and retrains, a rerun's unchanged models) takes its logits and
      relearning curves from there instead of computing them again.

  Returns:
    results: name -> {metric: float} with every name of
      `metric_names(class_names)` (NaN where undefined).
    per_example: name -> split -> {"loss", "logits", "labels"} numpy arrays;
      with populations, forget also holds "lira_acc" (N,), the per-example
      attack's accuracy on each forget example.
    curves: name -> float32 (relearn_steps + 1,) held-out forget accuracy
      after 0..budget relearning steps, NaN after the step that met the
      target (`relearn_stop_at_target`); empty when the index is off.
  """
  costs, modules = costs or {}, modules or {}
  batch_size = int(config.batch_size)
  random_rng, relearn_rng = jax.random.split(rng)
  relearning = bool(config.anamnesis and original_name in models)
  with_populations = bool(populations and retrain_name in populations)
  # One step per model for its outputs, its relearning and its metrics; one
  # for the populations: the log says which model the minutes go to.
  bar = progress.bar(len(models) * (2 + relearning) + with_populations, "evaluate", unit="steps")

  def done(what: str) -> None:
    bar.set_postfix_str(what)
    bar.update(1)

  # Every curve stops at the original's target: computed first, it is part
  # of every cached curve's key.
  target = (relearn_target(modules.get(original_name, model), models[original_name], splits,
                           request, config) if relearning else float("nan"))
  cache = reuse.OutputsCache(cache_dir, splits, config, relearn_rng, relearning, target)
  keys = {name: cache.key(modules.get(name, model), variables)
          for name, variables in models.items()} if cache.folder else {}
  cached = {name: entry for name, entry in ((n, cache.get(k)) for n, k in keys.items())
            if entry is not None}

  per_example = {}
  for name, variables in models.items():
    if name in cached:
      per_example[name] = {split: {**out, "loss": metrics.per_example_loss(out["logits"],
                                                                           out["labels"])}
                           for split, out in cached[name]["outputs"].items()}
      done(f"outputs of {name} (reused)")
      continue
    per_example[name] = {split: model_outputs(modules.get(name, model), variables, data,
                                              batch_size)
                         for split, data in splits.items()}
    done(f"outputs of {name} on {', '.join(splits)}")
  # ZRF's reference: an untrained network of the same architecture.
  random_variables = train.init_replicated(model, tuple(splits["forget"].images.shape[1:]),
                                           random_rng)
  random_forget = model_outputs(model, random_variables, splits["forget"], batch_size)["logits"]
  curves, retain_curves = {}, {}
  if relearning:
    # A cached entry holds its curves (relearning is part of its key; none
    # when the relearning sets are empty, as they are again now).
    curves, retain_curves = _relearn_curves(
        model, {n: v for n, v in models.items() if n not in cached}, splits, request, config,
        relearn_rng, target, modules, done=done)
    for name, entry in cached.items():
      for field, values in (("forget_curve", curves), ("retain_curve", retain_curves)):
        if field in entry:
          values[name] = entry[field]
      done(f"relearning curve of {name} (reused)")
  for name in keys.keys() - cached.keys():
    cache.put(keys[name], per_example[name],
              {field: values[name] for field, values in (("forget_curve", curves),
                                                         ("retain_curve", retain_curves))
               if name in values})
  pairs = {}
  if with_populations:
    pairs = _challenge_populations(model, populations, splits, batch_size, retrain_name)
    done(f"populations of {', '.join(populations)}")

  def measured(name: str) -> dict[str, float]:
    row = registry.measure(registry.Context(
        name=name, outputs=per_example[name], original=per_example.get(original_name),
        retrain=per_example.get(retrain_name), forget_classes=forget_classes(request),
        class_names=tuple(class_names), costs=costs.get(name, {}),
        retrain_costs=costs.get(retrain_name, {}), random_forget_logits=random_forget,
        curve=curves.get(name), retrain_curve=curves.get(retrain_name),
        retain_curve=retain_curves.get(name), relearn_target=target,
        populations=pairs.get(name), config=config))
    done(f"metrics of {name}")
    return row

  results = {name: measured(name) for name in models}
  for name, (own, _) in pairs.items():
    if name in per_example:
      per_example[name]["forget"]["lira_acc"] = own["forget_lira_acc"]
  bar.close()
  # Summaries read finished rows: retrain's row is every row's reference.
  reference = results.get(retrain_name)
  results = {name: registry.summarise(row, reference) for name, row in results.items()}
  return results, per_example, curves
