"""Checkpoint I/O in one place: atomic writes, safe reads, classifiers from files users bring.

Every read goes through ``torch.load(weights_only=True)``: a file holding pickled code or
objects is refused, never run. A classifier checkpoint is ``{"format", "state_dict",
"meta"}`` (meta: arch, dataset, num_classes, kind, the val table); plain state_dicts as
users bring them (RobustBench style, optionally ``module.``-prefixed, with or without our
normalisation layer) load too when the architecture is named.

Input normalisation: every model here takes [0, 1] images and normalises inside itself
(``NormalizedClassifier``). A user's network that already normalises inside (RobustBench
models do) must not be normalised twice: load it with ``normalize="none"`` (config key
``teachers.normalize``) and the wrapper's normalisation becomes the identity.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from derd.data import DatasetInfo
from derd.errors import UserError
from derd.models import NormalizedClassifier, create_model

CHECKPOINT_FORMAT = "derd-model/1"
NORMALIZE_CHOICES = ("dataset", "none")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary name, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file (teacher provenance in MLflow and exported configs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``{"format", "state_dict", "meta"}`` atomically."""
    atomic_save({"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(), "meta": meta}, path)


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with each failure turned into one clear line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one with python -m derd.teachers or fix the path")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is an empty file; write it again with torch.save(model.state_dict(), path)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        lines = [ln.strip() for ln in text.splitlines() if "GLOBAL" in ln]
        if lines:
            raise UserError(f"refusing {path}: it holds pickled code or objects, not just weights ({lines[0][:160]}); "
                            f"re-save it with torch.save(model.state_dict(), path)") from None
        if "WeightsUnpickler" in text and _starts_with(path, b"\x80"):  # a pickle protocol header, not torch.save's zip
            raise UserError(f"refusing {path}: it is a plain pickle, not a weights-only torch.save file (loading it could "
                            f"run code); re-save it with torch.save(model.state_dict(), path)") from None
        raise UserError(f"cannot read checkpoint {path}: corrupt or not a PyTorch file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"cannot read checkpoint {path}: corrupt or not a PyTorch file ({first}); "
                        f"pass a file written by torch.save") from None


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj["state_dict"], dict(obj.get("meta", {}))
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):  # common wrappers
            if isinstance(obj.get(key), dict):
                return obj[key], {}
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, {}
    raise UserError(f"checkpoint {path} holds neither a DERD checkpoint nor a state_dict of tensors; "
                    f"save one with torch.save(model.state_dict(), path)")


def build_model(arch: str, info: DatasetInfo, normalize: str = "dataset") -> NormalizedClassifier:
    """A registered classifier for ``info``, normalising with the dataset's statistics or not at all."""
    if normalize not in NORMALIZE_CHOICES:
        raise UserError(f"normalize {normalize!r} is not one of {', '.join(NORMALIZE_CHOICES)}")
    stats = dict(mean=info.mean, std=info.std) if normalize == "dataset" else {}
    return create_model(arch, info.num_classes, in_channels=info.image_shape[0], **stats)


def load_checkpoint(
    path: str | os.PathLike, info: DatasetInfo, *, arch: str | None = None, normalize: str = "dataset"
) -> tuple[NormalizedClassifier, dict[str, Any]]:
    """Load a classifier for dataset ``info``; returns (model in eval mode, metadata).

    ``normalize`` matters only for plain state_dicts: ``dataset`` (the network expects
    normalised inputs, as this project's models do) or ``none`` (the network normalises
    inside itself or expects raw [0, 1] inputs). Our own checkpoints carry their normalisation.
    """
    path = Path(path)
    state, meta = _extract_state_dict(read_checkpoint_file(path), path)
    if meta:
        if meta.get("num_classes", info.num_classes) != info.num_classes:
            raise UserError(
                f"checkpoint {path} has {meta['num_classes']} classes but {info.name} has {info.num_classes}; "
                f"use a teacher trained on {info.name}"
            )
        if arch is not None and arch != meta.get("arch"):
            raise UserError(f"checkpoint {path} is a {meta.get('arch')}, not a {arch}; drop the architecture flag or fix it")
        arch = meta.get("arch")
    if arch is None:
        raise UserError(f"checkpoint {path} is a plain state_dict without metadata: name its architecture "
                        f"(--arch, --teacher-natural-arch / --teacher-robust-arch, or teachers.natural_arch / robust_arch)")
    model = build_model(arch, info, normalize)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    has_wrapper = any(k.startswith("net.") for k in state)
    target: nn.Module = model if has_wrapper else model.net
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
