"""Where and how a run computes: the device, bf16 autocast, channels_last, compilation and folded teachers.

One place decides these for the run loop, teacher training and benchmarks, from the run
config's ``train`` section (``auto``: what pays on the device; the CPU keeps the plain path,
so CPU results stay bit for bit what they were):

* ``train.precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
  Autocast keeps softmax, log-softmax, KL and cross-entropy in fp32 and runs convolutions
  and matrix products in bf16. Evaluation attacks never run under it (they score models).
* ``train.channels_last``: ``auto`` (on for CUDA), ``on`` or ``off``: NHWC memory layout
  for every convolutional model, which bf16 convolutions on tensor cores want.
* ``train.compile``: ``auto`` (on for CUDA), ``on`` or ``off``: ``torch.compile`` the
  student, the generator and the teachers in place (state_dict keys unchanged). The first
  iterations of each phase pay the compilation (the run logs it as ``time/compile_s``);
  Inductor's cache lives in ``$DERD_CACHE/inductor``, shared by every trial of a node, so
  only the first trial compiles from scratch. Evaluation runs the models eagerly
  (``derd.evaluate``), so scores never depend on compilation.
* ``train.fold_teachers``: ``auto`` (on for CUDA), ``on`` or ``off``: each frozen teacher's
  BatchNorm folded into the convolution before it (``derd.models.fold``), on a copy.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from derd.cache import cache_dir
from derd.errors import UserError
from derd.models.fold import fold_batchnorm


def _switch(value: str, cuda: bool) -> bool:
    return value == "on" or (value == "auto" and cuda)


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(name: str) -> torch.device:
    """``resolve_device`` for user input: an unknown or absent device is one clear error."""
    try:
        device = resolve_device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise UserError(
            f"device {name!r} is not available on this machine (no such CUDA device); use --device cpu or auto"
        )
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r}: only cpu and cuda are supported")
    return device


@dataclass(frozen=True)
class Compute:
    """The resolved compute settings of a run."""

    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    fold_teachers: bool = False

    @classmethod
    def from_config(
        cls,
        device: torch.device,
        precision: str = "auto",
        channels_last: str = "auto",
        compile: str = "auto",
        fold_teachers: str = "auto",
    ) -> "Compute":
        cuda = device.type == "cuda"
        return cls(
            device,
            bf16=precision == "bf16" or (precision == "auto" and cuda),
            channels_last=_switch(channels_last, cuda),
            compile=_switch(compile, cuda),
            fold_teachers=_switch(fold_teachers, cuda),
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device, or nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def prepare(self, module: nn.Module) -> nn.Module:
        """Move a model to the device in the configured layout; compile it if asked (in place)."""
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if self.compile:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
            # SGA takes three gradients from one graph (retain_graph=True), which donated buffers forbid
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False
            module.compile()
        return module

    def prepare_teacher(self, module: nn.Module, image_shape: tuple[int, int, int]) -> nn.Module:
        """A frozen teacher ready for the run: BatchNorm folded and compiled on a copy (so compiling or
        folding never changes the caller's model), on the device and in the layout (in place when
        neither applies, as for any module of the run)."""
        if self.fold_teachers:
            module, _ = fold_batchnorm(
                module, torch.rand(2, *image_shape, device=next(module.parameters()).device)
            )
        elif self.compile:
            module = copy.deepcopy(module)
        return self.prepare(module)

    @property
    def label(self) -> str:
        return (
            ", ".join(
                f
                for f, on in (
                    ("bf16", self.bf16),
                    ("channels_last", self.channels_last),
                    ("compiled", self.compile),
                    ("folded teachers", self.fold_teachers),
                )
                if on
            )
            or "fp32"
        )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): for timing only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def no_autocast(device: torch.device) -> Iterator[None]:
    """Leave any enclosing autocast (evaluation attacks run in fp32)."""
    with torch.autocast(device.type, enabled=False):
        yield
