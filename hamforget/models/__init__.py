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


def build_model(model_config, num_classes: int):
  """A classifier from the `model` config section.

  Keys: name (resnet10 | resnet18 | resnet34 | resnet50 | allcnn), width (channel
  multiplier), stem (imagenet | small; ResNets only), dtype (compute dtype),
  conv (auto | xla).
  """
  dtype = jnp.dtype(model_config.dtype)
  conv = _conv(model_config.get("conv", "auto"))
  name = model_config.name
  if name in _RESNETS:
    return _RESNETS[name](num_classes=num_classes, width=model_config.width,
                          stem=model_config.stem, dtype=dtype, conv=conv)
  if name == "allcnn":
    return AllCNN(num_classes=num_classes, width=model_config.width, dtype=dtype, conv=conv)
  raise ValueError(f"model.name={name!r}: expected one of {sorted(_RESNETS) + ['allcnn']}")


__all__ = ["AllCNN", "Generator", "ResNet", "build_model"]
