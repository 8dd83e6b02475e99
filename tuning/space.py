"""Search spaces: one YAML per dataset, validated before anything starts.

Layout of a search-space YAML (all keys optional but ``dataset`` and ``space``)::

    dataset: digits
    base: {stage1.epochs: 4, ...}          # run-config overrides: the per-trial budget
    space:                                 # searched config keys and their distributions
      method: {distribution: categorical, choices: [derd, derd_no_nat]}
      stage1.lambda_adv: {distribution: loguniform, low: 0.0005, high: 5}
      stage2.pgd_steps: {distribution: int, low: 3, high: 10}
    presets: [paper]                       # evaluated first: 'paper' (one point per searched method)
                                           # or {key: value, ...}
    objectives:                            # what the search maximises / minimises
      - {metric: val/clean_acc, mode: max}
      - {metric: val/aa_acc, mode: max}
    constraints: {min_clean_fraction: 0.5} # feasible: val clean >= 0.5 x the natural teacher's
    search: {num_trials: 10, max_concurrent: 2, sampler: tpe, scheduler: asha, grace_period: 8, reduction_factor: 2}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0}

Conditional keys: a searched key is sampled only for the methods that read it
(``derd.methods.uses_key``: a method's own config sections, plus the sections no method
owns). ``stage1.lambda_adv`` is sampled for derd and derd_no_nat, ``dafl.lambda_act`` only
for dafl. The paper preset is one point per searched method: the paper's DERD weights for
DERD's family, each baseline's published weights (its section's defaults) for the others,
and the base config's value of every other searched key.
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
from derd.evaluate import PROTOCOLS

DISTRIBUTIONS = ("loguniform", "uniform", "int", "categorical")
SAMPLERS = ("tpe", "nsga2", "random")
SCHEDULERS = ("asha", "none")
TOP_KEYS = {"dataset", "base", "space", "presets", "objectives", "constraints", "search", "resources", "description"}
SEARCH_KEYS = {"num_trials", "max_concurrent", "sampler", "scheduler", "grace_period", "reduction_factor", "seed"}
RESOURCE_KEYS = {"cpus_per_trial", "gpus_per_trial"}
CONSTRAINT_KEYS = {"min_clean_fraction"}
DEFAULT_MIN_CLEAN_FRACTION = 0.5
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
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def suggest(self, trial) -> Any:
        """Sample this key on an Optuna trial (define-by-run)."""
        if self.distribution == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.distribution == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.distribution == "loguniform")


@dataclass
class SearchSpace:
    dataset: str
    base: dict[str, Any]
    params: list[Param]
    presets: list[dict[str, Any]]
    objectives: list[tuple[str, str]]  # (metric, "max"|"min")
    min_clean_fraction: float = DEFAULT_MIN_CLEAN_FRACTION
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

    @property
    def methods(self) -> list[str]:
        """The methods the search may sample (the ``method`` dimension, else the base config's)."""
        dim = next((p for p in self.params if p.key == "method"), None)
        return list(dim.choices) if dim is not None else [self.base_config().method]

    def sample(self, trial) -> dict[str, Any]:
        """Define-by-run: the method first, then every searched key that method reads."""
        from derd.methods import uses_key

        out: dict[str, Any] = {}
        method = self.base_config().method
        for p in self.params:
            if p.key == "method":
                method = out["method"] = p.suggest(trial)
        for p in self.params:
            if p.key != "method" and uses_key(method, p.key):
                out[p.key] = p.suggest(trial)
        return out

    def objective_names(self) -> list[str]:
        return [m for m, _ in self.objectives]

    def total_epochs(self) -> dict[str, int]:
        """Full trial budget per searched method (epochs a trial runs if not stopped)."""
        from derd.methods import get_method

        base = self.base_config()
        return {m: sum(p.epochs for p in get_method(m).phases(apply_overrides(base, {"method": m}))) for m in self.methods}


def default_space_path(dataset: str) -> Path:
    path = SPACES_DIR / f"{dataset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
        raise UserError(f"unknown dataset {dataset!r}: no search space {path.name}; choose one of {known} or pass --space FILE")
    return path


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise SpaceError(f"{where}: {msg}")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpaceError(f"search space {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML ({' '.join(str(err).split())[:200]})") from None
    _require(isinstance(raw, dict), str(path), "expected a mapping at the top level")
    return raw


def _check_values(base_cfg: RunConfig, key: str, values: list[Any], where: str) -> None:
    """Every end of a range (every choice) must be a value the run config accepts, so that no
    trial fails on its sampled config after the search has started."""
    for value in values:
        try:
            apply_overrides(base_cfg, {key: value})
        except UserError as err:
            raise SpaceError(f"{where}: {value!r} is not accepted ({err})") from None


def load_space(path: str | os.PathLike, methods: list[str] | None = None) -> SearchSpace:
    """Read and fully validate a search-space YAML (``yaml.safe_load``).

    ``methods`` (``--method``) replaces the space's method dimension: one method drops the
    dimension (and other methods' keys and presets), several (or ``all``: every registered
    method) become its choices.
    """
    from derd.methods import available_methods, uses_key

    if methods is not None:
        methods = list(available_methods()) if methods == ["all"] else list(dict.fromkeys(methods))
        bad = [m for m in methods if m not in available_methods()]
        _require(not bad, "--method", f"{bad[0] if bad else ''!r} is not one of {', '.join(available_methods())} or all")
    method = methods[0] if methods is not None and len(methods) == 1 else None

    path = Path(path)
    raw = _read_yaml(path)
    unknown = set(raw) - TOP_KEYS
    _require(not unknown, str(path), f"unknown key {min(unknown, default='')!r}; known keys: {', '.join(sorted(TOP_KEYS))}")
    dataset = raw.get("dataset")
    _require(dataset in PAPER_WEIGHTS, f"{path}: dataset", f"{dataset!r} is not one of {', '.join(PAPER_WEIGHTS)}")
    _require(isinstance(raw.get("base") or {}, dict), f"{path}: base", "expected a mapping of config keys to values")
    base = dict(raw.get("base") or {})
    if method is not None:
        base["method"] = method
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
        key = "method" if key == "variant" else key  # the old name of the method dimension
        _require(key in known_keys, where, "unknown config key (use dotted keys such as stage1.lambda_adv)")
        _require(isinstance(spec, dict), where, "expected {distribution: ..., low: ..., high: ...}")
        extra = set(spec) - {"distribution", "low", "high", "choices"}
        _require(not extra, where, f"unknown key {min(extra, default='')!r}")
        dist = spec.get("distribution")
        _require(dist in DISTRIBUTIONS, where, f"distribution {dist!r} is not one of {', '.join(DISTRIBUTIONS)}")
        if dist == "categorical":
            choices = spec.get("choices")
            _require(isinstance(choices, list) and choices, where, "categorical needs a non-empty list 'choices'")
            if key == "method":
                bad = [c for c in choices if c not in available_methods()]
                _require(not bad, where, f"{bad[0] if bad else ''!r} is not a method; choose from {', '.join(available_methods())}")
            else:
                _check_values(base_cfg, key, choices, where)
            params.append(Param(key, dist, choices=tuple(choices)))
            continue
        _require(key != "method", where, "the method dimension is categorical")
        low, high = _number(spec.get("low"), where + ".low"), _number(spec.get("high"), where + ".high")
        _require(low < high, where, f"low ({low}) must be below high ({high})")
        if dist == "loguniform":
            _require(low > 0, where, f"a log range needs low > 0 (got {low})")
        is_int = dist == "int"
        if isinstance(known_keys[key], (int, float)) and not isinstance(known_keys[key], bool):
            wanted = "whole numbers: use distribution int" if isinstance(known_keys[key], int) else "real numbers: use uniform or loguniform"
            _require(isinstance(known_keys[key], int) == is_int, where, f"{key} takes {wanted}")
        _check_values(base_cfg, key, [int(low), int(high)] if is_int else [low, high], where)
        params.append(Param(key, dist, low, high))
    if methods is not None:
        params = [p for p in params if p.key != "method"]
        if method is None:
            params.insert(0, Param("method", "categorical", choices=tuple(methods)))
    out = SearchSpace(dataset, {k: v for k, v in base.items()}, params, [], [], source=str(path), raw=raw)
    # entries for methods this search does not sample (a space lists every method's keys) are set aside
    out.params = [p for p in params if p.key == "method" or any(uses_key(m, p.key) for m in out.methods)]
    _require(any(p.key != "method" for p in out.params) or len(out.methods) > 1, f"{path}: space",
             f"no searched key is read by {', '.join(out.methods)}")
    out.presets = _presets(raw, path, out, method)
    out.objectives = _objectives(raw, path, base_cfg)
    constraints = raw.get("constraints") or {}
    _require(isinstance(constraints, dict) and not set(constraints) - CONSTRAINT_KEYS, f"{path}: constraints",
             f"unknown key; known keys: {', '.join(sorted(CONSTRAINT_KEYS))}")
    if "min_clean_fraction" in constraints:
        fraction = _number(constraints["min_clean_fraction"], f"{path}: constraints.min_clean_fraction")
        _require(0 <= fraction < 1, f"{path}: constraints.min_clean_fraction", "must be in [0, 1)")
        out.min_clean_fraction = fraction
    search = raw.get("search") or {}
    _require(isinstance(search, dict) and not set(search) - SEARCH_KEYS, f"{path}: search",
             f"unknown key; known keys: {', '.join(sorted(SEARCH_KEYS))}")
    res = raw.get("resources") or {}
    _require(isinstance(res, dict) and not set(res) - RESOURCE_KEYS, f"{path}: resources",
             f"unknown key; known keys: {', '.join(sorted(RESOURCE_KEYS))}")
    for key, value in {**search, **res}.items():
        setattr(out, key, value)
    validate_settings(out, str(path))
    return out


def _presets(raw: dict[str, Any], path: Path, space: SearchSpace, method: str | None) -> list[dict[str, Any]]:
    """Points evaluated first: 'paper' expands to one point per searched method."""
    from derd.methods import uses_key

    points = []
    for i, item in enumerate(raw.get("presets") or []):
        where = f"{path}: presets[{i}]"
        if item == "paper":
            candidates = [{"method": m} for m in space.methods]
        else:
            _require(isinstance(item, dict), where, "expected 'paper' or a mapping of searched keys")
            candidates = [dict(item)]
        for point in candidates:
            point = {("method" if k == "variant" else k): v for k, v in point.items()}
            chosen = point.get("method", space.base_config().method)
            if method is not None and chosen != method:
                continue
            cfg = apply_overrides(space.base_config(), {"method": chosen})
            defaults = to_flat(cfg)
            if item == "paper":
                defaults.update(PAPER_WEIGHTS[space.dataset])
            full = {} if all(p.key != "method" for p in space.params) else {"method": chosen}
            for p in space.params:
                if p.key != "method" and uses_key(chosen, p.key):
                    full[p.key] = point.get(p.key, defaults[p.key])
            for key, value in point.items():
                _require(key in full or (key == "method" and not any(p.key == "method" for p in space.params)
                                         and value == space.base_config().method),
                         where, f"{key} is not a searched key of method {chosen}")
            for p in space.params:
                if p.key in full:
                    _require(p.contains(full[p.key]), where, f"{p.key}={full[p.key]} lies outside its range")
            if full not in points:
                points.append(full)
    return points


def _objectives(raw: dict[str, Any], path: Path, base_cfg: RunConfig) -> list[tuple[str, str]]:
    """Objectives must be val metrics that the trial protocol computes (a typo would optimise a constant)."""
    computed = [f"val/{c}" for c in PROTOCOLS[base_cfg.eval.protocol].columns]
    if base_cfg.eval.protocol == "full":
        computed.append("val/ave_acc")
    objectives = []
    default = [{"metric": "val/clean_acc", "mode": "max"}, {"metric": "val/aa_acc", "mode": "max"}]
    for i, obj in enumerate(raw.get("objectives") or default):
        where = f"{path}: objectives[{i}]"
        _require(isinstance(obj, dict) and set(obj) == {"metric", "mode"}, where, "expected {metric: ..., mode: max|min}")
        _require(obj["metric"] in computed, where,
                 f"{obj['metric']!r} is not computed by the {base_cfg.eval.protocol!r} protocol on val; "
                 f"choose from {', '.join(computed)}")
        _require(obj["mode"] in ("max", "min"), where, "mode must be max or min")
        objectives.append((obj["metric"], obj["mode"]))
    _require("val/clean_acc" in [m for m, _ in objectives], f"{path}: objectives",
             "val/clean_acc must be an objective (the front and the feasibility constraint read it)")
    return objectives


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
    _require(isinstance(space.reduction_factor, (int, float)) and space.reduction_factor >= 2,
             f"{where}: search.reduction_factor", "must be >= 2")
    _require(space.grace_period is None or (isinstance(space.grace_period, int) and space.grace_period >= 1),
             f"{where}: search.grace_period", "must be an integer >= 1")
    _require(isinstance(space.cpus_per_trial, (int, float)) and space.cpus_per_trial > 0, f"{where}: resources.cpus_per_trial", "must be > 0")
    _require(isinstance(space.gpus_per_trial, (int, float)) and space.gpus_per_trial >= 0, f"{where}: resources.gpus_per_trial", "must be >= 0")
    _require(space.gpus_per_trial <= 1 or float(space.gpus_per_trial).is_integer(), f"{where}: resources.gpus_per_trial",
             "fractions are allowed only below 1 (e.g. 0.5); above 1 use whole GPUs")
