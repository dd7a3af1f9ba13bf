"""Every metric of the results table, one registered function each (see `registry`).

"retrain" is the reference: a metric is good when it is close to the retrained
model's value, not when it is low. Accuracies are fractions in [0, 1]; losses
are cross-entropies in nats; divergences are Jensen-Shannon divergences in
nats, in [0, ln 2]. The order of this file is the order of the table's columns.

The math on arrays lives in `metrics` and `challenge`; the model-dependent
work (logits, relearning curves, populations) is done once by `suite`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from hamforget.evaluate import challenge, metrics
from hamforget.evaluate.registry import CLASS, NAN, Context, metric

# The splits measured by balanced and per-class accuracy.
_SPLITS = ("retain", "forget", "test")


def _cost(costs: Mapping[str, Any], key: str) -> float:
  value = costs.get(key)
  return NAN if value is None else float(np.asarray(value))


def _ratio(a: float, b: float) -> float:
  return a / b if b and not math.isnan(b) else NAN


# ----------------------------------------------------------------------------
# Accuracy.

@metric({
    "acc_retain": "accuracy on the retain set (training examples kept)",
    "acc_forget": "accuracy on the forget set (training examples to forget)",
    "acc_test": "accuracy on the test split",
    "acc_val": "accuracy on the validation split",
})
def accuracy(c: Context) -> dict[str, float]:
  return {f"acc_{split}": metrics.accuracy(out["logits"], out["labels"])
          for split, out in c.outputs.items() if split in (*_SPLITS, "val")}


@metric({
    "bal_acc_retain": "balanced accuracy (mean per-class recall over classes present) on retain",
    "bal_acc_forget": "balanced accuracy on the forget set",
    "bal_acc_test": "balanced accuracy on test (HAM10000 is 67% nv: read this, not acc_test)",
})
def balanced_accuracy(c: Context) -> dict[str, float]:
  return {f"bal_acc_{split}": metrics.balanced_accuracy(
      c.outputs[split]["logits"], c.outputs[split]["labels"], len(c.class_names))
          for split in _SPLITS}


@metric({
    f"acc_retain_class_{CLASS}": "retain accuracy on one class (NaN if absent)",
    f"acc_forget_class_{CLASS}": "forget-set accuracy on one class (NaN if absent)",
    f"acc_test_class_{CLASS}": "test accuracy on one class (NaN if absent)",
})
def class_accuracy(c: Context) -> dict[str, float]:
  row = {}
  for split in _SPLITS:
    recalls = metrics.per_class_accuracy(
        c.outputs[split]["logits"], c.outputs[split]["labels"], len(c.class_names))
    row.update({f"acc_{split}_class_{name}": float(value)
                for name, value in zip(c.class_names, recalls)})
  return row


@metric({
    "acc_test_forget_classes": "class requests: test accuracy on the forgotten classes (else NaN)",
    "acc_test_other_classes": "class requests: test accuracy on the other classes (else NaN)",
})
def forgotten_class_accuracy(c: Context) -> dict[str, float]:
  if not c.forget_classes:
    return {}
  test = c.outputs["test"]
  forgotten = np.isin(test["labels"], c.forget_classes)
  return {
      "acc_test_forget_classes": metrics.accuracy(test["logits"][forgotten],
                                                  test["labels"][forgotten]),
      "acc_test_other_classes": metrics.accuracy(test["logits"][~forgotten],
                                                 test["labels"][~forgotten]),
  }


# ----------------------------------------------------------------------------
# Losses (the seed's table).

@metric({
    "loss_retain_mean": "mean per-example cross-entropy on retain",
    "loss_test_mean": "mean per-example cross-entropy on test",
    "loss_test_std": "std of per-example cross-entropy on test",
    "loss_forget_mean": "mean per-example cross-entropy on forget",
    "loss_forget_std": "std of per-example cross-entropy on forget",
})
def losses(c: Context) -> dict[str, float]:
  row = {"loss_retain_mean": float(np.mean(c.outputs["retain"]["loss"]))}
  for split in ("test", "forget"):
    loss = c.outputs[split]["loss"]
    if len(loss):
      row[f"loss_{split}_mean"] = float(np.mean(loss))
      row[f"loss_{split}_std"] = float(np.std(loss))
  return row


@metric({
    "loss_initial": "training loss at the first step of the run that made the model (runner)",
    "loss_final": "training loss at the last step of that run (runner)",
})
def training_losses(c: Context) -> dict[str, float]:
  return {"loss_initial": _cost(c.costs, "initial_loss"),
          "loss_final": _cost(c.costs, "final_loss")}


# ----------------------------------------------------------------------------
# Membership inference.

@metric({
    "mia_acc": "attack accuracy, logistic regression on loss, forget vs as many test "
               "examples (class requests: test examples of the forgotten classes); mean "
               "over StratifiedShuffleSplit folds; the reference is retrain's value",
    "mia_acc_std": "std of mia_acc over the folds",
    "mia_examples": "examples per side of the attack (forget = test)",
})
def loss_attack(c: Context) -> dict[str, float]:
  test = c.outputs["test"]
  nonmember = test["loss"]
  if c.forget_classes:
    # Against test examples of the same classes: otherwise the attack learns
    # "is this the forgotten class" (high loss after forgetting), not membership.
    nonmember = nonmember[np.isin(test["labels"], c.forget_classes)]
  member = c.outputs["forget"]["loss"]
  config = c.config
  scores = metrics.membership_attack(
      member, nonmember, n_splits=config.mia_splits, test_size=config.mia_test_size,
      seed=config.seed, min_examples=config.mia_min_examples)
  return {"mia_acc": float(np.mean(scores)), "mia_acc_std": float(np.std(scores)),
          "mia_examples": float(min(len(member), len(nonmember)))}


@metric({
    "entropy_member_rate": "share of forget examples that a logistic regression on "
                           "softmax entropy, fit on retain (member) vs test, calls members",
})
def entropy_attack(c: Context) -> dict[str, float]:
  return {"entropy_member_rate": metrics.entropy_member_rate(
      c.outputs["retain"]["logits"], c.outputs["test"]["logits"], c.outputs["forget"]["logits"],
      seed=c.config.seed, min_examples=c.config.mia_min_examples)}


# ----------------------------------------------------------------------------
# Anamnesis Index.

@metric({
    "ain": "Anamnesis Index: relearn_steps of this model / relearn_steps of retrain "
           "(NaN if either is NaN or retrain needs 0 steps); < 1 = knowledge left",
    "relearn_steps": "Adam steps of relearning until held-out forget accuracy reaches "
                     "relearn_target (0 = already there; NaN = budget ran out)",
    "relearn_target": "(1 - alpha) x the original's accuracy on the held-out forget examples",
    "relearn_start_acc": "held-out forget accuracy before relearning",
    "relearn_met_at_start": "1 if the target was met before any relearning, else 0",
    "relearn_budget_ran_out": "1 if the target was not met within the budget, else 0",
})
def anamnesis_index(c: Context) -> dict[str, float]:
  if c.curve is None or c.original_curve is None:
    return {}
  target = (1.0 - c.config.anamnesis_alpha) * float(c.original_curve[0])
  retrain_steps = NAN if c.retrain_curve is None else metrics.steps_to_target(
      c.retrain_curve, target)
  steps = metrics.steps_to_target(c.curve, target)
  return {
      "ain": metrics.anamnesis_index(steps, retrain_steps),
      "relearn_steps": steps,
      "relearn_target": target,
      "relearn_start_acc": float(c.curve[0]),
      "relearn_met_at_start": float(steps == 0),
      "relearn_budget_ran_out": float(math.isnan(steps) and not math.isnan(target)),
  }


# ----------------------------------------------------------------------------
# Output distributions.

@metric({
    "zrf": "Zero Retrain Forgetting: 1 - mean JS(model, randomly initialised model) "
           "on forget, natural log, in [1 - ln 2, 1]; 1 = behaves as an untrained model",
})
def zero_retrain_forgetting(c: Context) -> dict[str, float]:
  return {"zrf": metrics.zero_retrain_forgetting(c.outputs["forget"]["logits"],
                                                 c.random_forget_logits)}


@metric({
    "js_to_retrain_forget": "mean JS divergence to retrain's predictions on forget",
    "js_to_retrain_test": "mean JS divergence to retrain's predictions on test",
})
def divergence_to_retrain(c: Context) -> dict[str, float]:
  if c.retrain is None:
    return {}
  return {f"js_to_retrain_{split}": metrics.mean_js_from_logits(
      c.outputs[split]["logits"], c.retrain[split]["logits"]) for split in ("forget", "test")}


# ----------------------------------------------------------------------------
# NeurIPS 2023 unlearning challenge (populations over seeds; NaN when off).

@metric({
    "challenge_forget_quality": "mean points per forget example from its epsilon bin "
                                "(1, 1/2, 1/4, ...), unlearned vs retrained populations; "
                                "on retrain's row, half its seeds vs the other half (the "
                                "value exact unlearning earns at that population size)",
    "challenge_score": "challenge_forget_quality x (retain acc / retrain's) "
                       "x (test acc / retrain's)",
    "challenge_population": "models per population used (0 = not computed)",
})
def challenge_score(c: Context) -> dict[str, float]:
  if c.populations is None:
    return {"challenge_population": 0.0}
  own, reference = c.populations
  scored = challenge.challenge_score(
      own["forget_logits"], reference["forget_logits"], c.outputs["forget"]["labels"],
      own["retain_acc"], own["test_acc"], reference["retain_acc"], reference["test_acc"],
      delta=c.config.challenge_delta)
  return {"challenge_forget_quality": scored["forget_quality"],
          "challenge_score": scored["score"],
          "challenge_population": float(scored["num_models"])}


# ----------------------------------------------------------------------------
# Cost (runner).

# (cost of the run, its ratio to retrain's).
_COSTS = (("wall_s", "wall_ratio_to_retrain"), ("steps", "steps_ratio_to_retrain"),
          ("examples_seen", "examples_ratio_to_retrain"))


@metric({
    "wall_s": "wall-clock seconds of the run that made the model",
    "steps": "optimiser steps of that run",
    "examples_seen": "training examples touched (with repetition) by that run",
    "wall_ratio_to_retrain": "wall_s / retrain's wall_s",
    "steps_ratio_to_retrain": "steps / retrain's steps",
    "examples_ratio_to_retrain": "examples_seen / retrain's examples_seen",
})
def cost(c: Context) -> dict[str, float]:
  row = {}
  for key, ratio in _COSTS:
    row[key] = _cost(c.costs, key)
    row[ratio] = _ratio(row[key], _cost(c.retrain_costs, key))
  return row
