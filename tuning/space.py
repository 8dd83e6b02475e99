"""Search spaces: one YAML per dataset, validated before anything starts.

Layout of a search-space YAML (all keys optional but ``dataset`` and ``space``)::

    dataset: digits
    base: {stage1.epochs: 4, ...}          # run-config overrides: the per-trial budget
    space:                                 # searched config keys and their distributions
      stage1.lambda_adv: {distribution: loguniform, low: 0.0005, high: 5}
    presets: [paper]                       # evaluated first: 'paper' or {key: value, ...}
    objectives:                            # what the search maximises / minimises
      - {metric: val/clean_acc, mode: max}
      - {metric: val/aa_acc, mode: max}
    search: {num_trials: 10, max_concurrent: 2, sampler: tpe, scheduler: asha, grace_period: 8, reduction_factor: 2}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0}
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from derd.config import PAPER_WEIGHTS, RunConfig, apply_overrides, preset, to_flat
from derd.errors import UserError

DISTRIBUTIONS = ("loguniform", "uniform", "int", "categorical")
SAMPLERS = ("tpe", "nsga2", "random")
SCHEDULERS = ("asha", "none")
TOP_KEYS = {"dataset", "base", "space", "presets", "objectives", "search", "resources", "description"}
SEARCH_KEYS = {"num_trials", "max_concurrent", "sampler", "scheduler", "grace_period", "reduction_factor", "seed"}
RESOURCE_KEYS = {"cpus_per_trial", "gpus_per_trial"}
SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


class SpaceError(UserError):
    """A bad search-space YAML; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    key: str
    distribution: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def contains(self, value: Any) -> bool:
        if self.distribution == "categorical":
            return value in self.choices
        return self.low <= value <= self.high


@dataclass
class SearchSpace:
    dataset: str
    base: dict[str, Any]
    params: list[Param]
    presets: list[dict[str, Any]]
    objectives: list[tuple[str, str]]  # (metric, "max"|"min")
    num_trials: int = 10
    max_concurrent: int = 2
    sampler: str = "tpe"
    scheduler: str = "asha"
    grace_period: int | None = None
    reduction_factor: int = 2
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def base_config(self) -> RunConfig:
        """The dataset preset with this space's budget applied: what every trial starts from."""
        return apply_overrides(preset(self.dataset), self.base)

    def trial_config(self, sampled: dict[str, Any]) -> RunConfig:
        return apply_overrides(self.base_config(), sampled)

    def optuna_distributions(self) -> dict[str, Any]:
        import optuna.distributions as d

        out = {}
        for p in self.params:
            if p.distribution == "loguniform":
                out[p.key] = d.FloatDistribution(p.low, p.high, log=True)
            elif p.distribution == "uniform":
                out[p.key] = d.FloatDistribution(p.low, p.high)
            elif p.distribution == "int":
                out[p.key] = d.IntDistribution(int(p.low), int(p.high))
            else:
                out[p.key] = d.CategoricalDistribution(list(p.choices))
        return out


def default_space_path(dataset: str) -> Path:
    path = SPACES_DIR / f"{dataset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
        raise UserError(f"unknown dataset {dataset!r}: no search space {path.name}; choose one of {known} or pass --space FILE")
    return path


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise SpaceError(f"{where}: {msg}")


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Read and fully validate a search-space YAML (``yaml.safe_load``)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML ({' '.join(str(err).split())[:200]})") from None
    _require(isinstance(raw, dict), str(path), "expected a mapping at the top level")
    unknown = set(raw) - TOP_KEYS
    _require(not unknown, str(path), f"unknown key {min(unknown, default='')!r}; known keys: {', '.join(sorted(TOP_KEYS))}")
    dataset = raw.get("dataset")
    _require(dataset in PAPER_WEIGHTS, f"{path}: dataset", f"{dataset!r} is not one of {', '.join(PAPER_WEIGHTS)}")
    base = raw.get("base") or {}
    _require(isinstance(base, dict), f"{path}: base", "expected a mapping of config keys to values")
    try:
        base_cfg = apply_overrides(preset(dataset), base)
    except UserError as err:
        raise SpaceError(f"{path}: base.{err}") from None
    known_keys = to_flat(base_cfg)

    params = []
    space = raw.get("space")
    _require(isinstance(space, dict) and space, f"{path}: space", "expected a non-empty mapping of config keys")
    for key, spec in space.items():
        where = f"{path}: space.{key}"
        _require(key in known_keys, where, "unknown config key (use dotted keys such as stage1.lambda_adv)")
        _require(isinstance(spec, dict), where, "expected {distribution: ..., low: ..., high: ...}")
        extra = set(spec) - {"distribution", "low", "high", "choices"}
        _require(not extra, where, f"unknown key {min(extra, default='')!r}")
        dist = spec.get("distribution")
        _require(dist in DISTRIBUTIONS, where, f"distribution {dist!r} is not one of {', '.join(DISTRIBUTIONS)}")
        if dist == "categorical":
            choices = spec.get("choices")
            _require(isinstance(choices, list) and choices, where, "categorical needs a non-empty list 'choices'")
            params.append(Param(key, dist, choices=tuple(choices)))
            continue
        low, high = _number(spec.get("low"), where + ".low"), _number(spec.get("high"), where + ".high")
        _require(low < high, where, f"low ({low}) must be below high ({high})")
        if dist == "loguniform":
            _require(low > 0, where, f"a log range needs low > 0 (got {low})")
        params.append(Param(key, dist, low, high))
    keys = [p.key for p in params]

    presets = []
    for i, item in enumerate(raw.get("presets") or []):
        where = f"{path}: presets[{i}]"
        if item == "paper":
            point = {k: v for k, v in PAPER_WEIGHTS[dataset].items() if k in keys}
        else:
            _require(isinstance(item, dict), where, "expected 'paper' or a mapping of searched keys")
            point = dict(item)
        for p in params:
            point.setdefault(p.key, to_flat(base_cfg)[p.key])
        for key, value in point.items():
            _require(key in keys, where, f"{key} is not a searched key")
            param = next(p for p in params if p.key == key)
            _require(param.contains(value), where, f"{key}={value} lies outside its range")
        presets.append(point)

    objectives = []
    for i, obj in enumerate(raw.get("objectives") or [{"metric": "val/clean_acc", "mode": "max"}, {"metric": "val/aa_acc", "mode": "max"}]):
        where = f"{path}: objectives[{i}]"
        _require(isinstance(obj, dict) and set(obj) == {"metric", "mode"}, where, "expected {metric: ..., mode: max|min}")
        _require(str(obj["metric"]).startswith("val/"), where, "objectives score the val split: use a val/ metric")
        _require(obj["mode"] in ("max", "min"), where, "mode must be max or min")
        objectives.append((obj["metric"], obj["mode"]))

    search = raw.get("search") or {}
    _require(isinstance(search, dict) and not set(search) - SEARCH_KEYS, f"{path}: search",
             f"unknown key; known keys: {', '.join(sorted(SEARCH_KEYS))}")
    res = raw.get("resources") or {}
    _require(isinstance(res, dict) and not set(res) - RESOURCE_KEYS, f"{path}: resources",
             f"unknown key; known keys: {', '.join(sorted(RESOURCE_KEYS))}")
    out = SearchSpace(dataset, base, params, presets, objectives, source=str(path), raw=raw)
    for key, value in search.items():
        setattr(out, key, value)
    for key, value in res.items():
        setattr(out, key, value)
    validate_settings(out, str(path))
    return out


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SpaceError(f"{where}: expected a number, got {value!r}")
    return float(value)


def validate_settings(space: SearchSpace, where: str = "settings") -> None:
    """Check the search and resource settings (after CLI overrides too)."""
    _require(isinstance(space.num_trials, int) and space.num_trials >= 1, f"{where}: search.num_trials", "must be an integer >= 1")
    _require(isinstance(space.max_concurrent, int) and space.max_concurrent >= 1, f"{where}: search.max_concurrent", "must be an integer >= 1")
    _require(space.sampler in SAMPLERS, f"{where}: search.sampler", f"{space.sampler!r} is not one of {', '.join(SAMPLERS)}")
    _require(space.scheduler in SCHEDULERS, f"{where}: search.scheduler", f"{space.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    _require(space.reduction_factor >= 2, f"{where}: search.reduction_factor", "must be >= 2")
    _require(space.cpus_per_trial > 0, f"{where}: resources.cpus_per_trial", "must be > 0")
    _require(space.gpus_per_trial >= 0, f"{where}: resources.gpus_per_trial", "must be >= 0")
    _require(space.gpus_per_trial <= 1 or float(space.gpus_per_trial).is_integer(), f"{where}: resources.gpus_per_trial",
             "fractions are allowed only below 1 (e.g. 0.5); above 1 use whole GPUs")
