"""The end of a search: fronts tagged, descriptions and summary written, the parent run closed."""

from __future__ import annotations

from typing import Any

from analysis.choice import best_versus_preset, constraint_of
from analysis.pareto import front_of, tag_fronts
from analysis.trials import best_trials_markdown, robust_objective, trial_records
from tuning.records import TRIAL_CACHED_EPOCHS, Tag
from tuning.scheduler import scheduler_name
from tuning.store import runs_tagged


def finish_search(
    client, experiment_id: str, parent_run_id: str, plan, record: dict[str, Any], *, interrupted: bool
) -> dict[str, Any]:
    """Tag the front, write best_trials.md, log the search's figures; the parent ends FINISHED,
    or KILLED when trials are left for a ``--resume``."""
    space = plan.space
    tag_fronts(client, experiment_id)
    parent = client.get_run(parent_run_id)
    records = trial_records(client, experiment_id, parent)
    front, _ = front_of(records)
    children = runs_tagged(client, [experiment_id], {Tag.PARENT: parent_run_id})
    failed = sum(r.info.status == "FAILED" for r in children)
    restored = sum(int(r.data.tags.get(Tag.RESTORES, "0")) > 0 for r in children)  # retried from a checkpoint
    stopped = sum(not r.full_budget for r in records)
    infeasible = sum(not r.feasible for r in records)
    wall = sum(s["wall_s"] for s in record.get("sessions", []))
    saved = int(sum(r.data.metrics.get(TRIAL_CACHED_EPOCHS, 0) for r in children))
    counts = (
        f"{len(records)} finished ({stopped} stopped early by {scheduler_name(space.scheduler)}, {infeasible} "
        f"infeasible), {failed} failed, {restored} restored from a checkpoint after a failure, "
        f"{space.num_trials - len(records) - failed} not run or unfinished, of "
        f"{space.num_trials} requested; {wall / 60:.1f} min over {len(record.get('sessions', []))} session(s)"
        + (f"; {saved} stage-I epochs read from the shared cache instead of run" if saved else "")
    )
    synthetic = record.get("validation")  # what every val/* figure below was scored on
    scored_on = (
        f"val = the synthetic validation set ({synthetic['n_images']} images made from the teachers, "
        f"{synthetic['procedure']}; experimental), not real images"
        if synthetic
        else "val = the real val split"
    )
    objectives = space.objectives
    robust = robust_objective(
        objectives
    )  # compared under the user's --min-clean, when the search recorded one
    versus = best_versus_preset(records, robust, constraint_of(parent, robust))
    text = (
        f"Best trials ({counts}; objectives {', '.join(m for m, _ in objectives)}; {scored_on})\n\n"
        + best_trials_markdown(records, front, objectives)
        + "\n"
        + versus
        + "\n"
    )
    plan.folder.best_trials.write_text(text)
    client.log_artifact(parent_run_id, str(plan.folder.best_trials))
    metrics = {
        "trials_requested": space.num_trials,
        "trials_finished": len(records),
        "trials_failed": failed,
        "trials_restored": restored,
        "trials_stopped_early": stopped,
        "stage1_epochs_saved": saved,
        "trials_infeasible": infeasible,
        "wall_time_s": wall,
        "trials_per_hour": (len(records) + failed) / max(wall, 1e-9) * 3600,
    }
    for key, value in metrics.items():
        client.log_metric(parent_run_id, f"search/{key}", float(value))
    client.set_terminated(parent_run_id, "KILLED" if interrupted else "FINISHED")
    return {
        "markdown": text,
        "records": records,
        "front": front,
        **metrics,
        "interrupted": interrupted,
        "validation": "synthetic" if synthetic else "real",
        "out": str(plan.out),
        "name": plan.name,
        "tracking_uri": plan.tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
    }
