"""Running a checked ``Plan`` (``tuning.plan``): the preflight, Ray, the Tuner and its callbacks.

``run_plan`` measures the teachers (and makes the synthetic validation set when the search scores on one),
starts or joins Ray and calls ``fit``: the folder and its record, the parent run (``tuning.parent``), the
persistent Optuna study with the presets queued, the parts a session needs (``build_parts``: the scheduler,
the searcher over the study, the MLflow logger on the driver, each given what it needs when built), then
Ray's ``Tuner`` over the trainable, and at the end the summary (``tuning.summary``).

This module imports Ray: ``tuning/search.py`` imports it only once a local search has turned Ray's
multi-machine mode off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read when Ray is first imported).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray import tune
from ray.tune import CLIReporter

from derd.config import from_dict
from derd.data import dataset_info
from derd.device import resolve_device
from derd.validation import SyntheticValidation, load_validation_set, make_validation_set, save_validation_set
from tuning import processes
from tuning.checks import check_cluster_resources, local_token_auth, set_aside, teacher_preflight
from tuning.mlflow_logger import MLflowSearchLogger
from tuning.parent import mlflow_parent
from tuning.plan import LOCAL, Plan
from tuning.records import Tag
from tuning.scheduler import make_scheduler
from tuning.searcher import TRIAL_NUMBER, StudySearcher, enqueue_presets, open_study
from tuning.session import SessionClock, write_record
from tuning.space import SearchSpace
from tuning.sqlite_wal import write_ahead_in
from tuning.summary import finish_search
from tuning.trainable import derd_trainable

ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # a trial the search counts as run

Trainable = Callable[..., None]


@dataclass(frozen=True, kw_only=True)
class Preflight:
    """What the search measured before any trial: the teachers' scores, the feasibility threshold on val
    clean accuracy, and the synthetic validation set when trials are scored on one."""

    teachers: dict[str, dict[str, float]]
    threshold: float
    synthetic: SyntheticValidation | None = None


@dataclass(frozen=True, kw_only=True)
class SearchParts:
    """The objects one session of a search runs with, each built with what it needs."""

    scheduler: Any  # a Ray TrialScheduler (tuning.scheduler.make_scheduler)
    searcher: StudySearcher
    logger: MLflowSearchLogger


def run_plan(
    plan: Plan, trainable: Trainable | None = None, trainable_params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The preflight, then the search on Ray (started here and shut down after, or joined); the summary."""
    write_ahead_in(plan.folder.root)
    synthetic = synthetic_validation(plan)
    teachers, threshold = teacher_preflight(plan, val=synthetic.dataset() if synthetic else None)
    preflight = Preflight(teachers=teachers, threshold=threshold, synthetic=synthetic)
    reaper = None if ray.is_initialized() else processes.start_reaper()
    started = _init_ray(plan)
    try:
        check_cluster_resources(plan.space.cpus_per_trial, plan.space.gpus_per_trial)
        return fit(
            plan,
            preflight,
            ray_processes=processes.descendants() if started else {},
            trainable=trainable,
            trainable_params=trainable_params,
        )
    finally:
        if started:
            ray.shutdown()
        if reaper is not None:
            processes.stop_reaper(reaper)


def synthetic_validation(plan: Plan) -> SyntheticValidation | None:
    """With ``eval.validation: synthetic``, the search's validation set (``derd.validation``): the one in its
    folder (a resumed search), else made now from the teachers, seeded by the search's seed; None for real val."""
    cfg = from_dict(plan.base_config)
    if cfg.eval.validation != "synthetic":
        return None
    info = dataset_info(cfg.data.dataset, cfg.data.image_size)
    if plan.folder.synthetic_val.is_file():
        return load_validation_set(plan.folder.synthetic_val, info)
    print("making the synthetic validation set from the teachers (no real image is read) ...", flush=True)
    made = make_validation_set(
        plan.experts, info, cfg.synthetic_val, cfg.seed, device=resolve_device(cfg.device)
    )
    plan.experts.to(torch.device("cpu"))  # trials receive them pickled, and a CPU node has no CUDA
    stats = made.stats
    print(
        f"synthetic validation set: {stats['n_images']} images ({stats['procedure']}), the teachers agree on "
        f"{100 * stats['teacher_agreement']:.1f}% of {stats['n_drawn']} drawn; per class {stats['class_counts']}; "
        f"made in {stats['seconds']:.0f} s",
        flush=True,
    )
    return made


def _init_ray(plan: Plan) -> bool:
    """Start or join Ray; returns whether this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter takes our metric columns
    # short epochs (digits) force frequent experiment snapshots: no warning each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if plan.address in LOCAL:
        local_token_auth()
    ray.init(
        address="local" if plan.address in LOCAL else plan.address,
        include_dashboard=False,
        log_to_driver=True,
        logging_level="WARNING",
    )
    return True


def fit(
    plan: Plan,
    preflight: Preflight,
    *,
    ray_processes: dict[int, float],
    trainable: Trainable | None = None,
    trainable_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One session of the search: its folder and record, the parent run, the study and the parts, then the
    trials the search still lacks (none: the summary only), then the summary."""
    record = open_session(plan, preflight)
    client, exp_id, parent_id = _parent(plan, preflight)
    study = open_study(plan.space, plan.folder.optuna_uri, plan.name)
    enqueue_presets(study, plan.space)
    parts = build_parts(plan, study, preflight.threshold, exp_id, parent_id)
    if plan.resume:
        parts.logger.reconcile(study, plan.space.objectives, preflight.threshold)
    done = sum(t.state in ENDED for t in study.trials)
    if plan.space.num_trials - done <= 0:
        print(f"search {plan.name} already finished ({done} trials); nothing to run", flush=True)
        return finish_search(client, exp_id, parent_id, plan, record, interrupted=False)
    record.update(
        ray_processes=ray_processes, ray_mark=os.environ.get(processes.MARK, ""), driver_pid=os.getpid()
    )
    trial = trial_function(plan, preflight.threshold, trainable or derd_trainable, trainable_params or {})
    interrupted = run_trials(plan, parts, trial, record, plan.space.num_trials - done)
    return finish_search(client, exp_id, parent_id, plan, record, interrupted=interrupted)


def _parent(plan: Plan, preflight: Preflight) -> tuple[MlflowClient, str, str]:
    """(a client of the search's store, the experiment id, the parent run id), the parent tagged with the
    user's --min-clean (which the summary and analysis/export.py read from it)."""
    synthetic = preflight.synthetic
    exp_id, parent_id = mlflow_parent(
        plan, preflight.teachers, preflight.threshold, synthetic.stats if synthetic else None
    )
    client = MlflowClient(plan.tracking_uri)
    if plan.min_clean:
        client.set_tag(parent_id, Tag.MIN_CLEAN, plan.min_clean)
    return client, exp_id, parent_id


def run_trials(plan: Plan, parts: SearchParts, trial: Any, record: dict[str, Any], num_samples: int) -> bool:
    """Ray's Tuner over ``num_samples`` more trials, this session clocked in the record; returns whether the
    search was left unfinished (interrupted, or trials still running for a --resume)."""
    clock = SessionClock(
        plan.folder.record, record
    )  # the session counts from here, even if this driver is killed
    tuner = make_tuner(
        plan,
        parts,
        trial,
        callbacks=[parts.logger, clock],
        num_samples=num_samples,
        session=len(record["sessions"]),
    )
    try:
        tuner.fit()
    finally:
        clock.close()
        parts.logger.flush()  # the epochs still buffered (an interrupted search)
    study = open_study(plan.space, plan.folder.optuna_uri, plan.name)
    unfinished = any(t.state == TrialState.RUNNING for t in study.trials)
    return unfinished or sum(t.state in ENDED for t in study.trials) < plan.space.num_trials


def open_session(plan: Plan, preflight: Preflight) -> dict[str, Any]:
    """The folder's first writes: running trials' unreadable checkpoints set aside, the space with this session's
    settings (what the next --resume reads), the synthetic validation set, and search.json; returns the record."""
    space, folder = plan.space, plan.folder
    folder.root.mkdir(parents=True, exist_ok=True)
    set_aside(plan.unreadable)  # the first write of a resume: those trials restart from their start
    record = dict(plan.record) or {
        "name": plan.name,
        "dataset": space.dataset,
        "out": str(plan.out),
        "tracking_uri": plan.tracking_uri,
        "created": time.time(),
        "sessions": [],
    }
    folder.space.write_text(space.to_yaml())
    record.update(clean_threshold=preflight.threshold, teachers=preflight.teachers)
    synthetic = preflight.synthetic
    if synthetic is not None:
        if not folder.synthetic_val.is_file():  # before any trial reads it; atomic
            save_validation_set(
                synthetic,
                dataset_info(space.dataset, plan.base_config["data"]["image_size"]),
                folder.synthetic_val,
            )
        record["validation"] = {"kind": "synthetic", "file": str(folder.synthetic_val), **synthetic.stats}
    if plan.min_clean:  # the user's floor (a resume without --min-clean keeps the recorded one)
        record["min_clean"] = plan.min_clean
    write_record(folder.record, record)
    folder.stage1_cache.mkdir(exist_ok=True)
    return record


def build_parts(
    plan: Plan, study: Any, threshold: float, experiment_id: str, parent_run_id: str
) -> SearchParts:
    """The scheduler (its rungs rebuilt from the study), the searcher over the study and the driver's MLflow
    logger; the searcher and the logger share the scheduler's set of the trials it stopped early."""
    space = plan.space
    scheduler = make_scheduler(space, study, threshold)
    stopped = getattr(scheduler, "stopped_early", set())
    searcher = StudySearcher(space, plan.folder.optuna_uri, plan.name, threshold, stopped)
    logger = MLflowSearchLogger(
        plan.tracking_uri,
        experiment_id,
        parent_run_id,
        plan.base_config,
        space.presets,
        space.cpus_per_trial,
        space.gpus_per_trial,
        plan.folder,
        searcher=searcher,
        stopped_early=stopped,
        scheduler=space.scheduler,
        stop_reasons=getattr(scheduler, "stop_reasons", {}),
    )
    return SearchParts(scheduler=scheduler, searcher=searcher, logger=logger)


def trial_function(plan: Plan, threshold: float, trainable: Trainable, params: dict[str, Any]) -> Any:
    """The trainable as Ray runs it: given the run's config, the teachers (through Ray's object store), the
    folder, the objectives and the threshold, on the resources a trial takes."""
    space = plan.space
    bound = tune.with_parameters(
        trainable,
        base_config=plan.base_config,
        experts=plan.experts,
        out=str(plan.out),
        objectives=space.objectives,
        clean_threshold=threshold,
        cpus_per_trial=space.cpus_per_trial,
        **params,
    )
    return tune.with_resources(bound, {"cpu": space.cpus_per_trial, "gpu": space.gpus_per_trial})


def make_tuner(
    plan: Plan, parts: SearchParts, trial: Any, *, callbacks: list[Any], num_samples: int, session: int
) -> tune.Tuner:
    """Ray's Tuner over the trial function with the searcher, the scheduler and the callbacks; its session
    folder is ``tune/session-<n>`` under the storage path."""
    space = plan.space
    tune_config = tune.TuneConfig(
        search_alg=parts.searcher,
        scheduler=parts.scheduler,
        num_samples=num_samples,
        max_concurrent_trials=space.max_concurrent,
    )
    run_config = tune.RunConfig(
        name=f"session-{session}",
        storage_path=plan.storage_path.rstrip("/") + "/tune",
        callbacks=callbacks,
        progress_reporter=reporter(space),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=1,
    )
    return tune.Tuner(trial, tune_config=tune_config, run_config=run_config)


def reporter(space: SearchSpace) -> CLIReporter:
    """Ray's trial table with the objectives, the score, the stage and the epoch."""
    metrics = {
        "epoch": "epoch",
        "stage": "stage",
        **{m: m.removeprefix("val/") for m in space.objective_names()},
        "search/score": "score",
    }
    params = {
        TRIAL_NUMBER: "trial",
        **({"method": "method"} if any(p.key == "method" for p in space.params) else {}),
    }
    return CLIReporter(
        metric_columns=metrics,
        parameter_columns=params,
        max_report_frequency=30,
        print_intermediate_tables=True,
    )
