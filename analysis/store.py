"""The MLflow store of a search: checked before use, opened by experiment name.

Every CLI takes ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the search folder's
SQLite file ``runs/<experiment>/mlflow.db``. A store is checked before any call that could
retry or trace back: a tracking server must answer ``/health`` within seconds, a SQLite
path must be an SQLite database, and a copied or moved search folder (whose store still
names the old artifact folder) is refused with the command that relocates it.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from derd.errors import UserError
from derd.records import FRONT_PAGE, SearchFolder, experiment_link, run_link, ui_url

LOCAL_UI = "http://127.0.0.1:5000"

SQLITE_MAGIC = b"SQLite format 3\x00"


def check_mlflow_uri(uri: str | None, timeout: float = 5.0) -> None:
    """An http(s) tracking server must answer /health; an existing SQLite path must be a database."""
    if uri is None:
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if path.is_dir():
            raise UserError(f"MLflow store {uri} is a folder; pass the path of its mlflow.db")
        if path.is_file() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                if f.read(16) != SQLITE_MAGIC:
                    raise UserError(f"MLflow store {uri} is not an SQLite database; pass the search's mlflow.db")
        return
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status >= 400:
                raise OSError(f"HTTP {resp.status}")
    except (OSError, urllib.error.URLError, ValueError) as err:
        raise UserError(f"MLflow tracking server {uri} is unreachable ({err}); start it or drop --mlflow-uri / "
                        f"--tracking-uri to use the local SQLite store") from None


def resolve_uri(name: str, tracking_uri: str | None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or SearchFolder((Path("runs") / name).resolve()).mlflow_uri


def open_experiment(name: str, tracking_uri: str | None):
    """(client, experiment) for a search's experiment; one clear error if it does not exist."""
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(name, tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no MLflow store at {uri}; pass --tracking-uri or run the search first")
    check_mlflow_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise UserError(f"no experiment {name!r} in {uri}; pass the search's --name")
    if uri.startswith("sqlite:///"):
        check_artifact_root(exp, Path(uri.removeprefix("sqlite:///")).parent)
    return client, exp


def check_artifact_root(experiment, folder: Path) -> None:
    """A search folder that was copied or moved still names the old artifact folder: refuse to
    write there (``analysis/relocate.py`` rewrites it)."""
    location, search = experiment.artifact_location or "", SearchFolder(folder)
    if location.startswith("file://") and search.record.is_file():
        recorded = Path(unquote(urlparse(location).path)).resolve()  # the search writes Path.as_uri(): %-encoded
        if recorded != search.artifacts.resolve():
            raise UserError(f"the MLflow store in {folder} keeps its artifacts in {recorded} (the folder was copied or "
                            f"moved); run python analysis/relocate.py --out {folder} first")


def ui_instructions(tracking_uri: str, experiment_id: str, parent_run_id: str | None) -> list[str]:
    """How to open a search in MLflow's UI: the command that serves a local store (on loopback), then
    the direct URLs of every trial (the runs table in model-training mode) and of the interactive front."""
    if urlparse(tracking_uri).scheme in ("http", "https"):
        base, lines = tracking_uri, [f"MLflow UI: {tracking_uri}"]
    else:
        base, lines = LOCAL_UI, [f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"]
    lines.append(f"  every trial: {ui_url(base, experiment_link(experiment_id))}")
    if parent_run_id:
        lines.append(f"  the front:   {ui_url(base, run_link(experiment_id, parent_run_id, FRONT_PAGE))}")
    return lines
