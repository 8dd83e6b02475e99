"""L-inf attacks in [0, 1] pixel space: FGSM, PGD (Madry and TRADES starts), CW-inf, AutoAttack.

Pure functions: each returns adversarial inputs and leaves the model's parameters, BN
statistics and train/eval mode as it found them (attacks run the model in eval mode and
take gradients with respect to the input only). Random starts draw from a seeded
``torch.Generator`` so every attack is reproducible.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# A loss over (logits of x_adv, labels) summed over the batch; the attack maximises it.
AttackLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (BN statistics frozen), then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Carlini-Wagner margin: best other logit minus the true logit (clamped at -kappa)."""
    onehot = F.one_hot(y, logits.shape[1]).bool()
    true = logits[onehot]
    other = logits.masked_fill(onehot, float("-inf")).amax(dim=1)
    return torch.clamp(other - true, min=-kappa).sum()


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Back into the eps-ball around x and into [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    start: str = "uniform",
    start_scale: float = 0.001,
    loss_fn: AttackLoss = ce_loss,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn`` within the L-inf eps-ball.

    ``start``: ``uniform`` (Madry: U(-eps, eps)), ``normal`` (TRADES: start_scale * N(0, I))
    or ``none``. ``y`` is whatever ``loss_fn`` takes as its target (labels or soft targets).
    ``generator`` must live on x's device (the start is drawn there).
    """
    x = x.detach()
    if start == "uniform":  # drawn on x's device: no host-to-device copy in a training step
        noise = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    elif start == "normal":
        noise = torch.randn(x.shape, generator=generator, device=x.device) * start_scale
    elif start == "none":
        noise = torch.zeros_like(x)
    else:
        raise ValueError(f"unknown PGD start {start!r}")
    x_adv = project(x + noise.to(x.dtype), x, eps)
    with eval_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps on the cross-entropy (Goodfellow et al.)."""
    return pgd(model, x, y, eps=eps, steps=1, step_size=eps, start="none")


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 500,
) -> torch.Tensor:
    """AutoAttack through ``pyautoattack`` (the authors' code).

    ``standard``: APGD-CE, APGD-T, FAB-T, Square (the paper's AA column).
    ``fast``: standard AutoAttack's first two attacks exactly (APGD-CE with one restart, then
    APGD-T over 9 target classes, same seeds and iterations), without FAB-T and Square: the
    search protocol (see ``derd.evaluate``). Its accuracy is the one standard AA reports
    after APGD-T, an upper bound of the full AA.
    """
    from pyautoattack import AutoAttack

    if version not in ("standard", "fast"):
        raise ValueError(f"unknown AutoAttack version {version!r}")
    with eval_mode(model), torch.no_grad():
        other_classes = model(x[:1]).shape[1] - 1
    adversary = AutoAttack(model, eps=eps, seed=seed, device=x.device, version="standard")
    if version == "fast":
        adversary.attacks_to_run = ["apgd-ce", "apgd-t"]
    adversary.apgd_targeted.n_target_classes = min(9, other_classes)
    adversary.fab.n_target_classes = min(9, other_classes)
    with eval_mode(model):
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach()
