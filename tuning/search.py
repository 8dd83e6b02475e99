"""Search: ``python tuning/search.py --dataset digits``.

Ray Tune schedules the trials (one trial = one run of a method), Optuna proposes the
method, structure and loss weights (multi-objective, feasibility-constrained, the paper's
presets first), ASHA stops poor trials early, and MLflow records every trial from the
driver. Everything lands in ``--out`` (default ``runs/<name>``): ``search.json`` (the
search's record: name, dataset, sessions), ``space.yaml`` (the space used), ``optuna.db``
(the study: every trial's parameters, state and per-epoch scores), ``mlflow.db`` and
``mlartifacts/``, ``trials/<number>/run.pt`` (each trial's resumable state),
``stage1_cache/`` (shared stage-I states) and ``tune/`` (Ray's session folders).

``--resume`` continues the search in ``--out`` from the study alone: finished trials stay,
trials that were running continue from their checkpoints under their own number,
ASHA's rungs are rebuilt from the stored scores, and the search takes its name, dataset
and space from the folder. A driver killed with ``kill -9`` resumes the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and __package__ in (None, ""):  # run as a script: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from derd.config import from_dict, to_dict
from derd.errors import UserError, check_output_folder, cli_errors
from derd.train import add_teacher_flags, teacher_overrides
from analysis.store import check_mlflow_uri
from tuning.checks import (check_cluster_resources, check_ray_address, check_search_folder, stop_stale_ray_processes,
                           teacher_preflight)
from tuning.space import SAMPLERS, SCHEDULERS, SearchSpace, default_space_path, load_space, validate_settings

SEARCH_DIR_TAG = "derd.search_dir"
RECORD = "search.json"
EXIT_INTERRUPTED = 130


@dataclass
class Plan:
    """A validated search, ready to start; nothing has been written yet."""

    space: SearchSpace
    base_config: dict[str, Any]
    out: Path
    name: str
    tracking_uri: str
    storage_path: str
    resume: bool
    max_failures: int
    address: str | None
    experts: Any  # derd.experts.Experts, loaded once and shipped to the trials through Ray's object store
    record: dict[str, Any] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tuning/search.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", help="digits (embedded, default), cifar10, cifar100, imagenet100")
    p.add_argument("--space", help="search-space YAML (default: search_spaces/<dataset>.yaml)")
    p.add_argument("--method", nargs="+", help="the methods to search (one drops the space's method dimension; "
                                               "'all': every registered method), default: the space's")
    p.add_argument("--name", help="search name: MLflow experiment, Optuna study, output folder "
                                  "(default: the first free of derd-<dataset>, derd-<dataset>-2, ...)")
    p.add_argument("--out", help="output folder (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out (or runs/<--name>)")
    p.add_argument("--num-trials", type=int)
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler (default tpe: multivariate TPE with constant liar)")
    p.add_argument("--scheduler", choices=SCHEDULERS, help="early stopping: asha (default) or none")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions (0.5) let trials share a GPU")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--address", help="join an existing Ray cluster (HOST:PORT or auto), or 'local' for a new local "
                                     "instance; default: Ray's own choice (a running local cluster, else a new one)")
    p.add_argument("--storage-path", help="Ray's storage for trial checkpoints: a shared path or an object-store URI "
                                          "(s3://, gs://) for clusters (default: <out>)")
    p.add_argument("--mlflow-uri", help="MLflow tracking server (http://HOST:PORT); default: $MLFLOW_TRACKING_URI, "
                                        "else SQLite in <out>/mlflow.db")
    p.add_argument("--data-root", help="dataset root (CIFAR, ImageNet-100)")
    p.add_argument("--download", action="store_true", help="fetch CIFAR into --data-root before the search (torchvision)")
    add_teacher_flags(p)
    p.add_argument("--max-failures", type=int, default=2, help="retries of a trial after a worker failure (from its checkpoint)")
    p.add_argument("--seed", type=int, help="seed of the sampler and of every trial's run")
    return p


def _fresh_name(args: argparse.Namespace) -> tuple[str, Path]:
    name = args.name or f"derd-{args.dataset}"
    out = Path(args.out or Path("runs") / name).resolve()
    if not (args.name or args.out):  # the default name: take the first free one
        n = 1
        while out.exists() and any(out.iterdir()):
            n += 1
            name = f"derd-{args.dataset}-{n}"
            out = (Path("runs") / name).resolve()
    return name, out


def plan_search(args: argparse.Namespace) -> Plan:
    """Validate every input (space, data, addresses, folders, teachers); write nothing."""
    for flag in ("num_trials", "max_concurrent", "max_failures"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "max_failures" else 1):
            raise UserError(f"--{flag.replace('_', '-')} {value}: must be at least {0 if flag == 'max_failures' else 1}")
    if args.resume:
        if not (args.out or args.name):
            raise UserError("--resume needs the search's folder: pass --out DIR (or --name NAME for runs/NAME)")
        out = Path(args.out or Path("runs") / args.name).resolve()
        record = check_search_folder(out, RECORD)
        if args.name and args.name != record["name"]:
            raise UserError(f"{out} holds the search {record['name']!r}, not {args.name!r}; drop --name to resume it")
        name = record["name"]
        space = load_space(out / "space.yaml")
    else:
        name, out = _fresh_name(args)
        check_output_folder(out)
        if (out / RECORD).is_file():
            raise UserError(f"{out} already holds a search; pass --resume to continue it, or choose another --name/--out")
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} holds files but no search; choose another --name/--out or empty it")
        space = load_space(args.space or default_space_path(args.dataset), methods=args.method)
        if space.dataset != args.dataset and args.space is None:
            raise UserError(f"search space {space.source} is for {space.dataset}, not {args.dataset}")
        for attr, value in (("num_trials", args.num_trials), ("max_concurrent", args.max_concurrent), ("sampler", args.sampler),
                            ("scheduler", args.scheduler), ("gpus_per_trial", args.gpus_per_trial),
                            ("cpus_per_trial", args.cpus_per_trial), ("seed", args.seed)):
            if value is not None:
                setattr(space, attr, value)
        overrides = {"data.root": args.data_root, **teacher_overrides(args), "seed": args.seed}
        space.base.update({k: v for k, v in overrides.items() if v is not None})
        validate_settings(space, "command line")
        record = {}
    base_cfg = space.base_config()
    if base_cfg.data.dataset != "digits":
        from derd.data import download, load_split

        if args.download:
            download(base_cfg.data.dataset, base_cfg.data.root)
        load_split(base_cfg.data.dataset, "val", base_cfg.data.root, image_size=base_cfg.data.image_size)
    tracking_uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or record.get("tracking_uri") \
        or f"sqlite:///{out / 'mlflow.db'}"
    check_mlflow_uri(tracking_uri)
    check_ray_address(args.address)
    if args.storage_path is None:
        check_output_folder(out)
    from derd.experts import load_experts

    experts = load_experts(base_cfg, methods=space.methods)  # checks the checkpoints; digits: trains the pair on first use
    return Plan(space, to_dict(base_cfg), out, name, tracking_uri, args.storage_path or str(out), args.resume,
                args.max_failures, args.address, experts, record)


def _mlflow_parent(plan: Plan, teachers: dict[str, dict[str, float]], threshold: float) -> tuple[str, str]:
    """(experiment id, parent run id): created on a fresh search, found again on --resume."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name(plan.name)
    if exp is None:
        artifacts = (plan.out / "mlartifacts").as_uri() if plan.tracking_uri.startswith("sqlite") else None
        # the experiment kind makes MLflow 3's UI open on its runs table, not its GenAI overview
        exp_id = client.create_experiment(plan.name, artifact_location=artifacts,
                                          tags={"mlflow.experimentKind": "custom_model_development"})
    else:
        exp_id = exp.experiment_id
    found = client.search_runs([exp_id], f"tags.`{SEARCH_DIR_TAG}` = '{plan.out}'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return exp_id, found[0].info.run_id
    space = plan.space
    run = client.create_run(exp_id, run_name=f"search-{plan.name}", tags={
        SEARCH_DIR_TAG: str(plan.out), "derd.kind": "search", "derd.dataset": space.dataset,
        "derd.objectives": ",".join(f"{m}:{mode}" for m, mode in space.objectives),
        "derd.methods": ",".join(space.methods)})
    params = {"dataset": space.dataset, "num_trials": space.num_trials, "max_concurrent": space.max_concurrent,
              "sampler": space.sampler, "scheduler": space.scheduler, "cpus_per_trial": space.cpus_per_trial,
              "gpus_per_trial": space.gpus_per_trial, "space": ",".join(p.key for p in space.params),
              "min_clean_fraction": space.min_clean_fraction}
    for kind in ("natural", "robust"):
        path = plan.base_config["teachers"][kind]
        if path:
            from derd.checkpoints import file_sha256

            params[f"teachers.{kind}_sha256"] = file_sha256(path)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.log_metric(run.info.run_id, "search/clean_threshold", threshold)
    for kind, table in teachers.items():
        for k, v in table.items():
            client.log_metric(run.info.run_id, f"teacher/{kind}_{k}", v)
    client.log_artifact(run.info.run_id, str(plan.out / "space.yaml"))
    return exp_id, run.info.run_id


def _init_ray(plan: Plan) -> bool:
    """Start or join Ray; returns whether this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter takes our metric columns
    # short epochs (digits) force frequent experiment snapshots: no warning each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": "WARNING"}
    if plan.address:
        ray.init(address=plan.address, **kwargs)  # "local" forces a new local instance
    else:
        ray.init(**kwargs)
    return True


def _owned_ray_session() -> str | None:
    """The session folder of the local Ray instance this driver started (None when it joined one):
    what a later ``--resume`` may clean up if this driver is killed."""
    try:
        import ray

        node = ray._private.worker._global_node
        return node.get_session_dir_path() if node is not None and node.all_processes else None
    except Exception:  # noqa: BLE001 - private API: without it, nothing is cleaned up later
        return None


def _write_record(plan: Plan, record: dict[str, Any]) -> None:
    tmp = plan.out / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, plan.out / RECORD)


def run_search(argv: list[str] | None = None) -> dict[str, Any]:
    """Plan, then run (or resume) the search; returns a summary dict. Raises UserError on bad input."""
    args = build_parser().parse_args(argv)
    plan = plan_search(args)
    print(f"search {plan.name}: results in {plan.out}", flush=True)
    if plan.resume:
        stop_stale_ray_processes(plan.record.get("ray_session_dir"), plan.record.get("driver_pid"))
    teachers, threshold = teacher_preflight(plan)
    import ray

    started = _init_ray(plan)
    try:
        check_cluster_resources(plan.space.cpus_per_trial, plan.space.gpus_per_trial)
        return _fit(plan, teachers, threshold)
    finally:
        if started:
            ray.shutdown()


def _fit(plan: Plan, teachers: dict[str, dict[str, float]], threshold: float) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState
    from ray import tune

    from tuning.mlflow_logger import MLflowSearchLogger
    from tuning.searcher import StudySearcher, open_study
    from tuning.summary import finish_search
    from tuning.trainable import derd_trainable

    space = plan.space
    plan.out.mkdir(parents=True, exist_ok=True)
    record = dict(plan.record) or {"name": plan.name, "dataset": space.dataset, "out": str(plan.out),
                                   "tracking_uri": plan.tracking_uri, "created": time.time(), "sessions": []}
    if not plan.resume:
        _write_effective_space(plan)
    record.update(clean_threshold=threshold, teachers=teachers)
    _write_record(plan, record)
    (plan.out / "stage1_cache").mkdir(exist_ok=True)
    exp_id, parent_id = _mlflow_parent(plan, teachers, threshold)
    study = open_study(space, f"sqlite:///{plan.out / 'optuna.db'}", plan.name)
    if not study.trials:
        for point in space.presets:
            study.enqueue_trial(point, user_attrs={"preset": True})
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    remaining = space.num_trials - len(done)
    session_start = time.time()
    client = MlflowClient(plan.tracking_uri)
    logger = MLflowSearchLogger(plan.tracking_uri, exp_id, parent_id, plan.base_config, space.presets,
                                space.cpus_per_trial, space.gpus_per_trial)
    if plan.resume:
        logger.reconcile(study, space.objectives, threshold, plan.out)
    if remaining <= 0:
        print(f"search {plan.name} already finished ({len(done)} trials); nothing to run", flush=True)
        return finish_search(client, exp_id, parent_id, plan, record, interrupted=False)

    scheduler = _scheduler(plan, study)
    stopped = getattr(scheduler, "stopped_early", set())
    searcher = StudySearcher(space, f"sqlite:///{plan.out / 'optuna.db'}", plan.name, threshold, stopped)
    logger.searcher, logger.stopped_early = searcher, stopped
    trainable = tune.with_resources(
        tune.with_parameters(derd_trainable, base_config=plan.base_config, experts=plan.experts, out=str(plan.out),
                             objectives=space.objectives, clean_threshold=threshold, cpus_per_trial=space.cpus_per_trial),
        {"cpu": space.cpus_per_trial, "gpu": space.gpus_per_trial},
    )
    session = len(record["sessions"]) + 1
    record.update(ray_session_dir=_owned_ray_session(), driver_pid=os.getpid())
    _write_record(plan, record)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                    max_concurrent_trials=space.max_concurrent),
        run_config=tune.RunConfig(name=f"session-{session}", storage_path=plan.storage_path.rstrip("/") + "/tune",
                                  callbacks=[logger], progress_reporter=_reporter(space),
                                  failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1),
    )
    try:
        tuner.fit()
    finally:
        record["sessions"].append({"start": session_start, "wall_s": time.time() - session_start})
        _write_record(plan, record)
    study = open_study(space, f"sqlite:///{plan.out / 'optuna.db'}", plan.name)
    unfinished = [t for t in study.trials if t.state == TrialState.RUNNING]
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in study.trials)
    return finish_search(client, exp_id, parent_id, plan, record, interrupted=bool(unfinished) or finished < space.num_trials)


def _scheduler(plan: Plan, study):
    """ASHA on ``search/score`` by epoch, its rungs rebuilt from the study's stored scores and the
    paper's presets protected (``tuning.scheduler``); FIFO when early stopping is off."""
    from ray.tune.schedulers import FIFOScheduler

    from tuning.scheduler import ResumableASHA

    space = plan.space
    if space.scheduler != "asha":
        return FIFOScheduler()
    max_epochs = max(space.total_epochs().values())
    history = {t.number: {int(e): s for e, s in t.user_attrs.get("scores", {}).items()} for t in study.trials}
    base_cfg = from_dict(plan.base_config)
    grace = space.grace_period or min(max_epochs, base_cfg.stage1.epochs + base_cfg.eval.every)
    presets = {t.number for t in study.trials if t.user_attrs.get("preset")}
    return ResumableASHA(history=history, protected=presets, max_t=max_epochs, grace_period=max(1, min(grace, max_epochs)),
                         reduction_factor=space.reduction_factor)


def _reporter(space: SearchSpace):
    """Ray's trial table with the objectives, the score, the stage and the epoch."""
    from ray.tune import CLIReporter

    from tuning.searcher import TRIAL_NUMBER

    metrics = {"epoch": "epoch", "stage": "stage", **{m: m.removeprefix("val/") for m in space.objective_names()},
               "search/score": "score"}
    params = {TRIAL_NUMBER: "trial", **({"method": "method"} if any(p.key == "method" for p in space.params) else {})}
    return CLIReporter(metric_columns=metrics, parameter_columns=params, max_report_frequency=30,
                       print_intermediate_tables=True)


def _write_effective_space(plan: Plan) -> None:
    """space.yaml records the space with the command line's overrides, so --resume needs no flags."""
    import yaml

    raw = dict(plan.space.raw)
    raw["base"] = dict(plan.space.base)
    raw["space"] = {p.key: ({"distribution": p.distribution, "choices": list(p.choices)} if p.distribution == "categorical"
                            else {"distribution": p.distribution, "low": p.low, "high": p.high}) for p in plan.space.params}
    raw["presets"] = plan.space.presets
    raw["search"] = {k: getattr(plan.space, k) for k in ("num_trials", "max_concurrent", "sampler", "scheduler",
                                                        "grace_period", "reduction_factor", "seed") if getattr(plan.space, k) is not None}
    raw["resources"] = {"cpus_per_trial": plan.space.cpus_per_trial, "gpus_per_trial": plan.space.gpus_per_trial}
    raw["constraints"] = {"min_clean_fraction": plan.space.min_clean_fraction}
    (plan.out / "space.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@cli_errors
def main(argv: list[str] | None = None) -> None:
    summary = run_search(argv)
    print()
    print(summary["markdown"])
    print(f"Results in {summary['out']}")
    if summary["tracking_uri"].startswith("sqlite"):
        print(f"MLflow UI: mlflow ui --backend-store-uri {summary['tracking_uri']} --host 127.0.0.1 --port 5000")
        print(f"  then open the experiment {summary['name']}: its description holds the best trials and a link to "
              f"the interactive front (pareto/front.html of the search run)")
    else:
        print(f"MLflow: {summary['tracking_uri']} (experiment id {summary['experiment_id']})")
    if summary["interrupted"]:
        print(f"search interrupted; continue it with: python tuning/search.py --out {summary['out']} --resume",
              file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
