"""ASHA whose decisions survive a driver restart, on Ray Tune's public scheduler interface.

Ray's ``ASHAScheduler`` keys its rungs by Ray trial id and keeps them only in the driver (and
its periodic snapshot), so a resumed search would forget every rung: a trial that an
uninterrupted search stops at epoch 8 would run to the end. This scheduler keeps the rungs
itself, keyed by the Optuna trial number (the trial's identity across sessions), refills
them on start from the scores the study holds (``tuning.searcher``), and records which
trials it stopped, so the searcher can tell Optuna those ended (stopped early) and leave interrupted
ones RUNNING. The paper's presets are never stopped: they are the reference every trial is
compared with, so they run the full trial budget (their scores still count at every rung).

The rule is ASHA's (Li et al., 2020; as Ray's ``AsyncHyperBandScheduler`` with one bracket
applies it): the rungs sit at the grace period times powers of the reduction factor, in
epochs, below ``max_t``. The first result at or past a rung that the trial has not been
recorded at is compared with the rung's cutoff, the (1 - 1/reduction_factor) quantile of the
scores recorded there so far: below it the trial stops; either way its score is recorded.
``search/score`` is the mean of the (signed) objectives, minus 100 while the trial is
infeasible (``tuning.trainable.search_score``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from derd.evaluate import VAL_CLEAN
from derd.pareto import binomial_se, crowding_distances, pareto_ranks, signed
from tuning.searcher import TRIAL_NUMBER
from tuning.space import rung_epochs

TIME_ATTR, METRIC = "epoch", "search/score"


SCHEDULER_NAMES = {"asha": "ASHA", "moasha": "MO-ASHA", "none": "no early stopping"}


def scheduler_name(scheduler: str) -> str:
    """How logs and summaries name a space's ``search.scheduler``."""
    return SCHEDULER_NAMES.get(scheduler, scheduler)


def make_scheduler(space, study, clean_threshold: float) -> TrialScheduler:
    """The space's early stopping: ``asha`` on ``search/score``, ``moasha`` on the objectives, each
    by epoch with its rungs rebuilt from what the study stores and the paper's presets protected;
    FIFO when early stopping is off. Its rungs are the space's (``SearchSpace.rungs``)."""
    if space.scheduler not in ("asha", "moasha"):
        return FIFOScheduler()
    presets = {t.number for t in study.trials if t.user_attrs.get("preset")}
    settings = dict(
        protected=presets,
        max_t=max(space.total_epochs().values()),
        grace_period=space.rungs()[0],
        reduction_factor=space.reduction_factor,
    )
    if space.scheduler == "moasha":
        history = {
            t.number: {
                int(e): rung_point(values, space.objectives, clean_threshold)
                for e, values in t.user_attrs.get("intermediate", {}).items()
            }
            for t in study.trials
        }
        return ResumableMOASHA(
            objectives=space.objectives,
            clean_threshold=clean_threshold,
            history=history,
            noise_aware=space.noise_aware,
            **settings,
        )
    history = {t.number: {int(e): s for e, s in t.user_attrs.get("scores", {}).items()} for t in study.trials}
    return ResumableASHA(history=history, **settings)


def evaluated(result: dict[str, Any]) -> bool:
    """Whether a report carries objectives scored at its own epoch (not values held over from an
    earlier evaluation): the only reports a rung records, live as on resume (``tuning.searcher``
    stores the evaluated epochs alone)."""
    return bool(result.get("val_evaluated", True))


class ResumableASHA(FIFOScheduler):
    key = "asha"  # its name in a space's search.scheduler

    def __init__(
        self,
        *,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        history: dict[int, dict[int, float]] | None = None,
        protected: set[int] = frozenset(),
    ) -> None:
        super().__init__()
        self.max_t, self.reduction_factor = max_t, reduction_factor
        # (milestone, {trial number: score recorded there}), the highest milestone first
        self.rungs: list[tuple[float, dict[int, float]]] = [
            (milestone, {}) for milestone in reversed(rung_epochs(grace_period, max_t, reduction_factor))
        ]
        self.stopped_early: set[int] = set()
        self.stop_reasons: dict[int, str] = {}  # trial number -> what the rule decided on, for the console
        self.protected = set(protected)  # the paper's presets: always run the full budget
        for number, scores in (history or {}).items():
            for milestone, recorded in self.rungs:
                reached = sorted(e for e in scores if e >= milestone)
                if reached:
                    recorded[number] = scores[reached[0]]

    def cutoff(self, recorded: dict[int, float]) -> float | None:
        if not recorded:
            return None
        return float(np.nanpercentile(list(recorded.values()), (1 - 1 / self.reduction_factor) * 100))

    def keeps(self, recorded: dict[int, Any], value: Any) -> bool:
        """ASHA's rule: a trial goes on unless its score is below the rung's cutoff."""
        cutoff = self.cutoff(recorded)
        return cutoff is None or value >= cutoff

    def value(self, result: dict[str, Any]) -> Any:
        """What a rung records of a result (None: the result carries nothing to judge)."""
        return result.get(METRIC)

    def why(self, recorded: dict[int, Any], value: Any) -> str:
        """What the rule decided on, in words (the console's stop line)."""
        cutoff = self.cutoff(recorded)
        return (
            f"score {value:.2f} below the rung's cutoff {cutoff:.2f}, the top 1/{self.reduction_factor:g} "
            f"of {len(recorded) + 1} trials there"
        )

    def record(self, number: int, epoch: int, value: Any) -> str:
        """One result: record its value at the rung it reaches first, STOP if the rung does not keep it."""
        for milestone, recorded in self.rungs:
            if epoch < milestone or number in recorded:
                continue
            kept = self.keeps(recorded, value)
            if not kept:
                self.stop_reasons[number] = f"at the epoch-{milestone:g} rung: {self.why(recorded, value)}"
            recorded[number] = value
            return TrialScheduler.CONTINUE if kept else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        if TIME_ATTR not in result or self.value(result) is None:
            return TrialScheduler.CONTINUE
        number = trial.config[TRIAL_NUMBER]
        if result[TIME_ATTR] >= self.max_t:
            return TrialScheduler.STOP
        if not evaluated(result):
            return TrialScheduler.CONTINUE
        action = self.record(number, result[TIME_ATTR], self.value(result))
        if action == TrialScheduler.STOP and result[TIME_ATTR] < result.get("total_epochs", 0):
            if number in self.protected:
                return TrialScheduler.CONTINUE  # its score still sets the rung's cutoff for the others
            self.stopped_early.add(number)
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict[str, Any]) -> None:
        if TIME_ATTR in result and evaluated(result) and self.value(result) is not None:
            self.record(trial.config[TRIAL_NUMBER], result[TIME_ATTR], self.value(result))

    def debug_string(self) -> str:
        """The line Ray's status table prints under the trials (FIFO's would say "FIFO scheduling")."""
        rungs = ", ".join(f"{milestone:g}" for milestone, _ in self.rungs)
        return (
            f"Using {scheduler_name(self.key)} (resumable): rungs at epochs {rungs}; "
            f"{len(self.stopped_early)} trials stopped early"
        )


RungPoint = tuple[bool, tuple[float, ...]]  # (feasible, the objectives signed so that larger is better)


def rung_point(values: list[float], objectives: list[tuple[str, str]], clean_threshold: float) -> RungPoint:
    """A trial's objectives at a rung (in the space's order, as the study stores them) as MO-ASHA
    compares them."""
    named = dict(zip((m for m, _ in objectives), values))
    return named[VAL_CLEAN] >= clean_threshold, tuple(signed(named, objectives))


def rung_keys(points: list[RungPoint]) -> dict[int, tuple]:
    """Each point's sort key, best first: (infeasible, Pareto rank, -crowding distance, index)."""
    key: dict[int, tuple] = {}
    for feasible in (True, False):
        group = [i for i, p in enumerate(points) if p[0] == feasible]
        ranks = pareto_ranks([points[i][1] for i in group])
        for rank in set(ranks):
            front = [i for i, r in zip(group, ranks) if r == rank]
            for i, d in zip(front, crowding_distances([points[i][1] for i in front])):
                key[i] = (not feasible, rank, -d, i)
    return key


def rung_order(points: list[RungPoint]) -> list[int]:
    """Indices of ``points`` best first: feasible before infeasible, then by Pareto rank
    (non-dominated sorting), then by crowding distance within the front (larger first: the ends
    of a front and its sparse parts), then by position (an earlier index first)."""
    key = rung_keys(points)
    return sorted(range(len(points)), key=lambda i: key[i])


class ResumableMOASHA(ResumableASHA):
    """MO-ASHA (Schmucker et al., 2021) on the same rungs, resume and protection as ``ResumableASHA``:
    at a rung a trial goes on if, among the trials recorded there and itself, it ranks within the
    top ``ceil(n / reduction_factor)`` by ``rung_order`` (feasibility, then non-dominated sorting
    of the objectives, ties broken by crowding distance, then in the newcomer's favour, as ASHA's
    ``>=`` cutoff does). No single score mixes the objectives, so a trial on the front at a rung
    is stopped only when the rung's front alone is larger than the trials it keeps; the first
    trial at a rung always goes on. Rungs are rebuilt on resume from the study's ``intermediate``
    objectives.

    ``noise_aware``: the newcomer is ranked at its optimistic point, each objective moved one
    binomial standard error (on the val images it was scored on) its better way, and feasible if
    that point is; so a trial is stopped only when it falls outside the kept places by more than
    its standard errors."""

    key = "moasha"

    def __init__(
        self,
        *,
        objectives: list[tuple[str, str]],
        clean_threshold: float,
        noise_aware: bool = False,
        **kwargs: Any,
    ) -> None:
        self.objectives, self.clean_threshold, self.noise_aware = objectives, clean_threshold, noise_aware
        super().__init__(**kwargs)

    def value(self, result: dict[str, Any]) -> RungPoint | None:
        if not all(m in result for m, _ in self.objectives):
            return None
        return rung_point([result[m] for m, _ in self.objectives], self.objectives, self.clean_threshold)

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        self._n_images = int(result.get("val/n_images") or 0)  # the standard errors of the result judged now
        return super().on_trial_result(tune_controller, trial, result)

    def optimistic(self, value: RungPoint) -> RungPoint:
        """``value`` moved one standard error its better way in every objective (noise-aware rule)."""
        n = getattr(self, "_n_images", 0)  # 0: no images known (a rung rebuilt on resume), no move
        if not self.noise_aware or n <= 0:
            return value
        moved = tuple(v + binomial_se(abs(v), n) for v in value[1])
        named = dict(zip((m for m, _ in self.objectives), moved))
        return named[VAL_CLEAN] >= self.clean_threshold, moved

    def placed(self, recorded: dict[int, RungPoint], value: RungPoint) -> tuple[int, int, tuple]:
        """(the newcomer's place among the rung's trials and itself, the places kept, its sort key)."""
        points = [self.optimistic(value), *recorded.values()]  # the newcomer first: ties go its way
        keys = rung_keys(points)
        order = sorted(range(len(points)), key=lambda i: keys[i])
        return order.index(0), math.ceil(len(points) / self.reduction_factor), keys[0]

    def keeps(self, recorded: dict[int, RungPoint], value: RungPoint) -> bool:
        place, kept, _ = self.placed(recorded, value)
        return place < kept

    def why(self, recorded: dict[int, RungPoint], value: RungPoint) -> str:
        place, kept, (infeasible, rank, _, _) = self.placed(recorded, value)
        n = len(recorded) + 1
        where = "infeasible" if infeasible else "feasible"
        noise = ", ranked one standard error up" if self.noise_aware else ""
        return (
            f"{where}, Pareto rank {rank + 1} {'among the infeasible' if infeasible else 'among the feasible'}, "
            f"place {place + 1} of {n} trials at the rung, where the top {kept} go on{noise}"
        )
