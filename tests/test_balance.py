"""Class-balanced training: loss weights, class-balanced batches, selection on
balanced accuracy or macro-F1, and the config keys that turn them on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from configs import common
from hamforget import config_checks, train
from hamforget.data import batches

# HAM10000's class counts (akiec, bcc, bkl, df, mel, nv, vasc), from the metadata.
HAM_COUNTS = np.array([327, 514, 1099, 115, 1113, 6705, 142])


def _labels(counts) -> jnp.ndarray:
  return jnp.asarray(np.repeat(np.arange(len(counts)), counts), jnp.int32)


@pytest.mark.parametrize("weighting", ["inverse_frequency", "effective_number"])
def test_weights_keep_the_loss_scale_and_ignore_absent_classes(weighting):
  counts = np.array([50, 0, 400, 10])  # class 1 forgotten: absent from the retain set
  weights = np.asarray(train.class_weights(_labels(counts), 4, weighting))
  np.testing.assert_allclose(np.sum(weights * counts), counts.sum(), rtol=1e-5)
  assert weights[1] == 0.0
  assert weights[3] > weights[0] > weights[2]  # rarer, heavier


def test_inverse_frequency_gives_each_class_the_same_total_weight():
  weights = np.asarray(train.class_weights(_labels(HAM_COUNTS), 7, "inverse_frequency"))
  totals = weights * HAM_COUNTS
  np.testing.assert_allclose(totals, totals.mean(), rtol=1e-5)


def test_effective_number_is_softer_than_inverse_frequency():
  inverse = train.class_weights(_labels(HAM_COUNTS), 7, "inverse_frequency")
  effective = train.class_weights(_labels(HAM_COUNTS), 7, "effective_number", beta=0.999)
  spread = lambda w: float(jnp.max(w) / jnp.min(w))
  assert 1.0 < spread(effective) < spread(inverse)
  assert train.class_weights(_labels(HAM_COUNTS), 7, "none") is None


def test_weighted_cross_entropy_weights_each_example_by_its_class():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  labels = jnp.array([0, 1, 1])
  plain = train.cross_entropy(logits, labels)
  weights = jnp.array([3.0, 0.5])
  np.testing.assert_allclose(train.weighted_cross_entropy(logits, labels, weights),
                             jnp.mean(plain * jnp.array([3.0, 0.5, 0.5])), rtol=1e-6)
  np.testing.assert_allclose(train.weighted_cross_entropy(logits, labels, None), plain.mean())


def test_class_balanced_batches_fill_every_class_alike():
  labels = _labels(HAM_COUNTS)
  data = batches.DeviceData(jnp.zeros((labels.size, 2, 2, 1), jnp.uint8), labels)
  balance = train.Balance(sampling="class_balanced")
  probabilities = balance.sampling_probabilities(labels, 7)
  draw = jax.jit(lambda step: batches.sample_batch(data, jax.random.key(0), step, 256,
                                                   None, probabilities)[1])
  drawn = np.concatenate([np.asarray(draw(step)) for step in range(40)])
  share = np.bincount(drawn, minlength=7) / drawn.size
  np.testing.assert_allclose(share, 1 / 7, atol=0.02)  # uniform: nv alone would be 0.67
  np.testing.assert_array_equal(draw(3), draw(3))  # a pure function of the step
  uniform = np.asarray(batches.sample_batch(data, jax.random.key(0), 0, 2048)[1])
  assert np.mean(uniform == 5) > 0.6


def test_validation_metrics_match_sklearn_over_the_present_classes():
  rng = np.random.default_rng(0)
  labels = rng.choice([0, 2, 3], 300, p=[0.7, 0.2, 0.1])  # class 1 absent (forgotten)
  logits = rng.normal(size=(300, 4)) + 2.0 * np.eye(4)[labels] * rng.integers(0, 2, (300, 1))
  got = train.validation_metrics(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  predicted = logits.argmax(-1)
  present = [0, 2, 3]
  np.testing.assert_allclose(got["balanced_accuracy"], np.mean(
      sk_metrics.recall_score(labels, predicted, labels=present, average=None)), rtol=1e-5)
  np.testing.assert_allclose(got["macro_f1"], sk_metrics.f1_score(
      labels, predicted, labels=present, average="macro"), rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], np.mean(predicted == labels), rtol=1e-6)


def test_always_the_majority_class_scores_chance_in_balanced_accuracy():
  labels = _labels(HAM_COUNTS)
  logits = jnp.zeros((labels.size, 7)).at[:, 5].set(1.0)
  got = train.validation_metrics(logits, labels)
  assert float(got["accuracy"]) > 0.66
  np.testing.assert_allclose(got["balanced_accuracy"], 1 / 7, rtol=1e-6)


def _fit_config(select_on: str, weighting: str = "none"):
  config = common.base_config()
  config.model.width = 0.0625
  config.train.batch_size = 32
  config.train.num_epochs = 4
  config.train.patience = 0
  config.train.eval_batch_size = 64
  config.train.select_on = select_on
  config.train.class_weighting = weighting
  return config


def test_fit_selects_the_epoch_of_the_best_chosen_metric():
  """The best epoch is the one with the highest balanced accuracy, as
  recorded in the history, and its variables are returned."""
  from hamforget.models import build_model  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  labels = rng.choice(3, 160, p=[0.8, 0.15, 0.05]).astype(np.int32)
  images = (labels[:, None, None, None] * 60 + rng.integers(0, 90, (160, 8, 8, 1)))
  data = batches.to_device(images.astype(np.uint8), labels)
  # One compile: selection on loss is what tests/test_train.py checks.
  config = _fit_config("balanced_accuracy", "inverse_frequency")
  model = build_model(config.model, 3)
  variables = train.init_variables(model, (8, 8, 1), jax.random.key(0))
  spec = train.make_fit_spec(model, config.train, config.augment, data.size)
  best, info = jax.jit(lambda v: train.fit_in_graph(spec, v, data, data, jax.random.key(1)))(
      variables)
  history = np.asarray(info["val_balanced_accuracy"])
  assert float(info["best_score"]) == pytest.approx(history.max(), rel=1e-6)
  again = train.validation_metrics(train.predict(model, best, data.images, 64), data.labels)
  assert float(again["balanced_accuracy"]) == pytest.approx(history.max(), rel=1e-5)


def test_streamed_weights_are_the_device_weights():
  """The grain path weighs by the stream's class counts as the device path by its labels."""
  labels = np.repeat(np.arange(3), [40, 8, 16]).astype(np.int32)
  stream = batches.StreamedData(iter(()), 1, class_counts=np.bincount(labels))
  np.testing.assert_allclose(train.weights_of_counts(stream.class_counts, "inverse_frequency"),
                             train.class_weights(jnp.asarray(labels), 3, "inverse_frequency"))


@pytest.mark.parametrize("key, value, message", [
    ("class_weighting", "balanced", "train.class_weighting='balanced'"),
    ("sampling", "oversample", "train.sampling='oversample'"),
    ("select_on", "f1", "train.select_on='f1'"),
    ("effective_number_beta", 1.0, "train.effective_number_beta=1.0"),
])
def test_bad_balance_keys_are_refused_by_name(key, value, message):
  config = common.base_config()
  config.train[key] = value
  with pytest.raises(config_checks.ConfigError, match=message.replace(".", r"\.")):
    config_checks.check_config(config)


def test_class_balanced_sampling_with_grain_is_refused_before_any_work():
  config = common.base_config()
  config.train.sampling = "class_balanced"
  config.data.pipeline = "grain"
  with pytest.raises(config_checks.ConfigError, match="needs data.pipeline='device'"):
    config_checks.check_config(config)


def test_config_checks_know_the_choices_train_accepts():
  assert config_checks.CLASS_WEIGHTINGS == train.CLASS_WEIGHTINGS
  assert config_checks.SAMPLINGS == train.SAMPLINGS
  assert config_checks.SELECTION_METRICS == train.SELECTION_METRICS
