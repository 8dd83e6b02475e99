"""Every search strategy replayed against the tabulated digits benchmark, over many seeds.

    python benchmarks/tabular/simulate.py [--seeds 20] [--answers surrogate|nearest] [--strategies ...]
                                          [--plot docs/search_efficiency.png] [--table FILE]

First the table's own figures: its size, its noise floor (the seed-to-seed Kendall tau of final
val AA over the configurations trained at three seeds) and the held-out Kendall tau of each way
of answering a configuration that is not in the table (5-fold cross-validation over the seed-0
rows: the random-forest surrogate, and the nearest row, i.e. what snapping does). Then each
strategy searches the table at every seed (``tuning.simulator``: the project's own searcher and
scheduler on a simulated clock, two trials at a time as the digits space runs them) until its
trials have spent the reference's trial-epochs: random search without early stopping over 64
full-budget trials (768 trial-epochs). Per strategy, over the seeds (median [interquartile range]):

* P1: trial-epochs to reach 95% of the reference's final hypervolume at the same seed, as a
  fraction of the reference's (never reached: counted as infinite, so it moves the median up);
* the final hypervolume of the choosable front (feasible, full budget; reference point (0, 0) in
  (val clean %, val AA %));
* regret: the best feasible final val AA the answers hold (``nearest``: the table's best row;
  ``surrogate``: the best prediction over 2,048 Sobol points of the space per method, the best a
  search could be answered) minus the best feasible AA the search chose.

A new strategy is one line in ``STRATEGIES``. Figures are printed (a markdown table) and drawn
(hypervolume against trial-epochs, median and interquartile band). Nothing is asserted.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tuning.simulator import SimResult, Strategy, simulate  # noqa: E402
from tuning.space import SearchSpace, default_space_path  # noqa: E402
from tuning.tabular import TABLE, TableAnswers, read_rows  # noqa: E402

REFERENCE = Strategy("random, full budget", "random", "none")
STRATEGIES = [
    REFERENCE,
    Strategy("random + ASHA", "random", "asha"),
    Strategy("TPE, no early stopping", "tpe", "none"),
    Strategy("TPE + ASHA (the default until MO-ASHA)", "tpe", "asha"),
    Strategy("NSGA-II + ASHA", "nsga2", "asha"),
    Strategy("TPE + MO-ASHA (default)", "tpe", "moasha"),
    Strategy("TPE + MO-ASHA, reduction factor 3", "tpe", "moasha", {"reduction_factor": 3}),
    Strategy("TPE + ASHA + shared stage I (alpha 2)", "tpe", "asha", {"share_stage1": 2.0}),
    Strategy("TPE + MO-ASHA + shared stage I (alpha 2)", "tpe", "moasha", {"share_stage1": 2.0}),
    Strategy("TPE + MO-ASHA + shared stage I (alpha 8)", "tpe", "moasha", {"share_stage1": 8.0}),
]
REFERENCE_TRIALS = 64
TARGET = 0.95


def kendall(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def noise_floor(rows: list[dict]) -> tuple[float, int]:
    """Mean seed-to-seed Kendall tau of final val AA over configurations trained at every seed."""
    by_config: dict[str, dict[int, float]] = {}
    for r in rows:
        if not r["preset"]:
            by_config.setdefault(r["id"].rsplit("-s", 1)[0], {})[r["seed"]] = r["epochs"][-1]["aa_acc"]
    seeds = sorted({r["seed"] for r in rows})
    full = [v for v in by_config.values() if len(v) == len(seeds)]
    if len(full) < 3 or len(seeds) < 2:
        return float("nan"), len(full)
    taus = [kendall([v[a] for v in full], [v[b] for v in full]) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
    return statistics.mean(taus), len(full)


def held_out_tau(rows: list[dict], space: SearchSpace, folds: int = 5) -> dict[str, float]:
    """Out-of-fold Kendall tau of final val AA: the surrogate's answer, and the nearest row's
    (``TableAnswers`` fitted on the other folds, as a simulation would answer)."""
    import random

    pool = [r for r in rows if r["seed"] == 0 and not r["preset"]]
    order = list(range(len(pool)))
    random.Random(0).shuffle(order)
    actual: list[float] = []
    answered: dict[str, list[float]] = {"surrogate": [], "nearest": []}
    for k in range(folds):
        held = set(order[k::folds])
        train = [pool[i] for i in order if i not in held]
        answers = {mode: TableAnswers(train, space, mode=mode) for mode in answered}
        for i in sorted(held):
            actual.append(pool[i]["epochs"][-1]["aa_acc"])
            for mode, a in answers.items():
                a.reset()
                answered[mode].append(a.row_for(pool[i]["keys"])["epochs"][-1]["aa_acc"])
    return {**{mode: kendall(actual, values) for mode, values in answered.items()}, "n": len(actual)}


def epochs_to_reach(curve: list[tuple[float, float]], target: float) -> float:
    return next((e for e, hv in curve if hv >= target), math.inf)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    finite = sorted(values)
    q = statistics.quantiles(finite, n=4, method="inclusive") if len(finite) > 1 else [finite[0]] * 3
    return q[1], q[0], q[2]


def fmt(values: list[float], digits: int = 2) -> str:
    med, lo, hi = quartiles(values)
    show = lambda v: "never" if v == math.inf else f"{v:.{digits}f}"  # noqa: E731
    return f"{show(med)} [{show(lo)}, {show(hi)}]"


def plot(results: dict[str, list[SimResult]], budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.linspace(0, budget, 200)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in results.items():
        curves = []
        for run in runs:
            xs, ys = zip(*run.curve())
            curves.append(np.interp(grid, xs, ys, left=0.0))
        curves = np.array(curves)
        med, lo, hi = np.percentile(curves, [50, 25, 75], axis=0)
        line, = ax.plot(grid, med, label=name)
        ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("cumulative trial-epochs")
    ax.set_ylabel("hypervolume (val clean % x val AA %)")
    ax.set_title(f"digits, simulated over {len(next(iter(results.values())))} seeds (median, IQR)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20, help="seeds 0 .. N-1 per strategy")
    p.add_argument("--answers", choices=("surrogate", "nearest"), default="surrogate")
    p.add_argument("--strategies", nargs="+", help="names from STRATEGIES (default: all)")
    p.add_argument("--plot", default=str(REPO / "docs" / "search_efficiency.png"))
    p.add_argument("--table", default=str(TABLE))
    args = p.parse_args(argv)
    space = SearchSpace.from_yaml(default_space_path("digits"))
    rows = read_rows(args.table)
    threshold = rows[0]["clean_threshold"]
    seeds = sorted({r["seed"] for r in rows})
    floor, n_floor = noise_floor(rows)
    taus = held_out_tau(rows, space)
    made = sorted({(r["made"]["commit"], r["made"]["torch"], r["made"]["machine"]) for r in rows})
    print(f"table {args.table}: {sum(r['seed'] == 0 for r in rows)} configurations at seed 0 "
          f"({sum(r['seed'] == 0 and not r['preset'] for r in rows)} drawn, the rest presets), "
          f"{len(rows)} rows over seeds {seeds}; made by {'; '.join(' / '.join(m) for m in made)}")
    print(f"noise floor (seed-to-seed Kendall tau of final val AA, {n_floor} configurations at {len(seeds)} seeds): "
          f"{floor:.3f}")
    print(f"held-out Kendall tau of final val AA (5-fold, {taus['n']} rows): surrogate {taus['surrogate']:.3f}, "
          f"nearest row {taus['nearest']:.3f}; answering with: {args.answers}")
    answers = TableAnswers(rows, space, mode=args.answers)
    best_in_table = answers.best_feasible_aa(threshold)
    budget = REFERENCE_TRIALS * max(space.total_epochs().values())
    chosen = [s for s in STRATEGIES if args.strategies is None or s.name in args.strategies]
    if REFERENCE not in chosen:
        chosen.insert(0, REFERENCE)
    results: dict[str, list[SimResult]] = {s.name: [] for s in chosen}
    for seed in range(args.seeds):
        for strategy in chosen:
            results[strategy.name].append(simulate(space, strategy, answers, seed=seed, clean_threshold=threshold,
                                                   budget_epochs=budget))
    print(f"\n{args.seeds} seeds per strategy, {budget} trial-epochs each; median [IQR]; two trials at a time\n")
    print("| strategy | P1 (fraction of random's trial-epochs to 95% of its final hypervolume) | final hypervolume "
          "| regret (val AA points) | trials |")
    print("|---|---|---|---|---|")
    reference = {r.seed: r.curve()[-1] for r in results[REFERENCE.name]}
    for strategy in chosen:
        runs = results[strategy.name]
        p1 = [epochs_to_reach(r.curve(), TARGET * reference[r.seed][1]) / reference[r.seed][0] for r in runs]
        hv = [r.curve()[-1][1] for r in runs]
        regret = [best_in_table - (r.best(1) if r.best(1) is not None else 0.0) for r in runs]
        print(f"| {strategy.name} | {fmt(p1)} | {fmt(hv, 0)} | {fmt(regret)} | {fmt([len(r.trials) for r in runs], 0)} |")
    plot(results, budget, Path(args.plot))
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
