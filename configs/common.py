"""The shared config schema. Every experiment config starts from `base_config()`.

Every key a module reads is defined here with its default and unit, so that
`--config.section.key=value` works for all of them and a typo is an error.
"""

import ml_collections

from hamforget.data import forget
from hamforget.unlearn import catalog
from hamforget.evaluate import config as evaluate_config


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist_embedded"  # a source in hamforget.data.sources
  config.data.root = ""                # folder, or file for single-file formats
  config.data.image_size = 28          # resize target in pixels (H = W); 0 = native
  config.data.cache_dir = ""           # "" -> $HAMFORGET_CACHE or ~/.cache/hamforget
  config.data.val_fraction = 0.1       # of examples, by group, stratified by class
  config.data.test_fraction = 0.1
  config.data.limit = 0                # keep at most this many examples (0 = all)
  config.data.pipeline = "device"      # "device" (resident arrays) or "grain"
  config.data.num_workers = 2          # grain worker processes (0 = in-process)
  config.data.decode_workers = 0       # cache decode processes (0 = all cores)

  config.augment = ml_collections.ConfigDict()
  config.augment.flip_horizontal = True
  config.augment.flip_vertical = False
  config.augment.rotation_degrees = 0.0  # uniform in [-d, d]
  config.augment.brightness = 0.0        # colour jitter strengths, 0 = off
  config.augment.contrast = 0.0
  config.augment.saturation = 0.0

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18"       # resnet10 | resnet18 | resnet34 | resnet50 | allcnn
  config.model.width = 1.0             # channel multiplier
  config.model.stem = "small"          # imagenet (224x224) | small (<= 64x64)
  # Compute dtype; params, loss, softmax and BatchNorm statistics stay float32.
  # auto: bfloat16 on GPU and TPU, float32 on CPU (where bf16 is emulated, slower).
  config.model.dtype = "auto"
  config.model.conv = "auto"           # auto (fastest lowering per backend) | xla

  config.train = ml_collections.ConfigDict()
  config.train.optimizer = "sgd"       # sgd (with momentum) | adamw
  config.train.learning_rate = 0.1     # peak, after warmup
  config.train.momentum = 0.9
  config.train.weight_decay = 5e-4
  config.train.warmup_epochs = 1.0
  config.train.batch_size = 128        # global, over all devices
  config.train.num_epochs = 10
  config.train.patience = 3            # early stopping on select_on, in epochs (0 = off)
  # Best epoch and early stopping: loss | balanced_accuracy | macro_f1 (on
  # val, which never holds what an unlearning run forgets).
  config.train.select_on = "loss"
  # Class imbalance (hamforget.train.class_weights): none | inverse_frequency
  # | effective_number loss weights, by the counts of the data trained on.
  config.train.class_weighting = "none"
  config.train.effective_number_beta = 0.999
  config.train.sampling = "uniform"    # uniform | class_balanced (device pipeline)
  config.train.eval_batch_size = 512

  config.forget = ml_collections.ConfigDict()
  config.forget.kind = "classes"       # classes | groups | examples
  config.forget.classes = forget.DEFAULT_CLASSES  # comma-separated names or indices
  config.forget.fraction = forget.DEFAULT_FRACTION  # groups/examples: random fraction to forget
  config.forget.ids = ""               # groups/examples: comma-separated explicit ids

  config.unlearn = ml_collections.ConfigDict()
  # Operators to run after `original` and `retrain`, in order.
  config.unlearn.methods = ("finetune",)
  # Every operator's hyper-parameters, with the defaults its module documents
  # (read from its source by `catalog`, without importing JAX):
  # --config.unlearn.<name>.<key>=value overrides one.
  for name, defaults in catalog.defaults().items():
    config.unlearn[name] = ml_collections.ConfigDict(defaults)

  config.evaluate = evaluate_config.evaluate_config()

  config.observe = ml_collections.ConfigDict()
  # Training curves as TensorBoard event files in WORKDIR/tensorboard (process 0).
  config.observe.tensorboard = True
  # A folder: a JAX profiler trace of the original's second epoch (compiled,
  # steady state) is written there, for TensorBoard's profile plugin or
  # Perfetto. "" = off.
  config.observe.profile_dir = ""

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = 0          # 0 = every device
  # Virtual CPU devices (a data-parallel mesh uses the cores better than one
  # CPU device); ignored on GPU/TPU and when XLA_FLAGS already sets a count.
  config.mesh.cpu_devices = 2
  return config


def parse_args(arg: str, known: set[str]) -> set[str]:
  """The comma-separated words of a config argument (`configs/x.py:a,b`), checked."""
  args = {word.strip() for word in arg.split(",") if word.strip()}
  unknown = args - known
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}: expected some of "
                     f"{sorted(known)}, comma-separated")
  return args


def make_local(config: ml_collections.ConfigDict) -> None:
  """Shrinks a config in place to a smoke-run size: small images, tiny model, few epochs."""
  config.data.image_size = min(config.data.image_size or 16, 16)
  config.data.limit = 1000
  config.model.width = 0.0625
  config.model.stem = "small"
  config.train.num_epochs = 4
  config.train.warmup_epochs = 0.5
  config.train.batch_size = 64
