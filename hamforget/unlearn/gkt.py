"""`gkt`: gated knowledge transfer, zero-shot.

Chundawat, Tarun, Mandal and Kankanhalli, "Zero-Shot Machine Unlearning",
IEEE TIFS 2023 (the GKT method), on top of the adversarial zero-shot knowledge
transfer of Micaelli and Storkey (NeurIPS 2019). A generator G (noise z of
size `latent_dim` -> an image in the classifier's input space,
`hamforget.models.Generator`, ending in an affine BatchNorm as the
reference's) and a student S (the original's architecture, freshly
initialised) play against the original T (the teacher, frozen). On each batch
x = G(z) a band-pass gate keeps only the pseudo-samples the teacher does not
tie to a forget class,

    g(x) = 1[ max_{c in forget} p_T(c | x) <= threshold ],

so the forget classes' knowledge never reaches the student. With
KL = KL(q_T(x / tau) || p_S(x / tau)) averaged over the gated samples,

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

Two departures from the reference, each to keep what the paper promises:
- q_T is the teacher's distribution over the retained classes alone (its
  forget-class probabilities, at most `threshold` on a gated sample, are
  dropped and the rest renormalised). The reference distils the full soft
  labels, and its student relearns the forget class late in training (forget
  accuracy climbs back after ~1,000 iterations): the gate stops forget-class
  samples, but the soft labels of the others still carry the class's trace.
- There is no "best student" selection: the last student is returned. (The
  reference keeps every 50th student and the reader picks one by its forget
  accuracy on real data, which a zero-shot method may not see.)

BatchNorm. Teacher and student both run in eval mode throughout, as in the
reference notebook (its `evaluate` calls `student.eval()` before training
and nothing calls `train()` again): the student's running statistics stay at
their initial values, so the model it is trained as is the model it is
evaluated as. (Trained in train mode on generated batches, its statistics
would be those of generated images, and on real ones it would answer one
class.)

The student's curve. Every `eval_every` iterations the student's accuracy on
the validation split (the `probe`: held-out real images, never trained on) is
recorded, on the retained classes and on the forgotten ones, in `info`
("curve_retain_accuracy", "curve_forget_accuracy" at "curve_iteration"), so a
late relearning of the forgotten classes shows in the report. It is an output
only: nothing computed from the probe reaches the generator, the student or
any choice the operator makes (a test swaps the probe and compares the
student bit for bit).

The code reads as the game: `make_game` fixes the teacher, the generator
module and the optimisers; `init_players` draws G and S; each `iteration`
takes `generator_step`s against the student, builds the `gated_batch` and
takes `student_step`s on it; `train` runs the iterations in `chunk`s of
`eval_every`, recording the student's curve after each.

Hyper-parameters (defaults; measurements in docs/operator-tuning.md, `gkt`):
  num_iterations 150: iterations of (generator steps, student steps). The
    reference runs 4,000 and reports its table at 450-900; on a CPU the
    generator's and the student's convolutions make this method an
    accelerator's job (`configs/mnist.py` states its budget).
  batch_size 256, latent_dim 128, generator_width 64 (reference).
  generator_steps 1, student_steps 10 (reference).
  generator_learning_rate 1e-3, student_learning_rate 1e-3 (Adam; reference).
  grad_clip 5.0 (global norm; reference).
  threshold 0.01 (gate; reference).
  at_beta 250.0 (attention transfer weight; reference), kl_temperature 1.0.
  eval_every 10: iterations between points of the reported curve; must
    divide num_iterations.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from hamforget import train
from hamforget.data import batches
from hamforget.models import Generator
from hamforget.unlearn import base, common

# Class forgetting only, as in the paper: the gate is defined by the forgotten
# classes, and a group or example request names none.
REQUEST_KINDS = ("classes",)
DEFAULTS = {"num_iterations": 150, "batch_size": 256, "latent_dim": 128, "generator_width": 64,
            "generator_steps": 1, "student_steps": 10, "generator_learning_rate": 1e-3,
            "student_learning_rate": 1e-3, "grad_clip": 5.0, "threshold": 0.01,
            "at_beta": 250.0, "kl_temperature": 1.0, "eval_every": 10}

# ----------------------------------------------------------------------------
# Losses' parts.


def attention(activations: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H*W): mean of squares over channels, L2-normalised per example."""
  maps = jnp.mean(jnp.square(activations.astype(jnp.float32)), axis=-1)
  maps = maps.reshape(maps.shape[0], -1)
  return maps / jnp.maximum(jnp.linalg.norm(maps, axis=-1, keepdims=True), 1e-12)


def forward(model, variables, images):
  """Eval-mode logits (B, C) and stage activations (a list, by stage name)."""
  logits, state = model.apply(variables, images, train=False, mutable=["intermediates"])
  sown = state["intermediates"]
  return logits, [sown[name][0] for name in sorted(sown) if name.startswith("stage")]


def gated_mean(values: jax.Array, gate: jax.Array) -> jax.Array:
  """Mean of `values` over the samples whose gate is 1 (0 when none is)."""
  return jnp.sum(values * gate) / jnp.maximum(jnp.sum(gate), 1.0)


def gate_of(teacher_logits, forget_classes, threshold: float) -> jax.Array:
  """1.0 where no forget class has teacher probability above `threshold`, (B,)."""
  probs = jax.nn.softmax(teacher_logits)
  return (jnp.max(probs[:, forget_classes], axis=-1) <= threshold).astype(jnp.float32)


def retained_logits(teacher_logits, forget_classes) -> jax.Array:
  """The teacher's logits with the forget classes pushed to -1e9: their
  softmax is the teacher's distribution over the retained classes alone
  (finite, so 0 * log 0 terms stay 0 in the KL)."""
  is_forget = jnp.any(jnp.arange(teacher_logits.shape[-1])[:, None] == forget_classes, axis=-1)
  return jnp.where(is_forget, -1e9, teacher_logits)


def only_gated(gate: jax.Array) -> jax.Array:
  """Indices (B,) that fill a batch with the gated samples alone, each repeated
  about equally often. When nothing passes, a batch of sample 0 (the student
  step then moves nothing)."""
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
  student's BatchNorm statistics (eval mode: never updated), the forget
  classes, the hyper-parameters and the two optimisers."""
  model: nn.Module
  generator: nn.Module
  teacher: dict                 # the original's variables, a constant
  student_stats: dict           # the student's initial batch_stats, a constant
  forget_classes: jax.Array
  num_classes: int
  config: ml_collections.FrozenConfigDict
  generator_tx: optax.GradientTransformation
  student_tx: optax.GradientTransformation

  def student(self, params) -> dict:
    return {"params": params, "batch_stats": self.student_stats}


class Players(NamedTuple):
  """The learned state: (params, batch_stats, optimiser state) of G, and
  (params, optimiser state) of S."""
  generator: tuple
  student: tuple


class GatedBatch(NamedTuple):
  """The student's batch of an iteration: gated pseudo-samples and the teacher's view."""
  images: jax.Array
  teacher_logits: jax.Array     # retained classes only (`retained_logits`)
  teacher_stages: list
  gate: jax.Array


def make_game(model, variables, access: base.Access, config, student_stats) -> Game:
  """The fixed part of the game; G uses the classifier's convolution lowering
  (the fast one on CPU)."""
  clipped_adam = lambda learning_rate: optax.chain(
      optax.clip_by_global_norm(config.grad_clip), optax.adam(learning_rate))
  return Game(
      model=model,
      generator=Generator(access.image_shape, config.generator_width,
                          conv=getattr(model, "conv", nn.Conv)),
      teacher=jax.lax.stop_gradient(variables), student_stats=student_stats,
      forget_classes=access.forget_classes, num_classes=access.num_classes, config=config,
      generator_tx=clipped_adam(config.generator_learning_rate),
      student_tx=clipped_adam(config.student_learning_rate))


def init_players(game: Game, student_params, generator_rng: jax.Array) -> Players:
  """A fresh generator, the student's params, and their optimiser states."""
  generator_variables = game.generator.init(
      generator_rng, jnp.zeros((2, game.config.latent_dim), jnp.float32), train=True)
  return Players(
      (generator_variables["params"], generator_variables["batch_stats"],
       game.generator_tx.init(generator_variables["params"])),
      (student_params, game.student_tx.init(student_params)))


def generate(game: Game, generator_params, generator_stats, z):
  """G(z) in train mode: (images, G's batch statistics after)."""
  images, state = game.generator.apply(
      {"params": generator_params, "batch_stats": generator_stats}, z, train=True,
      mutable=["batch_stats"])
  return images, state["batch_stats"]


def kl_to_teacher(game: Game, teacher_logits, student_logits) -> jax.Array:
  """Per-sample KL(q_T || p_S) at the temperature, over the retained classes (B,)."""
  return common.kl_divergence_of_logits(retained_logits(teacher_logits, game.forget_classes),
                                        student_logits, game.config.kl_temperature)


# ----------------------------------------------------------------------------
# One iteration: generator steps, the gated batch, student steps.


def generator_loss(game: Game, generator_params, generator_stats, student_params, z):
  """-(gated KL(teacher || student) / C) on G(z): G seeks disagreement. The
  gradient flows through both networks' views of G(z), not through the gate."""
  images, generator_stats = generate(game, generator_params, generator_stats, z)
  teacher_logits = forward(game.model, game.teacher, images)[0]
  student_logits = forward(game.model, game.student(student_params), images)[0]
  gate = jax.lax.stop_gradient(
      gate_of(teacher_logits, game.forget_classes, game.config.threshold))
  kl = gated_mean(kl_to_teacher(game, teacher_logits, student_logits), gate) / game.num_classes
  return -kl, generator_stats


def generator_step(game: Game, student_params, z, generator_state, _):
  """One clipped-Adam step of G against the current student (a `lax.scan` body)."""
  generator_params, generator_stats, generator_opt = generator_state
  (loss, generator_stats), grads = jax.value_and_grad(
      lambda params, stats: generator_loss(game, params, stats, student_params, z),
      has_aux=True)(generator_params, generator_stats)
  updates, generator_opt = game.generator_tx.update(grads, generator_opt, generator_params)
  return (optax.apply_updates(generator_params, updates), generator_stats, generator_opt), loss


def gated_batch(game: Game, generator_params, generator_stats, z):
  """The student's fixed batch of an iteration: G(z) (G does not change during
  the student steps) filled with the gated samples alone, repeated to the
  static batch size, so an ungated sample never reaches the loss.

  Returns:
    (GatedBatch, G's batch statistics after, the fraction of G(z) gated in).
  """
  images, generator_stats = generate(game, generator_params, generator_stats, z)
  images = jax.lax.stop_gradient(images)
  teacher_logits, teacher_stages = jax.lax.stop_gradient(forward(game.model, game.teacher, images))
  gate = gate_of(teacher_logits, game.forget_classes, game.config.threshold)
  keep = only_gated(gate)
  batch = GatedBatch(images[keep], teacher_logits[keep], [stage[keep] for stage in teacher_stages],
                     gate[keep])
  return batch, generator_stats, jnp.mean(gate)


def student_loss(game: Game, params, batch: GatedBatch):
  """Gated KL(teacher || student) / C + beta * attention transfer."""
  logits, stages = forward(game.model, game.student(params), batch.images)
  kl = gated_mean(kl_to_teacher(game, batch.teacher_logits, logits), batch.gate) / game.num_classes
  transfer = sum(
      gated_mean(jnp.mean(jnp.square(attention(s) - attention(t)), axis=-1), batch.gate)
      for s, t in zip(stages, batch.teacher_stages))
  return kl + game.config.at_beta * transfer


def student_step(game: Game, batch: GatedBatch, student_state, _):
  """One clipped-Adam step of S on the gated batch (a `lax.scan` body). With
  nothing gated (the reference skips such a batch) nothing moves, not even
  Adam's moments."""
  params, student_opt = student_state
  loss, grads = jax.value_and_grad(lambda params: student_loss(game, params, batch))(params)
  updates, new_opt = game.student_tx.update(grads, student_opt, params)
  anything_gated = jnp.any(batch.gate > 0)
  params = keep_if(anything_gated, optax.apply_updates(params, updates), params)
  return (params, keep_if(anything_gated, new_opt, student_opt)), loss


def iteration(game: Game, z_rng: jax.Array, players: Players, index):
  """Iteration `index` (a `lax.scan` body): z from fold_in(z_rng, index),
  `generator_steps` G steps, then `student_steps` S steps on the gated G(z)."""
  config = game.config
  z = jax.random.normal(jax.random.fold_in(z_rng, index),
                        (config.batch_size, config.latent_dim), jnp.float32)
  student_params = players.student[0]
  generator_state, generator_losses = jax.lax.scan(
      lambda state, x: generator_step(game, student_params, z, state, x),
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
# The whole game, and the student's curve on the probe.


def probe_accuracy(game: Game, student_params, probe: batches.DeviceData):
  """The student's accuracy on the probe's retained-class and forget-class
  examples (eval mode), each 0 when the probe holds none."""
  logits = train.predict(game.model, game.student(student_params), probe.images,
                         batch_size=min(probe.size, 512))
  correct = jnp.argmax(logits, -1) == probe.labels
  is_forget = jnp.any(probe.labels[:, None] == game.forget_classes, axis=-1)
  return {"retain_accuracy": gated_mean(correct, ~is_forget),
          "forget_accuracy": gated_mean(correct, is_forget)}


def chunk(game: Game, z_rng: jax.Array, probe: batches.DeviceData, players: Players, chunk_index):
  """`eval_every` iterations, then the student's accuracy on the probe (a
  `lax.scan` body: the accuracies leave as outputs, never enter the carry)."""
  indices = chunk_index * game.config.eval_every + jnp.arange(game.config.eval_every)
  players, curves = jax.lax.scan(
      lambda players, index: iteration(game, z_rng, players, index), players, indices)
  return players, (curves, probe_accuracy(game, players.student[0], probe))


def play(game: Game, players: Players, z_rng: jax.Array, probe: batches.DeviceData):
  """`num_iterations` iterations in `chunk`s of `eval_every`.

  Returns:
    (the last student's params, curves per iteration, probe accuracies per chunk).
  """
  players, (curves, accuracies) = jax.lax.scan(
      lambda players, index: chunk(game, z_rng, probe, players, index), players,
      jnp.arange(game.config.num_iterations // game.config.eval_every))
  return players.student[0], curves, accuracies


@base.register("gkt", needs={base.PROBE}, defaults=DEFAULTS, request_kinds=REQUEST_KINDS)
def gkt(model, variables, access, request, config, rng):
  del request
  common.check_class_request("gkt", access)
  if config.num_iterations % config.eval_every:
    raise ValueError(f"gkt: eval_every={config.eval_every} must divide "
                     f"num_iterations={config.num_iterations}")
  student_rng, generator_rng, z_rng = jax.random.split(rng, 3)
  student = train.init_variables(model, access.image_shape, student_rng)
  game = make_game(model, variables, access, config, student["batch_stats"])
  players = init_players(game, student["params"], generator_rng)
  params, curves, accuracies = play(game, players, z_rng, access.require(base.PROBE))

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
      "gate_rate": curves["gate_rate"].reshape(-1),
      "curve_iteration": (jnp.arange(num_evals, dtype=jnp.int32) + 1) * config.eval_every,
      "curve_retain_accuracy": accuracies["retain_accuracy"],
      "curve_forget_accuracy": accuracies["forget_accuracy"],
  }
  return game.student(params), info
