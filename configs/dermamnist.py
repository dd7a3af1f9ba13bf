r"""MedMNIST DermaMNIST (HAM10000 resized, with the publisher's split).

    python -m launch.main --config=configs/dermamnist.py --workdir=/tmp/derma \
        --config.data.root=/path/to/dermamnist_64.npz

Accepts dermamnist.npz (28x28), dermamnist_64.npz, _128.npz and _224.npz; the
official train/val/test split is kept.
"""

from configs import common


def get_config(arg: str = ""):
  config = common.base_config()
  config.data.name = "dermamnist"
  config.data.image_size = 0  # native size of the file
  config.model.name = "resnet18"
  config.model.width = 0.5
  config.model.stem = "small"
  config.augment.flip_vertical = True
  config.augment.rotation_degrees = 20.0
  config.augment.brightness = 0.1
  config.augment.contrast = 0.1
  config.augment.saturation = 0.1
  config.train.batch_size = 128
  config.train.num_epochs = 30
  config.train.patience = 5
  # 67% of HAM10000 is `nv`: effective-number class weights (Cui et al. 2019)
  # and the best epoch by balanced accuracy (README, "Class imbalance";
  # class_weighting="none", select_on="loss" is plain training).
  config.train.class_weighting = "effective_number"
  config.train.select_on = "balanced_accuracy"
  config.forget.kind = "classes"
  config.forget.classes = "df"
  config.unlearn.methods = ("finetune", "neggrad_plus", "salun", "unsir", "scrub", "bad_teacher")
  if "local" in common.parse_args(arg, {"local"}):
    common.make_local(config)
  return config
