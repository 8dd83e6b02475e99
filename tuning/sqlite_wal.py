"""The search's SQLite stores (``optuna.db``, ``mlflow.db``) in SQLite's write-ahead mode.

With the default rollback journal every commit waits for an fsync: 8 to 18 ms on this machine's
disk, and a trial start commits once per sampled key and a few times more for its MLflow run, so
the driver's trial starts were bound by the disk (``benchmarks/bench_scale.py``). In write-ahead
mode with ``synchronous=NORMAL`` a commit costs about 0.01 ms, and the file stays whole through a
killed process or a power loss, which may drop the last commits but never corrupts it (SQLite's
documentation of WAL). Readers on the same machine (the MLflow UI, ``export``, the checks of
``tuning.store``) read the log too; a copy of a search folder made while a search runs, or after
a kill, must take the ``-wal`` files with it (``cp -r`` of the folder does).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine

_FOLDERS: set[Path] = set()  # search folders whose stores this process opens in write-ahead mode


def write_ahead(connection: sqlite3.Connection) -> None:
    """Put one SQLite connection in write-ahead mode with ``synchronous=NORMAL``."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def write_ahead_in(folder: Path) -> None:
    """From now on, every SQLite connection this process opens to a file in ``folder`` (the search's
    stores, whichever library opens them) is in write-ahead mode."""
    _FOLDERS.add(Path(folder).resolve())
    if not event.contains(Engine, "connect", _on_connect):
        event.listen(Engine, "connect", _on_connect)


def _on_connect(connection, _record) -> None:
    if not isinstance(connection, sqlite3.Connection):
        return
    files = [row[2] for row in connection.execute("PRAGMA database_list") if row[1] == "main"]
    if files and files[0] and Path(files[0]).resolve().parent in _FOLDERS:
        write_ahead(connection)
