"""The trial a user deploys: floors on its scores, and how it stands to the paper's preset.

Users of a clean/robust trade-off ask for "the most robust student with at least X clean". A floor
is given in points of accuracy (``80``) or as a factor of a teacher's score (``0.9x``):

- ``--min-clean``: on val clean accuracy; a factor of the natural teacher's val clean accuracy (the
  robust teacher's when the search has no natural one, as for the search's feasibility threshold);
- ``--min-robust``: on the search's robust objective (val AA); a factor of the robust teacher's val
  PGD_S accuracy, the robust score the teachers' preflight measures. AA is at most PGD_S, so a
  relative floor on AA asks a little more than its factor says.
- ``--min-worst-robust``: on the worst-class val AA (``val/worst_aa_acc``, the lowest per-class
  accuracy under AA: ``derd.evaluate.worst``); a factor of the robust teacher's worst-class val
  PGD_S accuracy, by the same reasoning.

The teachers' scores are those the search logged on its run (``teacher/<kind>_<column>``:
``tuning.checks.teacher_preflight``, the first 256 val images). ``tuning/search.py --min-clean``
records its floor, as written, on the search run (tag ``derd.min_clean``) and in ``search.json``;
the search's summary and ``analysis/export.py`` choose under it unless given their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from analysis.trials import TrialRecord, with_se
from derd.errors import UserError
from derd.evaluate import VAL_AA, VAL_CLEAN, VAL_WORST_AA, column_header
from derd.pareto import binomial_se, relation
from tuning.records import Floor, Tag, parse_floor, teacher_metric

FLAGS = {"clean": "--min-clean", "robust": "--min-robust", "worst_robust": "--min-worst-robust"}
# the teachers' preflight scores a relative floor is a factor of, first found first
REFERENCES = {
    "clean": (("natural", "clean_acc"), ("robust", "clean_acc")),
    "robust": (("robust", "pgd_acc"),),
    "worst_robust": (("robust", "worst_pgd_acc"),),
}


def short_name(metric: str) -> str:
    """A metric as a sentence names it: ``Clean``, ``AA``, ``PGD_S``, ``worst-class AA`` (the metric itself
    otherwise)."""
    words = column_header(metric).split(" ")
    return " ".join(words[:2]) if words[0] == "worst-class" else words[0]


@dataclass(frozen=True)
class Floors:
    """The floors a command line gave (``None``: not given)."""

    clean: Floor | None = None
    robust: Floor | None = None
    worst_robust: Floor | None = None

    @classmethod
    def parse(
        cls, min_clean: str | None, min_robust: str | None, min_worst_robust: str | None = None
    ) -> Floors:
        return cls(
            *(
                parse_floor(text, FLAGS[kind]) if text is not None else None
                for kind, text in (
                    ("clean", min_clean),
                    ("robust", min_robust),
                    ("worst_robust", min_worst_robust),
                )
            )
        )

    def __bool__(self) -> bool:
        return any(f is not None for f in (self.clean, self.robust, self.worst_robust))


@dataclass(frozen=True)
class Bound:
    """One floor resolved to points on one val metric of one search."""

    metric: str
    points: float
    floor: Floor
    flag: str
    source: str  # the flag, or "the search" when tuning/search.py recorded it
    reference: tuple[str, float] | None = None  # (teacher metric, its value) of a relative floor

    def describe(self) -> str:
        """``Clean >= 72.00 (0.9x teacher/natural_clean_acc 80.00)``."""
        of = f" ({self.floor.text} {self.reference[0]} {self.reference[1]:.2f})" if self.reference else ""
        return f"{short_name(self.metric)} >= {self.points:.2f}{of}"


@dataclass(frozen=True)
class Constraint:
    """The floors a chosen trial must meet, every one."""

    bounds: tuple[Bound, ...]

    def met_by(self, metrics: dict[str, float]) -> bool:
        return not self.missed(metrics)

    def missed(self, metrics: dict[str, float]) -> list[Bound]:
        """The floors a trial's scores fall short of."""
        return [b for b in self.bounds if metrics.get(b.metric, -math.inf) < b.points]

    def shortfall(self, metrics: dict[str, float]) -> float:
        """The points a trial misses the floors by, summed (0 when it meets them)."""
        return sum(b.points - metrics.get(b.metric, 0.0) for b in self.missed(metrics))

    def describe(self) -> str:
        return " and ".join(b.describe() for b in self.bounds)

    def origin(self) -> dict[str, Any]:
        """The exported config's ``origin.constraint``: per metric, the floor in points, what was asked, by
        whom, and the teacher's score a relative floor is a factor of."""
        return {
            b.metric: {
                "min": round(b.points, 4),
                "asked": f"{b.flag} {b.floor.text}",
                "from": b.source,
                **({"of": b.reference[0], "reference": b.reference[1]} if b.reference else {}),
            }
            for b in self.bounds
        }

    def closest(self, records: Sequence[TrialRecord]) -> TrialRecord:
        """The trial that misses the floors by the fewest points (the better trade-off on a tie)."""
        return min(records, key=lambda r: (self.shortfall(r.metrics), -sum(r.objectives)))

    def miss(self, records: Sequence[TrialRecord]) -> str:
        """No trial meets the floors: what was asked, the closest trial and its scores."""
        near = self.closest(records)
        scores = ", ".join(
            f"{short_name(m)} {near.metrics[m]:.2f}"
            for m in dict.fromkeys([VAL_CLEAN, *(b.metric for b in self.bounds)])
            if m in near.metrics
        )
        return f"no eligible trial meets {self.describe()}; the closest is {near.name} ({near.shown_method}: {scores})"


def _bound(kind: str, floor: Floor, source: str, metric: str, run_metrics: dict[str, float]) -> Bound:
    """A floor in points: as given, or its factor times the first teacher score the search run holds."""
    if not floor.relative:
        return Bound(metric, floor.value, floor, FLAGS[kind], source)
    names = [teacher_metric(*ref) for ref in REFERENCES[kind]]
    for name in names:
        if name in run_metrics:
            return Bound(
                metric, floor.value * run_metrics[name], floor, FLAGS[kind], source, (name, run_metrics[name])
            )
    raise UserError(
        f"{FLAGS[kind]} {floor.text} is a factor of {' or '.join(names)}, which the search run does not "
        f"hold; give points instead (e.g. {FLAGS[kind]} 80)"
    )


def constraint_of(parent, robust_metric: str, floors: Floors = Floors()) -> Constraint | None:
    """The floors that choose among one search's trials: each one given, else the ``--min-clean`` the
    search recorded; resolved to points against the teachers' scores on the search run. None: no floor."""
    recorded = parent.data.tags.get(Tag.MIN_CLEAN)
    clean = (
        (floors.clean, FLAGS["clean"])
        if floors.clean
        else (parse_floor(recorded, f"the search's {FLAGS['clean']}"), "the search")
        if recorded
        else None
    )
    bounds = []
    if clean:
        bounds.append(_bound("clean", *clean, VAL_CLEAN, parent.data.metrics))
    if floors.robust:
        bounds.append(_bound("robust", floors.robust, FLAGS["robust"], robust_metric, parent.data.metrics))
    if floors.worst_robust:
        bounds.append(
            _bound(
                "worst_robust", floors.worst_robust, FLAGS["worst_robust"], VAL_WORST_AA, parent.data.metrics
            )
        )
    return Constraint(tuple(bounds)) if bounds else None


def most_robust(records: Sequence[TrialRecord], metric: str) -> TrialRecord:
    """The trial with the highest ``metric`` (the higher clean accuracy on a tie)."""
    return max(records, key=lambda r: (r.metrics.get(metric, -math.inf), r.metrics.get(VAL_CLEAN, -math.inf)))


def difference(a: TrialRecord, b: TrialRecord, metric: str) -> str:
    """``+9.46 ± 2.16``: a's score minus b's, ± the standard error of the difference (the two binomial
    standard errors combined as if independent: conservative, as both are scored on the same images)."""
    d = a.metrics[metric] - b.metrics[metric]
    se = math.hypot(binomial_se(a.metrics[metric], a.n_images), binomial_se(b.metrics[metric], b.n_images))
    return f"{d:+.2f}" if math.isnan(se) else f"{d:+.2f} ± {se:.2f}"


def _within_noise(a: TrialRecord, b: TrialRecord, metrics: Sequence[str]) -> bool:
    """Every difference within two standard errors: on this val split the two are not told apart."""
    return all(
        abs(a.metrics[m] - b.metrics[m])
        <= 2 * math.hypot(binomial_se(a.metrics[m], a.n_images), binomial_se(b.metrics[m], b.n_images))
        for m in metrics
    )


def versus(best: TrialRecord, preset: TrialRecord, metric: str) -> str:
    """How ``best`` stands to ``preset`` in Pareto terms on (clean, ``metric``): dominates it, is dominated by
    it, ties it, or trades one objective for the other; with both differences and their standard errors."""
    pair = (VAL_CLEAN, metric)
    kind = relation([best.metrics[m] for m in pair], [preset.metrics[m] for m in pair])
    rob, clean = short_name(metric), short_name(VAL_CLEAN)
    gives, gains = (clean, rob) if best.metrics[metric] > preset.metrics[metric] else (rob, clean)
    verb = {
        "dominates": "dominates",
        "dominated": "is dominated by",
        "equal": "ties",
        "trades": f"trades {gives} for {gains} against",
    }[kind]
    shown = (
        f"{preset.name}, {preset.shown_method}: {rob} {with_se(preset.metrics[metric], preset.n_images)}, "
        f"{clean} {with_se(preset.metrics[VAL_CLEAN], preset.n_images)}"
        + ("" if preset.eligible else f"; the preset was {preset.exclusion()}")
    )
    noise = (
        " (both differences within two standard errors)"
        if kind != "equal" and _within_noise(best, preset, pair)
        else ""
    )
    return (
        f"it {verb} the paper's preset ({shown}): {rob} {difference(best, preset, metric)}, "
        f"{clean} {difference(best, preset, VAL_CLEAN)}{noise}"
    )


def best_versus_preset(
    records: list[TrialRecord], metric: str = VAL_AA, constraint: Constraint | None = None
) -> str:
    """One line: the most robust eligible trial (meeting ``constraint``, when one is given and met) against
    the paper's DERD preset, in Pareto terms (``versus``); no allowance on either objective."""
    eligible = [r for r in records if r.eligible and metric in r.metrics]
    if not eligible:
        return "No feasible full-budget trial yet; nothing to compare with the paper's preset."
    prefix, under = "", ""
    if constraint is not None:
        meeting = [r for r in eligible if constraint.met_by(r.metrics)]
        if meeting:
            eligible, under = meeting, f" with {constraint.describe()}"
        else:
            miss = constraint.miss(eligible)
            prefix = miss[0].upper() + miss[1:] + ". "
    best = most_robust(eligible, metric)
    presets = [r for r in records if r.preset]
    preset = next((r for r in presets if r.method == "derd"), presets[0] if presets else None)
    scores = f"{with_se(best.metrics[metric], best.n_images)} at {with_se(best.metrics[VAL_CLEAN], best.n_images)} clean"
    line = f"{prefix}Best feasible {column_header(metric)}{under}: {best.name} ({best.shown_method}) {scores}"
    if preset is None or metric not in preset.metrics:
        return line + "; the paper's preset did not finish."
    if preset.run_id == best.run_id:
        return line + "; it is the paper's preset."
    return f"{line}; {versus(best, preset, metric)}."
