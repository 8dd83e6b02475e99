"""``dfad``: DFAD's adversarial generator (Fang et al., "Data-Free Adversarial Distillation", 2019)
with robust distillation from T_rob, as its official code has it (VainF/Data-Free-Adversarial-
Distillation @c161591, ``DFAD_cifar.py``; ``DFAD_mnist.py`` for small grey digits).

Generator loss: -mean |T_rob(x) - S(x)| over batch and classes (the L1 model discrepancy on
logits, maximised; line 43), no data prior, with the student in train mode as in the code (its
BatchNorm on the generator's batch; lines 19, 40). G: Adam, lr 1e-3, PyTorch's default betas
(line 151); noise of ``student.latent_dim`` (CIFAR presets 256 as ``--nz``; digits 100 as
MNIST's). One generator step every ``dfad.student_steps`` iterations (DFAD's k = 5, line 24); the
generator step and each student step draw their own fresh z (lines 25, 35).

Kept, with the reason: DFAD's own student loss (the L1 discrepancy) and SGD are replaced by one
RSLAD step (``derd.objectives.robust_kd``) on a fresh batch, as DFARD's authors combined
data-free methods with robust distillation; the generator's step decay (x0.1 at epochs 100 and
200 of 500) is not applied, its lr staying 1e-3 over the shared budget; the generator ends in a
sigmoid, as DAFL's note says. Budget: the shared ``budget`` of student iterations (DFAD's k
counts inside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derd.methods.base import GeneratorMethod, Phase, Terms
from derd.methods.registry import register_method
from derd.objectives import RobustConfig, rslad
from derd.settings import LR_MAX, integer, setting
from derd.synthesis import DEFAULT_BETAS


@dataclass
class DFADConfig:
    """DFAD's adversarial generator."""

    student_steps: int = setting(
        5, lo=1, hi=1000, doc="student iterations per generator step (DFAD's k)", search=integer(1, 10)
    )
    lr_g: float = setting(1e-3, lo=1e-12, hi=LR_MAX)


@register_method
class DFAD(GeneratorMethod):
    name = "dfad"
    label = "DFAD + RSLAD"
    order = 5
    sections = {"dfad": DFADConfig, "robust": RobustConfig}
    metric_prefixes = ("kd/",)

    def generator_settings(self) -> dict[str, Any]:
        return {"betas": DEFAULT_BETAS, "student_train": True}

    def generator_lr(self, phase: Phase) -> float:
        return self.cfg.dfad.lr_g

    def iteration(self, phase: Phase, step: int) -> Terms:
        terms: Terms = {}
        if step % self.cfg.dfad.student_steps == 0:
            teacher = self.ctx.experts.robust
            terms, _ = self.synth.step(
                phase.batch_size, {"adv_l1": 1.0}, prior=teacher, natural=teacher, tau=1.0
            )
        terms.update(rslad(self.ctx, self.synth.sample(phase.batch_size)))
        return terms
