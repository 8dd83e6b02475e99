"""The paper's table (Clean, FGSM, PGD_S, PGD_T, CW, AA, Ave) from MLflow runs, as Markdown and CSV.

    python analysis/report.py --experiment derd-digits [--add-training runs/train-x ...] [--out reports/]

``--add-training DIR`` records a ``derd.train`` output folder (its test table, config and
figures) as an MLflow run of the experiment (once; again is a no-op). The report lists the
paper's published rows for the dataset (where METHOD.md has them), every recorded final
training (test split, ``full`` protocol) and the search's Pareto-front trials (val split,
``search`` protocol: the columns it does not compute are left empty).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from analysis.paper_results import COLUMNS, PAPER_ROWS
from analysis.pareto import open_experiment
from derd.errors import UserError, cli_errors
from derd.evaluate import markdown_table

TRAIN_TAG = "derd.train_dir"


def add_training(client, experiment_id: str, folder: Path) -> str:
    """Record a derd.train output folder as an MLflow run (kind ``final``); returns its run id."""
    table_file = folder / "table.json"
    if not table_file.is_file():
        raise UserError(f"{folder} is not a derd.train output folder (no table.json)")
    key = str(folder.resolve())
    found = client.search_runs([experiment_id], f"tags.`{TRAIN_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    from mlflow.entities import Metric, Param, RunTag

    data = json.loads(table_file.read_text())
    from derd.config import from_dict, to_flat

    cfg = from_dict(data["config"])
    origin = cfg.origin.get("run_id", "")
    run = client.create_run(experiment_id, run_name=f"final-{cfg.variant}-{folder.name}",
                            tags={TRAIN_TAG: key, "derd.kind": "final", "derd.variant": cfg.variant,
                                  "derd.origin_run_id": str(origin)})
    params = [Param(k, str(v)) for k, v in to_flat(cfg).items() if k != "origin"]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in data["test"].items()],
                     tags=[RunTag("derd.student", cfg.student.arch)])
    for name in ("table.md", "samples.png", "accuracy.png", "config.yaml"):
        if (folder / name).is_file():
            client.log_artifact(run.info.run_id, str(folder / name))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def report_rows(client, experiment_id: str) -> tuple[str, dict[str, dict[str, float]]]:
    """(dataset, {row name: columns}) from the experiment's runs, the paper's rows first."""
    runs = client.search_runs([experiment_id], max_results=50000)
    datasets = {r.data.params.get("data.dataset") or r.data.params.get("dataset") for r in runs} - {None}
    dataset = sorted(datasets)[0] if datasets else "digits"
    rows: dict[str, dict[str, float]] = dict(PAPER_ROWS.get(dataset, {}))
    for r in sorted(runs, key=lambda r: r.info.start_time):
        kind = r.data.tags.get("derd.kind")
        if kind == "final":
            rows[f"final: {r.data.tags.get('derd.variant')} {r.data.tags.get('derd.student', '')} (test, full)"] = {
                k.removeprefix("test/"): v for k, v in r.data.metrics.items() if k.startswith("test/")}
        elif kind == "trial" and r.data.tags.get("pareto_front") == "true":
            rows[f"trial {r.data.tags.get('derd.trial_id')} (val, search)"] = {
                k.removeprefix("val/"): v for k, v in r.data.metrics.items() if k.startswith("val/")}
    return dataset, rows


def to_csv(rows: dict[str, dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["row", "Clean", "FGSM", "PGD_S", "PGD_T", "CW", "AA", "Ave"])
    for name, m in rows.items():
        writer.writerow([name, *[f"{m[c]:.2f}" if c in m and not math.isnan(m[c]) else "" for c in COLUMNS]])
    return buf.getvalue()


def full_markdown(rows: dict[str, dict[str, float]]) -> str:
    """markdown_table with all seven columns even when no row has some of them."""
    padded = {name: {c: m.get(c, float("nan")) for c in COLUMNS} for name, m in rows.items()}
    return markdown_table(padded)


@cli_errors
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python analysis/report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--add-training", nargs="*", default=[], metavar="DIR", help="derd.train output folders to record first")
    p.add_argument("--out", help="folder for report.md and report.csv (default: print only)")
    p.add_argument("--tracking-uri")
    args = p.parse_args(argv)
    client, exp = open_experiment(args.experiment, args.tracking_uri)
    for folder in args.add_training:
        add_training(client, exp.experiment_id, Path(folder))
    dataset, rows = report_rows(client, exp.experiment_id)
    text = f"Robustness of {dataset} students (accuracy %, eps as the dataset declares)\n\n" + full_markdown(rows) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text)
        (out / "report.csv").write_text(to_csv(rows))
        print(f"written: {out / 'report.md'}, {out / 'report.csv'}")
    return {"dataset": dataset, "rows": rows}


if __name__ == "__main__":
    main()
