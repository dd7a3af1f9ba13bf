"""Training core: sharded steps equal single-device steps, fits resume exactly."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from hamforget import checkpoint, sharding, train
from hamforget.data import batches
from hamforget.models import build_model


def _tiny_problem(n=128, size=8, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n).astype(np.int32)
  # Learnable: the class sets the brightness of the image.
  images = (labels[:, None, None, None] * 80 + rng.integers(0, 40, (n, size, size, 1)))
  return images.astype(np.uint8), labels


def _config():
  config = common.base_config()
  config.model.width = 0.0625
  config.train.batch_size = 32
  config.train.num_epochs = 3
  config.train.patience = 0
  config.train.eval_batch_size = 64
  return config


def _model_and_variables(config, classes=3, size=8):
  model = build_model(config.model, classes)
  return model, train.init_variables(model, (size, size, 1), jax.random.key(0))


def test_sharded_steps_match_single_device():
  assert jax.device_count() == 8, "conftest asks for 8 virtual CPU devices"
  config = _config()
  model, variables = _model_and_variables(config)
  images, labels = _tiny_problem()
  tx = train.make_optimizer(config.train, 4, 4)
  loss_fn = train.classification_loss(model, 32, batches.to_device(images, labels))

  @jax.jit
  def run(variables):
    return train.minimize(loss_fn, variables["params"], variables["batch_stats"], tx,
                          tx.init(variables["params"]), jax.random.key(1), 0, 3)

  single = run(variables)
  mesh = sharding.make_mesh(8)
  with jax.set_mesh(mesh):
    sharded = run(sharding.replicate(variables, mesh))
    # The step really ran data-parallel: the batch constraint is in the program.
    assert "sharding" in run.lower(variables).as_text()
  chex.assert_trees_all_close(single, sharded, rtol=2e-4, atol=2e-5)


def test_fit_and_fit_in_graph_agree_and_learn():
  config = _config()
  model, variables = _model_and_variables(config)
  images, labels = _tiny_problem()
  data = batches.to_device(images, labels)
  spec = train.make_fit_spec(model, config.train, config.augment, len(labels))
  host, host_info = train.fit(spec, variables, data, data, jax.random.key(2))
  graph, graph_info = jax.jit(functools.partial(train.fit_in_graph, spec))(
      variables, data, data, jax.random.key(2))
  chex.assert_trees_all_close(host, graph, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(host_info["val_loss"], graph_info["val_loss"], rtol=1e-5)
  _, accuracy = train.mean_loss_and_accuracy(model, host, data, 64)
  assert accuracy > 0.9  # chance is 1/3


def test_early_stopping_restores_best_and_stops():
  config = _config()
  config.train.num_epochs = 6
  config.train.patience = 1
  model, variables = _model_and_variables(config)
  images, labels = _tiny_problem()
  # Validation labels disagree with training labels: the better the fit, the
  # worse the validation loss, so early stopping must stop and roll back.
  train_data = batches.to_device(images, labels)
  data = batches.to_device(images, (labels + 1) % 3)
  spec = train.make_fit_spec(model, config.train, config.augment, len(labels))
  best, info = train.fit(spec, variables, train_data, data, jax.random.key(3))
  epochs = int(info["epochs"])
  val_loss = np.asarray(info["val_loss"])
  assert epochs < 6
  assert np.isnan(val_loss[epochs:]).all()
  best_loss, _ = train.mean_loss_and_accuracy(model, best, data, 64)
  # The returned variables are those of the best finite validation loss.
  # (An epoch that diverged to NaN never counts as an improvement.)
  finite = val_loss[np.isfinite(val_loss)]
  if finite.size:
    np.testing.assert_allclose(best_loss, finite.min(), rtol=1e-5)
    np.testing.assert_allclose(info["best_val_loss"], finite.min(), rtol=1e-6)
  else:  # diverged at once: the starting variables are the best there are
    chex.assert_trees_all_close(best, variables, rtol=0, atol=0)


def test_preempted_fit_resumes_to_the_same_parameters(tmp_path):
  config = _config()
  config.train.num_epochs = 4
  model, variables = _model_and_variables(config)
  images, labels = _tiny_problem()
  data = batches.to_device(images, labels)
  spec = train.make_fit_spec(model, config.train, config.augment, len(labels))
  uninterrupted, _ = train.fit(spec, variables, data, data, jax.random.key(4))

  first = checkpoint.FitCheckpoints(str(tmp_path / "ckpt"))
  train.fit(spec, variables, data, data, jax.random.key(4), checkpoints=first,
            stop_after_epochs=2)
  first.close()
  second = checkpoint.FitCheckpoints(str(tmp_path / "ckpt"))
  assert second.latest_step() == 2
  resumed, info = train.fit(spec, variables, data, data, jax.random.key(4), checkpoints=second)
  second.close()
  assert int(info["epochs"]) == 4
  chex.assert_trees_all_close(uninterrupted, resumed, rtol=0, atol=0)


def test_batches_cover_each_epoch_once():
  rng = jax.random.key(5)
  index = jnp.stack([batches.batch_indices(rng, s, 40, 8) for s in range(5)])
  assert sorted(np.asarray(index).ravel().tolist()) == list(range(40))
  next_epoch = jnp.stack([batches.batch_indices(rng, s, 40, 8) for s in range(5, 10)])
  assert not np.array_equal(np.asarray(index), np.asarray(next_epoch))


def test_predict_pads_to_fixed_batches():
  config = _config()
  model, variables = _model_and_variables(config)
  images, _ = _tiny_problem(n=70)
  logits = train.predict(model, variables, jnp.asarray(images), 32)
  direct = model.apply(variables, (images / 255.0 - 0.5) / 0.5, train=False)
  np.testing.assert_allclose(logits, direct, rtol=1e-4, atol=1e-5)


def test_streaming_fit_learns_and_resumes_with_the_iterator(tmp_path):
  config = _config()
  config.train.num_epochs = 3
  model, variables = _model_and_variables(config)
  images, labels = _tiny_problem()
  val = batches.to_device(images, labels)
  spec = train.make_fit_spec(model, config.train, config.augment, len(labels))
  stream = lambda: batches.stream(images, labels, 32, seed=0)
  assert stream().steps_per_epoch == len(labels) // 32
  uninterrupted, info = train.fit(spec, variables, stream(), val, jax.random.key(6))
  _, accuracy = train.mean_loss_and_accuracy(model, uninterrupted, val, 64)
  assert accuracy > 0.9

  first = checkpoint.FitCheckpoints(str(tmp_path / "ckpt"))
  train.fit(spec, variables, stream(), val, jax.random.key(6), checkpoints=first,
            stop_after_epochs=1)
  first.close()
  second = checkpoint.FitCheckpoints(str(tmp_path / "ckpt"))
  resumed, _ = train.fit(spec, variables, stream(), val, jax.random.key(6), checkpoints=second)
  second.close()
  chex.assert_trees_all_close(uninterrupted, resumed, rtol=0, atol=0)


def test_state_is_created_and_trained_replicated_over_the_mesh():
  from hamforget import original
  config = _config()
  config.train.num_epochs = 1
  images, labels = _tiny_problem(n=64)
  mesh = sharding.make_mesh(2)
  with jax.set_mesh(mesh):
    model = build_model(config.model, 3)
    variables = original.init_variables(model, (8, 8, 1), jax.random.key(0))
    data = batches.to_device(images, labels, mesh)
    spec = train.make_fit_spec(model, config.train, config.augment, len(labels))
    fitted, _ = train.fit(spec, variables, data, data, jax.random.key(1))
  for tree in (variables, fitted):
    for leaf in jax.tree.leaves(tree):
      assert leaf.sharding.mesh.shape == mesh.shape and leaf.sharding.is_fully_replicated


def test_auto_precision_follows_the_platform():
  from hamforget.models import compute_dtype  # pylint: disable=import-outside-toplevel
  assert compute_dtype("auto", "cpu") == jnp.float32
  assert compute_dtype("auto", "gpu") == compute_dtype("auto", "tpu") == jnp.bfloat16
  assert compute_dtype("auto") == jnp.float32  # these tests run on CPU
  assert compute_dtype("float16", "tpu") == jnp.float16  # a named dtype is kept


def test_bfloat16_path_learns_with_float32_parameters_loss_and_statistics():
  config = _config()
  config.model.dtype = "bfloat16"
  model, variables = _model_and_variables(config)
  images, labels = _tiny_problem()
  data = batches.to_device(images, labels)
  spec = train.make_fit_spec(model, config.train, config.augment, len(labels))
  fitted, _ = train.fit(spec, variables, data, data, jax.random.key(2))
  # Parameters and BatchNorm's running statistics stay float32; activations
  # are bfloat16; the logits (and so the loss and softmax) come back float32.
  assert {x.dtype for x in jax.tree.leaves(fitted)} == {jnp.dtype(jnp.float32)}
  logits, state = model.apply(fitted, batches.model_input(jnp.asarray(images[:4])), train=False,
                              mutable=["intermediates"])
  assert logits.dtype == jnp.float32
  assert {a.dtype for a in jax.tree.leaves(state["intermediates"])} == {jnp.dtype(jnp.bfloat16)}
  _, accuracy = train.mean_loss_and_accuracy(model, fitted, data, 64)
  assert accuracy > 0.9  # chance is 1/3, as for float32 (test_fit_and_fit_in_graph_agree...)
