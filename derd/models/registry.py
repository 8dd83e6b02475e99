"""Model registry in the style of timm: ``create_model(name, num_classes, ...)``.

Every model takes inputs in [0, 1] and normalises inside itself, so attacks work in
pixel space and checkpoints carry their normalisation.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from derd.errors import UserError

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make a network builder available to :func:`create_model` under ``name``."""

    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn

    return deco


def available_models() -> list[str]:
    return sorted(_REGISTRY)


class Normalize(nn.Module):
    """(x - mean) / std with the statistics kept as buffers (saved with the weights)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedClassifier(nn.Module):
    """A classifier over [0, 1] inputs: normalisation, then the network."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def create_model(
    name: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> NormalizedClassifier:
    """Build a registered classifier with its input normalisation (identity if not given)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown architecture {name!r}; choose one of {', '.join(available_models())}")
    mean = mean if mean is not None else (0.0,) * in_channels
    std = std if std is not None else (1.0,) * in_channels
    net = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels)
    return NormalizedClassifier(net, mean, std)
