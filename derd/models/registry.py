"""Model registry in the style of timm: ``@register("name")`` on a builder, ``create_model(name, num_classes, ...)``.

Every model takes inputs in [0, 1] and normalises inside itself, so attacks work in
pixel space and checkpoints carry their normalisation. The registry is ``derd.registry``'s: a name taken
twice is refused, and a module named in ``$DERD_PLUGINS`` may register architectures of its own.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from derd.registry import Registry

Builder = Callable[..., nn.Module]
_MODELS: Registry[Builder] = Registry("architecture", order=lambda name, _: name)  # listed alphabetically


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make a network builder available to :func:`create_model` under ``name``."""
    return _MODELS.decorator(name)


def unregister_model(name: str) -> None:
    """Remove an architecture (for tests and notebooks that register one of their own)."""
    _MODELS.remove(name)


def available_models() -> list[str]:
    return _MODELS.names()


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
    builder = _MODELS.get(name)
    mean = mean if mean is not None else (0.0,) * in_channels
    std = std if std is not None else (1.0,) * in_channels
    net = builder(num_classes=num_classes, in_channels=in_channels)
    return NormalizedClassifier(net, mean, std)
