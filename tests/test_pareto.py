"""Pareto maths on hand-made point sets with known answers."""
from __future__ import annotations

import pytest

from analysis.pareto import dominates, hypervolume, knee_point, pareto_ranks


def test_dominance_needs_strictly_better_somewhere():
    assert dominates((2, 2), (1, 2)) and not dominates((2, 2), (2, 2)) and not dominates((3, 1), (1, 3))


@pytest.mark.parametrize("points, ranks", [
    ([(1, 3), (2, 2), (3, 1)], [0, 0, 0]),                 # a clean trade-off
    ([(1, 1), (2, 2), (3, 3)], [2, 1, 0]),                 # a chain: each dominated by the next
    ([(2, 2), (2, 2), (1, 1)], [0, 0, 1]),                 # duplicates share a rank
    ([(1, 2), (2, 1), (1, 2), (0, 0)], [0, 0, 0, 1]),      # ties on one objective
    ([(5, 5)], [0]),                                       # one point
])
def test_non_dominated_sorting(points, ranks):
    assert pareto_ranks(points) == ranks


@pytest.mark.parametrize("points, ref, volume", [
    ([(1, 3), (2, 2), (3, 1)], (0, 0), 6.0),
    ([(2, 3)], (0, 0), 6.0),
    ([(2, 2), (2, 2)], (0, 0), 4.0),                       # duplicates count once
    ([(1, 1), (2, 2)], (0, 0), 4.0),                       # a dominated point adds nothing
    ([(-1, 5), (2, 2)], (0, 0), 4.0),                      # a point beyond the reference adds nothing
    ([(3, 3)], (1, 1), 4.0),                               # another reference point
    ([], (0, 0), 0.0),
])
def test_hypervolume_2d(points, ref, volume):
    assert hypervolume(points, ref) == pytest.approx(volume)


def test_hypervolume_nd_matches_known_boxes_and_the_2d_sweep():
    assert hypervolume([(1, 1, 1)]) == pytest.approx(1.0)
    assert hypervolume([(2, 1, 1), (1, 2, 1)]) == pytest.approx(3.0)  # 2 + 2 - 1 overlap
    assert hypervolume([(2, 2, 2), (1, 1, 1)]) == pytest.approx(8.0)
    flat = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume([(*p, 1.0) for p in flat]) == pytest.approx(hypervolume(flat))


def test_knee_is_the_balanced_point():
    assert knee_point([(0, 10), (6, 6), (10, 0)]) == 1
    assert knee_point([(5, 5)]) == 0
