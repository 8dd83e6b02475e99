"""DERD (Data-free Experts-guided Robustness Distillation, ACM MM 2024) and its two variants.

``derd`` (METHOD.md):
* stage I (``stage1``): a generator step on
  ``L_oh + lambda_adv*L_adv + lambda_ie*L_ie + lambda_bn*L_bn + lambda_d*L_d`` with
  L_oh = CE(T_nat(x), argmax T_nat(x)), L_adv = -KL(T_nat(x) || S(x)),
  L_ie = -H(mean softmax T_nat(x)), L_bn on T_nat's BN statistics, L_d the mode-seeking
  diversity term; then ``student_steps`` student steps on KL(T_nat(x) || S(x)), fresh x;
* stage II (``stage2``): the same generator step with L_adv re-weighted to lambda_gen,
  then on a fresh batch: PGD against S on KL(T_rob(x) || S(x_adv)) (eps/4 steps, uniform
  start), and SGA(grad lambda_nat*L_nat, grad L_rob) + lambda_sga * grad L_cons with
  L_nat = KL(T_nat(x) || S(x)), L_rob = KL(T_rob(x) || S(x_adv)), L_cons = KL(S(x) || S(x_adv)).
  Stage I's end state depends only on its own settings, so it is cached and shared.

``derd_inv`` (the paper's model-inversion variant): no generator and no stage I; each
stage-II batch is optimised from noise (``stage2.inversion_steps`` Adam steps on sigmoid
logits) on ``L_oh + lambda_adv*L_adv + lambda_bn*L_bn + lambda_ie*L_ie`` with stage I's
weights, then the stage-II student step.

``derd_no_nat`` (w/o T_nat): T_rob replaces T_nat in stage I; in stage II a frozen copy of
the student, refreshed each epoch, plays the natural expert (the generator's adversary and
the natural pull). The data-prior terms (L_oh, L_ie, L_bn) keep using T_rob, because the
student holds no real-data BN statistics (this project's reading of the variant).
"""
from __future__ import annotations

import hashlib
from typing import Any

from torch import nn

from derd.methods import register_method
from derd.methods.base import Context, GeneratorMethod, Method, Phase, Terms, frozen_copy
from derd.objectives import expert_sga, natural_kd
from derd.synthesis import InversionSynthesizer


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
    sections = ("stage1", "stage2")
    teachers = ("natural", "robust")
    table = 2

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
        s1, s2 = cfg.stage1, cfg.stage2
        return [Phase(1, s1.epochs, s1.iters_per_epoch, s1.batch_size, s1.lr_s, s1.student_steps),
                Phase(2, s2.epochs, s2.iters_per_epoch, s2.batch_size, s2.lr_s)]

    def generator_lr(self, phase: Phase) -> float:
        return self.cfg.stage1.lr_g if phase.stage == 1 else self.cfg.stage2.lr_g

    def generator_weights(self, adv_weight: float) -> dict[str, float]:
        w = self.cfg.stage1
        return {"oh": 1.0, "adv": adv_weight, "ie": w.lambda_ie, "bn": w.lambda_bn, "d": w.lambda_d}

    def iteration(self, phase: Phase, step: int) -> Terms:
        s1, s2 = self.cfg.stage1, self.cfg.stage2
        sc = s1 if phase.stage == 1 else s2
        adv = s1.lambda_adv if phase.stage == 1 else s2.lambda_gen
        terms, _ = self.synth.step(sc.batch_size, self.generator_weights(adv), prior=self.prior(phase),
                                   natural=self.natural(phase), tau=sc.tau)
        if phase.stage == 1:
            for _ in range(s1.student_steps):
                terms.update(natural_kd(self.ctx, self.synth.sample(s1.batch_size), self.natural(phase), s1.tau))
            return terms
        terms.update(self.student_step(self.synth.sample(s2.batch_size), phase))
        return terms

    def student_step(self, x, phase: Phase) -> Terms:
        s2 = self.cfg.stage2
        return expert_sga(self.ctx, x, self.natural(phase), self.ctx.experts.robust, tau=s2.tau,
                          lambda_nat=s2.lambda_nat, lambda_sga=s2.lambda_sga, pgd_steps=s2.pgd_steps)

    def warmup_key(self) -> dict[str, Any] | None:
        teacher = self.prior(self.phases(self.cfg)[0])
        return {"teacher_role": "robust" if teacher is self.ctx.experts.robust else "natural",
                "teacher": module_fingerprint(teacher), "stage1": vars(self.cfg.stage1)}


@register_method
class DERDInv(DERD):
    name = "derd_inv"
    table = 3

    def __init__(self, ctx: Context) -> None:
        Method.__init__(self, ctx)  # no generator: each batch is inverted from noise
        self.synth = InversionSynthesizer(ctx)

    @classmethod
    def phases(cls, cfg) -> list[Phase]:
        return super().phases(cfg)[1:]  # single stage: stage1.epochs is ignored

    def start_phase(self, phase: Phase) -> None:
        pass

    def iteration(self, phase: Phase, step: int) -> Terms:
        w, s2 = self.cfg.stage1, self.cfg.stage2
        weights = {"oh": 1.0, "adv": w.lambda_adv, "bn": w.lambda_bn, "ie": w.lambda_ie}
        terms = self.synth.step(s2.batch_size, weights, teacher=self.ctx.experts.natural, tau=w.tau,
                                steps=s2.inversion_steps, lr=s2.inversion_lr)
        terms.update(self.student_step(self.synth.last, phase))
        return terms

    def warmup_key(self) -> None:
        return None


@register_method
class DERDNoNat(DERD):
    name = "derd_no_nat"
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
        if phase.stage == 2:
            self.frozen_student = frozen_copy(self.ctx.student)
