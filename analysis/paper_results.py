"""The paper's published rows (docs/protocols.md), keyed by dataset and table; accuracies in percent.

Where the paper reports only AA for a baseline (CIFAR-10: DAFL, DFAD, ZSKT, CMI combined
with robust distillation), the other columns are NaN and print as '-'.
"""

from __future__ import annotations

from derd.evaluate import COLUMNS

NAN = float("nan")


def _row(*values: float) -> dict[str, float]:
    return dict(zip(COLUMNS, values))


def _aa_only(aa: float) -> dict[str, float]:
    return _row(NAN, NAN, NAN, NAN, NAN, aa, NAN)


_DERD_CIFAR10 = _row(72.83, 67.39, 53.64, 54.01, 53.71, 36.03, 56.29)

# dataset -> [(table number, row name, columns)]
PAPER_ROWS: dict[str, list[tuple[int, str, dict[str, float]]]] = {
    "imagenet100": [
        (1, "paper: natural model", _row(89.49, 52.10, 6.15, 7.32, 2.54, 0.00, 26.26)),
        (1, "paper: SAT (real data)", _row(78.44, 66.79, 50.01, 53.68, 66.17, 55.62, 61.78)),
        (1, "paper: DERD", _row(61.56, 59.44, 40.77, 42.71, 44.79, 43.34, 48.76)),
    ],
    "cifar10": [
        (2, "paper: DAFL + RD", _aa_only(22.25)),
        (2, "paper: DFAD + RD", _aa_only(26.47)),
        (2, "paper: ZSKT + RD", _aa_only(26.68)),
        (2, "paper: CMI + RD", _aa_only(20.38)),
        (2, "paper: DFARD", _row(66.44, 38.53, 35.94, 37.15, 32.79, 32.14, 40.49)),
        (2, "paper: DERD", _DERD_CIFAR10),
        (3, "paper: DERD_inv", _row(62.44, 50.42, 42.51, 42.89, 38.72, 28.94, 44.32)),
        (3, "paper: DERD w/o T_nat", _row(52.51, 49.34, 37.66, 39.67, 38.54, 23.31, 40.17)),
        (3, "paper: DERD", _DERD_CIFAR10),
    ],
}
