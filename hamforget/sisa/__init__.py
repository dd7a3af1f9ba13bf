"""SISA training and exact unlearning (Bourtoule et al., "Machine Unlearning",
IEEE S&P 2021, arXiv 1912.03817), the JAX way.

- `layout`: the training split dealt into S shards x R slices, by group,
  stratified by class; padded to fixed shapes with a validity mask.
- `training`: the pure part: one stage of a batch of shard models, vmapped.
- `checkpoints`: orbax checkpoints of each (shard, stage), with what each saw.
- `trainer`: `ShardTrainer.sync(layout)`: training and exact deletion alike.
- `ensemble`: the S models as one Flax module (vote or mean softmax).
- `runner`: SISA inside an experiment (the `sisa` operator's rows).

`hamforget.unlearn.sisa` registers the operator's name and defaults.
"""
