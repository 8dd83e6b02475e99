"""DERD hyperparameter search: ``python tuning/search.py --dataset digits``.

Ray Tune schedules the trials (one trial = one DERD run, both stages), Optuna proposes the
loss weights (multi-objective, the paper's preset first), ASHA stops poor trials early,
and MLflow records every trial from the driver. Everything lands in ``--out``
(default ``runs/<name>``): ``mlflow.db`` and ``mlartifacts/`` (MLflow), ``optuna.db`` (the
Optuna study), ``tune/`` (Ray's experiment: trial checkpoints, resumable), ``stage1_cache/``
(shared stage-I states) and ``space.yaml`` (the search space used).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__" and __package__ in (None, ""):  # run as a script: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from derd.config import from_dict, to_dict
from derd.errors import UserError, cli_errors
from tuning.checks import check_cluster_resources, check_mlflow_uri, check_ray_address
from tuning.space import SAMPLERS, SCHEDULERS, SearchSpace, default_space_path, load_space, validate_settings

SEARCH_DIR_TAG = "derd.search_dir"


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
    experts: Any  # derd.method.Experts, loaded once and shipped to the trials through Ray's object store


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tuning/search.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", help="digits (embedded, default), cifar10, cifar100, imagenet100")
    p.add_argument("--space", help="search-space YAML (default: search_spaces/<dataset>.yaml)")
    p.add_argument("--name", help="search name: MLflow experiment, Optuna study, output folder "
                                  "(default: the first free of derd-<dataset>, derd-<dataset>-2, ...)")
    p.add_argument("--out", help="output folder (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
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
    p.add_argument("--mlflow-uri", help="MLflow tracking server (http://HOST:PORT); default: SQLite in <out>/mlflow.db")
    p.add_argument("--data-root", help="dataset root (CIFAR, ImageNet-100)")
    p.add_argument("--download", action="store_true", help="fetch CIFAR into --data-root before the search (torchvision)")
    p.add_argument("--teacher-natural", help="natural teacher checkpoint (digits: trained on first use)")
    p.add_argument("--teacher-robust", help="robust teacher checkpoint (digits: trained on first use)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a trial after a worker failure (from its checkpoint)")
    p.add_argument("--seed", type=int, help="seed of the sampler and of every trial's run")
    return p


def plan_search(args: argparse.Namespace) -> Plan:
    """Validate every input (space, data, addresses, folders, teachers); write nothing to the search's folder."""
    name = args.name or f"derd-{args.dataset}"
    out = Path(args.out or Path("runs") / name).resolve()
    if not (args.name or args.out or args.resume):  # the default name: take the first free one
        n = 1
        while out.exists() and any(out.iterdir()):
            n += 1
            name = f"derd-{args.dataset}-{n}"
            out = (Path("runs") / name).resolve()
    if args.resume:
        if not (out / "space.yaml").is_file():
            raise UserError(f"nothing to resume in {out}: no space.yaml; start the search without --resume")
        space = load_space(out / "space.yaml")
    else:
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} already holds a search; pass --resume to continue it, or choose another --name/--out")
        space = load_space(args.space or default_space_path(args.dataset))
        if space.dataset != args.dataset and args.space is None:
            raise UserError(f"search space {space.source} is for {space.dataset}, not {args.dataset}")
        for attr, value in (("num_trials", args.num_trials), ("max_concurrent", args.max_concurrent), ("sampler", args.sampler),
                            ("scheduler", args.scheduler), ("gpus_per_trial", args.gpus_per_trial),
                            ("cpus_per_trial", args.cpus_per_trial), ("seed", args.seed)):
            if value is not None:
                setattr(space, attr, value)
        overrides = {"data.root": args.data_root, "teachers.natural": args.teacher_natural, "teachers.robust": args.teacher_robust,
                     "seed": args.seed}
        space.base.update({k: v for k, v in overrides.items() if v is not None})
        validate_settings(space, "command line")
    base_cfg = space.base_config()
    if base_cfg.data.dataset != "digits":
        from derd.data import download, load_split

        if args.download:
            download(base_cfg.data.dataset, base_cfg.data.root)

        load_split(base_cfg.data.dataset, "val", base_cfg.data.root, image_size=base_cfg.data.image_size)
    check_mlflow_uri(args.mlflow_uri)
    check_ray_address(args.address)
    from derd.method import load_experts

    experts = load_experts(base_cfg)  # checks the checkpoints; digits: trains the pair on first use
    tracking_uri = args.mlflow_uri or f"sqlite:///{out / 'mlflow.db'}"
    return Plan(space, to_dict(base_cfg), out, name, tracking_uri, args.storage_path or str(out), args.resume,
                args.max_failures, args.address, experts)


def _sampler(space: SearchSpace):
    import optuna

    if space.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=space.seed, multivariate=True, constant_liar=True)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=space.seed, population_size=max(4, space.max_concurrent * 2))
    return optuna.samplers.RandomSampler(seed=space.seed)


def _mlflow_parent(plan: Plan) -> tuple[str, str]:
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
        "derd.objectives": ",".join(f"{m}:{mode}" for m, mode in space.objectives)})
    for key, value in {"dataset": space.dataset, "num_trials": space.num_trials, "max_concurrent": space.max_concurrent,
                       "sampler": space.sampler, "scheduler": space.scheduler, "cpus_per_trial": space.cpus_per_trial,
                       "gpus_per_trial": space.gpus_per_trial, "space": ",".join(p.key for p in space.params)}.items():
        client.log_param(run.info.run_id, key, value)
    client.log_artifact(run.info.run_id, str(plan.out / "space.yaml"))
    return exp_id, run.info.run_id


def _init_ray(plan: Plan) -> bool:
    """Start or join Ray; returns whether this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    # short epochs (digits) force frequent experiment snapshots: wanted for --resume, so no warning each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if plan.address:
        ray.init(address=plan.address, **kwargs)  # "local" forces a new local instance
    else:
        ray.init(**kwargs)
    return True


def run_search(argv: list[str] | None = None) -> dict[str, Any]:
    """Plan, then run (or resume) the search; returns a summary dict. Raises UserError on bad input."""
    args = build_parser().parse_args(argv)
    plan = plan_search(args)
    print(f"search {plan.name}: results in {plan.out}", flush=True)
    import ray

    started = _init_ray(plan)
    try:
        check_cluster_resources(plan.space.cpus_per_trial, plan.space.gpus_per_trial)
        return _fit(plan)
    finally:
        if started:
            ray.shutdown()


def _fit(plan: Plan) -> dict[str, Any]:
    import optuna
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tuning.mlflow_logger import MLflowSearchLogger
    from tuning.summary import summarise
    from tuning.trainable import derd_trainable

    space = plan.space
    plan.out.mkdir(parents=True, exist_ok=True)
    if not plan.resume:
        _write_effective_space(plan)
    cache_dir = plan.out / "stage1_cache"
    cache_dir.mkdir(exist_ok=True)
    exp_id, parent_id = _mlflow_parent(plan)
    base_cfg = from_dict(plan.base_config)
    total_epochs = (0 if base_cfg.variant == "derd_inv" else base_cfg.stage1.epochs) + base_cfg.stage2.epochs
    trainable = tune.with_resources(
        tune.with_parameters(derd_trainable, base_config=plan.base_config, experts=plan.experts, cache_dir=str(cache_dir),
                             objectives=space.objectives, cpus_per_trial=space.cpus_per_trial),
        {"cpu": space.cpus_per_trial, "gpu": space.gpus_per_trial},
    )
    logger = MLflowSearchLogger(plan.tracking_uri, exp_id, parent_id, plan.base_config, space.presets,
                                space.cpus_per_trial, space.gpus_per_trial)
    start = time.time()
    status = "KILLED"  # until the fit returns with every trial ended
    try:
        if plan.resume:
            tuner = tune.Tuner.restore(str(Path(plan.storage_path) / "tune"), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            storage = optuna.storages.RDBStorage(f"sqlite:///{plan.out / 'optuna.db'}")
            searcher = OptunaSearch(space=space.optuna_distributions(), metric=[m for m, _ in space.objectives],
                                    mode=[mode for _, mode in space.objectives], points_to_evaluate=space.presets or None,
                                    sampler=_sampler(space), study_name=plan.name, storage=storage)
            scheduler = None
            if space.scheduler == "asha":
                grace = space.grace_period or min(total_epochs, base_cfg.stage1.epochs + base_cfg.eval.every)
                scheduler = ASHAScheduler(time_attr="training_iteration", metric="search/score", mode="max",
                                          max_t=total_epochs, grace_period=max(1, min(grace, total_epochs)),
                                          reduction_factor=space.reduction_factor)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=space.num_trials,
                                            max_concurrent_trials=space.max_concurrent),
                run_config=tune.RunConfig(name="tune", storage_path=plan.storage_path, callbacks=[logger],
                                          failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1),
            )
        tuner.fit()
        client = MlflowClient(plan.tracking_uri)
        summary = summarise(client, exp_id, parent_id, space, time.time() - start)
        status = "FINISHED" if summary["unfinished"] == 0 else "KILLED"
    finally:
        MlflowClient(plan.tracking_uri).set_terminated(parent_id, status)
    from analysis.pareto import tag_fronts

    tag_fronts(client, exp_id)  # pareto_rank / pareto_front tags, front plot, CSV, hypervolume
    (plan.out / "best_trials.md").write_text(summary["markdown"])
    client.log_artifact(parent_id, str(plan.out / "best_trials.md"))
    for key in ("trials_finished", "trials_failed", "trials_stopped_early", "wall_time_s", "trials_per_hour"):
        client.log_metric(parent_id, f"search/{key}", float(summary[key]))
    summary.update(out=str(plan.out), tracking_uri=plan.tracking_uri, experiment_id=exp_id, parent_run_id=parent_id)
    return summary


def _write_effective_space(plan: Plan) -> None:
    """space.yaml records the space with the command line's overrides, so --resume needs no flags."""
    import yaml

    raw = dict(plan.space.raw)
    raw["base"] = dict(plan.space.base)
    raw["search"] = {k: getattr(plan.space, k) for k in ("num_trials", "max_concurrent", "sampler", "scheduler",
                                                        "grace_period", "reduction_factor", "seed") if getattr(plan.space, k) is not None}
    raw["resources"] = {"cpus_per_trial": plan.space.cpus_per_trial, "gpus_per_trial": plan.space.gpus_per_trial}
    (plan.out / "space.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@cli_errors
def main(argv: list[str] | None = None) -> None:
    summary = run_search(argv)
    print()
    print(summary["markdown"])
    print(f"Results in {summary['out']}")
    if summary["tracking_uri"].startswith("sqlite"):
        print(f"MLflow UI: mlflow ui --backend-store-uri {summary['tracking_uri']} --host 127.0.0.1 --port 5000")
    else:
        print(f"MLflow: {summary['tracking_uri']} (experiment id {summary['experiment_id']})")


if __name__ == "__main__":
    main()
