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
import tempfile
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
    """``torch.save`` to a temporary file of its own, then rename: a crash never leaves half a file,
    and two writers of one path (two trials filling the same stage-I cache entry, on one node or on
    two nodes of a shared filesystem, where process ids can coincide) never write into each other's
    temporary file; the last rename wins, and each renamed file is whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


RESAVE = "re-save it with torch.save(model.state_dict(), path)"


def read_checkpoint_file(path: str | os.PathLike, fix: str = RESAVE) -> Any:
    """``torch.load(weights_only=True)`` with each failure turned into one clear line ending in ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; train one with python -m derd.teachers or fix the path"
        )
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is an empty file; {fix}")
    try:
        with (
            warnings.catch_warnings()
        ):  # torch warns about pickle protocols before refusing: one line is enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        lines = [ln.strip() for ln in text.splitlines() if "GLOBAL" in ln]
        if lines:
            raise UserError(
                f"refusing {path}: it holds pickled code or objects, not just weights ({lines[0][:160]}); "
                f"{fix}"
            ) from None
        if "WeightsUnpickler" in text and _starts_with(
            path, b"\x80"
        ):  # a pickle protocol header, not torch.save's zip
            raise UserError(
                f"refusing {path}: it is a plain pickle, not a weights-only torch.save file (loading it could "
                f"run code); {fix}"
            ) from None
        raise UserError(f"cannot read checkpoint {path}: corrupt or not a PyTorch file; {fix}") from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
    ) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise UserError(
            f"cannot read checkpoint {path}: corrupt or not a PyTorch file ({first}); {fix}"
        ) from None


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state, meta = obj.get("state_dict"), obj.get("meta", {})
        if not _is_state_dict(state) or not isinstance(meta, dict):
            raise UserError(
                f"checkpoint {path} is damaged: its {'meta' if _is_state_dict(state) else 'state_dict'} "
                f"is a {type(meta if _is_state_dict(state) else state).__name__}; write it again with "
                f"derd.checkpoints.save_checkpoint or pass the original"
            )
        return state, dict(meta)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):  # common wrappers
            if _is_state_dict(obj.get(key)):
                return obj[key], {}
        if _is_state_dict(obj):
            return obj, {}
    raise UserError(
        f"checkpoint {path} holds neither a DERD checkpoint nor a state_dict of tensors; "
        f"save one with torch.save(model.state_dict(), path)"
    )


def _is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of names to tensors."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


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
        for key, kind in (("arch", str), ("num_classes", int)):
            if key in meta and not isinstance(meta[key], kind):
                raise UserError(
                    f"checkpoint {path} is damaged: meta.{key} is {meta[key]!r}, not a {kind.__name__}"
                )
        if meta.get("num_classes", info.num_classes) != info.num_classes:
            raise UserError(
                f"checkpoint {path} has {meta['num_classes']} classes but {info.name} has {info.num_classes}; "
                f"use a teacher trained on {info.name}"
            )
        if arch is not None and arch != meta.get("arch"):
            raise UserError(
                f"checkpoint {path} is a {meta.get('arch')}, not a {arch}; drop the architecture flag or fix it"
            )
        arch = meta.get("arch")
    if arch is None:
        raise UserError(
            f"checkpoint {path} is a plain state_dict without metadata: name its architecture "
            f"(--arch, --teacher-natural-arch / --teacher-robust-arch, or teachers.natural_arch / robust_arch)"
        )
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
