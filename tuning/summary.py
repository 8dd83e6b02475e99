"""The end-of-search summary: counts, throughput, and the best trials as a Markdown table."""
from __future__ import annotations

from typing import Any

from analysis.pareto import pareto_ranks
from tuning.space import SearchSpace

SHOWN = ("val/clean_acc", "val/pgd_acc", "val/aa_acc")


def summarise(results, space: SearchSpace, wall_time_s: float, top: int = 8) -> dict[str, Any]:
    """Summarise a Ray ``ResultGrid``: the Pareto front of the objectives first, then the rest by score."""
    rows, failed, unfinished, stopped = [], 0, 0, 0
    for r in results:
        m = r.metrics or {}
        if r.error is not None:
            failed += 1
            continue
        if not m or m.get("epoch", 0) == 0:
            unfinished += 1
            continue
        if m.get("epoch", 0) < m.get("total_epochs", 0):
            stopped += 1
        rows.append({"trial": m.get("trial_id", "?"), "epochs": m.get("epoch", 0), "config": r.config,
                     **{k: m.get(k, float("nan")) for k in SHOWN}, "score": m.get("search/score", float("nan")),
                     "preset": r.config in space.presets})
    points = [[row[k] if mode == "max" else -row[k] for k, mode in space.objectives] for row in rows]
    for row, rank in zip(rows, pareto_ranks(points) if rows else []):
        row["rank"] = rank
    rows.sort(key=lambda r: (r["rank"], -r["score"]))
    head = "| trial | front | " + " | ".join(k.removeprefix("val/") for k in SHOWN) + " | epochs | preset | " + \
        " | ".join(p.key for p in space.params) + " |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for row in rows[:top]:
        weights = " | ".join(f"{row['config'].get(p.key, float('nan')):.3g}" for p in space.params)
        lines.append(f"| {row['trial']} | {'yes' if row['rank'] == 0 else ''} | " + " | ".join(f"{row[k]:.2f}" for k in SHOWN)
                     + f" | {row['epochs']} | {'paper' if row['preset'] else ''} | {weights} |")
    finished = len(rows)
    text = (f"Best trials ({finished} finished, {stopped} of them stopped early by the scheduler, {failed} failed; "
            f"{wall_time_s / 60:.1f} min; Pareto front of {', '.join(m for m, _ in space.objectives)} first)\n\n"
            + "\n".join(lines) + "\n")
    return {"markdown": text, "rows": rows, "trials_finished": finished, "trials_failed": failed,
            "trials_stopped_early": stopped, "unfinished": unfinished, "wall_time_s": wall_time_s,
            "trials_per_hour": (finished + failed) / max(wall_time_s, 1e-9) * 3600}
