r"""Throughput of the project's ResNet-18 train step, against a PyTorch reference.

  python -m launch.benchmark                       # CPU: the issue's shapes
  python -m launch.benchmark --shapes=28x28x1 --steps=5
  python -m launch.benchmark --mode=accelerator    # GPU/TPU: 224x224 bf16, MFU
  python -m launch.benchmark --end_to_end_config=configs/mnist.py:local --shapes=28x28x1

Prints one JSON object. Each section is a small function returning a dict;
`SECTIONS` lists them in order, so a new measurement is one more function.

CPU mode measures, per shape, the jitted train step (ResNet-18 full width,
SGD with momentum, cross-entropy, BatchNorm in train mode) with the fastest
levers found on a 2-core machine (per-layer conv lowering from
`hamforget.models.fast_conv`, a data-parallel mesh over virtual CPU devices)
and, interleaved step by step so that load from other processes hits both
alike, the same architecture in PyTorch eager when torch is importable.
torch is never a dependency of the package. It then times the main job's
own training path, an epoch in one `lax.scan`, on 1 and 2 virtual devices
(`measure_scanned_epoch`), and the main job end to end, phase by phase
(`measure_main_job`).

Model FLOPs are XLA's cost analysis of the unsharded step with nn.Conv (XLA
does not count multiplications by the zero padding, so they are ~5-10% below
the textbook count).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

from absl import app, flags

_SHAPES = flags.DEFINE_list(
    "shapes", ["28x28x1", "32x32x3", "64x64x3", "224x224x3"],
    "Train-step shapes to measure (names from SHAPES).")
flags.register_validator("shapes", lambda names: all(n in SHAPES for n in names),
                         message="--shapes: each must be one of SHAPES")  # checked at parse
_STEPS = flags.DEFINE_integer("steps", 0, "Timed steps per shape and framework; 0: the shape's default.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.")
_MODE = flags.DEFINE_enum("mode", "cpu", ["cpu", "accelerator"], "Which benchmark.")
_CONV = flags.DEFINE_enum("conv", "auto", ["auto", "xla", "matmul"],
                          "Convolution lowering: auto (fast_conv.conv_for), xla (nn.Conv), "
                          "matmul (patches + matmul for every layer).")
_DEVICES = flags.DEFINE_integer(
    "devices", 0, "Data-parallel CPU devices for every shape; 0: the shape's measured best.")
_JPEGS = flags.DEFINE_integer("jpegs", 600, "JPEGs decoded by the cache benchmark.")
_END_TO_END = flags.DEFINE_string(
    "end_to_end_config", "configs/mnist.py",
    "CPU mode: the main job (`launch.main`) whose phases are timed, run as a "
    "subprocess in a temporary workdir; '' skips it.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch eager reference if importable.")
_PEAK_TFLOPS = flags.DEFINE_float(
    "peak_tflops", 989.0, "Accelerator mode: dense bf16 peak of one device (H200: ~989).")
_ACCEL_BATCH = flags.DEFINE_integer("accelerator_batch", 256, "Accelerator mode: global batch.")


@dataclasses.dataclass(frozen=True)
class Shape:
  """One train-step configuration.

  Attributes:
    size: image height = width in pixels.
    channels: 1 (grey) or 3 (RGB).
    stem: "small" or "imagenet" (see models/resnet.py).
    batch: global batch size.
    steps: default number of timed steps.
    devices: virtual CPU devices of the data-parallel mesh, the fastest
      measured on an idle 2-core machine with the fast_conv lowering: 2 for
      every shape (img/s over 1 device: +11% at 28x28, +3% at 64x64, +8% at
      224x224; 4 devices: 2-13% slower than 2). Under load from other
      processes 1 device was level or better.
  """
  size: int
  channels: int
  stem: str
  batch: int
  steps: int
  devices: int


SHAPES = {
    "28x28x1": Shape(28, 1, "small", 128, 3, 2),
    "64x64x3": Shape(64, 3, "imagenet", 64, 5, 2),
    "224x224x3": Shape(224, 3, "imagenet", 16, 3, 2),
    "32x32x3": Shape(32, 3, "small", 128, 3, 2),
}


def _median(xs):
  xs = sorted(xs)
  n = len(xs)
  return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


# ----------------------------------------------------------------------------
# JAX side.

def _jax():
  import jax  # deferred: XLA_FLAGS must be set first (see main)
  return jax


def measure_matmul_peak(size: int = 2048, repeats: int = 7) -> dict:
  """f32 matmul throughput of XLA on this machine: the roofline for the convs.

  Returns:
    {"matmul_peak_gflops": best of `repeats` (size x size) @ (size x size), ...}.
  """
  jax = _jax()
  import jax.numpy as jnp
  a = jnp.ones((size, size), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t)
  flops = 2 * size**3
  # Best rather than median: the peak is what the hardware can do when the
  # other processes on the machine let it.
  return {"matmul_peak_gflops": round(flops / min(times) / 1e9, 1),
          "matmul_median_gflops": round(flops / _median(times) / 1e9, 1),
          "matmul_size": size}


def _conv_module(name: str):
  import flax.linen as nn
  from hamforget.models import fast_conv
  if name == "xla":
    return nn.Conv
  if name == "matmul":
    return fast_conv.conv_for("cpu", fast_conv.ALL_MATMUL)
  return fast_conv.conv_for(_jax().default_backend())


def make_train_step(model, tx):
  """(state, images, labels) -> (state, loss); state = (params, batch_stats, opt_state)."""
  jax = _jax()
  import optax

  def step(state, images, labels):
    params, batch_stats, opt_state = state

    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  return step


class JaxTrainStep:
  """A compiled ResNet-18 train step on a ("data",) mesh, with its inputs.

  Args:
    shape: the Shape.
    devices: devices in the mesh (the batch is split over them).
    conv: "auto", "xla" or "matmul".
    dtype: compute dtype (bf16 on accelerators); parameters stay float32.
    num_classes: logits size.
  """

  def __init__(self, shape: Shape, devices: int, conv: str = "auto", dtype=None,
               num_classes: int = 10):
    jax = _jax()
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from hamforget.models.resnet import ResNet18

    dtype = dtype or jnp.float32
    self.batch = shape.batch
    image = (shape.size, shape.size, shape.channels)
    model = ResNet18(num_classes=num_classes, stem=shape.stem, dtype=dtype, conv=_conv_module(conv))
    self.mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                              devices=jax.devices()[:devices])
    replicated, split = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("data"))
    tx = optax.sgd(0.01, momentum=0.9)

    def init():
      variables = model.init(jax.random.key(0), jnp.zeros((1, *image)), train=False)
      return variables["params"], variables["batch_stats"], tx.init(variables["params"])

    self.state = jax.jit(init, out_shardings=replicated)()
    rng = np.random.default_rng(0)
    self.images = jax.device_put(
        rng.uniform(-1, 1, (shape.batch, *image)).astype(np.float32), split)
    self.labels = jax.device_put(rng.integers(0, num_classes, shape.batch).astype(np.int32), split)
    step = make_train_step(model, tx)
    t = time.perf_counter()
    # Donating the state lets XLA update parameters and momenta in place. The
    # mesh in context tells fast_conv each device's share of the batch.
    with jax.set_mesh(self.mesh):
      self.compiled = jax.jit(step, donate_argnums=0,
                              out_shardings=(replicated, replicated)).lower(
                                  self.state, self.images, self.labels).compile()
    self.compile_s = time.perf_counter() - t
    # Model FLOPs: the unsharded step with nn.Conv, whatever the lowering.
    reference = ResNet18(num_classes=num_classes, stem=shape.stem, dtype=dtype)
    avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                         (self.state, self.images, self.labels))
    self.flops = float(jax.jit(make_train_step(reference, tx)).lower(*avals).cost_analysis()["flops"])

  def __call__(self) -> float:
    """Runs one step; returns its wall time in seconds."""
    t = time.perf_counter()
    self.state, loss = self.compiled(self.state, self.images, self.labels)
    loss.block_until_ready()
    return time.perf_counter() - t


# ----------------------------------------------------------------------------
# PyTorch reference (same architecture as hamforget.models.resnet.ResNet18).

def _torch():
  try:
    import torch
  except ImportError:
    return None
  return torch


def torch_resnet18(in_channels: int, num_classes: int, stem: str, width: float = 1.0):
  """ResNet-18 with BasicBlocks, as models/resnet.py builds it, in torch.nn."""
  torch = _torch()
  tnn, F = torch.nn, torch.nn.functional

  class Block(tnn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
      self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
      self.proj = None
      if stride != 1 or cin != cout:
        self.proj = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                   tnn.BatchNorm2d(cout, eps=1e-5, momentum=0.1))

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return F.relu((x if self.proj is None else self.proj(x)) + y)

  class Net(tnn.Module):

    def __init__(self):
      super().__init__()
      base = max(1, int(round(64 * width)))
      if stem == "imagenet":
        # SAME max-pool of models/resnet.py = padding 1 for 3x3/2 on even sizes.
        self.stem = tnn.Sequential(tnn.Conv2d(in_channels, base, 7, 2, 3, bias=False),
                                   tnn.BatchNorm2d(base), tnn.ReLU(), tnn.MaxPool2d(3, 2, 1))
      else:
        self.stem = tnn.Sequential(tnn.Conv2d(in_channels, base, 3, 1, 1, bias=False),
                                   tnn.BatchNorm2d(base), tnn.ReLU())
      blocks, cin = [], base
      for i in range(4):
        for j in range(2):
          blocks.append(Block(cin, base * 2**i, 2 if i > 0 and j == 0 else 1))
          cin = base * 2**i
      self.blocks = tnn.Sequential(*blocks)
      self.fc = tnn.Linear(cin, num_classes)

    def forward(self, x):
      return self.fc(self.blocks(self.stem(x)).mean((2, 3)))

  return Net()


class TorchTrainStep:
  """The PyTorch eager train step (NCHW, float32, all cores), same optimiser."""

  def __init__(self, shape: Shape, num_classes: int = 10):
    torch = _torch()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    self.batch = shape.batch
    self.model = torch_resnet18(shape.channels, num_classes, shape.stem).train()
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
    self.images = torch.rand(shape.batch, shape.channels, shape.size, shape.size) * 2 - 1
    self.labels = torch.randint(0, num_classes, (shape.batch,))
    self.loss_fn = torch.nn.CrossEntropyLoss()

  def __call__(self) -> float:
    t = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    loss = self.loss_fn(self.model(self.images), self.labels)
    loss.backward()
    self.opt.step()
    loss.item()
    return time.perf_counter() - t


# ----------------------------------------------------------------------------
# Sections.

def measure_train_step(name: str, shape: Shape, peak_gflops: float, conv: str,
                       devices: int, steps: int, warmup: int, with_torch: bool) -> dict:
  """JAX and (if available) PyTorch train-step throughput, timed alternately.

  Returns:
    A dict with img/s of each, their ratio, step times (s), model GFLOP/s and
    the fraction of the measured matmul peak.
  """
  jax_step = JaxTrainStep(shape, devices, conv)
  torch_step = TorchTrainStep(shape) if with_torch and _torch() is not None else None
  for _ in range(warmup):
    jax_step()
    if torch_step:
      torch_step()
  jax_times, torch_times = [], []
  for _ in range(steps):  # interleaved: both see the same background load
    jax_times.append(jax_step())
    if torch_step:
      torch_times.append(torch_step())
  t_jax = _median(jax_times)
  gflops = jax_step.flops / t_jax / 1e9
  out = {
      "batch": shape.batch, "image": [shape.size, shape.size, shape.channels],
      "stem": shape.stem, "conv": conv, "devices": devices,
      "jax_img_per_s": round(shape.batch / t_jax, 2),
      "jax_step_s": [round(t, 3) for t in jax_times],
      "jax_compile_s": round(jax_step.compile_s, 1),
      "model_gflop_per_step": round(jax_step.flops / 1e9, 2),
      "jax_gflops": round(gflops, 1),
      "jax_fraction_of_matmul_peak": round(gflops / peak_gflops, 3),
  }
  if torch_step:
    t_torch = _median(torch_times)
    out.update({
        "torch_img_per_s": round(shape.batch / t_torch, 2),
        "torch_step_s": [round(t, 3) for t in torch_times],
        "torch_gflops": round(jax_step.flops / t_torch / 1e9, 1),
        "jax_over_torch": round(t_torch / t_jax, 3),
    })
  return out


def cpu_sections() -> list[Callable[[dict], dict]]:
  """The CPU benchmark: each entry takes the results so far and returns its own."""

  def environment(_):
    jax = _jax()
    torch = _torch()
    return {"environment": {
        "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": jax.device_count(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__ if torch else None,
        "load_average_1min": round(os.getloadavg()[0], 2)}}

  def matmul_peak(_):
    return {"matmul": measure_matmul_peak()}

  def train_steps(results):
    peak = results["matmul"]["matmul_peak_gflops"]
    out = {}
    for name in _SHAPES.value:
      shape = SHAPES[name]
      out[name] = measure_train_step(
          name, shape, peak, _CONV.value, _DEVICES.value or shape.devices,
          _STEPS.value or shape.steps, _WARMUP.value, _TORCH.value)
      print(f"{name}: {json.dumps(out[name])}", file=sys.stderr, flush=True)
    return {"train_step": out}

  def jpeg_cache(_):
    return {"cache": measure_jpeg_cache(_JPEGS.value)}

  def scanned_epoch(_):
    return {"scanned_epoch": {f"{n}_devices": measure_scanned_epoch(n)
                              for n in (1, 2) if n <= _jax().device_count()}}

  def end_to_end(_):
    return {"end_to_end": measure_main_job(_END_TO_END.value)} if _END_TO_END.value else {}

  return [environment, matmul_peak, train_steps, scanned_epoch, jpeg_cache, end_to_end]


def measure_scanned_epoch(num_devices: int, num_examples: int = 4000, epochs: int = 2) -> dict:
  """Images/s of the main job's training path: `train.fit_epoch` (one
  `lax.scan` over the epoch's steps, batches gathered and augmented on the
  device) for the default MNIST config, on a data-parallel mesh of
  `num_devices` virtual CPU devices. Random uint8 digits; one compilation."""
  jax = _jax()
  import numpy as np
  from configs import mnist
  from hamforget import sharding, train
  from hamforget.data import batches
  from hamforget.models import build_model
  config = mnist.get_config()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_examples, 28, 28, 1), np.uint8)
  labels = rng.integers(0, 10, num_examples).astype(np.int32)
  mesh = sharding.make_mesh(num_devices)
  with jax.set_mesh(mesh):
    model = build_model(config.model, 10)
    spec = train.make_fit_spec(model, config.train, config.augment, num_examples)
    data = batches.to_device(images, labels, mesh)
    val = batches.to_device(images[:512], labels[:512], mesh)
    carry = train.init_fit(spec, train.init_variables(model, (28, 28, 1), jax.random.key(0)))
    epoch = jax.jit(lambda c, k: train.fit_epoch(spec, c, data, val, k))
    start = time.perf_counter()
    compiled = epoch.lower(carry, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - start
    times = []
    for e in range(epochs):
      start = time.perf_counter()
      carry = jax.block_until_ready(compiled(carry, jax.random.key(2 + e)))
      times.append(time.perf_counter() - start)
  steps = batches.steps_per_epoch(num_examples, spec.batch_size)
  return {"devices": num_devices, "batch": spec.batch_size, "steps_per_epoch": steps,
          "compile_s": round(compile_s, 1), "epoch_s_median": round(_median(times), 2),
          "img_per_s": round(steps * spec.batch_size / _median(times), 1)}


def measure_main_job(config: str) -> dict:
  """Wall seconds of `python -m launch.main --config=<config>`, whole and by phase.

  The phases come from the run's `timings.json`; per model, `compile_s` and
  `execute_s` (the operator's jitted program, execution only) from its record
  in `models/<name>.json`. The dataset cache is cold (a fresh cache folder).
  """
  import subprocess
  import tempfile
  with tempfile.TemporaryDirectory() as folder:
    workdir = os.path.join(folder, "run")
    command = [sys.executable, "-m", "launch.main", f"--config={config}",
               f"--workdir={workdir}", f"--config.data.cache_dir={folder}/cache"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the job's own devices
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, "timings.json")) as f:
      phases = json.load(f)
    models = {}
    for name in sorted(os.listdir(os.path.join(workdir, "models"))):
      if name.endswith(".json"):
        with open(os.path.join(workdir, "models", name)) as f:
          record = json.load(f)
        models[name[:-5]] = {"compile_s": round(record.get("compile_s", 0.0), 2),
                             "execute_s": round(record.get("work_s", record.get("wall_s")),
                                                2)}
  by_program = phases.pop("compile_by_program", {})
  return {"config": config, "command_s": round(seconds, 1),
          "startup_s": round(seconds - phases["total"], 1),
          # Tracing, lowering and compiling (or loading from the persistent
          # cache) of the whole job, against its wall time.
          "compile_share": round(phases.get("compile_s", float("nan")) / seconds, 3),
          "phases_s": phases, "compile_s_by_program": by_program, "models": models}


def measure_jpeg_cache(count: int, size: int = 224) -> dict:
  """Images/s of the decode cache on `count` 600x450 JPEGs resized to `size`.

  The JPEGs are smooth random colour fields at quality 90, about the byte size
  of HAM10000's; decoding uses every core and PIL's reduced-scale draft mode.
  """
  import tempfile
  import numpy as np
  from PIL import Image
  from hamforget.data import cache
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as folder:
    paths = []
    for i in range(count):
      coarse = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
      image = Image.fromarray(coarse).resize((600, 450), Image.BICUBIC)
      paths.append(os.path.join(folder, f"ISIC_{i:07d}.jpg"))
      image.save(paths[-1], quality=90)
    start = time.perf_counter()
    images = cache.decode_and_resize(paths, size, workers=0)
    seconds = time.perf_counter() - start
  return {"jpegs": count, "source_hw": [450, 600], "target": size,
          "workers": os.cpu_count(), "seconds": round(seconds, 2),
          "img_per_s": round(count / seconds, 1), "shape": list(images.shape)}


def accelerator_sections() -> list[Callable[[dict], dict]]:
  """ResNet-18 224x224, bf16 compute, f32 params: img/s and model-FLOPs utilisation."""

  def resnet18_224_bf16(_):
    jax = _jax()
    import jax.numpy as jnp
    n = jax.device_count()
    shape = Shape(224, 3, "imagenet", _ACCEL_BATCH.value, _STEPS.value or 20, n)
    step = JaxTrainStep(shape, n, conv="auto", dtype=jnp.bfloat16, num_classes=1000)
    for _ in range(max(_WARMUP.value, 2)):
      step()
    times = [step() for _ in range(shape.steps)]
    t = _median(times)
    achieved = step.flops / t / 1e12
    peak = _PEAK_TFLOPS.value * n
    return {"resnet18_224x224_bf16": {
        "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
        "devices": n, "batch": shape.batch, "img_per_s": round(shape.batch / t, 1),
        "step_s_median": round(t, 4), "compile_s": round(step.compile_s, 1),
        "model_tflop_per_step": round(step.flops / 1e12, 3),
        "achieved_tflops": round(achieved, 1), "peak_tflops": peak,
        "mfu": round(achieved / peak, 4)}}

  return [resnet18_224_bf16]


def main(argv):
  del argv
  sections = cpu_sections() if _MODE.value == "cpu" else accelerator_sections()
  results: dict[str, Any] = {"mode": _MODE.value}
  for section in sections:
    results.update(section(results))
  print(json.dumps(results, indent=1))


def _set_cpu_devices(argv):
  """Requests virtual CPU devices before JAX starts: as many as any shape uses.

  A mesh over the first n of them leaves the others idle at no cost.
  """
  flags.FLAGS(argv, known_only=True)
  if _MODE.value != "cpu":
    return
  # At least 2: the scanned-epoch section compares 1 and 2 devices.
  wanted = max(2, _DEVICES.value or max(SHAPES[s].devices for s in _SHAPES.value))
  # On a loaded machine one device's share of a step can lag the others' by
  # more than XLA's default 40 s collective timeout, which aborts the process.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={wanted}"
                             " --xla_cpu_collective_call_terminate_timeout_seconds=900")


if __name__ == "__main__":
  _set_cpu_devices(sys.argv)
  app.run(main)
