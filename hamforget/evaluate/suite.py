"""The evaluation suite: every metric of `hamforget.evaluate.METRICS` for every model.

The runner hands over the original, the retrained and the unlearned models;
`evaluate_models` computes their logits on every split once (jitted, fixed
batch size: no recompilation between models), derives every metric from those
arrays on the host, runs the relearning curves of the Anamnesis Index in-graph,
and returns the table rows, the per-example arrays and the curves.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hamforget import train
from hamforget.evaluate import challenge, metrics, metric_names
from hamforget.evaluate import relearn as relearn_lib
from hamforget.train import DeviceData, Variables

NAN = float("nan")
# The splits measured by accuracy, per-class accuracy and balanced accuracy.
_ACCURACY_SPLITS = ("retain", "forget", "test")
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
  logits = np.asarray(_predict(model, variables, data.images, batch_size), np.float32)
  labels = np.asarray(data.labels, np.int32)
  return {"logits": logits, "labels": labels, "loss": metrics.per_example_loss(logits, labels)}


def _subset(data: DeviceData, index: np.ndarray) -> DeviceData:
  index = jnp.asarray(index, jnp.int32)
  return DeviceData(data.images[index], data.labels[index])


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
    relearn = _subset(forget, _first(forget.size, config.relearn_examples, rng))
  if FORGET_HOLDOUT in splits:
    return relearn, splits[FORGET_HOLDOUT], "held-out forget examples given by the runner"
  if request.kind == "classes":
    test_labels = np.asarray(splits["test"].labels)
    candidates = np.flatnonzero(np.isin(test_labels, request.classes))
    chosen = candidates[_first(len(candidates), config.relearn_holdout_examples, rng)]
    return relearn, _subset(splits["test"], chosen), "test examples of the forgotten classes"
  return relearn, relearn, "the relearning examples themselves (relearn time)"


def _value(costs: Mapping[str, Any], key: str) -> float:
  value = costs.get(key)
  return NAN if value is None else float(np.asarray(value))


def _ratio(a: float, b: float) -> float:
  return a / b if b and not math.isnan(b) else NAN


def _accuracy_metrics(outputs: Mapping[str, Mapping[str, np.ndarray]], class_names: Sequence[str],
                      forget_classes: tuple[int, ...]) -> dict[str, float]:
  row = {}
  num_classes = len(class_names)
  for split in (*_ACCURACY_SPLITS, "val"):
    if split not in outputs:
      row[f"acc_{split}"] = NAN
      continue
    logits, labels = outputs[split]["logits"], outputs[split]["labels"]
    row[f"acc_{split}"] = metrics.accuracy(logits, labels)
    if split == "val":
      continue
    row[f"bal_acc_{split}"] = metrics.balanced_accuracy(logits, labels, num_classes)
    per_class = metrics.per_class_accuracy(logits, labels, num_classes)
    for name, value in zip(class_names, per_class):
      row[f"acc_{split}_class_{name}"] = float(value)
  test = outputs["test"]
  if forget_classes:
    is_forgotten = np.isin(test["labels"], forget_classes)
    row["acc_test_forget_classes"] = metrics.accuracy(
        test["logits"][is_forgotten], test["labels"][is_forgotten])
    row["acc_test_other_classes"] = metrics.accuracy(
        test["logits"][~is_forgotten], test["labels"][~is_forgotten])
  else:
    row["acc_test_forget_classes"] = row["acc_test_other_classes"] = NAN
  return row


def _loss_metrics(outputs, costs: Mapping[str, Any]) -> dict[str, float]:
  row = {"loss_retain_mean": float(np.mean(outputs["retain"]["loss"]))}
  for split in ("test", "forget"):
    loss = outputs[split]["loss"]
    row[f"loss_{split}_mean"] = float(np.mean(loss)) if len(loss) else NAN
    row[f"loss_{split}_std"] = float(np.std(loss)) if len(loss) else NAN
  row["loss_initial"] = _value(costs, "initial_loss")
  row["loss_final"] = _value(costs, "final_loss")
  return row


def _attack_metrics(outputs, forget_classes: tuple[int, ...], config) -> dict[str, float]:
  test = outputs["test"]
  nonmember = test["loss"]
  if forget_classes:
    # Against test examples of the same classes: otherwise the attack learns
    # "is this the forgotten class" (high loss after forgetting), not membership.
    nonmember = nonmember[np.isin(test["labels"], forget_classes)]
  member = outputs["forget"]["loss"]
  scores = metrics.membership_attack(
      member, nonmember, n_splits=config.mia_splits, test_size=config.mia_test_size,
      seed=config.seed, min_examples=config.mia_min_examples)
  return {
      "mia_acc": float(np.mean(scores)),
      "mia_acc_std": float(np.std(scores)),
      "mia_examples": float(min(len(member), len(nonmember))),
      "entropy_member_rate": metrics.entropy_member_rate(
          outputs["retain"]["logits"], test["logits"], outputs["forget"]["logits"],
          seed=config.seed, min_examples=config.mia_min_examples),
  }


def _anamnesis_metrics(curve: np.ndarray | None, target: float,
                       retrain_steps: float) -> dict[str, float]:
  if curve is None:
    return {"ain": NAN, "relearn_steps": NAN, "relearn_target": NAN, "relearn_start_acc": NAN,
            "relearn_met_at_start": NAN, "relearn_budget_ran_out": NAN}
  steps = metrics.steps_to_target(curve, target)
  return {
      "ain": metrics.anamnesis_index(steps, retrain_steps),
      "relearn_steps": steps,
      "relearn_target": target,
      "relearn_start_acc": float(curve[0]),
      "relearn_met_at_start": float(steps == 0),
      "relearn_budget_ran_out": float(math.isnan(steps) and not math.isnan(target)),
  }


def _population_outputs(model, stacked: Variables, splits: Mapping[str, DeviceData],
                        batch_size: int) -> dict[str, np.ndarray]:
  """Forget logits (M, N, K) and retain/test accuracies (M,) of a population of models.

  A Python loop over members with the one jitted `_predict`: no new program
  to compile, and memory of one model's activations at a time.
  """
  size = jax.tree.leaves(stacked)[0].shape[0]
  forget_logits, retain_acc, test_acc = [], [], []
  for i in range(size):
    member = jax.tree.map(lambda x: x[i], stacked)
    forget_logits.append(model_outputs(model, member, splits["forget"], batch_size)["logits"])
    for split, accs in (("retain", retain_acc), ("test", test_acc)):
      out = model_outputs(model, member, splits[split], batch_size)
      accs.append(metrics.accuracy(out["logits"], out["labels"]))
  return {"forget_logits": np.stack(forget_logits), "retain_acc": np.asarray(retain_acc),
          "test_acc": np.asarray(test_acc)}


def evaluate_models(model, models: Mapping[str, Variables], splits: Mapping[str, DeviceData],
                    request, class_names: Sequence[str], config, rng: jax.Array,
                    costs: Mapping[str, Mapping[str, Any]] | None = None, *,
                    populations: Mapping[str, Variables] | None = None,
                    original_name: str = "original", retrain_name: str = "retrain",
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
    costs: name -> {"wall_s", "steps", "examples_seen", "initial_loss",
      "final_loss"} from the runs that made the models (missing = NaN).
    populations: optional name -> variables stacked over a leading axis of M
      seeds (the runner's vmapped runs); with `retrain_name` and another name
      present, that name gets the NeurIPS 2023 challenge score.

  Returns:
    results: name -> {metric: float} with every name of
      `metric_names(class_names)` (NaN where undefined).
    per_example: name -> split -> {"loss", "logits", "labels"} numpy arrays.
    curves: name -> float32 (relearn_steps + 1,) held-out forget accuracy
      after 0..budget relearning steps (empty when the index is off).
  """
  costs = costs or {}
  batch_size = int(config.batch_size)
  forget_classes = tuple(int(c) for c in request.classes) if request.kind == "classes" else ()
  random_rng, relearn_rng = jax.random.split(rng)

  per_example = {name: {split: model_outputs(model, variables, data, batch_size)
                        for split, data in splits.items()}
                 for name, variables in models.items()}

  # ZRF's reference: an untrained network of the same architecture.
  image_shape = tuple(splits["forget"].images.shape[1:])
  random_variables = train.init_variables(model, image_shape, random_rng)
  random_forget = model_outputs(model, random_variables, splits["forget"], batch_size)["logits"]

  curves: dict[str, np.ndarray] = {}
  target = retrain_steps = NAN
  if config.anamnesis and original_name in models:
    relearn, holdout, _ = relearn_sets(splits, request, config)
    if relearn.size and holdout.size:
      for name, variables in models.items():
        curves[name] = np.asarray(relearn_lib.relearn_curve(
            model, variables, relearn, holdout, relearn_rng,
            num_steps=int(config.relearn_steps), batch_size=int(config.relearn_batch_size),
            learning_rate=float(config.relearn_learning_rate), eval_batch_size=batch_size))
      target = (1.0 - config.anamnesis_alpha) * float(curves[original_name][0])
      if retrain_name in curves:
        retrain_steps = metrics.steps_to_target(curves[retrain_name], target)

  challenge_rows: dict[str, dict[str, float]] = {}
  if populations and retrain_name in populations:
    labels = np.asarray(splits["forget"].labels)

    def score(own, reference):
      scored = challenge.challenge_score(
          own["forget_logits"], reference["forget_logits"], labels, own["retain_acc"],
          own["test_acc"], reference["retain_acc"], reference["test_acc"],
          delta=config.challenge_delta)
      return {"challenge_forget_quality": scored["forget_quality"],
              "challenge_score": scored["score"],
              "challenge_population": float(scored["num_models"])}

    reference = _population_outputs(model, populations[retrain_name], splits, batch_size)
    for name, stacked in populations.items():
      if name != retrain_name:
        challenge_rows[name] = score(_population_outputs(model, stacked, splits, batch_size),
                                     reference)
    # Retraining scored against itself, half its seeds against the other half:
    # what exact unlearning earns at that population size (small populations
    # score low whatever the method: a few seeds are easily told apart).
    half = len(reference["test_acc"]) // 2
    if half >= 3:
      challenge_rows[retrain_name] = score({k: v[:half] for k, v in reference.items()},
                                           {k: v[half:2 * half] for k, v in reference.items()})

  reference_costs = costs.get(retrain_name, {})
  retrained = per_example.get(retrain_name)
  results = {}
  for name in models:
    outputs = per_example[name]
    own_costs = costs.get(name, {})
    row = _accuracy_metrics(outputs, class_names, forget_classes)
    row.update(_loss_metrics(outputs, own_costs))
    row.update(_attack_metrics(outputs, forget_classes, config))
    row.update(_anamnesis_metrics(curves.get(name), target, retrain_steps))
    row["zrf"] = metrics.zero_retrain_forgetting(outputs["forget"]["logits"], random_forget)
    for split in ("forget", "test"):
      row[f"js_to_retrain_{split}"] = NAN if retrained is None else metrics.mean_js_from_logits(
          outputs[split]["logits"], retrained[split]["logits"])
    row.update(challenge_rows.get(name, {"challenge_forget_quality": NAN, "challenge_score": NAN,
                                         "challenge_population": 0.0}))
    for key, ratio in (("wall_s", "wall_ratio_to_retrain"), ("steps", "steps_ratio_to_retrain"),
                       ("examples_seen", "examples_ratio_to_retrain")):
      row[key] = _value(own_costs, key)
      row[ratio] = _ratio(row[key], _value(reference_costs, key))
    names = metric_names(class_names)
    undocumented = set(row) - set(names)
    if undocumented:  # a metric must be documented in METRICS before it is reported
      raise RuntimeError(f"metrics missing from hamforget.evaluate.METRICS: {sorted(undocumented)}")
    # One order for every row: the documented one.
    results[name] = {key: float(row.get(key, NAN)) for key in names}
  return results, per_example, curves
