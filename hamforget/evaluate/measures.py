"""Every metric of the results table, one registered function each (see `registry`).

"retrain" is the reference: a metric is good when it is close to the retrained
model's value, not when it is low; "retrain_seed2" (a second retraining, when
`evaluate.noise_floor`) shows how close retraining comes to itself. Accuracies
are fractions in [0, 1]; losses are cross-entropies in nats; divergences are
Jensen-Shannon divergences in nats, in [0, ln 2]. Headline metrics come with
`<name>_ci_low` / `<name>_ci_high`, the ends of their `evaluate.ci_level`
(95%) bootstrap interval over the examples (`intervals`). The order of this
file is the order of the table's columns.

The math on arrays lives in `metrics`, `attack`, `anamnesis`, `intervals` and
`challenge`; the model-dependent work (logits, relearning curves, populations)
is done once by `suite`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

from hamforget.evaluate import anamnesis, attack, challenge, intervals, metrics
from hamforget.evaluate.registry import (CLASS, CONTEXT, COUNT, FLAG, FRACTION, HIGHER, LOWER,
                                         NAN, NATS, RATIO, RETRAIN, SECONDS, Context, metric,
                                         summary)

# The splits measured by balanced and per-class accuracy.
_SPLITS = ("retain", "forget", "test")
# The accuracies and attack whose mean absolute gap to retrain is `gap_to_retrain`.
GAP_METRICS = ("acc_retain", "acc_forget", "acc_test", "mia_acc")


def _cost(costs: Mapping[str, Any], key: str) -> float:
  value = costs.get(key)
  return NAN if value is None else float(np.asarray(value))


def _ratio(a: float, b: float) -> float:
  return a / b if b and not math.isnan(b) else NAN


def _with_intervals(docs: Mapping[str, str], *, only: Optional[tuple[str, ...]] = None
                    ) -> dict[str, str]:
  """`docs` with `<name>_ci_low` / `<name>_ci_high` documented after each name (or `only`)."""
  out = {}
  for name, doc in docs.items():
    out[name] = doc
    if only is None or name in only:
      out[f"{name}_ci_low"] = f"lower end of the evaluate.ci_level (95%) interval of {name}"
      out[f"{name}_ci_high"] = f"upper end of the evaluate.ci_level (95%) interval of {name}"
  return out


def _interval(name: str, value: float, low_high: tuple[float, float]) -> dict[str, float]:
  return {name: value, f"{name}_ci_low": low_high[0], f"{name}_ci_high": low_high[1]}


def _mean_with_interval(name: str, values: np.ndarray, config) -> dict[str, float]:
  """{name: mean of values (N,), and its bootstrap interval}; NaN for no values."""
  values = np.asarray(values, np.float64)
  mean = float(np.mean(values)) if values.size else NAN
  return _interval(name, mean, intervals.mean_interval(
      values, num_resamples=config.ci_resamples, level=config.ci_level, seed=config.seed))


# ----------------------------------------------------------------------------
# Accuracy.

@metric(_with_intervals({
    "acc_retain": "accuracy on the retain set (training examples kept); where populations "
                  "exist its interval is over seeds and examples",
    "acc_forget": "accuracy on the forget set (training examples to forget); interval as "
                  "acc_retain",
    "acc_test": "accuracy on the test split; interval as acc_retain",
    "acc_val": "accuracy on the validation split",
}), unit=FRACTION, ideal=RETRAIN)
def accuracy(c: Context) -> dict[str, float]:
  row = {}
  own = c.populations[0] if c.populations is not None else None
  for split, out in c.outputs.items():
    if split not in (*_SPLITS, "val"):
      continue
    correct = metrics.correct(out["logits"], out["labels"])
    name = f"acc_{split}"
    if own is not None and f"{split}_correct" in own:
      # One run's accuracy varies with its seed as well as with the examples.
      row.update(_interval(name, float(np.mean(correct)) if correct.size else NAN,
                           intervals.seed_and_example_mean_interval(
                               own[f"{split}_correct"], num_resamples=c.config.ci_resamples,
                               level=c.config.ci_level, seed=c.config.seed)))
    else:
      row.update(_mean_with_interval(name, correct, c.config))
  return row


def _balanced_accuracy_interval(logits: np.ndarray, labels: np.ndarray, num_classes: int,
                                config) -> tuple[float, float]:
  """Bootstrap interval of balanced accuracy: per-class recalls of every resample at once."""
  labels = np.asarray(labels, np.int64)
  if labels.size < 2:
    return NAN, NAN
  correct = metrics.correct(logits, labels)
  rng = np.random.default_rng(config.seed)
  index = intervals.indices(labels.size, config.ci_resamples, rng)
  # Counts per (resample, class) through one bincount over resample * K + label.
  cell = (np.arange(config.ci_resamples)[:, None] * num_classes + labels[index]).reshape(-1)
  size = config.ci_resamples * num_classes
  counts = np.bincount(cell, minlength=size).reshape(-1, num_classes)
  hits = np.bincount(cell, weights=correct[index].reshape(-1), minlength=size).reshape(
      -1, num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    recalls = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
  return intervals.percentile_interval(np.nanmean(recalls, -1), config.ci_level)


@metric(_with_intervals({
    "bal_acc_retain": "balanced accuracy (mean per-class recall over classes present) on retain",
    "bal_acc_forget": "balanced accuracy on the forget set",
    "bal_acc_test": "balanced accuracy on test (HAM10000 is 67% nv: read this, not acc_test)",
}, only=("bal_acc_test",)), unit=FRACTION, ideal=RETRAIN)
def balanced_accuracy(c: Context) -> dict[str, float]:
  num_classes = len(c.class_names)
  row = {f"bal_acc_{split}": metrics.balanced_accuracy(
      c.outputs[split]["logits"], c.outputs[split]["labels"], num_classes) for split in _SPLITS}
  test = c.outputs["test"]
  row.update(_interval("bal_acc_test", row["bal_acc_test"], _balanced_accuracy_interval(
      test["logits"], test["labels"], num_classes, c.config)))
  return row


@metric({
    "majority_acc_test": "test accuracy of always answering the most frequent class of the "
                         "test split: the floor acc_test reads against (the same for every "
                         "model; any constant answer's balanced accuracy is 1 / classes)",
}, unit=FRACTION, ideal=CONTEXT)
def majority_baseline(c: Context) -> dict[str, float]:
  _, share = metrics.majority_class(c.outputs["test"]["labels"], len(c.class_names))
  return {"majority_acc_test": share}


@metric({
    f"acc_retain_class_{CLASS}": "retain accuracy on one class (NaN if absent)",
    f"acc_forget_class_{CLASS}": "forget-set accuracy on one class (NaN if absent)",
    f"acc_test_class_{CLASS}": "test recall of one class: the share of its test examples "
                               "predicted as it (NaN if absent)",
}, unit=FRACTION, ideal=RETRAIN)
def class_accuracy(c: Context) -> dict[str, float]:
  row = {}
  for split in _SPLITS:
    recalls = metrics.per_class_accuracy(
        c.outputs[split]["logits"], c.outputs[split]["labels"], len(c.class_names))
    row.update({f"acc_{split}_class_{name}": float(value)
                for name, value in zip(c.class_names, recalls)})
  return row


@metric(_with_intervals({
    "acc_test_forget_classes": "class requests: test accuracy on the forgotten classes (else NaN)",
    "acc_test_other_classes": "class requests: test accuracy on the other classes (else NaN)",
}), unit=FRACTION, ideal=RETRAIN)
def forgotten_class_accuracy(c: Context) -> dict[str, float]:
  if not c.forget_classes:
    return {}
  test = c.outputs["test"]
  correct = metrics.correct(test["logits"], test["labels"])
  forgotten = np.isin(test["labels"], c.forget_classes)
  return {**_mean_with_interval("acc_test_forget_classes", correct[forgotten], c.config),
          **_mean_with_interval("acc_test_other_classes", correct[~forgotten], c.config)}


# ----------------------------------------------------------------------------
# Losses (the seed's table): every model's cross-entropy at evaluation, one
# definition for every row.

@metric(_with_intervals({
    "loss_retain_mean": "mean per-example cross-entropy on retain, at evaluation (nats)",
    "loss_retain_std": "std of per-example cross-entropy on retain",
    "loss_test_mean": "mean per-example cross-entropy on test, at evaluation (nats)",
    "loss_test_std": "std of per-example cross-entropy on test",
    "loss_forget_mean": "mean per-example cross-entropy on forget, at evaluation (nats)",
    "loss_forget_std": "std of per-example cross-entropy on forget",
}, only=("loss_retain_mean", "loss_test_mean", "loss_forget_mean")),
   unit=NATS, ideal=RETRAIN)
def losses(c: Context) -> dict[str, float]:
  row = {}
  for split in ("retain", "test", "forget"):
    loss = c.outputs[split]["loss"]
    if len(loss):
      row.update(_mean_with_interval(f"loss_{split}_mean", loss, c.config))
      row[f"loss_{split}_std"] = float(np.std(loss))
  return row


@metric({
    "loss_initial": "first value of the loss curve of the run that made the model: its own "
                    "objective (per-epoch training loss for original, retrain and fine-tuning; "
                    "each operator's loss otherwise, e.g. SCRUB's max steps a negative KL): "
                    "not comparable across rows; compare loss_*_mean",
    "loss_final": "last value of that curve (same caveat)",
}, unit=NATS, ideal="none: each run's own objective, not comparable across rows")
def training_losses(c: Context) -> dict[str, float]:
  return {"loss_initial": _cost(c.costs, "initial_loss"),
          "loss_final": _cost(c.costs, "final_loss")}


# ----------------------------------------------------------------------------
# Membership inference.

def _matched_losses(c: Context) -> tuple[np.ndarray, np.ndarray]:
  """(forget losses, test losses) of equal size and one class histogram (`attack.class_matched`)."""
  forget, test = c.outputs["forget"], c.outputs["test"]
  member, nonmember = attack.class_matched(forget["labels"], test["labels"], c.config.seed)
  return forget["loss"][member], test["loss"][nonmember]


_ATTACK_NAMES = {"acc": "mia_acc", "auc": "mia_auc", "tpr_at_0.01": "mia_tpr_at_1pct_fpr",
                 "tpr_at_0.05": "mia_tpr_at_5pct_fpr"}


@metric({
    **_with_intervals({
        "mia_acc": "membership attack accuracy: logistic regression on loss, forget examples "
                   "against as many test examples of the same classes (class histograms "
                   "matched, every request kind), each example scored out of fold by a "
                   "stratified k-fold; interval refits the attack on resamples; the reference "
                   "is retrain's value",
        "mia_auc": "ROC AUC of the loss threshold attack (score = -loss) on the same examples; "
                   "0.5 = indistinguishable, < 0.5 = forget losses above unseen ones",
        "mia_tpr_at_1pct_fpr": "true-positive rate of that attack at 1% false positives "
                               "(at 0% when fewer than 100 test examples a side)",
        "mia_tpr_at_5pct_fpr": "true-positive rate of that attack at 5% false positives",
    }),
    "mia_examples": "examples per side of the attack (forget = test, class-matched)",
    "mia_underpowered": "1 if a side has fewer than evaluate.mia_powered_examples (100) "
                        "examples: read the interval, not the value; else 0",
}, unit={"mia_acc": FRACTION, "mia_auc": "ROC AUC (0-1)",
         "mia_tpr_at_1pct_fpr": FRACTION, "mia_tpr_at_5pct_fpr": FRACTION,
         "mia_examples": COUNT + " (examples a side)", "mia_underpowered": FLAG},
   ideal={"mia_acc": "closer to retrain is better (retrain's value, not 0.5: retrain "
                     "generalises to unseen examples of the same classes)",
          "mia_auc": RETRAIN, "mia_tpr_at_1pct_fpr": RETRAIN, "mia_tpr_at_5pct_fpr": RETRAIN,
          "mia_examples": "100 or more (below it the attack is underpowered)",
          "mia_underpowered": "no"})
def loss_attack(c: Context) -> dict[str, float]:
  config = c.config
  member, nonmember = _matched_losses(c)
  n = len(member)
  row = {"mia_examples": float(n), "mia_underpowered": float(n < config.mia_powered_examples)}
  if n < config.mia_min_examples:
    return row
  scored = attack.loss_attack(member, nonmember, n_splits=config.mia_splits, seed=config.seed,
                              num_resamples=config.ci_resamples, level=config.ci_level)
  for key, (value, low, high) in scored.items():
    row.update(_interval(_ATTACK_NAMES[key], value, (low, high)))
  return row


@metric({
    **_with_intervals({
        "loss_gap_forget_test": "mean forget loss - mean loss of the class-matched test "
                                "examples of the attack (nats); retrain's is near 0",
    }),
    "over_forgetting": "1 if the interval of loss_gap_forget_test lies above "
                       "evaluate.over_forgetting_nats: the forget set stands out by a loss far "
                       "above that of unseen examples (the Streisand effect), else 0",
}, unit={"loss_gap_forget_test": NATS, "over_forgetting": FLAG},
   ideal={"loss_gap_forget_test": RETRAIN, "over_forgetting": "no"})
def over_forgetting(c: Context) -> dict[str, float]:
  member, nonmember = _matched_losses(c)
  if not len(member):
    return {}
  config = c.config
  low, high = intervals.two_sample_interval(
      lambda a, b: a.mean(-1) - b.mean(-1), member, nonmember,
      num_resamples=config.ci_resamples, level=config.ci_level, seed=config.seed)
  gap = float(np.mean(member) - np.mean(nonmember))
  flagged = NAN if math.isnan(low) else float(low > config.over_forgetting_nats)
  return {**_interval("loss_gap_forget_test", gap, (low, high)), "over_forgetting": flagged}


@metric(_with_intervals({
    "entropy_member_rate": "share of forget examples that a logistic regression on softmax "
                           "entropy, fit on as many retain (member) as test examples, calls "
                           "members; its interval refits the attack on resamples (with no "
                           "signal it spans most of [0, 1])",
}), unit=FRACTION, ideal=RETRAIN)
def entropy_attack(c: Context) -> dict[str, float]:
  entropies = [metrics.entropy(metrics.softmax(c.outputs[split]["logits"]))
               for split in ("retain", "test", "forget")]
  config = c.config
  if min(len(e) for e in entropies) < config.mia_min_examples:
    return {}
  rate = attack.entropy_member_rate(*entropies, seed=config.seed)
  return _interval("entropy_member_rate", rate, attack.entropy_member_rate_interval(
      *entropies, seed=config.seed, num_resamples=config.ci_resamples,
      level=config.ci_level))


# ----------------------------------------------------------------------------
# Anamnesis Index.

@metric({
    "ain": "Anamnesis Index: relearn_steps of this model / relearn_steps of retrain, counted "
           "from 1 as the reference; < 1 = knowledge left; a bound where ain_censored says so",
    "ain_censored": "0 exact; 1 a lower bound (this model ran out of relearning budget); "
                    "-1 an upper bound (retrain ran out); 2 both ran out (ain NaN: raise "
                    "evaluate.relearn_steps)",
    "relearn_steps": "Adam steps of relearning until held-out forget accuracy reaches "
                     "relearn_target, counted from 1 (the budget when it ran out)",
    "relearn_target": "(1 - alpha) x the original's accuracy on the held-out forget examples",
    "relearn_start_acc": "held-out forget accuracy before relearning",
    "relearn_met_at_start": "1 if the target was met before any relearning, else 0 (when "
                            "retrain's is 1, the index measures nothing)",
    "relearn_budget_ran_out": "1 if the target was not met within the budget, else 0",
    "relearn_retain_acc": "accuracy on held-out examples of the retained classes (class "
                          "requests; test examples otherwise) at the step the target is met",
}, unit={"ain": RATIO, "ain_censored": "code", "relearn_steps": COUNT + " (Adam steps)",
         "relearn_target": FRACTION, "relearn_start_acc": FRACTION,
         "relearn_met_at_start": FLAG, "relearn_budget_ran_out": FLAG,
         "relearn_retain_acc": FRACTION},
   ideal={"ain": "closer to 1 (retrain's) is better; below 1 = knowledge left",
          "ain_censored": "0 (exact)", "relearn_steps": RETRAIN, "relearn_target": CONTEXT,
          "relearn_start_acc": RETRAIN, "relearn_met_at_start": CONTEXT,
          "relearn_budget_ran_out": "no (else relearn_steps is a bound)",
          "relearn_retain_acc": HIGHER})
def anamnesis_index(c: Context) -> dict[str, float]:
  if c.curve is None or math.isnan(c.relearn_target):
    return {}
  target = c.relearn_target
  steps, censored = anamnesis.relearn_steps(c.curve, target)
  retrain_steps, retrain_censored = ((NAN, False) if c.retrain_curve is None else
                                     anamnesis.relearn_steps(c.retrain_curve, target))
  ain, code = anamnesis.anamnesis_index(steps, censored, retrain_steps, retrain_censored)
  row = {"ain": ain, "ain_censored": code, "relearn_steps": steps, "relearn_target": target,
         "relearn_start_acc": float(c.curve[0]),
         "relearn_met_at_start": float(c.curve[0] >= target),
         "relearn_budget_ran_out": float(censored)}
  if c.retain_curve is not None and not math.isnan(steps):
    row["relearn_retain_acc"] = float(c.retain_curve[int(steps)])
  return row


# ----------------------------------------------------------------------------
# Output distributions.

@metric(_with_intervals({
    "zrf": "Zero Retrain Forgetting: 1 - mean JS(model, randomly initialised model) "
           "on forget, natural log, in [1 - ln 2, 1]; 1 = behaves as an untrained model",
}), unit="score in [1 - ln 2, 1]",
   ideal="closer to retrain is better (retrain's value, not 1: a retrained model is not an "
         "untrained one)")
def zero_retrain_forgetting(c: Context) -> dict[str, float]:
  js = metrics.js_from_logits(c.outputs["forget"]["logits"], c.random_forget_logits)
  row = _mean_with_interval("zrf", js, c.config)
  # 1 - JS: the interval's ends swap.
  return {"zrf": 1.0 - row["zrf"], "zrf_ci_low": 1.0 - row["zrf_ci_high"],
          "zrf_ci_high": 1.0 - row["zrf_ci_low"]}


@metric(_with_intervals({
    "js_to_retrain_forget": "mean JS divergence to retrain's predictions on forget (read "
                            "against retrain_seed2's: retraining's distance to itself)",
    "js_to_retrain_test": "mean JS divergence to retrain's predictions on test",
}), unit="nats, in [0, ln 2]",
   ideal="lower is better (0 = retrain; retrain_seed2's value is the floor)")
def divergence_to_retrain(c: Context) -> dict[str, float]:
  if c.retrain is None:
    return {}
  row = {}
  for split in ("forget", "test"):
    js = metrics.js_from_logits(c.outputs[split]["logits"], c.retrain[split]["logits"])
    row.update(_mean_with_interval(f"js_to_retrain_{split}", js, c.config))
  return row


# ----------------------------------------------------------------------------
# NeurIPS 2023 unlearning challenge (populations over seeds; NaN when off).

@metric({
    "challenge_forget_quality": "mean points per forget example from its epsilon bin "
                                "(1, 1/2, 1/4, ...), M unlearned models against M held-out "
                                "retrained ones; on retrain's row, M other retrained models "
                                "against the same M (what exact unlearning earns at that M)",
    "challenge_score": "challenge_forget_quality x (retain acc / retrain's) "
                       "x (test acc / retrain's)",
    "challenge_population": "models per population used, M (0 = not computed)",
}, unit={"challenge_forget_quality": "score (0-1)", "challenge_score": "score (0-1)",
         "challenge_population": COUNT},
   ideal={"challenge_forget_quality": HIGHER + " (retrain's row: what exact unlearning earns)",
          "challenge_score": HIGHER + " (retrain's row: what exact unlearning earns)",
          "challenge_population": CONTEXT})
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


@metric(_with_intervals({
    "lira_acc": "per-example likelihood-ratio attack (U-LiRA, Hayes et al. 2024): for each "
                "forget example, Gaussians fitted to M unlearned and M retrained models' "
                "logit-scaled confidences, each model attacked with the others' (leave one "
                "out); the mean over examples of the balanced accuracy; interval over examples",
}), unit=FRACTION,
   ideal="closer to retrain is better (retrain's row: retrained models against retrained "
         "ones at the same M, a little under 0.5)")
def per_example_attack(c: Context) -> dict[str, float]:
  if c.populations is None:
    return {}
  return _mean_with_interval("lira_acc", c.populations[0]["forget_lira_acc"], c.config)


# ----------------------------------------------------------------------------
# Cost (runner).

# (cost of the run, its ratio to retrain's).
_COSTS = (("work_s", "work_ratio_to_retrain"), ("steps", "steps_ratio_to_retrain"),
          ("examples_seen", "examples_ratio_to_retrain"))


def _timings(costs: Mapping[str, Any]) -> dict[str, float]:
  """{"work_s", "compile_s"} of a cost record; NaN where unknown.

  Records written before the two were kept apart have `wall_s` alone: the
  work where `compile_s` is beside it (operators, SISA), work and compilation
  mixed otherwise (the original's), so unknown.
  """
  if "work_s" in costs:
    return {"work_s": _cost(costs, "work_s"), "compile_s": _cost(costs, "compile_s")}
  if "compile_s" in costs:
    return {"work_s": _cost(costs, "wall_s"), "compile_s": _cost(costs, "compile_s")}
  return {"work_s": NAN, "compile_s": NAN}


@metric({
    "work_s": "wall-clock seconds of the run that made the model, its compilation (and the "
              "original's checkpoint writes) excluded; SISA's include the restores and "
              "checkpoint writes its deletion relies on",
    "compile_s": "seconds of XLA tracing, lowering and compilation in that run, apart from "
                 "work_s: paid once per program shape, not per run of a grid",
    "steps": "optimiser steps of that run",
    "examples_seen": "training examples touched (with repetition) by that run",
    "work_ratio_to_retrain": "work_s / retrain's work_s",
    "steps_ratio_to_retrain": "steps / retrain's steps",
    "examples_ratio_to_retrain": "examples_seen / retrain's examples_seen",
}, unit={"work_s": SECONDS, "compile_s": SECONDS, "steps": COUNT, "examples_seen": COUNT,
         "work_ratio_to_retrain": RATIO, "steps_ratio_to_retrain": RATIO,
         "examples_ratio_to_retrain": RATIO},
   ideal={"work_s": LOWER, "compile_s": LOWER, "steps": LOWER, "examples_seen": LOWER,
          "work_ratio_to_retrain": LOWER + " (below 1 = cheaper than retraining)",
          "steps_ratio_to_retrain": LOWER, "examples_ratio_to_retrain": LOWER})
def cost(c: Context) -> dict[str, float]:
  own = {**_timings(c.costs), "steps": _cost(c.costs, "steps"),
         "examples_seen": _cost(c.costs, "examples_seen")}
  reference = {**_timings(c.retrain_costs), "steps": _cost(c.retrain_costs, "steps"),
               "examples_seen": _cost(c.retrain_costs, "examples_seen")}
  row = {"compile_s": own["compile_s"]}
  for key, ratio in _COSTS:
    row[key] = own[key]
    row[ratio] = _ratio(own[key], reference[key])
  return row


# ----------------------------------------------------------------------------
# One summary per model.

@summary({
    "gap_to_retrain": "mean |value - retrain's value| over acc_retain, acc_forget, acc_test "
                      "and mia_acc (those defined in both rows): the 'average gap' of SalUn "
                      "(Fan et al. 2024), as a fraction; 0 = retrain; read against "
                      "retrain_seed2's (the noise floor)",
}, unit=FRACTION, ideal="lower is better (0 = retrain; retrain_seed2's value is the floor)")
def gap_to_retrain(row: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
  gaps = [abs(row[name] - reference[name]) for name in GAP_METRICS
          if math.isfinite(row.get(name, NAN)) and math.isfinite(reference.get(name, NAN))]
  return {"gap_to_retrain": float(np.mean(gaps)) if gaps else NAN}
