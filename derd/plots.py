"""Figures of a run: generated samples (the paper's Fig. 2) and val accuracy per epoch (its Fig. 1)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_sample_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> None:
    """A grid of pseudo images in [0, 1] as PNG."""
    from torchvision.utils import make_grid

    plt = _pyplot()
    grid = make_grid(images.detach().cpu().clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[1] / grid.shape[2]))
    ax.imshow(
        grid.permute(1, 2, 0).numpy(), cmap="gray" if images.shape[1] == 1 else None, interpolation="nearest"
    )
    ax.set_axis_off()
    ax.set_title("generated pseudo images")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def save_accuracy_curve(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Val clean and robust accuracy per epoch, stage boundary marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    names = {"val/clean_acc": "clean", "val/pgd_acc": "PGD_S", "val/aa_acc": "AA"}
    for key, label in names.items():
        points = [(h["epoch"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    stage2 = [h["epoch"] for h in history if h.get("stage") == 2]
    if stage2 and stage2[0] > 1:
        ax.axvline(stage2[0] - 0.5, color="grey", linestyle="--", label="stage II starts")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(title or "student accuracy during training")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
