"""What a run shows of the machine: device memory, and a profiler trace on request.

    profiler = observe.EpochProfiler(config.observe.profile_dir)
    ... after each epoch: profiler.after_epoch(epoch)   # traces epoch 2
    profiler.close()

The original's per-epoch record carries `device_memory_peak_gb` where the
platform reports memory (GPU, TPU; CPU reports none).
"""

from __future__ import annotations

import jax
from absl import logging

# The epoch traced: the second, compiled and in steady state (the first
# compiles; a trace of it is mostly XLA).
TRACED_EPOCH = 2


def setting(config, key: str, default):
  """`config.observe.<key>`, or `default` for a config written before the section existed."""
  return config.get("observe", {}).get(key, default)


def device_memory_peak_gb() -> float | None:
  """Peak memory in use on this process's first device (GB, 1e9 bytes); None if unreported."""
  stats = jax.local_devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 1e9


class EpochProfiler:
  """A JAX profiler trace of epoch `TRACED_EPOCH` into `folder` ("" = off).

  Read it with TensorBoard's profile plugin (`tensorboard --logdir folder`)
  or ui.perfetto.dev. Only process 0 traces.
  """

  def __init__(self, folder: str):
    self.folder = folder if folder and jax.process_index() == 0 else ""
    self._tracing = False

  def after_epoch(self, epoch: int) -> None:
    """Call after each epoch (counted from 1): starts the trace after epoch
    TRACED_EPOCH - 1 and stops it after TRACED_EPOCH."""
    if not self.folder:
      return
    if epoch == TRACED_EPOCH - 1 and not self._tracing:
      jax.profiler.start_trace(self.folder)
      self._tracing = True
    elif epoch == TRACED_EPOCH and self._tracing:
      self.close()
      logging.info("profiler trace of epoch %d written to %s", epoch, self.folder)

  def close(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
