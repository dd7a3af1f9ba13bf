"""Convolutions lowered as patches + matmul where XLA's CPU convolutions are slow.

XLA's CPU backend runs some convolution shapes through slow generic loops: a
3x3 convolution whose input or output is smaller than the kernel (2x2x512 in
the last ResNet-18 stage at 64x64 inputs) took 1.8 s forward and 0.6 s for the
input gradient where the same FLOPs as a matmul take 10 ms; the kernel
gradient of a 1x1 strided projection ran at 6-40 GFLOP/s against ~60-120 as a
matmul. Other shapes (3x3 on >= 7x7 maps with >= 64 channels) are faster as
XLA convolutions forward. So the lowering is chosen per layer shape and per
pass (forward, input gradient, kernel gradient), inside one `custom_vjp`.

Use:
  conv = fast_conv.conv_for(jax.default_backend())   # nn.Conv off CPU
  model = ResNet18(num_classes=10, conv=conv)

Data parallelism: the kernel-gradient matmul is chunked over each device's
share of the batch, which it reads from the mesh in context
(`hamforget.sharding.data_size()`): jit sharded steps under `jax.set_mesh`,
as the launcher does. Without one, a sharded batch still gives correct
gradients, but XLA gathers the batch for the chunk loop.

`PatchConv` is `nn.Conv` with a different `conv_general_dilated`: the same
parameters ("kernel" (kh, kw, cin, cout), "bias"), the same initialisers and
the same automatic names (`Conv_0`, ...), so variables and checkpoints are
interchangeable with `nn.Conv` and outputs agree to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from hamforget import sharding

XLA = "xla"
MATMUL = "matmul"

# Images per chunk of the kernel-gradient matmul are chosen so that one chunk's
# patches (B_chunk * Ho * Wo * kh*kw*cin floats) stay near this many bytes:
# the whole-batch patch matrix of a 28x28x64 layer at batch 128 is 231 MB and
# the matmul that reduces it runs from memory at ~25 GFLOP/s; chunks that stay
# in cache ran it at 30-120 GFLOP/s.
_KERNEL_GRAD_CHUNK_BYTES = 2 * 2**20

_NHWC = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class Lowering:
  """How one convolution layer is computed in each pass.

  Attributes:
    forward: "xla" (lax.conv_general_dilated) or "matmul" (patches @ kernel).
    input_grad: "xla" (XLA's transposed convolution) or "matmul"
      (dy @ kernel^T, then the patches scattered back).
    kernel_grad: "xla" or "matmul" (patches^T @ dy).
    kernel_grad_chunk_bytes: bound on the patch matrix of one chunk of
      images in the kernel-gradient matmul, whose chunks are summed in a loop
      (each device's share of the batch is chunked); 0: the whole batch in one
      matmul.
  """
  forward: str = XLA
  input_grad: str = XLA
  kernel_grad: str = XLA
  kernel_grad_chunk_bytes: int = 0

  @property
  def all_xla(self) -> bool:
    return self.forward == self.input_grad == self.kernel_grad == XLA


ALL_XLA = Lowering()
ALL_MATMUL = Lowering(MATMUL, MATMUL, MATMUL, 0)


def _chunk_size(batch: int, bytes_per_image: int, budget: int) -> int:
  """The largest divisor of `batch` whose patches fit `budget` bytes (>= 1)."""
  best = 1
  for c in range(1, batch + 1):
    if batch % c == 0 and c * bytes_per_image <= budget:
      best = c
  return best


def cpu_lowering(input_shape: Sequence[int], kernel_shape: Sequence[int],
                 strides: Sequence[int], padding: Sequence[tuple[int, int]]) -> Lowering:
  """The fastest lowering on XLA:CPU for one layer, from per-shape measurements.

  Args:
    input_shape: (B, H, W, Cin).
    kernel_shape: (kh, kw, Cin, Cout).
    strides: (sh, sw).
    padding: ((lo, hi), (lo, hi)) explicit spatial padding.

  Returns:
    The Lowering to use (the measured rules are in docs/performance.md).
  """
  _, h, w, cin = input_shape
  kh, kw, _, _ = kernel_shape
  ho = (h + sum(padding[0]) - kh) // strides[0] + 1
  wo = (w + sum(padding[1]) - kw) // strides[1] + 1
  chunk = _KERNEL_GRAD_CHUNK_BYTES
  if kh * kw == 1:
    # 1x1 (projection) convs are plain matmuls; XLA's kernel gradient for the
    # strided ones ran at 6-40 GFLOP/s, the matmul at 60-120.
    return Lowering(MATMUL, MATMUL, MATMUL, 0)
  if min(h, w, ho, wo) < max(kh, kw):
    # Maps smaller than the kernel hit XLA's slow generic loops (2x2x512: 1.8 s
    # forward, 0.6 s input gradient, vs 10 ms and 4 ms as matmuls).
    return Lowering(MATMUL, MATMUL, MATMUL, 0)
  if cin < 8:
    # Stems: a 7x7 conv on RGB is faster in XLA (its patch matrix is 49x wider
    # than the image); a 3x3 conv on one or three channels is faster as matmul.
    # The kernel gradient is a matmul whatever the size: see below.
    lowering = XLA if kh * kw > 9 else MATMUL
    return Lowering(lowering, XLA, MATMUL, chunk)
  # 3x3 convs on >= 7x7 maps: XLA's forward is fast (100-250 GFLOP/s). Both
  # gradients are matmuls: XLA:CPU's gradient convolutions run up to 10x
  # slower inside a while loop (lax.scan) than at the top level of a program,
  # and every training loop of this project is a scan. Measured on the MNIST
  # model (ResNet-18 width 1/8, 28x28, batch 128) in a scan of 5 steps: XLA
  # gradients 26 img/s, matmul kernel gradient 187, both matmul 532.
  return Lowering(XLA, MATMUL, MATMUL, chunk)


# ----------------------------------------------------------------------------
# The lowerings.

def _xla_conv(x, kernel, strides, padding, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _patches(x, kernel_hw, strides, padding):
  """im2col: (B, H, W, C) -> (B, Ho, Wo, kh*kw*C), taps major, channels minor.

  Built from strided slices and one concat: its transpose (used for the input
  gradient) is a sum of pads, which XLA fuses, unlike the transpose of
  `lax.conv_general_dilated_patches`, itself a convolution (10x slower here).
  The column order matches `kernel.reshape(kh * kw * C, Cout)`.
  """
  (kh, kw), (sh, sw) = kernel_hw, strides
  b, _, _, c = x.shape
  zero = jnp.zeros((), x.dtype)
  xp = lax.pad(x, zero, ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  taps = [lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _matmul_conv(x, kernel, strides, padding, precision):
  kh, kw, cin, cout = kernel.shape
  cols = _patches(x, (kh, kw), strides, padding)
  return lax.dot_general(cols, kernel.reshape(kh * kw * cin, cout),
                         (((3,), (0,)), ((), ())), precision=precision)


def _matmul_input_grad(x_shape, kernel, dy, strides, padding, precision):
  kh, kw, cin, cout = kernel.shape
  dcols = lax.dot_general(dy, kernel.reshape(kh * kw * cin, cout),
                          (((3,), (1,)), ((), ())), precision=precision)
  # The transpose of im2col scatters each column back onto its pixel.
  (dx,) = jax.linear_transpose(
      lambda z: _patches(z, (kh, kw), strides, padding),
      jax.ShapeDtypeStruct(x_shape, dy.dtype))(dcols)
  return dx


def _matmul_kernel_grad(x, kernel_shape, dy, strides, padding, precision, chunk_bytes):
  kh, kw, cin, cout = kernel_shape
  b = x.shape[0]
  ho, wo = dy.shape[1:3]
  # Chunks are taken within each device's share of the batch: with the batch
  # sharded over the `data` mesh axis, device d holds rows d * b/D ... and the
  # layout (D, chunks, chunk, ...) keeps every chunk on one device, so the
  # loop runs locally and the D partial sums meet in one all-reduce at the end.
  d = sharding.data_size()
  if b % d:
    d = 1
  per_device = b // d
  chunk = _chunk_size(per_device, ho * wo * kh * kw * cin * x.dtype.itemsize, chunk_bytes)
  if not chunk_bytes or chunk >= per_device:
    cols = _patches(x, (kh, kw), strides, padding)
    g = lax.dot_general(cols, dy, (((0, 1, 2), (0, 1, 2)), ((), ())), precision=precision,
                        preferred_element_type=jnp.float32)
    return g.reshape(kernel_shape)

  n = per_device // chunk
  xs = x.reshape(d, n, chunk, *x.shape[1:])
  dys = dy.reshape(d, n, chunk, *dy.shape[1:])

  def body(j, acc):
    xc = lax.dynamic_index_in_dim(xs, j, axis=1, keepdims=False)
    dyc = lax.dynamic_index_in_dim(dys, j, axis=1, keepdims=False)
    cols = _patches(xc.reshape(d * chunk, *x.shape[1:]), (kh, kw), strides, padding)
    cols = cols.reshape(d, chunk, *cols.shape[1:])
    return acc + lax.dot_general(cols, dyc, (((1, 2, 3), (1, 2, 3)), ((0,), (0,))),
                                 precision=precision, preferred_element_type=jnp.float32)

  acc = lax.fori_loop(0, n, body, jnp.zeros((d, kh * kw * cin, cout), jnp.float32))
  return acc.sum(0).reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, kernel, strides, padding, lowering, precision):
  if lowering.forward == MATMUL:
    return _matmul_conv(x, kernel, strides, padding, precision)
  return _xla_conv(x, kernel, strides, padding, precision)


def _conv_fwd(x, kernel, strides, padding, lowering, precision):
  # Saves the input rather than the patches: recomputing them in the backward
  # pass costs a copy but keeps activation memory at that of nn.Conv.
  return _conv(x, kernel, strides, padding, lowering, precision), (x, kernel)


def _conv_bwd(strides, padding, lowering, precision, residuals, dy):
  x, kernel = residuals
  if lowering.input_grad == MATMUL:
    dx = _matmul_input_grad(x.shape, kernel, dy, strides, padding, precision)
  else:
    _, vjp = jax.vjp(lambda z: _xla_conv(z, kernel, strides, padding, precision), x)
    (dx,) = vjp(dy)
  if lowering.kernel_grad == MATMUL:
    dk = _matmul_kernel_grad(x, kernel.shape, dy, strides, padding, precision,
                             lowering.kernel_grad_chunk_bytes)
  else:
    _, vjp = jax.vjp(lambda k: _xla_conv(x, k, strides, padding, precision), kernel)
    (dk,) = vjp(dy)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
           padding: str | Sequence[tuple[int, int]], lowering: Lowering | None = None,
           precision: Any = None) -> jax.Array:
  """A 2-D NHWC/HWIO convolution, lowered per `lowering` (default: `cpu_lowering`).

  Args:
    x: (B, H, W, Cin).
    kernel: (kh, kw, Cin, Cout).
    strides: (sh, sw).
    padding: "SAME", "VALID" or ((lo, hi), (lo, hi)).
    lowering: a Lowering, or None to pick one from the shapes.
    precision: as for lax.conv_general_dilated.

  Returns:
    (B, Ho, Wo, Cout), equal to lax.conv_general_dilated up to float rounding.
  """
  strides = tuple(int(s) for s in strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if lowering is None:
    lowering = cpu_lowering(x.shape, kernel.shape, strides, padding)
  if lowering.all_xla:
    return _xla_conv(x, kernel, strides, padding, precision)
  if isinstance(precision, list):
    precision = tuple(precision)
  return _conv(x, kernel, strides, padding, lowering, precision)


def patch_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                               rhs_dilation=None, dimension_numbers=None,
                               feature_group_count=1, batch_group_count=1,
                               precision=None, preferred_element_type=None,
                               lowering: Lowering | None = None):
  """Drop-in for lax.conv_general_dilated (as nn.Conv calls it) using `conv2d`.

  Cases outside 2-D NHWC/HWIO convolutions without dilation or groups go to
  lax.conv_general_dilated unchanged.
  """
  dilated = any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ()))
  nhwc = (lhs.ndim == 4 and dimension_numbers is not None and
          lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  plain = (feature_group_count == 1 and batch_group_count == 1 and preferred_element_type is None)
  if dilated or not nhwc or not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  return conv2d(lhs, rhs, window_strides, padding, lowering, precision)


class Conv(nn.Conv):
  """nn.Conv lowered by `cpu_lowering` per layer shape: the CPU fast path.

  Named `Conv` (exported as `PatchConv`) because Linen derives automatic
  submodule names from the class name: this keeps them `Conv_0`, `Conv_1`, ...
  so that variables and checkpoints are interchangeable with nn.Conv.
  Attributes, parameters and initialisers are nn.Conv's.
  """
  conv_general_dilated: Any = patch_conv_general_dilated


PatchConv = Conv


def conv_for(platform: str, lowering: Lowering | None = None):
  """The convolution module to build models with on `platform`.

  Args:
    platform: jax.default_backend(): "cpu", "gpu", "tpu", ...
    lowering: force one Lowering for every layer (tests, benchmarks); None
      picks per layer shape.

  Returns:
    nn.Conv on accelerators (cuDNN and the TPU compiler are fast), PatchConv
    on CPU.
  """
  if platform != "cpu":
    return nn.Conv
  if lowering is None:
    return PatchConv
  return functools.partial(
      PatchConv, conv_general_dilated=functools.partial(patch_conv_general_dilated,
                                                        lowering=lowering))

