"""``dafl``: DAFL's generator (Chen et al., "Data-Free Learning of Student Networks", ICCV 2019)
with robust distillation from T_rob.

Generator loss on T_rob (the baselines' one teacher):
``lambda_oh*L_oh + lambda_act*L_a + lambda_ie*L_ie`` with L_oh = CE(T(x), argmax T(x)),
L_a = -mean |f_T(x)| (f_T: the input of T's last linear layer, averaged over batch and
dimensions as DAFL's code does), L_ie = -H(mean softmax T(x)) (natural log; DAFL's code
uses log10, a constant factor the weight absorbs). No student term: DAFL's generator is not
adversarial. Defaults: the paper's MNIST weights (oh 1, a 0.1, ie 5); Adam for G.

Student: each iteration, one RSLAD step (``derd.objectives.robust_kd``) on the very batch
the generator step produced (DAFL trains G and S on one batch per iteration). The run
lasts the whole ``budget`` (as many student updates as every other method).
"""
from __future__ import annotations

from dataclasses import dataclass

from derd.methods.base import GeneratorMethod, Phase, Terms
from derd.methods.registry import register_method
from derd.objectives import RobustConfig, rslad
from derd.settings import setting


@dataclass
class DAFLConfig:
    """DAFL's generator; defaults: the paper's MNIST weights."""

    lambda_oh: float = setting(1.0, lo=0)
    lambda_act: float = setting(0.1, lo=0)
    lambda_ie: float = setting(5.0, lo=0)
    lr_g: float = setting(1e-3, lo=1e-12)


@register_method
class DAFL(GeneratorMethod):
    name = "dafl"
    label = "DAFL + RSLAD"
    order = 4
    sections = {"dafl": DAFLConfig, "robust": RobustConfig}
    metric_prefixes = ("kd/",)

    def generator_lr(self, phase: Phase) -> float:
        return self.cfg.dafl.lr_g

    def iteration(self, phase: Phase, step: int) -> Terms:
        d, teacher = self.cfg.dafl, self.ctx.experts.robust
        terms, x = self.synth.step(phase.batch_size, {"oh": d.lambda_oh, "act": d.lambda_act, "ie": d.lambda_ie},
                                   prior=teacher, natural=None, tau=1.0)
        terms.update(rslad(self.ctx, x))
        return terms
