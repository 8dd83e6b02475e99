"""A run's memory, estimated before anything is allocated, so that a batch of 10**6 or a noise size of
10**7 is one line naming the key, not an allocator abort minutes in.

The estimate counts what dominates a data-free run: the generator's and the student's parameters
with their gradients and two optimiser moments (fp32), and one batch of activations through the
generator, the student and the two teachers (each teacher counted as the student: their sizes are
only known once loaded), each leaf module's output once, as the backward pass keeps it, at bf16's
2 bytes. The models are built on PyTorch's ``meta`` device, which allocates nothing, and their
activations are counted with forward hooks on a meta batch of one. It is a lower bound of what a
run needs (the allocator's caching, CMI's feature bank and attack buffers come on top), so it
refuses only what cannot fit.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from derd.config import RunConfig
from derd.data import dataset_info
from derd.models.hooks import observed_forward
from derd.settings import ConfigError

BYTES = 4  # fp32 parameters and optimiser moments
ACTIVATION_BYTES = 2  # bf16, the narrowest precision a run computes in: the bound stays a lower one
STATE_COPIES = 4  # weights, gradients and two optimiser moments


def sets_memory(key: str) -> bool:
    """Whether a config key changes the estimate (a search checks its space at these keys' highs)."""
    return key in (
        "budget.batch_size",
        "student.generator_width",
        "student.arch",
        "data.image_size",
    ) or key.endswith(".latent_dim")


def latent_key(cfg: RunConfig) -> str:
    """The noise-size key the run's generator reads (a method's own, else ``student.latent_dim``)."""
    from derd.methods import get_method

    own = [s for s in get_method(cfg.method).sections if hasattr(cfg.sections.get(s), "latent_dim")]
    return f"{own[0]}.latent_dim" if own else "student.latent_dim"


def _activations(model: nn.Module, example: torch.Tensor) -> int:
    """Elements every leaf module of ``model`` outputs for ``example`` (a meta batch of one)."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    observed_forward(
        model, example, [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    )
    return total


def estimate(cfg: RunConfig) -> dict[str, int]:
    """Bytes by the key that sets them: the generator's size, the student's, and the batch's activations."""
    from derd.models import Generator, create_model

    info = dataset_info(cfg.data.dataset, cfg.data.image_size)
    key = latent_key(cfg)
    section, _, leaf = key.partition(".")
    latent = getattr(cfg.sections[section], leaf)
    with torch.device("meta"):
        generator = Generator(info.image_shape, latent, cfg.student.generator_width)
        student = create_model(cfg.student.arch, info.num_classes, in_channels=info.image_shape[0])
        per_image = _activations(generator, torch.zeros(1, latent)) + 3 * _activations(
            student, torch.zeros(1, *info.image_shape)
        )  # the student and two teachers
    return {
        f"{key} (with student.generator_width)": sum(p.numel() for p in generator.parameters())
        * STATE_COPIES
        * BYTES,
        "student.arch": sum(p.numel() for p in student.parameters()) * STATE_COPIES * BYTES,
        "budget.batch_size": cfg.budget.batch_size * per_image * ACTIVATION_BYTES,
    }


def available_bytes(device: torch.device) -> int:
    """The memory a run on ``device`` can have at most: the GPU's, else this machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: RunConfig, device: torch.device, where: str = "") -> None:
    """Refuse a config whose estimated memory exceeds ``device``'s, naming the key that costs most."""
    parts = estimate(cfg)
    total, limit = sum(parts.values()), available_bytes(device)
    if total > limit:
        key = max(parts, key=parts.get)
        raise ConfigError(
            f"{where}{key}: this run needs at least {total / 2**30:,.1f} GiB ({parts[key] / 2**30:,.1f} "
            f"from {key}) but the {device.type.upper()} has {limit / 2**30:,.1f} GiB; "
            f"{'choose a smaller one' if key == 'student.arch' else 'lower it'}"
        )
