"""Train the two experts: a natural teacher and an adversarially trained one (also the
real-data reference rows of the paper's tables, trained at the student's architecture).

Checkpoints (``derd.checkpoints``) carry meta = arch, dataset, num_classes, kind and the
val table. Teachers in the cache (``$DERD_CACHE/teachers/<dataset>/``) are found for any dataset
by name and kind; an embedded dataset's (digits) are trained there on first use.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from derd.attacks import eval_mode, pgd
from derd.cache import cache_dir
from derd.checkpoints import build_model, load_checkpoint, save_checkpoint
from derd.data import (
    IMAGE_SIZES,
    DatasetInfo,
    available_datasets,
    dataset_info,
    dataset_spec,
    download,
    load_split,
    make_loader,
)
from derd.device import Compute, check_device
from derd.errors import UserError, check_output_file, cli_errors
from derd.evaluate import evaluate, markdown_table
from derd.losses import kl_attack_loss
from derd.models import NormalizedClassifier
from derd.settings import SEED_MAX, check_flag

KINDS = ("natural", "robust")


def trades_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, beta: float
) -> torch.Tensor:
    logits = model(x)
    kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1), reduction="batchmean")
    return F.cross_entropy(logits, y) + beta * kl


def train_teacher(
    info: DatasetInfo,
    kind: str,
    arch: str,
    *,
    epochs: int,
    data_root: str | None = None,
    method: str = "pgd_at",
    batch_size: int = 128,
    lr: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    progress: bool = True,
) -> NormalizedClassifier:
    """Natural training, or adversarial training (PGD-AT, or TRADES with beta = 6), on the teacher split.

    SGD with momentum 0.9, weight decay 5e-4 and a cosine schedule; the training attack is
    PGD with 10 steps of eps/4 from a uniform start. ``precision`` as ``train.precision``
    (bf16 autocast and channels_last on CUDA by default).
    """
    if kind not in KINDS:
        raise UserError(f"unknown teacher kind {kind!r}; choose natural or robust")
    if method not in ("pgd_at", "trades"):
        raise UserError(f"unknown adversarial training method {method!r}; choose pgd_at or trades")
    if epochs < 1:
        raise UserError(f"--epochs {epochs}: a teacher needs at least 1 epoch")
    device = torch.device(device)
    compute = Compute.from_config(device, precision)
    torch.manual_seed(seed)
    model = compute.prepare(build_model(arch, info))
    data = load_split(info.name, "teacher", data_root, image_size=info.image_shape[1], augment=True)
    loader = make_loader(data, batch_size, shuffle=True, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    gen = torch.Generator(device=device).manual_seed(seed)
    from derd.progress import progress_bar

    bar = progress_bar(range(epochs), desc=f"{kind} {arch} on {info.name}", enabled=progress)
    for _ in bar:
        model.train()
        total, correct, loss_sum = 0, torch.zeros((), device=device), torch.zeros((), device=device)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with compute.autocast():
                logits, loss = _teacher_step_loss(model, x, y, kind, method, info, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(y)
            correct += (logits.argmax(1) == y).sum()
            loss_sum += loss.detach().float() * len(y)
        bar.set_postfix(
            loss=f"{loss_sum.item() / total:.3f}", train_acc=f"{100 * correct.item() / total:.1f}"
        )
    model.eval()
    return model


def _teacher_step_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    method: str,
    info: DatasetInfo,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits the training accuracy is read from, loss) of one batch."""
    if kind == "natural":
        logits = model(x)
        return logits, F.cross_entropy(logits, y)
    if method == "trades":
        with eval_mode(model), torch.no_grad():
            clean_logits = model(x)
        x_adv = pgd(
            model,
            x,
            clean_logits,
            eps=info.eps,
            steps=10,
            step_size=info.eps / 4,
            start="normal",
            start_scale=0.001 * info.eps / (8 / 255),
            loss_fn=kl_attack_loss(),
            generator=gen,
        )
        return model(x_adv), trades_loss(model, x, y, x_adv, beta=6.0)
    x_adv = pgd(model, x, y, eps=info.eps, steps=10, step_size=info.eps / 4, generator=gen)
    logits = model(x_adv)
    return logits, F.cross_entropy(logits, y)


def teacher_path(info: DatasetInfo, kind: str, arch: str) -> Path:
    return cache_dir() / "teachers" / info.name / f"{kind}_{arch}.pt"


def train_and_save(
    info: DatasetInfo,
    kind: str,
    arch: str,
    out: Path,
    *,
    epochs: int,
    data_root: str | None = None,
    method: str = "pgd_at",
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> tuple[NormalizedClassifier, dict[str, Any]]:
    """Train a teacher, score it with the full protocol on the val split, save it with its table."""
    start = time.time()
    model = train_teacher(
        info,
        kind,
        arch,
        epochs=epochs,
        data_root=data_root,
        method=method,
        device=device,
        seed=seed,
        progress=progress,
    )
    val = load_split(info.name, "val", data_root, image_size=info.image_shape[1])
    table = evaluate(model, make_loader(val, 256), "full", eps=info.eps, device=device, progress=progress)
    meta = {
        "arch": arch,
        "dataset": info.name,
        "num_classes": info.num_classes,
        "kind": kind,
        "method": method if kind == "robust" else "natural",
        "epochs": epochs,
        "seed": seed,
        "train_seconds": time.time() - start,
        "table": table,
    }
    save_checkpoint(out, model, meta)
    return model, meta


def find_cached_teacher(info: DatasetInfo, kind: str, arch: str | None = None) -> Path | None:
    """The cached ``kind`` teacher of a dataset (``$DERD_CACHE/teachers/<dataset>/<kind>_<arch>.pt``, as
    ``python -m derd.teachers`` writes it), for any dataset: the file of ``arch`` (default: the dataset's
    ``teacher_arch``), else the only ``<kind>_*.pt`` there; None if there is none. Several of other
    architectures are ambiguous: one line naming them and the flag that picks one."""
    folder = cache_dir() / "teachers" / info.name
    preferred = folder / f"{kind}_{arch or dataset_spec(info.name).teacher_arch}.pt"
    if preferred.is_file():
        return preferred
    if arch is not None:
        return None
    found = sorted(folder.glob(f"{kind}_*.pt"))
    if len(found) > 1:
        raise UserError(
            f"{folder} holds {len(found)} {kind} teachers ({', '.join(p.name for p in found)}); pass "
            f"--teacher-{kind} FILE (teachers.{kind} in a run config) to choose one"
        )
    return found[0] if found else None


def cached_teachers(
    info: DatasetInfo, kinds: tuple[str, ...], progress: bool = True
) -> dict[str, tuple[NormalizedClassifier, dict[str, Any]]]:
    """The teachers ``kinds`` of a dataset from the cache (``find_cached_teacher``). A missing one is
    trained on first use (about a minute each on 2 CPU cores for digits) when the dataset is embedded
    (``DatasetSpec.needs_root`` is False: its data ships with the code); otherwise one line says how to
    train it or pass it."""
    spec = dataset_spec(info.name)
    out = {}
    for kind in kinds:
        path = find_cached_teacher(info, kind)
        if path is not None:
            out[kind] = load_checkpoint(path, info)
            continue
        path = teacher_path(info, kind, spec.teacher_arch)
        if spec.needs_root:
            raise UserError(
                f"{info.name} needs teacher checkpoints: no {kind} teacher in {path.parent}; train one "
                f"with python -m derd.teachers --dataset {info.name} --kind {kind} --data-root DIR (it "
                f"lands there), or pass --teacher-{kind} FILE (teachers.{kind} in a run config)"
            )
        print(
            f"training the {info.name} {kind} teacher ({spec.teacher_arch}) on first use; it is cached in {path} "
            f"($DERD_CACHE moves the cache)",
            file=sys.stderr,
            flush=True,
        )
        out[kind] = train_and_save(
            info, kind, spec.teacher_arch, path, epochs=spec.teacher_epochs, progress=progress
        )
        print(
            markdown_table({f"{kind} {spec.teacher_arch} (val split, full protocol)": out[kind][1]["table"]}),
            file=sys.stderr,
            flush=True,
        )
    return out


def digits_teachers(progress: bool = True) -> dict[str, tuple[NormalizedClassifier, dict[str, Any]]]:
    """The digits pair from the cache, trained on first use (``cached_teachers``)."""
    return cached_teachers(dataset_info("digits"), KINDS, progress=progress)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m derd.teachers", description="Train a natural or robust teacher."
    )
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(available_datasets())}")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument(
        "--arch",
        help="architecture (default: the dataset's DatasetSpec.teacher_arch: "
        + ", ".join(f"{n} {dataset_spec(n).teacher_arch}" for n in available_datasets())
        + ")",
    )
    p.add_argument(
        "--method",
        choices=("pgd_at", "trades"),
        default="pgd_at",
        help="adversarial training for --kind robust",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--data-root")
    p.add_argument("--download", action="store_true", help="fetch CIFAR into --data-root first (torchvision)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--out", help="checkpoint path (default: the teacher cache)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    check_flag(args.seed, "--seed", 0, SEED_MAX)
    check_flag(args.image_size, "--image-size", *IMAGE_SIZES)
    info, spec = dataset_info(args.dataset, args.image_size), dataset_spec(args.dataset)
    device = check_device(args.device)
    epochs = args.epochs if args.epochs is not None else spec.teacher_epochs
    if epochs < 1:
        raise UserError(f"--epochs {epochs}: a teacher needs at least 1 epoch")
    arch = args.arch or spec.teacher_arch
    build_model(arch, info)  # an unknown architecture fails here, before any data is read
    out = check_output_file(args.out) if args.out else teacher_path(info, args.kind, arch)
    if args.download:
        download(info.name, args.data_root)
    load_split(
        info.name, "teacher", args.data_root, image_size=args.image_size
    )  # missing data fails before training
    _, meta = train_and_save(
        info,
        args.kind,
        arch,
        out,
        epochs=epochs,
        data_root=args.data_root,
        method=args.method,
        device=device,
        seed=args.seed,
    )
    print(f"saved {out} ({meta['train_seconds']:.0f} s)")
    print(markdown_table({f"{args.kind} {arch}": meta["table"]}))


if __name__ == "__main__":
    main()
