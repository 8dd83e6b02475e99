"""A search's trials as read from MLflow, with the rules for which may reach the front.

A trial is *eligible* for the Pareto front, the knee, export and the report when it is
FINISHED with its objectives, **feasible** (val clean accuracy at least the search's
threshold: a collapsed student that predicts one class is "robust" on a tenth of the
images and must never be chosen) and ran the **full trial budget** (an early-stopped
trial's scores are at a lower fidelity than the others'). Partial trials may be shown,
marked, never chosen.

Uncertainty: a val accuracy p over n images has the binomial standard error
sqrt(p (1 - p) / n); on digits' 359 val images one image is 0.28 points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from derd.evaluate import VAL_AA, VAL_CLEAN, VAL_N, VAL_PGD, VAL_WORST_AA, column_header, is_worst
from derd.methods import display_name, footnotes
from derd.pareto import Objectives, binomial_se, signed
from tuning.records import TRIAL_EPOCHS, Tag, decode_objectives
from tuning.store import runs_tagged


@dataclass
class TrialRecord:
    """One trial run of a search, as the analysis needs it."""

    run_id: str
    name: str
    method: str
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    objectives: list[float] = field(default_factory=list)  # signed: larger is better

    @property
    def feasible(self) -> bool:
        return self.tags.get(Tag.FEASIBLE, "true") == "true"

    @property
    def full_budget(self) -> bool:
        return self.tags.get(Tag.BUDGET, "full") == "full"

    @property
    def eligible(self) -> bool:
        return self.feasible and self.full_budget

    @property
    def preset(self) -> bool:
        return self.tags.get(Tag.PRESET) == "true"

    @property
    def epochs(self) -> int:
        return int(self.metrics.get(TRIAL_EPOCHS, 0))

    @property
    def n_images(self) -> int:
        return int(self.metrics.get(VAL_N, 0))

    @property
    def shown_method(self) -> str:
        """The method as tables print it (starred when it carries a footnote: DFARD*)."""
        return display_name(self.method)

    @property
    def searched_keys(self) -> list[str]:
        """The keys Optuna sampled for this trial (the method first, when it was searched)."""
        return [k for k in self.tags.get(Tag.SEARCHED_KEYS, "").split(",") if k]

    def exclusion(self) -> str:
        """Why the trial cannot be chosen ('' if it can)."""
        return "infeasible" if not self.feasible else "partial" if not self.full_budget else ""


def objectives_of(parent) -> Objectives:
    return decode_objectives(parent.data.tags.get(Tag.OBJECTIVES))


def robust_objective(objectives: Objectives) -> str:
    """The search's robust objective: its first that is not clean accuracy (val AA by default)."""
    return next((m for m, _ in objectives if m != VAL_CLEAN), VAL_AA)


def choosable(records: list[TrialRecord], include_partial: bool = False) -> list[TrialRecord]:
    """The trials the front, the knee and export may choose from: feasible, and run at the full budget
    unless ``include_partial``."""
    return [r for r in records if r.feasible and (include_partial or r.full_budget)]


def search_parents(client, experiment_id: str) -> list:
    return runs_tagged(client, [experiment_id], {Tag.KIND: "search"})


def trial_records(client, experiment_id: str, parent) -> list[TrialRecord]:
    """The FINISHED trials of one search that carry every objective, in trial order."""
    objectives = objectives_of(parent)
    runs = runs_tagged(client, [experiment_id], {Tag.PARENT: parent.info.run_id}, status="FINISHED")
    records = []
    for r in runs:
        if all(m in r.data.metrics for m, _ in objectives):
            records.append(
                TrialRecord(
                    r.info.run_id,
                    r.data.tags.get(Tag.TRIAL_ID, r.info.run_id[:8]),
                    r.data.tags.get(Tag.METHOD, r.data.params.get("method", "derd")),
                    dict(r.data.metrics),
                    dict(r.data.params),
                    dict(r.data.tags),
                    signed(r.data.metrics, objectives),
                )
            )
    return sorted(records, key=lambda rec: rec.name)


def search_trials(client, experiment_id: str):
    """Yield (parent run, objectives, finished trial records) for every search in the experiment."""
    for parent in search_parents(client, experiment_id):
        records = trial_records(client, experiment_id, parent)
        if records:
            yield parent, objectives_of(parent), records


def with_se(accuracy: float, n: int) -> str:
    """'54.32 ± 2.63' (± one binomial standard error), or the bare value when n is unknown."""
    if n <= 0 or math.isnan(accuracy):
        return f"{accuracy:.2f}"
    return f"{accuracy:.2f} ± {binomial_se(accuracy, n):.2f}"


def key_weights(record: TrialRecord, limit: int = 4) -> dict[str, Any]:
    """The first few searched keys of a trial (for hover text and labels)."""
    keys = [k for k in record.searched_keys if k != "method"]
    return {k: record.params.get(k, "") for k in keys[:limit]}


def ordered(records: list[TrialRecord], front: list[TrialRecord]) -> list[TrialRecord]:
    """The front first (staircase order: first objective descending), then the other chosen-able
    trials by summed objectives, then partial, then infeasible ones."""
    on_front = {r.run_id for r in front}
    rest = sorted(
        (r for r in records if r.run_id not in on_front),
        key=lambda r: (not r.feasible, not r.full_budget, -sum(r.objectives)),
    )
    return list(front) + rest


def best_trials_markdown(
    records: list[TrialRecord], front: list[TrialRecord], objectives: Objectives, top: int | None = 12
) -> str:
    """The best-trials table (front first), scores with one binomial standard error."""
    shown = ordered(records, front)[:top] if top else ordered(records, front)
    metrics = [m for m in (VAL_CLEAN, VAL_PGD, VAL_AA, VAL_WORST_AA) if any(m in r.metrics for r in shown)]
    metrics += [m for m, _ in objectives if m not in metrics]
    keys: list[str] = []
    for r in shown:
        keys += [k for k in r.searched_keys if k != "method" and k not in keys]
    on_front = {r.run_id for r in front}
    head = ["trial", "method", "front", *(column_header(m) for m in metrics), "epochs", "note", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in shown:
        note = ", ".join(
            n
            for n, on in (
                ("paper preset", r.preset),
                ("stopped early", not r.full_budget),
                ("infeasible", not r.feasible),
            )
            if on
        )
        cells = [
            r.name,
            r.shown_method,
            "yes" if r.run_id in on_front else "",
            *(_cell(r, m) for m in metrics),
            str(r.epochs),
            note,
            *(_short(r.params[k]) if k in r.params else "-" for k in keys),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    n = max((r.n_images for r in records), default=0)
    head_line = (
        f"Showing {len(shown)} of {len(records)} finished trials, the Pareto front ({len(front)}: feasible, "
        f"full budget) first. Val split: {n} images (one image = {100 / n:.2f} points); ± is one binomial "
        f"standard error."
        if n
        else f"Showing {len(shown)} of {len(records)} finished trials."
    )
    notes = "".join(f"\n{line}\n" for line in footnotes(r.method for r in shown))
    return head_line + "\n\n" + "\n".join(lines) + "\n" + notes


def _cell(record: TrialRecord, metric: str) -> str:
    """A score with one binomial s.e. of the val split; a worst-class one bare (its class holds a share of it)."""
    if metric not in record.metrics:
        return "-"
    return (
        f"{record.metrics[metric]:.2f}"
        if is_worst(metric)
        else with_se(record.metrics[metric], record.n_images)
    )


def _short(text: str) -> str:
    try:
        return f"{float(text):.3g}"
    except ValueError:
        return text
