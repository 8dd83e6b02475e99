"""One typed dataclass tree for a run; YAML in and out with the same dotted keys everywhere.

A key such as ``stage1.lambda_adv`` is the same in this tree, the search-space YAML, the
MLflow params and exported configs. ``from_dict`` rejects unknown keys, wrong types and
out-of-range values with the key named. ``preset(dataset, method)`` gives the paper's
weights (supplement, section 1) and this project's default budgets.

``method`` selects the recipe (``derd.methods``: derd, derd_inv, derd_no_nat, nature, dafl,
dfad, zskt, cmi, dfard). The old key ``variant`` is read as ``method``, so configs exported
before the rename still load. The sections every method shares: ``data``, ``teachers``,
``student``, ``train`` (precision and layout), ``eval``, and the budget keys
``stage1.{epochs,iters_per_epoch,batch_size}`` / ``stage2.{...}``. DERD's family reads
``stage1`` and ``stage2``; each baseline reads its own section (``dafl``, ``dfad``, ...) and
``robust``, the robust distillation its student learns with. Which sections a method reads
is declared by the method (``derd.methods.get_method(name).sections``): only those keys are
searched or logged for it.
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

LEGACY_KEYS = {"variant": "method"}  # old name -> new name, read on input only


class ConfigError(UserError):
    """A bad config value or key; the message names the dotted key."""


def _f(default: Any, lo: float | None = None, hi: float | None = None, choices: tuple = (), doc: str = "") -> Any:
    """A config field with its range or choices (checked by ``from_dict``) and a line of documentation."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "doc": doc})


# The methods this schema has sections for; ``derd.methods`` registers exactly these (tested).
METHODS = ("derd", "derd_inv", "derd_no_nat", "nature", "dafl", "dfad", "zskt", "cmi", "dfard")


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
    normalize: str = _f("dataset", choices=("dataset", "none"),
                        doc="plain state_dicts: 'dataset' if the network expects normalised inputs, 'none' if it "
                            "takes raw [0, 1] images (normalises inside itself, as RobustBench models do)")
    natural_sha256: typing.Optional[str] = _f(None, doc="if set, the natural teacher file must have this SHA-256")
    robust_sha256: typing.Optional[str] = _f(None, doc="if set, the robust teacher file must have this SHA-256")


@dataclass
class StudentConfig:
    arch: str = "digits_cnn_small"
    latent_dim: int = _f(100, lo=2, doc="generator noise size")
    generator_width: int = _f(128, lo=8)


@dataclass
class TrainConfig:
    """How the run computes (derd/device.py); never changes what it computes beyond float rounding."""

    precision: str = _f("auto", choices=("auto", "fp32", "bf16"), doc="auto: bf16 autocast on CUDA, fp32 on CPU")
    channels_last: str = _f("auto", choices=("auto", "on", "off"), doc="auto: on for CUDA")
    compile: bool = _f(False, doc="torch.compile the student and the teachers")


@dataclass
class Stage1Config:
    """DERD's natural warm-up: generator vs student, the student follows T_nat."""

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
    """DERD's robust distillation guided by both experts, with SGA (and the baselines' budget)."""

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
class RobustConfig:
    """The baselines' student objective: RSLAD-style robust distillation from T_rob (derd/objectives.py)."""

    pgd_steps: int = _f(10, lo=1, doc="PGD on the student: steps of eps/4 from 0.001*N(0, I) (RSLAD)")
    natural_weight: float = _f(1 / 6, lo=0, hi=1, doc="RSLAD's alpha: weight of KL(T(x)||S(x)) beside the adversarial term")
    tau: float = _f(1.0, lo=1e-3)
    lr_s: float = _f(0.05, lo=1e-12, doc="SGD, momentum 0.9, weight decay 5e-4, cosine schedule")


@dataclass
class DAFLConfig:
    """DAFL's generator (derd/methods/dafl.py); defaults: the paper's MNIST weights."""

    lambda_oh: float = _f(1.0, lo=0)
    lambda_act: float = _f(0.1, lo=0)
    lambda_ie: float = _f(5.0, lo=0)
    lr_g: float = _f(1e-3, lo=1e-12)


@dataclass
class DFADConfig:
    """DFAD's adversarial generator (derd/methods/dfad.py)."""

    student_steps: int = _f(5, lo=1, doc="student iterations per generator step (DFAD's k)")
    lr_g: float = _f(1e-3, lo=1e-12)


@dataclass
class ZSKTConfig:
    """ZSKT's adversarial generator and attention transfer (derd/methods/zskt.py)."""

    student_steps: int = _f(10, lo=1, doc="student iterations per generator step (ZSKT's n_S)")
    lambda_at: float = _f(250.0, lo=0, doc="attention transfer weight (ZSKT's beta)")
    lr_g: float = _f(1e-3, lo=1e-12)


@dataclass
class CMIConfig:
    """CMI's contrastive model inversion (derd/methods/cmi.py); defaults: the CIFAR-10 script."""

    lambda_bn: float = _f(1.0, lo=0)
    lambda_oh: float = _f(1.0, lo=0)
    lambda_adv: float = _f(0.5, lo=0)
    lambda_cr: float = _f(0.8, lo=0)
    cr_tau: float = _f(0.2, lo=1e-3, doc="temperature of the contrastive loss")
    synthesis_steps: int = _f(200, lo=1, doc="optimisation steps per synthesis round (CMI's g_steps)")
    synthesis_every: int = _f(10, lo=1, doc="student iterations between synthesis rounds")
    bank_size: int = _f(8192, lo=2, doc="images kept for the student (oldest dropped)")
    negatives: int = _f(4096, lo=1, doc="contrastive negatives drawn from the feature memory bank")
    lr_g: float = _f(1e-3, lo=1e-12)


@dataclass
class DFARDConfig:
    """DFARD's generator with adaptive balance and interactive temperature (derd/methods/dfard.py)."""

    lr_g: float = _f(1e-3, lo=1e-12)
    tau_min: float = _f(1.0, lo=1e-3, doc="ITA: the temperature when the student agrees with T_rob everywhere")
    tau_max: float = _f(4.0, lo=1e-3, doc="ITA: the temperature when it agrees nowhere")


@dataclass
class EvalConfig:
    every: int = _f(5, lo=1, doc="score the search protocol on val every k epochs (and at the end)")
    protocol: str = _f("search", choices=("search", "full"))
    final_protocol: str = _f("full", choices=("search", "full"))


@dataclass
class RunConfig:
    method: str = _f("derd", choices=METHODS, doc="the recipe: one of derd.methods' registered names")
    seed: int = _f(0, lo=0)
    device: str = _f("auto", doc="auto, cpu, cuda, cuda:N")
    data: DataConfig = field(default_factory=DataConfig)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    robust: RobustConfig = field(default_factory=RobustConfig)
    dafl: DAFLConfig = field(default_factory=DAFLConfig)
    dfad: DFADConfig = field(default_factory=DFADConfig)
    zskt: ZSKTConfig = field(default_factory=ZSKTConfig)
    cmi: CMIConfig = field(default_factory=CMIConfig)
    dfard: DFARDConfig = field(default_factory=DFARDConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    origin: dict = field(default_factory=dict, metadata={"doc": "where an exported config came from"})


BUDGET_KEYS = ("stage1.epochs", "stage1.iters_per_epoch", "stage1.batch_size",
               "stage2.epochs", "stage2.iters_per_epoch", "stage2.batch_size")


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
# CIFAR batch 512 (25,600 pseudo images per epoch, as 256 x 100 before): on an H100, stage II
# in bf16 + channels_last ran 1,647 img/s at batch 512 against 759 at batch 128 (measured on
# the code before issue 9's rework; benchmarks/bench_step.py prints the current figures).
# ImageNet-100 stays at 128: 64 -> 128 gained only 6% (212 -> 225 img/s); at 224 px the step
# is bound by BatchNorm and layout conversions, not by the batch.
_BUDGETS: dict[str, dict[str, Any]] = {
    "digits": {"cmi.synthesis_steps": 50},  # CMI's 200 steps per round cost 20x DERD's generator on 8x8 images
    "cifar10": {"student.arch": "resnet18", "stage1.epochs": 40, "stage1.iters_per_epoch": 50, "stage1.batch_size": 512,
                "stage2.epochs": 160, "stage2.iters_per_epoch": 50, "stage2.batch_size": 512, "student.latent_dim": 256},
    "imagenet100": {"student.arch": "tv_resnet18", "stage1.epochs": 40, "stage1.iters_per_epoch": 100,
                    "stage1.batch_size": 128, "stage2.epochs": 160, "stage2.iters_per_epoch": 100,
                    "stage2.batch_size": 128, "student.latent_dim": 256, "data.val_batch_size": 128},
}
_BUDGETS["cifar100"] = dict(_BUDGETS["cifar10"])


def preset(dataset: str, method: str = "derd") -> RunConfig:
    """The paper's weights with this project's default budget for ``dataset``, running ``method``.

    Every method's own section starts at its published weights (the section's defaults).
    """
    if dataset not in PAPER_WEIGHTS:
        raise ConfigError(f"data.dataset: unknown dataset {dataset!r}; choose one of {', '.join(PAPER_WEIGHTS)}")
    return apply_overrides(RunConfig(), {"method": method, "data.dataset": dataset, **_BUDGETS[dataset], **PAPER_WEIGHTS[dataset]})


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
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
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
    if cls is RunConfig:
        data = _rename_legacy(data)
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


def _rename_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys under their old names (``variant``) read as the new ones (``method``)."""
    out = dict(data)
    for old, new in LEGACY_KEYS.items():
        if old in out:
            if new in out and out[new] != out[old]:
                raise ConfigError(f"{old}: the old name of {new}; give only {new}")
            out[new] = out.pop(old)
    return out


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Validate a nested dict (as read from YAML) into a RunConfig."""
    return _build(RunConfig, data or {}, "")


def apply_overrides(cfg: RunConfig, flat: dict[str, Any]) -> RunConfig:
    """A new config with dotted-key values replaced (validated like YAML input)."""
    nested = to_dict(cfg)
    for key, value in _rename_legacy(flat).items():
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
    data = _rename_legacy(data)
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
