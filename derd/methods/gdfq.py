"""``gdfq``: GDFQ's conditional generator (Xu et al., "Generative Low-bitwidth Data Free
Quantization", ECCV 2020) with robust distillation from T_rob, as its official code has it
(xushoukai/GDFQ @f626359: ``trainer.py`` ``Trainer.train``, ``cifar100_resnet20.hocon``,
``imagenet_resnet18.hocon``).

Generator: x = G(z, y) with y drawn uniformly over the classes and G's input the noise times a
learnt embedding of y (``derd.models.ConditionalGenerator``), trained on
``CE(T_rob(x), y) + lambda_bn * L_bn`` (``loss_G = loss_one_hot + 0.1 * BNS_loss``): the class
loss on the drawn labels is the shared term ``cls`` and L_bn the shared ``bn`` on T_rob's
BatchNorm statistics (``derd.synthesis.GENERATOR_TERMS``). G: Adam, lr 1e-3, betas (0.5, 0.999),
noise of 100 dimensions (the hocon files' ``lr_G``, ``b1``, ``b2``, ``latent_dim``).

Weights on this project's loss scales: GDFQ's BNS loss is the *mean over layers* of
``MSE(mu, mu_T) + MSE(var, var_T)``, weighted 0.1; this project's L_bn is DeepInversion's *sum over
layers* of L2 norms (``derd.losses.BatchNormStatistics``), far larger on the same batch, so GDFQ's 0.1
would drown the class loss. ``lambda_bn`` = 1e-3 keeps GDFQ's balance at the start of training (the
conversion and its measurement: docs/methods.md, "Converting a published weight"); the search draws it
over two decades each side.

Student: each iteration one RSLAD step (``derd.objectives.robust_kd``) on the very batch the
generator step produced, G(z, y) before G's update (GDFQ trains its student on ``images.detach()``
of the same batch).

Kept, with the reason: GDFQ's student objective (KL at temperature 20 plus CE on the drawn labels,
for a quantised copy of the teacher) is replaced by robust distillation, as for every baseline;
its 4 warm-up epochs of 400 without student updates are not kept (the shared budget counts
student updates); the batch is the shared ``budget.batch_size`` (GDFQ: 200); the generator ends
in a sigmoid (GDFQ's in tanh and an affine-free BatchNorm, for teachers that take normalised
inputs), as DAFL's note says; G's lr stays constant (GDFQ: x0.1 at epochs 100, 200, 300 of 400).
Published settings exist for CIFAR-100 and ImageNet only, and agree on every generator setting,
so every dataset takes the section's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derd.methods.base import GeneratorMethod, Phase, Terms
from derd.methods.registry import register_method
from derd.objectives import RobustConfig, rslad
from derd.settings import LR_MAX, WEIGHT_MAX, loguniform, setting


@dataclass
class GDFQConfig:
    """GDFQ's conditional generator; defaults: its hocon files, L_bn's weight on this project's scale."""

    lambda_bn: float = setting(
        1e-3,
        lo=0,
        hi=WEIGHT_MAX,
        search=loguniform(1e-5, 0.1),
        doc="weight of L_bn (sum of norms) beside CE on the drawn labels; GDFQ's 0.1 on its mean of MSEs",
    )
    lr_g: float = setting(
        1e-3, lo=1e-12, hi=LR_MAX, search=loguniform(1e-4, 1e-2), doc="Adam, betas (0.5, 0.999)"
    )
    latent_dim: int = setting(100, lo=2, hi=65_536, doc="the generator's noise size")


@register_method
class GDFQ(GeneratorMethod):
    name = "gdfq"
    label = "GDFQ + RSLAD"
    order = 9
    sections = {"gdfq": GDFQConfig, "robust": RobustConfig}
    metric_prefixes = ("kd/",)

    def generator_settings(self) -> dict[str, Any]:
        return {"latent_dim": self.cfg.gdfq.latent_dim, "conditional": True}

    def generator_lr(self, phase: Phase) -> float:
        return self.cfg.gdfq.lr_g

    def iteration(self, phase: Phase, step: int) -> Terms:
        weights = {"cls": 1.0, "bn": self.cfg.gdfq.lambda_bn}
        terms, x = self.synth.step(
            phase.batch_size, weights, prior=self.ctx.experts.robust, natural=None, tau=1.0
        )
        terms.update(rslad(self.ctx, x))
        return terms
