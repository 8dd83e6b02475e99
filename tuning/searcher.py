"""A Ray Tune searcher over a persistent Optuna study: ask and tell, resumable from the study alone.

Why not Ray's ``OptunaSearch``: it tells Optuna that trials the scheduler stopped early are
COMPLETE with their last (low-fidelity) values, keeps its trial map only in Ray's
experiment snapshot (so a driver killed between snapshots loses or repeats trials), and
takes no feasibility constraint. Here:

* the Optuna trial number is a trial's identity: it travels in the Ray config under
  ``TRIAL_NUMBER`` and names the trial's MLflow run and checkpoint folder;
* the val objectives (when evaluated) are stored as the trial's user attribute
  ``intermediate``, and, under ASHA, every epoch's ``search/score`` as ``scores`` (Optuna's
  ``report`` does not exist for multi-objective studies), so a resumed search rebuilds the
  scheduler's rungs from them (MO-ASHA's from ``intermediate``: no write per epoch, which a
  driver of hundreds of trials would pay for in SQLite commits);
* a trial that ran its full budget is told COMPLETE with its objectives; one the scheduler
  stopped too, with its objectives where it stopped, marked ``stopped_early`` and counted as
  barely infeasible (``trial_constraint``: TPE ranks it below every feasible full-budget
  trial). Not PRUNED: a multi-objective study stores no values for a pruned trial, and
  Optuna's TPE then fails as soon as one enters its good group, which happens once stopped
  trials outnumber full ones (``benchmarks/bench_scale.py`` hit it at 64 concurrent trials);
  a failed trial is told FAIL;
  a trial interrupted with the driver stays RUNNING and is handed out again, with the same
  parameters, to the first ``suggest`` of the resumed search (a driver killed between asking a
  trial and drawing its keys leaves it without some: they are drawn then, as that trial's seed
  would have drawn them);
* feasibility: the user attribute ``constraint`` = [threshold - val/clean_acc] (<= 0 is
  feasible) feeds TPE's and NSGA-II's ``constraints_func``.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

from ray.tune.search import Searcher

from derd.evaluate import VAL_CLEAN
from tuning.seeded import TrialSeeded
from tuning.space import SearchSpace
from tuning.stage1_pool import SHARED_FROM, TRAINED, Stage1Pool
from tuning.study_storage import driver_storage

TRIAL_NUMBER = "trial_number"  # key in a Ray trial's config: the Optuna trial number


STOPPED = "stopped_early"  # user attribute: the scheduler stopped this trial
STOPPED_VIOLATION = 1e-6  # a stopped trial's least violation: below every feasible full-budget trial


def trial_constraint(trial) -> list[float]:
    """Optuna's constraints_func: the stored violation (<= 0 is feasible).

    A trial the scheduler stopped (user attribute ``stopped_early``) counts as barely infeasible:
    its objectives are those of a partial budget, so TPE and NSGA-II rank it below every feasible
    full-budget trial and never compare its values with theirs (TPE weighs it by its violation)."""
    violation = list(trial.user_attrs.get("constraint", [math.inf]))
    if trial.user_attrs.get(STOPPED):
        return [max(v, STOPPED_VIOLATION) for v in violation]
    return violation


def make_sampler(space: SearchSpace):
    """The space's Optuna sampler: ``search.sampler`` after ``search.startup_trials`` finished trials
    (presets included), seeded per trial (``tuning.seeded``), behind the presets' prior when
    ``search.prior_weight`` > 0."""
    import optuna

    warnings.filterwarnings(
        "ignore", category=optuna.exceptions.ExperimentalWarning
    )  # constant_liar, constraints_func

    def sampler_seeded(seed: int) -> optuna.samplers.BaseSampler:
        if space.sampler == "tpe":
            conditional = len(space.methods) > 1
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                group=conditional,
                constant_liar=True,
                n_startup_trials=space.startup_trials,
                constraints_func=trial_constraint,
            )
        elif space.sampler == "gp":
            # conditional keys (one method's own) fall back to random sampling, which is what they need
            return optuna.samplers.GPSampler(
                seed=seed,
                n_startup_trials=space.startup_trials,
                constraints_func=trial_constraint,
                warn_independent_sampling=False,
            )
        elif space.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(
                seed=seed,
                population_size=max(4, space.max_concurrent * 2),
                constraints_func=trial_constraint,
            )
        else:
            return optuna.samplers.RandomSampler(seed=seed)

    sampler = TrialSeeded(sampler_seeded, space.seed)  # a resumed search draws as the uninterrupted one
    if space.prior_weight > 0:
        from tuning.prior import PriorSampler

        sampler = PriorSampler(sampler, space.prior_centers or space.presets, space.prior_weight, space.seed)
    return sampler


def open_study(space: SearchSpace, storage, name: str):
    """Create or load the search's study (``storage``: a URL or an Optuna storage), with metric names
    set (Optuna's plots and dashboard show them)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(space),
        load_if_exists=True,
        directions=["maximize" if mode == "max" else "minimize" for _, mode in space.objectives],
    )
    if study.metric_names is None:
        study.set_metric_names(space.objective_names())
    return study


def enqueue_presets(study, space: SearchSpace) -> None:
    """A new study's first trials: the space's presets (the paper's weights per searched method)."""
    if not study.trials:
        for point in space.presets:
            study.enqueue_trial(point, user_attrs={"preset": True})


class StudyRecords:
    """A study's trials by number, through Optuna's public storage interface: the handle of a trial
    a killed driver left RUNNING, and user attributes of any trial."""

    def __init__(self, storage: Any, name: str) -> None:
        """``storage``: a database URL (a search's ``optuna.db``), or an Optuna storage object (the
        simulator's in-memory one)."""
        self.storage = driver_storage(storage) if isinstance(storage, str) else storage
        self.name = name

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(
            self.storage.get_study_id_from_name(self.name), number
        )

    def handle(self, study, number: int):
        """A live ``optuna.trial.Trial`` of trial ``number`` (to set attributes and tell it later)."""
        import optuna

        return optuna.trial.Trial(study, self.trial_id(number))

    def set_user_attr(self, number: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.trial_id(number), key, value)


class StudySearcher(Searcher):
    """Suggests Ray trials from an Optuna study (define-by-run over the space) and tells it results."""

    def __init__(
        self,
        space: SearchSpace,
        storage_url: Any,
        study_name: str,
        clean_threshold: float,
        stopped_early: set[int],
    ) -> None:
        super().__init__(metric=None, mode=None)
        self.space, self.storage_url, self.study_name = space, storage_url, study_name
        self.clean_threshold = clean_threshold
        self.stopped_early = stopped_early  # filled by the scheduler: numbers of trials it stopped
        self._study = None
        self._records: StudyRecords | None = None
        self._live: dict[str, Any] = {}  # Ray trial id -> optuna.Trial
        self._orphans: list[int] | None = None
        self._attrs: dict[int, dict[str, dict]] = {}
        self._params: dict[str, dict[str, Any]] = {}  # Ray trial id -> its sampled parameters
        self.pool = Stage1Pool(space.share_stage1, space.seed, space.objectives)
        self._pool_built = False

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the search algorithm with its experiment
        return {**self.__dict__, "_study": None, "_records": None, "_live": {}, "_params": {}}

    @property
    def records(self) -> StudyRecords:
        if self._records is None:
            self._records = StudyRecords(self.storage_url, self.study_name)
        return self._records

    @property
    def study(self):
        if self._study is None:
            self._study = open_study(self.space, self.records.storage, self.study_name)
        return self._study

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def _running_orphans(self) -> list[int]:
        from optuna.trial import TrialState

        if self._orphans is None:
            self._orphans = [
                t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            ]
        return self._orphans

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        orphans = self._running_orphans()
        if orphans:  # a trial interrupted with the previous driver: same number, same parameters
            frozen = self.study.trials[orphans.pop(0)]
            self.study.sampler.before_trial(self.study, frozen)  # seeded by its number (tuning.seeded)
            ot = self.records.handle(self.study, frozen.number)
            # its drawn keys read back; any the killed driver had not drawn, drawn now
            params = self.space.sample(ot)
            self._attrs[frozen.number] = {
                k: dict(frozen.user_attrs.get(k, {})) for k in ("scores", "intermediate")
            }
        else:
            self._share_stage1()
            ot = self.study.ask()
            params = self.space.sample(ot)
        self._live[trial_id], self._params[trial_id] = ot, params
        return {**params, TRIAL_NUMBER: ot.number}

    def _share_stage1(self) -> None:
        """With the pool's probability, fix the next trial's stage-I keys to a trained stage I's
        (``tuning.stage1_pool``): enqueued, so the sampler samples the rest around them. Never
        while presets wait (they are asked first)."""
        from optuna.trial import TrialState

        if not self._pool_built:
            self.pool.rebuild(self.study)
            self._pool_built = True
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        choice = self.pool.choose()
        if choice is not None:
            source, part = choice
            self.study.enqueue_trial(part, user_attrs={SHARED_FROM: source})

    def _set(self, ot, key: str, epoch: int, value: Any) -> None:
        record = self._attrs.setdefault(ot.number, {}).setdefault(key, {})
        record[str(epoch)] = value
        ot.set_user_attr(key, record)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        ot = self._live.get(trial_id)
        if ot is None or "epoch" not in result:
            return
        if self.pool.observe(ot.number, self._params.get(trial_id, {}), result):
            ot.set_user_attr(TRAINED, True)
        if result.get("val_evaluated"):  # the epochs a rung may record (tuning.scheduler.evaluated)
            self._set(ot, "intermediate", result["epoch"], [result[m] for m in self.space.objective_names()])
            if self.space.scheduler == "asha":
                self._set(ot, "scores", result["epoch"], result["search/score"])

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        from optuna.trial import TrialState

        ot = self._live.pop(trial_id, None)
        params = self._params.pop(trial_id, {})
        if ot is None:
            return
        if error or not result or "epoch" not in result:
            self._attrs.pop(ot.number, None)
            self.study.tell(ot, state=TrialState.FAIL)
            return
        self._live[trial_id], self._params[trial_id] = ot, params
        self.on_trial_result(trial_id, result)  # Tune hands the last result to on_trial_complete only
        del self._live[trial_id], self._params[trial_id]
        self._attrs.pop(ot.number, None)  # in the study now: the driver holds running trials' records only
        finished = result["epoch"] >= result["total_epochs"]
        if not finished and ot.number not in self.stopped_early:
            return  # interrupted with the driver: stays RUNNING, resumed by the next session
        ot.set_user_attr("epochs", int(result["epoch"]))
        ot.set_user_attr("constraint", [self.clean_threshold - result[VAL_CLEAN]])
        if not finished:
            ot.set_user_attr(STOPPED, True)
        self.study.tell(ot, [result[m] for m in self.space.objective_names()])

    def set_user_attr(self, number: int, key: str, value: Any) -> None:
        """For the MLflow logger: the trial's MLflow run id beside its Optuna record."""
        self.records.set_user_attr(number, key, value)

    def close(self) -> None:
        """Release the study's database connections (a simulator opens one study per search)."""
        storage = self._records and self._records.storage
        engine = getattr(getattr(storage, "rdb", storage), "engine", None)  # DriverStorage's database
        if engine is not None:
            engine.dispose()
        self._study, self._records = None, None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:  # the state lives in the Optuna study
            json.dump({"study": self.study_name, "storage": str(self.storage_url)}, f)

    def restore(self, checkpoint_path: str) -> None:
        pass
