"""Frozen teachers with their BatchNorm folded into the convolution before it.

A teacher runs in eval mode, so each BatchNorm is a fixed per-channel affine map y = a*x + b
of its input x (a = gamma / sqrt(running_var + eps), b = beta - a * running_mean). When x is a
convolution's output used by nothing else, the map folds into that convolution's weights and
bias: one kernel instead of two, the same logits up to float rounding, and gradients with
respect to the input unchanged (the generator and PGD backpropagate through teachers).

L_bn (DeepInversion) and CMI's features read the statistics of the BatchNorm's *input*. The
folded layer's place is kept by a ``FoldedBatchNorm``: it passes its input through and holds
the running statistics and the affine map, so those statistics are recovered exactly from the
folded convolution's output: mean(x) = (mean(y) - b) / a, var(x) = var(y) / a^2
(``derd.losses.BatchNormStatistics`` reads it like a BatchNorm).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from derd.models.hooks import observed_forward


class FoldedBatchNorm(nn.Module):
    """The identity where a BatchNorm2d was folded into the convolution before it; keeps that layer's
    running statistics and its eval-mode affine map (``scale``, ``shift``) for the statistics hooks."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.register_buffer("scale", scale)
        self.register_buffer("shift", bn.bias.detach() - scale * bn.running_mean)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def input_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """Mean of the folded BatchNorm's input from its output's (per channel, or per image and channel:
        the last dimension is the channel)."""
        return (mean - self.shift) / self.scale

    def input_var(self, var: torch.Tensor) -> torch.Tensor:
        return var / self.scale**2


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names where the BatchNorm's input is that convolution's output,
    found by one forward pass."""
    names = {id(m): n for n, m in model.named_modules()}
    outputs: dict[int, tuple[torch.Tensor, str]] = {}  # keeps the tensors alive, so their ids stay unique
    pairs: list[tuple[str, str]] = []

    def after_conv(module, inputs, output):
        outputs[id(output)] = (output, names[id(module)])

    def before_bn(module, inputs):
        found = outputs.get(id(inputs[0]))
        if found is not None and found[0] is inputs[0]:
            pairs.append((found[1], names[id(module)]))

    handles = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [
        m.register_forward_pre_hook(before_bn) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    ]
    observed_forward(model, example, handles)
    return pairs


def _fold_into(folded: nn.Module, conv_name: str, bn_name: str) -> Callable[[], None]:
    """Fold BatchNorm ``bn_name`` into convolution ``conv_name`` of ``folded`` (in place); returns what
    undoes it."""
    modules = dict(folded.named_modules())
    conv, bn = modules[conv_name], modules[bn_name]
    parent, _, child = bn_name.rpartition(".")
    owner = modules[parent] if parent else folded
    weight, bias = conv.weight.detach().clone(), conv.bias
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    old_bias = bias.detach() if bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(
        (old_bias - bn.running_mean) * scale + bn.bias.detach(), requires_grad=conv.weight.requires_grad
    )
    setattr(owner, child, FoldedBatchNorm(bn))

    def undo() -> None:
        with torch.no_grad():
            conv.weight.copy_(weight)
        conv.bias = bias
        setattr(owner, child, bn)

    return undo


def fold_batchnorm(model: nn.Module, example: torch.Tensor, rtol: float = 1e-3) -> tuple[nn.Module, int]:
    """An eval-mode copy of a model with each BatchNorm2d that directly follows a convolution folded into
    it; returns (the copy, how many were folded). A BatchNorm with a zero gamma stays (its input could
    not be recovered), and so does one whose convolution's output also feeds something else (a
    residual shortcut): each fold is checked against the model's logits on ``example`` and undone if
    they differ by more than float rounding. The model itself is not changed (not even its mode)."""
    folded, count = copy.deepcopy(model).eval(), 0
    with torch.no_grad():
        want = folded(example)
    tolerance = rtol * float(want.abs().max()) + 1e-6
    for conv_name, bn_name in _conv_bn_pairs(folded, example):
        bn = dict(folded.named_modules())[bn_name]
        if not bn.affine or not bn.track_running_stats or bool((bn.weight == 0).any()):
            continue
        undo = _fold_into(folded, conv_name, bn_name)
        with torch.no_grad():
            exact = torch.allclose(folded(example), want, rtol=rtol, atol=tolerance)
        if exact:
            count += 1
        else:
            undo()
    return folded, count
