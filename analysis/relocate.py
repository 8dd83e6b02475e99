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
import sqlite3
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from analysis.store import check_mlflow_uri
from derd.errors import UserError, cli_errors
from derd.records import SearchFolder, Tag


def relocate(folder: Path) -> tuple[str, str]:
    """Rewrite the folder's records from its old location to ``folder``; returns (old, new)."""
    search = SearchFolder(folder.resolve())
    folder, record_file, db = search.root, search.record, search.mlflow_db
    if not record_file.is_file() or not db.is_file():
        raise UserError(f"{folder} is not a search folder (needs {record_file.name} and {db.name})")
    check_mlflow_uri(search.mlflow_uri)
    record = json.loads(record_file.read_text())
    old, new = str(Path(record["out"])), str(folder)
    if old == new:
        return old, new
    with sqlite3.connect(db) as con:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE {column} LIKE ?",
                        (f"{Path(old).as_uri()}/", f"{Path(new).as_uri()}/", f"{Path(old).as_uri()}/%"))
        con.execute("UPDATE tags SET value = ? WHERE key = ? AND value = ?", (new, Tag.SEARCH_DIR, old))
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
