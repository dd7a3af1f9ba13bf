"""PatchConv computes what nn.Conv computes: outputs, input and kernel gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamforget.models import fast_conv
from hamforget.models.resnet import ResNet18

# Every pass on each path: all matmul, the per-shape choice, and XLA forward
# with a matmul kernel gradient chunked one image at a time (a 1-byte budget).
LOWERINGS = {
    "matmul": fast_conv.ALL_MATMUL,
    "auto": None,
    "chunked": fast_conv.Lowering(fast_conv.XLA, fast_conv.XLA, fast_conv.MATMUL, 1),
}

# (input shape NHWC, features, kernel, strides, padding)
SHAPES = [
    ((2, 9, 9, 1), 4, (3, 3), (1, 1), "SAME"),             # grey, odd size
    ((2, 8, 8, 3), 5, (3, 3), (2, 2), "SAME"),             # RGB, strided
    ((4, 7, 7, 8), 6, (1, 1), (2, 2), "SAME"),             # 1x1 strided projection, odd size
    ((2, 13, 13, 3), 4, (7, 7), (2, 2), [(3, 3), (3, 3)]),  # ImageNet stem
    ((2, 4, 4, 8), 8, (3, 3), (2, 2), "SAME"),             # strided to 2x2
    ((2, 7, 6, 4), 3, (3, 2), (2, 1), [(0, 1), (2, 0)]),   # asymmetric everything
    ((2, 6, 6, 4), 3, (3, 3), (1, 1), "VALID"),
]


def _outputs_and_grads(module, variables, x):
  """Output (B, Ho, Wo, F) and d(sum(y * r))/d(variables, x) for a fixed random r."""
  y, vjp = jax.vjp(module.apply, variables, x)
  # A fixed cotangent of mixed signs (jax.random would add its own compile time).
  r = jnp.cos(jnp.arange(y.size, dtype=y.dtype) * 0.7).reshape(y.shape)
  return y, vjp(r)


def _random_like(shapes, seed=0):
  """Variables with the given shapes drawn by numpy (jax.random compiles, slowly).

  Normal(0, 0.5), but BatchNorm variances are positive.
  """
  rng = np.random.default_rng(seed)

  def draw(path, s):
    value = rng.normal(0.0, 0.5, s.shape)
    if jax.tree_util.keystr(path).endswith("['var']"):
      value = np.abs(value) + 0.5
    return value.astype(s.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _inputs(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _run_fast_compiled(fn, *args):
  """fn(*args) jitted at LLVM -O0: compiling, not running, dominates these tests."""
  compiled = jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})
  return compiled(*args)


def _assert_close(a, b):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,features,kernel,strides,padding", SHAPES)
def test_conv_matches_nn_conv(shape, features, kernel, strides, padding):
  x = _inputs(shape)
  reference = nn.Conv(features, kernel, strides, padding=padding, use_bias=True)
  variables = _random_like(jax.eval_shape(reference.init, jax.random.key(1), x))

  def run(variables, x):  # one program for all lowerings: fewer compilations
    return {name: _outputs_and_grads(
        fast_conv.conv_for("cpu", lowering)(features, kernel, strides, padding=padding),
        variables, x) for name, lowering in LOWERINGS.items()}, _outputs_and_grads(
            reference, variables, x)

  results, expected = _run_fast_compiled(run, variables, x)
  for name, result in results.items():
    assert result[0].shape == expected[0].shape, name
    _assert_close(result, expected)


def test_same_parameters_and_initialisation_as_nn_conv():
  x = jnp.zeros((1, 8, 8, 3))
  ref = jax.jit(nn.Conv(16, (3, 3), (2, 2)).init)(jax.random.key(3), x)
  fast = jax.jit(fast_conv.PatchConv(16, (3, 3), (2, 2)).init)(jax.random.key(3), x)
  assert jax.tree.structure(ref) == jax.tree.structure(fast)
  _assert_close(ref, fast)


def test_conv_for_platform():
  assert fast_conv.conv_for("gpu") is nn.Conv
  assert fast_conv.conv_for("tpu") is nn.Conv
  assert fast_conv.conv_for("cpu") is fast_conv.PatchConv


def test_unsupported_cases_fall_back_to_lax():
  x = _inputs((2, 9, 9, 4))
  for kwargs in ({"kernel_dilation": 2}, {"feature_group_count": 2}):
    ref = nn.Conv(4, (3, 3), **kwargs)
    variables = _random_like(jax.eval_shape(ref.init, jax.random.key(1), x))
    fast = fast_conv.PatchConv(4, (3, 3), **kwargs)
    _assert_close(*_run_fast_compiled(
        lambda v, x: (fast.apply(v, x), ref.apply(v, x)), variables, x))


def test_cpu_lowering_avoids_pathological_xla_shapes():
  small = fast_conv.cpu_lowering((64, 2, 2, 512), (3, 3, 512, 512), (1, 1), ((1, 1), (1, 1)))
  assert small == fast_conv.ALL_MATMUL
  projection = fast_conv.cpu_lowering((64, 16, 16, 64), (1, 1, 64, 128), (2, 2), ((0, 0), (0, 0)))
  assert projection.kernel_grad == fast_conv.MATMUL
  # Gradients are matmuls on ordinary 3x3 layers too: XLA:CPU's gradient
  # convolutions are ~10x slower inside lax.scan, where all training runs.
  ordinary = fast_conv.cpu_lowering((128, 28, 28, 8), (3, 3, 8, 8), (1, 1), ((1, 1), (1, 1)))
  assert (ordinary.forward, ordinary.input_grad, ordinary.kernel_grad) == (
      fast_conv.XLA, fast_conv.MATMUL, fast_conv.MATMUL)


def test_resnet18_logits_and_grads_match():
  x = _inputs((4, 16, 16, 3))
  labels = jnp.arange(4) % 10
  reference = ResNet18(num_classes=10, width=0.125, stem="small")
  fast = ResNet18(num_classes=10, width=0.125, stem="small", conv=fast_conv.conv_for("cpu"))
  shapes = jax.eval_shape(reference.init, jax.random.key(1), x[:1])
  assert jax.tree.structure(shapes) == jax.tree.structure(
      jax.eval_shape(fast.init, jax.random.key(1), x[:1]))
  # Random rather than initialised parameters: the zero-initialised last BN
  # scale of each block would make the gradients of its conv identically zero.
  variables = _random_like(shapes)

  def run(model):
    def loss_fn(params):
      logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"])
      loss = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])
      return loss, (logits, updates["batch_stats"])
    return _run_fast_compiled(jax.grad(loss_fn, has_aux=True), variables["params"])

  grads_ref, (logits_ref, stats_ref) = run(reference)
  grads, (logits, stats) = run(fast)
  _assert_close((logits, stats, grads), (logits_ref, stats_ref, grads_ref))


def test_chunked_kernel_grad_on_a_data_mesh():
  """With the batch sharded over devices, chunks stay within each device's share."""
  n = min(4, jax.device_count())
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])
  x = jax.device_put(_inputs((4 * n, 6, 6, 3)),
                     jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  reference = nn.Conv(4, (3, 3), use_bias=False)
  fast = fast_conv.conv_for("cpu", LOWERINGS["chunked"])(4, (3, 3), use_bias=False)
  variables = _random_like(jax.eval_shape(reference.init, jax.random.key(1), x))
  with jax.set_mesh(mesh):
    result, expected = _run_fast_compiled(
        lambda v, x: (_outputs_and_grads(fast, v, x), _outputs_and_grads(reference, v, x)),
        variables, x)
  _assert_close(result, expected)
