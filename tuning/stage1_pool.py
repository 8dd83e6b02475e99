"""Stage-I generators shared across a search's trials: which trained stage I a new trial reuses.

A DERD-family trial's generator after stage I depends only on its method's teacher and its
stage-I keys (with the search's seed, teachers and budget, which every trial shares), and the run
loop caches it under exactly those (``derd.run.DistillationRun``'s stage-I cache, in ``--out``).
A continuous sampler never repeats stage-I keys, so without help the cache never hits. The pool
makes it hit: when a trial is asked for, with probability ``alpha / (alpha + n)`` (n stage-I runs
trained so far: a Chinese-restaurant process, so new generators keep coming while the pool grows
ever more reused) it gets a new stage I from the sampler, else the stage-I keys of a trained one,
drawn with weight 1 + the number of its trials on the current front of their latest val
objectives (generators whose students did well are reused more). The sampler then samples the
rest (the stage-II keys) with the stage-I keys fixed, through Optuna's ``enqueue_trial``, so it
still sees every trial's full configuration. Only finished stage-I runs are offered (a trial
reports stage 2 only after its stage I was written), so a reusing trial always finds the file.
``alpha = 0`` turns sharing off.
"""

from __future__ import annotations

import json
import random
from typing import Any

from derd.pareto import pareto_ranks, signed

STAGE1_PREFIX = "stage1."
SHARED_FROM = "stage1_shared_from"  # Optuna user attribute: the trial whose stage I a trial reused
TRAINED = "stage1_trained"  # Optuna user attribute: this trial finished a stage I


def stage1_part(params: dict[str, Any]) -> dict[str, Any] | None:
    """The keys that fix a trial's stage I (its method and ``stage1.*``), None if it has none."""
    part = {k: v for k, v in params.items() if k.startswith(STAGE1_PREFIX)}
    if not part:
        return None
    return {**({"method": params["method"]} if "method" in params else {}), **part}


class Stage1Pool:
    """The trained stage-I runs of one search and the rule that picks one for a new trial."""

    def __init__(self, alpha: float, seed: int, objectives: list[tuple[str, str]]) -> None:
        self.alpha, self.objectives = alpha, objectives
        self.rng = random.Random(seed)
        self.trained: dict[str, tuple[int, dict[str, Any]]] = {}  # key -> (first trial, its stage-I part)
        self.latest: dict[int, tuple[str, list[float]]] = {}  # trial -> (its stage-I key, signed objectives)
        self.in_stage1: set[int] = set()  # trials seen training a stage I

    @staticmethod
    def key(part: dict[str, Any]) -> str:
        return json.dumps(part, sort_keys=True)

    def rebuild(self, study) -> None:
        """On resume: the stage-I runs the study's trials finished, and their latest objectives."""
        for t in study.trials:
            part = stage1_part(t.params)
            if part is None:
                continue
            if t.user_attrs.get(TRAINED):
                self.trained.setdefault(self.key(part), (t.number, part))
            latest = t.user_attrs.get("intermediate", {})
            if latest:
                self._note(t.number, part, latest[max(latest, key=int)])

    def _note(self, number: int, part: dict[str, Any], values: list[float]) -> None:
        self.latest[number] = (
            self.key(part),
            signed(dict(zip((m for m, _ in self.objectives), values)), self.objectives),
        )

    def observe(self, number: int, params: dict[str, Any], result: dict[str, Any]) -> bool:
        """A trial's report; True when it shows the trial's stage I finished for the first time."""
        part = stage1_part(params)
        if part is None:
            return False
        if result.get("val_evaluated"):
            self._note(number, part, [result[m] for m, _ in self.objectives])
        if result.get("stage") == 1:
            self.in_stage1.add(number)
        elif (
            number in self.in_stage1 and self.key(part) not in self.trained
        ):  # a method with a stage I, now past it
            self.trained[self.key(part)] = (number, part)
            return True
        return False

    def choose(self) -> tuple[int, dict[str, Any]] | None:
        """(source trial, stage-I part) to reuse for the next trial, or None: a new stage I."""
        if self.alpha <= 0 or not self.trained:
            return None
        n = len(self.trained)
        if self.rng.random() < self.alpha / (self.alpha + n):
            return None
        keys = list(self.trained)
        numbers = list(self.latest)
        ranks = pareto_ranks([self.latest[m][1] for m in numbers]) if numbers else []
        on_front = [self.latest[m][0] for m, r in zip(numbers, ranks) if r == 0]
        weights = [1 + on_front.count(k) for k in keys]
        return self.trained[self.rng.choices(keys, weights=weights)[0]]
