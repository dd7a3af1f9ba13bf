"""A ShardTrainer from the `unlearn.sisa` config section."""

from __future__ import annotations

import jax
import ml_collections

from hamforget import sharding
from hamforget.data.batches import DeviceData
from hamforget.sisa import ensemble
from hamforget.sisa.layout import Layout
from hamforget.sisa.trainer import ShardTrainer, auto_lanes
from hamforget.sisa.training import make_stage_spec


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_sisa_config(sisa_config) -> None:
  """Raises a ValueError naming every key of `unlearn.sisa` out of range."""
  problems = []
  for key, lowest in (("shards", 1), ("slices", 1), ("lanes", 0), ("num_epochs", 1),
                      ("batch_size", 1)):
    value = sisa_config[key]
    if not (_is_int(value) and value >= lowest):
      problems.append(f"unlearn.sisa.{key}={value!r}: expected an integer >= {lowest}")
  if sisa_config.aggregation not in ensemble.AGGREGATIONS:
    problems.append(f"unlearn.sisa.aggregation={sisa_config.aggregation!r}: expected one of "
                    f"{ensemble.AGGREGATIONS}")
  if not sisa_config.learning_rate > 0:
    problems.append(f"unlearn.sisa.learning_rate={sisa_config.learning_rate!r}: expected > 0")
  if problems:
    raise ValueError("; ".join(problems))


def make_trainer(model, sisa_config, train_config, augment_config, layout: Layout,
                 data: DeviceData, image_shape: tuple[int, int, int], rng: jax.Array,
                 directory: str) -> ShardTrainer:
  """The trainer of `layout`'s shards with SISA's recipe.

  The recipe is the original's (`train_config`: optimiser, momentum, weight
  decay, warmup) with SISA's own learning rate, batch size and epochs (a
  shard is a fraction of the data: it needs a smaller batch). `lanes` 0
  picks `auto_lanes` for the mesh in context.
  """
  check_sisa_config(sisa_config)
  recipe = ml_collections.ConfigDict(train_config.to_dict())
  recipe.learning_rate = sisa_config.learning_rate
  lanes = sisa_config.lanes or auto_lanes(layout.num_shards, sharding.data_size(),
                                          jax.default_backend())
  spec = make_stage_spec(model, recipe, augment_config, layout.num_slices, layout.capacity,
                         sisa_config.num_epochs, sisa_config.batch_size, lanes)
  return ShardTrainer(spec, layout.num_shards, data, image_shape, rng, directory)


def ensemble_model(model, sisa_config, num_shards: int) -> ensemble.Ensemble:
  """The Flax module that scores the trainer's `variables()`."""
  return ensemble.Ensemble(model, num_shards, sisa_config.aggregation)
