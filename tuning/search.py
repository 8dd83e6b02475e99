"""Search: ``python tuning/search.py --dataset digits``.

Ray Tune schedules the trials (one trial = one run of a method), Optuna proposes the
method, structure and loss weights (multi-objective, feasibility-constrained, the paper's
presets first), MO-ASHA stops poor trials early, and MLflow records every trial from the
driver. Everything lands in ``--out`` (default ``runs/<name>``; ``derd.records.SearchFolder``):
``search.json`` (the search's record: name, dataset, sessions, the driver's Ray processes),
``space.yaml`` (the space used), ``optuna.db`` (the study: every trial's parameters, state and
per-epoch scores), ``mlflow.db`` and ``mlartifacts/``, ``trials/<number>/run.pt`` (each
trial's resumable state), ``stage1_cache/`` (shared stage-I states) and ``tune/`` (Ray's
session folders).

``--resume`` continues the search in ``--out`` from the folder alone: finished trials stay,
trials that were running continue from their checkpoints under their own number, ASHA's
rungs are rebuilt from the stored scores, and the search takes its name, dataset and space
from the folder. A driver killed with ``kill -9`` resumes the same way. ``--resume
--num-trials N`` extends a search to N trials in all (the same study samples the new ones);
the settings in ``RESUME_SETTINGS`` may change on resume, every other flag that shapes the
search is refused with the reason (``RESUME_FIXED``), and so is a folder it cannot continue
(``tuning.checks.check_resumable``: a missing or damaged study or store, a record and space that
disagree, fewer trials than already ran); a running trial's unreadable checkpoint is set aside
with a warning and that trial restarts from its start.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from derd.cache import cache_dir
from derd.config import VALIDATIONS, apply_overrides, from_dict, to_dict
from derd.data import available_datasets, dataset_info, dataset_spec
from derd.errors import UserError, check_output_folder, cli_errors
from tuning.records import SearchFolder, Tag, encode_objectives, parse_floor, protocol_tags, teacher_metric
from derd.train import TEACHER_FLAGS, add_teacher_flags, teacher_overrides
from derd.validation import (SyntheticValidation, load_validation_set, make_validation_set, save_validation_set,
                             val_protocol)
from tuning.store import ENV_URI, check_mlflow_uri, runs_tagged, ui_instructions
from tuning import processes
from tuning.checks import (Unreadable, check_cluster_resources, check_ray_address, check_resumable, check_search_folder,
                           check_storage_path, set_aside, teacher_preflight)
from tuning.space import SAMPLERS, SCHEDULERS, SearchSpace, default_space_path

EXIT_INTERRUPTED = 130

# Settings a resumed search may change (recorded in its space.yaml for the sessions after).
RESUME_SETTINGS = ("num_trials", "max_concurrent", "sampler", "cpus_per_trial", "gpus_per_trial")
# Flags that shape what the search compares, refused on --resume, with the reason.
RESUME_FIXED = {
    "dataset": "the search's dataset is fixed",
    "space": "the space is fixed (space.yaml in the folder holds it)",
    "method": "the study's method dimension cannot change (Optuna refuses new choices of a sampled parameter)",
    "scheduler": "early stopping must judge every trial by the same rule",
    "seed": "every trial's seed is the search's",
    "data_root": "the trials' configs name their data root",
    "mlflow_uri": "the search's records are in the store it started with",
    "validation": "every trial is scored on the same validation set",
    **{flag: "the trials compare students of the same teachers" for flag in TEACHER_FLAGS},
}


@dataclass
class Plan:
    """A validated search, ready to start; nothing has been written yet."""

    space: SearchSpace
    base_config: dict[str, Any]
    folder: SearchFolder
    name: str
    tracking_uri: str
    storage_path: str
    resume: bool
    max_failures: int
    address: str | None
    experts: Any  # derd.experts.Experts, loaded once and shipped to the trials through Ray's object store
    record: dict[str, Any] = field(default_factory=dict)
    unreadable: list[Unreadable] = field(default_factory=list)  # running trials' checkpoints to set aside (--resume)
    min_clean: str | None = None  # the user's --min-clean as written (analysis.choice), recorded with the search

    @property
    def out(self) -> Path:
        return self.folder.root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tuning/search.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help=f"one of {', '.join(available_datasets())} (default: digits, embedded)")
    p.add_argument("--space", help="search-space YAML (default: search_spaces/<dataset>.yaml)")
    p.add_argument("--method", nargs="+", help="the methods to search (one drops the space's method dimension; "
                                               "'all': every registered method), default: the space's")
    p.add_argument("--name", help="search name: MLflow experiment, Optuna study, output folder "
                                  "(default: the first free of derd-<dataset>, derd-<dataset>-2, ...)")
    p.add_argument("--out", help="output folder (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out (or runs/<--name>); with "
                                                         "--num-trials N, extend it to N trials in all")
    p.add_argument("--num-trials", type=int)
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler (default tpe: multivariate TPE with constant liar)")
    p.add_argument("--scheduler", choices=SCHEDULERS, help="early stopping: moasha (the spaces' default: non-dominated "
                                                               "sorting of the objectives), asha (the mean of the "
                                                               "objectives) or none")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions (0.5) let trials share a GPU")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--address", help="join a Ray cluster (HOST:PORT, or auto for the one running here); default (or "
                                     "'local'): a new Ray instance of this search's own, reachable from this machine only")
    p.add_argument("--storage-path", help="Ray's storage for trial checkpoints: a shared path or an object-store URI "
                                          "(s3://, gs://) for clusters (default: <out>)")
    p.add_argument("--mlflow-uri", help="MLflow tracking server (http://HOST:PORT); default: $MLFLOW_TRACKING_URI, "
                                        "else SQLite in <out>/mlflow.db")
    p.add_argument("--validation", choices=VALIDATIONS,
                   help="what trials are scored on: real (the val split; default) or synthetic (a set made from the "
                        "teachers alone before any trial, in <out>/synthetic_val.pt: no real image is read; "
                        "experimental, README: Validation without data)")
    p.add_argument("--data-root", help="dataset root (CIFAR, ImageNet-100)")
    p.add_argument("--download", action="store_true", help="fetch CIFAR into --data-root before the search (torchvision)")
    add_teacher_flags(p)
    p.add_argument("--max-failures", type=int, default=2, help="retries of a trial after a worker failure (from its checkpoint)")
    p.add_argument("--seed", type=int, help="seed of the sampler and of every trial's run")
    p.add_argument("--min-clean", metavar="X", help="the val clean accuracy the student you will deploy needs: points "
                                                    "(80) or a factor of the natural teacher's (0.9x); recorded with "
                                                    "the search, the summary and analysis/export.py choose under it "
                                                    "(may change on --resume)")
    return p


def _fresh_name(args: argparse.Namespace, dataset: str) -> tuple[str, Path]:
    name = args.name or f"derd-{dataset}"
    out = Path(args.out or Path("runs") / name).resolve()
    if not (args.name or args.out):  # the default name: take the first free one
        n = 1
        while out.exists() and any(out.iterdir()):
            n += 1
            name = f"derd-{dataset}-{n}"
            out = (Path("runs") / name).resolve()
    return name, out


def _resumed_space(args: argparse.Namespace, folder: SearchFolder,
                   record: dict[str, Any]) -> tuple[SearchSpace, list[Unreadable]]:
    """The folder's space with the settings a resume may change, checked against what the folder holds
    (``check_resumable``), and the running trials' checkpoints to set aside; any other flag that shapes
    the search is refused with the reason."""
    for flag, why in RESUME_FIXED.items():
        if getattr(args, flag, None) is not None:
            raise UserError(f"--{flag.replace('_', '-')} cannot change when resuming: {why}; drop it "
                            f"(or start a new search)")
    space = SearchSpace.from_yaml(folder.space)
    changed = []
    for key in RESUME_SETTINGS:
        value = getattr(args, key)
        if value is not None and value != getattr(space, key):
            changed.append(f"{key} {getattr(space, key)} -> {value}")
            setattr(space, key, value)
    space.validate_settings("command line")
    unreadable = check_resumable(folder, record, space, "--num-trials" if args.num_trials is not None
                                 else f"{folder.space}'s num_trials")
    if changed:
        print(f"resuming with {', '.join(changed)}", flush=True)
    return space, unreadable


def _check_trial_memory(space: SearchSpace) -> None:
    """The largest trial the space can sample (each numeric key that sets memory at its high end) must fit the
    device a trial gets: a GPU when trials take one and this machine has one, else this machine's RAM."""
    import torch

    from derd.config import apply_overrides
    from derd.footprint import check_memory, sets_memory

    largest = {p.key: int(p.high) if p.distribution == "int" else p.high
               for p in space.params if sets_memory(p.key) and p.distribution != "categorical"}
    gpu = space.gpus_per_trial > 0 and torch.cuda.is_available()
    check_memory(apply_overrides(space.base_config(), largest), torch.device("cuda" if gpu else "cpu"),
                 where=f"{space.source}: the largest trial: " if largest else f"{space.source}: base.")


def plan_search(args: argparse.Namespace) -> Plan:
    """Validate every input (space, data, addresses, folders, teachers); write nothing.

    The flags every search shares are checked first; then a fresh search (``fresh_inputs``) or a resumed
    one (``resumed_inputs``) finds its folder, name and space; then both check what a search needs to
    run (``checked_plan``)."""
    cache_dir()  # a bad $DERD_CACHE is one line here, not a failure in every trial
    if args.min_clean is not None:
        parse_floor(args.min_clean, "--min-clean")
    for flag in ("num_trials", "max_concurrent", "max_failures"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "max_failures" else 1):
            raise UserError(f"--{flag.replace('_', '-')} {value}: must be at least {0 if flag == 'max_failures' else 1}")
    return checked_plan(args, resumed_inputs(args) if args.resume else fresh_inputs(args))


@dataclass
class SearchInputs:
    """What a search's mode (fresh or resumed) decides before the checks both share: where, under which
    name, over which space; a resumed search also its record and the checkpoints to set aside."""

    folder: SearchFolder
    name: str
    space: SearchSpace
    record: dict[str, Any] = field(default_factory=dict)
    unreadable: list[Unreadable] = field(default_factory=list)


def resumed_inputs(args: argparse.Namespace) -> SearchInputs:
    """``--resume``: the folder named by --out (or --name), its record, and its space with the settings a
    resume may change (``_resumed_space``)."""
    if not (args.out or args.name):
        raise UserError("--resume needs the search's folder: pass --out DIR (or --name NAME for runs/NAME)")
    folder = SearchFolder(Path(args.out or Path("runs") / args.name).resolve())
    record = check_search_folder(folder)
    if args.name and args.name != record["name"]:
        raise UserError(f"{folder.root} holds the search {record['name']!r}, not {args.name!r}; drop --name to resume it")
    space, unreadable = _resumed_space(args, folder, record)
    return SearchInputs(folder, record["name"], space, record, unreadable)


def fresh_inputs(args: argparse.Namespace) -> SearchInputs:
    """A new search: its space (--space, else the dataset's) with the command line's settings and
    overrides, and a folder that holds nothing yet."""
    if args.dataset is not None and not args.dataset.strip():
        raise UserError(f"--dataset '' names no dataset; pass one of {', '.join(available_datasets())} (or drop it: "
                        "digits, or the --space file's)")
    space = SearchSpace.from_yaml(args.space or default_space_path(args.dataset or "digits"), methods=args.method)
    if args.dataset is not None and space.dataset != args.dataset:
        raise UserError(f"--dataset {args.dataset} contradicts the search space {space.source}, which is for "
                        f"{space.dataset}; drop --dataset or pass a {args.dataset} space")
    name, out = _fresh_name(args, space.dataset)
    folder = SearchFolder(check_output_folder(out))
    if folder.record.is_file():
        raise UserError(f"{out} already holds a search; pass --resume to continue it, or choose another --name/--out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} holds files but no search; choose another --name/--out or empty it")
    for attr in (*RESUME_SETTINGS, "scheduler", "seed"):
        if getattr(args, attr) is not None:
            setattr(space, attr, getattr(args, attr))
    overrides = {"data.root": args.data_root, **teacher_overrides(args), "seed": args.seed,
                 "eval.validation": args.validation}
    space.base.update({k: v for k, v in overrides.items() if v is not None})
    space.validate_settings("command line")
    return SearchInputs(folder, name, space)


def checked_plan(args: argparse.Namespace, inputs: SearchInputs) -> Plan:
    """The checks a fresh and a resumed search share: the largest trial fits, the data is there, the
    MLflow store, the Ray address, the folders and the teachers are usable."""
    space, folder, record = inputs.space, inputs.folder, inputs.record
    base_cfg = space.base_config()
    if base_cfg.eval.validation == "synthetic":  # every trial reads the set the search makes in its folder
        base_cfg = apply_overrides(base_cfg, {"synthetic_val.file": str(folder.synthetic_val)})
    _check_trial_memory(space)
    if dataset_spec(base_cfg.data.dataset).needs_root and base_cfg.eval.validation == "real":
        from derd.data import download, load_split

        if args.download:
            download(base_cfg.data.dataset, base_cfg.data.root)
        load_split(base_cfg.data.dataset, "val", base_cfg.data.root, image_size=base_cfg.data.image_size)
    tracking_uri, source = _tracking_uri(args, record, folder)
    if args.resume or tracking_uri != folder.mlflow_uri:  # a new search makes its own store in its new folder
        check_mlflow_uri(tracking_uri, source)
    check_ray_address(args.address)
    check_output_folder(folder.root)
    check_storage_path(args.storage_path)
    from derd.experts import load_experts

    experts = load_experts(base_cfg, methods=space.methods)  # checks the checkpoints; digits: trains the pair on first use
    return Plan(space, to_dict(base_cfg), folder, inputs.name, tracking_uri, args.storage_path or str(folder.root),
                args.resume, args.max_failures, args.address, experts, record, inputs.unreadable, args.min_clean)


def _tracking_uri(args: argparse.Namespace, record: dict[str, Any], folder: SearchFolder) -> tuple[str, str]:
    """(the search's MLflow store, what named it, for its error lines): --mlflow-uri, else the resumed search's
    record, else $MLFLOW_TRACKING_URI, else SQLite in the folder."""
    for uri, source in ((args.mlflow_uri, "--mlflow-uri"), (record.get("tracking_uri"), f"{folder.record}'s tracking_uri"),
                        (os.environ.get(ENV_URI), f"${ENV_URI}")):
        if uri:
            return uri, source
    return folder.mlflow_uri, "the search's store"


def mlflow_parent(plan: Plan, teachers: dict[str, dict[str, float]], threshold: float,
                  validation: dict[str, Any] | None = None) -> tuple[str, str]:
    """(experiment id, parent run id): created on a fresh search, found again on --resume. The parent
    records the synthetic validation set's figures (``validation``: its stats) when the search uses one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name(plan.name)
    if exp is None:
        artifacts = plan.folder.artifacts.as_uri() if plan.tracking_uri.startswith("sqlite") else None
        # the experiment kind makes MLflow 3's UI open on its runs table, not its GenAI overview
        exp_id = client.create_experiment(plan.name, artifact_location=artifacts,
                                          tags={"mlflow.experimentKind": "custom_model_development"})
    else:
        exp_id = exp.experiment_id
    found = runs_tagged(client, [exp_id], {Tag.SEARCH_DIR: str(plan.out)}, max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return exp_id, found[0].info.run_id
    space = plan.space
    base = space.base_config()
    measured = val_protocol(base)
    run = client.create_run(exp_id, run_name=f"search-{plan.name}", tags={
        Tag.SEARCH_DIR: str(plan.out), Tag.KIND: "search", Tag.DATASET: space.dataset,
        Tag.OBJECTIVES: encode_objectives(space.objectives), Tag.METHODS: ",".join(space.methods),
        **protocol_tags(measured)})  # the protocol of every trial's val/* scores
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
            client.log_metric(run.info.run_id, teacher_metric(kind, k), v)
    client.log_artifact(run.info.run_id, str(plan.folder.space))
    if validation:
        for key in ("n_images", "n_drawn", "teacher_agreement", "seconds"):
            client.log_metric(run.info.run_id, f"validation/{key}", float(validation[key]))
        client.log_param(run.info.run_id, "validation.procedure", validation["procedure"])
        client.log_param(run.info.run_id, "validation.class_counts", ",".join(map(str, validation["class_counts"])))
    return exp_id, run.info.run_id


LOCAL = (None, "local")  # --address values that start the search's own Ray instance


def _loopback_only(plan: Plan) -> None:
    """A local search's own Ray instance listens on 127.0.0.1 only: Ray uses the loopback address as
    its node's address (and every server binds to it) when its multi-machine mode is off, which
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` does on any platform. Ray reads it when first imported,
    so this runs before that; a joined cluster (``--address``) is left as it is."""
    if plan.address in LOCAL and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _init_ray(plan: Plan) -> bool:
    """Start or join Ray; returns whether this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter takes our metric columns
    # short epochs (digits) force frequent experiment snapshots: no warning each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address="local" if plan.address in LOCAL else plan.address, include_dashboard=False, log_to_driver=True,
             logging_level="WARNING")
    return True


def _write_record(plan: Plan, record: dict[str, Any]) -> None:
    from tuning.session import write_record

    write_record(plan.folder.record, record)


def run_search(argv: list[str] | None = None, trainable: Callable[..., None] | None = None,
               trainable_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Plan, then run (or resume) the search; returns a summary dict. Raises UserError on bad input.

    ``trainable`` replaces the trial (``tuning.trainable.derd_trainable``, called with the same
    keyword arguments plus ``trainable_params``): the simulator's faithfulness test runs the real
    search over a stand-in that reports the tabulated benchmark's curves
    (``tuning.tabular.table_trainable``)."""
    args = build_parser().parse_args(argv)
    plan = plan_search(args)
    print(f"search {plan.name}: results in {plan.out}", flush=True)
    if plan.resume:
        recorded = {int(p): t for p, t in plan.record.get("ray_processes", {}).items()}
        processes.end_processes({**recorded, **processes.marked(plan.record.get("ray_mark", ""))})
    synthetic = synthetic_validation(plan)
    teachers, threshold = teacher_preflight(plan, val=synthetic.dataset() if synthetic else None)
    _loopback_only(plan)
    import ray

    reaper = None if ray.is_initialized() else processes.start_reaper()
    started = _init_ray(plan)
    try:
        check_cluster_resources(plan.space.cpus_per_trial, plan.space.gpus_per_trial)
        return _fit(plan, teachers, threshold, processes.descendants() if started else {}, trainable, trainable_params,
                    synthetic)
    finally:
        if started:
            ray.shutdown()
        if reaper is not None:
            processes.stop_reaper(reaper)


def synthetic_validation(plan: Plan) -> SyntheticValidation | None:
    """With ``eval.validation: synthetic``, the search's validation set (``derd.validation``): the one in its
    folder (a resumed search), else made now from the teachers, seeded by the search's seed; None for real val."""
    import torch

    cfg = from_dict(plan.base_config)
    if cfg.eval.validation != "synthetic":
        return None
    info = dataset_info(cfg.data.dataset, cfg.data.image_size)
    if plan.folder.synthetic_val.is_file():
        return load_validation_set(plan.folder.synthetic_val, info)
    from derd.device import resolve_device

    print("making the synthetic validation set from the teachers (no real image is read) ...", flush=True)
    made = make_validation_set(plan.experts, info, cfg.synthetic_val, cfg.seed, device=resolve_device(cfg.device))
    plan.experts.to(torch.device("cpu"))  # trials receive them pickled, and a CPU node has no CUDA
    stats = made.stats
    print(f"synthetic validation set: {stats['n_images']} images ({stats['procedure']}), the teachers agree on "
          f"{100 * stats['teacher_agreement']:.1f}% of {stats['n_drawn']} drawn; per class {stats['class_counts']}; "
          f"made in {stats['seconds']:.0f} s", flush=True)
    return made


def _fit(plan: Plan, teachers: dict[str, dict[str, float]], threshold: float, ray_processes: dict[int, float],
         trainable: Callable[..., None] | None = None, trainable_params: dict[str, Any] | None = None,
         synthetic: SyntheticValidation | None = None) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState
    from ray import tune

    from tuning.mlflow_logger import MLflowSearchLogger
    from tuning.scheduler import make_scheduler
    from tuning.searcher import StudySearcher, enqueue_presets, open_study
    from tuning.session import SessionClock
    from tuning.summary import finish_search
    from tuning.trainable import derd_trainable

    space, folder = plan.space, plan.folder
    folder.root.mkdir(parents=True, exist_ok=True)
    set_aside(plan.unreadable)  # the first write of a resume: those trials restart from their start
    record = dict(plan.record) or {"name": plan.name, "dataset": space.dataset, "out": str(plan.out),
                                   "tracking_uri": plan.tracking_uri, "created": time.time(), "sessions": []}
    folder.space.write_text(space.to_yaml())  # with this session's settings: the next --resume reads them
    record.update(clean_threshold=threshold, teachers=teachers)
    if synthetic is not None:
        if not folder.synthetic_val.is_file():  # before any trial reads it; atomic
            save_validation_set(synthetic, dataset_info(space.dataset, plan.base_config["data"]["image_size"]),
                                folder.synthetic_val)
        record["validation"] = {"kind": "synthetic", "file": str(folder.synthetic_val), **synthetic.stats}
    if plan.min_clean:  # the user's floor (a resume without --min-clean keeps the recorded one)
        record["min_clean"] = plan.min_clean
    _write_record(plan, record)
    folder.stage1_cache.mkdir(exist_ok=True)
    exp_id, parent_id = mlflow_parent(plan, teachers, threshold, synthetic.stats if synthetic is not None else None)
    study = open_study(space, folder.optuna_uri, plan.name)
    enqueue_presets(study, space)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    remaining = space.num_trials - len(done)
    client = MlflowClient(plan.tracking_uri)
    if plan.min_clean:  # the summary and analysis/export.py read it from the search run
        client.set_tag(parent_id, Tag.MIN_CLEAN, plan.min_clean)
    logger = MLflowSearchLogger(plan.tracking_uri, exp_id, parent_id, plan.base_config, space.presets,
                                space.cpus_per_trial, space.gpus_per_trial, folder, scheduler=space.scheduler)
    if plan.resume:
        logger.reconcile(study, space.objectives, threshold)
    if remaining <= 0:
        print(f"search {plan.name} already finished ({len(done)} trials); nothing to run", flush=True)
        return finish_search(client, exp_id, parent_id, plan, record, interrupted=False)

    scheduler = make_scheduler(space, plan.base_config, study, threshold)
    stopped = getattr(scheduler, "stopped_early", set())
    searcher = StudySearcher(space, folder.optuna_uri, plan.name, threshold, stopped)
    logger.searcher, logger.stopped_early = searcher, stopped
    trainable = tune.with_resources(
        tune.with_parameters(trainable or derd_trainable, base_config=plan.base_config, experts=plan.experts,
                             out=str(plan.out), objectives=space.objectives, clean_threshold=threshold,
                             cpus_per_trial=space.cpus_per_trial, **(trainable_params or {})),
        {"cpu": space.cpus_per_trial, "gpu": space.gpus_per_trial},
    )
    record.update(ray_processes=ray_processes, ray_mark=os.environ.get(processes.MARK, ""), driver_pid=os.getpid())
    clock = SessionClock(folder.record, record)  # the session counts from here, even if this driver is killed
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                    max_concurrent_trials=space.max_concurrent),
        run_config=tune.RunConfig(name=f"session-{len(record['sessions'])}",
                                  storage_path=plan.storage_path.rstrip("/") + "/tune",
                                  callbacks=[logger, clock], progress_reporter=_reporter(space),
                                  failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1),
    )
    try:
        tuner.fit()
    finally:
        clock.close()
        logger.flush()  # the epochs still buffered (an interrupted search)
    study = open_study(space, folder.optuna_uri, plan.name)
    unfinished = [t for t in study.trials if t.state == TrialState.RUNNING]
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in study.trials)
    return finish_search(client, exp_id, parent_id, plan, record, interrupted=bool(unfinished) or finished < space.num_trials)


def _reporter(space: SearchSpace):
    """Ray's trial table with the objectives, the score, the stage and the epoch."""
    from ray.tune import CLIReporter

    from tuning.searcher import TRIAL_NUMBER

    metrics = {"epoch": "epoch", "stage": "stage", **{m: m.removeprefix("val/") for m in space.objective_names()},
               "search/score": "score"}
    params = {TRIAL_NUMBER: "trial", **({"method": "method"} if any(p.key == "method" for p in space.params) else {})}
    return CLIReporter(metric_columns=metrics, parameter_columns=params, max_report_frequency=30,
                       print_intermediate_tables=True)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    summary = run_search(argv)
    print()
    print(summary["markdown"])
    print(f"Results in {summary['out']}")
    print("\n".join(ui_instructions(summary["tracking_uri"], summary["experiment_id"], summary["parent_run_id"])))
    if summary["interrupted"]:
        print(f"search interrupted; continue it with: python tuning/search.py --out {summary['out']} --resume",
              file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
