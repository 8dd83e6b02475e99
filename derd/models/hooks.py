"""One forward pass observed by hooks: how BatchNorm folding finds its pairs and the memory estimate counts
activations."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def observed_forward(model: nn.Module, example: torch.Tensor, handles: Sequence[RemovableHandle]) -> None:
    """Run ``model(example)`` without gradients, then remove ``handles`` (also when the pass fails), so the
    model is left as it was."""
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
