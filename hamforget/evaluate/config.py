"""The `evaluate` config section: every knob of the evaluation suite, with units.

Kept free of JAX and scikit-learn imports so that `configs/` can build a
config without loading the evaluation code.
"""

import ml_collections


def evaluate_config() -> ml_collections.ConfigDict:
  """Defaults of `config.evaluate`; see `hamforget.evaluate.METRICS` for what they feed."""
  config = ml_collections.ConfigDict()
  # Eval-mode forward passes run in fixed batches of this many images, so one
  # compiled program serves every model (and every split of the same size).
  config.batch_size = 512
  # Seeds every random choice of the suite: attack subsampling and CV splits,
  # the relearning subset and batches, the random model of ZRF.
  config.seed = 0

  # Membership-inference attack (NeurIPS 2023 challenge starting kit):
  # logistic regression on per-example loss, forget vs as many test examples.
  config.mia_splits = 10         # StratifiedShuffleSplit repetitions
  config.mia_test_size = 0.1     # held-out share of each split (sklearn's default)
  config.mia_min_examples = 5    # per side; below it the attack is NaN (too few to split)

  # Anamnesis Index (Chundawat et al. 2023): relearning steps to regain
  # (1 - alpha) of the original's forget accuracy, unlearned over retrained.
  config.anamnesis = True
  config.anamnesis_alpha = 0.05
  config.relearn_steps = 100          # budget of Adam steps; NaN when it runs out
  config.relearn_learning_rate = 1e-3
  config.relearn_batch_size = 32
  config.relearn_examples = 256       # forget examples relearned on (0 = all)
  config.relearn_holdout_examples = 0 # held-out forget-class examples measured (0 = all)

  # NeurIPS 2023 unlearning challenge forgetting quality: models per population
  # (retrain and each operator run over this many seeds by the runner; the
  # score needs at least 3). 0 = off: it costs that many extra trainings.
  config.challenge_population = 0
  # Seeds trained at once in one `vmap`; the runner scans over groups of this
  # many (`lax.map`), still one program. 0 = auto: every seed at once on an
  # accelerator, one at a time on CPU, where XLA's vmapped training steps ran
  # ~3x slower than the same steps one seed at a time (MNIST, 2 cores). Lower
  # it where that many simultaneous trainings do not fit in device memory.
  config.population_batch = 0
  config.challenge_delta = 1e-5       # the delta of (epsilon, delta)-unlearning
  return config
