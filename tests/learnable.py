"""A small learnable unlearning problem, trained for real, shared by operator tests.

sklearn's 1,797 real 8x8 digits (offline), classes 0-4 only, a tiny ResNet.
Class 0 is the forget class. Training takes a few seconds on CPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
import numpy as np
from sklearn.datasets import load_digits

from configs import common
from hamforget import train
from hamforget.data import batches
from hamforget.data.forget import ForgetRequest
from hamforget.models import build_model

NUM_CLASSES = 5
FORGET_CLASS = 0


@dataclasses.dataclass(frozen=True)
class Problem:
  model: object
  variables: dict          # the trained original
  retain: batches.DeviceData
  forget: batches.DeviceData
  val: batches.DeviceData
  test: batches.DeviceData   # test split, all classes
  request: ForgetRequest
  config: ml_collections.ConfigDict  # experiment config (train, augment sections)

  def accuracy(self, variables, data: batches.DeviceData) -> float:
    logits = train.predict(self.model, variables, data.images, 256)
    return float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(data.labels)))


def experiment_config() -> ml_collections.ConfigDict:
  config = common.base_config()
  config.model.name = "resnet18"
  config.model.width = 0.125
  config.model.stem = "small"
  config.train.batch_size = 64
  config.train.learning_rate = 0.05
  config.train.num_epochs = 8
  config.train.patience = 0
  config.augment.flip_horizontal = False
  return config


@functools.lru_cache(maxsize=1)
def problem() -> Problem:
  digits = load_digits()
  keep = digits.target < NUM_CLASSES
  images = (digits.images[keep] * (255 / 16)).round().astype(np.uint8)[..., None]
  labels = digits.target[keep].astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  images, labels = images[order], labels[order]
  n_test = n_val = 100
  test_x, test_y = images[:n_test], labels[:n_test]
  val_x, val_y = images[n_test:n_test + n_val], labels[n_test:n_test + n_val]
  tr_x, tr_y = images[n_test + n_val:], labels[n_test + n_val:]
  config = experiment_config()
  model = build_model(config.model, NUM_CLASSES)
  variables = train.init_variables(model, (8, 8, 1), jax.random.key(0))
  spec = train.make_fit_spec(model, config.train, config.augment, len(tr_y))
  train_data = batches.to_device(tr_x, tr_y)
  val = batches.to_device(val_x, val_y)
  variables, _ = train.fit(spec, variables, train_data, val, jax.random.key(1))
  is_forget = tr_y == FORGET_CLASS
  return Problem(
      model=model, variables=variables,
      retain=batches.to_device(tr_x[~is_forget], tr_y[~is_forget]),
      forget=batches.to_device(tr_x[is_forget], tr_y[is_forget]),
      val=val, test=batches.to_device(test_x, test_y),
      request=ForgetRequest(kind="classes", classes=(FORGET_CLASS,), fraction=0.0, ids=()),
      config=config)
