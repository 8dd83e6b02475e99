"""DERD (Data-free Experts-guided Robustness Distillation, ACM MM 2024) and its variant w/o T_nat.

``derd`` (docs/methods.md), over the shared ``budget`` (``stage1.epochs`` of it are stage I):
* stage I (``stage1``): a generator step on
  ``L_oh + lambda_adv*L_adv + lambda_ie*L_ie + lambda_bn*L_bn + lambda_d*L_d`` with
  L_oh = CE(T_nat(x), argmax T_nat(x)), L_adv = -KL(T_nat(x) || S(x)),
  L_ie = -H(mean softmax T_nat(x)), L_bn on T_nat's BN statistics, L_d the mode-seeking
  diversity term; then ``student_steps`` student steps on KL(T_nat(x) || S(x)), fresh x;
* stage II (``stage2``, the rest of the budget): the same generator step with L_adv
  re-weighted to lambda_gen, then on a fresh batch ``expert_step``: PGD against S on
  KL(T_rob(x) || S(x_adv)) (eps/4 steps, uniform start), and
  SGA(grad lambda_nat*L_nat, grad L_rob) + lambda_sga * grad L_cons with
  L_nat = KL(T_nat(x) || S(x)), L_rob = KL(T_rob(x) || S(x_adv)), L_cons = KL(S(x) || S(x_adv)).
  Stage I's end state depends only on its own settings, so it is cached and shared.

``derd_no_nat`` (w/o T_nat): T_rob replaces T_nat in stage I; in stage II a frozen copy of
the student, refreshed each epoch, plays the natural expert (the generator's adversary and
the natural pull). The data-prior terms (L_oh, L_ie, L_bn) keep using T_rob, because the
student holds no real-data BN statistics (this project's reading of the variant).

The model-inversion variant (``derd_inv``) shares the stage-II student step and lives in
``derd_inv.py``; the undefended baseline (``nature``) shares the generator in ``nature.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from derd.context import Context
from derd.methods.base import GeneratorMethod, Phase, Terms
from derd.methods.registry import register_method
from derd.objectives import expert_sga, natural_kd
from derd.settings import LR_MAX, TEMPERATURE_MAX, WEIGHT_MAX, ConfigError, integer, loguniform, setting


@dataclass
class Stage1Config:
    """DERD's natural warm-up: generator vs student, the student follows T_nat."""

    epochs: int = setting(
        10, lo=0, hi=100_000, doc="stage I's share of budget.epochs (stage II runs the rest)"
    )
    lambda_adv: float = setting(0.05, lo=0, hi=WEIGHT_MAX, search=loguniform(0.0005, 5))
    lambda_ie: float = setting(5.0, lo=0, hi=WEIGHT_MAX, search=loguniform(0.05, 50))
    lambda_bn: float = setting(1e-5, lo=0, hi=WEIGHT_MAX, search=loguniform(1e-7, 1e-3))
    lambda_d: float = setting(0.01, lo=0, hi=WEIGHT_MAX, search=loguniform(1e-4, 1))
    lr_g: float = setting(1e-3, lo=1e-12, hi=LR_MAX, doc="Adam, betas (0.5, 0.999)")
    lr_s: float = setting(
        0.05, lo=1e-12, hi=LR_MAX, doc="SGD, momentum 0.9, weight decay 5e-4, cosine schedule"
    )
    student_steps: int = setting(
        1, lo=1, hi=1000, doc="student steps per generator step", search=integer(1, 3)
    )
    tau: float = setting(1.0, lo=1e-3, hi=TEMPERATURE_MAX)


@dataclass
class Stage2Config:
    """DERD's robust distillation guided by both experts, with SGA."""

    lambda_gen: float = setting(0.003, lo=0, hi=WEIGHT_MAX, search=loguniform(3e-5, 0.3))
    lambda_nat: float = setting(0.5, lo=0, hi=WEIGHT_MAX, search=loguniform(0.05, 5))
    lambda_sga: float = setting(5e-4, lo=0, hi=WEIGHT_MAX, search=loguniform(5e-6, 0.05))
    lr_g: float = setting(1e-4, lo=1e-12, hi=LR_MAX, search=loguniform(1e-5, 1e-3))
    lr_s: float = setting(0.05, lo=1e-12, hi=LR_MAX, search=loguniform(0.01, 0.2))
    pgd_steps: int = setting(
        10,
        lo=1,
        hi=1000,
        doc="sample-level adversary: steps of eps/4 from a uniform start",
        search=integer(3, 10),
    )
    tau: float = setting(1.0, lo=1e-3, hi=TEMPERATURE_MAX)


DERD_SECTIONS = {"stage1": Stage1Config, "stage2": Stage2Config}

# The paper's chosen weights (docs/methods.md; the supplement, section 1): the searches' first point.
_CIFAR10 = {
    "stage1.lambda_adv": 0.05,
    "stage1.lambda_ie": 5,
    "stage1.lambda_bn": 1e-5,
    "stage1.lambda_d": 0.01,
    "stage2.lambda_gen": 0.003,
    "stage2.lambda_nat": 0.5,
    "stage2.lambda_sga": 5e-4,
}
PAPER_WEIGHTS = {
    "cifar10": _CIFAR10,
    "cifar100": {
        "stage1.lambda_adv": 0.5,
        "stage1.lambda_ie": 20,
        "stage1.lambda_bn": 1e-5,
        "stage1.lambda_d": 0.1,
        "stage2.lambda_gen": 0.003,
        "stage2.lambda_nat": 0.5,
        "stage2.lambda_sga": 5e-4,
    },
    "imagenet100": {
        "stage1.lambda_adv": 0.05,
        "stage1.lambda_ie": 20,
        "stage1.lambda_bn": 1e-5,
        "stage1.lambda_d": 0.1,
        "stage2.lambda_gen": 0.003,
        "stage2.lambda_nat": 1,
        "stage2.lambda_sga": 5e-4,
    },
    "digits": _CIFAR10,  # none published: CIFAR-10's (also 10 classes)
}


def check_warmup(cfg) -> None:
    """Stage I is part of the budget."""
    if cfg.stage1.epochs > cfg.budget.epochs:
        raise ConfigError(
            f"stage1.epochs: {cfg.stage1.epochs} is more than budget.epochs ({cfg.budget.epochs}); "
            f"stage I is part of the budget"
        )


def expert_step(ctx: Context, x: torch.Tensor, natural: nn.Module) -> Terms:
    """DERD's stage-II student step on pseudo images x with ``natural`` as the natural expert."""
    s2 = ctx.cfg.stage2
    return expert_sga(
        ctx,
        x,
        natural,
        ctx.experts.robust,
        tau=s2.tau,
        lambda_nat=s2.lambda_nat,
        lambda_sga=s2.lambda_sga,
        pgd_steps=s2.pgd_steps,
    )


def module_fingerprint(model: nn.Module) -> str:
    """A hash of a model's weights and buffers (part of the stage-I cache key)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@register_method
class DERD(GeneratorMethod):
    name = "derd"
    label = "DERD"
    order = 0
    sections = DERD_SECTIONS
    metric_prefixes = ("sga/",)
    teachers = ("natural", "robust")
    presets = PAPER_WEIGHTS  # a dataset without published weights takes the sections' defaults

    # ---- teacher roles ----------------------------------------------------------------
    def prior(self, phase: Phase) -> nn.Module:
        """The teacher behind L_oh, L_ie and L_bn."""
        return self.ctx.experts.natural

    def natural(self, phase: Phase) -> nn.Module:
        """Who plays the natural expert: the student's natural pull and G's data-level adversary."""
        return self.ctx.experts.natural

    # ---- schedule ---------------------------------------------------------------------
    @classmethod
    def phases(cls, cfg) -> list[Phase]:
        b, s1, s2 = cfg.budget, cfg.stage1, cfg.stage2
        return [
            Phase(1, s1.epochs, b.iters_per_epoch, b.batch_size, s1.lr_s, s1.student_steps),
            Phase(2, b.epochs - s1.epochs, b.iters_per_epoch, b.batch_size, s2.lr_s),
        ]

    @classmethod
    def check(cls, cfg) -> None:
        check_warmup(cfg)

    def generator_lr(self, phase: Phase) -> float:
        return self.cfg.stage1.lr_g if phase.stage == 1 else self.cfg.stage2.lr_g

    def generator_weights(self, adv_weight: float) -> dict[str, float]:
        w = self.cfg.stage1
        return {"oh": 1.0, "adv": adv_weight, "ie": w.lambda_ie, "bn": w.lambda_bn, "d": w.lambda_d}

    def iteration(self, phase: Phase, step: int) -> Terms:
        s1, s2 = self.cfg.stage1, self.cfg.stage2
        adv, tau = (s1.lambda_adv, s1.tau) if phase.stage == 1 else (s2.lambda_gen, s2.tau)
        terms, _ = self.synth.step(
            phase.batch_size,
            self.generator_weights(adv),
            prior=self.prior(phase),
            natural=self.natural(phase),
            tau=tau,
        )
        if phase.stage == 1:
            for _ in range(s1.student_steps):
                terms.update(
                    natural_kd(self.ctx, self.synth.sample(phase.batch_size), self.natural(phase), s1.tau)
                )
            return terms
        terms.update(self.student_step(self.synth.sample(phase.batch_size), phase))
        return terms

    def student_step(self, x: torch.Tensor, phase: Phase) -> Terms:
        return expert_step(self.ctx, x, self.natural(phase))

    def warmup_key(self) -> dict[str, Any] | None:
        teacher = self.prior(self.phases(self.cfg)[0])
        b = self.cfg.budget
        return {
            "teacher_role": "robust" if teacher is self.ctx.experts.robust else "natural",
            "teacher": module_fingerprint(teacher),
            "stage1": {
                **vars(self.cfg.stage1),
                "iters_per_epoch": b.iters_per_epoch,
                "batch_size": b.batch_size,
            },
        }


@register_method
class DERDNoNat(DERD):
    name = "derd_no_nat"
    label = "DERD w/o T_nat"
    order = 2
    teachers = ("robust",)
    table = 3

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.frozen_student: nn.Module | None = None

    def prior(self, phase: Phase) -> nn.Module:
        return self.ctx.experts.robust

    def natural(self, phase: Phase) -> nn.Module:
        return self.ctx.experts.robust if phase.stage == 1 else self.frozen_student

    def start_epoch(self, phase: Phase) -> None:
        """Refresh the frozen copy of the student (one module, prepared once: compiled code stays its own)."""
        if phase.stage == 2:
            if self.frozen_student is None:
                with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten below
                    self.frozen_student = self.ctx.compute.prepare(
                        self.ctx.new_student().eval().requires_grad_(False)
                    )
            self.frozen_student.load_state_dict(self.ctx.student.state_dict())
