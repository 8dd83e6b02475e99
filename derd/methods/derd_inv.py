"""``derd_inv``: DERD's model-inversion variant (the paper's DERD_inv), a single stage.

No generator and no stage I: each stage-II batch is optimised from noise
(``derd_inv.steps`` Adam steps of ``derd_inv.lr`` on sigmoid logits) on
``L_oh + lambda_adv*L_adv + lambda_bn*L_bn + lambda_ie*L_ie`` with stage I's weights and T_nat,
then DERD's stage-II student step (``derd.methods.derd.expert_step``) on it. It trains for
stage II's share of the budget (``budget.epochs - stage1.epochs``), as DERD's stage II does:
the paper's variant replaces the generator, not the warm-up's length. Costlier per step
than DERD; the paper finds it weaker.
"""

from __future__ import annotations

from dataclasses import dataclass

from derd.context import Context
from derd.methods.base import Method, Phase, Terms
from derd.methods.derd import DERD_SECTIONS, check_warmup, expert_step
from derd.methods.registry import register_method
from derd.settings import LR_MAX, setting
from derd.synthesis import InversionSynthesizer


@dataclass
class InversionConfig:
    steps: int = setting(20, lo=1, hi=10_000, doc="optimisation steps per pseudo batch")
    lr: float = setting(0.1, lo=1e-12, hi=LR_MAX, doc="Adam step on the image logits")


@register_method
class DERDInv(Method):
    name = "derd_inv"
    label = "DERD_inv"
    order = 1
    table = 3
    sections = {**DERD_SECTIONS, "derd_inv": InversionConfig}
    metric_prefixes = ("sga/",)
    teachers = ("natural", "robust")

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.synth = InversionSynthesizer(ctx)

    @classmethod
    def phases(cls, cfg) -> list[Phase]:
        b = cfg.budget
        return [Phase(2, b.epochs - cfg.stage1.epochs, b.iters_per_epoch, b.batch_size, cfg.stage2.lr_s)]

    @classmethod
    def check(cls, cfg) -> None:
        check_warmup(cfg)

    def iteration(self, phase: Phase, step: int) -> Terms:
        w, inv = self.cfg.stage1, self.cfg.derd_inv
        weights = {"oh": 1.0, "adv": w.lambda_adv, "bn": w.lambda_bn, "ie": w.lambda_ie}
        natural = self.ctx.experts.natural
        terms = self.synth.step(
            phase.batch_size, weights, teacher=natural, tau=w.tau, steps=inv.steps, lr=inv.lr
        )
        terms.update(expert_step(self.ctx, self.synth.last, natural))
        return terms

    def sample(self, n: int):
        return self.synth.sample(n)
