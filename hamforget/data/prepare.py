"""The data of one experiment: load the source, split by group, carve the forget set.

    data = prepare.prepare_data(config, mesh)
    data.device["retain"]   # DeviceData, replicated over the mesh
    data.host["train"]      # Examples, on the host (for the grain stream)
"""

from __future__ import annotations

import dataclasses
import hashlib

import ml_collections
import numpy as np
from absl import logging

from hamforget import config_checks
from hamforget.data import batches, sources, splits
from hamforget.data import forget as forget_lib
from hamforget.data.types import Dataset, Examples

PARTS = ("train", "val", "test", "retain", "forget", "unlearn_val")


@dataclasses.dataclass(frozen=True)
class ExperimentData:
  """The splits of one experiment, on the host and on the device.

  Attributes:
    dataset: what the source returned.
    split: str (N,), "train"/"val"/"test" per example.
    forget_mask: bool (N_train,), over the training rows in dataset order.
    request: what to forget.
    host: Examples for each of `PARTS`; "unlearn_val" is what the unlearning
      runs validate on (`unlearning_validation`).
    device: DeviceData for the same splits.
    fingerprint: `data_fingerprint` of all the above (64 hex digits): the
      stored models and checkpoints are keyed by it, so data edited in place
      is never served a model trained on the old.
    train_fingerprint: `training_fingerprint` (64 hex digits): the digest of
      what the original learns from (examples, split, class names; not the
      forget request), its store key, so runs that differ only in what
      they forget share one original.
  """
  dataset: Dataset
  split: np.ndarray
  forget_mask: np.ndarray
  request: forget_lib.ForgetRequest
  host: dict[str, Examples]
  device: dict[str, batches.DeviceData]
  fingerprint: str = ""
  train_fingerprint: str = ""

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


def unlearning_validation(val: Examples, request: forget_lib.ForgetRequest) -> Examples:
  """The validation examples an unlearning run may select and stop on.

  Early stopping and best-epoch selection must not see what is being
  forgotten: on a forgotten class's validation images the loss of `retrain`
  (which never saw the class) only grows, and `finetune` would pick the epoch
  that best remembers it. So for a class request the forgotten classes leave
  the validation split; for group and example requests the forgotten
  examples are training examples, and the split already holds none of them.
  The original's training keeps the whole validation split.
  """
  if request.kind != "classes":
    return val
  return val.subset(~np.isin(val.labels, np.asarray(request.classes)))


def _update(digest, arrays) -> None:
  for name, array in arrays:
    array = np.ascontiguousarray(array)
    digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\n".encode())
    digest.update(array.data)


def _dataset_arrays(dataset: Dataset, split: np.ndarray):
  examples = dataset.examples
  return (("images", examples.images), ("labels", examples.labels),
          ("groups", examples.groups), ("ids", examples.ids), ("split", split),
          ("class_names", np.asarray(dataset.class_names, dtype=str)))


def data_fingerprint(dataset: Dataset, split: np.ndarray, forget_mask: np.ndarray,
                     request: forget_lib.ForgetRequest) -> str:
  """SHA-256 (hex) of what the models of an experiment learn from.

  Covers every example's id, group, label and image bytes, the split, the
  forget mask and request, and the class names: every part in `PARTS` is a
  function of these. Cheap: one pass over uint8 arrays (~1.5 GB/s).
  """
  digest = hashlib.sha256()
  arrays = list(_dataset_arrays(dataset, split))
  arrays.insert(5, ("forget_mask", forget_mask))  # the order digests have always had
  _update(digest, arrays)
  digest.update(repr(request).encode())
  return digest.hexdigest()


def training_fingerprint(dataset: Dataset, split: np.ndarray) -> str:
  """SHA-256 (hex) of what the original learns from: the examples (ids,
  groups, labels, image bytes), the split and the class names.

  The original trains on the whole training split and selects on the whole
  validation split, so the forget request is not part of it: two runs that
  forget different classes of the same data share one original.
  """
  digest = hashlib.sha256()
  _update(digest, _dataset_arrays(dataset, split))
  return digest.hexdigest()


def prepare_data(config: ml_collections.ConfigDict, mesh=None) -> ExperimentData:
  """Loads the source, splits it by group and carves the forget set out of train.

  Raises a ValueError naming the split when one comes out empty, and a
  `config_checks.ConfigError` for a batch size larger than its split.
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
  parts["unlearn_val"] = unlearning_validation(parts["val"], request)
  for name, part in parts.items():
    if len(part) == 0:
      raise ValueError(f"the {name} split is empty: {len(examples)} examples, "
                       f"val_fraction={config.data.val_fraction}, "
                       f"test_fraction={config.data.test_fraction}, forget={request}")
  config_checks.check_sizes(config, {name: len(part) for name, part in parts.items()})
  logging.info("data %s: %s", dataset.name,
               ", ".join(f"{name} {len(part)}" for name, part in parts.items()))
  device = {name: batches.to_device(part.images, part.labels, mesh)
            for name, part in parts.items()}
  return ExperimentData(dataset, split, mask, request, parts, device,
                        data_fingerprint(dataset, split, mask, request),
                        training_fingerprint(dataset, split))
