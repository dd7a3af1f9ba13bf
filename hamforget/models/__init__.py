"""Model registry: `build_model(config.model, num_classes)` -> a Flax Linen module."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hamforget.models import fast_conv
from hamforget.models.allcnn import AllCNN
from hamforget.models.generator import Generator
from hamforget.models.resnet import ResNet, ResNet10, ResNet18, ResNet34, ResNet50

_RESNETS = {"resnet10": ResNet10, "resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50}


def _conv(choice: str):
  """The convolution module: "auto" picks the fastest lowering for the backend
  (patches + matmul where XLA:CPU's convolutions are slow, see fast_conv.py);
  "xla" is plain `nn.Conv` (compiles about twice as fast: better for tiny
  models whose runs are dominated by compilation)."""
  if choice == "auto":
    return fast_conv.conv_for(jax.default_backend())
  if choice == "xla":
    return nn.Conv
  raise ValueError(f"model.conv={choice!r}: expected 'auto' or 'xla'")


# Platforms whose matrix units run bfloat16 natively: "auto" computes in it there.
_BFLOAT16_PLATFORMS = ("gpu", "tpu")


def compute_dtype(name: str, platform: str | None = None) -> jnp.dtype:
  """The compute dtype `model.dtype` names; "auto" follows the platform.

  "auto" is bfloat16 on GPU and TPU (twice the matrix throughput, half the
  activation memory) and float32 on CPU, where bfloat16 is emulated and
  slower. Parameters, the loss, the softmax and BatchNorm's statistics stay
  float32 whatever the compute dtype (models cast logits to float32;
  BatchNorm reduces in float32).

  Args:
    name: "auto" or a dtype name ("float32", "bfloat16", "float16").
    platform: "cpu", "gpu" or "tpu"; default: JAX's default backend.
  """
  if name == "auto":
    platform = platform or jax.default_backend()
    return jnp.dtype(jnp.bfloat16 if platform in _BFLOAT16_PLATFORMS else jnp.float32)
  return jnp.dtype(name)


def build_model(model_config, num_classes: int):
  """A classifier from the `model` config section.

  Keys: name (resnet10 | resnet18 | resnet34 | resnet50 | allcnn), width (channel
  multiplier), stem (imagenet | small; ResNets only), dtype (compute dtype,
  `compute_dtype`),
  conv (auto | xla).
  """
  dtype = compute_dtype(model_config.dtype)
  conv = _conv(model_config.get("conv", "auto"))
  name = model_config.name
  if name in _RESNETS:
    return _RESNETS[name](num_classes=num_classes, width=model_config.width,
                          stem=model_config.stem, dtype=dtype, conv=conv)
  if name == "allcnn":
    return AllCNN(num_classes=num_classes, width=model_config.width, dtype=dtype, conv=conv)
  raise ValueError(f"model.name={name!r}: expected one of {sorted(_RESNETS) + ['allcnn']}")


__all__ = ["AllCNN", "Generator", "ResNet", "build_model", "compute_dtype"]
