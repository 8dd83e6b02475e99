"""One typed dataclass tree for a DERD run; YAML in and out with the same dotted keys everywhere.

A key such as ``stage1.lambda_adv`` is the same in this tree, the search-space YAML, the
MLflow params and exported configs. ``from_dict`` rejects unknown keys, wrong types and
out-of-range values with the key named. ``preset(dataset)`` gives the paper's weights
(supplement, section 1) and this project's default budgets.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from derd.errors import UserError

VARIANTS = ("derd", "derd_inv", "derd_no_nat", "nature")


class ConfigError(UserError):
    """A bad config value or key; the message names the dotted key."""


def _f(default: Any, lo: float | None = None, hi: float | None = None, choices: tuple = (), doc: str = "") -> Any:
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "doc": doc})


@dataclass
class DataConfig:
    dataset: str = _f("digits", choices=("digits", "cifar10", "cifar100", "imagenet100"))
    root: typing.Optional[str] = _f(None, doc="data root (not needed for digits)")
    image_size: typing.Optional[int] = _f(None, lo=8, doc="ImageNet-100 resolution (224 if unset)")
    val_batch_size: int = _f(256, lo=1)


@dataclass
class TeacherConfig:
    natural: typing.Optional[str] = _f(None, doc="natural teacher checkpoint (digits: trained and cached on first use)")
    robust: typing.Optional[str] = _f(None, doc="robust teacher checkpoint")
    natural_arch: typing.Optional[str] = _f(None, doc="architecture, for plain state_dicts only")
    robust_arch: typing.Optional[str] = _f(None, doc="architecture, for plain state_dicts only")


@dataclass
class StudentConfig:
    arch: str = "digits_cnn_small"
    latent_dim: int = _f(100, lo=2, doc="generator noise size")
    generator_width: int = _f(128, lo=8)


@dataclass
class Stage1Config:
    """Natural warm-up: generator vs student, the student follows T_nat."""

    epochs: int = _f(10, lo=0)
    iters_per_epoch: int = _f(30, lo=1)
    batch_size: int = _f(128, lo=2)
    lambda_adv: float = _f(0.05, lo=0)
    lambda_ie: float = _f(5.0, lo=0)
    lambda_bn: float = _f(1e-5, lo=0)
    lambda_d: float = _f(0.01, lo=0)
    lr_g: float = _f(1e-3, lo=1e-12, doc="Adam, betas (0.5, 0.999)")
    lr_s: float = _f(0.05, lo=1e-12, doc="SGD, momentum 0.9, weight decay 5e-4, cosine schedule")
    student_steps: int = _f(1, lo=1, doc="student steps per generator step")
    tau: float = _f(1.0, lo=1e-3)


@dataclass
class Stage2Config:
    """Robust distillation guided by both experts, with SGA."""

    epochs: int = _f(20, lo=0)
    iters_per_epoch: int = _f(30, lo=1)
    batch_size: int = _f(128, lo=2)
    lambda_gen: float = _f(0.003, lo=0)
    lambda_nat: float = _f(0.5, lo=0)
    lambda_sga: float = _f(5e-4, lo=0)
    lr_g: float = _f(1e-4, lo=1e-12)
    lr_s: float = _f(0.05, lo=1e-12)
    pgd_steps: int = _f(10, lo=1, doc="sample-level adversary: steps of eps/4 from a uniform start")
    tau: float = _f(1.0, lo=1e-3)
    inversion_steps: int = _f(20, lo=1, doc="derd_inv: optimisation steps per pseudo batch")
    inversion_lr: float = _f(0.1, lo=1e-12, doc="derd_inv: Adam step on the image logits")


@dataclass
class EvalConfig:
    every: int = _f(5, lo=1, doc="score the search protocol on val every k epochs (and at the end)")
    protocol: str = _f("search", choices=("search", "full"))
    final_protocol: str = _f("full", choices=("search", "full"))


@dataclass
class RunConfig:
    variant: str = _f("derd", choices=VARIANTS)
    seed: int = _f(0, lo=0)
    device: str = _f("auto", doc="auto, cpu, cuda, cuda:N")
    data: DataConfig = field(default_factory=DataConfig)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    origin: dict = field(default_factory=dict, metadata={"doc": "where an exported config came from"})


# The paper's chosen weights (METHOD.md). digits: CIFAR-10's weights (also 10 classes).
PAPER_WEIGHTS: dict[str, dict[str, float]] = {
    "cifar10": {"stage1.lambda_adv": 0.05, "stage1.lambda_ie": 5, "stage1.lambda_bn": 1e-5, "stage1.lambda_d": 0.01,
                "stage2.lambda_gen": 0.003, "stage2.lambda_nat": 0.5, "stage2.lambda_sga": 5e-4},
    "cifar100": {"stage1.lambda_adv": 0.5, "stage1.lambda_ie": 20, "stage1.lambda_bn": 1e-5, "stage1.lambda_d": 0.1,
                 "stage2.lambda_gen": 0.003, "stage2.lambda_nat": 0.5, "stage2.lambda_sga": 5e-4},
    "imagenet100": {"stage1.lambda_adv": 0.05, "stage1.lambda_ie": 20, "stage1.lambda_bn": 1e-5, "stage1.lambda_d": 0.1,
                    "stage2.lambda_gen": 0.003, "stage2.lambda_nat": 1, "stage2.lambda_sga": 5e-4},
}
PAPER_WEIGHTS["digits"] = dict(PAPER_WEIGHTS["cifar10"])

# This project's budgets (the paper's are not at hand): full-length final trainings.
_BUDGETS: dict[str, dict[str, Any]] = {
    "digits": {},
    "cifar10": {"student.arch": "resnet18", "stage1.epochs": 40, "stage1.iters_per_epoch": 100, "stage1.batch_size": 256,
                "stage2.epochs": 160, "stage2.iters_per_epoch": 100, "stage2.batch_size": 256, "student.latent_dim": 256},
    "imagenet100": {"student.arch": "tv_resnet18", "stage1.epochs": 40, "stage1.iters_per_epoch": 100,
                    "stage1.batch_size": 128, "stage2.epochs": 160, "stage2.iters_per_epoch": 100,
                    "stage2.batch_size": 128, "student.latent_dim": 256, "data.val_batch_size": 128},
}
_BUDGETS["cifar100"] = dict(_BUDGETS["cifar10"])


def preset(dataset: str) -> RunConfig:
    """The paper's weights with this project's default budget for ``dataset``."""
    if dataset not in PAPER_WEIGHTS:
        raise ConfigError(f"data.dataset: unknown dataset {dataset!r}; choose one of {', '.join(PAPER_WEIGHTS)}")
    return apply_overrides(RunConfig(), {"data.dataset": dataset, **_BUDGETS[dataset], **PAPER_WEIGHTS[dataset]})


def to_flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{"stage1.lambda_adv": 0.05, ...} for every leaf (``origin`` is kept as one dict)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(to_flat(value, key + "."))
        else:
            out[key] = value
    return out


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _check_value(key: str, f: dataclasses.Field, hint: Any, value: Any) -> Any:
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: must not be empty")
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if base is dict and isinstance(value, dict):
        return value
    if not isinstance(value, base) or (base in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {base.__name__}, got {type(value).__name__} {value!r}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, meta['choices']))}")
    if meta.get("lo") is not None and value < meta["lo"]:
        raise ConfigError(f"{key}: {value!r} is below its minimum {meta['lo']}")
    if meta.get("hi") is not None and value > meta["hi"]:
        raise ConfigError(f"{key}: {value!r} is above its maximum {meta['hi']}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key; known keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(f"{prefix}{name}", f, hint, data[name])
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Validate a nested dict (as read from YAML) into a RunConfig."""
    return _build(RunConfig, data or {}, "")


def apply_overrides(cfg: RunConfig, flat: dict[str, Any]) -> RunConfig:
    """A new config with dotted-key values replaced (validated like YAML input)."""
    nested = to_dict(cfg)
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{key}: unknown key")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{key}: unknown key")
        node[parts[-1]] = value
    return from_dict(nested)


def load_yaml(path: str | os.PathLike) -> RunConfig:
    """Read a run config with ``yaml.safe_load``; missing keys take the dataset's preset."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    data_section = data.get("data")
    dataset = data_section.get("dataset", "digits") if isinstance(data_section, dict) else "digits"
    base = to_dict(preset(dataset)) if dataset in PAPER_WEIGHTS else {}  # an unknown dataset fails in from_dict
    return from_dict(_merge(base, data))


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "origin" else value
    return out


def save_yaml(cfg: RunConfig, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
