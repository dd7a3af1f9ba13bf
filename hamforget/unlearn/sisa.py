"""`sisa`: Sharded, Isolated, Sliced, Aggregated training and exact deletion
(Bourtoule et al., "Machine Unlearning", IEEE S&P 2021, arXiv 1912.03817).

The training split is dealt into `shards` disjoint shards (by group, so one
lesion's images share a shard; stratified by class), each cut into `slices`
slices. One model per shard, all of one architecture, trained side by side
as one vmapped program; each shard adds its slices one after another,
training after each and checkpointing its state (orbax). Predictions are the
shards' majority vote or mean softmax (`aggregation`). A forget request
restores, in each shard that holds a forgotten example, the checkpoint before
the first slice holding one, and retrains from there without the forgotten
examples; other shards are untouched. The result equals, bit for bit on CPU,
the ensemble trained from scratch without them (tests/test_sisa.py).

Why it breaks the operator contract, and how little: SISA does not unlearn
from the original model; it is a way of training whose models can forget
exactly. So it (1) trains its own ensemble (`variables` is not used), (2)
needs the training split with its groups, and which of its rows are
forgotten, not only the retain and forget arrays, (3) writes checkpoints
between stages, so it is a host loop over stages of compiled programs rather
than one jitted function. The runner therefore calls `hamforget.sisa.runner`
for it instead of this function, and reports two rows: `sisa_original` (the
ensemble before deletion, to read against `original`) and `sisa` (after,
against `retrain`). What stays: its name, its defaults (below) and its
request kinds live here like every operator's, and its rows are scored by the
same evaluation suite.

Hyper-parameters:
  shards, slices: S and R.
  aggregation: "vote" (majority, ties to the mean softmax) or "softmax" (mean).
  num_epochs: passes over a whole shard that its R stages add up to (each
    stage takes ceil(num_epochs * C / batch_size) steps, C a slice's capacity).
  batch_size, learning_rate: a shard's own (it holds 1/S of the data); the
    rest of the recipe (optimiser, momentum, weight decay, warmup) is the
    original's.
  lanes: shard models per vmapped program; 0 = all S on an accelerator, one
    per device on CPU (`hamforget.sisa.trainer.auto_lanes`).
"""

from __future__ import annotations

from hamforget.unlearn import base

# A shard holds 1/S of the data, so its model needs small batches to take
# enough steps: one MNIST shard of 200 digits (S = 20), ResNet-18 width 1/8,
# 10 epochs, reached 0.38 test accuracy at batch 32 and learning rate 0.05
# (64 steps, still at loss 1.5), 0.66 at batch 16 and 0.1 (128 steps; 20
# epochs at 0.05 gave 0.67).
DEFAULTS = {"shards": 5, "slices": 4, "aggregation": "vote", "num_epochs": 10,
            "batch_size": 16, "learning_rate": 0.1, "lanes": 0}


@base.register("sisa", needs={base.RETAIN, base.FORGET}, defaults=DEFAULTS)
def sisa(model, variables, access, request, config, rng):
  """Not callable as a plain operator: see the module docstring."""
  del model, variables, access, request, config, rng
  raise TypeError("sisa trains its own shard ensemble from the training split and its groups; "
                  "the experiment runs it through hamforget.sisa.runner.run_sisa, not "
                  "hamforget.operators.run_operator")
