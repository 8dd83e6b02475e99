"""``nature``: plain data-free distillation from T_nat, the undefended baseline.

DERD's generator schedule (stage I unchanged, so it shares DERD's stage-I cache; stage II's
generator step with lambda_gen), but stage II's student step is KL(T_nat(x) || S(x)) on
clean pseudo images: no adversary, no robust teacher. Shows what robustness DERD adds.
"""

from __future__ import annotations

import torch

from derd.methods.base import Phase, Terms
from derd.methods.derd import DERD
from derd.methods.registry import register_method
from derd.objectives import natural_kd


@register_method
class Nature(DERD):
    name = "nature"
    label = "nature (data-free KD, undefended)"
    order = 3
    table = 1
    metric_prefixes = ()
    teachers = ("natural",)

    def student_step(self, x: torch.Tensor, phase: Phase) -> Terms:
        return natural_kd(self.ctx, x, self.ctx.experts.natural, self.cfg.stage2.tau)
