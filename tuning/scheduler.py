"""ASHA whose decisions survive a driver restart.

Ray's ``ASHAScheduler`` keys its rungs by Ray trial id and lives only in the driver (and
its periodic snapshot), so a resumed search forgets every rung: a trial that an
uninterrupted search stops at epoch 8 would run to the end. This subclass keys rungs by
the Optuna trial number (the trial's identity across sessions), refills them on start from
the scores the study holds (``tuning.searcher``), and records which trials it stopped, so
the searcher can tell Optuna PRUNED for those and leave interrupted ones RUNNING. The
paper's presets are never stopped: they are the reference every trial is compared with,
so they run the full trial budget (their scores still count at every rung).

The rule is ASHA's: at each rung (the grace period times powers of the reduction factor,
in epochs), a trial continues if its ``search/score`` is in the top 1/reduction_factor of
the scores recorded at that rung. ``search/score`` is the mean of the (signed) objectives,
minus 100 while the trial is infeasible (``tuning.trainable.search_score``).
"""
from __future__ import annotations

from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from tuning.searcher import TRIAL_NUMBER


class _Keyed:
    """A view of a Ray trial whose ``trial_id`` is the stable key ``n<optuna number>``."""

    def __init__(self, trial) -> None:
        self._trial = trial
        self.trial_id = f"n{trial.config[TRIAL_NUMBER]}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


class ResumableASHA(AsyncHyperBandScheduler):
    def __init__(self, *, history: dict[int, dict[int, float]] | None = None, protected: set[int] = frozenset(),
                 **kwargs: Any) -> None:
        super().__init__(time_attr="epoch", metric="search/score", mode="max", **kwargs)
        self.stopped_early: set[int] = set()
        self.protected = set(protected)  # the paper's presets: always run the full budget
        for number, scores in (history or {}).items():
            for milestone, recorded in self._brackets[0]._rungs:
                reached = sorted(e for e in scores if e >= milestone)
                if reached:
                    recorded[f"n{number}"] = scores[reached[0]]

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, _Keyed(trial))

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, _Keyed(trial), result)
        number = trial.config[TRIAL_NUMBER]
        if action == TrialScheduler.STOP and result.get("epoch", 0) < result.get("total_epochs", 0):
            if number in self.protected:
                return TrialScheduler.CONTINUE  # its score still sets the rung's cutoff for the others
            self.stopped_early.add(number)
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict[str, Any]) -> None:
        super().on_trial_complete(tune_controller, _Keyed(trial), result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        super().on_trial_remove(tune_controller, _Keyed(trial))
