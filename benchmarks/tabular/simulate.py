"""Every search strategy replayed against the tabulated digits benchmark, over many seeds.

    python benchmarks/tabular/simulate.py [--seeds 20] [--answers surrogate|nearest] [--strategies ...]
                                          [--noise-free] [--cache FILE] [--plot docs/search_efficiency.png]
                                          [--regret-plot docs/search_regret.png] [--table FILE]

First the table's own figures: its size, its noise floor (the seed-to-seed Kendall tau of final
val AA over the configurations trained at three seeds) and the held-out Kendall tau of each way
of answering a configuration that is not in the table (5-fold cross-validation over the seed-0
rows, folds grouped by stage-I group so that no held-out row has its stage-I sibling in the
training folds; split by row too, as before): the surrogates (extremely randomised trees, the
default; a random forest) and the nearest row, i.e. what snapping does. Then each strategy
searches the table at every seed (``tuning.simulator``: the project's own searcher and scheduler
on a simulated clock, two trials at a time as the digits space runs them) until its trials have
spent the reference's trial-epochs: random search without early stopping over 64 full-budget
trials (768 trial-epochs). The search sees every answer with seed-to-seed noise
(``tuning.tabular.NoiseModel``: the covariance of the table's 3-seed rows; a re-run gets another
draw) and is scored on the noise-free answers. Per strategy, over the seeds (median [interquartile range]):

* P1: trial-epochs to reach 95% of the reference's final hypervolume at the same seed, as a
  fraction of the reference's (never reached: counted as infinite, so it moves the median up);
* the final hypervolume of the choosable front (feasible, full budget; reference point (0, 0) in
  (val clean %, val AA %));
* regret: the best feasible final val AA the answers hold (``nearest``: the table's best row;
  ``surrogate``: the best prediction over 2,048 Sobol points of the space per method, the best a
  search could be answered) minus the best feasible AA among the trials the search ran;
* anytime regret, what a user pays for: at 25%, 50% and 100% of the budget, the best noise-free
  AA a floor allows minus the noise-free AA of the student ``export --select best-robust
  --min-clean X`` would choose then (by the val scores the search saw; nothing to choose yet:
  the whole best), for X = 0.7x and 0.85x of the natural teacher's val clean. A racing strategy
  races for the floor it is scored at, so it is run once per floor.

A new strategy is one line in ``STRATEGIES``. Figures are printed (markdown tables) and drawn
(hypervolume, and anytime regret at both floors, against trial-epochs: median and interquartile
band). Results are cached per strategy and seed (``--cache``), so an interrupted run resumes and
a new strategy costs only its own searches. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tuning.simulator import SimResult, SimTrial, Strategy, simulate  # noqa: E402
from tuning.space import SearchSpace, default_space_path  # noqa: E402
from tuning.tabular import SURROGATES, TABLE, NoiseModel, TableAnswers, read_rows  # noqa: E402

GOOD_PRIOR = "the table's best"  # a prior_centers value: the best row per method under the 0.7x floor

REFERENCE = Strategy("random, full budget", "random", "none")
DEFAULT_NAME = "TPE + MO-ASHA (default)"
STRATEGIES = [
    REFERENCE,
    Strategy(DEFAULT_NAME, "tpe", "moasha"),
    Strategy("TPE start-up 5 + MO-ASHA", "tpe", "moasha", {"startup_trials": 5}),
    Strategy("TPE start-up 3 + MO-ASHA", "tpe", "moasha", {"startup_trials": 3}),
    Strategy("TPE start-up 3, no early stopping", "tpe", "none", {"startup_trials": 3}),
    Strategy("GP start-up 5, no early stopping", "gp", "none", {"startup_trials": 5}),
    Strategy("GP start-up 5 + MO-ASHA", "gp", "moasha", {"startup_trials": 5}),
    Strategy(
        "TPE start-up 3 + MO-ASHA + presets' prior (beta 4)",
        "tpe",
        "moasha",
        {"startup_trials": 3, "prior_weight": 4.0},
    ),
    Strategy(
        "TPE start-up 3 + MO-ASHA + good prior (beta 4)",
        "tpe",
        "moasha",
        {"startup_trials": 3, "prior_weight": 4.0, "prior_centers": GOOD_PRIOR},
    ),
    Strategy(
        "TPE start-up 3 + MO-ASHA, grace period 4", "tpe", "moasha", {"startup_trials": 3, "grace_period": 4}
    ),
    Strategy(
        "TPE start-up 3 + MO-ASHA, noise-aware", "tpe", "moasha", {"startup_trials": 3, "noise_aware": True}
    ),
    Strategy("TPE start-up 3 + MO-ASHA + race 2", "tpe", "moasha", {"startup_trials": 3}, race=2),
    Strategy(
        "TPE start-up 3 + MO-ASHA, noise-aware + race 2",
        "tpe",
        "moasha",
        {"startup_trials": 3, "noise_aware": True},
        race=2,
    ),
    Strategy("TPE + MO-ASHA, noise-aware", "tpe", "moasha", {"noise_aware": True}),
    Strategy("TPE + MO-ASHA, noise-aware + race 2", "tpe", "moasha", {"noise_aware": True}, race=2),
    Strategy("TPE + MO-ASHA + presets' prior (beta 4)", "tpe", "moasha", {"prior_weight": 4.0}),
    Strategy(
        "TPE + MO-ASHA, noise-aware + presets' prior (beta 4)",
        "tpe",
        "moasha",
        {"noise_aware": True, "prior_weight": 4.0},
    ),
    Strategy("TPE start-up 20 + MO-ASHA", "tpe", "moasha", {"startup_trials": 20}),
    Strategy("random + ASHA", "random", "asha"),
    Strategy(
        "random + MO-ASHA", "random", "moasha"
    ),  # the sampler Syne Tune's MOASHA uses (syne_tune_moasha.py)
    Strategy("TPE, no early stopping", "tpe", "none"),
    Strategy("TPE + ASHA", "tpe", "asha"),
    Strategy("NSGA-II + ASHA", "nsga2", "asha"),
    Strategy("TPE + MO-ASHA, reduction factor 3", "tpe", "moasha", {"reduction_factor": 3}),
    Strategy("TPE + MO-ASHA + shared stage I (alpha 8)", "tpe", "moasha", {"share_stage1": 8.0}),
]
PLOTTED = (
    REFERENCE.name,
    DEFAULT_NAME,
    "TPE + MO-ASHA, noise-aware",
    "TPE + MO-ASHA + presets' prior (beta 4)",
    "TPE start-up 3 + MO-ASHA + good prior (beta 4)",
    "TPE start-up 3 + MO-ASHA + race 2",
)  # the regret plot's
REFERENCE_TRIALS = 64
TARGET = 0.95
FLOORS = (0.7, 0.85)  # the export's --min-clean, as factors of the natural teacher's val clean
AT = (0.25, 0.5, 1.0)  # budgets at which anytime regret is printed, as fractions of the reference's


def kendall(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def front_cells(
    runs: list[SimResult], reference: dict[int, tuple[float, float]], best_aa: float
) -> list[str]:
    """A strategy's P1, final hypervolume, regret (``best_aa`` minus the best feasible noise-free AA
    it ran) and trial count over its seeds, formatted; ``reference``: each seed's (trial-epochs,
    final hypervolume) of the reference search."""
    curves = {id(r): r.curve() for r in runs}
    p1 = [epochs_to_reach(curves[id(r)], TARGET * reference[r.seed][1]) / reference[r.seed][0] for r in runs]
    regret = [best_aa - (r.best(1) if r.best(1) is not None else 0.0) for r in runs]
    trials = [len([t for t in r.trials if not t.replicate]) for r in runs]
    return [fmt(p1), fmt([curves[id(r)][-1][1] for r in runs], 0), fmt(regret), fmt(trials, 0)]


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
    taus = [
        kendall([v[a] for v in full], [v[b] for v in full])
        for i, a in enumerate(seeds)
        for b in seeds[i + 1 :]
    ]
    return statistics.mean(taus), len(full)


def held_out_tau(
    rows: list[dict], space: SearchSpace, grouped: bool = True, folds: int = 5
) -> dict[str, float]:
    """Out-of-fold Kendall tau of final val AA and clean: each surrogate's answer and the nearest
    row's (``TableAnswers`` fitted on the other folds, as a simulation would answer). ``grouped``:
    a stage-I group's rows (siblings that share one stage-I run) are held out together."""
    pool = [r for r in rows if r["seed"] == 0 and not r["preset"]]
    units = sorted({r["group"] for r in pool}) if grouped else list(range(len(pool)))
    random.Random(0).shuffle(units)
    fold_of = {u: k % folds for k, u in enumerate(units)}
    actual: dict[str, list[float]] = {"aa_acc": [], "clean_acc": []}
    modes = [("surrogate", kind) for kind in SURROGATES] + [("nearest", SURROGATES[0])]
    answered = {m: {c: [] for c in actual} for m in modes}
    for k in range(folds):
        held = [i for i, r in enumerate(pool) if fold_of[r["group"] if grouped else i] == k]
        train = [r for i, r in enumerate(pool) if i not in set(held)]
        answers = {m: TableAnswers(train, space, mode=m[0], kind=m[1]) for m in modes}
        for i in held:
            for c in actual:
                actual[c].append(pool[i]["epochs"][-1][c])
            for m, a in answers.items():
                a.reset()
                final = a.row_for(pool[i]["keys"])["epochs"][-1]
                for c in actual:
                    answered[m][c].append(final[c])
    out = {
        f"{m[1] if m[0] == 'surrogate' else 'nearest'} {c}": kendall(actual[c], values)
        for m, by in answered.items()
        for c, values in by.items()
    }
    return {**out, "n": len(pool)}


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


# ---- the searches, cached ---------------------------------------------------------------------


def cache_key(strategy: Strategy, seed: int, floor: float | None, setup: str) -> str:
    text = json.dumps(
        [
            strategy.name,
            strategy.sampler,
            strategy.scheduler,
            strategy.settings,
            strategy.race,
            seed,
            floor,
            setup,
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(text.encode()).hexdigest()


def setup_key(table: str | Path, answers: str, surrogate: str, noise_free: bool, budget: float) -> str:
    """What every cached search of one run shares: the table's bytes, the answers, the noise, the budget."""
    return json.dumps(
        [hashlib.sha1(Path(table).read_bytes()).hexdigest(), answers, surrogate, noise_free, budget]
    )


def load_cache(path: Path) -> dict[str, SimResult]:
    cache = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                cache[entry["key"]] = SimResult(
                    entry["strategy"],
                    entry["seed"],
                    [SimTrial(**t) for t in entry["trials"]],
                    entry["clock_s"],
                )
    return cache


def store(path: Path, key: str, result: SimResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(
            json.dumps(
                {
                    "key": key,
                    "strategy": result.strategy,
                    "seed": result.seed,
                    "clock_s": result.clock_s,
                    "trials": [asdict(t) for t in result.trials],
                }
            )
            + "\n"
        )


def resolved(strategy: Strategy, good_prior: list[dict]) -> Strategy:
    """The strategy with its named prior centres made points."""
    if strategy.settings.get("prior_centers") == GOOD_PRIOR:
        return Strategy(
            strategy.name,
            strategy.sampler,
            strategy.scheduler,
            {**strategy.settings, "prior_centers": good_prior},
            strategy.race,
        )
    return strategy


def best_rows(rows: list[dict], space: SearchSpace, floor: float) -> list[dict]:
    """Per method, the keys of the seed-0 row with the highest final val AA under a clean floor."""
    out = []
    for method in space.methods:
        pool = [
            r
            for r in rows
            if r["seed"] == 0 and r["method"] == method and r["epochs"][-1]["clean_acc"] >= floor
        ]
        if pool:
            out.append(dict(max(pool, key=lambda r: r["epochs"][-1]["aa_acc"])["keys"]))
    return out


# ---- figures --------------------------------------------------------------------------------


def plot(results: dict[str, list[SimResult]], budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.linspace(0, budget, 200)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, runs in results.items():
        curves = []
        for run in runs:
            xs, ys = zip(*run.curve())
            curves.append(np.interp(grid, xs, ys, left=0.0))
        curves = np.array(curves)
        med, lo, hi = np.percentile(curves, [50, 25, 75], axis=0)
        (line,) = ax.plot(grid, med, label=name)
        ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.1)
    ax.set_xlabel("cumulative trial-epochs")
    ax.set_ylabel("hypervolume (val clean % x val AA %)")
    ax.set_title(f"digits, simulated over {len(next(iter(results.values())))} seeds (median, IQR)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def plot_regret(
    outcomes: dict[float, dict[str, list[list[tuple[float, bool]]]]],
    grid: list[float],
    path: Path,
    names: list[str],
) -> None:
    """Anytime regret at the first floor (median, IQR) and, per floor, the share of seeds whose
    exported student misses the floor noise-free, against trial-epochs, for the strategies in ``names``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    first = next(iter(outcomes))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for name in names:
        regrets = np.array([[regret for regret, _ in seed] for seed in outcomes[first][name]])
        med, lo, hi = np.percentile(regrets, [50, 25, 75], axis=0)
        (line,) = left.plot(grid, med, label=name)
        left.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.12)
        for floor, style in zip(outcomes, ("-", ":")):
            right.plot(
                grid,
                np.mean(np.array([[miss for _, miss in seed] for seed in outcomes[floor][name]]), axis=0),
                style,
                color=line.get_color(),
                label=f"{name}, {floor}x" if name == names[0] else None,
            )
    left.set_title(f"regret of `export --select best-robust --min-clean {first}x`")
    left.set_ylabel("val AA points, noise-free (median, IQR)")
    right.set_title("exported student misses the floor noise-free (solid 0.7x, dotted 0.85x)")
    right.set_ylabel("share of seeds")
    for ax in (left, right):
        ax.set_xlabel("cumulative trial-epochs")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20, help="seeds 0 .. N-1 per strategy")
    p.add_argument("--answers", choices=("surrogate", "nearest"), default="surrogate")
    p.add_argument("--surrogate", choices=SURROGATES, default=SURROGATES[0])
    p.add_argument("--strategies", nargs="+", help="names from STRATEGIES (default: all)")
    p.add_argument(
        "--skip", nargs="+", default=[], help="leave out the strategies whose name contains any of these"
    )
    p.add_argument("--noise-free", action="store_true", help="the search sees the noise-free answers")
    p.add_argument(
        "--cache",
        default=str(REPO / "runs" / "simulate-cache.jsonl"),
        help="finished searches, reused by a rerun with the same table, answers and strategy",
    )
    p.add_argument("--plot", default=str(REPO / "docs" / "search_efficiency.png"))
    p.add_argument("--regret-plot", default=str(REPO / "docs" / "search_regret.png"))
    p.add_argument("--plotted", nargs="+", help="strategies drawn in the plots (default: PLOTTED)")
    p.add_argument("--table", default=str(TABLE))
    args = p.parse_args(argv)
    space = SearchSpace.from_yaml(default_space_path("digits"))
    rows = read_rows(args.table)
    threshold = rows[0]["clean_threshold"]
    teacher_clean = threshold / space.min_clean_fraction
    seeds = sorted({r["seed"] for r in rows})
    floor, n_floor = noise_floor(rows)
    made = sorted({(r["made"]["commit"], r["made"]["torch"], r["made"]["machine"]) for r in rows})
    print(
        f"table {args.table}: {sum(r['seed'] == 0 for r in rows)} configurations at seed 0 "
        f"({sum(r['seed'] == 0 and not r['preset'] for r in rows)} drawn, the rest presets), "
        f"{len(rows)} rows over seeds {seeds}; made by {'; '.join(' / '.join(m) for m in made)}"
    )
    print(
        f"noise floor (seed-to-seed Kendall tau of final val AA, {n_floor} configurations at {len(seeds)} seeds): "
        f"{floor:.3f}"
    )
    for grouped in (True, False):
        taus = held_out_tau(rows, space, grouped=grouped)
        print(
            f"held-out Kendall tau (5-fold, {'grouped by stage-I group' if grouped else 'split by row'}, "
            f"{taus.pop('n')} rows): " + ", ".join(f"{k} {v:.3f}" for k, v in taus.items())
        )
    answers = TableAnswers(rows, space, mode=args.answers, kind=args.surrogate)
    noise = None if args.noise_free else NoiseModel(rows)
    if noise is not None:
        print(
            f"noise: a normal draw per run with the covariance of {noise.n_configs} configurations at {noise.n_seeds} "
            f"seeds; sd of final val clean {noise.sd[-3]:.2f}, PGD_S {noise.sd[-2]:.2f}, AA {noise.sd[-1]:.2f} points"
        )
    print(f"answering with: {args.answers} ({args.surrogate})")
    best_in_table = answers.best_feasible_aa(threshold)
    floors = {f: f * teacher_clean for f in FLOORS}
    best_at = {f: answers.best_feasible_aa(points) for f, points in floors.items()}
    print(
        "best noise-free final val AA the answers allow: "
        + ", ".join(f"{f}x ({points:.1f} clean): {best_at[f]:.2f}" for f, points in floors.items())
    )
    budget = REFERENCE_TRIALS * max(space.total_epochs().values())
    chosen = [
        s
        for s in STRATEGIES
        if (args.strategies is None or s.name in args.strategies)
        and not any(text in s.name for text in args.skip)
    ]
    if REFERENCE not in chosen:
        chosen.insert(0, REFERENCE)
    good_prior = best_rows(rows, space, floors[FLOORS[0]])
    setup = setup_key(args.table, args.answers, args.surrogate, args.noise_free, budget)
    cache_path = Path(args.cache)
    cache = load_cache(cache_path)
    # results[name][floor]: one search per seed (the same search for every floor unless it races)
    results: dict[str, dict[float, list[SimResult]]] = {s.name: {f: [] for f in FLOORS} for s in chosen}
    for strategy in chosen:
        for seed in range(args.seeds):
            for f in FLOORS if strategy.race else (None,):
                key = cache_key(strategy, seed, f, setup)
                if key not in cache:
                    cache[key] = simulate(
                        space,
                        resolved(strategy, good_prior),
                        answers,
                        seed=seed,
                        clean_threshold=threshold,
                        budget_epochs=budget,
                        noise=noise,
                        race_floor=floors[f] if f else None,
                    )
                    store(cache_path, key, cache[key])
                for g in [f] if f else FLOORS:
                    results[strategy.name][g].append(cache[key])
        print(f"  {strategy.name}: {args.seeds} seeds done", file=sys.stderr, flush=True)

    print(
        f"\n{args.seeds} seeds per strategy, {budget} trial-epochs each; median [IQR]; two trials at a time; "
        f"the search sees {'noise-free answers' if noise is None else 'noisy answers'}, scored noise-free\n"
    )
    print(
        "| strategy | P1 (fraction of random's trial-epochs to 95% of its final hypervolume) | final hypervolume "
        "| regret (val AA points) | trials |"
    )
    print("|---|---|---|---|---|")
    first = {name: by[FLOORS[0]] for name, by in results.items()}
    reference = {r.seed: r.curve()[-1] for r in first[REFERENCE.name]}
    for strategy in chosen:
        print(
            f"| {strategy.name} | "
            + " | ".join(front_cells(first[strategy.name], reference, best_in_table))
            + " |"
        )
    for f in FLOORS:  # what a search found counts too: the best is the best known
        best_at[f] = max([best_at[f]] + [r.best_truth(floors[f]) for by in results.values() for r in by[f]])
    print(
        "\nAnytime regret of the exported student (`export --select best-robust --min-clean X`): the best "
        "noise-free final val AA known under the floor (the answers' and every search's: "
        + ", ".join(f"{f}x {best_at[f]:.2f}" for f in FLOORS)
        + ") minus the exported student's noise-free AA, "
        "at a fraction of the budget; and in how many seeds the exported student misses the floor noise-free "
        "(or there is none)\n"
    )
    print(
        "| strategy | "
        + " | ".join(f"{f}x at {a:g}" for f in FLOORS for a in AT)
        + " | "
        + " | ".join(f"misses {f}x at {a:g}" for f in FLOORS for a in (0.5, 1.0))
        + " |"
    )
    print("|---|" + "---|" * (len(FLOORS) * (len(AT) + 2)))
    grid = [budget * k / 100 for k in range(1, 101)]  # AT's fractions are among its points
    at = {a: grid.index(a * budget) for a in AT}
    outcomes = {  # per floor and strategy, per seed: (regret, miss) at every point of the grid, in one pass
        f: {name: [r.outcomes(floors[f], best_at[f], grid) for r in by[f]] for name, by in results.items()}
        for f in FLOORS
    }
    for strategy in chosen:
        cells = [fmt([o[at[a]][0] for o in outcomes[f][strategy.name]]) for f in FLOORS for a in AT]
        cells += [
            f"{sum(o[at[a]][1] for o in outcomes[f][strategy.name])}/{len(outcomes[f][strategy.name])}"
            for f in FLOORS
            for a in (0.5, 1.0)
        ]
        print(f"| {strategy.name} | " + " | ".join(cells) + " |")
    names = args.plotted or [s.name for s in chosen if s.name in PLOTTED]
    plot({name: first[name] for name in names}, budget, Path(args.plot))
    plot_regret(outcomes, grid, Path(args.regret_plot), names)
    print(f"\nplots: {args.plot}, {args.regret_plot}")


if __name__ == "__main__":
    main()
