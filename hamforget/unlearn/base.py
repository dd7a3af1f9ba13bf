"""The operator contract and registry.

Operators register themselves with `register` when their module is imported;
`get` and `names` first import every operator module of the package
(`load_operators`, over `hamforget.unlearn.operator_modules`), and an
operator's name is its module's name.

An unlearning operator is a pure function

    new_variables, info = operator(model, variables, access, request, config, rng)

- `model`: a Flax Linen module (stateless); `variables`: {"params", "batch_stats"}.
- `access`: an `Access` holding only the data the operator declared it needs;
  undeclared fields are None, so a zero-shot operator (needs nothing) cannot
  touch a training example: there is none to touch.
- `request`: the `ForgetRequest` (static: what kind of forgetting).
- `config`: the operator's ConfigDict: its registered defaults, overridden by
  `config.unlearn.<name>` of the experiment, plus the experiment's `train` and
  `augment` sections (the original recipe) under those keys.
- `rng`: a PRNG key; the same inputs and key give the same outputs.
- `info`: a dict of arrays the operator measured (steps, examples touched,
  loss curves).

Operators do no I/O, read no globals and loop over steps with `lax.scan` /
`lax.while_loop`, so `jax.jit(partial(op, model, request=..., config=...))` is
one XLA program and `jax.vmap` over `(variables, access, rng)` runs a batch of
requests or seeds of the same shapes at once.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hamforget.data import forget
from hamforget.data.batches import DeviceData

# What an operator may declare it needs.
RETAIN = "retain"                # every retained training example
FORGET = "forget"                # every example to forget
RETAIN_SUBSET = "retain_subset"  # a random subset of `config.retain_subset_fraction` of retain
VAL = "val"                      # the validation split (held out, never trained on)
# The whole validation split, forgotten classes included, for the curves an
# operator reports in `info` alone: nothing computed from it may reach the
# model being trained or any choice the operator makes (gkt's student curve).
# An operator that needs nothing else is still zero-shot.
PROBE = "probe"
DATA_NEEDS = frozenset({RETAIN, FORGET, RETAIN_SUBSET, VAL, PROBE})


@flax.struct.dataclass
class Access:
  """The data handed to an operator. Fields it did not declare are None.

  Attributes:
    retain, forget, retain_subset, val, probe: DeviceData or None. For a
      class request `val` leaves out the forgotten classes (what unlearning
      runs may select on), `probe` keeps them (for reported curves only).
    forget_classes: int32 (K,), the classes to forget (empty unless the
      request is a class request). Available to every operator.
    num_classes: number of classes of the model (static).
    image_shape: (H, W, C) of the inputs (static).
  """
  retain: DeviceData | None
  forget: DeviceData | None
  retain_subset: DeviceData | None
  val: DeviceData | None
  probe: DeviceData | None
  forget_classes: jax.Array
  num_classes: int = flax.struct.field(pytree_node=False)
  image_shape: tuple[int, int, int] = flax.struct.field(pytree_node=False)

  def require(self, name: str) -> DeviceData:
    """The declared field `name`; a clear error if the operator did not declare it."""
    data = getattr(self, name)
    if data is None:
      raise PermissionError(
          f"this operator did not declare {name!r} in its `needs`, so it gets no {name} data")
    return data


OperatorFn = Callable[..., tuple[dict, dict]]


@dataclasses.dataclass(frozen=True)
class Operator:
  """A registered operator: its function, its data needs and its default config."""
  name: str
  fn: OperatorFn
  needs: frozenset[str]
  defaults: dict[str, Any]
  request_kinds: tuple[str, ...] = forget.KINDS
  static: frozenset[str] = frozenset()

  @property
  def zero_shot(self) -> bool:
    """Sees no training example (it may still report curves on the probe)."""
    return not self.needs - {PROBE}

  @property
  def traced_keys(self) -> tuple[str, ...]:
    """The hyper-parameters that reach the compiled program as arguments.

    Every float of the defaults (learning rates, loss weights, temperatures,
    bounds) except those in `static` and those named `*epochs` or
    `*fraction`, which set a step count or a shape: a new value of a traced key reuses
    the compiled program (and JAX's persistent cache across processes), and
    a grid of them can be vmapped.
    """
    return tuple(sorted(key for key, value in self.defaults.items()
                        if isinstance(value, float) and key not in self.static
                        and not key.endswith(STATIC_SUFFIXES)))

  def split_config(self, config) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """(config as a dict with the traced keys removed, those keys as float32 scalars)."""
    static = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    traced = {key: jnp.float32(static.pop(key)) for key in self.traced_keys}
    return static, traced


  def make_config(self, overrides=None, train=None, augment=None) -> ml_collections.FrozenConfigDict:
    """Defaults, then `overrides` (unknown keys are an error), plus the original recipe."""
    config = ml_collections.ConfigDict(self.defaults)
    if overrides is not None:
      for key, value in overrides.items():
        if key not in config:
          raise KeyError(f"unlearn.{self.name}.{key} is not a hyper-parameter of "
                         f"{self.name}; known: {sorted(config)}")
        config[key] = value
    if train is not None:
      config.train = ml_collections.ConfigDict(train)
    if augment is not None:
      config.augment = ml_collections.ConfigDict(augment)
    return ml_collections.FrozenConfigDict(config)


# Floats that count epochs or carve a split: step counts and shapes, static always.
STATIC_SUFFIXES = ("epochs", "fraction")


def join_config(static: dict[str, Any], traced: dict[str, Any]) -> ml_collections.ConfigDict:
  """The operator config of `Operator.split_config`'s halves (traced values may be tracers)."""
  return ml_collections.ConfigDict({**static, **traced})


_REGISTRY: dict[str, Operator] = {}


def register(name: str, *, needs: set[str] | frozenset[str], defaults: dict[str, Any],
             request_kinds: tuple[str, ...] = forget.KINDS, static: tuple[str, ...] = ()):
  """Decorator: registers `fn` as operator `name` with its data needs and defaults.

  `static` names the float hyper-parameters that must stay Python numbers
  (they set a step count, a shape or a Python branch); every other float of
  `defaults` is traced (`Operator.traced_keys`).

  Used once in each operator module, as
  `@base.register("<module name>", needs={...}, defaults=DEFAULTS)` with a
  module-level literal `DEFAULTS = {...}` (`catalog` reads it without
  importing the module); the name must be the module's.
  """
  unknown = set(needs) - DATA_NEEDS
  if unknown:
    raise ValueError(f"operator {name!r} declares unknown needs {sorted(unknown)}")
  if RETAIN_SUBSET in needs and "retain_subset_fraction" not in defaults:
    raise ValueError(f"operator {name!r} needs retain_subset: give retain_subset_fraction")

  def wrap(fn: OperatorFn) -> OperatorFn:
    if name in _REGISTRY:
      raise ValueError(f"operator {name!r} is registered twice")
    unknown_static = set(static) - set(defaults)
    if unknown_static:
      raise ValueError(f"operator {name!r}: static keys {sorted(unknown_static)} are not in "
                       "its defaults")
    _REGISTRY[name] = Operator(name, fn, frozenset(needs), dict(defaults), tuple(request_kinds),
                               frozenset(static))
    return fn

  return wrap


def load_operators() -> None:
  """Imports every operator module of `hamforget.unlearn` not imported yet,
  each of which registers itself, and checks that each registered its own name.

  Cheap once everything is loaded (a listing of the package's folders); a
  module added since the last call (a folder appended to the package's
  `__path__`, say) is found by the next one.
  """
  from hamforget import unlearn  # pylint: disable=import-outside-toplevel
  for module_name, path in unlearn.operator_modules():
    qualified = f"{unlearn.__name__}.{module_name}"
    if qualified in sys.modules:
      continue
    module = importlib.import_module(qualified)
    registered = [op.name for op in _REGISTRY.values() if op.fn.__module__ == module.__name__]
    if registered != [module_name]:
      raise ImportError(
          f"{path} must register exactly one operator named after its module, "
          f"{module_name!r} (`@base.register({module_name!r}, ...)`); it registers {registered}")


def unregister(name: str) -> None:
  """Forgets operator `name` and its module (tests that add an operator clean up with it)."""
  operator = _REGISTRY.pop(name)
  sys.modules.pop(operator.fn.__module__, None)


def get(name: str) -> Operator:
  """The registered operator `name` (every operator module is loaded first)."""
  load_operators()
  if name not in _REGISTRY:
    raise KeyError(f"unknown unlearning operator {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> list[str]:
  """Every operator's name, sorted (as their modules' names are)."""
  load_operators()
  return sorted(_REGISTRY)


def make_access(operator: Operator, *, retain: DeviceData, forget: DeviceData,
                val: DeviceData, forget_classes, num_classes: int,
                image_shape: tuple[int, int, int], rng: jax.Array,
                retain_subset_fraction: float = 0.0,
                probe: DeviceData | None = None) -> Access:
  """Hands the operator exactly what it declared, and nothing else.

  `probe` defaults to `val` (the same split when no class is forgotten).
  """
  needs = operator.needs
  subset = None
  if RETAIN_SUBSET in needs:
    size = max(1, int(round(retain_subset_fraction * retain.size)))
    index = jax.random.choice(rng, retain.size, (size,), replace=False)
    subset = retain.take(index)
  return Access(
      retain=retain if RETAIN in needs else None,
      forget=forget if FORGET in needs else None,
      retain_subset=subset,
      val=val if VAL in needs else None,
      probe=(val if probe is None else probe) if PROBE in needs else None,
      forget_classes=jnp.asarray(np.asarray(forget_classes, np.int32).reshape(-1)),
      num_classes=num_classes,
      image_shape=tuple(image_shape))
