"""ASHA whose decisions survive a driver restart, on Ray Tune's public scheduler interface.

Ray's ``ASHAScheduler`` keys its rungs by Ray trial id and keeps them only in the driver (and
its periodic snapshot), so a resumed search would forget every rung: a trial that an
uninterrupted search stops at epoch 8 would run to the end. This scheduler keeps the rungs
itself, keyed by the Optuna trial number (the trial's identity across sessions), refills
them on start from the scores the study holds (``tuning.searcher``), and records which
trials it stopped, so the searcher can tell Optuna PRUNED for those and leave interrupted
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

from tuning.searcher import TRIAL_NUMBER

TIME_ATTR, METRIC = "epoch", "search/score"


def make_scheduler(space, base_config: dict[str, Any], study) -> TrialScheduler:
    """The space's early stopping: ASHA on ``search/score`` by epoch, its rungs rebuilt from the
    study's stored scores and the paper's presets protected; FIFO when early stopping is off.
    The grace period defaults to the first evaluation after DERD's stage I."""
    from derd.config import from_dict

    if space.scheduler != "asha":
        return FIFOScheduler()
    max_epochs = max(space.total_epochs().values())
    history = {t.number: {int(e): s for e, s in t.user_attrs.get("scores", {}).items()} for t in study.trials}
    base_cfg = from_dict(base_config)
    grace = space.grace_period or min(max_epochs, base_cfg.stage1.epochs + base_cfg.eval.every)
    presets = {t.number for t in study.trials if t.user_attrs.get("preset")}
    return ResumableASHA(history=history, protected=presets, max_t=max_epochs, grace_period=max(1, min(grace, max_epochs)),
                         reduction_factor=space.reduction_factor)


class ResumableASHA(FIFOScheduler):
    def __init__(self, *, max_t: int, grace_period: int, reduction_factor: float,
                 history: dict[int, dict[int, float]] | None = None, protected: set[int] = frozenset()) -> None:
        super().__init__()
        if not 0 < grace_period <= max_t or reduction_factor <= 1:
            raise ValueError(f"ASHA needs 0 < grace_period ({grace_period}) <= max_t ({max_t}) and reduction_factor > 1")
        self.max_t, self.reduction_factor = max_t, reduction_factor
        count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
        # (milestone, {trial number: score recorded there}), the highest milestone first
        self.rungs: list[tuple[float, dict[int, float]]] = [
            (grace_period * reduction_factor ** k, {}) for k in reversed(range(count))]
        self.stopped_early: set[int] = set()
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

    def record(self, number: int, epoch: int, score: float) -> str:
        """ASHA's rule for one result: record the score at the rung it reaches first, STOP if it is
        below that rung's cutoff."""
        for milestone, recorded in self.rungs:
            if epoch < milestone or number in recorded:
                continue
            cutoff = self.cutoff(recorded)
            recorded[number] = score
            return TrialScheduler.STOP if cutoff is not None and score < cutoff else TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        if TIME_ATTR not in result or METRIC not in result:
            return TrialScheduler.CONTINUE
        number = trial.config[TRIAL_NUMBER]
        if result[TIME_ATTR] >= self.max_t:
            return TrialScheduler.STOP
        action = self.record(number, result[TIME_ATTR], result[METRIC])
        if action == TrialScheduler.STOP and result[TIME_ATTR] < result.get("total_epochs", 0):
            if number in self.protected:
                return TrialScheduler.CONTINUE  # its score still sets the rung's cutoff for the others
            self.stopped_early.add(number)
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict[str, Any]) -> None:
        if TIME_ATTR in result and METRIC in result:
            self.record(trial.config[TRIAL_NUMBER], result[TIME_ATTR], result[METRIC])
