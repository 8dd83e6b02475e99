"""The end-of-search summary from the MLflow child runs: counts, throughput, the best trials."""
from __future__ import annotations

from typing import Any

from analysis.pareto import pareto_ranks, signed
from tuning.space import SearchSpace

SHOWN = ("val/clean_acc", "val/pgd_acc", "val/aa_acc")


def trial_runs(client, experiment_id: str, parent_run_id: str) -> list:
    """The child runs (one per trial) of a search's parent run."""
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=50000)


def summarise(client, experiment_id: str, parent_run_id: str, space: SearchSpace, wall_time_s: float, top: int = 8) -> dict[str, Any]:
    """Finished trials ranked by Pareto rank of the objectives, then by their mean; failures counted."""
    rows, failed, unfinished, stopped = [], 0, 0, 0
    for run in trial_runs(client, experiment_id, parent_run_id):
        status, m = run.info.status, run.data.metrics
        if status == "FAILED":
            failed += 1
            continue
        if status != "FINISHED" or any(k not in m for k, _ in space.objectives):
            unfinished += 1
            continue
        stopped += run.data.tags.get("derd.stopped_early") == "true"
        rows.append({"trial": run.data.tags.get("derd.trial_id", run.info.run_id), "run_id": run.info.run_id,
                     "epochs": int(m.get("trial/epochs", 0)), "preset": run.data.tags.get("derd.preset") == "true",
                     "params": run.data.params, **{k: m.get(k, float("nan")) for k in SHOWN},
                     "objectives": signed(run, space.objectives)})
    for row, rank in zip(rows, pareto_ranks([r["objectives"] for r in rows])):
        row["rank"] = rank
    rows.sort(key=lambda r: (r["rank"], -sum(r["objectives"])))
    head = "| trial | front | " + " | ".join(k.removeprefix("val/") for k in SHOWN) + " | epochs | preset | " + \
        " | ".join(p.key for p in space.params) + " |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for row in rows[:top]:
        weights = " | ".join(f"{float(row['params'].get(p.key, 'nan')):.3g}" for p in space.params)
        lines.append(f"| {row['trial']} | {'yes' if row['rank'] == 0 else ''} | " + " | ".join(f"{row[k]:.2f}" for k in SHOWN)
                     + f" | {row['epochs']} | {'paper' if row['preset'] else ''} | {weights} |")
    text = (f"Best trials ({len(rows)} finished, {stopped} of them stopped early by the scheduler, {failed} failed, "
            f"{unfinished} unfinished; {wall_time_s / 60:.1f} min this session; Pareto front of "
            f"{', '.join(m for m, _ in space.objectives)} first)\n\n" + "\n".join(lines) + "\n")
    return {"markdown": text, "rows": rows, "trials_finished": len(rows), "trials_failed": failed,
            "trials_stopped_early": stopped, "unfinished": unfinished, "wall_time_s": wall_time_s,
            "trials_per_hour": (len(rows) + failed) / max(wall_time_s, 1e-9) * 3600}
