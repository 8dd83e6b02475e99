"""One typed config tree for a run; YAML in and out with the same dotted keys everywhere.

A key such as ``stage1.lambda_adv`` is the same in this tree, the search-space YAML, the
MLflow params and exported configs. ``from_dict`` rejects unknown keys, wrong types and
out-of-range values with the key named. ``preset(dataset, method)`` gives the dataset's
full-length budget (``derd.data.DatasetSpec``) and the methods' published weights there
(``Method.presets``).

The sections every method shares: ``data``, ``teachers``, ``student``, ``train`` (how the
run computes), ``budget`` (every method's epochs, iterations per epoch and batch size) and
``eval``. Each registered method adds the sections it reads (``derd.methods``: DERD's
``stage1``/``stage2``, the baselines' ``robust`` and their own, such as ``dafl``): a method
registered later brings its section with it, and only a method's own sections are searched
or logged for it.

Configs written by earlier versions still load: their keys are migrated on input
(``LEGACY_KEYS`` and ``migrate``), never written back.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from derd.data import IMAGE_SIZES, available_datasets, dataset_spec
from derd.errors import UserError
from derd.methods.registry import available_methods, get_method, method_sections
from derd.settings import LR_MAX, SEED_MAX, WEIGHT_MAX, ConfigError, build_section, section_values, setting

__all__ = [
    "ConfigError",
    "RunConfig",
    "apply_overrides",
    "from_dict",
    "load_yaml",
    "preset",
    "save_yaml",
    "to_dict",
    "to_flat",
]


@dataclass
class DataConfig:
    dataset: str = setting("digits", choices=available_datasets)
    root: typing.Optional[str] = setting(None, doc="data root (not needed for digits)")
    image_size: typing.Optional[int] = setting(
        None, lo=IMAGE_SIZES[0], hi=IMAGE_SIZES[1], doc="ImageNet-100 resolution (224 if unset)"
    )
    val_batch_size: typing.Optional[int] = setting(
        None,
        lo=1,
        hi=65_536,
        doc="images per evaluation batch; unset: 256 on the CPU, "
        "as many as fit on a GPU (derd.evaluate.eval_batch_size)",
    )


@dataclass
class TeacherConfig:
    natural: typing.Optional[str] = setting(
        None, doc="natural teacher checkpoint (digits: trained and cached on first use)"
    )
    robust: typing.Optional[str] = setting(None, doc="robust teacher checkpoint")
    natural_arch: typing.Optional[str] = setting(None, doc="architecture, for plain state_dicts only")
    robust_arch: typing.Optional[str] = setting(None, doc="architecture, for plain state_dicts only")
    normalize: str = setting(
        "dataset",
        choices=("dataset", "none"),
        doc="plain state_dicts: 'dataset' if the network expects normalised inputs, 'none' if it "
        "takes raw [0, 1] images (normalises inside itself, as RobustBench models do)",
    )
    natural_sha256: typing.Optional[str] = setting(
        None, doc="if set, the natural teacher file must have this SHA-256"
    )
    robust_sha256: typing.Optional[str] = setting(
        None, doc="if set, the robust teacher file must have this SHA-256"
    )


@dataclass
class StudentConfig:
    arch: str = "digits_cnn_small"
    latent_dim: int = setting(100, lo=2, hi=65_536, doc="generator noise size")
    generator_width: int = setting(128, lo=8, hi=8192)


VALIDATIONS = ("real", "synthetic")  # eval.validation: what a run's val/* scores are measured on
SYNTHETIC_PROCEDURES = ("inversion", "robust", "both")  # synthetic_val.procedure (derd/validation.py)
SWITCHES = ("auto", "on", "off")  # a train.* choice that only changes how fast a run computes


@dataclass
class TrainConfig:
    """How the run computes (derd/device.py); never changes what it computes beyond float rounding."""

    precision: str = setting(
        "auto", choices=("auto", "fp32", "bf16"), doc="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    channels_last: str = setting("auto", choices=SWITCHES, doc="auto: on for CUDA")
    compile: str = setting("auto", choices=SWITCHES, doc="torch.compile the models; auto: on for CUDA")
    fold_teachers: str = setting(
        "auto",
        choices=SWITCHES,
        doc="fold the frozen teachers' BatchNorm into their convolutions; auto: on for CUDA",
    )
    checkpoint_every_s: typing.Optional[float] = setting(
        None,
        lo=0,
        hi=86_400,
        doc="seconds between run.pt writes (also at each val epoch and the end); unset: "
        "every epoch on the CPU, 300 on CUDA (derd/cadence.py)",
    )


@dataclass
class BudgetConfig:
    """Every method's length: equal budgets, in student updates and pseudo images, make the comparison fair."""

    epochs: int = setting(
        30, lo=1, hi=100_000, doc="epochs of every method (DERD: stage I and stage II together)"
    )
    iters_per_epoch: int = setting(30, lo=1, hi=1_000_000)
    batch_size: int = setting(128, lo=2, hi=65_536, doc="pseudo images per iteration")


@dataclass
class EvalConfig:
    every: int = setting(
        5, lo=1, hi=100_000, doc="score the search protocol on val every k epochs (and at the end)"
    )
    protocol: str = setting("search", choices=("search", "full"))
    final_protocol: str = setting("full", choices=("search", "full"))
    validation: str = setting(
        "real",
        choices=VALIDATIONS,
        doc="what val/* is scored on: 'real' (the dataset's val split) or 'synthetic' (a set made "
        "from the teachers alone: synthetic_val.*, derd/validation.py; experimental)",
    )


@dataclass
class SyntheticValConfig:
    """How the synthetic validation set is made (``eval.validation: synthetic``; derd/validation.py says why).
    The defaults suit digits: about a minute on 2 CPU cores."""

    procedure: str = setting(
        "both",
        choices=SYNTHETIC_PROCEDURES,
        doc="inversion (DeepInversion against every teacher), robust (T_rob's gradients) or "
        "both (half the draws each)",
    )
    per_class: int = setting(
        100, lo=1, hi=100_000, doc="draws per class and snapshot, before the teachers' filter"
    )
    steps: int = setting(200, lo=1, hi=100_000, doc="optimisation steps per draw")
    lr: float = setting(
        0.05,
        lo=1e-6,
        hi=LR_MAX,
        doc="inversion: Adam's step on the pixels; robust: the L2 step in units of 10 sqrt(pixels) / steps",
    )
    bn_weight: float = setting(0.05, lo=0, hi=WEIGHT_MAX, doc="inversion: weight of each teacher's L_bn")
    tv_weight: float = setting(0.01, lo=0, hi=WEIGHT_MAX, doc="inversion: weight of the total variation")
    snapshots: int = setting(
        1,
        lo=1,
        hi=10,
        doc="images kept per draw, at steps spaced evenly on a log scale up to "
        "the last: nearer the decision boundary, where students differ",
    )
    batch_size: int = setting(250, lo=1, hi=65_536)
    file: typing.Optional[str] = setting(
        None, doc="the set (a search writes it into its folder, synthetic_val.pt)"
    )


# The sections every run has, in YAML order; the methods' sections follow ``budget``.
CORE_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "teachers": TeacherConfig,
    "student": StudentConfig,
    "train": TrainConfig,
    "budget": BudgetConfig,
}
CLOSING_SECTIONS: dict[str, type] = {"eval": EvalConfig, "synthetic_val": SyntheticValConfig}


@dataclass
class _Top:
    """The top-level keys (validated like a section's)."""

    method: str = setting(
        "derd", choices=available_methods, doc="the recipe: one of derd.methods' registered names"
    )
    seed: int = setting(0, lo=0, hi=SEED_MAX)
    device: str = setting("auto", doc="auto, cpu, cuda, cuda:N")


def section_classes() -> dict[str, type]:
    """Every section's dataclass by name, the top-level keys (method, seed, device) under ``""``: what a
    check over all config fields walks (tests: every numeric key has a finite range)."""
    return {"": _Top, **_all_sections()}


def _all_sections() -> dict[str, type]:
    return {**CORE_SECTIONS, **method_sections(), **CLOSING_SECTIONS}


@dataclass
class RunConfig:
    """A whole run: the top-level keys and one instance per section (``cfg.stage1``, ``cfg.dafl``, ...)."""

    method: str = "derd"
    seed: int = 0
    device: str = "auto"
    sections: dict[str, Any] = field(
        default_factory=lambda: {name: cls() for name, cls in _all_sections().items()}
    )
    origin: dict = field(default_factory=dict, metadata={"doc": "where an exported config came from"})

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"the run config has no section {name!r}")


# ---- dicts, flat keys and YAML ----------------------------------------------------------------


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The nested form (as YAML holds it): top-level keys, every section, then ``origin``."""
    out: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed, "device": cfg.device}
    for name, section in cfg.sections.items():
        out[name] = section_values(section)
    out["origin"] = dict(cfg.origin)
    return out


def to_flat(cfg: RunConfig) -> dict[str, Any]:
    """{"stage1.lambda_adv": 0.05, ...} for every leaf (``origin`` is kept as one dict)."""
    out: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed, "device": cfg.device}
    for name, section in cfg.sections.items():
        out.update({f"{name}.{k}": v for k, v in section_values(section).items()})
    out["origin"] = dict(cfg.origin)
    return out


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """Nested user input to dotted keys (``origin`` stays one value; a non-mapping section stays as is)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "origin":
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


# ---- keys written by earlier versions ------------------------------------------------------------

# old dotted key -> new dotted key (renamed on input only)
LEGACY_KEYS = {
    "variant": "method",
    "stage2.inversion_steps": "derd_inv.steps",
    "stage2.inversion_lr": "derd_inv.lr",
    "cmi.bank_size": "cmi.feature_bank",
}  # CMI's one bank of images and embeddings, now two
_LEGACY_BUDGET = {
    "iters_per_epoch": ("stage1.iters_per_epoch", "stage2.iters_per_epoch"),
    "batch_size": ("stage1.batch_size", "stage2.batch_size"),
}


def migrate(flat: dict[str, Any], reference: RunConfig | None = None) -> dict[str, Any]:
    """Dotted keys of earlier versions in today's names.

    Before the shared ``budget`` section, DERD's stages held every method's length: stage II
    ran ``stage2.epochs`` after ``stage1.epochs``, so the budget is their sum (a missing
    ``stage1.epochs`` is the ``reference`` config's, else the default); both stages' iterations
    and batch become the budget's, and must agree. ``train.compile`` was true or false, as YAML
    reads a bare ``on``/``off``: a bool in a ``train`` switch means ``on``/``off``.
    """
    out = dict(flat)
    for old, new in LEGACY_KEYS.items():
        if old in out:
            if new in out and out[new] != out[old]:
                raise ConfigError(f"{old}: the old name of {new}; give only {new}")
            out[new] = out.pop(old)
    for key, olds in _LEGACY_BUDGET.items():
        values = {o: out.pop(o) for o in olds if o in out}
        if values:
            given = [*values.values(), *([out[f"budget.{key}"]] if f"budget.{key}" in out else [])]
            if any(v != given[0] for v in given):
                raise ConfigError(f"{', '.join(values)}: the budget is shared now; give one budget.{key}")
            out[f"budget.{key}"] = next(iter(values.values()))
    for key in ("train.channels_last", "train.compile", "train.fold_teachers"):
        if out.get(key) in (
            True,
            False,
            "True",
            "False",
        ):  # YAML reads a bare on/off as a bool; so was compile
            out[key] = "on" if out[key] in (True, "True") else "off"
    if "stage2.epochs" in out:
        warmup = out.get("stage1.epochs", reference.stage1.epochs if reference is not None else None)
        if warmup is None:
            warmup = RunConfig().stage1.epochs
        stage2 = out.pop("stage2.epochs")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (warmup, stage2)):
            raise ConfigError(f"stage2.epochs: expected int, got {stage2!r}")
        if "budget.epochs" in out and out["budget.epochs"] != warmup + stage2:
            raise ConfigError(
                "stage2.epochs: the old form of budget.epochs - stage1.epochs; give only budget.epochs"
            )
        out["budget.epochs"] = warmup + stage2
    return out


# ---- building and changing configs ---------------------------------------------------------------


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Validate a nested dict (as read from YAML) into a RunConfig; missing keys take their defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {type(data).__name__}")
    return _build(migrate(_flatten(data)))


def _build(flat: dict[str, Any]) -> RunConfig:
    sections = _all_sections()
    grouped: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    origin = flat.get("origin", {})
    for key, value in flat.items():
        if key == "origin":
            continue
        section, dot, leaf = key.partition(".")
        if not dot:
            if section in sections:
                raise ConfigError(f"{section}: expected a mapping, got {type(value).__name__}")
            top[section] = value
        elif section in sections:
            grouped.setdefault(section, {})[leaf] = value
        else:
            known = ", ".join([f.name for f in dataclasses.fields(_Top)] + list(sections) + ["origin"])
            raise ConfigError(f"{key}: unknown key; known keys at the top level: {known}")
    if not isinstance(origin, dict):
        raise ConfigError(f"origin: expected a mapping, got {type(origin).__name__}")
    head = build_section(_Top, top, "")
    cfg = RunConfig(
        head.method,
        head.seed,
        head.device,
        {name: build_section(cls, grouped.get(name, {}), f"{name}.") for name, cls in sections.items()},
        dict(origin),
    )
    get_method(cfg.method).check(cfg)
    return cfg


def apply_overrides(cfg: RunConfig, flat: dict[str, Any]) -> RunConfig:
    """A new config with dotted-key values replaced (validated like YAML input)."""
    current = to_flat(cfg)
    changes = migrate(flat, reference=cfg)
    sections = _all_sections()
    for key in changes:
        if key not in current and key not in sections:  # a whole section's value: _build names what is wrong
            raise ConfigError(f"{key}: unknown key")
    return _build({**current, **changes})


def preset(dataset: str, method: str = "derd") -> RunConfig:
    """The dataset's full-length budget (``DatasetSpec.budget``) and every method's published weights
    there (``Method.presets``: DERD's from the paper, each other method's from its own code), running
    ``method``."""
    spec = dataset_spec(dataset)
    flat: dict[str, Any] = {"method": method, "data.dataset": dataset, **spec.budget}
    for name in available_methods():
        flat.update(get_method(name).presets.get(dataset, {}))
    return apply_overrides(RunConfig(), flat)


def load_yaml(path: str | os.PathLike) -> RunConfig:
    """Read a run config (``derd.inputs.read_yaml``: safe loader, bounded); missing keys take the
    dataset's preset. An empty file is refused: it would silently train the default run."""
    from derd.inputs import read_yaml

    try:
        data = read_yaml(path, "config file")
    except ConfigError:
        raise
    except UserError as err:  # every failure of a run config is a ConfigError
        raise ConfigError(str(err)) from None
    if data is None or data == {}:
        raise ConfigError(
            f"{path} is empty; write the config keys to change (e.g. method: derd), or use "
            f"--preset DATASET for the dataset's published run"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}"
        )
    section = data.get("data")
    dataset = section.get("dataset", "digits") if isinstance(section, dict) else "digits"
    base = (
        preset(dataset) if dataset in available_datasets() else RunConfig()
    )  # an unknown dataset fails below
    return apply_overrides(base, _flatten(data))


def save_yaml(cfg: RunConfig, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
