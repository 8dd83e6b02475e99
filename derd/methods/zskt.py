"""``zskt``: ZSKT's adversarial generator and attention transfer (Micaelli and Storkey, "Zero-shot
Knowledge Transfer via Adversarial Belief Matching", NeurIPS 2019) with robust distillation.

Generator loss: -KL(T_rob(x) || S(x)) (belief mismatch, maximised), one generator step
every ``zskt.student_steps`` iterations (ZSKT's n_G = 1, n_S = 10). The batch rendered
after that step is kept for those n_S student steps (ZSKT keeps one z per cycle).
Student: one RSLAD step (``derd.objectives.robust_kd``) plus ``lambda_at`` (ZSKT's
beta = 250) times attention transfer on the clean batch:
sum over layers of mean_{b,j} (a_S - a_T)^2, a = L2-normalised channel mean of squared
activations. Layers: the last activation at each spatial size both networks produce
(ZSKT used the outputs of WRN's three groups; this rule picks those there and works for
any pair of architectures in the registry). Budget as DFAD's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derd.methods.base import Context, GeneratorMethod, Phase, Terms
from derd.methods.registry import register_method
from derd.objectives import RobustConfig, rslad
from derd.settings import setting


@dataclass
class ZSKTConfig:
    """ZSKT's adversarial generator and attention transfer."""

    student_steps: int = setting(10, lo=1, doc="student iterations per generator step (ZSKT's n_S)")
    lambda_at: float = setting(250.0, lo=0, doc="attention transfer weight (ZSKT's beta)")
    lr_g: float = setting(1e-3, lo=1e-12)


@register_method
class ZSKT(GeneratorMethod):
    name = "zskt"
    label = "ZSKT + RSLAD"
    order = 6
    sections = {"zskt": ZSKTConfig, "robust": RobustConfig}
    metric_prefixes = ("kd/",)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.batch = None

    def generator_lr(self, phase: Phase) -> float:
        return self.cfg.zskt.lr_g

    def iteration(self, phase: Phase, step: int) -> Terms:
        z = self.cfg.zskt
        terms: Terms = {}
        if step % z.student_steps == 0 or self.batch is None:
            teacher = self.ctx.experts.robust
            terms, _ = self.synth.step(phase.batch_size, {"adv": 1.0}, prior=teacher, natural=teacher, tau=1.0)
            self.batch = self.synth.sample(phase.batch_size)
        terms.update(rslad(self.ctx, self.batch, attention_weight=z.lambda_at))
        return terms

    def extra_state(self) -> dict[str, Any]:
        return {"batch": None if self.batch is None else self.batch.cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        batch = state.get("batch")
        self.batch = None if batch is None else batch.to(self.ctx.device)
