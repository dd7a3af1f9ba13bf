"""The original model: trained on the whole training split, forget set included.

Resumes from the last epoch checkpointed by a run of the same config; the
checkpoints of each config live apart, so a changed config starts afresh.
"""

from __future__ import annotations

import os

import jax

from hamforget import checkpoint, observe, progress, records, timing, train
from hamforget.data import batches
from hamforget.data.prepare import ExperimentData
from hamforget.store import ORIGINAL, model_fingerprint


def fingerprint(config, data: ExperimentData) -> str:
  """The original's store and checkpoint key: the config sections and data
  it trains from, not the forget request (`store.model_fingerprint`)."""
  return model_fingerprint(config, ORIGINAL, data.train_fingerprint)


def init_variables(model, image_shape: tuple[int, int, int], rng: jax.Array) -> train.Variables:
  """Fresh variables, created replicated over the mesh in context."""
  return train.init_replicated(model, image_shape, rng)


def train_batches(config, data: ExperimentData, mesh=None):
  """The training split as `config.data.pipeline` asks: on the device, or streamed by grain."""
  if config.data.pipeline == "device":
    return data.device["train"]
  if config.data.pipeline == "grain":
    return batches.stream(data.host["train"].images, data.host["train"].labels,
                          config.train.batch_size, config.seed,
                          num_workers=config.data.num_workers, mesh=mesh)
  raise ValueError(f"data.pipeline={config.data.pipeline!r}: expected 'device' or 'grain'")


class _TimedCheckpoints:
  """`FitCheckpoints` whose reads and writes are paused time of `watch`: the
  operators write no checkpoints, so the original's work is timed without them."""

  def __init__(self, inner: checkpoint.FitCheckpoints, watch: timing.Stopwatch):
    self._inner, self._watch = inner, watch

  def restore_latest(self, *args, **kwargs):
    with self._watch.pause():
      return self._inner.restore_latest(*args, **kwargs)

  def save(self, *args, **kwargs):
    with self._watch.pause():
      return self._inner.save(*args, **kwargs)

  def wait(self):
    with self._watch.pause():
      return self._inner.wait()

  def __getattr__(self, name):
    return getattr(self._inner, name)


def train_original(config, model, data: ExperimentData, workdir: str, rng,
                   mesh=None, should_stop=None,
                   log: records.MetricsLog | None = None) -> tuple[train.Variables, dict]:
  """Trains the original model with early stopping; returns (variables, info).

  Each epoch's losses go to `log` (metrics.jsonl; one in `workdir` when
  None), the progress bar, and the absl log when no terminal is attached.
  `should_stop` is `train.fit`'s hook: asked after each checkpointed epoch.
  `info` holds `work_s`, `compile_s` and `checkpoint_s` (`timing.Stopwatch`)
  of this invocation: the work excludes compilation and checkpoint I/O, as an
  operator's does.

  Raises:
    train.DivergedError: an epoch's loss is not finite.
    train.Preempted: `should_stop()` returned True; the epoch is checkpointed.
  """
  num_train = data.device["train"].size
  spec = train.make_fit_spec(model, config.train, config.augment, num_train)
  init_rng, fit_rng = jax.random.split(rng)
  variables = init_variables(model, data.image_shape, init_rng)
  # Keyed by config and data: a changed one must not resume the other's training.
  key = fingerprint(config, data)
  log = log or records.MetricsLog(workdir)
  checkpoints = checkpoint.FitCheckpoints(os.path.join(workdir, "checkpoints", ORIGINAL, key))
  bar = progress.bar(spec.num_epochs, f"train {ORIGINAL}", unit="epoch")
  profiler = observe.EpochProfiler(observe.setting(config, "profile_dir", ""))

  def on_epoch(carry):
    epoch = int(carry.epoch) - 1
    profiler.after_epoch(epoch + 1)
    record = {"epoch": epoch + 1, "train_loss": float(carry.train_loss[epoch]),
              "val_loss": float(carry.val_loss[epoch]),
              "val_accuracy": float(carry.val_accuracy[epoch])}
    memory = observe.device_memory_peak_gb()
    if memory is not None:  # GPU and TPU report it; CPU does not
      record["device_memory_peak_gb"] = memory
    if jax.process_index() == 0:
      log.append(ORIGINAL, key, record)
    bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{record['val_accuracy']:.3f}")
    bar.update(1)

  bar.update(checkpoints.latest_step() or 0)
  with timing.Stopwatch() as watch:
    try:
      variables, info = train.fit(spec, variables, train_batches(config, data, mesh),
                                  data.device["val"], fit_rng,
                                  checkpoints=_TimedCheckpoints(checkpoints, watch),
                                  on_epoch=on_epoch, should_stop=should_stop, name=ORIGINAL)
    finally:  # also on DivergedError/Preempted: an open manager's threads outlive the exit
      bar.close()
      checkpoints.close()
      profiler.close()
  steps = info["epochs"] * batches.steps_per_epoch(num_train, spec.batch_size)
  return variables, dict(info, steps=steps, examples_seen=steps * spec.batch_size,
                         **watch.record(paused_as="checkpoint_s"))
