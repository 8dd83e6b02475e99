"""Student objectives: what the student learns from a batch of pseudo images.

* ``natural_kd``: KL(T(x) || S(x)) (plain data-free KD; DERD's stage I, the nature baseline);
* ``robust_kd``: RSLAD-style robust distillation from one teacher: PGD against S on
  KL(T(x) || S(x_adv)), then (1 - a) KL(T(x) || S(x_adv)) + a KL(T(x) || S(x)) (Zi et al.,
  ICCV 2021: a = 1/6, start 0.001*N(0, I), steps of eps/4, the KL on RSLAD's scale:
  ``losses.rslad_divergence``), optionally plus ZSKT's attention transfer; the student
  objective of every baseline combined with robustness, with RSLAD's SGD (lr 0.1, weight
  decay 2e-4; its step schedule replaced by the run's cosine);
* ``expert_sga``: DERD's stage II: two experts, PGD on KL(T_rob(x) || S(x_adv)), and SGA of
  the experts' gradients plus lambda_sga * grad L_cons.

Each takes one optimiser step through ``ctx.trainer`` and returns its terms as 0-dim
tensors; none reads a value on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from derd import losses
from derd.attacks import pgd
from derd.context import Context, Terms
from derd.evaluate import REFERENCE_EPS
from derd.settings import LR_MAX, TEMPERATURE_MAX, integer, loguniform, setting, uniform


@dataclass
class RobustConfig:
    """The baselines' student objective (config section ``robust``): RSLAD-style robust distillation
    from T_rob, the way DFARD's authors combined each data-free method with robustness."""

    pgd_steps: int = setting(
        10,
        lo=1,
        hi=1000,
        doc="PGD on the student: steps of eps/4 from 0.001*N(0, I) (RSLAD)",
        search=integer(3, 10),
    )
    natural_weight: float = setting(
        1 / 6,
        lo=0,
        hi=1,
        doc="RSLAD's alpha: weight of KL(T(x)||S(x)) beside the adversarial term",
        search=uniform(0.0, 0.5),
    )
    tau: float = setting(1.0, lo=1e-3, hi=TEMPERATURE_MAX)
    lr_s: float = setting(
        0.1,
        lo=1e-12,
        hi=LR_MAX,
        doc="SGD, momentum 0.9, cosine schedule (RSLAD: 0.1)",
        search=loguniform(0.01, 1.0),
    )  # a decade each side of RSLAD's 0.1 (its KL: a tenth of a batch mean)
    weight_decay: float = setting(2e-4, lo=0, hi=1.0, doc="the student's SGD weight decay (RSLAD: 2e-4)")


def natural_kd(ctx: Context, x: torch.Tensor, teacher: nn.Module, tau: float) -> Terms:
    """One step on KL(T(x) || S(x))."""
    with torch.no_grad():
        target = teacher(x)
    ctx.student.train()
    loss = losses.kl_divergence(target, ctx.student(x), tau)
    ctx.trainer.update(loss)
    return {"kd": loss.detach()}


def robust_kd(
    ctx: Context,
    x: torch.Tensor,
    teacher: nn.Module,
    *,
    tau: float,
    natural_weight: float,
    pgd_steps: int,
    attention_weight: float = 0.0,
) -> Terms:
    """One RSLAD step from ``teacher`` (T_rob); with ``attention_weight`` > 0 also ZSKT's
    attention transfer between the teacher's and the student's activations on x."""
    eps, student = ctx.info.eps, ctx.student
    attend = attention_weight > 0
    t_acts = ctx.hooks(losses.ResolutionActivations, teacher) if attend else None
    s_acts = ctx.hooks(losses.ResolutionActivations, student) if attend else None
    with torch.no_grad():
        if attend:
            with t_acts.recording():
                target = teacher(x)
        else:
            target = teacher(x)
    x_adv = pgd(
        student,
        x,
        target,
        eps=eps,
        steps=pgd_steps,
        step_size=eps / 4,
        start="normal",
        start_scale=0.001 * eps / REFERENCE_EPS,
        loss_fn=losses.kl_attack_loss(tau),
        generator=ctx.rng,
    )
    student.train()
    s_adv = student(x_adv)
    if attend:
        with s_acts.recording():
            s_clean = student(x)
    else:
        s_clean = student(x)
    terms = {
        "rob": losses.rslad_divergence(target, s_adv, tau),
        "nat": losses.rslad_divergence(target, s_clean, tau),
    }
    loss = (1 - natural_weight) * terms["rob"] + natural_weight * terms["nat"]
    if attend:
        terms["at"] = losses.attention_transfer_loss(*losses.matched_activations(s_acts, t_acts))
        loss = loss + attention_weight * terms["at"]
    ctx.trainer.update(loss)
    terms["kd"] = loss
    terms["kd/adv_agreement"] = (s_adv.argmax(1) == target.argmax(1)).float().mean()
    return {k: v.detach() for k, v in terms.items()}


def sga(
    g_nat: Sequence[torch.Tensor], g_rob: Sequence[torch.Tensor], generator: torch.Generator
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stochastic gradient aggregation of the two experts' gradients, per parameter tensor.

    Where <g_nat, g_rob> < 0, one of the two (chosen at random, one draw per tensor) loses
    its component along the other; then the two are summed. Decided with tensor ops on the
    device (no host read): returns (aggregated gradients, fraction of conflicting tensors)
    with the fraction a 0-dim tensor.
    """
    device = g_nat[0].device
    picks = torch.rand(len(g_nat), generator=generator, device=device)
    dots = torch.stack([p.sum() for p in torch._foreach_mul(g_nat, g_rob)])
    sq_nat = torch.stack([p.sum() for p in torch._foreach_mul(g_nat, g_nat)])
    sq_rob = torch.stack([p.sum() for p in torch._foreach_mul(g_rob, g_rob)])
    conflict = dots < 0
    nat_yields = conflict & (picks < 0.5)  # g_nat loses its component along g_rob
    rob_yields = conflict & ~(picks < 0.5)
    # g_nat' = g_nat - [nat yields] <.,.>/|g_rob|^2 g_rob and g_rob' = g_rob - [rob yields] <.,.>/|g_nat|^2 g_nat,
    # so g_nat' + g_rob' = keep_nat * g_nat + keep_rob * g_rob:
    keep_rob = 1 - torch.where(nat_yields, dots / (sq_rob + 1e-20), 0.0)
    keep_nat = 1 - torch.where(rob_yields, dots / (sq_nat + 1e-20), 0.0)
    out = torch._foreach_add(
        torch._foreach_mul(g_nat, list(keep_nat.unbind())), torch._foreach_mul(g_rob, list(keep_rob.unbind()))
    )
    return out, conflict.float().mean()


def expert_sga(
    ctx: Context,
    x: torch.Tensor,
    natural: nn.Module,
    robust: nn.Module,
    *,
    tau: float,
    lambda_nat: float,
    lambda_sga: float,
    pgd_steps: int,
) -> Terms:
    """DERD's stage-II student step: PGD against S, then SGA(g_nat, g_rob) + lambda_sga * grad L_cons."""
    eps, student = ctx.info.eps, ctx.student
    with torch.no_grad():
        t_nat, t_rob = natural(x), robust(x)
    x_adv = pgd(
        student,
        x,
        t_rob,
        eps=eps,
        steps=pgd_steps,
        step_size=eps / 4,
        start="uniform",
        loss_fn=losses.kl_attack_loss(tau),
        generator=ctx.rng,
    )
    student.train()
    s_clean, s_adv = student(x), student(x_adv)
    l_nat = losses.kl_divergence(t_nat, s_clean, tau)
    l_rob = losses.kl_divergence(t_rob, s_adv, tau)
    l_cons = losses.consistency_loss(s_clean, s_adv, tau)
    params = ctx.trainer.params()
    g_nat = torch.autograd.grad(lambda_nat * l_nat, params, retain_graph=True)
    g_rob = torch.autograd.grad(l_rob, params, retain_graph=True)
    g_cons = torch.autograd.grad(l_cons, params)
    g_sum, conflict = sga(g_nat, g_rob, ctx.rng)
    for p, g in zip(params, torch._foreach_add(g_sum, g_cons, alpha=lambda_sga)):
        p.grad = g
    ctx.trainer.step()
    return {
        "nat": l_nat.detach(),
        "rob": l_rob.detach(),
        "cons": l_cons.detach(),
        "sga/conflict_frac": conflict,
    }


def rslad(ctx: Context, x: torch.Tensor, *, tau: float | None = None, attention_weight: float = 0.0) -> Terms:
    """``robust_kd`` from T_rob with the run's ``robust`` section (every baseline's student step)."""
    r = ctx.cfg.robust
    return robust_kd(
        ctx,
        x,
        ctx.experts.robust,
        tau=r.tau if tau is None else tau,
        natural_weight=r.natural_weight,
        pgd_steps=r.pgd_steps,
        attention_weight=attention_weight,
    )
