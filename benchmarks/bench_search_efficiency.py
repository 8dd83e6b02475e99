"""How fast each search improves the front, in trial-epochs (prints figures, asserts nothing).

    python benchmarks/bench_search_efficiency.py [--seeds 0 1 2] [--settings default random tpe] [--quick]
                                                 [--out runs/bench-efficiency]

On digits (``search_spaces/digits.yaml``), for each seed, three searches through the real
``tuning/search.py``:

* ``default``: the space as shipped (multivariate TPE with constant liar, MO-ASHA), 24 trials;
* ``random``: random search, no early stopping, 64 trials (the reference);
* ``tpe``: TPE without early stopping, 16 trials;
* ``asha``: the space with ASHA instead of MO-ASHA (the default before it), 24 trials.

After each finished trial (in order of completion) it takes the hypervolume of the front of
the trials that may be chosen (feasible, full budget; reference point (0, 0) in (val clean %,
val AA %)) against the cumulative trial-epochs spent (every trial's epochs, stopped ones
included). Figures: each search's final hypervolume and trial-epochs, and the headline
ratio: the trial-epochs the default search needs to reach 95% of random search's final
hypervolume, over random search's total (without ``random``: of the best final hypervolume among
the searches run, over that search's total). Then how faithful the tabulated benchmark's answers
are on these searches, which it never saw (``benchmarks/tabular/faithful.py``: Kendall tau and
error of the surrogate's answers against each trial's real final val values, beside the tau the
noise allows). A search folder that finished is reused; an
interrupted one resumes. ``--quick`` runs one seed with small trial counts (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analysis.pareto import front_of  # noqa: E402
from analysis.trials import trial_records  # noqa: E402
from benchmarks.tabular.faithful import report  # noqa: E402
from derd.pareto import hypervolume  # noqa: E402

# name -> extra search flags and trial count (full run, quick run). The headline asks whether the
# default reaches its target within 25% of random search's 64 x 12 trial-epochs (192): 24 ASHA
# trials and 16 full ones spend at least that much.
SETTINGS = {
    "default": ([], 24, 8),
    "random": (["--sampler", "random", "--scheduler", "none"], 64, 16),
    "tpe": (["--scheduler", "none"], 16, 8),
    "asha": (["--scheduler", "asha"], 24, 8),  # the default before MO-ASHA
}
TARGET = 0.95


def run(setting: str, seed: int, trials: int, out: Path) -> Path:
    folder = out / f"{setting}-s{seed}"
    record = folder / "search.json"
    flags, _, _ = SETTINGS[setting]
    cmd = [sys.executable, str(REPO / "tuning" / "search.py"), "--out", str(folder)]
    if record.is_file():
        cmd.append("--resume")
    else:
        cmd += [
            "--dataset",
            "digits",
            "--name",
            f"eff-{setting}-s{seed}",
            "--seed",
            str(seed),
            "--num-trials",
            str(trials),
            *flags,
        ]
    code = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    if code not in (0,):
        raise SystemExit(f"{setting} seed {seed}: the search exited with {code}; rerun to resume it")
    return folder


def curve(folder: Path) -> list[tuple[float, float]]:
    """[(cumulative trial-epochs, hypervolume of the choosable front)] after each finished trial."""
    from mlflow.tracking import MlflowClient

    name = json.loads((folder / "search.json").read_text())["name"]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    parent = client.search_runs([exp.experiment_id], "tags.`derd.kind` = 'search'")[0]
    records = trial_records(client, exp.experiment_id, parent)
    end = {
        r.info.run_id: r.info.end_time
        for r in client.search_runs([exp.experiment_id], "tags.`derd.kind` = 'trial'")
    }
    records.sort(key=lambda r: end[r.run_id])
    points, spent = [], 0.0
    for i, record in enumerate(records):
        spent += record.epochs
        front, _ = front_of(records[: i + 1])
        points.append((spent, hypervolume([r.objectives for r in front])))
    return points


def epochs_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    return next((e for e, hv in points if hv >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="one seed, few trials: a smoke run of the benchmark")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-efficiency"))
    p.add_argument(
        "--settings",
        nargs="+",
        default=list(SETTINGS),
        choices=list(SETTINGS),
        help="which searches to run (default and random give the headline)",
    )
    args = p.parse_args()
    if "default" not in args.settings or len(args.settings) < 2:
        p.error("--settings needs default and another search (the headline compares them)")
    seeds = args.seeds[:1] if args.quick else args.seeds
    out = Path(args.out) / ("quick" if args.quick else "full")
    ratios, rows, folders = [], [], []
    for seed in seeds:
        curves = {}
        for setting in args.settings:
            _, full, quick = SETTINGS[setting]
            folders.append(run(setting, seed, quick if args.quick else full, out))
            curves[setting] = curve(folders[-1])
        # the target: 95% of random search's final hypervolume, else of the best final among the searches run
        ref = "random" if "random" in curves else max(curves, key=lambda k: curves[k][-1][1])
        ref_epochs, ref_hv = curves[ref][-1]
        for setting, points in curves.items():
            reach = epochs_to_reach(points, TARGET * ref_hv)
            rows.append((seed, setting, len(points), points[-1][0], points[-1][1], reach))
        reach = epochs_to_reach(curves["default"], TARGET * ref_hv)
        ratios.append(reach / ref_epochs if reach is not None else float("inf"))
    print(
        f"digits search efficiency ({'quick' if args.quick else 'full'}; hypervolume of the feasible full-budget front, "
        f"reference (0, 0) in (val clean %, val AA %))"
    )
    target = "random's final" if "random" in args.settings else "the best final of these searches"
    print(f"| seed | search | trials | trial-epochs | final hypervolume | trial-epochs to 95% of {target} |")
    print("|---|---|---|---|---|---|")
    for seed, setting, n, epochs, hv, reach in rows:
        print(
            f"| {seed} | {setting} | {n} | {epochs:.0f} | {hv:.1f} | {'-' if reach is None else f'{reach:.0f}'} |"
        )
    print()
    report(folders)  # the table's answers against every search run here: none of them is in the table
    finite = [r for r in ratios if r != float("inf")]
    median = statistics.median(ratios) if ratios else float("nan")
    print(
        f"default search: trial-epochs to reach 95% of {target} hypervolume, as a fraction of that search's "
        f"trial-epochs: {', '.join('never' if r == float('inf') else f'{r:.2f}' for r in ratios)} (median "
        f"{'never' if median == float('inf') else f'{median:.2f}'}; {len(finite)} of {len(ratios)} seeds reached it)"
    )


if __name__ == "__main__":
    main()
