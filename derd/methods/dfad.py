"""``dfad``: DFAD's adversarial generator (Fang et al., "Data-Free Adversarial Distillation", 2019)
with robust distillation from T_rob.

Generator loss: -mean |T_rob(x) - S(x)| (the L1 model discrepancy on logits, maximised);
no data prior. One generator step every ``dfad.student_steps`` iterations (DFAD's k = 5
student steps per generator step); each iteration's student step uses a fresh batch.
DFAD's own student loss (the L1 discrepancy) is replaced by one RSLAD step
(``derd.objectives.robust_kd``), as DFARD's authors combined data-free methods with robust
distillation. Budget: the shared ``budget`` of student iterations, so the number of student
updates equals DERD's (DFAD's k counts inside it).
"""
from __future__ import annotations

from dataclasses import dataclass

from derd.methods.base import GeneratorMethod, Phase, Terms
from derd.methods.registry import register_method
from derd.objectives import RobustConfig, rslad
from derd.settings import setting


@dataclass
class DFADConfig:
    """DFAD's adversarial generator."""

    student_steps: int = setting(5, lo=1, doc="student iterations per generator step (DFAD's k)")
    lr_g: float = setting(1e-3, lo=1e-12)


@register_method
class DFAD(GeneratorMethod):
    name = "dfad"
    label = "DFAD + RSLAD"
    order = 5
    sections = {"dfad": DFADConfig, "robust": RobustConfig}
    metric_prefixes = ("kd/",)

    def generator_lr(self, phase: Phase) -> float:
        return self.cfg.dfad.lr_g

    def iteration(self, phase: Phase, step: int) -> Terms:
        terms: Terms = {}
        if step % self.cfg.dfad.student_steps == 0:
            teacher = self.ctx.experts.robust
            terms, _ = self.synth.step(phase.batch_size, {"adv_l1": 1.0}, prior=teacher, natural=teacher, tau=1.0)
        terms.update(rslad(self.ctx, self.synth.sample(phase.batch_size)))
        return terms
