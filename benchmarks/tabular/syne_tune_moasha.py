"""The reference MO-ASHA, Syne Tune's, replayed on the same table, beside ours (prints figures).

    pip install syne-tune   # a benchmark's dependency only: the product does not import it
    python benchmarks/tabular/syne_tune_moasha.py [--seeds 20] [--cache runs/sim-cache.jsonl]

Syne Tune's ``MOASHA`` (random configurations, non-dominated sorting at the rungs) searches the
tabulated benchmark through Syne Tune's own simulator backend (``UserBlackboxBackend`` with the
``SimulatorCallback``: its simulated clock, its two workers, its event order) until its trials
have reported the reference's 768 trial-epochs. The blackbox answers what ``tuning.simulator``
answers: ``TableAnswers`` (extra-trees surrogate) for the keys the sampled method reads, with a
``NoiseModel`` draw per configuration, and every epoch taking the table's seconds. Its rungs are
ours: grace period 8, reduction factor 2, max 12 epochs. Beside it the project's ``random +
MO-ASHA`` (the same sampler, random, and our MO-ASHA) and the project's default, read from the
cache ``simulate.py`` writes (run that first). The figures are those of ``simulate.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks" / "tabular"))

import simulate as sim  # noqa: E402

from derd.methods import uses_key  # noqa: E402
from tuning.simulator import SimResult, SimTrial  # noqa: E402
from tuning.space import SearchSpace, default_space_path  # noqa: E402
from tuning.tabular import NoiseModel, TableAnswers, read_rows  # noqa: E402


def config_space(space: SearchSpace) -> dict[str, Any]:
    from syne_tune import config_space as cs

    out: dict[str, Any] = {}
    for p in space.params:
        if p.distribution == "categorical":
            out[p.key] = cs.choice(list(p.choices))
        elif p.distribution == "loguniform":
            out[p.key] = cs.loguniform(p.low, p.high)
        elif p.distribution == "int":
            out[p.key] = cs.randint(int(p.low), int(p.high))
        else:
            out[p.key] = cs.uniform(p.low, p.high)
    return out


def keys_of(space: SearchSpace, configuration: dict[str, Any]) -> dict[str, Any]:
    """A Syne Tune configuration as our keys: only the keys its method reads (as ``space.sample``)."""
    method = configuration["method"]
    return {
        "method": method,
        **{
            p.key: configuration[p.key] for p in space.params if p.key != "method" and uses_key(method, p.key)
        },
    }


def make_blackbox(space: SearchSpace, answers: TableAnswers, noise: NoiseModel, search_seed: int):
    from syne_tune import config_space as cs
    from syne_tune.blackbox_repository.blackbox import Blackbox

    epochs = max(space.total_epochs().values())

    class TableBlackbox(Blackbox):
        """Every epoch's (observed clean, observed AA, noise-free clean, noise-free AA, cumulative seconds)."""

        def __init__(self) -> None:
            super().__init__(
                config_space(space),
                {"epoch": cs.randint(1, epochs)},
                ["clean", "aa", "true_clean", "true_aa", "time"],
            )
            self.draws = 0

        @property
        def fidelity_values(self) -> np.ndarray:
            return np.arange(1, epochs + 1)

        def _objective_function(self, configuration, fidelity=None, seed=None):
            keys = keys_of(space, configuration)
            truth = answers.row_for(keys)
            key = abs(hash(tuple(sorted((k, str(v)) for k, v in keys.items())))) % (2**31)
            seen = noise.perturb(truth, (search_seed, key, 0))
            out, latest, clock = [], [0.0] * 4, 0.0
            for s, t in zip(seen["epochs"], truth["epochs"]):
                clock += s["epoch_s"] + s["eval_s"]
                if "aa_acc" in s:
                    latest = [s["clean_acc"], s["aa_acc"], t["clean_acc"], t["aa_acc"]]
                out.append([*latest, clock])
            table = np.array(out)
            if fidelity is None:
                return table
            return dict(zip(self.objectives_names, table[int(fidelity["epoch"]) - 1]))

    return TableBlackbox()


def syne_tune_search(
    space: SearchSpace, answers: TableAnswers, noise: NoiseModel, seed: int, budget: int, threshold: float
) -> SimResult:
    """One Syne Tune MOASHA search of ``budget`` trial-epochs, as a ``SimResult`` (scored as ours)."""
    import logging
    import os

    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.experiments import load_experiment
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

    logging.getLogger("syne_tune").setLevel(logging.WARNING)
    blackbox = make_blackbox(space, answers, noise, seed)
    epochs = max(space.total_epochs().values())
    with tempfile.TemporaryDirectory() as folder:
        os.environ["SYNETUNE_FOLDER"] = folder
        backend = UserBlackboxBackend(blackbox=blackbox, elapsed_time_attr="time")
        scheduler = MOASHA(
            config_space=blackbox.configuration_space,
            metrics=["clean", "aa"],
            do_minimize=False,
            time_attr="epoch",
            max_t=epochs,
            grace_period=space.grace_period or 8,
            reduction_factor=space.reduction_factor,
            random_seed=seed,
        )
        tuner = Tuner(
            trial_backend=backend,
            scheduler=scheduler,
            n_workers=space.max_concurrent,
            sleep_time=0,
            stop_criterion=StoppingCriterion(max_num_evaluations=budget),
            callbacks=[SimulatorCallback()],
            results_update_interval=10**6,
            print_update_interval=10**6,
            save_tuner=False,
            tuner_name=f"st-moasha-{seed}",
        )
        tuner.run()
        frame = load_experiment(tuner.name).results
    trials = []
    for trial_id, rows in frame.groupby("trial_id"):
        last = rows.sort_values("epoch").iloc[-1]
        finished = float(rows["st_tuner_time"].max())
        trials.append(
            SimTrial(
                int(trial_id),
                {},
                int(last["epoch"]),
                finished,
                int(last["epoch"]) >= epochs,
                bool(last["clean"] >= threshold),
                [float(last["clean"]), float(last["aa"])],
                int(last["epoch"]) < epochs,
                [float(last["true_clean"]), float(last["true_aa"])],
            )
        )
    return SimResult("Syne Tune MOASHA (random)", seed, trials, 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--cache", default=str(REPO / "runs" / "sim-cache.jsonl"))
    args = p.parse_args()
    space = SearchSpace.from_yaml(default_space_path("digits"))
    rows = read_rows()
    threshold = rows[0]["clean_threshold"]
    answers, noise = TableAnswers(rows, space), NoiseModel(rows)
    budget = sim.REFERENCE_TRIALS * max(space.total_epochs().values())
    floors = {f: f * threshold / space.min_clean_fraction for f in sim.FLOORS}
    best_at = {f: answers.best_feasible_aa(points) for f, points in floors.items()}
    best_in_table = answers.best_feasible_aa(threshold)
    ours = {s.name: s for s in sim.STRATEGIES}
    setup = sim.setup_key(sim.TABLE, "surrogate", "extra-trees", False, budget)  # simulate.py's defaults
    cache = sim.load_cache(Path(args.cache))
    results: dict[str, list[SimResult]] = {}
    for name in (sim.REFERENCE.name, "random + MO-ASHA", sim.DEFAULT_NAME):
        for seed in range(args.seeds):
            key = sim.cache_key(ours[name], seed, None, setup)
            if key not in cache:
                cache[key] = sim.simulate(
                    space,
                    ours[name],
                    answers,
                    seed=seed,
                    clean_threshold=threshold,
                    budget_epochs=budget,
                    noise=noise,
                )
                sim.store(Path(args.cache), key, cache[key])
            results.setdefault(name, []).append(cache[key])
    results["Syne Tune MOASHA (random)"] = [
        syne_tune_search(space, answers, noise, seed, budget, threshold) for seed in range(args.seeds)
    ]
    reference = {r.seed: r.curve()[-1] for r in results[sim.REFERENCE.name]}
    print(f"{args.seeds} seeds, {budget} trial-epochs each, two workers; median [IQR]\n")
    print(
        "| strategy | P1 | final hypervolume | regret | "
        + " | ".join(f"{f}x at {a:g}" for f in sim.FLOORS for a in sim.AT)
        + " | trials |"
    )
    print("|---|---|---|---|" + "---|" * (len(sim.FLOORS) * len(sim.AT)) + "---|")
    for name, runs in results.items():
        p1, hv, regret, trials = sim.front_cells(runs, reference, best_in_table)
        cells = [
            sim.fmt([r.regret(floors[f], best_at[f], a * budget) for r in runs])
            for f in sim.FLOORS
            for a in sim.AT
        ]
        print(f"| {name} | {p1} | {hv} | {regret} | " + " | ".join(cells) + f" | {trials} |")


if __name__ == "__main__":
    main()
