"""Pareto maths, floors (--min-clean) and the summary line, on hand-made points and trials with known answers."""

from __future__ import annotations

import math

import pytest

from derd.pareto import dominates, hypervolume, knee_point, pareto_ranks


def test_dominance_needs_strictly_better_somewhere():
    assert dominates((2, 2), (1, 2)) and not dominates((2, 2), (2, 2)) and not dominates((3, 1), (1, 3))


@pytest.mark.parametrize(
    "points, ranks",
    [
        ([(1, 3), (2, 2), (3, 1)], [0, 0, 0]),  # a clean trade-off
        ([(1, 1), (2, 2), (3, 3)], [2, 1, 0]),  # a chain: each dominated by the next
        ([(2, 2), (2, 2), (1, 1)], [0, 0, 1]),  # duplicates share a rank
        ([(1, 2), (2, 1), (1, 2), (0, 0)], [0, 0, 0, 1]),  # ties on one objective
        ([(5, 5)], [0]),  # one point
    ],
)
def test_non_dominated_sorting(points, ranks):
    assert pareto_ranks(points) == ranks


@pytest.mark.parametrize(
    "points, ref, volume",
    [
        ([(1, 3), (2, 2), (3, 1)], (0, 0), 6.0),
        ([(2, 3)], (0, 0), 6.0),
        ([(2, 2), (2, 2)], (0, 0), 4.0),  # duplicates count once
        ([(1, 1), (2, 2)], (0, 0), 4.0),  # a dominated point adds nothing
        ([(-1, 5), (2, 2)], (0, 0), 4.0),  # a point beyond the reference adds nothing
        ([(3, 3)], (1, 1), 4.0),  # another reference point
        ([], (0, 0), 0.0),
    ],
)
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


@pytest.mark.parametrize(
    "a, b, kind",
    [
        ((3, 3), (1, 2), "dominates"),
        ((3, 2), (3, 1), "dominates"),  # better on one, equal on the other still dominates
        ((1, 2), (3, 3), "dominated"),
        ((2, 2), (2, 2), "equal"),
        ((4, 1), (1, 4), "trades"),
    ],
)
def test_relation_names_how_one_point_stands_to_another(a, b, kind):
    from derd.pareto import relation

    assert relation(a, b) == kind


@pytest.mark.parametrize(
    "text, value, relative",
    [
        ("80", 80.0, False),
        (" 0.9x ", 0.9, True),
        ("0", 0.0, False),
        ("1.1X", 1.1, True),
        ("100", 100.0, False),
    ],
)
def test_a_floor_is_points_or_a_factor_of_a_teacher(text, value, relative):
    from tuning.records import parse_floor

    floor = parse_floor(text, "--min-clean")
    assert (floor.value, floor.relative) == (value, relative)


@pytest.mark.parametrize(
    "text, fix",
    [
        ("0.9", "write 0.9x"),
        ("eighty", "e.g. 80"),
        ("120", "[0, 100]"),
        ("-5", "[0, 100]"),
        ("x", "e.g. 0.9x"),
        ("nanx", "e.g. 0.9x"),
    ],
)
def test_a_bad_floor_is_one_line_naming_the_fix(text, fix):
    from derd.errors import UserError
    from tuning.records import parse_floor

    with pytest.raises(UserError, match=r"^--min-clean .*") as err:
        parse_floor(text, "--min-clean")
    assert fix in str(err.value) and "\n" not in str(err.value)


def _trial(name: str, clean: float, aa: float, **tags: str):
    from analysis.trials import TrialRecord

    return TrialRecord(
        f"id-{name}",
        name,
        "derd",
        {"val/clean_acc": clean, "val/aa_acc": aa, "val/n_images": 359},
        {},
        {"derd.preset": "true" if name == "preset" else "false", **tags},
        [clean, aa],
    )


@pytest.mark.parametrize(
    "best, preset, said",
    [
        (
            (70.10, 14.20),
            (53.76, 4.74),
            "it dominates the paper's preset (preset, derd: AA 4.74 ± 1.12, Clean 53.76 ± 2.63): "
            "AA +9.46 ± 2.16, Clean +16.34 ± 3.57.",
        ),
        # the preset, stopped early, scored better on both: it dominates the best full-budget trial
        (
            (50.00, 10.00),
            (60.00, 12.00),
            "it is dominated by the paper's preset (preset, derd: AA 12.00 ± 1.72, Clean 60.00 "
            "± 2.59; the preset was partial): AA -2.00 ± 2.33, Clean -10.00 ± 3.69.",
        ),
        (
            (49.58, 16.99),
            (59.33, 3.90),
            "it trades Clean for AA against the paper's preset (preset, derd: AA 3.90 ± 1.02, "
            "Clean 59.33 ± 2.59): AA +13.09 ± 2.23, Clean -9.75 ± 3.70.",
        ),
        (
            (80.00, 5.00),
            (60.00, 8.00),
            "it trades AA for Clean against the paper's preset (preset, derd: AA 8.00 ± 1.43, "
            "Clean 60.00 ± 2.59; the preset was partial): AA -3.00 ± 1.84, Clean +20.00 ± 3.34.",
        ),
        (
            (60.00, 5.00),
            (60.00, 5.00),
            "it ties the paper's preset (preset, derd: AA 5.00 ± 1.15, Clean 60.00 ± 2.59): "
            "AA +0.00 ± 1.63, Clean +0.00 ± 3.66.",
        ),
        (
            (60.00, 4.50),
            (59.50, 4.00),
            "it dominates the paper's preset (preset, derd: AA 4.00 ± 1.03, Clean 59.50 ± 2.59): "
            "AA +0.50 ± 1.51, Clean +0.50 ± 3.66 (both differences within two standard errors).",
        ),
    ],
)
def test_the_summary_line_says_how_the_best_trial_stands_to_the_preset(best, preset, said):
    from analysis.choice import best_versus_preset

    partial = {"derd.budget": "partial"} if "partial" in said else {}
    line = best_versus_preset([_trial("trial-0007", *best), _trial("preset", *preset, **partial)])
    assert line.startswith(f"Best feasible AA (APGD-CE+T, val): trial-0007 (derd) {best[1]:.2f} ± ")
    assert line.endswith(said), line
    assert "beat" not in line and "allowance" not in line  # no verdict by a fixed clean allowance


def test_the_summary_line_compares_the_most_robust_trial_that_meets_the_floor():
    from analysis.choice import Floors, best_versus_preset, constraint_of

    class Parent:  # an MLflow run: the search's, with the teachers' preflight scores
        class data:
            tags = {"derd.min_clean": "0.9x"}
            metrics = {"teacher/natural_clean_acc": 90.0}

    records = [
        _trial("trial-0001", 49.58, 16.99),
        _trial("trial-0002", 85.52, 9.00),
        _trial("preset", 59.33, 3.90),
    ]
    recorded = constraint_of(Parent, "val/aa_acc")  # the search's --min-clean: 0.9 x 90 = 81 clean
    line = best_versus_preset(records, constraint=recorded)
    assert line.startswith(
        "Best feasible AA (APGD-CE+T, val) with Clean >= 81.00 (0.9x teacher/natural_clean_acc "
        "90.00): trial-0002 (derd) 9.00 ± 1.51 at 85.52 ± 1.86 clean; it dominates"
    )
    strict = constraint_of(
        Parent, "val/aa_acc", Floors.parse("95", None)
    )  # a flag replaces the recorded floor
    line = best_versus_preset(records, constraint=strict)
    assert line.startswith(
        "No eligible trial meets Clean >= 95.00; the closest is trial-0002 (derd: Clean 85.52). "
        "Best feasible AA (APGD-CE+T, val): trial-0001 (derd) 16.99"
    )


@pytest.mark.parametrize(
    "lo, hi", [(-0.5, 9.5), (37.2, 81.9), (0.0, 0.3), (2.79, 14.2), (99.1, 99.4), (-3.0, 250.0)]
)
def test_front_axes_tick_at_round_values_that_cover_the_points(lo, hi):
    from analysis.figures import nice_ticks, tick_label

    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    assert round(mantissa, 6) in (1.0, 2.0, 5.0), (ticks, mantissa)  # 1, 2 or 5 times a power of ten
    assert all(abs(t / step - round(t / step)) < 1e-6 for t in ticks)  # every tick a multiple of the step
    assert all(b - a == pytest.approx(step) for a, b in zip(ticks, ticks[1:]))
    assert (
        ticks[0] <= lo and hi <= ticks[-1] and ticks[1] > lo and ticks[-2] < hi
    )  # covers the range, no spare tick
    assert 3 <= len(ticks) - 1 <= 10
    labels = [tick_label(t, step) for t in ticks]
    assert len(set(labels)) == len(labels) and all(
        float(x) == pytest.approx(t) for x, t in zip(labels, ticks)
    )
    single = nice_ticks(lo, lo)  # one point (or all at one score): a round range around it
    assert single[0] < lo < single[-1] and len(single) >= 3


def test_the_front_page_ticks_are_round():
    """The page's tick labels (once -0.5, 1.3, 3.1, ...): round numbers on both axes."""
    import re

    from analysis.figures import front_html
    from analysis.trials import TrialRecord

    records = [
        TrialRecord(f"r{i}", f"trial-000{i}", "derd", {"val/clean_acc": c, "val/aa_acc": a}, {}, {}, [c, a])
        for i, (c, a) in enumerate([(53.76, 4.74), (80.22, 12.81), (64.9, 2.79)])
    ]
    page = front_html(records, records[1:2], None, [("val/clean_acc", "max"), ("val/aa_acc", "max")], "1")
    for axis in ("xtick", "ytick"):
        values = [float(v) for v in re.findall(rf'class="{axis}"[^>]*>([-0-9.]+)<', page)]
        step = values[1] - values[0]
        assert round(step / 10 ** math.floor(math.log10(step) + 1e-9), 6) in (1.0, 2.0, 5.0), (axis, values)
        assert all(abs(v / step - round(v / step)) < 1e-6 for v in values), (axis, values)
