"""``dfad``: DFAD's adversarial generator (Fang et al., "Data-Free Adversarial Distillation", 2019)
with robust distillation from T_rob.

Generator loss: -mean |T_rob(x) - S(x)| (the L1 model discrepancy on logits, maximised);
no data prior. One generator step every ``dfad.student_steps`` iterations (DFAD's k = 5
student steps per generator step); each iteration's student step uses a fresh batch.
DFAD's own student loss (the L1 discrepancy) is replaced by one RSLAD step
(``derd.objectives.robust_kd``), as DFARD's authors combined data-free methods with robust
distillation. Budget: stage1.epochs + stage2.epochs epochs of student iterations, so the
number of student updates equals DERD's (DFAD's k counts inside it).
"""
from __future__ import annotations

from derd.methods import register_method
from derd.methods.base import GeneratorMethod, Phase, Terms
from derd.objectives import rslad


@register_method
class DFAD(GeneratorMethod):
    name = "dfad"
    sections = ("dfad", "robust")

    def generator_lr(self, phase: Phase) -> float:
        return self.cfg.dfad.lr_g

    def iteration(self, phase: Phase, step: int) -> Terms:
        terms: Terms = {}
        if step % self.cfg.dfad.student_steps == 0:
            teacher = self.ctx.experts.robust
            terms, _ = self.synth.step(phase.batch_size, {"adv_l1": 1.0}, prior=teacher, natural=teacher, tau=1.0)
        terms.update(rslad(self.ctx, self.synth.sample(phase.batch_size)))
        return terms
