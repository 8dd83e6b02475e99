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
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import optuna
from ray.tune.schedulers import TrialScheduler

from derd.config import apply_overrides, to_dict
from derd.methods import total_epochs
from derd.pareto import hypervolume, signed
from tuning.searcher import TRIAL_NUMBER, StudySearcher, enqueue_presets
from tuning.scheduler import make_scheduler
from tuning.space import SearchSpace
from tuning.stage1_pool import Stage1Pool, stage1_part
from tuning.tabular import TableAnswers, epoch_results
from tuning.trainable import Reports


@dataclass(frozen=True)
class Strategy:
    """How a search picks and stops trials: the space's sampler and scheduler (and any other
    ``SearchSpace`` setting, e.g. ``{"reduction_factor": 3}``)."""

    name: str
    sampler: str
    scheduler: str
    settings: dict[str, Any] = field(default_factory=dict)

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
    """One finished trial of a simulated search."""

    number: int
    keys: dict[str, Any]
    epochs: int           # epochs it ran itself (a restored stage I excluded)
    finished_at: float    # simulated seconds since the search started
    full_budget: bool
    feasible: bool
    objectives: list[float]  # signed, larger is better (derd.pareto.signed)
    stopped_early: bool


@dataclass
class SimResult:
    strategy: str
    seed: int
    trials: list[SimTrial]
    clock_s: float

    def curve(self) -> list[tuple[float, float]]:
        """[(cumulative trial-epochs, hypervolume of the choosable front)] after each finished trial."""
        points, spent, pool = [], 0.0, []
        for trial in sorted(self.trials, key=lambda t: (t.finished_at, t.number)):
            spent += trial.epochs
            if trial.feasible and trial.full_budget:
                pool.append(trial.objectives)
            points.append((spent, hypervolume(pool)))
        return points

    def best(self, index: int) -> float | None:
        """The best choosable trial's value of objective ``index`` (signed)."""
        values = [t.objectives[index] for t in self.trials if t.feasible and t.full_budget]
        return max(values) if values else None


@dataclass
class _Running:
    trial_id: str
    shim: SimpleNamespace  # what the scheduler reads of a Ray trial: its config
    results: list[dict[str, Any]]
    reports: Reports
    cost: list[int]  # 1 per epoch the trial runs itself, 0 for a restored one
    warmup: int      # epochs of its cacheable stage I (0: none)
    history: list[dict[str, Any]] = field(default_factory=list)


def simulate(space: SearchSpace, strategy: Strategy, answers: TableAnswers, *, seed: int, clean_threshold: float,
             num_trials: int = 10_000, budget_epochs: float | None = None,
             max_concurrent: int | None = None) -> SimResult:
    """One search of ``strategy`` at ``seed`` against the table; its finished trials."""
    space = strategy.apply(space, seed, num_trials, max_concurrent or space.max_concurrent)
    base_config = to_dict(space.base_config())
    answers.reset()
    storage = optuna.storages.InMemoryStorage()  # the same study API as a search's optuna.db, without the disk
    stopped: set[int] = set()
    searcher = StudySearcher(space, storage, f"sim-{strategy.name}-{seed}", clean_threshold, stopped)
    enqueue_presets(searcher.study, space)
    scheduler = make_scheduler(space, base_config, searcher.study, clean_threshold)
    searcher.stopped_early = stopped = getattr(scheduler, "stopped_early", stopped)
    trials, clock = _event_loop(space, answers, searcher, scheduler, stopped, clean_threshold, budget_epochs)
    return SimResult(strategy.name, seed, trials, clock)


def _event_loop(space: SearchSpace, answers: TableAnswers, searcher: StudySearcher, scheduler, stopped: set[int],
                threshold: float, budget_epochs: float | None) -> tuple[list[SimTrial], float]:
    events: list[tuple[float, int, str]] = []
    running: dict[str, _Running] = {}
    finished: list[SimTrial] = []
    trained_warmups: set[str] = set()  # stage-I runs finished in this search (the stage-I cache)
    clock, seq, started, spent = 0.0, 0, 0, 0
    objectives = space.objectives
    while True:
        while (len(running) < space.max_concurrent and started < space.num_trials
               and (budget_epochs is None or spent < budget_epochs)):
            trial_id = f"sim_{started:05d}"
            config = searcher.suggest(trial_id)
            started += 1
            keys = {k: v for k, v in config.items() if k != TRIAL_NUMBER}
            row = answers.row_for(keys)
            results = epoch_results(row, cached_warmup=warmup_id(keys) in trained_warmups)
            cfg = apply_overrides(space.base_config(), keys)
            trial = _Running(trial_id, SimpleNamespace(config=config, trial_id=trial_id), results,
                             Reports(objectives, threshold, total_epochs(cfg)),
                             [0 if r["cached"] else 1 for r in results], row["warmup_epochs"])
            running[trial_id] = trial
            heapq.heappush(events, (clock + _duration(results[0]), seq, trial_id))
            seq += 1
        if not events:
            break
        clock, _, trial_id = heapq.heappop(events)
        trial = running[trial_id]
        result = trial.results[len(trial.history)]
        trial.history.append(result)
        spent += trial.cost[len(trial.history) - 1]
        metrics = trial.reports.next(result, trial.history)
        if trial.warmup and len(trial.history) == trial.warmup and not result["cached"]:
            trained_warmups.add(warmup_id(trial.shim.config))  # the run loop writes the stage-I cache here
        decision = scheduler.on_trial_result(None, trial.shim, metrics)
        last = len(trial.history) == len(trial.results)
        if decision != TrialScheduler.STOP:
            searcher.on_trial_result(trial_id, metrics)
        if decision == TrialScheduler.STOP or last:
            scheduler.on_trial_complete(None, trial.shim, metrics)
            searcher.on_trial_complete(trial_id, result=metrics)
            number = trial.shim.config[TRIAL_NUMBER]
            finished.append(SimTrial(
                number, {k: v for k, v in trial.shim.config.items() if k != TRIAL_NUMBER}, sum(trial.cost[:len(trial.history)]),
                clock, metrics["epoch"] >= metrics["total_epochs"], bool(metrics["search/feasible"]),
                signed(metrics, objectives), number in stopped))
            del running[trial_id]
        else:
            heapq.heappush(events, (clock + _duration(trial.results[len(trial.history)]), seq, trial_id))
            seq += 1
    return finished, clock


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
