"""Every trial's random draws a function of the search's seed and the trial's number, so that a
resumed search draws what the uninterrupted one would have.

An Optuna sampler holds one random state, started from its seed and advanced by every draw. A
resumed search builds a fresh sampler, whose state starts at the seed again: its random start-up
trials then repeat the first session's points (a search killed after trial 3 and resumed proposed
trials 1 and 2's parameters again as trials 4 and 5). ``TrialSeeded`` builds the sampler anew
before each trial, seeded from (seed, trial number), as ``tuning.prior`` seeds its own draws (only
Optuna's public API: a sampler's random state is private); what a model-based sampler proposes
still depends on the study's history, which the resumed search reads back whole.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from optuna.samplers import BaseSampler


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s draws in the search seeded ``seed``."""
    return random.Random(f"{seed}-{number}-sampler").getrandbits(32)


class TrialSeeded(BaseSampler):
    """The sampler ``make(seed)`` builds, built anew before each trial with that trial's seed
    (``trial_seed``). Optuna's samplers keep no state of their own between trials but their random
    state and caches: what they propose comes from the study, which a resumed search reads whole."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self.make, self.seed = make, seed
        self.base = make(seed)

    def before_trial(self, study, trial) -> None:
        self.base = self.make(trial_seed(self.seed, trial.number))
        self.base.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
