"""Work and compile seconds of a block of code, kept apart.

    with timing.Stopwatch() as watch:
      ...  # jitted calls
    watch.work_s, watch.compile_s

A jitted loop (the original's `train.fit`) compiles on its first call, inside
the time of its first epoch; JAX reports the seconds it spends tracing,
lowering and compiling through `jax.monitoring`, so they are subtracted here
without changing the loop. One listener is registered once per process and
feeds every open stopwatch (they nest: an outer one counts the inner one's
compilation too). `pause()` takes a part out of the work (checkpoint writes),
counted in `paused_s`.
"""

from __future__ import annotations

import contextlib
import threading
import time

import jax

# The durations JAX records for one compilation: trace, lowering, XLA compile
# (or the persistent cache's load, which this event also covers).
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")

_lock = threading.Lock()
_open: list["Stopwatch"] = []
_listening = False


def _on_event(event: str, duration_s: float, **kwargs) -> None:
  if event in COMPILE_EVENTS:
    program = str(kwargs.get("fun_name", "?"))
    with _lock:
      for watch in _open:
        watch.compile_s += duration_s
        watch.compile_by_program[program] = watch.compile_by_program.get(program, 0.0) + duration_s


def _listen() -> None:
  global _listening
  with _lock:
    if not _listening:
      jax.monitoring.register_event_duration_secs_listener(_on_event)
      _listening = True


class Stopwatch:
  """Wall seconds of a `with` block, split into work, compilation and paused parts.

  Attributes (seconds, final once the block has exited):
    wall_s: the whole block.
    compile_s: JAX tracing, lowering and compilation within it.
    paused_s: the parts inside `pause()` (less any compilation there).
    work_s: wall_s - compile_s - paused_s.
    compile_by_program: JAX's name of each program (the jitted function's,
      e.g. "fit_epoch") -> its tracing, lowering and compiling seconds, summed
      over its compilations; they sum to compile_s.
  """

  def __init__(self):
    self.wall_s = self.compile_s = self.paused_s = 0.0
    self.compile_by_program: dict[str, float] = {}
    self._start = None

  def __enter__(self) -> "Stopwatch":
    _listen()
    with _lock:
      _open.append(self)
    self._start = time.perf_counter()
    return self

  def __exit__(self, *exc) -> None:
    self.wall_s = time.perf_counter() - self._start
    with _lock:
      _open.remove(self)

  @contextlib.contextmanager
  def pause(self):
    """Counts the block in `paused_s`, not in the work (compilation inside stays compile_s)."""
    start, compiled = time.perf_counter(), self.compile_s
    try:
      yield
    finally:
      self.paused_s += time.perf_counter() - start - (self.compile_s - compiled)

  @property
  def work_s(self) -> float:
    return max(0.0, self.wall_s - self.compile_s - self.paused_s)

  def slowest_programs(self, count: int = 20) -> dict[str, float]:
    """The `count` programs that took longest to compile, slowest first (seconds, rounded)."""
    ranked = sorted(self.compile_by_program.items(), key=lambda item: -item[1])[:count]
    return {name: round(seconds, 2) for name, seconds in ranked}

  def record(self, paused_as: str = "paused_s") -> dict[str, float]:
    """{"work_s", "compile_s", paused_as}: the block's seconds, for a cost record."""
    return {"work_s": self.work_s, "compile_s": self.compile_s, paused_as: self.paused_s}
