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


@dataclass
class Experts:
    """The natural and the robust teacher (frozen, eval mode). ``natural`` may be None for
    methods that use only T_rob (derd_no_nat and the baselines)."""

    natural: nn.Module | None
    robust: nn.Module

    def to(self, device: torch.device) -> "Experts":
        return Experts(self.natural.to(device) if self.natural is not None else None, self.robust.to(device))


def _check_sha256(path: str, expected: str | None, key: str) -> None:
    if expected is not None and file_sha256(path) != expected:
        raise UserError(f"{path} is not the teacher this config was made with ({key} differs); "
                        f"pass the original file or drop {key}")


def load_experts(cfg: RunConfig, progress: bool = True, methods: Sequence[str] = ()) -> Experts:
    """Load the teachers the config names, those that its method (or any of ``methods``, for a
    search over methods) needs; on digits, unnamed teachers are trained on first use and
    cached (``derd.teachers.digits_teachers``)."""
    from derd.methods import get_method

    info = dataset_info(cfg.data.dataset, cfg.data.image_size)
    t = cfg.teachers
    need_natural = any("natural" in get_method(m).teachers for m in (cfg.method, *methods))
    missing = t.robust is None or (need_natural and t.natural is None)
    if missing and info.name != "digits":
        raise UserError(
            f"{info.name} needs teacher checkpoints: pass --teacher-natural and --teacher-robust "
            f"(teachers.natural / teachers.robust in a run config); train them with "
            f"python -m derd.teachers --dataset {info.name} --kind natural|robust"
        )
    cached = None
    if missing:
        from derd.teachers import digits_teachers

        cached = digits_teachers(progress=progress)

    def load(path: str | None, arch: str | None, expected: str | None, kind: str) -> nn.Module:
        if path is None:
            return cached[kind][0]
        model = load_checkpoint(path, info, arch=arch, normalize=t.normalize)[0]  # a missing file: its own message
        _check_sha256(path, expected, f"teachers.{kind}_sha256")
        return model

    natural = load(t.natural, t.natural_arch, t.natural_sha256, "natural") if need_natural else None
    robust = load(t.robust, t.robust_arch, t.robust_sha256, "robust")
    for m in (natural, robust):
        if m is not None:
            m.eval().requires_grad_(False)
    return Experts(natural, robust)
