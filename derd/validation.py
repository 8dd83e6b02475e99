"""What a run's ``val/*`` is scored on (``validation_data``, ``val_protocol``): the dataset's real val
split, or a validation set made from the teachers alone (``eval.validation: synthetic``), so that a
search reads no real image. The synthetic set is experimental: its faithfulness to real val is measured by
``benchmarks/bench_validation.py`` (docs/search.md: "Validation without data").

``make_validation_set(experts, info, recipe)`` optimises images directly, with no generator
network, so the set is independent of every method's own generator (no trial can have trained on
it, and no method is favoured by sharing its synthesis). The procedures (``synthetic_val.procedure``;
the recipe is the config section ``synthetic_val``, ``derd.config.SyntheticValConfig``):

* ``inversion``: DeepInversion (Yin et al., CVPR 2020), against every teacher the search has:
  the CE of each teacher to a drawn class, plus ``bn_weight`` times each teacher's BatchNorm
  statistics term (``derd.losses.BatchNormStatistics``), plus total variation; Adam on the pixels,
  clamped to [0, 1]. The images look like what the teachers were trained on, in their statistics.
* ``robust``: synthesis with a robust classifier (Santurkar et al., NeurIPS 2019): normalised L2
  gradient steps that raise T_rob's log-probability of the drawn class from a noise seed. A robust
  model's gradients are perceptually aligned, so the images carry the class's features rather than
  adversarial noise.
* ``both``: half the draws of each class by each (``_both``).

Either way, a draw is kept only when every teacher labels it as its drawn class: the label is the
teachers' own, no human's. Classes are drawn balanced and interleaved, so the search protocol's
prefix of the set is balanced too. With ``recipe.snapshots`` above 1, a draw is also kept at earlier
steps (``snapshot_steps``), as separate images: an image early in its optimisation lies nearer the teachers' decision
boundary, which is where students' robustness differs.

The set is stored as uint8 (like real images, quantised to 1/255; the teachers' agreement is
checked after quantisation) in the search folder and read back with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from derd.checkpoints import atomic_save, read_checkpoint_file
from derd.config import RunConfig, SyntheticValConfig
from derd.data import DatasetInfo, dataset_info, load_split
from derd.errors import UserError
from derd.evaluate import protocol_record
from derd.losses import BatchNormStatistics

FORMAT = "derd-synthetic-val-1"


def snapshot_steps(recipe: SyntheticValConfig) -> list[int]:
    """The steps at which a draw is kept: ``recipe.snapshots`` of them, evenly spaced on a log scale from
    a twentieth of the steps to the last (one snapshot: the last step only)."""
    k = recipe.snapshots
    fractions = [20.0 ** (-(k - 1 - i) / (k - 1)) for i in range(k)] if k > 1 else [1.0]
    return sorted({max(1, round(f * recipe.steps)) for f in fractions})


@dataclass
class SyntheticValidation:
    """The kept images (float in [0, 1]), the teachers' labels, and what making them measured."""

    images: torch.Tensor
    labels: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.images, self.labels)


def _teachers(experts: Any) -> list[nn.Module]:
    return [m for m in (experts.natural, experts.robust) if m is not None]


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def _optimise(
    teachers: list[nn.Module],
    robust: nn.Module,
    y: torch.Tensor,
    recipe: SyntheticValConfig,
    shape: tuple[int, ...],
    gen: torch.Generator,
    stops: set[int],
) -> dict[int, torch.Tensor]:
    """One batch of draws for classes ``y``: the images at each step in ``stops``."""
    x = (
        (0.5 + 0.2 * torch.randn((len(y), *shape), generator=gen))
        .clamp(0, 1)
        .to(y.device)
        .requires_grad_(True)
    )
    taken: dict[int, torch.Tensor] = {}
    if recipe.procedure == "inversion":
        stats = [BatchNormStatistics(t) for t in teachers]
        opt = torch.optim.Adam([x], lr=recipe.lr)
        try:
            for step in range(1, recipe.steps + 1):
                opt.zero_grad()
                loss = recipe.tv_weight * _total_variation(x)
                for t, s in zip(teachers, stats):
                    with s.recording():
                        loss = loss + nn.functional.cross_entropy(t(x), y) + recipe.bn_weight * s.loss()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
                if step in stops:
                    taken[step] = x.detach().clone()
        finally:
            for s in stats:
                s.remove()
    else:
        step_size = recipe.lr * float(torch.tensor(shape).prod()) ** 0.5 / recipe.steps * 10
        for step in range(1, recipe.steps + 1):
            (grad,) = torch.autograd.grad(-nn.functional.cross_entropy(robust(x), y, reduction="sum"), x)
            with torch.no_grad():
                norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * len(shape))
                x += step_size * grad / norm
                x.clamp_(0, 1)
            if step in stops:
                taken[step] = x.detach().clone()
    return taken


@torch.no_grad()
def _agreeing(teachers: list[nn.Module], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for t in teachers:
        keep &= t(x).argmax(1) == y
    return keep


def make_validation_set(
    experts: Any, info: DatasetInfo, recipe: SyntheticValConfig, seed: int, device: torch.device | str = "cpu"
) -> SyntheticValidation:
    """Draw ``recipe.per_class`` images per class and snapshot, keep those every teacher of ``experts``
    labels as drawn, and interleave them by class. Deterministic for a recipe, seed, teachers and device."""
    teachers = _teachers(experts)
    if not teachers:
        raise UserError("a synthetic validation set needs at least one teacher")
    if recipe.procedure in ("robust", "both") and experts.robust is None:
        raise UserError(
            f"the {recipe.procedure!r} synthetic validation procedure needs T_rob; use 'inversion'"
        )
    if recipe.procedure == "both":
        return _both(experts, info, recipe, seed, device)
    start = time.time()
    device = torch.device(device)
    for t in teachers:
        t.to(device).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    drawn = torch.arange(recipe.per_class * info.num_classes) % info.num_classes
    drawn = drawn[
        torch.randperm(len(drawn), generator=gen)
    ]  # mixed classes per batch: BN statistics are over all
    stops = set(snapshot_steps(recipe))
    per_stop: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {s: [] for s in stops}
    for i in range(0, len(drawn), recipe.batch_size):
        y = drawn[i : i + recipe.batch_size].to(device)
        with torch.enable_grad():
            taken = _optimise(teachers, experts.robust, y, recipe, info.image_shape, gen, stops)
        for step, x in taken.items():
            q = (x * 255).round() / 255  # what is stored: agreement is checked on it
            keep = _agreeing(teachers, q, y)
            per_stop[step].append((q[keep].cpu(), y[keep].cpu()))
    images = torch.cat([x for s in sorted(stops) for x, _ in per_stop[s]])
    labels = torch.cat([y for s in sorted(stops) for _, y in per_stop[s]])
    order = _interleaved(labels, info.num_classes)
    counts = torch.bincount(labels, minlength=info.num_classes).tolist()
    n_drawn = len(drawn) * len(stops)
    stats = {
        "procedure": recipe.procedure,
        "n_images": len(labels),
        "n_drawn": n_drawn,
        "teacher_agreement": len(labels) / n_drawn,
        "class_counts": counts,
        "teachers": len(teachers),
        "seconds": time.time() - start,
        "seed": seed,
        "recipe": {k: v for k, v in asdict(recipe).items() if k != "file"},
    }
    return SyntheticValidation(images[order], labels[order], stats)


def _both(
    experts: Any, info: DatasetInfo, recipe: SyntheticValConfig, seed: int, device: torch.device | str
) -> SyntheticValidation:
    """Half the draws of each class by ``inversion``, half by ``robust`` (seeds ``seed`` and ``seed + 1``),
    interleaved by class: students robust on one kind of image and not the other are told apart."""
    half = max(1, recipe.per_class // 2)
    parts = [
        make_validation_set(
            experts, info, dataclasses.replace(recipe, procedure=p, per_class=half), seed + i, device
        )
        for i, p in enumerate(("inversion", "robust"))
    ]
    images = torch.cat([p.images for p in parts])
    labels = torch.cat([p.labels for p in parts])
    order = _interleaved(labels, info.num_classes)
    n_drawn = sum(p.stats["n_drawn"] for p in parts)
    stats = {
        **parts[0].stats,
        "procedure": "both",
        "n_images": len(labels),
        "n_drawn": n_drawn,
        "teacher_agreement": len(labels) / n_drawn,
        "class_counts": torch.bincount(labels, minlength=info.num_classes).tolist(),
        "seconds": sum(p.stats["seconds"] for p in parts),
        "seed": seed,
        "recipe": {**parts[0].stats["recipe"], "procedure": "both", "per_class": recipe.per_class},
    }
    return SyntheticValidation(images[order], labels[order], stats)


def _interleaved(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """An order of ``labels`` that cycles through the classes (each class's images in their order), so
    that any prefix of the set is as balanced as the set allows."""
    rank = torch.zeros(len(labels), dtype=torch.long)
    for c in range(num_classes):
        where = (labels == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    return torch.argsort(rank * num_classes + labels, stable=True)


def save_validation_set(synthetic: SyntheticValidation, info: DatasetInfo, path: Path) -> None:
    """Write the set atomically (a crash leaves no half-written file) as uint8 images."""
    atomic_save(
        {
            "format": FORMAT,
            "dataset": info.name,
            "images": (synthetic.images * 255).round().to(torch.uint8),
            "labels": synthetic.labels.to(torch.int64),
            "stats": synthetic.stats,
        },
        Path(path),
    )


def load_validation_set(path: str | Path, info: DatasetInfo) -> SyntheticValidation:
    """``save_validation_set``'s file, checked against the dataset it must score."""
    fix = f"delete {path} and let the search make it again"
    state = read_checkpoint_file(path, fix=fix)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a synthetic validation set of this version of derd ({FORMAT}); {fix}")
    images, labels = state.get("images"), state.get("labels")
    if not (
        isinstance(images, torch.Tensor)
        and images.dtype == torch.uint8
        and tuple(images.shape[1:]) == info.image_shape
        and isinstance(labels, torch.Tensor)
        and labels.shape == images.shape[:1]
        and len(labels) > 0
        and int(labels.min()) >= 0
        and int(labels.max()) < info.num_classes
    ):
        raise UserError(
            f"{path} is not a synthetic validation set of {info.name} (images of {info.image_shape}, "
            f"labels below {info.num_classes}); {fix}"
        )
    if state.get("dataset") != info.name:
        raise UserError(f"{path} was made for {state.get('dataset')!r}, not {info.name}; {fix}")
    return SyntheticValidation(images.float() / 255, labels, dict(state.get("stats") or {}))


def validation_data(cfg: RunConfig, info: DatasetInfo) -> Dataset:
    """What a run's ``val/*`` is scored on: the dataset's real val split, or with ``eval.validation:
    synthetic`` the set in ``eval.synthetic_file``, and then no real image is read."""
    if cfg.eval.validation == "real":
        return load_split(info.name, "val", cfg.data.root, image_size=cfg.data.image_size)
    if not cfg.synthetic_val.file:
        raise UserError(
            "eval.validation: synthetic needs synthetic_val.file, the set to score on (a search makes it "
            "in its folder: python tuning/search.py --validation synthetic)"
        )
    return load_validation_set(cfg.synthetic_val.file, info).dataset()


def val_protocol(cfg: RunConfig) -> dict[str, Any]:
    """What a run's ``val/*`` scores are measured under (``derd.evaluate.protocol_record`` with what they are
    scored on): recorded on every search and trial run and in an exported config's origin."""
    return protocol_record(
        cfg.eval.protocol, dataset_info(cfg.data.dataset, cfg.data.image_size).eps, cfg.eval.validation
    )
