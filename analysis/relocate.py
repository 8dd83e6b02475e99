"""Point a copied or moved search folder's records at where the folder is now.

    python analysis/relocate.py --out runs/derd-digits-copy

MLflow's SQLite store keeps absolute artifact locations, so a moved folder's store still
names the old ``mlartifacts``; the analysis CLIs refuse such a folder instead of writing
into the original. This rewrites, inside the folder only: the experiments' artifact
locations, the runs' artifact URIs and ``derd.search_dir`` tags in ``mlflow.db``, and the
folder and store named in ``search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
from pathlib import Path

from derd.errors import UserError, cli_errors
from tuning.records import SearchFolder, Tag
from tuning.store import MLFLOW_TABLES, check_sqlite_store, read_search_record


def relocate(folder: Path) -> tuple[str, str]:
    """Rewrite the folder's records from its old location to ``folder``; returns (old, new). Everything
    it reads or rewrites is checked first (a search folder, a whole MLflow store, a well-formed record,
    writable files), so a bad folder is one line and nothing is half rewritten."""
    search = SearchFolder(folder.resolve())
    folder, record_file, db = search.root, search.record, search.mlflow_db
    if not record_file.is_file() or not db.is_file():
        raise UserError(f"{folder} is not a search folder (needs {record_file.name} and {db.name})")
    check_sqlite_store(db, "the MLflow store", MLFLOW_TABLES, "restore the folder from the original search")
    record = read_search_record(search, required=("out",))
    old, new = str(Path(record["out"])), str(folder)
    if old == new:
        return old, new
    for path in (folder, record_file, db):
        if not os.access(path, os.W_OK):
            raise UserError(
                f"{path} is read-only, and relocating rewrites it; make the copy writable "
                f"(chmod -R u+w {folder}) and run again"
            )
    try:
        with sqlite3.connect(db) as con:
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                con.execute(
                    f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE {column} LIKE ?",
                    (f"{Path(old).as_uri()}/", f"{Path(new).as_uri()}/", f"{Path(old).as_uri()}/%"),
                )
            con.execute("UPDATE tags SET value = ? WHERE key = ? AND value = ?", (new, Tag.SEARCH_DIR, old))
        con.close()
    except sqlite3.Error as err:  # locked by a running search, or a disk that is full
        raise UserError(f"cannot rewrite {db} ({err}); stop whatever uses the folder and run again") from None
    record["out"] = new
    if record.get("tracking_uri") == SearchFolder(old).mlflow_uri:
        record["tracking_uri"] = search.mlflow_uri
    record_file.write_text(json.dumps(record, indent=1))
    return old, new


@cli_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python analysis/relocate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the search folder, where it is now")
    args = p.parse_args(argv)
    old, new = relocate(Path(args.out))
    print(f"{new}: records now point here" + (f" (were {old})" if old != new else " (nothing to change)"))


if __name__ == "__main__":
    main()
