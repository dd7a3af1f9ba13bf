"""`gkt`: gated knowledge transfer, zero-shot.

Chundawat, Tarun, Mandal and Kankanhalli, "Zero-Shot Machine Unlearning",
IEEE TIFS 2023 (the GKT method), on top of the adversarial zero-shot knowledge
transfer of Micaelli and Storkey (NeurIPS 2019). A generator G (noise z of
size 128 -> image in [-1, 1], `hamforget.models.Generator`) and a student S
(the same architecture as the original, freshly initialised) play against the
original T (the teacher, eval mode, frozen). On each batch x = G(z) a
band-pass gate keeps only the pseudo-samples the teacher does not tie to a
forget class,

    g(x) = 1[ max_{c in forget} p_T(c | x) <= threshold ],

so the forget classes' knowledge never reaches the student. With
KL = KL(p_T(x / tau) || p_S(x / tau)) averaged over the gated samples,

    generator:  max_G  KL                                     (seek disagreement)
    student:    min_S  KL + beta * sum_l || a_T^l - a_S^l ||^2   (attention transfer)

where a^l = vec(mean_channels(A_l^2)) / ||.||_2 is the normalised attention
map of stage l (Zagoruyko and Komodakis 2017), read from the `stage{l}`
activations the model sows into the "intermediates" collection, and the
squared distance is averaged over positions and gated samples. As in the
reference (PyTorch `F.kl_div` with its default element-wise mean), the KL term
is divided by the number of classes, so beta keeps its reference weight.
Each iteration draws one z batch, takes `generator_steps` generator steps and
then `student_steps` student steps on the (then fixed) G(z); gradients are
clipped to a global norm of 5 as in the reference.

Keeping the best student. The reference student relearns the forget class late
in training (forget accuracy 0% at 750 pseudo-batches, 76% at 900) although
the gate never lets a forget-class sample through: soft labels carry it. So
every `eval_every` iterations the student (eval mode) is scored on a held-out
batch G(z_eval) (z_eval never trained on) by the gated KL to the teacher, and
the student with the lowest score so far is kept in the scan carry and
returned. The criterion uses no forget data and no real data at all.

What `info` reports. The operator cannot measure forget accuracy (it never
sees a forget example; the runner's evaluation measures it on real data
afterwards). Per evaluation it reports the retain proxy ("criterion", gated
KL; "agreement", teacher-student argmax agreement on gated samples) and two
forget proxies on the held-out generated batch: the teacher's probability mass
on the forget classes ("teacher_forget_mass", and "gate_rate", the fraction
kept) and the fraction of samples the student assigns to a forget class
("student_forget_rate"). "examples_seen" is 0; "generated_seen" counts the
pseudo-samples used (with repetition).

Hyper-parameters (defaults):
  num_iterations 150: iterations of (generator steps, student steps). The
    reference runs 4,000 pseudo-batches and reports its table at 450-900.
    At these defaults an iteration on 28x28 images (width-0.125 ResNet-18)
    costs ~9 s on 2 CPU cores, the generator's convolutions most of it;
    `configs/mnist.py` shrinks the generator, the batch and the student steps
    to ~1.7 s an iteration, and a student that small a budget leaves is near
    chance: this method wants an accelerator.
  batch_size 256, latent_dim 128, generator_width 64.
  generator_steps 1, student_steps 10 (reference).
  generator_learning_rate 1e-3, student_learning_rate 1e-3 (Adam; reference).
  grad_clip 5.0 (global norm; reference).
  threshold 0.01 (gate; reference).
  at_beta 250.0 (attention transfer weight; reference), kl_temperature 1.0.
  eval_every 10 (iterations between selections; must divide num_iterations),
  eval_size 256 (held-out latent codes).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hamforget import train
from hamforget.models import Generator
from hamforget.unlearn import base
from hamforget.unlearn import unsir


def attention(activations: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H*W): mean of squares over channels, L2-normalised per example."""
  maps = jnp.mean(jnp.square(activations.astype(jnp.float32)), axis=-1)
  maps = maps.reshape(maps.shape[0], -1)
  return maps / jnp.maximum(jnp.linalg.norm(maps, axis=-1, keepdims=True), 1e-12)


def _forward(model, variables, images, train_mode: bool):
  """Logits, stage activations (list, by stage name) and the batch statistics after."""
  mutable = ["intermediates", "batch_stats"] if train_mode else ["intermediates"]
  logits, state = model.apply(variables, images, train=train_mode, mutable=mutable)
  sown = state["intermediates"]
  stages = [sown[name][0] for name in sorted(sown) if name.startswith("stage")]
  return logits, stages, state.get("batch_stats", variables["batch_stats"])


def _gated_mean(values: jax.Array, gate: jax.Array) -> jax.Array:
  return jnp.sum(values * gate) / jnp.maximum(jnp.sum(gate), 1.0)


def _kl(teacher_logits, student_logits, temperature: float) -> jax.Array:
  """Per-example KL(p_T || p_S) at `temperature`, (B,)."""
  log_t = jax.nn.log_softmax(teacher_logits / temperature)
  log_s = jax.nn.log_softmax(student_logits / temperature)
  return jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)


def _only_gated(gate: jax.Array) -> jax.Array:
  """Indices (B,) that fill a batch with the gated samples alone, each repeated
  about equally often (all indices when nothing passes the gate)."""
  size = gate.shape[0]
  passed = jnp.sum(gate > 0)
  order = jnp.argsort(gate <= 0, stable=True)  # gated samples first, in order
  return order[jnp.arange(size) % jnp.maximum(passed, 1)]


def _gate(teacher_logits, forget_classes, threshold: float) -> jax.Array:
  """1.0 where no forget class has teacher probability above `threshold`, (B,)."""
  probs = jax.nn.softmax(teacher_logits)
  return (jnp.max(probs[:, forget_classes], axis=-1) <= threshold).astype(jnp.float32)


@base.register("gkt", needs=set(),
               defaults={"num_iterations": 150, "batch_size": 256, "latent_dim": 128,
                         "generator_width": 64, "generator_steps": 1, "student_steps": 10,
                         "generator_learning_rate": 1e-3, "student_learning_rate": 1e-3,
                         "grad_clip": 5.0, "threshold": 0.01, "at_beta": 250.0,
                         "kl_temperature": 1.0, "eval_every": 10, "eval_size": 256})
def gkt(model, variables, access, request, config, rng):
  del request
  unsir.check_class_request("gkt", access)
  if config.num_iterations % config.eval_every:
    raise ValueError(f"gkt: eval_every={config.eval_every} must divide "
                     f"num_iterations={config.num_iterations}")
  num_evals = config.num_iterations // config.eval_every
  forget_classes = access.forget_classes
  num_classes = access.num_classes
  temperature = config.kl_temperature
  teacher = jax.lax.stop_gradient(variables)
  student_rng, generator_rng, z_rng, eval_rng = jax.random.split(rng, 4)

  # The classifier's convolution lowering (the fast one on CPU) serves G too.
  generator = Generator(access.image_shape, config.generator_width,
                        conv=getattr(model, "conv", nn.Conv))
  generator_variables = generator.init(
      generator_rng, jnp.zeros((2, config.latent_dim), jnp.float32), train=True)
  student = train.init_variables(model, access.image_shape, student_rng)
  generator_tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                             optax.adam(config.generator_learning_rate))
  student_tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                           optax.adam(config.student_learning_rate))

  def generate(generator_params, generator_stats, z):
    images, state = generator.apply(
        {"params": generator_params, "batch_stats": generator_stats}, z, train=True,
        mutable=["batch_stats"])
    return images, state["batch_stats"]

  def teacher_forward(images):
    logits, stages, _ = _forward(model, teacher, images, train_mode=False)
    return jax.lax.stop_gradient(logits), jax.lax.stop_gradient(stages)

  def generator_loss(generator_params, generator_stats, student_variables, z):
    images, generator_stats = generate(generator_params, generator_stats, z)
    teacher_logits = _forward(model, teacher, images, train_mode=False)[0]
    student_logits, _, _ = _forward(model, student_variables, images, train_mode=True)
    gate = jax.lax.stop_gradient(_gate(teacher_logits, forget_classes, config.threshold))
    kl = _gated_mean(_kl(teacher_logits, student_logits, temperature), gate) / num_classes
    return -kl, generator_stats

  def student_loss(params, batch_stats, images, teacher_logits, teacher_stages, gate):
    logits, stages, new_stats = _forward(
        model, {"params": params, "batch_stats": batch_stats}, images, train_mode=True)
    kl = _gated_mean(_kl(teacher_logits, logits, temperature), gate) / num_classes
    transfer = sum(
        _gated_mean(jnp.mean(jnp.square(attention(s) - attention(t)), axis=-1), gate)
        for s, t in zip(stages, teacher_stages))
    new_stats = jax.tree.map(lambda new, old: jnp.where(jnp.any(gate > 0), new, old),
                             new_stats, batch_stats)
    return kl + config.at_beta * transfer, new_stats

  def iteration(carry, index):
    generator_state, student_state = carry
    generator_params, generator_stats, generator_opt = generator_state
    params, batch_stats, student_opt = student_state
    z = jax.random.normal(jax.random.fold_in(z_rng, index),
                          (config.batch_size, config.latent_dim), jnp.float32)

    def generator_step(state, _):
      generator_params, generator_stats, generator_opt = state
      (loss, generator_stats), grads = jax.value_and_grad(generator_loss, has_aux=True)(
          generator_params, generator_stats, {"params": params, "batch_stats": batch_stats}, z)
      updates, generator_opt = generator_tx.update(grads, generator_opt, generator_params)
      return (optax.apply_updates(generator_params, updates), generator_stats, generator_opt), loss

    generator_state, generator_losses = jax.lax.scan(
        generator_step, (generator_params, generator_stats, generator_opt), None,
        length=config.generator_steps)
    generator_params, generator_stats, generator_opt = generator_state

    # The student steps see one fixed batch: G and z do not change meanwhile.
    # It holds the gated samples alone (repeated to the static batch size), so
    # an ungated sample reaches neither the loss nor the BatchNorm statistics.
    images, generator_stats = generate(generator_params, generator_stats, z)
    images = jax.lax.stop_gradient(images)
    teacher_logits, teacher_stages = teacher_forward(images)
    gate = _gate(teacher_logits, forget_classes, config.threshold)
    keep = _only_gated(gate)
    images, teacher_logits, gate_rate = images[keep], teacher_logits[keep], jnp.mean(gate)
    teacher_stages = [stage[keep] for stage in teacher_stages]
    gate = gate[keep]

    def student_step(state, _):
      params, batch_stats, student_opt = state
      (loss, batch_stats), grads = jax.value_and_grad(student_loss, has_aux=True)(
          params, batch_stats, images, teacher_logits, teacher_stages, gate)
      updates, new_opt = student_tx.update(grads, student_opt, params)
      # Nothing gated (the reference skips such a batch): no step, not even Adam's momentum.
      skip = lambda new, old: jnp.where(jnp.any(gate > 0), new, old)
      params = jax.tree.map(skip, optax.apply_updates(params, updates), params)
      return (params, batch_stats, jax.tree.map(skip, new_opt, student_opt)), loss

    student_state, student_losses = jax.lax.scan(
        student_step, (params, batch_stats, student_opt), None, length=config.student_steps)
    carry = ((generator_params, generator_stats, generator_opt), student_state)
    return carry, {"generator_loss": jnp.mean(generator_losses),
                   "student_loss": jnp.mean(student_losses), "gate_rate": gate_rate}

  z_eval = jax.random.normal(eval_rng, (config.eval_size, config.latent_dim), jnp.float32)

  def evaluate(generator_params, generator_stats, student_variables):
    images, _ = generate(generator_params, generator_stats, z_eval)
    teacher_logits, _ = teacher_forward(images)
    student_logits = train.apply_model(model, student_variables, images, train=False)[0]
    gate = _gate(teacher_logits, forget_classes, config.threshold)
    student_class = jnp.argmax(student_logits, -1)
    return {
        "criterion": _gated_mean(_kl(teacher_logits, student_logits, temperature), gate),
        "agreement": _gated_mean(student_class == jnp.argmax(teacher_logits, -1), gate),
        "gate_rate": jnp.mean(gate),
        "teacher_forget_mass": jnp.mean(
            jnp.sum(jax.nn.softmax(teacher_logits)[:, forget_classes], axis=-1)),
        "student_forget_rate": jnp.mean(jnp.any(student_class[:, None] == forget_classes, -1)),
    }

  def chunk(carry, chunk_index):
    state, best, best_criterion, best_index = carry
    indices = chunk_index * config.eval_every + jnp.arange(config.eval_every)
    state, curves = jax.lax.scan(iteration, state, indices)
    (generator_params, generator_stats, _), (params, batch_stats, _) = state
    current = {"params": params, "batch_stats": batch_stats}
    scores = evaluate(generator_params, generator_stats, current)
    improved = scores["criterion"] < best_criterion
    best = jax.tree.map(lambda new, old: jnp.where(improved, new, old), current, best)
    best_criterion = jnp.where(improved, scores["criterion"], best_criterion)
    best_index = jnp.where(improved, chunk_index, best_index)
    return (state, best, best_criterion, best_index), (curves, scores)

  state = ((generator_variables["params"], generator_variables["batch_stats"],
            generator_tx.init(generator_variables["params"])),
           (student["params"], student["batch_stats"], student_tx.init(student["params"])))
  carry = (state, student, jnp.float32(jnp.inf), jnp.int32(-1))
  (_, best, best_criterion, best_index), (curves, scores) = jax.lax.scan(
      chunk, carry, jnp.arange(num_evals))

  steps_per_iteration = config.generator_steps + config.student_steps
  info = {
      "steps": jnp.int32(config.num_iterations * config.student_steps),
      "generator_steps": jnp.int32(config.num_iterations * config.generator_steps),
      "examples_seen": jnp.int32(0),  # zero-shot: no training example exists here
      "generated_samples": jnp.int32(config.num_iterations * config.batch_size),
      "generated_seen": jnp.int32(config.num_iterations * steps_per_iteration
                                  * config.batch_size),
      "generator_loss": curves["generator_loss"].reshape(-1),
      "loss": curves["student_loss"].reshape(-1),
      "train_gate_rate": curves["gate_rate"].reshape(-1),
      "eval_iteration": (jnp.arange(num_evals, dtype=jnp.int32) + 1) * config.eval_every,
      "best_iteration": (best_index + 1) * config.eval_every,
      "best_criterion": best_criterion,
      **{f"eval_{name}": value for name, value in scores.items()},
  }
  return best, info
