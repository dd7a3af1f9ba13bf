r"""What class-balanced training buys on data with HAM10000's class imbalance.

    python -m launch.balance_table --metadata=../shared/data/HAM10000_metadata.csv
    python -m launch.balance_table --metadata=... --seeds=0 --recipes=plain,effective_number \
        --config.train.num_epochs=4

Writes the imbalanced fixture (`hamforget.data.imbalanced_fixture`: the real
labels of the metadata's 10,015 rows, 67% `nv`, synthetic 8x8 images whose
minority classes carry a weaker cue) as a Kaggle HMNIST CSV, then trains the
original of `--config` (configs/hmnist.py: its own recipe, balancing apart)
once per recipe and seed and prints, per recipe, test accuracy, balanced
accuracy and macro-F1 (mean and 95% t-interval over the seeds; the seed
picks the split, the initialisation and the batches), each class's recall
and the epochs run. Recipes (`train` config keys):

  plain             class_weighting=none, sampling=uniform, select_on=loss
  effective_number  effective-number loss weights (Cui et al. 2019), select on balanced accuracy
  inverse_frequency 1 / n_k loss weights, select on balanced accuracy
  class_balanced    class-balanced batches (Shen et al. 2016), select on balanced accuracy
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

_CONFIG = config_flags.DEFINE_config_file("config", "configs/hmnist.py", "Experiment config file.")
_METADATA = flags.DEFINE_string("metadata", "", "A HAM10000_metadata.csv (its dx column).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (split, initialisation, batches).")
_RECIPES = flags.DEFINE_list("recipes", ["plain", "effective_number", "inverse_frequency",
                                         "class_balanced"], "Recipes to compare.")

RECIPES = {
    "plain": {"class_weighting": "none", "sampling": "uniform", "select_on": "loss"},
    "effective_number": {"class_weighting": "effective_number", "sampling": "uniform",
                         "select_on": "balanced_accuracy"},
    "inverse_frequency": {"class_weighting": "inverse_frequency", "sampling": "uniform",
                          "select_on": "balanced_accuracy"},
    "class_balanced": {"class_weighting": "none", "sampling": "class_balanced",
                       "select_on": "balanced_accuracy"},
}


def t_interval(values) -> tuple[float, float, float]:
  """(mean, low, high): the 95% Student-t interval of the mean over seeds (NaN below 2)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if values.size < 2:
    return mean, float("nan"), float("nan")
  half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
  return mean, mean - half, mean + half


def train_and_score(config) -> dict:
  """Trains the original of `config` and scores it on its test split."""
  import jax  # pylint: disable=import-outside-toplevel
  from hamforget import original, sharding, train  # pylint: disable=import-outside-toplevel
  from hamforget.data import prepare  # pylint: disable=import-outside-toplevel
  from hamforget.models import build_model  # pylint: disable=import-outside-toplevel
  data = prepare.prepare_data(config, sharding.make_mesh(config.mesh.num_devices))
  model = build_model(config.model, data.num_classes)
  trained, test = data.device["train"], data.device["test"]
  init_rng, fit_rng = jax.random.split(jax.random.key(config.seed))
  variables = original.init_variables(model, trained.images.shape[1:], init_rng)
  spec = train.make_fit_spec(model, config.train, config.augment, trained.size)
  fit = jax.jit(functools.partial(train.fit_in_graph, spec), out_shardings=sharding.replicated())
  start = time.perf_counter()
  best, info = jax.block_until_ready(fit(variables, trained, data.device["val"], fit_rng))
  logits = train.predict(model, best, test.images, config.train.eval_batch_size)
  scores = {key: float(value) for key, value in train.validation_metrics(logits, test.labels).items()}
  predicted, labels = np.asarray(logits.argmax(-1)), np.asarray(test.labels)
  scores["recall"] = [float(np.mean(predicted[labels == k] == k)) if np.any(labels == k)
                      else float("nan") for k in range(data.num_classes)]
  scores["majority"] = float(np.bincount(labels).max() / labels.size)
  scores["epochs"] = int(info["epochs"])
  scores["wall_s"] = time.perf_counter() - start
  scores["class_names"] = data.dataset.class_names
  return scores


def table(results: dict[str, list[dict]]) -> str:
  """Markdown: one row per recipe, mean [95% interval] over seeds."""
  first = next(iter(results.values()))[0]
  names = first["class_names"]
  cell = lambda values: "{:.3f} [{:.3f}, {:.3f}]".format(*t_interval(values))
  lines = ["| recipe | seeds | test accuracy | balanced accuracy | macro-F1 | "
           + " | ".join(f"recall {n}" for n in names) + " | epochs |",
           "|---" * (6 + len(names)) + "|"]
  for recipe, runs in results.items():
    recalls = np.asarray([run["recall"] for run in runs])
    lines.append(
        f"| {recipe} | {len(runs)} | {cell([r['accuracy'] for r in runs])} | "
        f"{cell([r['balanced_accuracy'] for r in runs])} | {cell([r['macro_f1'] for r in runs])} | "
        + " | ".join(f"{np.nanmean(recalls[:, k]):.2f}" for k in range(len(names)))
        + f" | {np.mean([r['epochs'] for r in runs]):.1f} |")
  lines.append(f"\nMajority-class baseline (always `nv`): test accuracy "
               f"{first['majority']:.3f}, balanced accuracy {1 / len(names):.3f}.")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _METADATA.value:
    raise app.UsageError("--metadata: the path of a HAM10000_metadata.csv is required")
  unknown = sorted(set(_RECIPES.value) - set(RECIPES))
  if unknown:
    raise app.UsageError(f"--recipes: unknown {unknown}; known: {sorted(RECIPES)}")
  logging.set_verbosity(logging.WARNING)
  from hamforget import sharding  # pylint: disable=import-outside-toplevel
  from hamforget.data import imbalanced_fixture  # pylint: disable=import-outside-toplevel
  config = _CONFIG.value
  if config.mesh.cpu_devices and "xla_force_host_platform_device_count" not in os.environ.get(
      "XLA_FLAGS", ""):
    sharding.configure_cpu_devices(config.mesh.cpu_devices)
  results: dict[str, list[dict]] = {}
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "hmnist_8_8_RGB.csv")
    imbalanced_fixture.write_hmnist_csv(path, imbalanced_fixture.metadata_labels(_METADATA.value))
    for recipe in _RECIPES.value:
      for seed in map(int, _SEEDS.value):
        run_config = config.copy_and_resolve_references()
        run_config.data.name, run_config.data.root = "hmnist", path
        run_config.data.cache_dir = os.path.join(folder, "cache")
        run_config.seed = seed
        run_config.train.update(RECIPES[recipe])
        scores = train_and_score(run_config)
        results.setdefault(recipe, []).append(scores)
        print(f"[{time.strftime('%H:%M:%S')}] {recipe} seed {seed}: balanced accuracy "
              f"{scores['balanced_accuracy']:.3f}, accuracy {scores['accuracy']:.3f}, "
              f"{scores['epochs']} epochs in {scores['wall_s']:.0f} s (compile included)",
              file=sys.stderr, flush=True)
  print(table(results))


if __name__ == "__main__":
  app.run(main)
