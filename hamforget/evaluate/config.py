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

  # 95% intervals of every headline metric: percentile bootstrap over the
  # examples (and seeds, where populations exist); `hamforget.evaluate.intervals`.
  config.ci_level = 0.95
  config.ci_resamples = 1000

  # Membership-inference attack (NeurIPS 2023 challenge starting kit): logistic
  # regression on per-example loss, forget vs as many test examples of the same
  # classes (`hamforget.evaluate.attack`), every example scored out of fold.
  config.mia_splits = 10         # folds of the cross-validation (at most the examples a side)
  config.mia_min_examples = 2    # per side; below it the attack is NaN (nothing to cross-validate)
  config.mia_powered_examples = 100  # per side; below it the attack is flagged underpowered

  # Over-forgetting: forget examples whose loss far exceeds that of unseen
  # test examples of the same classes stand out to an attacker as much as
  # remembered ones. Flagged when the interval of the gap lies above this (nats).
  config.over_forgetting_nats = 1.0

  # Noise floor: a second retrain from another seed ("retrain_seed2"), measured
  # like an operator, shows how far retraining lands from itself. It costs one
  # more retraining.
  config.noise_floor = True

  # Anamnesis Index (Chundawat et al. 2023): relearning steps to regain
  # (1 - alpha) of the original's forget accuracy, unlearned over retrained,
  # counted from 1 as the reference counts (`hamforget.evaluate.anamnesis`).
  config.anamnesis = True
  config.anamnesis_alpha = 0.05
  config.relearn_steps = 100          # budget of Adam steps; past it a count is a bound
  # Stop each curve at the step that meets the target (the index needs no
  # step past it; NaN after): most models need a fraction of the budget.
  # False: every curve runs the whole budget, for plots of whole curves.
  config.relearn_stop_at_target = True
  config.relearn_learning_rate = 1e-3
  config.relearn_batch_size = 32
  config.relearn_examples = 256       # forget examples relearned on (0 = all)
  config.relearn_holdout_examples = 0 # held-out forget-class examples measured (0 = all)
  config.relearn_retain_examples = 128  # held-out retained-class examples measured too (0 = all)

  # NeurIPS 2023 unlearning challenge forgetting quality: models per population
  # (each operator run over this many seeds by the runner, retrain over twice
  # as many: half the reference, half scored like an operator, so every row is
  # scored M against M; the score needs M >= 3). 0 = off: it costs extra
  # trainings (2M retrains, M runs of each operator).
  config.challenge_population = 0
  # Seeds trained at once in one `vmap`; the runner scans over groups of this
  # many (`lax.map`), still one program. 0 = auto: every seed at once on an
  # accelerator, one at a time on CPU, where XLA's vmapped training steps ran
  # ~3x slower than the same steps one seed at a time (MNIST, 2 cores). Lower
  # it where that many simultaneous trainings do not fit in device memory.
  config.population_batch = 0
  config.challenge_delta = 1e-5       # the delta of (epsilon, delta)-unlearning
  return config
