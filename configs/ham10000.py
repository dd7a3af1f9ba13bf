r"""HAM10000 at 224x224 with ResNet-18 (ImageNet stem): the seed's setting.

    python -m launch.main --config=configs/ham10000.py --workdir=/tmp/ham \
        --config.data.root=/path/to/HAM10000

`root` holds HAM10000_metadata.csv and HAM10000_images_part_1/ and _part_2/
(or one folder with every image). The default request forgets a random 10% of
lesions (every image of each: a patient's deletion request). Splits are by
lesion, stratified by diagnosis. `:local` shrinks everything for a smoke run
on a CPU, whatever the size of the data it points at.
"""

from configs import common


def get_config(arg: str = ""):
  config = common.base_config()
  config.data.name = "ham10000"
  config.data.image_size = 224
  config.data.val_fraction = 0.15
  config.data.test_fraction = 0.15
  config.model.name = "resnet18"
  config.model.width = 1.0
  config.model.stem = "imagenet"
  # The seed's augmentation: flips both ways, rotation, colour jitter.
  config.augment.flip_horizontal = True
  config.augment.flip_vertical = True
  config.augment.rotation_degrees = 20.0
  config.augment.brightness = 0.1
  config.augment.contrast = 0.1
  config.augment.saturation = 0.1
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-3
  config.train.weight_decay = 1e-4
  config.train.batch_size = 64
  config.train.num_epochs = 30
  config.train.patience = 5
  # 67% of HAM10000 is `nv`: effective-number class weights (Cui et al. 2019)
  # and the best epoch by balanced accuracy (README, "Class imbalance";
  # class_weighting="none", select_on="loss" is plain training).
  config.train.class_weighting = "effective_number"
  config.train.select_on = "balanced_accuracy"
  config.train.eval_batch_size = 256
  config.forget.kind = "groups"
  config.forget.fraction = 0.1
  # Every operator that serves a group request (unsir, emmn and gkt forget
  # whole classes only).
  config.unlearn.methods = ("finetune", "neggrad_plus", "random_label", "salun", "l1_sparse",
                            "bad_teacher", "scrub")
  if "local" in common.parse_args(arg, {"local"}):
    common.make_local(config)
    config.data.image_size = 32
    config.train.learning_rate = 3e-3
  return config
