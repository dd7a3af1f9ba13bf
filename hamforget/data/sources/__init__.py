"""Data sources: one module per on-disk format, chosen by `config.data.name`.

Every source is a function with the same signature,

    load(root: str, *, image_size: int = 0, limit: int = 0, cache_dir: str = "",
         workers: int = 0) -> Dataset

which raises `DataError` (a ValueError) with one clear message for missing or
malformed input. Register a new one with `register(name, load)`.
"""

from __future__ import annotations

from typing import Callable

from hamforget.data import cache
from hamforget.data.errors import DataError
from hamforget.data.sources import dermamnist, ham10000, hmnist, mnist
from hamforget.data.sources.common import MNIST_CLASSES, SKIN_CLASSES, limit_index
from hamforget.data.types import Dataset

__all__ = ["DataError", "SOURCES", "SKIN_CLASSES", "MNIST_CLASSES", "load_dataset", "register",
           "limit_index"]

Loader = Callable[..., Dataset]

SOURCES: dict[str, Loader] = {
    "mnist_embedded": mnist.load_embedded,
    "mnist_idx": mnist.load_idx,
    "mnist_tfds": mnist.load_tfds,
    "ham10000": ham10000.load,
    "hmnist": hmnist.load,
    "dermamnist": dermamnist.load,
}

def register(name: str, load: Loader) -> None:
  """Adds a source (see the module docstring for the signature of `load`)."""
  if name in SOURCES:
    raise ValueError(f"data source {name!r} is already registered")
  SOURCES[name] = load


def load_dataset(data_config, cache_dir: str = "") -> Dataset:
  """Loads the dataset that `config.data` describes.

  Args:
    data_config: the `config.data` ConfigDict: name, root, image_size (0 =
      native), limit (0 = all), decode_workers (0 = all cores), cache_dir.
    cache_dir: decode-cache folder; "" = data_config.cache_dir, else
      $HAMFORGET_CACHE, else ~/.cache/hamforget.

  Returns:
    The Dataset: uint8 (N, S, S, C) images, at most `limit` of them.

  Raises:
    DataError: unknown source name, or missing or malformed input.
  """
  name = data_config.name
  if name not in SOURCES:
    raise DataError(f"unknown data source {name!r}; known: {', '.join(sorted(SOURCES))}")
  return SOURCES[name](
      str(data_config.root),
      image_size=int(data_config.image_size),
      limit=int(data_config.limit),
      cache_dir=cache.default_cache_dir(cache_dir or data_config.get("cache_dir", "")),
      workers=int(data_config.decode_workers))
