"""Planning a search: the command line's flags become a checked ``Plan``, and nothing is written.

Every input a user can get wrong is checked here, before a folder, a store or a Ray instance exists: the
flags every search shares, then a fresh search's space and empty folder (``fresh_inputs``) or a resumed
one's folder, record and space (``resumed_inputs``), then what both need to run (``checked_plan``): the
largest trial fits the device, the data is there, the MLflow store, the Ray address, the folders and the
teachers are usable. ``tuning.fit`` runs a plan; ``tuning/search.py`` is the command that joins the two.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from derd.cache import cache_dir
from derd.config import VALIDATIONS, RunConfig, apply_overrides, to_dict
from derd.data import available_datasets, dataset_spec, download, load_split
from derd.errors import UserError, check_output_folder
from derd.experts import Experts, load_experts
from derd.footprint import check_memory, sets_memory
from derd.train import TEACHER_FLAGS, add_teacher_flags, teacher_overrides
from tuning.checks import (
    Unreadable,
    check_ray_address,
    check_resumable,
    check_search_folder,
    check_storage_path,
)
from tuning.records import SearchFolder, parse_floor
from tuning.space import SAMPLERS, SCHEDULERS, SearchSpace, default_space_path
from tuning.store import ENV_URI, check_mlflow_uri

LOCAL = (None, "local")  # --address values that start the search's own Ray instance
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


@dataclass(kw_only=True)
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
    experts: Experts  # loaded once and shipped to the trials through Ray's object store
    record: dict[str, Any] = field(default_factory=dict)  # a resumed search's search.json
    unreadable: list[Unreadable] = field(
        default_factory=list
    )  # running trials' checkpoints to set aside (--resume)
    min_clean: str | None = (
        None  # the user's --min-clean as written (tuning.records.Floor), recorded with the search
    )

    @property
    def out(self) -> Path:
        return self.folder.root


@dataclass(kw_only=True)
class SearchInputs:
    """What a search's mode (fresh or resumed) decides before the checks both share: where, under which
    name, over which space; a resumed search also its record and the checkpoints to set aside."""

    folder: SearchFolder
    name: str
    space: SearchSpace
    record: dict[str, Any] = field(default_factory=dict)
    unreadable: list[Unreadable] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    """The search's flags (``derd-search --help``)."""
    p = argparse.ArgumentParser(
        prog="python tuning/search.py",
        description="Search: Ray Tune schedules the trials, "
        "Optuna proposes each trial's method and weights, MLflow records every trial.",
    )
    _what_to_search(p)
    _where_it_runs(p)
    _what_it_reads(p)
    return p


def _what_to_search(p: argparse.ArgumentParser) -> None:
    """The flags that say what a search compares and how it samples and stops trials."""
    p.add_argument("--dataset", help=f"one of {', '.join(available_datasets())} (default: digits, embedded)")
    p.add_argument("--space", help="search-space YAML (default: search_spaces/<dataset>.yaml)")
    p.add_argument(
        "--method",
        nargs="+",
        help="the methods to search (one drops the space's method dimension; "
        "'all': every registered method), default: the space's",
    )
    p.add_argument(
        "--name",
        help="search name: MLflow experiment, Optuna study, output folder "
        "(default: the first free of derd-<dataset>, derd-<dataset>-2, ...)",
    )
    p.add_argument("--out", help="output folder (default: runs/<name>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the search in --out (or runs/<--name>); with "
        "--num-trials N, extend it to N trials in all",
    )
    p.add_argument("--num-trials", type=int)
    p.add_argument("--max-concurrent", type=int)
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        help="Optuna sampler (default tpe: multivariate TPE with constant liar)",
    )
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="early stopping: moasha (the spaces' default: non-dominated "
        "sorting of the objectives), asha (the mean of the "
        "objectives) or none",
    )


def _where_it_runs(p: argparse.ArgumentParser) -> None:
    """The flags that say where the trials run, where the records go and what the trials are scored on."""
    p.add_argument(
        "--gpus-per-trial", type=float, help="GPUs per trial; fractions (0.5) let trials share a GPU"
    )
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument(
        "--address",
        help="join a Ray cluster (HOST:PORT, or auto for the one running here); default (or "
        "'local'): a new Ray instance of this search's own, reachable from this machine only",
    )
    p.add_argument(
        "--storage-path",
        help="Ray's storage for trial checkpoints: a shared path or an object-store URI "
        "(s3://, gs://) for clusters (default: <out>)",
    )
    p.add_argument(
        "--mlflow-uri",
        help="MLflow tracking server (http://HOST:PORT); default: $MLFLOW_TRACKING_URI, "
        "else SQLite in <out>/mlflow.db",
    )
    p.add_argument(
        "--validation",
        choices=VALIDATIONS,
        help="what trials are scored on: real (the val split; default) or synthetic (a set made from the "
        "teachers alone before any trial, in <out>/synthetic_val.pt: no real image is read; "
        "experimental, docs/search.md: Validation without data)",
    )


def _what_it_reads(p: argparse.ArgumentParser) -> None:
    """The flags that say what the trials read (data, teachers), how failures are retried, the seed and the floor."""
    p.add_argument("--data-root", help="dataset root (CIFAR, ImageNet-100)")
    p.add_argument(
        "--download", action="store_true", help="fetch CIFAR into --data-root before the search (torchvision)"
    )
    add_teacher_flags(p)
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a trial after a worker failure (from its checkpoint)",
    )
    p.add_argument("--seed", type=int, help="seed of the sampler and of every trial's run")
    p.add_argument(
        "--min-clean",
        metavar="X",
        help="the val clean accuracy the student you will deploy needs: points "
        "(80) or a factor of the natural teacher's (0.9x); recorded with "
        "the search, the summary and analysis/export.py choose under it "
        "(may change on --resume)",
    )


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
            raise UserError(
                f"--{flag.replace('_', '-')} {value}: must be at least {0 if flag == 'max_failures' else 1}"
            )
    return checked_plan(args, resumed_inputs(args) if args.resume else fresh_inputs(args))


def resumed_inputs(args: argparse.Namespace) -> SearchInputs:
    """``--resume``: the folder named by --out (or --name), its record, and its space with the settings a
    resume may change (``_resumed_space``)."""
    if not (args.out or args.name):
        raise UserError("--resume needs the search's folder: pass --out DIR (or --name NAME for runs/NAME)")
    folder = SearchFolder(Path(args.out or Path("runs") / args.name).resolve())
    record = check_search_folder(folder)
    if args.name and args.name != record["name"]:
        raise UserError(
            f"{folder.root} holds the search {record['name']!r}, not {args.name!r}; drop --name to resume it"
        )
    space, unreadable = _resumed_space(args, folder, record)
    return SearchInputs(folder=folder, name=record["name"], space=space, record=record, unreadable=unreadable)


def _resumed_space(
    args: argparse.Namespace, folder: SearchFolder, record: dict[str, Any]
) -> tuple[SearchSpace, list[Unreadable]]:
    """The folder's space with the settings a resume may change, checked against what the folder holds
    (``check_resumable``), and the running trials' checkpoints to set aside; any other flag that shapes
    the search is refused with the reason."""
    for flag, why in RESUME_FIXED.items():
        if getattr(args, flag, None) is not None:
            raise UserError(
                f"--{flag.replace('_', '-')} cannot change when resuming: {why}; drop it "
                f"(or start a new search)"
            )
    space = SearchSpace.from_yaml(folder.space)
    changed = []
    for key in RESUME_SETTINGS:
        value = getattr(args, key)
        if value is not None and value != getattr(space, key):
            changed.append(f"{key} {getattr(space, key)} -> {value}")
            setattr(space, key, value)
    space.validate_settings("command line")
    unreadable = check_resumable(
        folder,
        record,
        space,
        "--num-trials" if args.num_trials is not None else f"{folder.space}'s num_trials",
    )
    if changed:
        print(f"resuming with {', '.join(changed)}", flush=True)
    return space, unreadable


def fresh_inputs(args: argparse.Namespace) -> SearchInputs:
    """A new search: its space (--space, else the dataset's) with the command line's settings and
    overrides, and a folder that holds nothing yet."""
    if args.dataset is not None and not args.dataset.strip():
        raise UserError(
            f"--dataset '' names no dataset; pass one of {', '.join(available_datasets())} (or drop it: "
            "digits, or the --space file's)"
        )
    space = SearchSpace.from_yaml(
        args.space or default_space_path(args.dataset or "digits"), methods=args.method
    )
    if args.dataset is not None and space.dataset != args.dataset:
        raise UserError(
            f"--dataset {args.dataset} contradicts the search space {space.source}, which is for "
            f"{space.dataset}; drop --dataset or pass a {args.dataset} space"
        )
    name, out = _fresh_name(args, space.dataset)
    folder = SearchFolder(check_output_folder(out))
    if folder.record.is_file():
        raise UserError(
            f"{out} already holds a search; pass --resume to continue it, or choose another --name/--out"
        )
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} holds files but no search; choose another --name/--out or empty it")
    for attr in (*RESUME_SETTINGS, "scheduler", "seed"):
        if getattr(args, attr) is not None:
            setattr(space, attr, getattr(args, attr))
    overrides = {
        "data.root": args.data_root,
        **teacher_overrides(args),
        "seed": args.seed,
        "eval.validation": args.validation,
    }
    space.base.update({k: v for k, v in overrides.items() if v is not None})
    space.validate_settings("command line")
    return SearchInputs(folder=folder, name=name, space=space)


def _fresh_name(args: argparse.Namespace, dataset: str) -> tuple[str, Path]:
    """The search's name and folder: --name and --out as given, else the first free of derd-<dataset>, ..."""
    name = args.name or f"derd-{dataset}"
    out = Path(args.out or Path("runs") / name).resolve()
    if not (args.name or args.out):  # the default name: take the first free one
        n = 1
        while out.exists() and any(out.iterdir()):
            n += 1
            name = f"derd-{dataset}-{n}"
            out = (Path("runs") / name).resolve()
    return name, out


def checked_plan(args: argparse.Namespace, inputs: SearchInputs) -> Plan:
    """The checks a fresh and a resumed search share: the largest trial fits, the data is there, the
    MLflow store, the Ray address, the folders and the teachers are usable."""
    space, folder, record = inputs.space, inputs.folder, inputs.record
    base_cfg = space.base_config()
    if base_cfg.eval.validation == "synthetic":  # every trial reads the set the search makes in its folder
        base_cfg = apply_overrides(base_cfg, {"synthetic_val.file": str(folder.synthetic_val)})
    _check_trial_memory(space)
    _check_data(base_cfg, args.download)
    tracking_uri, source = _tracking_uri(args, record, folder)
    if args.resume or tracking_uri != folder.mlflow_uri:  # a new search makes its own store in its new folder
        check_mlflow_uri(tracking_uri, source)
    check_ray_address(args.address)
    check_output_folder(folder.root)
    check_storage_path(args.storage_path)
    experts = load_experts(
        base_cfg, methods=space.methods
    )  # checks the checkpoints; digits: trains the pair on first use
    return Plan(
        space=space,
        base_config=to_dict(base_cfg),
        folder=folder,
        name=inputs.name,
        tracking_uri=tracking_uri,
        storage_path=args.storage_path or str(folder.root),
        resume=args.resume,
        max_failures=args.max_failures,
        address=args.address,
        experts=experts,
        record=record,
        unreadable=inputs.unreadable,
        min_clean=args.min_clean,
    )


def _check_trial_memory(space: SearchSpace) -> None:
    """The largest trial the space can sample (each numeric key that sets memory at its high end) must fit the
    device a trial gets: a GPU when trials take one and this machine has one, else this machine's RAM."""
    largest = {
        p.key: int(p.high) if p.distribution == "int" else p.high
        for p in space.params
        if sets_memory(p.key) and p.distribution != "categorical"
    }
    gpu = space.gpus_per_trial > 0 and torch.cuda.is_available()
    check_memory(
        apply_overrides(space.base_config(), largest),
        torch.device("cuda" if gpu else "cpu"),
        where=f"{space.source}: the largest trial: " if largest else f"{space.source}: base.",
    )


def _check_data(base_cfg: RunConfig, fetch: bool) -> None:
    """A dataset read from a root (CIFAR, ImageNet-100) must have its val split there (fetched first with
    ``--download``), unless the trials are scored on a synthetic set."""
    if dataset_spec(base_cfg.data.dataset).needs_root and base_cfg.eval.validation == "real":
        if fetch:
            download(base_cfg.data.dataset, base_cfg.data.root)
        load_split(base_cfg.data.dataset, "val", base_cfg.data.root, image_size=base_cfg.data.image_size)


def _tracking_uri(args: argparse.Namespace, record: dict[str, Any], folder: SearchFolder) -> tuple[str, str]:
    """(the search's MLflow store, what named it, for its error lines): --mlflow-uri, else the resumed search's
    record, else $MLFLOW_TRACKING_URI, else SQLite in the folder."""
    for uri, source in (
        (args.mlflow_uri, "--mlflow-uri"),
        (record.get("tracking_uri"), f"{folder.record}'s tracking_uri"),
        (os.environ.get(ENV_URI), f"${ENV_URI}"),
    ):
        if uri:
            return uri, source
    return folder.mlflow_uri, "the search's store"
