"""Pareto fronts of a search: the maths (pure functions) and their record in MLflow.

    python analysis/pareto.py --experiment derd-digits [--tracking-uri URI]

tags every finished trial run with ``pareto_rank`` (0 = front) and ``pareto_front`` =
true|false, and logs on the search's parent run a plot of the objectives (all trials, the
front joined, the paper's preset marked), the front as CSV and its hypervolume
(``search/hypervolume``). Safe to run while a search runs (unfinished trials are left
untagged until the next run) and idempotent (recomputing gives the same tags).

Conventions: every objective is maximised (callers negate a "min" objective). The
hypervolume's reference point is the origin by default, the natural worst case for
accuracies in percent; points that do not dominate the reference add nothing.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path
from typing import Any, Sequence

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from derd.errors import UserError, cli_errors

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """a is at least as good as b everywhere and strictly better somewhere."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_ranks(points: Sequence[Point]) -> list[int]:
    """Non-dominated sorting: rank 0 is the front, rank 1 the front once rank 0 is removed, ...

    Duplicated points share a rank. O(n^2) per front, fine for searches of thousands of trials.
    """
    ranks = [-1] * len(points)
    remaining = set(range(len(points)))
    rank = 0
    while remaining:
        front = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def hypervolume(points: Sequence[Point], reference: Point | None = None) -> float:
    """Volume dominated by ``points`` and bounded below by ``reference`` (exact, any dimension).

    2-D: one sweep over the points sorted by the first objective. n-D: the slicing algorithm
    (HSO: slice along the last objective, recurse on n-1 dimensions), exponential in the
    dimension but exact; fine for the handful of objectives a search has.
    """
    if not points:
        return 0.0
    dim = len(points[0])
    ref = list(reference) if reference is not None else [0.0] * dim
    pts = [list(p) for p in points if all(x > r for x, r in zip(p, ref))]
    if not pts:
        return 0.0
    if dim == 1:
        return max(p[0] for p in pts) - ref[0]
    if dim == 2:
        pts.sort(key=lambda p: (-p[0], -p[1]))
        volume, best_y = 0.0, ref[1]
        for x, y in pts:
            if y > best_y:
                volume += (x - ref[0]) * (y - best_y)
                best_y = y
        return volume
    levels = sorted({p[-1] for p in pts})
    volume, lower = 0.0, ref[-1]
    for level in levels:
        above = [p[:-1] for p in pts if p[-1] >= level]
        volume += hypervolume(above, ref[:-1]) * (level - lower)
        lower = level
    return volume


def knee_point(points: Sequence[Point]) -> int:
    """Index of the front's knee: the point closest to the ideal point after scaling each objective
    to [0, 1] over the given points (a balanced trade-off; ties go to the first)."""
    if not points:
        raise ValueError("no points")
    dim = len(points[0])
    lo = [min(p[d] for p in points) for d in range(dim)]
    hi = [max(p[d] for p in points) for d in range(dim)]

    def gap(p: Point) -> float:
        return math.sqrt(sum(((hi[d] - p[d]) / (hi[d] - lo[d]) if hi[d] > lo[d] else 0.0) ** 2 for d in range(dim)))

    return min(range(len(points)), key=lambda i: gap(points[i]))


# ---- MLflow ------------------------------------------------------------------------------

def search_parents(client, experiment_id: str) -> list:
    return client.search_runs([experiment_id], "tags.`derd.kind` = 'search'")


def objectives_of(parent) -> list[tuple[str, str]]:
    text = parent.data.tags.get("derd.objectives", "val/clean_acc:max,val/aa_acc:max")
    return [tuple(item.rsplit(":", 1)) for item in text.split(",")]  # type: ignore[misc]


def finished_trials(client, experiment_id: str, parent_id: str, objectives: list[tuple[str, str]]) -> list:
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'FINISHED'",
                              max_results=50000)
    return [r for r in runs if all(m in r.data.metrics for m, _ in objectives)]


def search_trials(client, experiment_id: str):
    """Yield (parent run, objectives, finished trial runs) for every search in the experiment."""
    for parent in search_parents(client, experiment_id):
        objectives = objectives_of(parent)
        trials = finished_trials(client, experiment_id, parent.info.run_id, objectives)
        if trials:
            yield parent, objectives, trials


def signed(run, objectives: list[tuple[str, str]]) -> list[float]:
    return [run.data.metrics[m] if mode == "max" else -run.data.metrics[m] for m, mode in objectives]


def tag_fronts(client, experiment_id: str) -> list[dict[str, Any]]:
    """Tag every finished trial of every search in the experiment; log plot, CSV and hypervolume."""
    from mlflow.entities import RunTag

    summaries = []
    for parent, objectives, trials in search_trials(client, experiment_id):
        points = [signed(r, objectives) for r in trials]
        ranks = pareto_ranks(points)
        for run, rank in zip(trials, ranks):
            client.log_batch(run.info.run_id, tags=[RunTag("pareto_rank", str(rank)),
                                                    RunTag("pareto_front", "true" if rank == 0 else "false")])
        front = [r for r, k in zip(trials, ranks) if k == 0]
        hv = hypervolume([signed(r, objectives) for r in front]) if all(m == "max" for _, m in objectives) else float("nan")
        if not math.isnan(hv):
            client.log_metric(parent.info.run_id, "search/hypervolume", hv)
        client.log_metric(parent.info.run_id, "search/front_size", len(front))
        client.log_text(parent.info.run_id, front_csv(front, objectives), "pareto/front.csv")
        client.log_figure(parent.info.run_id, front_figure(trials, ranks, objectives), "pareto/front.png")
        summaries.append({"parent": parent.info.run_id, "trials": len(trials), "front": [r.info.run_id for r in front],
                          "hypervolume": hv})
    return summaries


def front_csv(front: list, objectives: list[tuple[str, str]]) -> str:
    params = sorted({k for r in front for k in r.data.tags.get("derd.searched_keys", "").split(",") if k})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run_id", "trial_id", *[m for m, _ in objectives], *params])
    for r in sorted(front, key=lambda r: r.data.metrics[objectives[0][0]]):
        writer.writerow([r.info.run_id, r.data.tags.get("derd.trial_id", ""), *[r.data.metrics[m] for m, _ in objectives],
                         *[r.data.params.get(k, "") for k in params]])
    return buf.getvalue()


def front_figure(trials: list, ranks: list[int], objectives: list[tuple[str, str]]):
    """Clean (x) vs robust (y) accuracy of every trial, the front joined, the paper's preset marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (mx, _), (my, _) = objectives[0], objectives[1]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = [r.data.metrics[mx] for r in trials]
    ys = [r.data.metrics[my] for r in trials]
    ax.scatter(xs, ys, c="lightgrey", edgecolors="grey", label="trials", zorder=2)
    front = sorted((x, y) for x, y, k in zip(xs, ys, ranks) if k == 0)
    if front:
        ax.plot(*zip(*front), "-o", color="tab:red", label="Pareto front", zorder=3)
    presets = [(x, y) for x, y, r in zip(xs, ys, trials) if r.data.tags.get("derd.preset") == "true"]
    if presets:
        ax.scatter(*zip(*presets), marker="*", s=220, color="tab:blue", label="paper's preset", zorder=4)
    ax.set_xlabel(mx.replace("val/", "val ").replace("_acc", " accuracy (%)"))
    ax.set_ylabel(my.replace("val/", "val ").replace("_acc", " accuracy (%)"))
    ax.set_title("Clean vs robust accuracy of the search's trials")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


@cli_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python analysis/pareto.py", description="Tag the Pareto front of a search in MLflow.")
    p.add_argument("--experiment", required=True, help="MLflow experiment (the search's --name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///runs/<experiment>/mlflow.db)")
    args = p.parse_args(argv)
    client, exp = open_experiment(args.experiment, args.tracking_uri)
    for s in tag_fronts(client, exp.experiment_id):
        print(f"search run {s['parent']}: {s['trials']} finished trials, front of {len(s['front'])}, "
              f"hypervolume {s['hypervolume']:.1f}")


def open_experiment(name: str, tracking_uri: str | None):
    """(client, experiment) for a search's experiment; one clear error if it does not exist."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or f"sqlite:///{(Path('runs') / name / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no MLflow store at {uri}; pass --tracking-uri or run the search first")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise UserError(f"no experiment {name!r} in {uri}")
    return client, exp


if __name__ == "__main__":
    main()
