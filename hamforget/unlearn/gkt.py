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
in training (docs/operator-tuning.md, section `gkt`) although the gate never
lets a forget-class sample through: soft labels carry it. So
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

The code reads as the game: `make_game` fixes the teacher, the generator
module and the optimisers; `init_players` draws G and S; each `iteration`
takes `generator_step`s against the student, builds the `gated_batch` and
takes `student_step`s on it; `train_and_select` runs the iterations in
`chunk`s of `eval_every`, scores the student after each (`evaluate`) and keeps
the best.

Hyper-parameters (defaults):
  num_iterations 150: iterations of (generator steps, student steps). The
    reference runs 4,000 pseudo-batches and reports its table at 450-900.
    The generator's convolutions cost most of an iteration; on CPU
    `configs/mnist.py` shrinks the generator, the batch and the student steps,
    and a student that small a budget leaves is near chance: this method
    wants an accelerator (timings: docs/operator-tuning.md, section `gkt`).
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

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from hamforget import train
from hamforget.models import Generator
from hamforget.unlearn import base, common

# Class forgetting only, as in the paper: the noise (or the gate) is defined by
# the forgotten classes, and a group or example request names none.
REQUEST_KINDS = ("classes",)
DEFAULTS = {"num_iterations": 150, "batch_size": 256, "latent_dim": 128, "generator_width": 64,
            "generator_steps": 1, "student_steps": 10, "generator_learning_rate": 1e-3,
            "student_learning_rate": 1e-3, "grad_clip": 5.0, "threshold": 0.01,
            "at_beta": 250.0, "kl_temperature": 1.0, "eval_every": 10, "eval_size": 256}

# ----------------------------------------------------------------------------
# Losses' parts.


def attention(activations: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H*W): mean of squares over channels, L2-normalised per example."""
  maps = jnp.mean(jnp.square(activations.astype(jnp.float32)), axis=-1)
  maps = maps.reshape(maps.shape[0], -1)
  return maps / jnp.maximum(jnp.linalg.norm(maps, axis=-1, keepdims=True), 1e-12)


def forward(model, variables, images, train_mode: bool):
  """Logits, stage activations (list, by stage name) and the batch statistics after."""
  mutable = ["intermediates", "batch_stats"] if train_mode else ["intermediates"]
  logits, state = model.apply(variables, images, train=train_mode, mutable=mutable)
  sown = state["intermediates"]
  stages = [sown[name][0] for name in sorted(sown) if name.startswith("stage")]
  return logits, stages, state.get("batch_stats", variables["batch_stats"])


def gated_mean(values: jax.Array, gate: jax.Array) -> jax.Array:
  """Mean of `values` over the samples whose gate is 1 (0 when none is)."""
  return jnp.sum(values * gate) / jnp.maximum(jnp.sum(gate), 1.0)


def gate_of(teacher_logits, forget_classes, threshold: float) -> jax.Array:
  """1.0 where no forget class has teacher probability above `threshold`, (B,)."""
  probs = jax.nn.softmax(teacher_logits)
  return (jnp.max(probs[:, forget_classes], axis=-1) <= threshold).astype(jnp.float32)


def only_gated(gate: jax.Array) -> jax.Array:
  """Indices (B,) that fill a batch with the gated samples alone, each repeated
  about equally often (all indices when nothing passes the gate)."""
  size = gate.shape[0]
  passed = jnp.sum(gate > 0)
  order = jnp.argsort(gate <= 0, stable=True)  # gated samples first, in order
  return order[jnp.arange(size) % jnp.maximum(passed, 1)]


def keep_if(condition: jax.Array, new, old):
  """`new` where `condition` holds, else `old`, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(condition, n, o), new, old)


# ----------------------------------------------------------------------------
# The game: what stays fixed, and the players' state.


class Game(NamedTuple):
  """What stays fixed while G and S learn: the teacher, the two modules, the
  forget classes, the hyper-parameters and the two optimisers."""
  model: nn.Module
  generator: nn.Module
  teacher: dict                 # the original's variables, a constant
  forget_classes: jax.Array
  num_classes: int
  config: ml_collections.FrozenConfigDict
  generator_tx: optax.GradientTransformation
  student_tx: optax.GradientTransformation


class Players(NamedTuple):
  """The learned state: (params, batch_stats, optimiser state) of G and of S."""
  generator: tuple
  student: tuple


class GatedBatch(NamedTuple):
  """The student's batch of an iteration: gated pseudo-samples and the teacher's view."""
  images: jax.Array
  teacher_logits: jax.Array
  teacher_stages: list
  gate: jax.Array


def make_game(model, variables, access: base.Access, config) -> Game:
  """The fixed part of the game; G uses the classifier's convolution lowering
  (the fast one on CPU)."""
  clipped_adam = lambda learning_rate: optax.chain(
      optax.clip_by_global_norm(config.grad_clip), optax.adam(learning_rate))
  return Game(
      model=model,
      generator=Generator(access.image_shape, config.generator_width,
                          conv=getattr(model, "conv", nn.Conv)),
      teacher=jax.lax.stop_gradient(variables),
      forget_classes=access.forget_classes, num_classes=access.num_classes, config=config,
      generator_tx=clipped_adam(config.generator_learning_rate),
      student_tx=clipped_adam(config.student_learning_rate))


def init_players(game: Game, image_shape, generator_rng: jax.Array, student_rng: jax.Array):
  """A fresh generator and a fresh student (the classifier's architecture), with
  their optimiser states; returns (players, student variables)."""
  generator_variables = game.generator.init(
      generator_rng, jnp.zeros((2, game.config.latent_dim), jnp.float32), train=True)
  student = train.init_variables(game.model, image_shape, student_rng)
  players = Players(
      (generator_variables["params"], generator_variables["batch_stats"],
       game.generator_tx.init(generator_variables["params"])),
      (student["params"], student["batch_stats"], game.student_tx.init(student["params"])))
  return players, student


def generate(game: Game, generator_params, generator_stats, z):
  """G(z) in train mode: (images, G's batch statistics after)."""
  images, state = game.generator.apply(
      {"params": generator_params, "batch_stats": generator_stats}, z, train=True,
      mutable=["batch_stats"])
  return images, state["batch_stats"]


def teacher_view(game: Game, images):
  """The teacher's logits and stage activations on `images`, as constants."""
  logits, stages, _ = forward(game.model, game.teacher, images, train_mode=False)
  return jax.lax.stop_gradient(logits), jax.lax.stop_gradient(stages)


# ----------------------------------------------------------------------------
# One iteration: generator steps, the gated batch, student steps.


def generator_loss(game: Game, generator_params, generator_stats, student_variables, z):
  """-(gated KL(teacher || student) / C) on G(z): G seeks disagreement. The
  gradient flows through both networks' views of G(z), not through the gate."""
  images, generator_stats = generate(game, generator_params, generator_stats, z)
  teacher_logits = forward(game.model, game.teacher, images, train_mode=False)[0]
  student_logits, _, _ = forward(game.model, student_variables, images, train_mode=True)
  gate = jax.lax.stop_gradient(
      gate_of(teacher_logits, game.forget_classes, game.config.threshold))
  kl = gated_mean(common.kl_divergence_of_logits(teacher_logits, student_logits,
                                       game.config.kl_temperature), gate) / game.num_classes
  return -kl, generator_stats


def generator_step(game: Game, student_variables, z, generator_state, _):
  """One clipped-Adam step of G against the current student (a `lax.scan` body)."""
  generator_params, generator_stats, generator_opt = generator_state
  (loss, generator_stats), grads = jax.value_and_grad(
      lambda params, stats: generator_loss(game, params, stats, student_variables, z),
      has_aux=True)(generator_params, generator_stats)
  updates, generator_opt = game.generator_tx.update(grads, generator_opt, generator_params)
  return (optax.apply_updates(generator_params, updates), generator_stats, generator_opt), loss


def gated_batch(game: Game, generator_params, generator_stats, z):
  """The student's fixed batch of an iteration: G(z) (G does not change during
  the student steps) filled with the gated samples alone, repeated to the
  static batch size, so an ungated sample reaches neither the loss nor the
  BatchNorm statistics.

  Returns:
    (GatedBatch, G's batch statistics after, the fraction of G(z) gated in).
  """
  images, generator_stats = generate(game, generator_params, generator_stats, z)
  images = jax.lax.stop_gradient(images)
  teacher_logits, teacher_stages = teacher_view(game, images)
  gate = gate_of(teacher_logits, game.forget_classes, game.config.threshold)
  keep = only_gated(gate)
  batch = GatedBatch(images[keep], teacher_logits[keep], [stage[keep] for stage in teacher_stages],
                     gate[keep])
  return batch, generator_stats, jnp.mean(gate)


def student_loss(game: Game, params, batch_stats, batch: GatedBatch):
  """Gated KL(teacher || student) / C + beta * attention transfer; the
  student's BatchNorm statistics move only when something is gated in."""
  logits, stages, new_stats = forward(
      game.model, {"params": params, "batch_stats": batch_stats}, batch.images, train_mode=True)
  kl = gated_mean(common.kl_divergence_of_logits(batch.teacher_logits, logits,
                                       game.config.kl_temperature), batch.gate) / game.num_classes
  transfer = sum(
      gated_mean(jnp.mean(jnp.square(attention(s) - attention(t)), axis=-1), batch.gate)
      for s, t in zip(stages, batch.teacher_stages))
  new_stats = keep_if(jnp.any(batch.gate > 0), new_stats, batch_stats)
  return kl + game.config.at_beta * transfer, new_stats


def student_step(game: Game, batch: GatedBatch, student_state, _):
  """One clipped-Adam step of S on the gated batch (a `lax.scan` body). With
  nothing gated (the reference skips such a batch) nothing moves, not even
  Adam's moments."""
  params, batch_stats, student_opt = student_state
  (loss, batch_stats), grads = jax.value_and_grad(
      lambda params, stats: student_loss(game, params, stats, batch),
      has_aux=True)(params, batch_stats)
  updates, new_opt = game.student_tx.update(grads, student_opt, params)
  anything_gated = jnp.any(batch.gate > 0)
  params = keep_if(anything_gated, optax.apply_updates(params, updates), params)
  return (params, batch_stats, keep_if(anything_gated, new_opt, student_opt)), loss


def iteration(game: Game, z_rng: jax.Array, players: Players, index):
  """Iteration `index` (a `lax.scan` body): z from fold_in(z_rng, index),
  `generator_steps` G steps, then `student_steps` S steps on the gated G(z)."""
  config = game.config
  params, batch_stats, _ = players.student
  z = jax.random.normal(jax.random.fold_in(z_rng, index),
                        (config.batch_size, config.latent_dim), jnp.float32)
  student_variables = {"params": params, "batch_stats": batch_stats}
  generator_state, generator_losses = jax.lax.scan(
      lambda state, x: generator_step(game, student_variables, z, state, x),
      players.generator, None, length=config.generator_steps)
  generator_params, generator_stats, generator_opt = generator_state
  batch, generator_stats, gate_rate = gated_batch(game, generator_params, generator_stats, z)
  student_state, student_losses = jax.lax.scan(
      lambda state, x: student_step(game, batch, state, x),
      players.student, None, length=config.student_steps)
  players = Players((generator_params, generator_stats, generator_opt), student_state)
  return players, {"generator_loss": jnp.mean(generator_losses),
                   "student_loss": jnp.mean(student_losses), "gate_rate": gate_rate}


# ----------------------------------------------------------------------------
# Evaluation and selection of the best student.


def evaluate(game: Game, generator_params, generator_stats, student_variables, z_eval):
  """The student (eval mode) against the teacher on the held-out batch G(z_eval).

  "criterion" (gated KL, lower is better) selects the student; the rest are
  the retain and forget proxies `info` reports.
  """
  images, _ = generate(game, generator_params, generator_stats, z_eval)
  teacher_logits, _ = teacher_view(game, images)
  student_logits = train.apply_model(game.model, student_variables, images, train=False)[0]
  gate = gate_of(teacher_logits, game.forget_classes, game.config.threshold)
  student_class = jnp.argmax(student_logits, -1)
  return {
      "criterion": gated_mean(common.kl_divergence_of_logits(teacher_logits, student_logits,
                                                   game.config.kl_temperature), gate),
      "agreement": gated_mean(student_class == jnp.argmax(teacher_logits, -1), gate),
      "gate_rate": jnp.mean(gate),
      "teacher_forget_mass": jnp.mean(
          jnp.sum(jax.nn.softmax(teacher_logits)[:, game.forget_classes], axis=-1)),
      "student_forget_rate": jnp.mean(
          jnp.any(student_class[:, None] == game.forget_classes, -1)),
  }


def chunk(game: Game, z_rng: jax.Array, z_eval: jax.Array, carry, chunk_index):
  """`eval_every` iterations, then the student's score; the best student so
  far rides in the carry (a `lax.scan` body).

  carry: (players, best student variables, its criterion, its chunk index).
  """
  players, best, best_criterion, best_index = carry
  indices = chunk_index * game.config.eval_every + jnp.arange(game.config.eval_every)
  players, curves = jax.lax.scan(
      lambda players, index: iteration(game, z_rng, players, index), players, indices)
  generator_params, generator_stats, _ = players.generator
  params, batch_stats, _ = players.student
  current = {"params": params, "batch_stats": batch_stats}
  scores = evaluate(game, generator_params, generator_stats, current, z_eval)
  improved = scores["criterion"] < best_criterion
  best = keep_if(improved, current, best)
  best_criterion = jnp.where(improved, scores["criterion"], best_criterion)
  best_index = jnp.where(improved, chunk_index, best_index)
  return (players, best, best_criterion, best_index), (curves, scores)


def train_and_select(game: Game, players: Players, student, z_rng: jax.Array, z_eval):
  """`num_iterations` iterations in `chunk`s of `eval_every`, keeping the
  student that scores best after a chunk.

  Returns:
    (best student variables, its criterion, its chunk index (-1: none better
    than inf), curves per iteration, scores per chunk).
  """
  carry = (players, student, jnp.float32(jnp.inf), jnp.int32(-1))
  (_, best, best_criterion, best_index), (curves, scores) = jax.lax.scan(
      lambda carry, index: chunk(game, z_rng, z_eval, carry, index), carry,
      jnp.arange(game.config.num_iterations // game.config.eval_every))
  return best, best_criterion, best_index, curves, scores


@base.register("gkt", needs=set(), defaults=DEFAULTS,
               request_kinds=REQUEST_KINDS)
def gkt(model, variables, access, request, config, rng):
  del request
  common.check_class_request("gkt", access)
  if config.num_iterations % config.eval_every:
    raise ValueError(f"gkt: eval_every={config.eval_every} must divide "
                     f"num_iterations={config.num_iterations}")
  student_rng, generator_rng, z_rng, eval_rng = jax.random.split(rng, 4)
  game = make_game(model, variables, access, config)
  players, student = init_players(game, access.image_shape, generator_rng, student_rng)
  z_eval = jax.random.normal(eval_rng, (config.eval_size, config.latent_dim), jnp.float32)
  best, best_criterion, best_index, curves, scores = train_and_select(
      game, players, student, z_rng, z_eval)

  num_evals = config.num_iterations // config.eval_every
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
