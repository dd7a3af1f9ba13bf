"""The pieces the operators are built from, each checked alone: gkt's gate,
soft labels and attention maps, the learned noise's direction and space,
SalUn's saliency mask and SCRUB's schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learnable
from hamforget import train
from hamforget.unlearn import common, gkt, neggrad_plus, salun, scrub

FORGET = jnp.array([1], jnp.int32)


def _logits_with(forget_probability: float, num_classes: int = 4) -> np.ndarray:
  """Logits whose softmax gives class 1 `forget_probability`, the rest equal shares."""
  probs = np.full(num_classes, (1 - forget_probability) / (num_classes - 1))
  probs[1] = forget_probability
  return np.log(probs)


def test_gate_passes_only_samples_the_teacher_does_not_tie_to_a_forget_class():
  logits = jnp.stack([_logits_with(p) for p in (0.001, 0.009, 0.011, 0.5, 0.99)])
  gate = gkt.gate_of(logits, FORGET, threshold=0.01)
  np.testing.assert_array_equal(gate, [1, 1, 0, 0, 0])
  # Two forget classes: the larger of their probabilities decides.
  two = gkt.gate_of(jnp.log(jnp.array([[0.005, 0.02, 0.975], [0.005, 0.005, 0.99]])),
                    jnp.array([0, 1]), threshold=0.01)
  np.testing.assert_array_equal(two, [0, 1])


def test_only_gated_fills_the_batch_with_gated_samples_alone():
  gate = jnp.array([0, 1, 0, 1, 1, 0], jnp.float32)
  keep = np.asarray(gkt.only_gated(gate))
  assert keep.shape == (6,) and set(keep) == {1, 3, 4}
  assert np.bincount(keep, minlength=6)[[1, 3, 4]].tolist() == [2, 2, 2]
  # Nothing gated: a placeholder batch (the student step then moves nothing).
  assert set(np.asarray(gkt.only_gated(jnp.zeros(6)))) == {0}


def test_soft_labels_drop_the_forget_classes_and_keep_the_rest_in_proportion():
  logits = jnp.array([[2.0, 1.0, 0.0, -1.0]])
  probs = np.asarray(jax.nn.softmax(gkt.retained_logits(logits, FORGET)))
  assert probs[0, 1] == 0.0
  kept = np.exp([2.0, 0.0, -1.0])
  np.testing.assert_allclose(probs[0, [0, 2, 3]], kept / kept.sum(), rtol=1e-6)
  # The KL to them stays finite whatever the student says about the forget class.
  student = jnp.array([[0.0, 50.0, 0.0, 0.0]])
  kl = common.kl_divergence_of_logits(gkt.retained_logits(logits, FORGET), student, 1.0)
  assert np.isfinite(np.asarray(kl)).all() and float(kl[0]) > 10


def test_attention_map_is_the_normalised_mean_square_over_channels():
  activations = jax.random.normal(jax.random.key(0), (3, 4, 5, 6))
  maps = np.asarray(gkt.attention(activations))
  expected = np.mean(np.square(np.asarray(activations)), axis=-1).reshape(3, -1)
  expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
  assert maps.shape == (3, 20)
  np.testing.assert_allclose(maps, expected, rtol=1e-5)
  # Where a network attends, not how loudly: scale and channel order do not matter.
  np.testing.assert_allclose(gkt.attention(7.0 * activations[..., ::-1]), maps, rtol=1e-5)


@pytest.fixture(scope="module")
def small_model():
  problem = learnable.problem()
  return problem.model, problem.variables, problem.retain.images.shape[1:]


def test_noise_moves_each_label_s_loss_its_own_way(small_model):
  model, variables, image_shape = small_model
  labels = jnp.array([0, 0, 0, 0, 2, 2, 2, 2], jnp.int32)
  direction = jnp.array([-1.0] * 4 + [1.0] * 4)  # maximise label 0's error, minimise label 2's
  noise, metrics = jax.jit(
      lambda: common.learn_noise(model, variables, labels, direction, image_shape, 100, 0.1,
                                 0.0, jax.random.key(1), "pixels"))()
  logits, _ = train.apply_model(model, variables, noise, train=False)
  losses = np.asarray(train.cross_entropy(logits, labels))
  max_curve, min_curve = np.asarray(metrics["max_cross_entropy"]), np.asarray(
      metrics["min_cross_entropy"])
  assert max_curve[-1] > max_curve[0] and losses[:4].mean() > 2.0
  assert min_curve[-1] < min_curve[0] and losses[4:].mean() < 0.1


@pytest.mark.parametrize("space, rest", [("pixels", -1.0), ("normalized", 0.0)])
def test_the_norm_pulls_noise_to_the_space_s_zero(small_model, space, rest):
  """With no loss term (direction 0), only the norm acts: "pixels" noise goes
  to black (-1 once normalised as the images are), "normalized" noise to the
  normalisation mean (0). Sigmoid-bounded pixels approach black ever more
  slowly (the sigmoid's slope vanishes while Adam's second moment remembers
  the early, large gradients): from ~1 away at the start (sigmoid(normal) is
  grey, 0), 300 steps bring every pixel within 0.15 of black."""
  model, variables, image_shape = small_model
  labels = jnp.zeros(4, jnp.int32)
  noise, _ = jax.jit(lambda: common.learn_noise(
      model, variables, labels, jnp.zeros(4), image_shape, 300, 0.05, 1.0, jax.random.key(2),
      space))()
  distance = np.abs(np.asarray(noise) - rest)
  assert distance.max() < 0.15, (distance.mean(), distance.max())


def test_pixel_noise_stays_in_the_range_of_real_inputs(small_model):
  """A long, fast error-maximising ascent: "pixels" noise stays inside the
  normalised image range [-1, 1]; "normalized" noise (unbounded) leaves it."""
  model, variables, image_shape = small_model
  labels = jnp.zeros(8, jnp.int32)
  learn = lambda space: jax.jit(lambda: common.learn_noise(
      model, variables, labels, -jnp.ones(8), image_shape, 60, 0.5, 0.0, jax.random.key(3),
      space))()
  bounded, metrics = learn("pixels")
  assert float(jnp.min(bounded)) >= -1.0 and float(jnp.max(bounded)) <= 1.0
  assert metrics["max_cross_entropy"][-1] > metrics["max_cross_entropy"][0]
  unbounded, _ = learn("normalized")
  assert float(jnp.max(jnp.abs(unbounded))) > 2.0


@pytest.mark.parametrize("trainable", ["head", "all"])
def test_fit_classifier_moves_only_the_parameters_it_is_told_to(small_model, trainable):
  """trainable="head": the logits layer learns, every other parameter keeps
  its value to the bit; "all": the body moves too."""
  model, variables, image_shape = small_model
  images = jax.random.uniform(jax.random.key(4), (16, *image_shape), minval=-1.0, maxval=1.0)
  labels = jnp.arange(16, dtype=jnp.int32) % 3
  sample = lambda rng, step: (images, labels, jnp.zeros(16, bool))
  fitted, metrics = jax.jit(lambda: common.fit_classifier(
      model, variables, sample, 20, 1e-2, False, jax.random.key(5), trainable))()
  head = [k for k in variables["params"] if k.startswith("Dense_")][-1]
  moved = {key: not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(variables["params"][key]), jax.tree.leaves(fitted["params"][key])))
           for key in variables["params"]}
  assert moved[head] and metrics["loss"][-1] < metrics["loss"][0]
  body_moved = [key for key in moved if key != head and moved[key]]
  assert (not body_moved) if trainable == "head" else body_moved


def test_an_unknown_trainable_part_is_refused(small_model):
  _, variables, _ = small_model
  with pytest.raises(ValueError, match="trainable='body'"):
    common.trainable_mask(variables["params"], "body")


def test_saliency_mask_selects_the_largest_gradients_and_never_a_zero_one():
  saliency = {"a": jnp.array([0.0, 0.0, 0.0, 0.1]), "b": jnp.array([[5.0, 0.2], [3.0, 0.0]])}
  mask = salun.saliency_mask(saliency, ratio=0.5)
  np.testing.assert_array_equal(mask["a"], [0, 0, 0, 1])
  np.testing.assert_array_equal(mask["b"], [[1, 1], [1, 0]])
  # Mostly-zero saliency: the quantile is 0, yet zeros stay out.
  sparse = salun.saliency_mask({"a": jnp.array([0.0, 0.0, 0.0, 0.0, 1.0, 2.0])}, ratio=0.5)
  np.testing.assert_array_equal(sparse["a"], [0, 0, 0, 0, 1, 1])


def test_scrub_schedule_alternates_max_and_min_passes():
  is_max, phase_step = scrub.schedule(num_epochs=3, msteps=2, max_steps=2, min_steps=3)
  # Epochs 0 and 1: a max pass then a min pass; epoch 2: a min pass alone.
  np.testing.assert_array_equal(is_max, [1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0])
  # Each phase walks its own data stream without restarting.
  np.testing.assert_array_equal(phase_step, [0, 1, 0, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8])
  assert phase_step.dtype == np.int32


def test_neggrad_ascent_stops_at_the_bound_example_by_example():
  forget_losses = jnp.array([0.1, 1.0, 3.0, 9.0])
  bound = 2.0
  value, (retain_grad, forget_grad) = jax.value_and_grad(
      neggrad_plus.objective, argnums=(0, 1))(jnp.float32(0.5), forget_losses, 0.9, bound)
  np.testing.assert_allclose(value, 0.9 * 0.5 - 0.1 * (0.1 + 1.0 + 2.0 + 2.0) / 4, rtol=1e-6)
  np.testing.assert_allclose(retain_grad, 0.9, rtol=1e-6)
  # Below the bound each example pushes its loss up (gradient -0.1/4); past it, nothing.
  np.testing.assert_allclose(forget_grad, [-0.025, -0.025, 0.0, 0.0], rtol=1e-6)
  # Unbounded (the reference): every example keeps pushing.
  unbounded = jax.grad(neggrad_plus.objective, argnums=1)(0.5, forget_losses, 0.9, jnp.inf)
  np.testing.assert_allclose(unbounded, [-0.025] * 4, rtol=1e-6)


def test_a_runs_operator_program_is_compiled_once_per_shape_and_serves_every_value():
  import types  # pylint: disable=import-outside-toplevel
  from hamforget import operators  # pylint: disable=import-outside-toplevel
  problem = learnable.problem()
  data = types.SimpleNamespace(
      device={"retain": problem.retain, "forget": problem.forget, "unlearn_val": problem.val,
              "val": problem.val},
      request=problem.request, num_classes=learnable.NUM_CLASSES,
      image_shape=problem.retain.images.shape[1:])
  config = problem.config.copy_and_resolve_references()
  config.unlearn = {"neggrad_plus": {"num_epochs": 0.25, "learning_rate": 0.01}}

  def run(learning_rate, seed=0):
    config.unlearn.neggrad_plus.learning_rate = learning_rate
    return operators.run_operator("neggrad_plus", config, problem.model, problem.variables, data,
                                  jax.random.key(seed))

  operators._PROGRAMS.clear()  # pylint: disable=protected-access
  first_variables, _, first = run(0.01)
  assert first["compile_s"] > 0
  # Another learning rate, another key: the same program, not traced again.
  other_variables, _, again = run(0.05, seed=1)
  assert again["compile_s"] == 0
  assert len(operators._PROGRAMS) == 1  # pylint: disable=protected-access
  # ... and it computes what a fresh compilation computes.
  operators._PROGRAMS.clear()  # pylint: disable=protected-access
  fresh_variables, _, fresh = run(0.05, seed=1)
  assert fresh["compile_s"] > 0
  jax.tree.map(np.testing.assert_array_equal, other_variables, fresh_variables)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, first_variables, other_variables)))
  # A static setting (a step count) is another program.
  config.unlearn.neggrad_plus.num_epochs = 0.5
  assert run(0.05)[2]["compile_s"] > 0
