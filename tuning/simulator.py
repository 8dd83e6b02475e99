"""Replay a search strategy against the tabulated benchmark on a simulated clock.

The simulator plays the part of Ray Tune's controller and of the trials, and nothing else: the
sampler is the project's ``StudySearcher`` over an Optuna study made by ``open_study`` (the same
sampler settings, the paper's presets enqueued first, the same tell rules, the feasibility
constraint), early stopping is the scheduler ``tuning.scheduler.make_scheduler`` builds (the
same decision code Ray calls), and every report is made by ``tuning.trainable.Reports`` from the
epochs a trial of that configuration ran in the table (``tuning.tabular.TableAnswers``). Calls
arrive in the order Tune makes them: ``scheduler.on_trial_result``, then, unless it said STOP,
``searcher.on_trial_result``; at a STOP or at the trial's last epoch
``scheduler.on_trial_complete`` and ``searcher.on_trial_complete``; a free worker asks the
searcher for the next trial at once.

Time: ``max_concurrent`` workers; each epoch of a trial takes the compute seconds the table
recorded (training plus evaluation). Cost: trial-epochs, the epochs each trial ran itself (a
stage I restored from the stage-I cache costs none); a search stops starting trials when its
trials have spent ``budget_epochs``, or after ``num_trials``.

A strategy is a few lines: a ``Strategy`` names the sampler and the scheduler as a search space
does (``search.sampler``, ``search.scheduler``), with any other space setting in ``settings``.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import optuna
from ray.tune.schedulers import TrialScheduler

from derd.config import apply_overrides
from derd.methods import total_epochs
from derd.pareto import hypervolume, signed
from tuning.scheduler import make_scheduler
from tuning.searcher import TRIAL_NUMBER, StudySearcher, enqueue_presets
from tuning.space import SearchSpace
from tuning.stage1_pool import Stage1Pool, stage1_part
from tuning.tabular import NoiseModel, TableAnswers, epoch_results
from tuning.trainable import Reports


@dataclass(frozen=True)
class Strategy:
    """How a search picks and stops trials: the space's sampler and scheduler (and any other
    ``SearchSpace`` setting, e.g. ``{"reduction_factor": 3}``), and ``race``: how many of the best
    candidates under the export's floor are re-run at another seed at the end of the budget, inside
    it (the export then chooses by their mean)."""

    name: str
    sampler: str
    scheduler: str
    settings: dict[str, Any] = field(default_factory=dict)
    race: int = 0

    def apply(self, space: SearchSpace, seed: int, num_trials: int, max_concurrent: int) -> SearchSpace:
        space = dataclasses.replace(space, params=list(space.params), presets=list(space.presets))
        space.sampler, space.scheduler, space.seed = self.sampler, self.scheduler, seed
        space.num_trials, space.max_concurrent = num_trials, max_concurrent
        for key, value in self.settings.items():
            setattr(space, key, value)
        space.validate_settings(f"strategy {self.name}")
        return space


@dataclass
class SimTrial:
    """One finished run of a simulated search: a trial, or (``replicate`` > 0) a race's re-run of one."""

    number: int
    keys: dict[str, Any]
    epochs: int  # epochs it ran itself (a restored stage I excluded)
    finished_at: float  # simulated seconds since the search started
    full_budget: bool
    feasible: bool
    objectives: list[float]  # what the search saw (noisy), signed: larger is better (derd.pareto.signed)
    stopped_early: bool
    truth: list[float]  # the noise-free answer at the same epoch, signed: what strategies are scored on
    replicate: int = 0


@dataclass
class SimResult:
    strategy: str
    seed: int
    trials: list[SimTrial]
    clock_s: float

    def in_order(self) -> list[tuple[float, SimTrial]]:
        """[(cumulative trial-epochs when it finished, run)], in order of finishing."""
        spent, out = 0.0, []
        for trial in sorted(self.trials, key=lambda t: (t.finished_at, t.number, t.replicate)):
            spent += trial.epochs
            out.append((spent, trial))
        return out

    def curve(self) -> list[tuple[float, float]]:
        """[(cumulative trial-epochs, hypervolume of the choosable front)] after each finished run,
        scored on the noise-free answers of the trials the search could choose (feasible as it
        saw them, full budget)."""
        points, pool = [], []
        for spent, trial in self.in_order():
            if trial.feasible and trial.full_budget and not trial.replicate:
                pool.append(trial.truth)
            points.append((spent, hypervolume(pool)))
        return points

    def best(self, index: int) -> float | None:
        """The best choosable trial's noise-free value of objective ``index`` (signed)."""
        values = [t.truth[index] for t in self.trials if t.feasible and t.full_budget]
        return max(values) if values else None

    def exports(
        self, floor: float, budgets: list[float], clean: int = 0, robust: int = 1
    ) -> list[SimTrial | None]:
        """The trial ``export --select best-robust --min-clean floor`` chooses after each of ``budgets``
        (ascending) trial-epochs, in one pass over the runs: among full-budget trials whose observed
        clean (the mean over its runs, race replicates included) meets the floor, the highest mean
        observed robust value."""
        sums: dict[int, list[float]] = {}  # trial number -> [clean sum, robust sum, runs]
        first: dict[int, SimTrial] = {}
        order, out, k = self.in_order(), [], 0
        for budget in budgets:
            while k < len(order) and order[k][0] <= budget:
                trial = order[k][1]
                if trial.full_budget:
                    total = sums.setdefault(trial.number, [0.0, 0.0, 0])
                    total[0] += trial.objectives[clean]
                    total[1] += trial.objectives[robust]
                    total[2] += 1
                    first.setdefault(trial.number, trial)
                k += 1
            means = {n: (c / m, r / m) for n, (c, r, m) in sums.items() if c / m >= floor}
            out.append(first[max(means, key=lambda n: (means[n][1], means[n][0]))] if means else None)
        return out

    def outcomes(self, floor: float, best_aa: float, budgets: list[float]) -> list[tuple[float, bool]]:
        """At each of ``budgets`` (ascending), the exported student's (regret, miss): ``best_aa`` (the
        best noise-free robust value the floor allows) minus its noise-free robust value (nothing to
        choose: ``best_aa``), and whether its noise-free clean misses the floor (its noisy clean put it
        above) or there is nothing to choose."""
        return [
            (best_aa - t.truth[1], t.truth[0] < floor) if t else (best_aa, True)
            for t in self.exports(floor, budgets)
        ]

    def exported(self, floor: float, budget: float = math.inf) -> SimTrial | None:
        return self.exports(floor, [budget])[0]

    def regret(self, floor: float, best_aa: float, budget: float = math.inf) -> float:
        return self.outcomes(floor, best_aa, [budget])[0][0]

    def misses(self, floor: float, budget: float = math.inf) -> bool:
        return self.outcomes(floor, 0.0, [budget])[0][1]

    def best_truth(self, floor: float) -> float:
        """The best noise-free robust value among this search's runs whose noise-free clean meets ``floor``."""
        return max((t.truth[1] for t in self.trials if t.full_budget and t.truth[0] >= floor), default=0.0)


@dataclass
class _Running:
    trial_id: str
    shim: SimpleNamespace  # what the scheduler reads of a Ray trial: its config
    results: list[dict[str, Any]]
    truth: list[dict[str, Any]]  # the same epochs, noise-free
    reports: Reports
    cost: list[int]  # 1 per epoch the trial runs itself, 0 for a restored one
    warmup: int  # epochs of its cacheable stage I (0: none)
    history: list[dict[str, Any]] = field(default_factory=list)
    replicate: int = 0


def simulate(
    space: SearchSpace,
    strategy: Strategy,
    answers: TableAnswers,
    *,
    seed: int,
    clean_threshold: float,
    num_trials: int = 10_000,
    budget_epochs: float | None = None,
    max_concurrent: int | None = None,
    noise: NoiseModel | None = None,
    race_floor: float | None = None,
) -> SimResult:
    """One search of ``strategy`` at ``seed`` against the table; its finished trials. ``noise``: the
    search sees every answer with a seed-to-seed draw (trial ``n`` of search ``seed``, run ``r``, gets
    draw (seed, n, r)); None: it sees the noise-free answers. ``race_floor``: the clean floor (points)
    of the export a racing strategy races for."""
    space = strategy.apply(space, seed, num_trials, max_concurrent or space.max_concurrent)
    answers.reset()
    storage = (
        optuna.storages.InMemoryStorage()
    )  # the same study API as a search's optuna.db, without the disk
    stopped: set[int] = set()
    searcher = StudySearcher(space, storage, f"sim-{strategy.name}-{seed}", clean_threshold, stopped)
    enqueue_presets(searcher.study, space)
    scheduler = make_scheduler(space, searcher.study, clean_threshold)
    searcher.stopped_early = stopped = getattr(scheduler, "stopped_early", stopped)
    loop = _EventLoop(
        space, answers, searcher, scheduler, stopped, clean_threshold, budget_epochs, noise, seed
    )
    if strategy.race:
        if race_floor is None:
            raise ValueError(f"strategy {strategy.name} races: give the export's floor (race_floor)")
        loop.race = (strategy.race, race_floor)
    trials, clock = loop.run()
    return SimResult(strategy.name, seed, trials, clock)


class _EventLoop:
    """Tune's controller on a simulated clock: workers, the sampler's suggestions, the scheduler's
    decisions, and (racing) re-runs of the best candidates when the budget left is theirs."""

    def __init__(
        self, space, answers, searcher, scheduler, stopped, threshold, budget_epochs, noise, seed
    ) -> None:
        self.space, self.answers, self.searcher, self.scheduler = space, answers, searcher, scheduler
        self.stopped, self.threshold, self.budget, self.noise, self.seed = (
            stopped,
            threshold,
            budget_epochs,
            noise,
            seed,
        )
        self.race: tuple[int, float] | None = None
        self.raced: list[int] = []
        self.events: list[tuple[float, int, str]] = []
        self.running: dict[str, _Running] = {}
        self.finished: list[SimTrial] = []
        self.trained_warmups: set[str] = set()  # stage-I runs finished in this search (the stage-I cache)
        self.clock, self.seq, self.started, self.spent = 0.0, 0, 0, 0
        self.max_epochs = max(space.total_epochs().values())

    def run(self) -> tuple[list[SimTrial], float]:
        while True:
            while len(self.running) < self.space.max_concurrent and self.start_next():
                pass
            if not self.events:
                return self.finished, self.clock
            self.clock, _, trial_id = heapq.heappop(self.events)
            self.advance(self.running[trial_id])

    def racing(self) -> bool:
        """The budget left, after what running trials will still spend, is the race's: k trial budgets."""
        if self.race is None or self.budget is None:
            return False
        committed = self.spent + sum(
            len(t.results) - len(t.history) for t in self.running.values() if not t.replicate
        )
        return self.budget - committed <= self.race[0] * self.max_epochs

    def start_next(self) -> bool:
        """Start a trial (or, racing, a replicate); False when there is none to start."""
        if self.racing():
            number = self.next_candidate()
            if number is None:
                return False
            first = next(t for t in self.finished if t.number == number)
            self.launch(f"race_{number:05d}", {**first.keys, TRIAL_NUMBER: number}, replicate=1)
            return True
        if self.started >= self.space.num_trials or (self.budget is not None and self.spent >= self.budget):
            return False
        trial_id = f"sim_{self.started:05d}"
        self.launch(trial_id, self.searcher.suggest(trial_id))
        self.started += 1
        return True

    def next_candidate(self) -> int | None:
        """The best full-budget trial under the race's floor not yet re-run (by observed robust value)."""
        k, floor = self.race
        if len(self.raced) >= k:
            return None
        pool = [
            t
            for t in self.finished
            if t.full_budget and not t.replicate and t.objectives[0] >= floor and t.number not in self.raced
        ]
        if not pool:
            return None
        best = max(pool, key=lambda t: (t.objectives[1], t.objectives[0]))
        self.raced.append(best.number)
        return best.number

    def launch(self, trial_id: str, config: dict[str, Any], replicate: int = 0) -> None:
        keys = {k: v for k, v in config.items() if k != TRIAL_NUMBER}
        truth = self.answers.row_for(keys)
        seen = (
            self.noise.perturb(truth, (self.seed, config[TRIAL_NUMBER], replicate)) if self.noise else truth
        )
        cached = warmup_id(keys) in self.trained_warmups and not replicate
        results = epoch_results(seen, cached_warmup=cached)
        cfg = apply_overrides(self.space.base_config(), keys)
        trial = _Running(
            trial_id,
            SimpleNamespace(config=config, trial_id=trial_id),
            results,
            epoch_results(truth, cached_warmup=cached),
            Reports(self.space.objectives, self.threshold, total_epochs(cfg)),
            [0 if r["cached"] else 1 for r in results],
            truth["warmup_epochs"],
            replicate=replicate,
        )
        self.running[trial_id] = trial
        heapq.heappush(self.events, (self.clock + _duration(results[0]), self.seq, trial_id))
        self.seq += 1

    def advance(self, trial: _Running) -> None:
        """The trial's next epoch ends: report it, and stop, finish or go on."""
        result = trial.results[len(trial.history)]
        trial.history.append(result)
        self.spent += trial.cost[len(trial.history) - 1]
        metrics = trial.reports.next(result, trial.history)
        last = len(trial.history) == len(trial.results)
        if trial.replicate:
            decision = TrialScheduler.CONTINUE
        else:
            if trial.warmup and len(trial.history) == trial.warmup and not result["cached"]:
                self.trained_warmups.add(
                    warmup_id(trial.shim.config)
                )  # the run loop writes the stage-I cache here
            decision = self.scheduler.on_trial_result(None, trial.shim, metrics)
            if decision != TrialScheduler.STOP:
                self.searcher.on_trial_result(trial.trial_id, metrics)
        if decision == TrialScheduler.STOP or last:
            if not trial.replicate:
                self.scheduler.on_trial_complete(None, trial.shim, metrics)
                self.searcher.on_trial_complete(trial.trial_id, result=metrics)
            self.finished.append(self.finish(trial, metrics))
            del self.running[trial.trial_id]
        else:
            heapq.heappush(
                self.events,
                (self.clock + _duration(trial.results[len(trial.history)]), self.seq, trial.trial_id),
            )
            self.seq += 1

    def finish(self, trial: _Running, metrics: dict[str, Any]) -> SimTrial:
        objectives = self.space.objectives
        truth = Reports(objectives, self.threshold, metrics["total_epochs"])
        for i, entry in enumerate(trial.truth[: len(trial.history)]):
            noise_free = truth.next(entry, trial.truth[: i + 1])
        number = trial.shim.config[TRIAL_NUMBER]
        return SimTrial(
            number,
            {k: v for k, v in trial.shim.config.items() if k != TRIAL_NUMBER},
            sum(trial.cost[: len(trial.history)]),
            self.clock,
            metrics["epoch"] >= metrics["total_epochs"],
            bool(metrics["search/feasible"]),
            signed(metrics, objectives),
            number in self.stopped and not trial.replicate,
            signed(noise_free, objectives),
            trial.replicate,
        )


def _duration(result: dict[str, Any]) -> float:
    if result["cached"]:
        return 0.0
    return result["time/epoch_s"] + result.get("time/eval_s", 0.0)


def warmup_id(keys: dict[str, Any]) -> str:
    """What a stage-I run is keyed by within one simulated search (seed, teachers and budget are
    the search's): the method and its stage-I keys, as the stage-I pool keys it (the run loop's
    cache key may also match across methods with the same prior teacher; the simulator never
    counts on that)."""
    return Stage1Pool.key(stage1_part(keys) or {})
