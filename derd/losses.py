"""Every loss term of METHOD.md as its own small function.

Logit arguments are raw model outputs; KL terms use softmax at temperature ``tau`` and are
scaled by tau^2 (Hinton et al.) so that their gradients keep their size across tau.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kl_divergence(target_logits: torch.Tensor, logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL(softmax(target/tau) || softmax(logits/tau)) * tau^2, averaged over the batch."""
    target = F.softmax(target_logits / tau, dim=1)
    return F.kl_div(F.log_softmax(logits / tau, dim=1), target, reduction="batchmean") * tau**2


def kl_attack_loss(tau: float = 1.0):
    """An attack objective KL(target || model(x_adv)) summed over the batch, for ``attacks.pgd``.

    Its target is the logits of a teacher on the clean input (stage II's sample-level
    adversary, KL(T_rob(x) || S(x_adv))) or of the model itself (TRADES).
    """

    def loss(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
        return kl_divergence(target_logits, logits, tau) * logits.shape[0]

    return loss


def one_hot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """L_oh = CE(T(x), argmax T(x)) (DAFL): pseudo images the teacher classifies confidently."""
    return F.cross_entropy(teacher_logits, teacher_logits.argmax(dim=1))


def adversarial_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """L_adv = -KL(T(x) || S(x)) (DFAD-style data-level adversary): G seeks disagreement."""
    return -kl_divergence(teacher_logits, student_logits, tau)


def information_entropy_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """L_ie = -H(mean over the batch of softmax T(x)) (DAFL): minimising it balances classes."""
    mean_prob = F.softmax(teacher_logits, dim=1).mean(dim=0)
    return (mean_prob * torch.log(mean_prob + 1e-12)).sum()


def diversity_loss(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L_d = -mean(|G(z1)-G(z2)|_1 / |z1-z2|_1) over the batch split into halves (mode seeking).

    The L1 distances are per-element means, so the ratio does not grow with image size.
    """
    half = z.shape[0] // 2
    if half == 0:
        return z.new_zeros(())
    dx = (x[:half] - x[half : 2 * half]).abs().flatten(1).mean(dim=1)
    dz = (z[:half] - z[half : 2 * half]).abs().flatten(1).mean(dim=1)
    return -(dx / (dz + 1e-8)).mean()


def consistency_loss(clean_logits: torch.Tensor, adv_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """L_cons = KL(S(x) || S(x_adv)): the student's clean and adversarial views agree."""
    return kl_divergence(clean_logits, adv_logits, tau)


class BatchNormStatistics:
    """Forward hooks on every BatchNorm layer of a model, for L_bn (DeepInversion).

    Each hook records the distance between the batch statistics of the layer's input and the
    layer's running statistics. Use as a context manager, or call ``remove()``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.terms: list[torch.Tensor] = []
        self.handles = [
            m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        if not self.handles:
            raise ValueError("L_bn needs a teacher with BatchNorm layers")

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self.terms.append(
            torch.linalg.vector_norm(mean - module.running_mean, 2) + torch.linalg.vector_norm(var - module.running_var, 2)
        )

    def clear(self) -> None:
        self.terms = []

    def loss(self) -> torch.Tensor:
        """L_bn of the last forward pass(es) since ``clear()``; then clears."""
        if not self.terms:
            raise RuntimeError("no forward pass recorded since the last clear()")
        total = torch.stack(self.terms).sum()
        self.terms = []
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> "BatchNormStatistics":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
