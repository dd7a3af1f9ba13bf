"""Sweeps: grids of overrides over the configs of this folder.

    python -m launch.sweep --config=configs/mnist.py --sweep=digits --workdir=runs/digits
    python -m launch.sweep --config=configs/mnist.py:local --sweep=scrub_lr --workdir=/tmp/g

`get_sweep(name)` returns a list of override dicts (dotted config keys ->
values), built with the `hamforget.grid` helpers; every run is the base
config (file, argument and `--config.` flags) with one dict applied. Add a
sweep by adding an entry to `SWEEPS`. Plain data, no JAX, like the configs.
"""

from hamforget import grid

_SEEDS = (0, 1, 2)


def _digits():
  """Every single-digit forget request x 3 seeds, for unsir and bad_teacher
  (retrain is in every run: the reference each is measured against)."""
  return grid.product(
      grid.axis("unlearn.methods", [("unsir",), ("bad_teacher",)]),
      grid.axis("forget.classes", [str(digit) for digit in range(10)]),
      grid.axis("seed", _SEEDS))


def _scrub_lr():
  """SCRUB at three learning rates x two forgotten digits x 2 seeds.

  The learning rate varies fastest: the three runs of one digit and seed are
  neighbours, and `launch.sweep` makes their models in one program."""
  return grid.product(
      grid.axis("unlearn.methods", [("scrub",)]),
      grid.axis("forget.classes", ["0", "1"]),
      grid.axis("seed", (0, 1)),
      grid.axis("unlearn.scrub.learning_rate", [1e-4, 5e-4, 2.5e-3]))


def _methods():
  """Every operator the MNIST config lists, one per run, x 3 seeds, digit 0."""
  names = ("finetune", "neggrad_plus", "random_label", "salun", "l1_sparse", "unsir", "emmn",
           "gkt", "bad_teacher", "scrub")
  return grid.product(grid.axis("unlearn.methods", [(name,) for name in names]),
                      grid.axis("seed", _SEEDS))


def _forget_fraction():
  """Random-example requests of growing size (the challenge's kind), finetune and neggrad_plus."""
  return grid.product(
      grid.axis("unlearn.methods", [("finetune",), ("neggrad_plus",)]),
      grid.zip_(grid.axis("forget.kind", ["examples"] * 3),
                grid.axis("forget.fraction", [0.01, 0.05, 0.1])),
      grid.axis("seed", _SEEDS))


def _smoke():
  """Two operators x two forgotten digits x two seeds: a grid a laptop runs in minutes
  (with `configs/mnist.py:local`); runs of one seed share one original."""
  return grid.product(
      grid.axis("unlearn.methods", [("finetune",), ("neggrad_plus",)]),
      grid.axis("forget.classes", ["0", "1"]),
      grid.axis("seed", (0, 1)))


SWEEPS = {"smoke": _smoke, "digits": _digits, "scrub_lr": _scrub_lr, "methods": _methods,
          "forget_fraction": _forget_fraction}


def get_sweep(name: str) -> list[dict]:
  if name not in SWEEPS:
    raise ValueError(f"unknown sweep {name!r}: expected one of {sorted(SWEEPS)}")
  return SWEEPS[name]()
