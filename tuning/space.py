"""Search spaces: one YAML per dataset, validated before anything starts.

Layout of a search-space YAML (all keys optional but ``dataset``, and ``space`` unless ``ranges``
is ``declared``)::

    dataset: digits
    base: {budget.epochs: 12, ...}         # run-config overrides: the per-trial budget
    ranges: declared                       # search every key the searched methods declare a range
                                           # for (derd.settings.setting(search=...)); default: listed
    space:                                 # the method dimension, and ranges this dataset changes
      method: {distribution: categorical, choices: [derd, derd_no_nat]}
      stage1.lambda_bn: {distribution: loguniform, low: 1e-07, high: 0.1}   # replaces the declared one
      stage1.lambda_d: null                # not searched here (stays at the base config's value)
      student.arch: {distribution: categorical, choices: [...]}             # a key no method declares
    presets: [paper]                       # evaluated first: 'paper' (one point per searched method)
                                           # or {key: value, ...}
    objectives:                            # what the search maximises / minimises
      - {metric: val/clean_acc, mode: max}
      - {metric: val/aa_acc, mode: max}
    constraints: {min_clean_fraction: 0.5} # feasible: val clean >= 0.5 x the natural teacher's
    search: {num_trials: 10, max_concurrent: 2, sampler: tpe, scheduler: moasha, grace_period: 8, reduction_factor: 2}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0}

With ``ranges: declared`` a key's range is written once, next to its config field, and a
dataset's space holds only what differs for that dataset (its budget, the ranges it narrows);
``--method NAME`` then searches NAME's own declared keys. With ``ranges: listed`` (the default)
exactly the keys under ``space`` are searched.

``SearchSpace.from_yaml`` reads and checks one; ``to_yaml`` writes the space a search
actually ran (with the command line's overrides, the declared ranges and the presets
expanded, as ``ranges: listed``), which ``from_yaml`` reads back unchanged: that is what
``--resume`` continues.

Conditional keys: a searched key is sampled only for the methods that read it
(``derd.methods.uses_key``: a method's own config sections, plus the sections no method
owns). ``stage1.lambda_adv`` is sampled for derd and derd_no_nat, ``dafl.lambda_act`` only
for dafl. The paper preset is one point per searched method: the dataset's published
weights for that method (``derd.config.preset``) and the base config's value of every other
searched key.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from derd.config import RunConfig, apply_overrides, preset, to_flat
from derd.data import available_datasets
from derd.errors import UserError
from derd.evaluate import PROTOCOLS, VAL_CLEAN, val
from derd.inputs import expect, read_yaml
from derd.methods import available_methods, get_method, method_sections, total_epochs, uses_key
from derd.pareto import Objectives
from derd.settings import DISTRIBUTIONS, SEED_MAX, SearchRange, as_number, declared_ranges
from tuning.records import DEFAULT_OBJECTIVES

SAMPLERS = ("tpe", "gp", "nsga2", "random")
SCHEDULERS = ("asha", "moasha", "none")
SEARCH_KEYS = (
    "num_trials",
    "max_concurrent",
    "sampler",
    "scheduler",
    "grace_period",
    "reduction_factor",
    "seed",
    "share_stage1",
    "startup_trials",
    "prior_weight",
    "noise_aware",
)
RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial")
CONSTRAINT_KEYS = ("min_clean_fraction",)
RANGES = (
    "listed",
    "declared",
)  # which keys a space searches: those under space:, or also the methods' declared ones
TOP_KEYS = {
    "dataset",
    "base",
    "ranges",
    "space",
    "presets",
    "objectives",
    "constraints",
    "search",
    "resources",
    "description",
}
MAX_TRIALS = 100_000  # trials (and concurrent trials) of one search
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
        return SearchRange(self.distribution, self.low, self.high, self.choices).contains(value)

    def suggest(self, trial) -> Any:
        """Sample this key on an Optuna trial (define-by-run)."""
        if self.distribution == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.distribution == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.distribution == "loguniform")

    @classmethod
    def declared(cls, key: str, search: SearchRange) -> "Param":
        """The range a config field declares (``derd.settings.setting(search=...)``) as a searched key."""
        if search.distribution == "categorical":
            return cls(key, search.distribution, choices=tuple(search.choices))
        number = int if search.distribution == "int" else float
        return cls(key, search.distribution, number(search.low), number(search.high))

    def to_yaml(self) -> dict[str, Any]:
        if self.distribution == "categorical":
            return {"distribution": self.distribution, "choices": list(self.choices)}
        return {"distribution": self.distribution, "low": self.low, "high": self.high}


@dataclass
class SearchSpace:
    dataset: str
    base: dict[str, Any]
    params: list[Param]
    presets: list[dict[str, Any]] = field(default_factory=list)
    objectives: Objectives = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    min_clean_fraction: float = 0.5
    num_trials: int = 10
    max_concurrent: int = 2
    sampler: str = "tpe"
    scheduler: str = "moasha"  # chosen with the tabulated benchmark (docs/search-efficiency.md)
    grace_period: int | None = None
    reduction_factor: int = 2
    share_stage1: float = 0.0  # the stage-I pool's alpha (tuning.stage1_pool); 0: every trial trains its own
    startup_trials: int = 10  # finished trials (the presets among them) before TPE or GP models the study
    prior_weight: float = 0.0  # beta of the presets' prior (tuning.prior); 0: no prior
    noise_aware: bool = False  # MO-ASHA stops only a trial dominated beyond its standard errors
    # where the prior is centred (tuning.prior): None, the presets; a measurement may set other points
    prior_centers: list[dict[str, Any]] | None = None
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    description: str = ""
    source: str = ""

    # ---- reading and writing --------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike, methods: list[str] | None = None) -> "SearchSpace":
        """Read and fully validate a search-space YAML (``yaml.safe_load``).

        ``methods`` (``--method``) replaces the space's method dimension: one method drops the
        dimension (and other methods' keys and presets), several (or ``all``: every registered
        method) become its choices.
        """
        path = Path(path)
        raw = _read_yaml(path)
        methods = _parse_methods(methods)
        only = methods[0] if methods is not None and len(methods) == 1 else None
        dataset, base, base_cfg = _parse_base(raw, path, only)
        ranges = raw.get("ranges", "listed")
        _require(ranges in RANGES, f"{path}: ranges", f"{ranges!r} is not one of {', '.join(RANGES)}")
        listed, unsearched = _parse_params(raw, path, base_cfg, required=ranges == "listed")
        space = cls(dataset, base, listed, source=str(path), description=str(raw.get("description") or ""))
        space.params = _choose_methods(
            space, methods, path, base_cfg, unsearched if ranges == "declared" else None
        )
        space.presets = _parse_presets(raw, path, space, only)
        space.objectives = _parse_objectives(raw, path, base_cfg)
        _parse_settings(raw, path, space)
        return space

    def to_yaml(self) -> str:
        """The space as this search runs it (``from_yaml`` reads it back unchanged)."""
        data: dict[str, Any] = {"dataset": self.dataset}
        if self.description:
            data["description"] = self.description
        data["base"] = dict(self.base)
        data["search"] = {k: getattr(self, k) for k in SEARCH_KEYS if getattr(self, k) is not None}
        data["resources"] = {k: getattr(self, k) for k in RESOURCE_KEYS}
        data["constraints"] = {k: getattr(self, k) for k in CONSTRAINT_KEYS}
        data["space"] = {p.key: p.to_yaml() for p in self.params}
        data["presets"] = self.presets
        data["objectives"] = [{"metric": m, "mode": mode} for m, mode in self.objectives]
        return yaml.safe_dump(data, sort_keys=False)

    # ---- what the search needs ------------------------------------------------------------
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
        base = self.base_config()
        return {m: total_epochs(apply_overrides(base, {"method": m})) for m in self.methods}

    def rungs(self) -> list[float]:
        """The epochs at which ASHA and MO-ASHA judge a trial, lowest first: the grace period (by
        default the first evaluation after DERD's stage I) times powers of the reduction factor, up to
        the longest method's budget."""
        max_t = max(self.total_epochs().values())
        base = self.base_config()
        grace = self.grace_period or (base.stage1.epochs // base.eval.every + 1) * base.eval.every
        return rung_epochs(max(1, min(grace, max_t)), max_t, self.reduction_factor)

    def check_rungs(self, where: str) -> None:
        """Refuse rungs that fall between val evaluations: a rung judges the objectives a trial was
        scored on at that very epoch, so that a live search and its resume (which rebuilds the rungs
        from the evaluated epochs the study stores) decide on the same numbers."""
        if self.scheduler not in ("asha", "moasha"):
            return
        base, rungs = self.base_config(), self.rungs()
        for method, budget in self.total_epochs().items():
            every = apply_overrides(base, {"method": method}).eval.every
            between = [r for r in rungs if r < budget and r % every]
            if between:
                aligned = max(every, math.ceil(between[0] / every) * every)
                _require(
                    False,
                    f"{where}: search.grace_period",
                    f"the {self.scheduler} rungs at epochs {', '.join(f'{r:g}' for r in between)} fall between "
                    f"val evaluations (eval.every {every}: epochs {every}, {2 * every}, ...); set "
                    f"search.grace_period to a multiple of {every} (e.g. {aligned}) and search.reduction_factor "
                    f"to a whole number",
                )

    def validate_settings(self, where: str = "settings") -> None:
        """Check the search and resource settings (after command-line overrides too)."""

        def whole(value: Any, lo: int, hi: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi

        def real(value: Any, lo: float, hi: float) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi

        for ok, key, msg in (
            (
                whole(self.num_trials, 1, MAX_TRIALS),
                "search.num_trials",
                f"must be an integer in [1, {MAX_TRIALS}]",
            ),
            (
                whole(self.max_concurrent, 1, MAX_TRIALS),
                "search.max_concurrent",
                f"must be an integer in [1, {MAX_TRIALS}]",
            ),
            (
                self.sampler in SAMPLERS,
                "search.sampler",
                f"{self.sampler!r} is not one of {', '.join(SAMPLERS)}",
            ),
            (
                self.scheduler in SCHEDULERS,
                "search.scheduler",
                f"{self.scheduler!r} is not one of {', '.join(SCHEDULERS)}",
            ),
            (real(self.reduction_factor, 2, 100), "search.reduction_factor", "must be a number in [2, 100]"),
            (
                real(self.share_stage1, 0, 1e6),
                "search.share_stage1",
                "must be a number in [0, 1e6] (0: off; alpha of the stage-I pool: tuning/stage1_pool.py)",
            ),
            (
                whole(self.startup_trials, 0, MAX_TRIALS),
                "search.startup_trials",
                f"must be an integer in [0, {MAX_TRIALS}] (finished trials, presets included, before the sampler models)",
            ),
            (
                real(self.prior_weight, 0, 1e6),
                "search.prior_weight",
                "must be a number in [0, 1e6] (0: off; the presets' prior weight: tuning/prior.py)",
            ),
            (isinstance(self.noise_aware, bool), "search.noise_aware", "must be true or false"),
            (
                self.grace_period is None or whole(self.grace_period, 1, 10**6),
                "search.grace_period",
                "must be an integer in [1, 1000000]",
            ),
            (whole(self.seed, 0, SEED_MAX), "search.seed", f"must be an integer in [0, {SEED_MAX}]"),
            (
                real(self.cpus_per_trial, 1e-3, 4096),
                "resources.cpus_per_trial",
                "must be a number in (0, 4096]",
            ),
            (real(self.gpus_per_trial, 0, 1024), "resources.gpus_per_trial", "must be a number in [0, 1024]"),
        ):
            _require(ok, f"{where}: {key}", msg)
        _require(
            self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer(),
            f"{where}: resources.gpus_per_trial",
            "fractions are allowed only below 1 (e.g. 0.5); above 1 use whole GPUs",
        )
        self.check_rungs(where)


def rung_epochs(grace_period: float, max_t: float, reduction_factor: float) -> list[float]:
    """ASHA's rungs (one bracket, as Ray's ``AsyncHyperBandScheduler``): the grace period times powers
    of the reduction factor, up to ``max_t``, lowest first."""
    if not 0 < grace_period <= max_t or reduction_factor <= 1:
        raise ValueError(
            f"ASHA needs 0 < grace_period ({grace_period}) <= max_t ({max_t}) and reduction_factor > 1"
        )
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(count)]


def default_space_path(dataset: str) -> Path:
    path = SPACES_DIR / f"{dataset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
        raise UserError(
            f"unknown dataset {dataset!r}: no search space {path.name}; choose one of {known} or pass --space FILE"
        )
    return path


# ---- the parsers (each checks one part of the YAML and names the key it rejects) -------------


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise SpaceError(f"{where}: {msg}")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = read_yaml(path, "search space")
    except UserError as err:
        raise SpaceError(str(err)) from None
    _require(isinstance(raw, dict), str(path), "expected a mapping at the top level")
    unknown = set(raw) - TOP_KEYS
    _require(
        not unknown,
        str(path),
        f"unknown key {min(unknown, default='')!r}; known keys: {', '.join(sorted(TOP_KEYS))}",
    )
    return raw


def _parse_methods(methods: list[str] | None) -> list[str] | None:
    """``--method``: registered names (deduplicated), ``all`` for every one, or None for the space's."""
    if methods is None:
        return None
    methods = available_methods() if methods == ["all"] else list(dict.fromkeys(methods))
    bad = [m for m in methods if m not in available_methods()]
    _require(
        not bad,
        "--method",
        f"{bad[0] if bad else ''!r} is not one of {', '.join(available_methods())} or all",
    )
    return methods


def _parse_base(raw: dict[str, Any], path: Path, method: str | None) -> tuple[str, dict[str, Any], RunConfig]:
    """(dataset, base overrides, the base config they give)."""
    dataset = raw.get("dataset")
    _require(
        dataset in available_datasets(),
        f"{path}: dataset",
        f"{dataset!r} is not one of {', '.join(available_datasets())}",
    )
    _require(
        isinstance(raw.get("base") or {}, dict),
        f"{path}: base",
        "expected a mapping of config keys to values",
    )
    base = dict(raw.get("base") or {})
    if method is not None:
        base["method"] = method
    try:
        return dataset, base, apply_overrides(preset(dataset), base)
    except UserError as err:
        raise SpaceError(f"{path}: base.{err}") from None


def _number(value: Any, where: str) -> float:
    value = as_number(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SpaceError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _check_values(base_cfg: RunConfig, key: str, values: list[Any], where: str) -> None:
    """Every end of a range (every choice) must be a value the run config accepts, so that no
    trial fails on its sampled config after the search has started."""
    for value in values:
        try:
            apply_overrides(base_cfg, {key: value})
        except UserError as err:
            raise SpaceError(f"{where}: {value!r} is not accepted ({err})") from None


def _parse_param(key: str, spec: Any, where: str, base_cfg: RunConfig, known: dict[str, Any]) -> Param:
    _require(key in known, where, "unknown config key (use dotted keys such as stage1.lambda_adv)")
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
            _require(
                not bad,
                where,
                f"{bad[0] if bad else ''!r} is not a method; choose from {', '.join(available_methods())}",
            )
        else:
            _check_values(base_cfg, key, choices, where)
        return Param(key, dist, choices=tuple(choices))
    _require(key != "method", where, "the method dimension is categorical")
    low, high = _number(spec.get("low"), where + ".low"), _number(spec.get("high"), where + ".high")
    _require(low < high, where, f"low ({low}) must be below high ({high})")
    if dist == "loguniform":
        _require(low > 0, where, f"a log range needs low > 0 (got {low})")
    current = known[key]
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        wanted = (
            "whole numbers: use distribution int"
            if isinstance(current, int)
            else "real numbers: use uniform or loguniform"
        )
        _require(isinstance(current, int) == (dist == "int"), where, f"{key} takes {wanted}")
    _check_values(base_cfg, key, [int(low), int(high)] if dist == "int" else [low, high], where)
    return Param(key, dist, low, high)


def _parse_params(
    raw: dict[str, Any], path: Path, base_cfg: RunConfig, required: bool
) -> tuple[list[Param], set[str]]:
    """(the listed params, the keys listed as ``null``: not searched)."""
    space = raw.get("space")
    if required:
        _require(
            isinstance(space, dict) and space, f"{path}: space", "expected a non-empty mapping of config keys"
        )
    space = space or {}
    _require(isinstance(space, dict), f"{path}: space", "expected a mapping of config keys")
    known = to_flat(base_cfg)
    params, unsearched = [], set()
    for key, spec in space.items():
        key = "method" if key == "variant" else key  # 'variant': the old name of the method dimension
        if spec is None:
            _require(
                key in known and key != "method",
                f"{path}: space.{key}",
                "unknown config key (use dotted keys "
                "such as stage1.lambda_adv); null leaves a declared key out of the search",
            )
            unsearched.add(key)
        else:
            params.append(_parse_param(key, spec, f"{path}: space.{key}", base_cfg, known))
    return params, unsearched


def _with_declared(
    params: list[Param], methods: list[str], path: Path, base_cfg: RunConfig, unsearched: set[str]
) -> list[Param]:
    """The method dimension, then every range the searched methods' sections declare (the space's own
    range where it lists the key; none where it lists ``null``), then the space's other keys."""
    listed = {p.key: p for p in params}
    out = [listed["method"]] if "method" in listed else []
    for key, search in declared_ranges(method_sections(methods)).items():
        if key in unsearched:
            continue
        if key in listed:
            out.append(listed[key])
            continue
        param = Param.declared(key, search)
        _check_values(
            base_cfg,
            key,
            list(param.choices) or [param.low, param.high],
            f"{path}: the declared range of {key}",
        )
        out.append(param)
    return out + [p for p in params if p not in out]


def _choose_methods(
    space: SearchSpace,
    methods: list[str] | None,
    path: Path,
    base_cfg: RunConfig,
    unsearched: set[str] | None,
) -> list[Param]:
    """The params after ``--method`` (and, with ``unsearched`` given, ``ranges: declared``: the searched
    methods' declared ranges), keeping only keys some searched method reads (a space may list every
    method's keys)."""
    params = space.params
    if methods is not None:
        params = [p for p in params if p.key != "method"]
        if len(methods) > 1:
            params.insert(0, Param("method", "categorical", choices=tuple(methods)))
    space.params = params
    if unsearched is not None:
        params = space.params = _with_declared(params, space.methods, path, base_cfg, unsearched)
    kept = [p for p in params if p.key == "method" or any(uses_key(m, p.key) for m in space.methods)]
    _require(
        any(p.key != "method" for p in kept) or len(space.methods) > 1,
        f"{path}: space",
        f"no searched key is read by {', '.join(space.methods)}",
    )
    return kept


def _parse_presets(
    raw: dict[str, Any], path: Path, space: SearchSpace, only: str | None
) -> list[dict[str, Any]]:
    """Points evaluated first: 'paper' expands to one point per searched method."""
    has_dim = any(p.key == "method" for p in space.params)
    base = space.base_config()
    points: list[dict[str, Any]] = []
    for i, item in enumerate(expect(raw.get("presets") or [], list, f"{path}: presets")):
        where = f"{path}: presets[{i}]"
        _require(
            item == "paper" or isinstance(item, dict), where, "expected 'paper' or a mapping of searched keys"
        )
        candidates = [{"method": m} for m in space.methods] if item == "paper" else [dict(item)]
        for point in candidates:
            point = {("method" if k == "variant" else k): v for k, v in point.items()}
            chosen = point.get("method", base.method)
            if only is not None and chosen != only:
                continue
            defaults = to_flat(apply_overrides(base, {"method": chosen}))
            if item == "paper":  # the method's published values, where the space's base sets none
                own = get_method(chosen).sections
                defaults.update(
                    {
                        k: v
                        for k, v in to_flat(preset(space.dataset, chosen)).items()
                        if k.split(".")[0] in own and k not in space.base
                    }
                )
            full = {"method": chosen} if has_dim else {}
            for p in space.params:
                if p.key != "method" and uses_key(chosen, p.key):
                    full[p.key] = point.get(p.key, defaults[p.key])
            for key, value in point.items():
                _require(
                    key in full or (key == "method" and not has_dim and value == base.method),
                    where,
                    f"{key} is not a searched key of method {chosen}",
                )
            for p in space.params:
                if p.key in full:
                    _require(p.contains(full[p.key]), where, f"{p.key}={full[p.key]} lies outside its range")
            if full not in points:
                points.append(full)
    return points


def _parse_objectives(raw: dict[str, Any], path: Path, base_cfg: RunConfig) -> Objectives:
    """Objectives must be val metrics that the trial protocol computes (a typo would optimise a constant)."""
    computed = [val(c) for c in PROTOCOLS[base_cfg.eval.protocol].columns]
    if base_cfg.eval.protocol == "full":
        computed.append(val("ave_acc"))
    objectives = []
    given = raw.get("objectives") or [{"metric": m, "mode": mode} for m, mode in DEFAULT_OBJECTIVES]
    expect(given, list, f"{path}: objectives")
    for i, obj in enumerate(given):
        where = f"{path}: objectives[{i}]"
        _require(
            isinstance(obj, dict) and set(obj) == {"metric", "mode"},
            where,
            "expected {metric: ..., mode: max|min}",
        )
        _require(
            obj["metric"] in computed,
            where,
            f"{obj['metric']!r} is not computed by the {base_cfg.eval.protocol!r} protocol on val; "
            f"choose from {', '.join(computed)}",
        )
        _require(obj["mode"] in ("max", "min"), where, "mode must be max or min")
        objectives.append((obj["metric"], obj["mode"]))
    _require(
        VAL_CLEAN in [m for m, _ in objectives],
        f"{path}: objectives",
        f"{VAL_CLEAN} must be an objective (the front and the feasibility constraint read it)",
    )
    return objectives


def _parse_settings(raw: dict[str, Any], path: Path, space: SearchSpace) -> None:
    """constraints, search and resources: each a mapping of known keys."""
    for section, keys in (
        ("constraints", CONSTRAINT_KEYS),
        ("search", SEARCH_KEYS),
        ("resources", RESOURCE_KEYS),
    ):
        values = raw.get(section) or {}
        _require(
            isinstance(values, dict) and not set(values) - set(keys),
            f"{path}: {section}",
            f"unknown key; known keys: {', '.join(sorted(keys))}",
        )
        for key, value in values.items():
            setattr(space, key, value)
    fraction = _number(space.min_clean_fraction, f"{path}: constraints.min_clean_fraction")
    _require(0 <= fraction < 1, f"{path}: constraints.min_clean_fraction", "must be in [0, 1)")
    space.min_clean_fraction = fraction
    space.validate_settings(str(path))
