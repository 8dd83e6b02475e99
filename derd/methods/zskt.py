"""``zskt``: ZSKT's adversarial generator and attention transfer (Micaelli and Storkey, "Zero-shot
Knowledge Transfer via Adversarial Belief Matching", NeurIPS 2019) with robust distillation, as
its official code has it (polo5/ZeroShotKnowledgeTransfer @e24915d: ``solver.py``,
``utils/loaders.py``, ``scripts/ZeroShot/main0.sh``).

A cycle of ``zskt.student_steps + 1`` updates on one noise z (n_G = 1, n_S = 10; main0.sh 14-15,
loaders.py 42-47): one generator step on G(z), then ``student_steps`` student steps on
G'(z), the batch the *updated* generator renders from the same z (solver.py 89, 105-116); then a
fresh z. Here a cycle spans ``student_steps`` iterations of the shared budget, each with its
student step; the first also takes the generator step.

* Generator loss: -KL(T_rob(x) || S(x)) (solver.py 225-226), the student in train mode as in
  the code (solver.py 31). G: Adam, lr 1e-3, PyTorch's default betas (solver.py 39), its
  gradient norm clipped at 5 (line 100), its lr on a cosine to 0 over the generator steps
  (lines 40, 170), noise of 100 dimensions (main0.sh 17).
* Student: one RSLAD step (``derd.objectives.robust_kd``, KL on RSLAD's scale, which on 10
  classes is ZSKT's own element mean over batch x classes: solver.py 218) plus ``lambda_at``
  (ZSKT's beta = 250, main0.sh 23) times attention transfer on the clean batch, for each layer
  beta * mean_{b,j} (a_S - a_T)^2 with a = L2-normalised channel mean of squared activations
  (solver.py 205-214, 234-237), on the outputs of the last residual block at each spatial size
  both networks share (``derd.losses.ResolutionActivations``: a WRN's three groups, as ZSKT's
  WRNs return them). The student's gradient norm is clipped at 5 (solver.py 115).

Kept, with the reason: ZSKT's Adam student (lr 2e-3) and its plain KL are replaced by RSLAD's
robust distillation and SGD, as for every baseline; the batch is the shared
``budget.batch_size`` (ZSKT: 128); the generator ends in a sigmoid (ZSKT's in a BatchNorm, for
teachers that take normalised inputs), as DAFL's note says.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from derd.methods.base import Context, GeneratorMethod, Phase, Terms
from derd.methods.registry import register_method
from derd.objectives import RobustConfig, rslad
from derd.settings import LR_MAX, WEIGHT_MAX, integer, loguniform, setting
from derd.synthesis import DEFAULT_BETAS


@dataclass
class ZSKTConfig:
    """ZSKT's adversarial generator and attention transfer (main0.sh's values)."""

    student_steps: int = setting(
        10, lo=1, hi=1000, doc="student iterations per generator step (ZSKT's n_S)", search=integer(1, 20)
    )
    lambda_at: float = setting(
        250.0,
        lo=0,
        hi=WEIGHT_MAX,
        doc="attention transfer weight per layer (ZSKT's beta)",
        search=loguniform(2.5, 2500),
    )
    lr_g: float = setting(1e-3, lo=1e-12, hi=LR_MAX, doc="Adam, betas (0.9, 0.999), cosine to 0")
    latent_dim: int = setting(100, lo=2, hi=65_536, doc="the generator's noise size")
    max_grad_norm: float = setting(
        5.0, lo=1e-6, hi=1e6, doc="the generator's and the student's gradient-norm clip"
    )


@register_method
class ZSKT(GeneratorMethod):
    name = "zskt"
    label = "ZSKT + RSLAD"
    order = 6
    sections = {"zskt": ZSKTConfig, "robust": RobustConfig}
    metric_prefixes = ("kd/",)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.batch: torch.Tensor | None = None  # G'(z) of the current cycle
        self.schedule: torch.optim.lr_scheduler.LRScheduler | None = None

    @classmethod
    def phases(cls, cfg) -> list[Phase]:
        return [dataclasses.replace(p, max_grad_norm=cfg.zskt.max_grad_norm) for p in super().phases(cfg)]

    def generator_settings(self) -> dict[str, Any]:
        z = self.cfg.zskt
        return {
            "latent_dim": z.latent_dim,
            "betas": DEFAULT_BETAS,
            "max_grad_norm": z.max_grad_norm,
            "student_train": True,
        }

    def generator_lr(self, phase: Phase) -> float:
        return self.cfg.zskt.lr_g

    def start_phase(self, phase: Phase) -> None:
        super().start_phase(phase)
        steps = math.ceil(phase.epochs * phase.iters_per_epoch / self.cfg.zskt.student_steps)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.synth.optimizer, max(1, steps))

    def iteration(self, phase: Phase, step: int) -> Terms:
        terms: Terms = {}
        if step % self.cfg.zskt.student_steps == 0 or self.batch is None:
            teacher = self.ctx.experts.robust
            z = self.synth.noise(phase.batch_size)
            terms, _ = self.synth.step(
                phase.batch_size, {"adv": 1.0}, prior=teacher, natural=teacher, tau=1.0, z=z
            )
            self.schedule.step()
            self.batch = self.synth.render(z)  # the updated generator on the same z
        terms.update(rslad(self.ctx, self.batch, attention_weight=self.cfg.zskt.lambda_at))
        return terms

    def extra_state(self) -> dict[str, Any]:
        return {
            "batch": None if self.batch is None else self.batch.cpu(),
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        batch = state.get("batch")
        self.batch = None if batch is None else batch.to(self.ctx.device)
        if state.get("schedule") is not None and self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
