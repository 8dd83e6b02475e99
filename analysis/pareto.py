"""Pareto fronts of a search and their record in MLflow (the maths: ``derd.pareto``).

    python analysis/pareto.py --experiment derd-digits [--tracking-uri URI]

tags every finished trial run with ``pareto_rank`` (0 = front) and ``pareto_front`` =
true|false among the eligible trials (feasible, full budget: ``analysis.trials``; the
others get ``pareto_excluded`` = infeasible|partial), and logs on the search's parent run
the front as an interactive page (``pareto/front.html``, rendered by MLflow's artifact
viewer), a plot (``pareto/front.png``), CSV, its hypervolume (``search/hypervolume``) and
the best-trials table in the experiment's and the run's descriptions. Safe to run while a
search runs and idempotent.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from typing import Any

from analysis.trials import TrialRecord, choosable, search_trials
from derd.errors import cli_errors
from derd.evaluate import VAL_N
from derd.pareto import Objectives, hypervolume, knee_point, pareto_ranks
from tuning.records import FRONT_FILTER, FRONT_PAGE, VIEW_TAG, Tag, experiment_link, run_link, trials_view
from tuning.store import open_experiment, ui_instructions


def front_of(
    records: list[TrialRecord], include_partial: bool = False
) -> tuple[list[TrialRecord], dict[str, int]]:
    """(front sorted by the first objective, descending; Pareto rank per run id) over the records
    that may be chosen: feasible always, full budget unless ``include_partial``."""
    pool = choosable(records, include_partial)
    ranks = dict(zip((r.run_id for r in pool), pareto_ranks([r.objectives for r in pool])))
    front = sorted((r for r in pool if ranks[r.run_id] == 0), key=lambda r: [-v for v in r.objectives])
    return front, ranks


# ---- MLflow ------------------------------------------------------------------------------


def tag_fronts(client, experiment_id: str) -> list[dict[str, Any]]:
    """Tag every finished trial of every search in the experiment; log the front's page, plot, CSV,
    hypervolume and descriptions."""
    from mlflow.entities import RunTag

    from analysis.figures import front_figure, front_html
    from analysis.trials import best_trials_markdown

    summaries = []
    for parent, objectives, records in search_trials(client, experiment_id):
        client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(trials_view(objectives)))
        front, ranks = front_of(records)
        on_front = {r.run_id for r in front}
        for r in records:
            tags = [
                RunTag(Tag.PARETO_FRONT, str(r.run_id in on_front).lower()),
                RunTag(Tag.PARETO_RANK, str(ranks[r.run_id]) if r.run_id in ranks else "-"),
            ]
            if r.exclusion():
                tags.append(RunTag(Tag.PARETO_EXCLUDED, r.exclusion()))
            client.log_batch(r.run_id, tags=tags)
        knee = front[knee_point([r.objectives for r in front])] if front else None
        hv = (
            hypervolume([r.objectives for r in front])
            if all(m == "max" for _, m in objectives)
            else float("nan")
        )
        if not math.isnan(hv):
            client.log_metric(parent.info.run_id, "search/hypervolume", hv)
        client.log_metric(parent.info.run_id, "search/front_size", len(front))
        client.log_text(parent.info.run_id, front_csv(front, objectives), "pareto/front.csv")
        client.log_figure(
            parent.info.run_id, front_figure(records, front, knee, objectives), "pareto/front.png"
        )
        client.log_text(
            parent.info.run_id, front_html(records, front, knee, objectives, experiment_id), FRONT_PAGE
        )
        table = best_trials_markdown(records, front, objectives)
        note = describe(table, experiment_id, parent.info.run_id, len(front), len(records))
        client.set_tag(parent.info.run_id, Tag.NOTE, note)
        client.set_experiment_tag(experiment_id, Tag.NOTE, note)
        summaries.append(
            {
                "parent": parent.info.run_id,
                "trials": len(records),
                "front": [r.run_id for r in front],
                "knee": knee.run_id if knee else None,
                "hypervolume": hv,
            }
        )
    return summaries


def describe(table: str, experiment_id: str, parent_id: str, front_size: int, n_trials: int) -> str:
    """The Markdown description MLflow shows on the experiment and the search run."""
    return (
        f"**Pareto front: {front_size} of {n_trials} finished trials** (feasible, full trial budget). "
        f"[Open the interactive front]({run_link(experiment_id, parent_id, FRONT_PAGE)}) (the search run's "
        f"artifact `{FRONT_PAGE}`); [list every trial]({experiment_link(experiment_id)}) in the runs table "
        f"(model-training mode, sorted by robustness); type `{FRONT_FILTER}` in its search box for the front "
        f"alone.\n\n{table}"
    )


def front_csv(front: list[TrialRecord], objectives: Objectives) -> str:
    params = sorted({k for r in front for k in r.searched_keys})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run_id", "trial", "method", *[m for m, _ in objectives], VAL_N, *params])
    for r in front:
        writer.writerow(
            [
                r.run_id,
                r.name,
                r.method,
                *[r.metrics[m] for m, _ in objectives],
                r.n_images,
                *[r.params.get(k, "") for k in params],
            ]
        )
    return buf.getvalue()


@cli_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python analysis/pareto.py", description="Tag the Pareto front of a search in MLflow."
    )
    p.add_argument("--experiment", required=True, help="MLflow experiment (the search's --name)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///runs/<experiment>/mlflow.db)",
    )
    args = p.parse_args(argv)
    client, exp = open_experiment(args.experiment, args.tracking_uri)
    for s in tag_fronts(client, exp.experiment_id):
        print(
            f"search run {s['parent']}: {s['trials']} finished trials, front of {len(s['front'])}, "
            f"hypervolume {s['hypervolume']:.1f}"
        )
        print("\n".join(ui_instructions(client.tracking_uri, exp.experiment_id, s["parent"])))


if __name__ == "__main__":
    main()
