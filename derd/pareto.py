"""Pareto maths, pure: dominance, non-dominated ranks, crowding, hypervolume, the knee, and the signing
of objectives. No Ray, no MLflow, no I/O.

The live search (``tuning.scheduler``'s MO-ASHA, ``tuning.stage1_pool``, ``tuning.simulator``) and the
post-hoc analysis (``analysis.pareto``'s front in MLflow, ``analysis.choice``) share these functions, so
both sit above this module and neither imports the other for them (the way Optuna keeps its
multi-objective maths in its core, ``optuna/study/_multi_objective.py``, under its visualisation).

Conventions: every objective is maximised (``signed`` negates a "min" objective). The hypervolume's
reference point is the origin by default, the natural worst case for accuracies in percent; points that
do not dominate the reference add nothing.
"""

from __future__ import annotations

import math
from typing import Sequence

Objectives = list[tuple[str, str]]  # [(metric, "max" | "min")]: a search's objectives, in order


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error (percentage points) of an accuracy in percent measured on n images: how far apart two
    objectives must be to tell (the noise-aware MO-ASHA's one-error move, the reports' ±)."""
    if n <= 0:
        return float("nan")
    p = min(max(accuracy / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / n)


def signed(metrics: dict[str, float], objectives: Objectives) -> list[float]:
    """A point in objective space where larger is better everywhere: each objective's metric, negated
    where its mode is ``min``."""
    return [metrics[m] if mode == "max" else -metrics[m] for m, mode in objectives]


Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """a is at least as good as b everywhere and strictly better somewhere."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def relation(a: Point, b: Point) -> str:
    """How a stands to b in Pareto terms: ``dominates``, ``dominated``, ``equal``, or ``trades`` (better on
    one objective and worse on another: neither is the better trade-off)."""
    if dominates(a, b):
        return "dominates"
    if dominates(b, a):
        return "dominated"
    return "equal" if list(a) == list(b) else "trades"


def pareto_ranks(points: Sequence[Point]) -> list[int]:
    """Non-dominated sorting: rank 0 is the front, rank 1 the front once rank 0 is removed, ...

    Duplicated points share a rank. O(n^2) per front, fine for searches of thousands of trials.
    """
    ranks = [-1] * len(points)
    remaining = set(range(len(points)))
    rank = 0
    while remaining:
        front = {
            i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)
        }
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def crowding_distances(points: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance of each point within one front: per objective, the gap between
    its two neighbours over the objective's span, summed; the ends of each objective get infinity.
    Larger means a less crowded part of the front."""
    n = len(points)
    if n < 3:
        return [math.inf] * n
    distance = [0.0] * n
    for d in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][d])
        span = points[order[-1]][d] - points[order[0]][d]
        distance[order[0]] = distance[order[-1]] = math.inf
        for k in range(1, n - 1):
            if span > 0:
                distance[order[k]] += (points[order[k + 1]][d] - points[order[k - 1]][d]) / span
    return distance


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


KNEE_RULE = (
    "the front's point at the least Euclidean distance from its ideal point (every objective at its "
    "best on the front), each objective scaled to [0, 1] over the front"
)


def knee_point(points: Sequence[Point]) -> int:
    """Index of the front's knee (``KNEE_RULE``): the point closest to the ideal point after scaling each
    objective to [0, 1] over the given points (a balanced trade-off; ties go to the first)."""
    if not points:
        raise ValueError("no points")
    dim = len(points[0])
    lo = [min(p[d] for p in points) for d in range(dim)]
    hi = [max(p[d] for p in points) for d in range(dim)]

    def gap(p: Point) -> float:
        return math.sqrt(
            sum(((hi[d] - p[d]) / (hi[d] - lo[d]) if hi[d] > lo[d] else 0.0) ** 2 for d in range(dim))
        )

    return min(range(len(points)), key=lambda i: gap(points[i]))
