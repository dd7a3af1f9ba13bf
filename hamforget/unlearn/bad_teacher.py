"""`bad_teacher`: distil from an incompetent teacher on forget data, a competent one on retain.

Chundawat et al. AAAI 2023, "Can Bad Teaching Induce Forgetting? Unlearning
in Deep Networks Using an Incompetent Teacher" (reference:
vikram2000b/bad-teaching-unlearning, `blindspot_unlearner`). The student
starts from the original model. Its training set is the forget set (tagged
l = 1) and a random subset of the retain set (tagged l = 0), shuffled together
so that each batch mixes both; for every example the tag picks the teacher:

    p_T(x) = l * softmax(f_bad(x) / T) + (1 - l) * softmax(f_orig(x) / T)
    L(theta) = mean over the batch of KL(p_T(x) || softmax(f_theta(x) / T))

f_bad is the same architecture randomly initialised (the incompetent teacher),
f_orig the original model (the competent teacher). The KL is the per-example
sum over classes, averaged over the batch ("batchmean"; the reference's
PyTorch `kl_div` also divides by the number of classes, a constant factor that
Adam ignores).

BatchNorm: the student runs in train mode (the reference's `model.train()`),
both teachers in eval mode.

Hyper-parameters (defaults; measurements in docs/operator-tuning.md, section
`bad_teacher`):
  retain_subset_fraction: 0.3, the share of the retain set used (the paper's 30%).
  learning_rate: 1e-3, constant Adam. The paper's 1e-4 makes ~60 steps on
    CIFAR; the default MNIST run affords 46 an epoch, in which 1e-4 forgets
    too little.
  temperature: 1.0 (the paper's KL temperature).
  num_epochs: 2.0 passes over forget + retain subset (the paper: one). One
    pass (46 steps on the default MNIST run) stops before the forgetting has
    settled.
  batch_size: 32. The reference uses 256, which on CIFAR (tens of thousands of
    examples) still gives ~60 Adam steps per epoch; with 256 the default MNIST
    run (~1,500 examples in forget + subset) would get 5 steps, so the batch is
    shrunk to keep the step count of the paper's regime.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from hamforget import train
from hamforget.data import batches
from hamforget.unlearn import base, common

DEFAULTS = {"retain_subset_fraction": 0.3, "learning_rate": 1e-3, "temperature": 1.0,
            "num_epochs": 2.0, "batch_size": 32}


@base.register("bad_teacher", needs={base.FORGET, base.RETAIN_SUBSET}, defaults=DEFAULTS)
def bad_teacher(model, variables, access, request, config, rng):
  del request
  forget, subset = access.require(base.FORGET), access.require(base.RETAIN_SUBSET)
  teacher_rng, train_rng = jax.random.split(rng)
  incompetent = train.init_variables(model, access.image_shape, teacher_rng)
  # The training set: forget (tag 1) then retain subset (tag 0); the tag rides
  # in the labels' place so that one shuffled stream mixes both.
  data = batches.DeviceData(
      jnp.concatenate([forget.images, subset.images]),
      jnp.concatenate([jnp.ones(forget.size, jnp.int32), jnp.zeros(subset.size, jnp.int32)]))
  batch_size, temperature = config.batch_size, config.temperature

  def loss_fn(params, batch_stats, rng, step):
    images, is_forget = batches.sample_batch(data, rng, step, batch_size, config.augment)
    competent_logits, _ = train.apply_model(model, variables, images, train=False)
    incompetent_logits, _ = train.apply_model(model, incompetent, images, train=False)
    teacher_probs = jnp.where(is_forget[:, None] == 1,
                              jax.nn.softmax(incompetent_logits / temperature),
                              jax.nn.softmax(competent_logits / temperature))
    logits, batch_stats = train.apply_model(
        model, {"params": params, "batch_stats": batch_stats}, images, train=True)
    kl = common.kl_divergence(jax.lax.stop_gradient(teacher_probs), logits, temperature)
    forget_share = jnp.maximum(jnp.sum(is_forget), 1)
    retain_share = jnp.maximum(jnp.sum(1 - is_forget), 1)
    return kl.mean(), (batch_stats, {
        "forget_kl": jnp.sum(kl * is_forget) / forget_share,
        "retain_kl": jnp.sum(kl * (1 - is_forget)) / retain_share})

  tx = optax.adam(config.learning_rate)
  num_steps = common.num_steps_for(config.num_epochs, data.size, batch_size)
  return common.minimize_and_report(loss_fn, variables, tx, train_rng, num_steps,
                                    num_steps * batch_size)
