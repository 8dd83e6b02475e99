"""``cmi``: contrastive model inversion (Fang et al., "Contrastive Model Inversion for Data-Free
Knowledge Distillation", IJCAI 2021) with robust distillation from T_rob.

Synthesis (``derd.synthesis.ContrastiveSynthesizer``): every ``cmi.synthesis_every``
student iterations, one round of ``synthesis_steps`` Adam steps on a freshly initialised
generator and its noise, minimising
``lambda_bn*L_bn + lambda_oh*CE(T(x_global), targets) + lambda_adv*L_adv + lambda_cr*L_cr``
(random target classes; L_adv = -mean of KL(T||S) where S agrees with T; L_cr = InfoNCE
between a local and a global view's embeddings through a projection head over T's
per-image BN-input means, against the batch and ``negatives`` memory-bank entries, at
temperature ``cr_tau``). The round's lowest-loss iterate joins the image bank (the newest
``bank_size`` images). Defaults: CMI's CIFAR-10 script (bn 1, oh 1, adv 0.5, cr 0.8,
cr_T 0.2, 200 steps).

Student: one RSLAD step (``derd.objectives.robust_kd``) per iteration on a batch drawn
uniformly from the bank (CMI's own student KD is replaced by robust distillation).
Choices where CMI is silent or differs: anchors are the current batch only; the head is
Linear(d, min(d, 512)) -> ReLU -> Linear(., 128); a round's batch is the phase's batch size.
Budget as DFAD's, synthesis rounds on top (CMI costs more per student update).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derd.methods.base import Context, Method, Phase, Terms
from derd.methods.registry import register_method
from derd.objectives import RobustConfig, rslad
from derd.settings import setting
from derd.synthesis import ContrastiveSynthesizer


@dataclass
class CMIConfig:
    """CMI's contrastive model inversion; defaults: the CIFAR-10 script."""

    lambda_bn: float = setting(1.0, lo=0)
    lambda_oh: float = setting(1.0, lo=0)
    lambda_adv: float = setting(0.5, lo=0)
    lambda_cr: float = setting(0.8, lo=0)
    cr_tau: float = setting(0.2, lo=1e-3, doc="temperature of the contrastive loss")
    synthesis_steps: int = setting(200, lo=1, doc="optimisation steps per synthesis round (CMI's g_steps)")
    synthesis_every: int = setting(10, lo=1, doc="student iterations between synthesis rounds")
    bank_size: int = setting(8192, lo=2, doc="images kept for the student (oldest dropped)")
    negatives: int = setting(4096, lo=1, doc="contrastive negatives drawn from the feature memory bank")
    lr_g: float = setting(1e-3, lo=1e-12)


@register_method
class CMI(Method):
    name = "cmi"
    label = "CMI + RSLAD"
    order = 7
    sections = {"cmi": CMIConfig, "robust": RobustConfig}
    metric_prefixes = ("kd/",)
    # digits: 200 steps per round would cost 20x DERD's generator on 8x8 images
    presets = {"digits": {"cmi.synthesis_steps": 50}}

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.synth = ContrastiveSynthesizer(ctx, ctx.experts.robust)
        self.modules.update(generator=self.synth.generator, head=self.synth.head)
        self.optimizers["head"] = self.synth.head_optimizer

    def iteration(self, phase: Phase, step: int) -> Terms:
        terms: Terms = {}
        if step % self.cfg.cmi.synthesis_every == 0 or self.synth.count == 0:
            terms = self.synth.synthesize(phase.batch_size)
        terms.update(rslad(self.ctx, self.synth.sample(phase.batch_size)))
        return terms

    def sample(self, n: int):
        return self.synth.sample(n) if self.synth.count else None

    def extra_state(self) -> dict[str, Any]:
        return self.synth.state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.synth.load_state(state)
