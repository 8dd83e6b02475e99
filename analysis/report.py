"""Reports in the paper's columns (Clean, FGSM, PGD_S, PGD_T, CW, AA, Ave), as Markdown and CSV.

    python analysis/report.py --experiment derd-digits [--add-training runs/train-x ...] [--out reports/]
    python analysis/report.py --paper-tables --dataset digits --seeds 0 1 2 [--out reports/paper-digits]

Search report: ``--add-training DIR`` records a ``derd.train`` output folder (its test
table, config, figures and the protocol its scores were measured under, as the run's
``derd.protocol``/``derd.eps``/``derd.attacks`` tags) as an MLflow run of the experiment
(once; again is a no-op). Every table holds scores of one protocol only, named in its
heading (``derd.evaluate.describe_protocol``): final trainings (test split) under the full
protocol (AA is standard AutoAttack) beside the paper's published rows for the dataset,
final trainings under any other protocol (``derd.train --protocol search``) in a table of
their own, and the search's Pareto front (val split, the trials' protocol, by default the
search protocol: AA is APGD-CE + APGD-T; ± one binomial standard error), sorted by clean
accuracy. The CSV names each row's protocol and eps.

``--paper-tables``: the paper's Tables 1-3 for a dataset (``analysis.paper_tables``).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path
from typing import Any

from analysis.paper_results import PAPER_ROWS
from analysis.pareto import front_of
from analysis.trials import search_trials, with_se
from derd.errors import UserError, check_output_folder, cli_errors
from derd.evaluate import (
    COLUMNS,
    PROTOCOLS,
    REFERENCE_EPS,
    REPORTED,
    VAL_CLEAN,
    WORST_AA,
    describe_protocol,
    header,
    infer_protocol,
    protocol_record,
    same_protocol,
    val,
)
from derd.methods import display_name, footnotes
from derd.settings import SEED_MAX, check_flag
from derd.train import add_teacher_flags, read_table, teacher_overrides
from tuning.records import Tag, protocol_of_tags, protocol_tags
from tuning.store import open_experiment, runs_tagged

FRONT_COLUMNS = PROTOCOLS["search"].columns
PAPER_PROTOCOL = protocol_record("full", REFERENCE_EPS)  # what the paper's published rows were measured under

Protocol = dict[str, Any] | None  # a recorded protocol (derd.evaluate.protocol_record); None: never recorded


def read_training(folder: Path) -> dict[str, Any]:
    """A derd.train output folder's ``table.json`` (its config and test table), or the fix."""
    if not (folder / "table.json").is_file():
        data = {}
    else:
        data = read_table(folder / "table.json")
    if "config" not in data:
        raise UserError(
            f"{folder} is not a derd.train output folder (no table.json with a config and a test "
            "table); pass the --out of python -m derd.train"
        )
    return data


def add_training(client, experiment_id: str, folder: Path, data: dict[str, Any]) -> str:
    """Record a derd.train output folder (``data``: its ``read_training``) as an MLflow run (kind
    ``final``), once; returns its run id."""
    key = str(folder.resolve())
    found = runs_tagged(client, [experiment_id], {Tag.TRAIN_DIR: key}, max_results=1)
    if found:
        return found[0].info.run_id
    from mlflow.entities import Metric, Param, RunTag

    from derd.config import from_dict, to_flat
    from derd.methods import uses_key

    cfg = from_dict(data["config"])
    origin = cfg.origin.get("run_id", "")
    measured = data.get("protocol")
    run = client.create_run(
        experiment_id,
        run_name=f"final-{cfg.method}-{folder.name}",
        tags={
            Tag.TRAIN_DIR: key,
            Tag.KIND: "final",
            Tag.METHOD: cfg.method,
            Tag.ORIGIN_RUN_ID: str(origin),
            **(protocol_tags(measured) if measured else {}),
        },
    )
    params = [Param(k, str(v)) for k, v in to_flat(cfg).items() if k != "origin" and uses_key(cfg.method, k)]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), 0, 0) for k, v in data["test"].items()],
        tags=[RunTag(Tag.STUDENT, cfg.student.arch)],
    )
    for name in ("table.md", "samples.png", "accuracy.png", "config.yaml"):
        if (folder / name).is_file():
            client.log_artifact(run.info.run_id, str(folder / name))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def group_by_protocol(rows: list[tuple[Protocol, str, Any]]) -> list[tuple[Protocol, dict[str, Any]]]:
    """Rows ``(protocol, name, row)`` as one ``(protocol, {name: row})`` per protocol (``same_protocol``),
    in their first row's order: the tables a report prints, each of one protocol only."""
    groups: list[tuple[Protocol, dict[str, Any]]] = []
    for protocol, name, row in rows:
        group = next((g for p, g in groups if same_protocol(p, protocol)), None)
        if group is None:
            groups.append((protocol, group := {}))
        group[name] = row
    return groups


def final_protocol(run, eps: float) -> Protocol:
    """The protocol of a final run's test scores: its tags, else (a run recorded before runs carried
    their protocol) the protocol whose columns it holds, at the dataset's eps; else None."""
    recorded = protocol_of_tags(run.data.tags)
    if recorded is not None:
        return recorded
    name = infer_protocol(k.removeprefix("test/") for k in run.data.metrics if k.startswith("test/"))
    return protocol_record(name, eps) if name else None


def report_rows(
    client, experiment_id: str
) -> tuple[
    str,
    list[tuple[Protocol, dict[str, dict[str, float]]]],
    list[tuple[Protocol, list[tuple[str, dict[str, str]]]]],
    list[str],
]:
    """(dataset, the final trainings' tables: one ``(protocol, {row: metrics})`` per protocol, the full
    protocol's first with the paper's rows first in it; the front's tables: one ``(protocol, [(row,
    formatted cells)])`` per protocol the trials were scored under; the footnotes of starred methods
    among them)."""
    from derd.data import available_datasets, dataset_info

    runs = client.search_runs([experiment_id], max_results=50000)
    datasets = {r.data.params.get("data.dataset") or r.data.params.get("dataset") for r in runs} - {None}
    dataset = sorted(datasets)[0] if datasets else "digits"
    eps = dataset_info(dataset).eps if dataset in available_datasets() else REFERENCE_EPS
    rows: list[tuple[Protocol, str, Any]] = [
        (PAPER_PROTOCOL, name, row) for _, name, row in PAPER_ROWS.get(dataset, [])
    ]
    rows.insert(
        0, (protocol_record("full", eps), "", None)
    )  # the full protocol's table comes first, even empty
    ours = [r for r in runs if r.data.tags.get(Tag.KIND) == "final"]
    methods: list[str] = []
    for r in sorted(ours, key=lambda r: -r.data.metrics.get("test/clean_acc", 0.0)):
        method = r.data.tags.get(Tag.METHOD, r.data.tags.get("derd.variant"))
        methods.append(method)
        label = f"final: {display_name(method)} {r.data.tags.get(Tag.STUDENT, '')}"
        rows.append(
            (
                final_protocol(r, eps),
                label,
                {k.removeprefix("test/"): v for k, v in r.data.metrics.items() if k.startswith("test/")},
            )
        )
    finals = [(p, {n: m for n, m in group.items() if m is not None}) for p, group in group_by_protocol(rows)]
    front_rows: list[tuple[Protocol, str, dict[str, str]]] = []
    for parent, _, records in search_trials(client, experiment_id):
        front, _ = front_of(records)
        for rec in sorted(front, key=lambda r: -r.metrics[VAL_CLEAN]):
            measured = protocol_of_tags(parent.data.tags) or protocol_record(
                rec.params.get("eval.protocol", "search"), eps
            )
            columns = PROTOCOLS[measured["name"]].columns if measured["name"] in PROTOCOLS else FRONT_COLUMNS
            cells = {
                c: with_se(rec.metrics[val(c)], rec.n_images) if val(c) in rec.metrics else "-"
                for c in columns
            }
            if (
                val(WORST_AA) in rec.metrics
            ):  # a class holds a tenth of the images or so: no one binomial s.e.
                cells[WORST_AA] = f"{rec.metrics[val(WORST_AA)]:.2f}"
            front_rows.append((measured, f"{rec.name} ({rec.shown_method})", cells))
            methods.append(rec.method)
    fronts = [(p, list(group.items())) for p, group in group_by_protocol(front_rows)]
    return dataset, finals, fronts, footnotes(methods)


def _columns(protocol: Protocol, rows: Any) -> tuple[str, ...]:
    """The columns of a table of ``protocol``'s scores: its own; for an unrecorded one, those its rows hold."""
    if protocol and protocol["name"] in PROTOCOLS:
        columns = PROTOCOLS[protocol["name"]].columns
        columns = (*columns, "ave_acc") if set(columns) == set(COLUMNS) - {"ave_acc"} else columns
        return (*columns, WORST_AA) if any(WORST_AA in row for row in rows) else columns
    return tuple(c for c in REPORTED if any(c in row for row in rows))


def to_csv(finals: list[tuple[Protocol, dict[str, dict[str, float]]]]) -> str:
    """Every final row in the paper's columns, each naming the protocol and eps it was measured under."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["row", *(header(c) for c in REPORTED), "protocol", "eps", "attacks"])
    for protocol, rows in finals:
        labels = (
            [protocol["name"], f"{protocol['eps']:.6g}", "; ".join(protocol["attacks"])]
            if protocol
            else ["", "", ""]
        )
        for name, m in rows.items():
            writer.writerow(
                [name, *[f"{m[c]:.2f}" if c in m and not math.isnan(m[c]) else "" for c in REPORTED], *labels]
            )
    return buf.getvalue()


def _table(headers: tuple[str, ...], rows: list[tuple[str, list[str]]]) -> str:
    lines = ["| model | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines)


def search_report(
    dataset: str,
    finals: list[tuple[Protocol, dict[str, dict[str, float]]]],
    fronts: list[tuple[Protocol, list[tuple[str, dict[str, str]]]]],
    notes: list[str] = (),
) -> str:
    """The report's text: one table per protocol, its heading naming it (``report_rows``)."""
    parts = []
    for protocol, rows in finals:
        columns = _columns(protocol, rows.values())
        name = protocol["name"] if protocol else None
        first = (
            ", the paper's published rows first"
            if same_protocol(protocol, PAPER_PROTOCOL)
            and any(n in rows for _, n, _ in PAPER_ROWS.get(dataset, []))
            else ""
        )
        cells = [
            (n, [f"{m[c]:.2f}" if c in m and not math.isnan(m[c]) else "-" for c in columns])
            for n, m in rows.items()
        ]
        parts.append(
            f"Final trainings on {dataset} (test split, {describe_protocol(protocol)}){first}\n\n"
            + _table(tuple(header(c, name if name in PROTOCOLS else None) for c in columns), cells)
            + "\n"
        )
    for protocol, front_rows in fronts:
        columns = _columns(protocol, [c for _, c in front_rows])
        name = protocol["name"] if protocol else None
        parts.append(
            f"The search's Pareto front (val split, {describe_protocol(protocol)}; ± one binomial standard "
            f"error), by clean accuracy\n\n"
            + _table(
                tuple(header(c, name if name in PROTOCOLS else None) for c in columns),
                [(n, [c.get(col, "-") for col in columns]) for n, c in front_rows],
            )
            + "\n"
        )
    return "\n".join(parts) + "".join(f"\n{note}\n" for note in notes)


@cli_errors
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python analysis/report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", help="the search's MLflow experiment (its --name)")
    p.add_argument(
        "--add-training",
        nargs="*",
        default=[],
        metavar="DIR",
        help="derd.train output folders to record first",
    )
    p.add_argument(
        "--paper-tables", action="store_true", help="run (or reuse) every method and print the paper's tables"
    )
    p.add_argument("--dataset", default="digits", help="--paper-tables: the dataset (default digits)")
    p.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="--paper-tables: seeds (default 0 1 2)"
    )
    p.add_argument("--data-root", help="--paper-tables: dataset root (CIFAR, ImageNet-100)")
    add_teacher_flags(p)
    p.add_argument(
        "--out", help="folder for the report (default: print only; --paper-tables: runs/paper-<dataset>)"
    )
    p.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///runs/<experiment>/mlflow.db"
    )
    args = p.parse_args(argv)
    if args.paper_tables:
        return _paper_tables(args)
    if not args.experiment:
        raise UserError("pass --experiment NAME (a search's --name), or --paper-tables")
    out = check_output_folder(args.out) if args.out else None
    trainings = {
        Path(f): read_training(Path(f)) for f in args.add_training
    }  # checked before the store is touched
    client, exp = open_experiment(args.experiment, args.tracking_uri)
    for folder, data in trainings.items():
        add_training(client, exp.experiment_id, folder, data)
    dataset, finals, fronts, notes = report_rows(client, exp.experiment_id)
    text = search_report(dataset, finals, fronts, notes)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text)
        (out / "report.csv").write_text(to_csv(finals))
        print(f"written: {out / 'report.md'}, {out / 'report.csv'}")
    return {
        "dataset": dataset,
        "rows": {n: m for _, rows in finals for n, m in rows.items()},
        "front": [row for _, rows in fronts for row in rows],
        "finals": finals,
        "fronts": fronts,
    }


def _paper_tables(args: argparse.Namespace) -> dict[str, Any]:
    from analysis import paper_tables
    from derd.data import available_datasets

    if args.dataset not in available_datasets():
        raise UserError(f"--dataset {args.dataset!r} is not one of {', '.join(available_datasets())}")
    for seed in args.seeds:
        check_flag(seed, "--seeds", 0, SEED_MAX)
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is given twice; give each once")
    from derd.config import apply_overrides, preset

    overrides = {**teacher_overrides(args), **({"data.root": args.data_root} if args.data_root else {})}
    apply_overrides(preset(args.dataset), overrides)  # a bad teacher flag or root is one line before any run
    out = check_output_folder(args.out or Path("runs") / f"paper-{args.dataset}")
    results = paper_tables.collect(args.dataset, args.seeds, out, overrides)
    text = paper_tables.markdown(args.dataset, args.seeds, results)
    paper_tables.save(out, text, results)
    print(text)
    print(f"written: {out / 'paper_tables.md'}")
    return {"dataset": args.dataset, "results": results, "markdown": text}


def command() -> None:
    """``derd-report``, the installed command: ``main`` over the command line with its return value (the rows reported)
    dropped, because a console script exits with whatever its function returns."""
    main()


if __name__ == "__main__":
    main()
