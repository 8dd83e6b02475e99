"""Where and how a run computes: the device, bf16 autocast, channels_last and compilation.

One place decides these for the run loop, teacher training and benchmarks, from the run
config's ``train`` section:

* ``train.precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
  Autocast keeps softmax, log-softmax, KL and cross-entropy in fp32 and runs convolutions
  and matrix products in bf16. Evaluation attacks never run under it (they score models).
* ``train.channels_last``: ``auto`` (on for CUDA), ``on`` or ``off``: NHWC memory layout
  for every convolutional model, which bf16 convolutions on tensor cores want.
* ``train.compile``: ``torch.compile`` the student and the teachers in place (state_dict
  keys unchanged). Off by default: the first iterations pay the compile time.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from derd.errors import UserError


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
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device {name!r} is not available on this machine (no such CUDA device); use --device cpu or auto")
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

    @classmethod
    def from_config(cls, device: torch.device, precision: str = "auto", channels_last: str = "auto",
                    compile: bool = False) -> "Compute":
        cuda = device.type == "cuda"
        return cls(device, bf16=precision == "bf16" or (precision == "auto" and cuda),
                   channels_last=channels_last == "on" or (channels_last == "auto" and cuda), compile=compile)

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
            # SGA takes three gradients from one graph (retain_graph=True), which donated buffers forbid
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False
            module.compile()
        return module

    @property
    def label(self) -> str:
        return ", ".join(f for f, on in (("bf16", self.bf16), ("channels_last", self.channels_last),
                                          ("compiled", self.compile)) if on) or "fp32"


@contextlib.contextmanager
def no_autocast(device: torch.device) -> Iterator[None]:
    """Leave any enclosing autocast (evaluation attacks run in fp32)."""
    with torch.autocast(device.type, enabled=False):
        yield
