"""The two pretrained experts a run distils from, loaded once per search or training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from derd.checkpoints import file_sha256, load_checkpoint
from derd.config import RunConfig
from derd.data import dataset_info
from derd.errors import UserError
from derd.methods.registry import needed_teachers
from derd.teachers import cached_teachers


@dataclass
class Experts:
    """The natural and the robust teacher (frozen, eval mode). Either may be None when no method of
    the run or search reads it: ``natural`` for the methods that use only T_rob (derd_no_nat and the
    baselines), ``robust`` for the undefended ``nature``."""

    natural: nn.Module | None
    robust: nn.Module | None

    def to(self, device: torch.device) -> "Experts":
        return Experts(*(m.to(device) if m is not None else None for m in (self.natural, self.robust)))


def _check_sha256(path: str, expected: str | None, key: str) -> None:
    if expected is not None and file_sha256(path) != expected:
        raise UserError(
            f"{path} is not the teacher this config was made with ({key} differs); "
            f"pass the original file or drop {key}"
        )


def load_experts(cfg: RunConfig, progress: bool = True, methods: Sequence[str] = ()) -> Experts:
    """Load the teachers that the config's method (or any of ``methods``, for a search over methods)
    needs, and only those: a path the config names (``teachers.natural`` / ``teachers.robust``), else
    the dataset's teacher of that kind in the cache (``derd.teachers.cached_teachers``: found for any
    dataset; an embedded dataset's is trained there on first use)."""
    info = dataset_info(cfg.data.dataset, cfg.data.image_size)
    t = cfg.teachers
    kinds = needed_teachers((cfg.method, *methods))
    unnamed = tuple(kind for kind in kinds if getattr(t, kind) is None)
    cached = cached_teachers(info, unnamed, progress=progress) if unnamed else {}

    def load(kind: str) -> nn.Module | None:
        if kind not in kinds:
            return None
        path = getattr(t, kind)
        if path is None:
            return cached[kind][0]
        model = load_checkpoint(path, info, arch=getattr(t, f"{kind}_arch"), normalize=t.normalize)[0]
        _check_sha256(
            path, getattr(t, f"{kind}_sha256"), f"teachers.{kind}_sha256"
        )  # a missing file: its own message
        return model

    natural, robust = load("natural"), load("robust")
    for m in (natural, robust):
        if m is not None:
            m.eval().requires_grad_(False)
    return Experts(natural, robust)
