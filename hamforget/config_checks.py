"""Checks a whole experiment config before any data is loaded or model trained.

    config_checks.check_config(config, workdir)   # raises ConfigError

A wrong value must cost seconds, not the hour of training that precedes the
step that reads it, so every key the run will read is checked here, up front,
and every problem found is reported in one message (one round of fixes): the
key, the value given, and what is allowed. Imports no JAX: the launcher calls
it before JAX starts.

What can only be checked against the data (a batch larger than the split it
samples from) is checked by `check_sizes` once the splits exist.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Callable, Mapping

from absl import logging

from hamforget.data import forget, sources
from hamforget.data.sources import dermamnist, ham10000, hmnist, mnist
from hamforget.unlearn import catalog

# The fixed sets the JAX side accepts (hamforget.models, hamforget.train,
# hamforget.original); tests/test_bad_input.py checks that they agree.
MODEL_NAMES = ("resnet10", "resnet18", "resnet34", "resnet50", "allcnn")
STEMS = ("imagenet", "small")
DTYPES = ("auto", "float32", "bfloat16", "float16")
CONVS = ("auto", "xla")
OPTIMIZERS = ("sgd", "adamw")
PIPELINES = ("device", "grain")
# The same tuples as hamforget.train's (this module runs before JAX is imported).
CLASS_WEIGHTINGS = ("none", "inverse_frequency", "effective_number")
SAMPLINGS = ("uniform", "class_balanced")
SELECTION_METRICS = ("loss", "balanced_accuracy", "macro_f1")

# Sources that read a file or folder named by data.root ("" is not a path for
# them); mnist_tfds falls back to $TFDS_DATA_DIR, mnist_embedded reads none.
NEEDS_ROOT = ("ham10000", "hmnist", "dermamnist", "mnist_idx")
# Each source's class names, to check forget.classes before loading anything.
CLASS_NAMES = {"mnist_embedded": mnist.CLASS_NAMES, "mnist_idx": mnist.CLASS_NAMES,
               "mnist_tfds": mnist.CLASS_NAMES, "ham10000": ham10000.CLASS_NAMES,
               "hmnist": hmnist.CLASS_NAMES, "dermamnist": dermamnist.CLASS_NAMES}


class ConfigError(ValueError):
  """A config value is out of range, unknown, or does not apply. The message
  lists every such key with its value and what is allowed."""


# ----------------------------------------------------------------------------
# One value.

def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(lower: float, upper: float = math.inf, *, integer: bool = False,
            lower_open: bool = False, upper_open: bool = True) -> tuple[Callable, str]:
  """(test, description) of a finite number in a range, e.g. 'an integer >= 1'."""

  def test(value):
    if not (_is_int(value) if integer else _is_number(value)) or not math.isfinite(value):
      return False
    above = value > lower if lower_open else value >= lower
    below = value < upper if upper_open else value <= upper
    return above and below

  kind = "an integer" if integer else "a finite number"
  low = f"{'>' if lower_open else '>='} {lower:g}"
  if math.isinf(upper):
    return test, f"{kind} {low}"
  return test, (f"{kind} in {'(' if lower_open else '['}{lower:g}, {upper:g}"
                f"{')' if upper_open else ']'}")


POSITIVE_INT = _number(0, integer=True, lower_open=True)
COUNT = _number(0, integer=True)                      # >= 0
POSITIVE = _number(0, lower_open=True)                # > 0, finite
NON_NEGATIVE = _number(0)
FRACTION_OPEN = _number(0, 1, lower_open=True)        # (0, 1)
FRACTION_SPLIT = _number(0, 1)                        # [0, 1)
FRACTION_SHARE = _number(0, 1, lower_open=True, upper_open=False)  # (0, 1]
EPOCHS = _number(1, integer=True)
AT_LEAST_TWO = _number(2, integer=True)               # folds, examples to cross-validate


def _one_of(choices) -> tuple[Callable, str]:
  return (lambda value: value in choices), "one of " + ", ".join(map(repr, choices))


# The parameters an operator's training may move (`unlearn.common.trainable_mask`).
TRAINABLE_PARTS = ("all", "head")


class _Problems:
  """Collects `key=value: expected ...` lines, raised together as one ConfigError."""

  def __init__(self):
    self.lines: list[str] = []

  def add(self, key: str, value: Any, expected: str) -> None:
    self.lines.append(f"{key}={value!r}: {expected}")

  def check(self, section: Mapping, prefix: str, key: str, rule: tuple[Callable, str]) -> None:
    """Adds a problem when `section[key]` (if the section has it) breaks `rule`."""
    if key in section and not rule[0](section[key]):
      self.add(f"{prefix}.{key}", section[key], f"expected {rule[1]}")

  def raise_if_any(self) -> None:
    if self.lines:
      raise ConfigError("the config cannot run (nothing was loaded or trained):\n  - "
                        + "\n  - ".join(self.lines))


# ----------------------------------------------------------------------------
# Sections.

def _check_data(data, problems: _Problems) -> None:
  problems.check(data, "data", "name", _one_of(tuple(sources.SOURCES)))
  for key, rule in (("image_size", COUNT), ("limit", COUNT), ("num_workers", COUNT),
                    ("decode_workers", COUNT), ("val_fraction", FRACTION_SPLIT),
                    ("test_fraction", FRACTION_SPLIT)):
    problems.check(data, "data", key, rule)
  problems.check(data, "data", "pipeline", _one_of(PIPELINES))
  val, test = data.get("val_fraction", 0.0), data.get("test_fraction", 0.0)
  if (FRACTION_SPLIT[0](val) and FRACTION_SPLIT[0](test) and val + test >= 1):
    problems.add("data.val_fraction + data.test_fraction", val + test,
                 f"expected a sum < 1 (val {val} + test {test}), leaving examples to train on")
  root = str(data.get("root", ""))
  if data.get("name") in NEEDS_ROOT:
    if not root:
      problems.add("data.root", root, f"data.name={data.name!r} reads a file or folder: "
                   "expected its path (see the config file's docstring)")
    elif not os.path.exists(root):
      problems.add("data.root", root, "no such file or folder: expected the path of the data")
  cache_dir = str(data.get("cache_dir", ""))
  if cache_dir and os.path.isfile(cache_dir):
    problems.add("data.cache_dir", cache_dir, "is a file: expected a folder (or a path to create)")


def _check_model(model, problems: _Problems) -> None:
  problems.check(model, "model", "name", _one_of(MODEL_NAMES))
  problems.check(model, "model", "stem", _one_of(STEMS))
  problems.check(model, "model", "dtype", _one_of(DTYPES))
  problems.check(model, "model", "conv", _one_of(CONVS))
  problems.check(model, "model", "width", POSITIVE)


def _check_train(train, problems: _Problems) -> None:
  problems.check(train, "train", "optimizer", _one_of(OPTIMIZERS))
  for key, rule in (("learning_rate", POSITIVE), ("momentum", FRACTION_SPLIT),
                    ("weight_decay", NON_NEGATIVE), ("warmup_epochs", NON_NEGATIVE),
                    ("batch_size", POSITIVE_INT), ("eval_batch_size", POSITIVE_INT),
                    ("num_epochs", EPOCHS), ("patience", COUNT)):
    problems.check(train, "train", key, rule)
  problems.check(train, "train", "class_weighting", _one_of(CLASS_WEIGHTINGS))
  problems.check(train, "train", "sampling", _one_of(SAMPLINGS))
  problems.check(train, "train", "select_on", _one_of(SELECTION_METRICS))
  beta = train.get("effective_number_beta", 0.999)
  if not (_is_number(beta) and 0 < beta < 1):
    problems.add("train.effective_number_beta", beta, "expected a number in (0, 1)")


def _check_forget(config, problems: _Problems) -> None:
  """The kind, and that only the keys the kind reads are set (a key the kind
  ignores is almost always a request the user believes is being honoured)."""
  spec = config.forget
  kind = spec.get("kind")
  if kind not in forget.KINDS:
    problems.add("forget.kind", kind, "expected one of " + ", ".join(map(repr, forget.KINDS)))
    return
  ids, fraction, classes = spec.get("ids", ""), spec.get("fraction"), spec.get("classes", "")
  if kind == "classes":
    if str(ids).strip():
      problems.add("forget.ids", ids, "forget.kind='classes' reads forget.classes only: "
                   "expected '' (ids name groups or examples: set forget.kind to one of those)")
    if fraction != forget.DEFAULT_FRACTION:
      problems.add("forget.fraction", fraction,
                   f"forget.kind='classes' forgets whole classes: expected the default "
                   f"{forget.DEFAULT_FRACTION} (a fraction applies to kind 'groups' or 'examples')")
    names = CLASS_NAMES.get(config.data.get("name"))
    if names is not None:
      try:
        forget.parse_classes(classes, names)
      except ValueError as error:
        problems.add("forget.classes", classes, f"expected class names or indices of "
                     f"data.name={config.data.name!r} ({error})")
    return
  if str(classes).strip() != forget.DEFAULT_CLASSES:
    problems.add("forget.classes", classes,
                 f"forget.kind={kind!r} forgets {kind}: expected the default "
                 f"{forget.DEFAULT_CLASSES!r} (classes apply to kind 'classes')")
  if not str(ids).strip() and not FRACTION_OPEN[0](fraction):
    problems.add("forget.fraction", fraction,
                 f"forget.kind={kind!r} without forget.ids: expected {FRACTION_OPEN[1]}")


def _check_unlearn(config, problems: _Problems) -> None:
  """The operators (`catalog.check_methods`) and the obvious ranges of the
  hyper-parameters of each listed one."""
  if config.forget.get("kind") not in forget.KINDS:
    return  # reported by `_check_forget`; operators are checked against a valid kind
  try:
    catalog.check_methods(config)
  except ValueError as error:
    problems.lines.append(str(error))
    return
  for name in catalog.method_names(config):
    settings, prefix = config.unlearn.get(name) or {}, f"unlearn.{name}"
    for key in settings:
      if key.endswith("batch_size") or key in ("num_iterations", "eval_every", "eval_size"):
        problems.check(settings, prefix, key, POSITIVE_INT)
      elif key.endswith("learning_rate"):
        problems.check(settings, prefix, key, POSITIVE)
      elif key == "warmup_epochs":
        problems.check(settings, prefix, key, NON_NEGATIVE)
      elif key.endswith("epochs"):  # fractional where the default is a float
        problems.check(settings, prefix, key,
                       POSITIVE if isinstance(settings[key], float) else EPOCHS)
      elif key.endswith("_steps") or key == "patience":
        problems.check(settings, prefix, key, COUNT)
      elif key.endswith("fraction"):
        problems.check(settings, prefix, key, FRACTION_SHARE)
      elif key == "trainable":
        problems.check(settings, prefix, key, _one_of(TRAINABLE_PARTS))


def _check_evaluate(evaluate, problems: _Problems) -> None:
  for key, rule in (("batch_size", POSITIVE_INT), ("relearn_batch_size", POSITIVE_INT),
                    ("relearn_learning_rate", POSITIVE), ("relearn_steps", COUNT),
                    ("mia_splits", AT_LEAST_TWO), ("mia_min_examples", AT_LEAST_TWO),
                    ("mia_powered_examples", COUNT), ("ci_level", FRACTION_OPEN),
                    ("ci_resamples", POSITIVE_INT),
                    ("relearn_retain_examples", COUNT), ("population_batch", COUNT)):
    problems.check(evaluate, "evaluate", key, rule)
  population = evaluate.get("challenge_population", 0)
  if not (_is_int(population) and (population == 0 or population >= 3)):
    problems.add("evaluate.challenge_population", population,
                 "expected 0 (off) or an integer >= 3 (the score needs three seeds)")


def _check_workdir(workdir: str | None, problems: _Problems) -> None:
  if workdir is not None and os.path.exists(workdir) and not os.path.isdir(workdir):
    problems.add("workdir", str(workdir), "is a file: expected a folder (or a path to create)")


def check_config(config, workdir: str | None = None) -> None:
  """Refuses a config that cannot run, before anything is loaded or written.

  Args:
    config: the experiment ConfigDict (`configs/common.base_config` schema).
    workdir: the output folder, or None to skip its check.

  Raises:
    ConfigError: listing every problem found, each as `key=value: expected ...`.
  """
  problems = _Problems()
  _check_data(config.data, problems)
  _check_model(config.model, problems)
  _check_train(config.train, problems)
  if config.train.get("sampling") == "class_balanced" and config.data.get("pipeline") == "grain":
    problems.add("train.sampling", "class_balanced", "needs data.pipeline='device' (grain "
                 "streams epoch-wise shuffles); use train.class_weighting with grain")
  _check_forget(config, problems)
  _check_unlearn(config, problems)
  _check_evaluate(config.evaluate, problems)
  problems.check(config.mesh, "mesh", "num_devices", COUNT)
  problems.check(config.mesh, "mesh", "cpu_devices", COUNT)
  _check_workdir(workdir, problems)
  problems.raise_if_any()


def check_sizes(config, sizes: Mapping[str, int]) -> None:
  """Refuses a training batch larger than the training split.

  A larger batch silently repeats examples within one step (the sampler
  cycles the split), which is not what a user asking for that batch meant.
  An operator's batch larger than the retain set is only warned about: tiny
  smoke runs and fixtures do that on purpose.

  Args:
    sizes: examples per split, at least "train" and "retain".

  Raises:
    ConfigError: naming the key, its value and the split's size.
  """
  problems = _Problems()
  if config.train.batch_size > sizes["train"]:
    problems.add("train.batch_size", config.train.batch_size,
                 f"larger than the training split ({sizes['train']} examples): expected "
                 f"at most {sizes['train']} (lower it, or raise data.limit)")
  problems.raise_if_any()
  for name in catalog.method_names(config):
    settings = config.unlearn.get(name) or {}
    # `batch_size` is the retain batch of every data-using operator; gkt's
    # batches are generated, so no split bounds its size.
    if name != "gkt" and "batch_size" in settings and settings.batch_size > sizes["retain"]:
      logging.warning("unlearn.%s.batch_size=%d is larger than the retain set (%d examples): "
                      "each batch repeats examples", name, settings.batch_size, sizes["retain"])


def check_batch_sizes(config, data_devices: int, processes: int = 1) -> None:
  """Refuses a batch size the `data` mesh axis does not divide.

  A batch of B examples is split into `data_devices` equal shards; when they
  do not divide it, the step would run unsharded on every device (correct,
  and `data_devices` times the work), and the grain stream could not give
  each process an equal share. Checked for every `*batch_size` of the train
  and evaluate sections and of each listed operator, its defaults included.

  Raises:
    ConfigError: naming each key, its value, the device and process counts,
      and the nearest sizes that divide.
  """
  if data_devices <= 1:
    return
  sizes = {f"train.{k}": v for k, v in config.train.items() if k.endswith("batch_size")}
  sizes.update({f"evaluate.{k}": v for k, v in config.evaluate.items()
                if k.endswith("batch_size")})
  defaults = catalog.defaults()
  for name in catalog.method_names(config):
    merged = {**defaults.get(name, {}), **(config.unlearn.get(name) or {})}
    sizes.update({f"unlearn.{name}.{k}": v for k, v in merged.items() if k.endswith("batch_size")})
  problems = _Problems()
  for key, value in sorted(sizes.items()):
    if _is_int(value) and value % data_devices:
      lower = value - value % data_devices
      problems.add(key, value, f"not divisible by the {data_devices} devices of the data axis "
                   f"({processes} process{'es' if processes > 1 else ''}): expected a multiple "
                   f"of {data_devices}, e.g. {max(lower, data_devices)} or {lower + data_devices}")
  problems.raise_if_any()
