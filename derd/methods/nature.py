"""``nature``: plain data-free distillation from T_nat, the undefended baseline.

DERD's generator schedule (stage I unchanged, so it shares DERD's stage-I cache; stage II's
generator step with lambda_gen), but stage II's student step is KL(T_nat(x) || S(x)) on
clean pseudo images: no adversary, no robust teacher. Shows what robustness DERD adds.
"""
from __future__ import annotations

from derd.methods import register_method
from derd.methods.base import Phase, Terms
from derd.methods.derd import DERD
from derd.objectives import natural_kd


@register_method
class Nature(DERD):
    name = "nature"
    teachers = ("natural",)
    table = 2

    def student_step(self, x, phase: Phase) -> Terms:
        return natural_kd(self.ctx, x, self.ctx.experts.natural, self.cfg.stage2.tau)
