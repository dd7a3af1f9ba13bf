"""`random_label`: train on the forget set with random wrong labels, and on retain.

Random labelling (RL) of Golatkar et al. 2020 and Graves et al. 2021
("Amnesiac Machine Learning"), in the form of SalUn's RL baseline (Fan et al.
ICLR 2024). Each step draws a retain batch B_r with its true labels and a
forget batch B_f whose labels are redrawn uniformly from the *other* classes,
y~ = (y + U{1, ..., K-1}) mod K, and minimises the cross-entropy on both:

    L(theta) = mean over B_r u B_f of CE(f_theta(x), y or y~)

The forget examples are mixed into every step (like SalUn's concatenated
retain + relabelled forget loader) rather than run as a separate forget epoch.
Labels are drawn afresh at every step. Unlike the reference, which draws from
all K classes, the true class is excluded: a "random" label equal to the true
one would reinforce what is to be forgotten.

`salun` is this training with its updates restricted to the weights most
salient for the forget loss; both run `common.train_with_random_labels`.

BatchNorm: the student runs in train mode (as the reference), one forward pass
over the concatenated batch.

Hyper-parameters (defaults; measurements in docs/operator-tuning.md, section
`random_label`):
  learning_rate: 5e-3, constant SGD (SalUn's RL baseline: 0.01, which cost
    the retained classes more than the bound allows on the default MNIST
    run, and added label noise on example requests).
  momentum: 0.9.
  weight_decay: 5e-4 on kernels.
  num_epochs: 1.0 passes over the retain set (fractions allowed). SalUn runs
    10 epochs on CIFAR-10 (retraining: 160); here one epoch, a tenth of
    retraining's cost on the default MNIST run, forgets the class.
  batch_size: 128 retain examples per step.
  forget_batch_size: 32 relabelled forget examples per step (the forget set is
    cycled through).
"""

from __future__ import annotations

from hamforget.unlearn import base, common

DEFAULTS = {"learning_rate": 5e-3, "momentum": 0.9, "weight_decay": 5e-4, "num_epochs": 1.0,
            "batch_size": 128, "forget_batch_size": 32}


@base.register("random_label", needs={base.RETAIN, base.FORGET}, defaults=DEFAULTS)
def random_label(model, variables, access, request, config, rng):
  del request
  return common.train_with_random_labels(model, variables, access, config, rng)
