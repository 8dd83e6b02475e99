"""``dafl``: DAFL's generator (Chen et al., "Data-Free Learning of Student Networks", ICCV 2019)
with robust distillation from T_rob, as its official code has it (huawei-noah/Efficient-Computing
@225ddd2, ``Data-Efficient-Model-Compression/DAFL/DAFL-train.py`` and its README).

Generator loss on T_rob (the baselines' one teacher), ``DAFL-train.py`` lines 175-180:
``lambda_oh*L_oh + lambda_act*L_a + lambda_ie*L_ie`` with L_oh = CE(T(x), argmax T(x)) (mean
over the batch), L_a = -mean |f_T(x)| over batch and feature dimensions (f_T: the input of T's
last linear layer), L_ie = sum_c pbar_c log10 pbar_c with pbar the batch-mean softmax of T: the
negative entropy in **base 10**, as the code takes it (1/ln 10 of the natural-log form).
No student term: DAFL's generator is not adversarial. G: Adam with PyTorch's default betas
(0.9, 0.999), no schedule (lines 117, 140).

Published settings (``presets``), from the README: CIFAR-10 oh 0.05, ie 5, a 0.01, lr_G 0.02,
latent 1000 (line 29); CIFAR-100 oh 0.5, ie 20, a 0.1, lr_G 0.02, latent 1000 (line 35); MNIST
(the script's defaults, lines 33-42) oh 1, ie 5, a 0.1, lr_G 0.2, latent 100. digits takes
MNIST's: both are 10 classes of small grey-level handwritten digits, and the MNIST settings are
the ones DAFL tuned for such data. ImageNet-100 (none published) takes CIFAR-100's (100 classes).

Student: each iteration, one RSLAD step (``derd.objectives.robust_kd``) on the very batch the
generator step produced, G(z) before G's update (DAFL updates G and S from one batch, line 181-185).

Kept, with the reason:
* the batch (DAFL: 1,024 on CIFAR, 512 on MNIST) is the shared ``budget.batch_size``, so every
  method sees as many pseudo images per student update (equal budgets);
* DAFL's own student loss and optimiser (batch-mean KL; SGD 0.1 with step decay on CIFAR,
  Adam on MNIST) are replaced by robust distillation, as DFARD's authors built these baselines;
* the generator ends in a sigmoid (images in [0, 1], normalised inside every model, where the
  attacks' eps-ball lives); DAFL's ends in tanh and an affine-free BatchNorm, for teachers that
  take normalised inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derd.methods.base import GeneratorMethod, Phase, Terms
from derd.methods.registry import register_method
from derd.objectives import RobustConfig, rslad
from derd.settings import LR_MAX, WEIGHT_MAX, loguniform, setting
from derd.synthesis import DEFAULT_BETAS


@dataclass
class DAFLConfig:
    """DAFL's generator; defaults: the MNIST script's (``DAFL-train.py`` lines 33-42)."""

    lambda_oh: float = setting(1.0, lo=0, hi=WEIGHT_MAX)
    lambda_act: float = setting(0.1, lo=0, hi=WEIGHT_MAX, search=loguniform(0.001, 1))
    lambda_ie: float = setting(
        5.0, lo=0, hi=WEIGHT_MAX, doc="weight of the base-10 information entropy", search=loguniform(0.5, 50)
    )
    lr_g: float = setting(0.2, lo=1e-12, hi=LR_MAX, doc="Adam, betas (0.9, 0.999)")
    latent_dim: int = setting(100, lo=2, hi=65_536, doc="the generator's noise size")


_CIFAR = {"dafl.lr_g": 0.02, "dafl.latent_dim": 1000}


@register_method
class DAFL(GeneratorMethod):
    name = "dafl"
    label = "DAFL + RSLAD"
    order = 4
    sections = {"dafl": DAFLConfig, "robust": RobustConfig}
    metric_prefixes = ("kd/",)
    presets = {
        "cifar10": {
            **_CIFAR,
            "dafl.lambda_oh": 0.05,
            "dafl.lambda_ie": 5.0,
            "dafl.lambda_act": 0.01,
        },  # README l. 29
        "cifar100": {
            **_CIFAR,
            "dafl.lambda_oh": 0.5,
            "dafl.lambda_ie": 20.0,
            "dafl.lambda_act": 0.1,
        },  # README l. 35
        "imagenet100": {
            **_CIFAR,
            "dafl.lambda_oh": 0.5,
            "dafl.lambda_ie": 20.0,
            "dafl.lambda_act": 0.1,
        },  # CIFAR-100's
    }  # digits: the section's defaults, DAFL-train.py's MNIST defaults

    def generator_settings(self) -> dict[str, Any]:
        return {"latent_dim": self.cfg.dafl.latent_dim, "betas": DEFAULT_BETAS}

    def generator_lr(self, phase: Phase) -> float:
        return self.cfg.dafl.lr_g

    def iteration(self, phase: Phase, step: int) -> Terms:
        d, teacher = self.cfg.dafl, self.ctx.experts.robust
        weights = {"oh": d.lambda_oh, "act": d.lambda_act, "ie_log10": d.lambda_ie}
        terms, x = self.synth.step(phase.batch_size, weights, prior=teacher, natural=None, tau=1.0)
        terms.update(rslad(self.ctx, x))
        return terms
