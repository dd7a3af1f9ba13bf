r"""Runs one operator on a finished run's original, once per set of overrides.

    python -m launch.main --config=configs/mnist.py --workdir=/tmp/mnist
    python -m launch.try_operator --config=configs/mnist.py --workdir=/tmp/mnist \
        --operator=scrub --variants=,min_steps=32,min_steps=64:learning_rate=1e-3

The tuning loop of an operator's author: the original is restored from
WORKDIR's model store (trained by `launch.main` with the same config), the
data prepared as that run did, and the operator run once per variant (`''`
is its defaults; a variant sets keys of `config.unlearn.<operator>`, joined
by `:`). Each variant prints one line: accuracy on the retain set, the forget
set (training examples) and the test split, and for a class request the
test accuracy on the forgotten and the retained classes, with the seconds
the operator took. Nothing is written to WORKDIR; variants of the same shapes
reuse one compiled program. docs/operator-tuning.md was measured with it.
"""

from __future__ import annotations

import json
import time

from absl import app, flags, logging
from ml_collections import config_flags

from hamforget.unlearn import catalog  # no JAX: operators known before JAX starts
from launch import config_help, runtime

_CONFIG = config_flags.DEFINE_config_file(
    config_help.CONFIG_FLAG, config_help.DEFAULT_CONFIG,
    "The config the finished run in --workdir used (its file and overrides).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir launch.main finished with this config.")
_OPERATOR = flags.DEFINE_string("operator", None, "The operator to run, e.g. scrub.")
_VARIANTS = flags.DEFINE_list(
    "variants", [""], "Comma-separated variants, each `key=value[:key=value...]` of "
    "config.unlearn.<operator>; an empty variant runs the defaults.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value or not _OPERATOR.value:
    raise app.UsageError("--workdir and --operator are required")
  logging.get_absl_handler().addFilter(runtime.QuietLibraries())
  config = _CONFIG.value
  name = _OPERATOR.value
  if name not in catalog.names() or name not in config.unlearn:
    raise app.UsageError(f"--operator={name}: not an operator ({', '.join(catalog.names())})")
  if name == "sisa":  # not a function of the original: it trains its own shard ensemble
    raise app.UsageError("--operator=sisa trains its own ensemble from scratch: run it with "
                         "launch.main --config.unlearn.methods=sisa")
  # `--variants=` parses as no variant at all: read it as the defaults alone.
  texts = _VARIANTS.value or [""]
  try:
    variants = [(text, catalog.parse_variant(text, config.unlearn[name])) for text in texts]
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  mesh = runtime.start_jax(config)
  import jax  # pylint: disable=g-import-not-at-top  (after the mesh and the compilation cache)
  with jax.set_mesh(mesh):  # as launch.main: state replicated over the mesh, batches split
    _run(config, name, variants, mesh)


def _run(config, name: str, variants, mesh):
  """Restores the original, runs every variant and prints its line."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hamforget import operators, original  # pylint: disable=g-import-not-at-top
  from hamforget.data import prepare  # pylint: disable=g-import-not-at-top
  from hamforget.evaluate import metrics, suite  # pylint: disable=g-import-not-at-top
  from hamforget.models import build_model  # pylint: disable=g-import-not-at-top
  from hamforget.store import ModelStore  # pylint: disable=g-import-not-at-top

  data = prepare.prepare_data(config, mesh)
  model = build_model(config.model, data.num_classes)
  like = original.init_variables(model, data.image_shape, jax.random.key(0))
  finished = ModelStore(_WORKDIR.value).load("original", like, original.fingerprint(config, data))
  if finished is None:
    raise app.UsageError(f"{_WORKDIR.value} holds no original trained with this config and "
                         f"data: run launch.main with the same --config there first")
  forgotten = suite.forget_classes(data.request)

  def accuracies(variables) -> dict[str, float]:
    out = {}
    for part in ("retain", "forget", "test"):
      outputs = suite.model_outputs(model, variables, data.device[part],
                                    config.train.eval_batch_size)
      out[part] = metrics.accuracy(outputs["logits"], outputs["labels"])
    if forgotten:  # the test split, forgotten classes and retained ones apart
      is_forgotten = np.isin(outputs["labels"], forgotten)
      for label, mask in (("test_forgotten", is_forgotten), ("test_retained", ~is_forgotten)):
        out[label] = metrics.accuracy(outputs["logits"][mask], outputs["labels"][mask])
    return {key: round(value, 3) for key, value in out.items()}

  print(f"original {json.dumps(accuracies(finished[0]))}", flush=True)
  rng = operators.operator_rng(jax.random.key(config.seed), name)
  for text, overrides in variants:
    variant_config = config.copy_and_resolve_references()
    variant_config.unlearn[name].update(overrides)
    started = time.perf_counter()
    variables, _, _ = operators.run_operator(name, variant_config, model, finished[0], data, rng)
    jax.block_until_ready(variables)
    seconds = time.perf_counter() - started
    print(f"{name}[{text}] {seconds:.0f} s {json.dumps(accuracies(variables))}", flush=True)


if __name__ == "__main__":
  app.run(main)
