r"""SISA's accuracy and deletion costs against retraining one monolithic model.

    python -m launch.sisa_table                          # S in 1,5,10,20; R = unlearn.sisa.slices
    python -m launch.sisa_table --shards=1,5 --config.unlearn.sisa.slices=2 \
        --config.train.num_epochs=4 --config.model.width=0.0625

On the experiment's data (`--config`, the embedded MNIST digits by default)
it trains, for each S, the SISA ensemble (`hamforget.sisa`; R slices, its
recipe from `config.unlearn.sisa`), then deletes from it in turn one random
training example, one patient-like group and one whole class
(`--forget_class`), and prints its test accuracy (aggregated) and, per
deletion, the shards it retrained, the distinct examples they retrain on,
the examples seen with repetition (steps x batch) and the wall seconds, each
also as a fraction of retraining one monolithic model (the experiment's
`retrain`: `config.train` on what remains, early stopping on val) after the
same deletions. Deletions accumulate (the group is deleted from the ensemble
that already forgot the example); each monolithic retrain is of the data
that remains at that point. Wall seconds exclude compilation, which both pay
once per shape.

MNIST has no groups, so the digits of each class are bundled into
pseudo-patients of `--group_size` images (the split is made before, by
digit): a deletion of one of them is the GDPR case of HAM10000's lesions.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mnist.py", "Experiment config file.")
_SHARDS = flags.DEFINE_list("shards", ["1", "5", "10", "20"], "Values of S to measure.")
_GROUP_SIZE = flags.DEFINE_integer("group_size", 3, "Images per pseudo-patient (MNIST).")
_FORGET_CLASS = flags.DEFINE_integer("forget_class", 0, "The class deleted last.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the checkpoints go ('' = a temporary folder).")


def pseudo_groups(labels: np.ndarray, groups: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Bundles the examples of each class into groups of `size` (seeded), where
  every example is its own group; returns `groups` unchanged otherwise."""
  if len(np.unique(groups)) < len(groups) or size <= 1:
    return groups
  bundled = np.empty(len(labels), object)
  for label in np.unique(labels):
    rows = np.flatnonzero(labels == label)
    rows = rows[np.random.default_rng([seed, int(label)]).permutation(len(rows))]
    bundled[rows] = [f"patient_{label}_{i // size}" for i in range(len(rows))]
  return bundled.astype(str)


def monolithic_retrain(config, model, image_shape, retain, val, rng) -> dict:
  """`retrain`'s recipe on `retain`: wall seconds (compile apart), steps, examples."""
  import jax  # pylint: disable=import-outside-toplevel
  from hamforget import original, sharding, train  # pylint: disable=import-outside-toplevel
  from hamforget.data import batches  # pylint: disable=import-outside-toplevel
  init_rng, fit_rng = jax.random.split(rng)
  fresh = original.init_variables(model, image_shape, init_rng)
  spec = train.make_fit_spec(model, config.train, config.augment, retain.size)
  fit = jax.jit(functools.partial(train.fit_in_graph, spec), out_shardings=sharding.replicated())
  compiled = fit.lower(fresh, retain, val, fit_rng).compile()
  start = time.perf_counter()
  variables, info = jax.block_until_ready(compiled(fresh, retain, val, fit_rng))
  wall_s = time.perf_counter() - start
  steps = int(info["epochs"]) * batches.steps_per_epoch(retain.size, spec.batch_size)
  return {"wall_s": wall_s, "steps": steps, "examples_seen": steps * spec.batch_size,
          "examples_retrained": retain.size, "variables": variables}


def _ratio(a: float, b: float) -> str:
  return f"{a / b:.3f}" if b else "-"


def _say(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  config = _CONFIG.value
  import jax  # pylint: disable=import-outside-toplevel
  from hamforget import sharding  # pylint: disable=import-outside-toplevel
  if config.mesh.cpu_devices and "xla_force_host_platform_device_count" not in os.environ.get(
      "XLA_FLAGS", ""):
    sharding.configure_cpu_devices(config.mesh.cpu_devices)
  mesh = sharding.make_mesh(config.mesh.num_devices)
  with jax.set_mesh(mesh):
    rows = _measure(config, mesh)
  print(_table(rows, config))


def _measure(config, mesh) -> list[dict]:
  """One row per (model, phase): the monolithic model's, then each S's."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from hamforget import operators, train  # pylint: disable=import-outside-toplevel
  from hamforget.data import batches, prepare  # pylint: disable=import-outside-toplevel
  from hamforget.models import build_model  # pylint: disable=import-outside-toplevel
  from hamforget.sisa import build  # pylint: disable=import-outside-toplevel
  from hamforget.sisa.layout import make_layout  # pylint: disable=import-outside-toplevel
  from hamforget.sisa.runner import sisa_config  # pylint: disable=import-outside-toplevel

  data = prepare.prepare_data(config, mesh)
  host = data.host["train"]
  groups = pseudo_groups(host.labels, host.groups, _GROUP_SIZE.value, config.seed)
  model = build_model(config.model, data.num_classes)
  rng = np.random.default_rng(config.seed)
  # The deletions, accumulating: one example, one patient, one class.
  example = rng.choice(len(host))
  patient = rng.choice(np.unique(groups[groups != groups[example]]))
  deletions = [("example", np.asarray([example])),
               ("group", np.flatnonzero(groups == patient)),
               ("class", np.flatnonzero(host.labels == _FORGET_CLASS.value))]
  predict = jax.jit(train.predict, static_argnums=(0, 3))
  accuracy = lambda module, variables: float(jnp.mean(
      jnp.argmax(predict(module, variables, data.device["test"].images, 512), -1)
      == data.device["test"].labels))

  rows = []
  key = jax.random.key(config.seed)
  deleted = np.zeros(len(host), bool)
  full = {}
  for name, forgotten in deletions:
    deleted[forgotten] = True
    _say(f"monolithic retrain without the {name} ...")
    retain = batches.to_device(host.images[~deleted], host.labels[~deleted], mesh)
    full[name] = monolithic_retrain(config, model, data.image_shape, retain,
                                    data.device["unlearn_val"], jax.random.fold_in(key, 1))
    rows.append({"model": "monolithic", "phase": f"retrain w/o {name}",
                 "acc_test": accuracy(model, full[name].pop("variables")), **full[name]})
    _say(f"  {full[name]['wall_s']:.1f} s, test accuracy {rows[-1]['acc_test']:.4f}")

  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="sisa_table_")
  for shards in map(int, _SHARDS.value):
    config.unlearn.sisa.shards = shards
    op_config = sisa_config(config)
    layout = make_layout(host.labels, groups, shards, op_config.slices, config.seed)
    trainer = build.make_trainer(model, op_config, config.train, config.augment, layout,
                                 data.device["train"], data.image_shape,
                                 operators.operator_rng(key, "sisa"),
                                 os.path.join(workdir, f"shards_{shards}"))
    ensemble = build.ensemble_model(model, op_config, shards)
    label = f"S={shards} R={op_config.slices} ({trainer.spec.lanes} lanes)"
    _say(f"{label}: training ...")
    info = trainer.sync(layout)
    rows.append({"model": label, "phase": "train", "acc_test": accuracy(ensemble,
                                                                        trainer.variables()),
                 **info})
    _say(f"  {info['wall_s']:.1f} s (+{trainer.compile_s:.1f} s compile), test accuracy "
         f"{rows[-1]['acc_test']:.4f}")
    for name, forgotten in deletions:
      layout = layout.without(forgotten)
      _say(f"{label}: deleting the {name} ...")
      info = trainer.sync(layout)
      rows.append({"model": label, "phase": f"delete {name}", "reference": full[name],
                   "acc_test": accuracy(ensemble, trainer.variables()), **info})
      _say(f"  {info['wall_s']:.1f} s, {info['shards_retrained']} shards retrained")
    trainer.close()
  return rows


def _table(rows: list[dict], config) -> str:
  """The printed Markdown table."""
  header = ["model", "phase", "acc_test", "shards retrained", "examples retrained",
            "of full", "examples seen", "of full", "wall s", "of full"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    reference = row.get("reference", {})
    cells = [row["model"], row["phase"], f"{row['acc_test']:.4f}",
             str(row.get("shards_retrained", "-")), str(row["examples_retrained"]),
             _ratio(row["examples_retrained"], reference.get("examples_retrained", 0)),
             str(row["examples_seen"]),
             _ratio(row["examples_seen"], reference.get("examples_seen", 0)),
             f"{row['wall_s']:.1f}", _ratio(row["wall_s"], reference.get("wall_s", 0))]
    lines.append("| " + " | ".join(cells) + " |")
  sisa = config.unlearn.sisa
  lines.append(f"\nmodel {config.model.name} width {config.model.width}, "
               f"{config.data.image_size}x{config.data.image_size}; monolithic: "
               f"{config.train.num_epochs} epochs, batch {config.train.batch_size}; SISA: "
               f"{sisa.num_epochs} epochs per shard, batch {sisa.batch_size}, "
               f"aggregation {sisa.aggregation}. 'of full': over the monolithic retrain "
               "after the same deletions.")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
