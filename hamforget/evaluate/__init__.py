"""The evaluation suite: what is measured of every model, in one place.

`suite.evaluate_models` measures the original, the retrained and every
unlearned model; each row of its results holds every metric named here (NaN
where a metric does not apply, e.g. class metrics of a group request or the
challenge score without populations). "retrain" is the reference: a metric is
good when it is close to the retrained model's value, not when it is low.

Names with `<class>` stand for one metric per class name (see `metric_names`).
Accuracies are fractions in [0, 1]; losses are cross-entropies in nats;
divergences are Jensen-Shannon divergences in nats, in [0, ln 2].

This module imports nothing heavy: `configs/` and `report` read it cheaply.
"""

from __future__ import annotations

from typing import Sequence

CLASS = "<class>"

METRICS: dict[str, str] = {
    # Accuracy.
    "acc_retain": "accuracy on the retain set (training examples kept)",
    "acc_forget": "accuracy on the forget set (training examples to forget)",
    "acc_test": "accuracy on the test split",
    "acc_val": "accuracy on the validation split",
    "bal_acc_retain": "balanced accuracy (mean per-class recall over classes present) on retain",
    "bal_acc_forget": "balanced accuracy on the forget set",
    "bal_acc_test": "balanced accuracy on test (HAM10000 is 67% nv: read this, not acc_test)",
    f"acc_retain_class_{CLASS}": "retain accuracy on one class (NaN if absent)",
    f"acc_forget_class_{CLASS}": "forget-set accuracy on one class (NaN if absent)",
    f"acc_test_class_{CLASS}": "test accuracy on one class (NaN if absent)",
    "acc_test_forget_classes": "class requests: test accuracy on the forgotten classes (else NaN)",
    "acc_test_other_classes": "class requests: test accuracy on the other classes (else NaN)",
    # Losses (the seed's table).
    "loss_retain_mean": "mean per-example cross-entropy on retain",
    "loss_test_mean": "mean per-example cross-entropy on test",
    "loss_test_std": "std of per-example cross-entropy on test",
    "loss_forget_mean": "mean per-example cross-entropy on forget",
    "loss_forget_std": "std of per-example cross-entropy on forget",
    "loss_initial": "training loss at the first step of the run that made the model (runner)",
    "loss_final": "training loss at the last step of that run (runner)",
    # Membership inference.
    "mia_acc": "attack accuracy, logistic regression on loss, forget vs as many test "
               "examples (class requests: test examples of the forgotten classes); mean "
               "over StratifiedShuffleSplit folds; the reference is retrain's value",
    "mia_acc_std": "std of mia_acc over the folds",
    "mia_examples": "examples per side of the attack (forget = test)",
    "entropy_member_rate": "share of forget examples that a logistic regression on "
                           "softmax entropy, fit on retain (member) vs test, calls members",
    # Anamnesis Index.
    "ain": "Anamnesis Index: relearn_steps of this model / relearn_steps of retrain "
           "(NaN if either is NaN or retrain needs 0 steps); < 1 = knowledge left",
    "relearn_steps": "Adam steps of relearning until held-out forget accuracy reaches "
                     "relearn_target (0 = already there; NaN = budget ran out)",
    "relearn_target": "(1 - alpha) x the original's accuracy on the held-out forget examples",
    "relearn_start_acc": "held-out forget accuracy before relearning",
    "relearn_met_at_start": "1 if the target was met before any relearning, else 0",
    "relearn_budget_ran_out": "1 if the target was not met within the budget, else 0",
    # Output distributions.
    "zrf": "Zero Retrain Forgetting: 1 - mean JS(model, randomly initialised model) "
           "on forget, natural log, in [1 - ln 2, 1]; 1 = behaves as an untrained model",
    "js_to_retrain_forget": "mean JS divergence to retrain's predictions on forget",
    "js_to_retrain_test": "mean JS divergence to retrain's predictions on test",
    # NeurIPS 2023 unlearning challenge (populations over seeds; NaN when off).
    "challenge_forget_quality": "mean points per forget example from its epsilon bin "
                                "(1, 1/2, 1/4, ...), unlearned vs retrained populations; "
                                "on retrain's row, half its seeds vs the other half (the "
                                "value exact unlearning earns at that population size)",
    "challenge_score": "challenge_forget_quality x (retain acc / retrain's) "
                       "x (test acc / retrain's)",
    "challenge_population": "models per population used (0 = not computed)",
    # Cost (runner).
    "wall_s": "wall-clock seconds of the run that made the model",
    "steps": "optimiser steps of that run",
    "examples_seen": "training examples touched (with repetition) by that run",
    "wall_ratio_to_retrain": "wall_s / retrain's wall_s",
    "steps_ratio_to_retrain": "steps / retrain's steps",
    "examples_ratio_to_retrain": "examples_seen / retrain's examples_seen",
}


def metric_names(class_names: Sequence[str]) -> list[str]:
  """Every metric of a result row, with `<class>` expanded over `class_names`."""
  names = []
  for name in METRICS:
    if CLASS in name:
      names.extend(name.replace(CLASS, str(c)) for c in class_names)
    else:
      names.append(name)
  return names
