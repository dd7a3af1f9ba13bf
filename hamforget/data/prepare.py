"""The data of one experiment: load the source, split by group, carve the forget set.

    data = prepare.prepare_data(config, mesh)
    data.device["retain"]   # DeviceData, replicated over the mesh
    data.host["train"]      # Examples, on the host (for the grain stream)
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
from absl import logging

from hamforget.data import batches, sources, splits
from hamforget.data import forget as forget_lib
from hamforget.data.types import Dataset, Examples

PARTS = ("train", "val", "test", "retain", "forget")


@dataclasses.dataclass(frozen=True)
class ExperimentData:
  """The splits of one experiment, on the host and on the device.

  Attributes:
    dataset: what the source returned.
    split: str (N,), "train"/"val"/"test" per example.
    forget_mask: bool (N_train,), over the training rows in dataset order.
    request: what to forget.
    host: Examples for each of `PARTS`.
    device: DeviceData for the same splits.
  """
  dataset: Dataset
  split: np.ndarray
  forget_mask: np.ndarray
  request: forget_lib.ForgetRequest
  host: dict[str, Examples]
  device: dict[str, batches.DeviceData]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.dataset.examples.image_shape

  @property
  def num_classes(self) -> int:
    return self.dataset.num_classes

  def split_table(self):
    """Every example's split and, for training rows, whether it is forgotten (a DataFrame)."""
    return splits.split_table(self.dataset.examples, self.split, self.forget_mask,
                              self.dataset.class_names)


def prepare_data(config: ml_collections.ConfigDict, mesh=None) -> ExperimentData:
  """Loads the source, splits it by group and carves the forget set out of train.

  Raises a ValueError naming the split when one comes out empty.
  """
  dataset = sources.load_dataset(config.data, config.data.cache_dir)
  examples = dataset.examples
  split = splits.assign_splits(examples, config.data.val_fraction, config.data.test_fraction,
                               config.seed, dataset.official_split)
  request = forget_lib.ForgetRequest.from_config(config.forget, dataset.class_names)
  train_examples = examples.subset(split == "train")
  mask = forget_lib.forget_mask(train_examples, request, config.seed)
  parts: dict[str, Examples] = {
      "train": train_examples,
      "val": examples.subset(split == "val"),
      "test": examples.subset(split == "test"),
      "retain": train_examples.subset(~mask),
      "forget": train_examples.subset(mask),
  }
  for name, part in parts.items():
    if len(part) == 0:
      raise ValueError(f"the {name} split is empty: {len(examples)} examples, "
                       f"val_fraction={config.data.val_fraction}, "
                       f"test_fraction={config.data.test_fraction}, forget={request}")
  logging.info("data %s: %s", dataset.name,
               ", ".join(f"{name} {len(part)}" for name, part in parts.items()))
  device = {name: batches.to_device(part.images, part.labels, mesh)
            for name, part in parts.items()}
  return ExperimentData(dataset, split, mask, request, parts, device)
