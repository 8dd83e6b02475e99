"""Train and load the two experts: a natural teacher and an adversarially trained one.

Checkpoints are plain dicts of tensors and primitives, ``{"format", "state_dict", "meta"}``
with meta = arch, dataset, num_classes, kind and the teacher's val table. Loading always
uses ``torch.load(weights_only=True)``: a file holding pickled code is refused, never run.
Plain state_dicts as users bring them (RobustBench-style, optionally ``module.``-prefixed
or without the normalisation layer) load too when the architecture is named.
"""
from __future__ import annotations

import argparse
import os
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from derd.attacks import eval_mode, pgd
from derd.losses import kl_attack_loss
from derd.data import DatasetInfo, dataset_info, download, load_split, make_loader
from derd.errors import UserError, cli_errors
from derd.evaluate import evaluate, markdown_table
from derd.models import NormalizedClassifier, create_model

CHECKPOINT_FORMAT = "derd-model/1"
KINDS = ("natural", "robust")
DEFAULT_ARCH = {"digits": "digits_cnn", "cifar10": "wrn_34_10", "cifar100": "wrn_34_10", "imagenet100": "tv_resnet50"}
DEFAULT_EPOCHS = {"digits": 30, "cifar10": 100, "cifar100": 100, "imagenet100": 100}


def cache_dir() -> Path:
    """Where trained digits teachers are kept: ``$DERD_CACHE`` or ``~/.cache/derd``."""
    return Path(os.environ.get("DERD_CACHE", Path.home() / ".cache" / "derd"))


def build_model(arch: str, info: DatasetInfo) -> NormalizedClassifier:
    return create_model(arch, info.num_classes, in_channels=info.image_shape[0], mean=info.mean, std=info.std)


def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, beta: float) -> torch.Tensor:
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
    device: str = "cpu",
    progress: bool = True,
) -> NormalizedClassifier:
    """Natural training, or adversarial training (PGD-AT, or TRADES with beta = 6), on the teacher split.

    SGD with momentum 0.9, weight decay 5e-4 and a cosine schedule; the training attack is
    PGD with 10 steps of eps/4 from a uniform start.
    """
    if kind not in KINDS:
        raise UserError(f"unknown teacher kind {kind!r}; choose natural or robust")
    if method not in ("pgd_at", "trades"):
        raise UserError(f"unknown adversarial training method {method!r}; choose pgd_at or trades")
    torch.manual_seed(seed)
    model = build_model(arch, info).to(device)
    data = load_split(info.name, "teacher", data_root, image_size=info.image_shape[1], augment=True)
    loader = make_loader(data, batch_size, shuffle=True, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    gen = torch.Generator().manual_seed(seed)
    from tqdm import tqdm

    bar = tqdm(range(epochs), desc=f"{kind} {arch} on {info.name}", disable=not progress)
    for _ in bar:
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if kind == "robust":
                if method == "trades":
                    with eval_mode(model), torch.no_grad():
                        clean_logits = model(x)
                    x_adv = pgd(model, x, clean_logits, eps=info.eps, steps=10, step_size=info.eps / 4, start="normal",
                                start_scale=0.001 * info.eps / (8 / 255), loss_fn=kl_attack_loss(), generator=gen)
                    loss = trades_loss(model, x, y, x_adv, beta=6.0)
                    logits = model(x_adv)
                else:
                    x_adv = pgd(model, x, y, eps=info.eps, steps=10, step_size=info.eps / 4, generator=gen)
                    logits = model(x_adv)
                    loss = F.cross_entropy(logits, y)
            else:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", train_acc=f"{100 * correct / total:.1f}")
    model.eval()
    return model


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary name, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``{"format", "state_dict", "meta"}`` atomically."""
    atomic_save({"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(), "meta": meta}, path)


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with each failure turned into a clear one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one with python -m derd.teachers or fix the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln]
        if not lines:
            raise UserError(f"cannot read checkpoint {path}: corrupt or not a PyTorch file") from None
        raise UserError(
            f"refusing {path}: it holds pickled code or objects, not just weights ({lines[0][:160]}); "
            f"re-save it with torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {path}: corrupt or not a PyTorch file ({str(err).splitlines()[0][:160]})") from None


def _extract_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj["state_dict"], dict(obj.get("meta", {}))
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):  # common wrappers
            if isinstance(obj.get(key), dict):
                return obj[key], {}
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, {}
    raise UserError("checkpoint holds neither a DERD checkpoint nor a state_dict of tensors")


def load_checkpoint(
    path: str | os.PathLike, info: DatasetInfo, *, arch: str | None = None
) -> tuple[NormalizedClassifier, dict[str, Any]]:
    """Load a classifier for dataset ``info``; returns (model in eval mode, metadata)."""
    state, meta = _extract_state_dict(read_checkpoint_file(path))
    if meta:
        if meta.get("num_classes", info.num_classes) != info.num_classes:
            raise UserError(
                f"checkpoint {path} has {meta['num_classes']} classes but {info.name} has {info.num_classes}; "
                f"use a teacher trained on {info.name}"
            )
        if arch is not None and arch != meta.get("arch"):
            raise UserError(f"checkpoint {path} is a {meta.get('arch')}, not a {arch}; drop --arch or fix it")
        arch = meta.get("arch")
    if arch is None:
        raise UserError(f"checkpoint {path} is a plain state_dict without metadata: pass its architecture with --arch")
    model = build_model(arch, info)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target: nn.Module = model if any(k.startswith("net.") for k in state) else model.net
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:240]
        raise UserError(
            f"checkpoint {path} does not fit a {arch} with {info.num_classes} classes ({detail}); "
            f"pass the architecture it was trained with"
        ) from None
    meta.setdefault("arch", arch)
    model.eval()
    return model, meta


def teacher_path(info: DatasetInfo, kind: str, arch: str) -> Path:
    return cache_dir() / "teachers" / info.name / f"{kind}_{arch}.pt"


def train_and_save(
    info: DatasetInfo, kind: str, arch: str, out: Path, *, epochs: int, data_root: str | None = None,
    method: str = "pgd_at", device: str = "cpu", seed: int = 0, progress: bool = True,
) -> tuple[NormalizedClassifier, dict[str, Any]]:
    """Train a teacher, score it with the full protocol on the val split, save it with its table."""
    start = time.time()
    model = train_teacher(info, kind, arch, epochs=epochs, data_root=data_root, method=method, device=device, seed=seed, progress=progress)
    val = load_split(info.name, "val", data_root, image_size=info.image_shape[1])
    table = evaluate(model, make_loader(val, 256), "full", eps=info.eps, device=device, progress=progress)
    meta = {"arch": arch, "dataset": info.name, "num_classes": info.num_classes, "kind": kind,
            "method": method if kind == "robust" else "natural", "epochs": epochs, "seed": seed,
            "train_seconds": time.time() - start, "table": table}
    save_checkpoint(out, model, meta)
    return model, meta


def digits_teachers(progress: bool = True) -> dict[str, tuple[NormalizedClassifier, dict[str, Any]]]:
    """The digits pair, trained on first use (a few minutes on 2 CPU cores) and cached."""
    info = dataset_info("digits")
    arch = DEFAULT_ARCH["digits"]
    out = {}
    for kind in KINDS:
        path = teacher_path(info, kind, arch)
        if path.is_file():
            out[kind] = load_checkpoint(path, info)
        else:
            out[kind] = train_and_save(info, kind, arch, path, epochs=DEFAULT_EPOCHS["digits"], progress=progress)
    return out


@cli_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m derd.teachers", description="Train a natural or robust teacher.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--arch", help="architecture (default: digits_cnn / wrn_34_10 / tv_resnet50 by dataset)")
    p.add_argument("--method", choices=("pgd_at", "trades"), default="pgd_at", help="adversarial training for --kind robust")
    p.add_argument("--epochs", type=int)
    p.add_argument("--data-root")
    p.add_argument("--download", action="store_true", help="fetch CIFAR into --data-root first (torchvision)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--out", help="checkpoint path (default: the teacher cache)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    info = dataset_info(args.dataset, args.image_size)
    if args.download:
        download(info.name, args.data_root)
    arch = args.arch or DEFAULT_ARCH[info.name]
    out = Path(args.out) if args.out else teacher_path(info, args.kind, arch)
    _, meta = train_and_save(info, args.kind, arch, out, epochs=args.epochs or DEFAULT_EPOCHS[info.name],
                             data_root=args.data_root, method=args.method, device=args.device, seed=args.seed)
    print(f"saved {out} ({meta['train_seconds']:.0f} s)")
    print(markdown_table({f"{args.kind} {arch}": meta["table"]}))


if __name__ == "__main__":
    main()
