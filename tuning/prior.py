"""A prior over the search space from points we believe in (the methods' published weights), with a
weight that decays as the study learns: PriMO's and piBO's idea on an Optuna sampler.

PriMO (arXiv 2511.08371) and piBO (Hvarfner et al., 2022) sample from, or weight the acquisition
by, a user's prior, and let the prior's influence decay with the number of observations, so that a
good prior speeds the search up and a misleading one costs little. Here, on any Optuna sampler:
trial ``n`` of the study is drawn from the prior with probability ``beta / (beta + n_finished)``
(``search.prior_weight`` = beta; ``n_finished``: the study's finished trials when it is asked),
else by the base sampler (TPE or GP), which sees every finished trial, prior draws included. The
decision is a function of the search's seed and the trial number, so a resumed search repeats it.

The prior is centred on one point per method (``SearchSpace.prior_centers``, by default the
space's presets: the paper's weights): the method is drawn uniformly among the searched ones, then
every other key from a normal distribution around the centre's value, with standard deviation
``WIDTH`` of the key's range (on a log scale for log-uniform keys), truncated to the range;
categorical keys keep the centre's value with probability ``KEEP``, else are drawn uniformly.
"""

from __future__ import annotations

import math
import random
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

WIDTH = 0.15  # the prior's standard deviation, as a fraction of a key's (log) range
KEEP = 0.8  # a categorical key's probability of the centre's value
FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


class PriorSampler(BaseSampler):
    """Draws a trial from the prior around ``centers`` with probability ``beta / (beta + n_finished)``,
    else delegates the whole trial to ``base``."""

    def __init__(self, base: BaseSampler, centers: list[dict[str, Any]], beta: float, seed: int) -> None:
        if not centers:
            raise ValueError("a prior needs at least one centre (the space's presets)")
        self.base, self.centers, self.beta, self.seed = base, centers, float(beta), seed
        self.from_prior: dict[int, bool] = {}  # trial number -> drawn from the prior (a seeded decision)
        self._center: dict[int, dict[str, Any]] = {}

    def uses_prior(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.number not in self.from_prior:
            finished = len(study.get_trials(deepcopy=False, states=FINISHED))
            weight = self.beta / (self.beta + finished) if self.beta > 0 else 0.0
            self.from_prior[trial.number] = self._rng(trial.number, "use").random() < weight
        return self.from_prior[trial.number]

    def _rng(self, number: int, what: str) -> random.Random:
        return random.Random(f"{self.seed}-{number}-{what}")

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        if self.uses_prior(study, trial):
            return {}
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if self.uses_prior(study, trial):
            return {}
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        if not self.uses_prior(study, trial):
            return self.base.sample_independent(study, trial, param_name, param_distribution)
        rng = self._rng(trial.number, param_name)
        if param_name == "method" and isinstance(param_distribution, CategoricalDistribution):
            method = rng.choice(list(param_distribution.choices))
            self._center[trial.number] = next(
                (c for c in self.centers if c.get("method") == method), self.centers[0]
            )
            return method
        center = self._center.get(trial.number, self.centers[0]).get(param_name)
        return draw(param_distribution, center, rng)

    def before_trial(self, study, trial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)
        self._center.pop(trial.number, None)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def draw(distribution: BaseDistribution, center: Any, rng: random.Random) -> Any:
    """One value of ``distribution`` from the prior around ``center`` (uniform where it has none)."""
    if isinstance(distribution, CategoricalDistribution):
        choices = list(distribution.choices)
        if center in choices and rng.random() < KEEP:
            return center
        return rng.choice(choices)
    low, high = float(distribution.low), float(distribution.high)
    log = bool(getattr(distribution, "log", False))
    scale = (lambda v: math.log(v)) if log else (lambda v: v)
    lo, hi = scale(low), scale(high)
    if center is None or not low <= float(center) <= high:
        u = rng.uniform(lo, hi)
    else:
        u = truncated_normal(rng, scale(float(center)), WIDTH * (hi - lo), lo, hi)
    value = math.exp(u) if log else u
    if isinstance(distribution, IntDistribution):
        return int(min(distribution.high, max(distribution.low, round(value))))
    assert isinstance(distribution, FloatDistribution)
    return float(min(high, max(low, value)))


def truncated_normal(rng: random.Random, mean: float, sd: float, lo: float, hi: float) -> float:
    """A normal draw in [lo, hi], by rejection (falling back to uniform after 100 tries)."""
    for _ in range(100):
        x = rng.gauss(mean, sd)
        if lo <= x <= hi:
            return x
    return rng.uniform(lo, hi)
