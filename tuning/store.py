"""The MLflow store of a search: checked before use, opened by experiment name, searched by tag.

Every CLI takes ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the search folder's
SQLite file ``runs/<experiment>/mlflow.db``. A store is checked before any call that could
retry, trace back or write (MLflow creates its tables in any SQLite file it opens): a
tracking server must answer ``/health`` within seconds; a SQLite path must be an MLflow
store that is whole (not empty, not cut short, not another database), or for a new store
name a file in an existing folder; any other URI must use a scheme MLflow records in; and a
copied or moved search folder (whose store still names the old artifact folder) is refused
with the command that relocates it. ``runs_tagged`` is the one way the project searches
runs by tag: MLflow's filter grammar has no escapes, so values are quoted here.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from derd.errors import UserError
from tuning.records import FRONT_PAGE, SearchFolder, experiment_link, run_link, ui_url

LOCAL_UI = "http://127.0.0.1:5000"
ENV_URI = "MLFLOW_TRACKING_URI"

SQLITE_MAGIC = b"SQLite format 3\x00"
MLFLOW_TABLES = (
    "experiments",
    "runs",
    "tags",
    "alembic_version",
)  # what MLflow's migrations leave in its store
# SQLite opened to read only, as the file is: no lock, no journal rolled back (mode=ro cannot read a file that a
# killed driver left with a hot journal; the store's own library rolls it back when it opens the file)
READ_AS_IS = "immutable=1"
SERVER_SCHEMES = ("http", "https")
DATABASE_SCHEMES = (
    "postgresql",
    "mysql",
    "mssql",
)  # MLflow's SQL stores besides SQLite; reachable only by trying
URI_HELP = "pass http(s)://HOST:PORT, sqlite:///PATH/mlflow.db or a database URI (postgresql://, mysql://)"


def read_only(path: Path) -> str:
    """The URI parameter that opens the SQLite file ``path`` to read only, as it stands: ``READ_AS_IS``,
    or ``mode=ro`` while a write-ahead log beside it (``tuning.sqlite_wal``) holds commits the file does
    not yet (``immutable`` would not read them)."""
    wal = path.with_name(path.name + "-wal")
    return "mode=ro" if wal.is_file() and wal.stat().st_size else READ_AS_IS


def check_sqlite_store(path: Path, what: str, tables: tuple[str, ...], fix: str) -> None:
    """An existing SQLite file that is a whole store holding ``tables``, checked without writing: not a
    folder, not empty (a library would create its tables in it), an SQLite database, not cut short
    (its header's page count fits the file: a copy or a disk that ran out), and its tables listed
    read-only (``read_only``). ``what`` names the store in the one-line error, ``fix`` ends it."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a database file; {fix}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as err:
        raise UserError(f"{what} {path} is unreadable ({err.strerror}); {fix}") from None
    if size == 0:
        raise UserError(f"{what} {path} is an empty file, not a store; {fix}")
    if header[:16] != SQLITE_MAGIC:
        raise UserError(f"{what} {path} is not an SQLite database; {fix}")
    expected = _sqlite_size(header)
    if expected is None or expected > size:
        raise UserError(
            f"{what} {path} is cut short ({size} bytes of {expected or 'a 100-byte header'}); {fix}"
        )
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?{read_only(path)}", uri=True)
        try:
            found = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error as err:
        raise UserError(f"{what} {path} is damaged ({err}); {fix}") from None
    missing = [t for t in tables if t not in found]
    if missing:
        raise UserError(
            f"{what} {path} is an SQLite database of something else (no {missing[0]} table); {fix}"
        )


def _sqlite_size(header: bytes) -> int | None:
    """The bytes an SQLite file's header says it holds (page size x page count); None for a short header.
    The page count is trusted when its version stamp matches the change counter (every SQLite since 3.7.0)."""
    if len(header) < 100:
        return None
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if header[92:96] != header[24:28]:
        return page_size
    return page_size * int.from_bytes(header[28:32], "big")


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URI (relative or, with a fourth slash, absolute); None for another URI."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))


def check_mlflow_uri(
    uri: str | None, source: str = "--tracking-uri", *, existing: bool = False, timeout: float = 5.0
) -> None:
    """A tracking URI MLflow can record in, refused in one line (naming ``source``: the flag or
    ``$MLFLOW_TRACKING_URI``) before anything is written. SQLite: an existing file must be a whole
    MLflow store; a missing one is refused when ``existing`` (the analysis CLIs and a resumed search
    read a store), else must name a file in an existing, writable folder. http(s): the server must
    answer /health. A database URI is passed on; anything else (a bare word or path, ``ftp://``, a
    malformed URL) is refused."""
    if uri is None:
        return
    where = f"{source} {uri}"
    try:
        parsed = urlparse(uri)
        parsed.port  # noqa: B018 - parsing the port is what refuses 'http://h:x'
    except ValueError as err:
        raise UserError(f"{where} is not a valid URI ({err}); {URI_HELP}") from None
    scheme = parsed.scheme.split("+", 1)[0].lower()
    if scheme == "sqlite":
        _check_sqlite_uri(uri, source, existing)
    elif scheme in SERVER_SCHEMES:
        if not parsed.hostname:
            raise UserError(f"{where} names no host; {URI_HELP}")
        _check_server(uri, source, timeout)
    elif scheme not in DATABASE_SCHEMES and scheme != "databricks" and uri != "databricks":
        kind = f"the scheme {parsed.scheme}://" if parsed.scheme else "a bare word or path"
        raise UserError(f"{where} is not a tracking URI this project records in ({kind}); {URI_HELP}")


def _check_sqlite_uri(uri: str, source: str, existing: bool) -> None:
    path, where = sqlite_path(uri), f"{source} {uri}"
    if path is None or not str(path) or str(path) == ":memory:":
        raise UserError(
            f"{where} names no SQLite file; pass sqlite:///PATH/mlflow.db (four slashes for an absolute path)"
        )
    if path.exists():
        fix = "pass the search's mlflow.db" + (
            "" if existing else ", or the path of a new file for a new store"
        )
        check_sqlite_store(path, f"{where}:", MLFLOW_TABLES, fix)
        return
    if existing:
        raise UserError(
            f"no MLflow store at {uri} ({source}); pass the search's store with "
            f"--tracking-uri, or run the search first"
        )
    folder = path.parent
    if not folder.is_dir():
        raise UserError(
            f"{where}: the folder {folder} does not exist; create it or pass a file in an existing folder"
        )
    if not os.access(folder, os.W_OK):
        raise UserError(f"{where}: the folder {folder} is not writable; pass a file in a writable folder")


def _check_server(uri: str, source: str, timeout: float) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status >= 400:
                raise OSError(f"HTTP {resp.status}")
    except (OSError, urllib.error.URLError, ValueError) as err:
        raise UserError(
            f"MLflow tracking server {uri} ({source}) is unreachable ({err}); start it, or drop "
            f"--mlflow-uri / --tracking-uri / ${ENV_URI} to use the local SQLite store"
        ) from None


def resolve_uri(name: str, tracking_uri: str | None) -> tuple[str, str]:
    """(URI, where it came from) of an analysis CLI's store: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``,
    else the SQLite store of ``runs/<name>``."""
    if tracking_uri:
        return tracking_uri, "--tracking-uri"
    if os.environ.get(ENV_URI):
        return os.environ[ENV_URI], f"${ENV_URI}"
    return SearchFolder((Path("runs") / name).resolve()).mlflow_uri, "the default store"


def open_experiment(name: str, tracking_uri: str | None):
    """(client, experiment) for a search's experiment; one clear error if the store is bad or the
    experiment does not exist."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from sqlalchemy.exc import SQLAlchemyError

    uri, source = resolve_uri(name, tracking_uri)
    check_mlflow_uri(uri, source, existing=True)
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(name)
    except (
        MlflowException,
        SQLAlchemyError,
        sqlite3.Error,
        OSError,
    ) as err:  # a store the checks could not see into
        raise UserError(
            f"cannot read the MLflow store {uri} ({first_line(err)}); pass the search's store with "
            f"--tracking-uri"
        ) from None
    if exp is None:
        raise UserError(f"no experiment {name!r} in {uri}; pass the search's --name")
    path = sqlite_path(uri)
    if path is not None:
        check_artifact_root(exp, path.parent)
    return client, exp


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (a library's multi-line error in a one-line UserError)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


# ---- search.json ---------------------------------------------------------------------------
# the keys of a search's record (tuning.search writes it) and their types; every reader checks it here
RECORD_SHAPE: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "dataset": ((str,), "a string"),
    "out": ((str,), "a string"),
    "tracking_uri": ((str,), "a string"),
    "sessions": ((list,), "a list"),
    "driver_pid": ((int, type(None)), "a pid or null"),
    "ray_processes": ((dict,), "an object"),
    "created": ((int, float), "a time"),
    "clean_threshold": ((int, float), "a number"),
    "teachers": ((dict,), "an object"),
}
RECORD_FIX = "restore it, or start a new search in another --out"


def read_search_record(
    folder: SearchFolder, required: tuple[str, ...] = ("name", "dataset", "out")
) -> dict[str, Any]:
    """A search folder's ``search.json``, its shape checked in one place (a resumed search and
    ``analysis/relocate.py`` read it): a JSON object holding ``required``, each known key of its type
    (``RECORD_SHAPE``), sessions with their wall time, Ray processes by pid. One line naming the key
    otherwise, where the code would trace back on it later."""
    path = folder.record
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is unreadable ({first_line(err)}); {RECORD_FIX}") from None
    if not isinstance(record, dict):
        raise UserError(
            f"{path} holds a JSON {type(record).__name__}, not a search record (an object with "
            f"{', '.join(required)}); {RECORD_FIX}"
        )
    for key in required:
        if key not in record:
            raise UserError(f"{path} has no {key!r}; {RECORD_FIX}")
    for key, (kinds, kind) in RECORD_SHAPE.items():
        value = record.get(key)
        if key in record and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise UserError(f"{path}: its {key!r} is {json.dumps(value)[:60]}, not {kind}; {RECORD_FIX}")
    if "out" in record and not Path(record["out"]).is_absolute():
        raise UserError(
            f"{path}: its 'out' is {record['out']!r}, not the absolute path of the search folder; "
            f"{RECORD_FIX}"
        )
    for i, session in enumerate(record.get("sessions", [])):
        if not isinstance(session, dict) or not _is_number(session.get("wall_s")):
            raise UserError(
                f'{path}: its \'sessions\'[{i}] is not a session ({{"start", "wall_s"}}); {RECORD_FIX}'
            )
    for pid, started in record.get("ray_processes", {}).items():
        if not pid.isdigit() or not _is_number(started):
            raise UserError(
                f"{path}: its 'ray_processes' holds {pid!r}: {json.dumps(started)[:40]}, not a pid and its "
                f"start time; {RECORD_FIX}"
            )
    return record


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- finding runs by tag --------------------------------------------------------------------
SEARCH_PAGE = 50000  # MLflow's largest page of search_runs
UNQUOTABLE = re.compile(r"""['"\\]""")  # what cannot stand inside a filter literal in every case


def filter_literal(value: str) -> str | None:
    """``value`` as a string literal of MLflow's search-filter grammar, or None where it has none.

    The grammar has no escapes: MLflow's parser (sqlparse) ends a literal at the first quote that is
    neither doubled nor backslashed, and MLflow then keeps what lies between the outer quotes as it
    is (``'o''brien'`` would match ``o''brien``). So a value is wrapped in a quote character it does
    not hold; one holding both, or ending in a backslash (that would escape the closing quote), has
    no literal."""
    if value.endswith("\\"):
        return None
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    return None


def tag_clause(key: str, value: str) -> tuple[str, bool]:
    """(a filter clause matching tag ``key`` = ``value``, whether it matches exactly). A value without a
    literal is matched with LIKE, its quotes and backslashes as ``_`` (any one character): the clause
    then narrows the search, and ``runs_tagged`` compares the values."""
    literal = filter_literal(value)
    if literal is not None:
        return f"tags.`{key}` = {literal}", True
    return f"tags.`{key}` LIKE '{UNQUOTABLE.sub('_', value)}'", False


def runs_tagged(
    client,
    experiment_ids: list[str],
    tags: dict[str, str],
    *,
    status: str | None = None,
    max_results: int = SEARCH_PAGE,
) -> list:
    """The runs of ``experiment_ids`` whose tags equal ``tags`` (and whose status is ``status``), newest
    first: the one way the project finds runs by a tag, so that any value (a folder named ``o'brien``)
    matches exactly, never breaks MLflow's filter parser, and never matches another run."""
    clauses = [tag_clause(key, str(value)) for key, value in tags.items()]
    text = " and ".join([c for c, _ in clauses] + ([f"attributes.status = '{status}'"] if status else []))
    exact = all(e for _, e in clauses)
    runs = client.search_runs(experiment_ids, text, max_results=max_results if exact else SEARCH_PAGE)
    return [r for r in runs if all(r.data.tags.get(k) == str(v) for k, v in tags.items())][:max_results]


# ---- a moved folder, the UI ------------------------------------------------------------------
def check_artifact_root(experiment, folder: Path) -> None:
    """A search folder that was copied or moved still names the old artifact folder: refuse to
    write there (``analysis/relocate.py`` rewrites it)."""
    location, search = experiment.artifact_location or "", SearchFolder(folder)
    if location.startswith("file://") and search.record.is_file():
        recorded = Path(
            unquote(urlparse(location).path)
        ).resolve()  # the search writes Path.as_uri(): %-encoded
        if recorded != search.artifacts.resolve():
            raise UserError(
                f"the MLflow store in {folder} keeps its artifacts in {recorded} (the folder was copied or "
                f"moved); run python analysis/relocate.py --out {folder} first"
            )


def ui_instructions(tracking_uri: str, experiment_id: str, parent_run_id: str | None) -> list[str]:
    """How to open a search in MLflow's UI: the command that serves a local store (on loopback), then
    the direct URLs of every trial (the runs table in model-training mode) and of the interactive front."""
    if urlparse(tracking_uri).scheme in ("http", "https"):
        base, lines = tracking_uri, [f"MLflow UI: {tracking_uri}"]
    else:
        base, lines = (
            LOCAL_UI,
            [f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"],
        )
    lines.append(f"  every trial: {ui_url(base, experiment_link(experiment_id))}")
    if parent_run_id:
        lines.append(f"  the front:   {ui_url(base, run_link(experiment_id, parent_run_id, FRONT_PAGE))}")
    return lines
