r"""The Kaggle HAM10000 variants, one CSV of pixels per size.

    python -m launch.main --config=configs/hmnist.py --workdir=/tmp/hmnist \
        --config.data.root=/path/to/hmnist_28_28_RGB.csv

Accepts hmnist_28_28_RGB.csv, hmnist_28_28_L.csv, hmnist_8_8_RGB.csv and
hmnist_8_8_L.csv. These files carry no lesion ids, so splits are by image.
Their label order is mapped onto the project's (see hamforget/data/sources).
"""

from configs import common


def get_config(arg: str = ""):
  config = common.base_config()
  config.data.name = "hmnist"
  config.data.image_size = 0  # native: 28 or 8
  config.model.name = "resnet18"
  config.model.width = 0.25
  config.model.stem = "small"
  config.augment.flip_vertical = True
  config.augment.rotation_degrees = 20.0
  config.augment.brightness = 0.1
  config.augment.contrast = 0.1
  config.augment.saturation = 0.1
  config.train.batch_size = 128
  config.train.num_epochs = 20
  config.train.patience = 4
  # 67% of HAM10000 is `nv`: effective-number class weights (Cui et al. 2019)
  # and the best epoch by balanced accuracy (README, "Class imbalance";
  # class_weighting="none", select_on="loss" is plain training).
  config.train.class_weighting = "effective_number"
  config.train.select_on = "balanced_accuracy"
  config.forget.kind = "examples"
  config.forget.fraction = 0.1
  config.unlearn.methods = ("finetune", "neggrad_plus", "salun", "scrub", "bad_teacher")
  if "local" in common.parse_args(arg, {"local"}):
    common.make_local(config)
  return config
