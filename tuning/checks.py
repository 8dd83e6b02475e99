"""Preflight checks: everything a user can get wrong is caught before anything is written."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from derd.errors import UserError, check_output_folder
from tuning.records import SearchFolder
from tuning.store import (
    MLFLOW_TABLES,
    check_sqlite_store,
    first_line,
    read_only,
    read_search_record,
    sqlite_path,
)

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from tuning.space import SearchSpace


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """A Ray head at HOST:PORT (or ray://HOST:PORT; ``auto``: the one ``ray start`` recorded on this
    machine) must accept a TCP connection and, when its token authentication is on, this machine's
    token (``join_token_auth``)."""
    if address in (None, "", "local"):
        return
    if address == "auto":
        address = _local_head()
        if address == "auto":
            return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise UserError(
            f"no Ray cluster answers at {address} ({err}); start one with 'ray start --head' or fix --address"
        ) from None
    if "://" not in address:  # a Ray Client address (ray://) is not the head's GCS
        join_token_auth(address, timeout)


def _local_head() -> str:
    """The GCS address of the Ray cluster ``--address auto`` joins ($RAY_ADDRESS, else the latest
    ``ray start`` on this machine), as ``ray.init`` finds it."""
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die
    except ImportError:  # moved in a later Ray: ray.init resolves auto itself
        return "auto"
    try:
        return canonicalize_bootstrap_address_or_die("auto")
    except ConnectionError as err:
        raise UserError(
            f"--address auto: {first_line(err)}; start one with 'ray start --head', or pass "
            f"--address HOST:PORT"
        ) from None


AUTH_MODE = (
    "RAY_AUTH_MODE"  # Ray's switch: token | disabled; unset, Ray turns tokens on only for address auto
)
HEAD_TOKEN = (
    "copy the head's ~/.ray/auth_token to this machine (print it on the head with 'ray get-auth-token') "
    "or set RAY_AUTH_TOKEN to it"
)


def join_token_auth(address: str, timeout: float = 5.0) -> bool:
    """Whether the Ray head at HOST:PORT requires token authentication; if so, it is turned on for this
    process (``RAY_AUTH_MODE=token``), so that ``ray.init`` sends the token, once the head accepted it.

    A head started with ``ray start --head`` requires a token when its machine holds one
    (``~/.ray/auth_token``, which ``ray get-auth-token --generate`` and any local ``ray.init()`` write),
    and ``ray.init`` sends one only when ``RAY_AUTH_MODE=token``, which Ray sets by itself for
    ``address='auto'`` alone: joined by HOST:PORT, such a head refused the search after 20 s of
    retries. The token is Ray's: ``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH``, else
    ``~/.ray/auth_token``. One request to the head, with the token when this process sends one, tells
    whether it is needed and accepted; a missing or rejected token is one line naming what to set."""
    mode = os.environ.get(AUTH_MODE, "").lower()
    from ray import _raylet  # Ray's internals: no public call asks a head about its token

    if not all(hasattr(_raylet, name) for name in ("AuthenticationTokenLoader", "Config", "GcsClient")):
        return mode == "token"  # moved in a later Ray: ray.init decides, with its own error
    if _head_accepts(address, timeout):
        return mode == "token"
    if mode == "disabled":
        raise UserError(
            f"the Ray cluster at {address} requires its token, but {AUTH_MODE}=disabled here; unset "
            f"{AUTH_MODE} (or set it to token) and {HEAD_TOKEN}"
        )
    from ray._raylet import AuthenticationTokenLoader

    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        raise UserError(
            f"the Ray cluster at {address} requires a token (its token authentication is on) and this "
            f"machine has none; {HEAD_TOKEN}"
        )
    if mode != "token":
        _use_token_auth()
        if _head_accepts(address, timeout):
            return True
    raise UserError(
        f"the Ray cluster at {address} rejects this machine's token ({_token_source()}); {HEAD_TOKEN}"
    )


def _head_accepts(address: str, timeout: float) -> bool:
    """False when the head's GCS refuses this process's token (or its lack of one), else True (any
    other answer is ``ray.init``'s to report)."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        # a made-up cluster id: the client sends this one request without asking the head for its id
        # first (which it retries for 20 s); the head checks the token before the id
        GcsClient(address=address, cluster_id="00" * 28).internal_kv_get(
            b"derd-token-check", None, timeout=timeout
        )
    except AuthenticationError as err:
        return "InvalidAuthToken" not in str(err)  # WrongClusterID: the token passed
    except Exception:  # noqa: BLE001 - not an answer about the token
        return True
    return True


def local_token_auth() -> None:
    """A local search's own Ray instance under Ray's default, token authentication, said explicitly
    (``RAY_AUTH_MODE=token``, Ray's cached config re-read): Ray then skips the WARNING it prints on
    every run while the mode is unset, noise to a new user that turns a one-line error into two. A
    ``RAY_AUTH_MODE`` the user set (``disabled`` opts out) is kept."""
    if AUTH_MODE in os.environ:
        return
    try:
        _use_token_auth()
    except ImportError:  # moved in a later Ray: its own default (and WARNING) stands
        pass


def _use_token_auth() -> None:
    """``RAY_AUTH_MODE=token`` for this process, and Ray's cached config and token re-read (as Ray does
    for ``address='auto'``)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ[AUTH_MODE] = "token"
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _token_source() -> str:
    """Where Ray read this machine's token from, for the error line."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return f"$RAY_AUTH_TOKEN_PATH, {path}" if path else str(Path.home() / ".ray" / "auth_token")


def check_cluster_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A trial must fit on one node of the (already connected) Ray cluster."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    max_gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    max_cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    if gpus_per_trial > max_gpus:
        raise UserError(
            f"--gpus-per-trial {gpus_per_trial:g} is more than any node has ({max_gpus:g} GPUs); "
            f"lower it (fractions such as 0.5 share a GPU) or add GPU nodes"
        )
    if cpus_per_trial > max_cpus:
        raise UserError(
            f"--cpus-per-trial {cpus_per_trial:g} is more than any node has ({max_cpus:g} CPUs); lower it"
        )


def check_search_folder(folder: SearchFolder) -> dict[str, Any]:
    """The record of a search to resume; one clear error when the folder holds none, the record is
    damaged (``tuning.store.read_search_record``), the folder was moved, or its driver still runs."""
    out, record_file = folder.root, folder.record
    if not record_file.is_file():
        if out.is_dir() and folder.space.is_file():
            raise UserError(
                f"{out} holds a search from before search records ({record_file.name} is missing); "
                f"start a new search in another --out"
            )
        raise UserError(
            f"nothing to resume in {out}: no {record_file.name} (the search never started there); "
            f"start it without --resume"
        )
    record = read_search_record(folder)
    if Path(record["out"]).resolve() != out.resolve():
        raise UserError(
            f"{out} was moved from {record['out']}; its MLflow store still points there: run "
            f"python analysis/relocate.py --out {out} first"
        )
    pid = record.get("driver_pid")
    if driver_alive(pid):
        raise UserError(
            f"a search driver (pid {pid}) is still running on this folder; stop it (Ctrl-C) or wait, "
            f"then resume"
        )
    return record


OPTUNA_TABLES = ("studies", "trials", "version_info")  # what Optuna's storage creates in its SQLite file
NEW_SEARCH = "start a new search in another --out (without --resume)"

# a trial's unreadable checkpoint, set aside so that the trial restarts from its start: (path, why)
Unreadable = tuple[Path, str]


def check_resumable(
    folder: SearchFolder, record: dict[str, Any], space: SearchSpace, num_trials_source: str
) -> list[Unreadable]:
    """What a resumed search continues from, checked before anything is written (after
    ``check_search_folder``; ``space`` is the folder's, with this resume's settings):

    * ``space.yaml`` and ``search.json`` name the same dataset;
    * once the search ran (a session, or trial folders), its study ``optuna.db`` and its own MLflow
      store are there and whole: without them a resume would start over beside the old records;
    * ``num_trials`` (from ``num_trials_source``) is not below the trials the study already ran;
    * the running trials' folders are writable (they save a checkpoint every epoch).

    Returns the running trials' checkpoints that cannot be read (cut short, not a run checkpoint,
    holding pickled code: read with ``weights_only``, never run); ``set_aside`` moves them so that
    those trials restart from their start."""
    from optuna.trial import TrialState

    if space.dataset != record["dataset"]:
        raise UserError(
            f"{folder.record} is a search of {record['dataset']} but {folder.space} is for {space.dataset}; "
            f"one was edited: restore it, or {NEW_SEARCH}"
        )
    ran = bool(record.get("sessions")) or folder.trials.is_dir()
    stores = [(folder.optuna_db, "the study", OPTUNA_TABLES)]
    if record.get("tracking_uri") == folder.mlflow_uri:
        stores.append((sqlite_path(folder.mlflow_uri), "the MLflow store", MLFLOW_TABLES))
    for path, what, tables in stores:
        if not path.exists() and ran:
            raise UserError(
                f"{what} {path} is missing, though this search ran: resuming would start over beside its "
                f"old records; restore it, or {NEW_SEARCH}"
            )
        if path.exists():
            check_sqlite_store(path, what, tables, f"restore it, or {NEW_SEARCH}")
    trials = study_trials(folder, record["name"]) if folder.optuna_db.exists() else []
    started = [t for t in trials if t.state != TrialState.WAITING]
    if space.num_trials < len(started):
        raise UserError(
            f"{num_trials_source} {space.num_trials} is below the {len(started)} trials this search already "
            f"ran or started; pass --num-trials {len(started)} or more (or drop it)"
        )
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    for path in [folder.trials, *(folder.trial_checkpoint(n).parent for n in running)]:
        if path.is_dir() and not os.access(path, os.W_OK):
            raise UserError(
                f"{path} is read-only, so the running trials cannot save their checkpoints; make it "
                f"writable (chmod -R u+w {folder.trials}) and resume again"
            )
    return [bad for n in running if (bad := _unreadable(folder.trial_checkpoint(n))) is not None]


def study_trials(folder: SearchFolder, name: str) -> list:
    """The trials of the search's study, read without writing: SQLite read as the file is
    (``tuning.store.read_only``) and no table creation (Optuna's storage would otherwise create its
    tables in the file)."""
    import optuna
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = folder.optuna_db.resolve().as_uri().removeprefix("file://")  # %-encoded: SQLite reads a URI
    try:
        storage = RDBStorage(
            f"sqlite:///file:{path}?{read_only(folder.optuna_db)}&uri=true", skip_table_creation=True
        )
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        raise UserError(
            f"the study {folder.optuna_db} holds no study {name!r} (the search's name); restore it, or "
            f"{NEW_SEARCH}"
        ) from None
    except (
        SQLAlchemyError,
        RuntimeError,
        ValueError,
        OSError,
    ) as err:  # RuntimeError: a schema of another Optuna
        raise UserError(
            f"the study {folder.optuna_db} cannot be read ({first_line(err)}); restore it, or {NEW_SEARCH}"
        ) from None


def _unreadable(path: Path) -> Unreadable | None:
    """(path, why) when a trial's checkpoint exists but cannot be resumed from; None otherwise."""
    from derd.run import DistillationRun

    if not path.exists():
        return None
    try:
        DistillationRun.read_state(path)
    except UserError as err:
        return path, str(err).rsplit("; ", 1)[0]  # the reason, without the fix (derd.errors' "what; fix")
    return None


def set_aside(unreadable: list[Unreadable]) -> None:
    """Move each unreadable checkpoint of a running trial beside it (``run.pt.unreadable``: kept for a
    look, never loaded), so that the trial restarts from its start; one warning line on stderr each."""
    for path, why in unreadable:
        aside = path.with_name(f"{path.name}.unreadable")
        os.replace(path, aside)
        print(
            f"warning: trial {path.parent.name} restarts from its start: {why}; moved it to {aside}",
            file=sys.stderr,
            flush=True,
        )


STORAGE_SCHEMES = (
    "s3",
    "gs",
    "gcs",
    "hdfs",
    "viewfs",
    "abfs",
    "abfss",
)  # pyarrow's filesystems, Ray's storage


def check_storage_path(path: str | None) -> None:
    """``--storage-path`` (Ray's storage of trial checkpoints): a local folder that exists or can be
    made (a plain path or ``file://``), or the URI of a filesystem Ray writes to; checked before
    anything is written (Ray would fail only when the trials start)."""
    if path is None:
        return
    try:
        parsed = urlparse(path)
    except ValueError as err:
        raise UserError(f"--storage-path {path} is not a valid path or URI ({err})") from None
    if parsed.scheme in ("", "file"):
        check_output_folder(unquote(parsed.path) if parsed.scheme else path, "--storage-path")
    elif parsed.scheme not in STORAGE_SCHEMES:
        raise UserError(
            f"--storage-path {path}: unknown scheme {parsed.scheme}://; pass a shared folder or a URI of "
            f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}"
        )


def driver_alive(pid: int | None) -> bool:
    """Whether a search driver with this pid still runs (Linux /proc; elsewhere assume not)."""
    if not pid or pid == os.getpid():
        return False
    try:
        return b"search.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def teacher_preflight(
    plan, n_images: int = 256, val: Dataset | None = None
) -> tuple[dict[str, dict[str, float]], float]:
    """Each teacher's clean and PGD_S accuracy on the first ``n_images`` val images (of ``val``, the
    synthetic validation set, when given: its clean accuracy is 100 by construction), printed before
    any GPU-hour is spent, and the feasibility threshold: ``min_clean_fraction`` of the natural
    teacher's clean accuracy (of the robust teacher's when the search uses no natural one)."""
    import torch

    from derd.config import from_dict
    from derd.data import dataset_info, first_n, load_split, make_loader
    from derd.device import resolve_device
    from derd.evaluate import Protocol, eval_batch_size, evaluate, markdown_table

    cfg = from_dict(plan.base_config)
    info = dataset_info(cfg.data.dataset, cfg.data.image_size)
    device = resolve_device(cfg.device)
    if val is None:
        val = load_split(info.name, "val", cfg.data.root, image_size=cfg.data.image_size)
    val = first_n(val, n_images)
    loader = make_loader(val, eval_batch_size(cfg.data.val_batch_size, info.image_shape, device))
    protocol = Protocol("preflight", ("clean_acc", "pgd_acc"), n_images, "fast")
    tables = {}
    for kind in ("natural", "robust"):
        model = getattr(plan.experts, kind)
        if model is not None:
            tables[kind] = evaluate(
                model.to(device), loader, protocol, eps=info.eps, device=device, seed=cfg.seed
            )
    plan.experts.to(
        torch.device("cpu")
    )  # back in place: trials receive them pickled, and a CPU node has no CUDA
    print(
        f"teachers on the first {len(val)} {'synthetic ' if cfg.eval.validation == 'synthetic' else ''}val images "
        f"(eps {info.eps:.4f}):\n" + markdown_table({f"{kind} teacher": t for kind, t in tables.items()}),
        flush=True,
    )
    reference = tables.get("natural", tables.get("robust"))
    threshold = plan.space.min_clean_fraction * reference["clean_acc"]
    print(
        f"feasible trials: val clean accuracy >= {threshold:.2f} ({plan.space.min_clean_fraction:g} x the "
        f"{'natural' if 'natural' in tables else 'robust'} teacher's {reference['clean_acc']:.2f})",
        flush=True,
    )
    return tables, threshold
