"""The search's Optuna study as the driver holds it: every trial in memory, written through to
``optuna.db``, and read back only where the driver itself changed it.

Optuna's cache over an SQL store (``_CachedStorage``) keeps finished trials only: it re-reads every
unfinished trial from the database on each read, since another process may have changed it. A
sampler reads the study once per suggested parameter, so with 256 trials running a trial start
rebuilt 256 trials a dozen times from SQLite (``benchmarks/bench_scale.py``: most of a start's
second at 256 concurrent trials). Here the driver is the study's only writer (Ray workers report to
it; they never open the study), so a trial changes only through this storage: a read fetches just
the trials written since the last read (and any new trial), whatever their state.
"""

from __future__ import annotations

from typing import Any

from optuna.storages import RDBStorage

try:  # Optuna's cache over an SQL store, extended; if a later Optuna moves it, Optuna's own cache serves
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
except ImportError:  # pragma: no cover - depends on the installed Optuna
    _CachedStorage = None


def driver_storage(url: str) -> Any:
    """The study storage of the search's driver: ``DriverStorage``, or Optuna's ``RDBStorage`` (which
    Optuna wraps in its own cache) where the installed Optuna lacks the cache this extends."""
    return DriverStorage(url) if _CachedStorage is not None else RDBStorage(url)


class DriverStorage(_CachedStorage or object):
    """``RDBStorage(url)`` behind a cache of all its trials, for the one process that writes it."""

    def __init__(self, url: str) -> None:
        super().__init__(RDBStorage(url))
        self._loaded: set[int] = set()  # studies read whole once
        self._written: dict[int, set[int]] = {}  # study id -> ids of its trials written since read
        self._newest: dict[int, int] = {}  # study id -> the highest trial id in the cache

    @property
    def rdb(self) -> RDBStorage:
        return self._backend

    def _wrote(self, trial_id: int) -> None:
        with self._lock:
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            self._written.setdefault(study_id, set()).add(trial_id)

    def set_trial_param(self, trial_id: int, *args: Any, **kwargs: Any) -> None:
        super().set_trial_param(trial_id, *args, **kwargs)
        self._wrote(trial_id)

    def set_trial_state_values(self, trial_id: int, *args: Any, **kwargs: Any) -> bool:
        try:
            return super().set_trial_state_values(trial_id, *args, **kwargs)
        finally:
            self._wrote(trial_id)

    def set_trial_intermediate_value(self, trial_id: int, *args: Any, **kwargs: Any) -> None:
        super().set_trial_intermediate_value(trial_id, *args, **kwargs)
        self._wrote(trial_id)

    def set_trial_user_attr(self, trial_id: int, *args: Any, **kwargs: Any) -> None:
        super().set_trial_user_attr(trial_id, *args, **kwargs)
        self._wrote(trial_id)

    def set_trial_system_attr(self, trial_id: int, *args: Any, **kwargs: Any) -> None:
        super().set_trial_system_attr(trial_id, *args, **kwargs)
        self._wrote(trial_id)

    def get_trial(self, trial_id: int):
        known = self._trial_id_to_study_id_and_number.get(trial_id)
        if known is None:
            return self._backend.get_trial(trial_id)
        self._read_trials_from_remote_storage(known[0])
        return self._studies[known[0]].trials[known[1]]

    def _add_trials_to_cache(self, study_id: int, trials: list) -> None:
        super()._add_trials_to_cache(study_id, trials)
        self._newest[study_id] = max([self._newest.get(study_id, -1), *(t._trial_id for t in trials)])

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        with self._lock:
            self._studies.setdefault(study_id, _StudyInfo())
            if study_id not in self._loaded:
                trials = self._backend._get_trials(study_id, None, set(), -1)  # all of them, once
                self._loaded.add(study_id)
            else:
                written = self._written.pop(study_id, set())
                if not written:
                    return
                trials = self._backend._get_trials(study_id, None, written, self._newest.get(study_id, -1))
            self._add_trials_to_cache(study_id, trials)
