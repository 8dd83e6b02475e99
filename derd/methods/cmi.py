"""``cmi``: contrastive model inversion (Fang et al., "Contrastive Model Inversion for Data-Free
Knowledge Distillation", IJCAI 2021) with robust distillation from T_rob, as its official code
has it (zju-vipa/CMI @9e79fa9: ``datafree/synthesis/contrastive.py``, ``datafree_kd.py``,
``datafree/hooks.py``, ``scripts/cmi/cmi_cifar10.sh``).

Synthesis (``derd.synthesis.ContrastiveSynthesizer``, where each term is written out): one
round of ``synthesis_steps`` (200) Adam steps on a freshly initialised generator and its noise
before every ``synthesis_every`` (400) student iterations (cmi_cifar10.sh: ``--g_steps 200
--kd_steps 400 --ep_steps 400``: one round per 400 student steps), minimising
``lambda_bn*L_bn + lambda_oh*CE(T(x_g), targets) + lambda_adv*L_adv + lambda_cr*L_cr`` with
cmi_cifar10.sh's weights: bn 1, oh 1, adv 0.5, cr 0.8, cr_T 0.2, a 256-d head
(datafree_kd.py 276), a feature memory of 40,960 rows and 4,096 negatives (datafree_kd.py
266-281). The student sees the teacher's global view in L_adv; keys are detached; anchors are
the current batch and the cached rows, re-projected through the current head every step.

Student: one RSLAD step (``derd.objectives.robust_kd``) per iteration on the next batch of the
image bank (every image ever kept, without replacement within a pass), randomly cropped and
flipped; teacher and student see the same augmented batch (datafree_kd.py 376-384).

Published settings: CMI's repository has hyperparameters for CIFAR-10 only (its README: "So far,
we only provide the hyperparameters to reproduce CIFAR-10 results"; no CIFAR-100 CMI script in its
history), so every dataset takes cmi_cifar10.sh's: the section's defaults.

Kept, with the reason: CMI's own student KD (KL at T = 20, SGD 0.1, wd 1e-4) is replaced by
robust distillation, as for every baseline; a synthesis round's batch is the shared
``budget.batch_size`` (CMI: 256); the local view is a square crop (RandomResizedCrop also varies
the aspect ratio in [3/4, 4/3]); the global crop's offsets are whole pixels from a continuous
draw, not kornia's uniform integer draw. Budget: the shared budget in student updates,
synthesis rounds on top (CMI costs more per student update). CMI's round 161 of a 200-round
run draws no cached row once its bank is exactly full (a NaN loss that keeps an unoptimised
batch); this ring draws from every held row instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derd.methods.base import Context, Method, Phase, Terms
from derd.methods.registry import register_method
from derd.objectives import RobustConfig, rslad
from derd.settings import LR_MAX, TEMPERATURE_MAX, WEIGHT_MAX, loguniform, setting
from derd.synthesis import ContrastiveSynthesizer


@dataclass
class CMIConfig:
    """CMI's contrastive model inversion; defaults: scripts/cmi/cmi_cifar10.sh and datafree_kd.py."""

    lambda_bn: float = setting(1.0, lo=0, hi=WEIGHT_MAX)
    lambda_oh: float = setting(1.0, lo=0, hi=WEIGHT_MAX)
    lambda_adv: float = setting(0.5, lo=0, hi=WEIGHT_MAX, search=loguniform(0.05, 5))
    lambda_cr: float = setting(0.8, lo=0, hi=WEIGHT_MAX, search=loguniform(0.08, 8))
    cr_tau: float = setting(0.2, lo=1e-3, hi=TEMPERATURE_MAX, doc="temperature of the contrastive loss")
    synthesis_steps: int = setting(
        200, lo=1, hi=100_000, doc="optimisation steps per synthesis round (CMI's g_steps)"
    )
    synthesis_every: int = setting(
        400, lo=1, hi=1_000_000, doc="student iterations per synthesis round (CMI's kd_steps)"
    )
    feature_bank: int = setting(
        40960, lo=2, hi=10_000_000, doc="raw feature rows the contrastive memory keeps (a ring)"
    )
    negatives: int = setting(
        4096, lo=1, hi=1_000_000, doc="memory rows drawn, without replacement, at each synthesis step"
    )
    head_dim: int = setting(256, lo=2, hi=65_536, doc="the projection head's output size")
    lr_g: float = setting(
        1e-3, lo=1e-12, hi=LR_MAX, doc="Adam of the generator and its noise, and of the head"
    )


@register_method
class CMI(Method):
    name = "cmi"
    label = "CMI + RSLAD"
    order = 7
    sections = {"cmi": CMIConfig, "robust": RobustConfig}
    metric_prefixes = ("kd/",)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.synth = ContrastiveSynthesizer(ctx, ctx.experts.robust)
        self.modules.update(generator=self.synth.generator, head=self.synth.head)
        self.optimizers["head"] = self.synth.head_optimizer

    def iteration(self, phase: Phase, step: int) -> Terms:
        terms: Terms = {}
        if step % self.cfg.cmi.synthesis_every == 0 or self.synth.count == 0:
            terms = self.synth.synthesize(phase.batch_size)
        terms.update(rslad(self.ctx, self.synth.batch(phase.batch_size)))
        return terms

    def sample(self, n: int):
        return self.synth.sample(n) if self.synth.count else None

    def extra_state(self) -> dict[str, Any]:
        return self.synth.state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.synth.load_state(state)
