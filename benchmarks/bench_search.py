"""Search efficiency from a finished search's MLflow records (prints figures only).

    python benchmarks/bench_search.py [--out runs/derd-digits] [--name derd-digits]

Run the search first (``python tuning/search.py --dataset digits``). Figures:
* wall time and trials per hour of the whole search;
* per trial: time inside the trainable (Ray's ``time_total_s``), of which training epochs
  and val evaluations; the rest inside (model setup, per-epoch checkpoint and report);
* Ray's overhead per trial: the driver-observed span (MLflow run start to end) minus the
  time inside the trainable (actor start, scheduling, result processing).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from mlflow.tracking import MlflowClient


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/derd-digits")
    p.add_argument("--name", default="derd-digits")
    args = p.parse_args()
    client = MlflowClient(f"sqlite:///{Path(args.out).resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name(args.name)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("derd.kind") == "search")
    trials = [r for r in runs if r.data.tags.get("derd.kind") == "trial" and r.info.end_time]
    pm = parent.data.metrics
    print(
        f"search {args.name}: {len(trials)} trials ({int(pm.get('search/trials_stopped_early', 0))} stopped early by ASHA, "
        f"{int(pm.get('search/trials_failed', 0))} failed), wall {pm['search/wall_time_s'] / 60:.1f} min, "
        f"{pm['search/trials_per_hour']:.0f} trials/hour, max concurrent {parent.data.params.get('max_concurrent')}"
    )
    inside, train, evals, ray_overhead = [], [], [], []
    for r in trials:
        wall = r.data.metrics.get("trial/wall_time_s", 0.0)
        epochs = sum(m.value for m in client.get_metric_history(r.info.run_id, "time/epoch_s"))
        ev = sum(m.value for m in client.get_metric_history(r.info.run_id, "time/eval_s"))
        inside.append(wall)
        train.append(epochs)
        evals.append(ev)
        ray_overhead.append((r.info.end_time - r.info.start_time) / 1000 - wall)
    mean = statistics.mean
    print(
        f"per trial (mean): {mean(inside):.1f} s inside the trainable = {mean(train):.1f} s training epochs + "
        f"{mean(evals):.1f} s val evaluation + {mean(inside) - mean(train) - mean(evals):.1f} s setup/checkpoint/report"
    )
    print(
        f"Ray overhead per trial (driver-observed span minus time inside): mean {mean(ray_overhead):.1f} s, "
        f"max {max(ray_overhead):.1f} s"
    )


if __name__ == "__main__":
    main()
