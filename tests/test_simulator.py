"""The tabulated benchmark's simulator: it replays the project's own searcher and scheduler, and a
real Ray search over the table's curves makes the same trials and the same stops."""

from __future__ import annotations

import json

import optuna
import pytest
from tabular_rows import synthetic_rows

from tuning.simulator import Strategy, simulate
from tuning.space import SearchSpace, default_space_path
from tuning.tabular import TableAnswers, table_trainable


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_yaml(default_space_path("digits"))


@pytest.fixture(scope="module")
def answers(space):
    return TableAnswers(synthetic_rows(space), space)


STARTUP = 4  # the sampler's start-up in these tests: the presets and two random trials, then TPE models


def _real_search(tmp_path, answers, teacher_args, *flags: str):
    """A real search of the digits space with ``search.startup_trials`` = STARTUP."""
    import yaml

    from tuning.search import run_search

    raw = yaml.safe_load(default_space_path("digits").read_text())
    raw["search"]["startup_trials"] = STARTUP
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "real"
    run_search(
        ["--space", str(tmp_path / "space.yaml"), "--out", str(out), "--seed", "3", *flags, *teacher_args],
        trainable=table_trainable,
        trainable_params={"answers": answers},
    )
    record = json.loads((out / "search.json").read_text())
    study = optuna.load_study(study_name=record["name"], storage=f"sqlite:///{out / 'optuna.db'}")
    return record, SearchSpace.from_yaml(out / "space.yaml"), study


@pytest.mark.parametrize("scheduler,trials", [("moasha", 6), ("asha", 6)])
def test_the_simulator_equals_a_real_ray_search_over_the_tables_curves(
    tmp_path, space, answers, teacher_args, scheduler, trials
):
    """Same seed, same sampler and scheduler: the real search (Ray, Optuna's database, the scheduler,
    MLflow) with a stand-in trial that reports the table's curves samples the same configurations and
    stops the same trials as the simulator. One trial at a time, so the order of events is fixed
    (two at a time, with 16 trials past the start-up: the next test)."""
    record, ran, study = _real_search(
        tmp_path,
        answers,
        teacher_args,
        "--num-trials",
        str(trials),
        "--max-concurrent",
        "1",
        "--scheduler",
        scheduler,
    )
    real = {
        t.number: (t.params, "stopped" if t.user_attrs.get("stopped_early") else t.state.name)
        for t in study.trials
    }

    sim = simulate(
        ran,
        Strategy("as run", ran.sampler, ran.scheduler),
        answers,
        seed=3,
        clean_threshold=record["clean_threshold"],
        num_trials=trials,
        max_concurrent=1,
    )
    simulated = {t.number: (t.keys, "stopped" if t.stopped_early else "COMPLETE") for t in sim.trials}
    assert simulated == real
    assert any(state == "stopped" for _, state in real.values())  # it did stop some: the stops are compared
    assert len({json.dumps(p, sort_keys=True) for p, _ in real.values()}) == trials


def test_two_at_a_time_the_real_searchs_proposals_are_the_samplers_in_its_order_of_events(
    tmp_path, space, answers, teacher_args
):
    """Two trials at a time under MO-ASHA, Ray's order of events is its own; replayed in that order
    (the asks and tells Optuna's database timestamps, and the stops the scheduler made), the
    project's searcher proposes exactly what the real search ran: 16 trials, 12 of them past the
    start-up (what the sampler learns), with the constant liar's running trials in between."""
    from derd.config import apply_overrides
    from derd.methods import total_epochs
    from tuning.searcher import STOPPED, TRIAL_NUMBER, StudySearcher, enqueue_presets
    from tuning.tabular import epoch_results
    from tuning.trainable import Reports

    record, ran, study = _real_search(
        tmp_path, answers, teacher_args, "--num-trials", "16", "--max-concurrent", "2"
    )
    trials = sorted(study.trials, key=lambda t: t.number)
    assert ran.scheduler == "moasha" and ran.startup_trials == STARTUP and len(trials) == 16
    events = sorted(
        [(t.datetime_start, 0, t.number) for t in trials]
        + [(t.datetime_complete, 1, t.number) for t in trials]
    )
    overlapped = sum(
        1 for t in trials for u in trials if u.number > t.number and u.datetime_start < t.datetime_complete
    )
    assert overlapped, "the two workers never overlapped: the test would compare one-at-a-time order"

    threshold = record["clean_threshold"]
    stopped = {t.number for t in trials if t.user_attrs.get(STOPPED)}
    searcher = StudySearcher(ran, optuna.storages.InMemoryStorage(), "replay", threshold, stopped)
    enqueue_presets(searcher.study, ran)
    proposed: dict[int, dict] = {}
    for _, kind, number in events:
        if kind == 0:
            config = searcher.suggest(f"t{number}")
            assert config[TRIAL_NUMBER] == number
            proposed[number] = {k: v for k, v in config.items() if k != TRIAL_NUMBER}
            continue
        keys, ran_epochs = proposed[number], trials[number].user_attrs["epochs"]
        reports = Reports(ran.objectives, threshold, total_epochs(apply_overrides(ran.base_config(), keys)))
        history, metrics = [], {}
        for result in epoch_results(answers.row_for(keys))[:ran_epochs]:
            history.append(result)
            metrics = reports.next(result, history)
            searcher.on_trial_result(f"t{number}", metrics)
        searcher.on_trial_complete(f"t{number}", result=metrics)
    assert proposed == {t.number: t.params for t in trials}
    assert [t.values for t in searcher.study.trials] == [
        t.values for t in trials
    ]  # told the same, stops included


def test_a_configuration_in_the_table_gets_its_row_and_others_a_prediction_or_an_unused_row(space):
    rows = synthetic_rows(space)
    surrogate = TableAnswers(rows, space)
    assert surrogate.row_for(rows[5]["keys"]) is surrogate.rows[5]
    moved = {**rows[5]["keys"], "stage2.lambda_nat": rows[5]["keys"]["stage2.lambda_nat"] * 1.01}
    predicted = surrogate.row_for(moved)["epochs"][-1]
    assert predicted["aa_acc"] != rows[5]["epochs"][-1]["aa_acc"] and 0 <= predicted["aa_acc"] <= 100
    nearest = TableAnswers(rows, space, mode="nearest")
    first, second = nearest.row_for(moved), nearest.row_for(moved)
    assert first is nearest.rows[5] and second is not first  # each row is handed out once per simulation
    nearest.reset()
    assert nearest.row_for(moved) is nearest.rows[5]


def test_a_simulated_search_is_reproducible_and_spends_its_budget(space, answers):
    strategy = Strategy("default", "tpe", "asha")
    a = simulate(space, strategy, answers, seed=1, clean_threshold=49.22, budget_epochs=200)
    b = simulate(space, strategy, answers, seed=1, clean_threshold=49.22, budget_epochs=200)
    assert [(t.number, t.keys, t.epochs, t.finished_at) for t in a.trials] == [
        (t.number, t.keys, t.epochs, t.finished_at) for t in b.trials
    ]
    spent = sum(t.epochs for t in a.trials)
    assert 200 <= spent < 200 + 2 * 12  # stops starting trials at the budget; running ones finish
    assert all(t.epochs in (8, 12) for t in a.trials)  # ASHA's rung at epoch 8, or the full budget
    assert [t.number for t in a.trials[:2]] == [0, 1] and all(
        not t.stopped_early for t in a.trials[:2]
    )  # presets
    curve = a.curve()
    assert all(h1 <= h2 for (_, h1), (_, h2) in zip(curve, curve[1:]))  # the front only grows


def test_the_stage1_pool_offers_only_trained_stage1_runs_and_alpha_0_never_shares():
    from tuning.stage1_pool import Stage1Pool

    objectives = [("val/clean_acc", "max"), ("val/aa_acc", "max")]
    params = {"method": "derd", "stage1.lambda_adv": 0.1, "stage2.lambda_nat": 1.0}
    pool = Stage1Pool(alpha=0.5, seed=0, objectives=objectives)
    assert pool.choose() is None  # nothing trained yet
    assert not pool.observe(0, params, {"stage": 1, "epoch": 1})
    assert pool.observe(0, params, {"stage": 2, "epoch": 5})  # past its stage I: trained, once
    assert not pool.observe(0, params, {"stage": 2, "epoch": 6})
    picks = [pool.choose() for _ in range(200)]
    reused = [p for p in picks if p is not None]
    assert reused and all(p == (0, {"method": "derd", "stage1.lambda_adv": 0.1}) for p in reused)
    assert 0.55 < len(reused) / 200 < 0.8  # reused with probability 1 - 0.5 / (0.5 + 1) = 2/3
    assert Stage1Pool(alpha=0.0, seed=0, objectives=objectives).choose() is None


def test_a_shared_stage1_costs_a_simulated_trial_nothing(space, answers):
    """With sharing on, trials that reuse a trained stage I run only their stage II (8 of 12 epochs)
    and are told with the reused stage-I keys."""
    shared = simulate(
        space,
        Strategy("shared", "tpe", "none", {"share_stage1": 0.5}),
        answers,
        seed=0,
        clean_threshold=49.22,
        num_trials=12,
    )
    reused = [t for t in shared.trials if t.epochs == 8]
    assert reused and all(t.full_budget for t in reused)
    firsts = {
        json.dumps(
            {k: v for k, v in t.keys.items() if k.startswith("stage1.") or k == "method"}, sort_keys=True
        )
        for t in shared.trials
        if t.epochs == 12
    }
    assert all(
        json.dumps(
            {k: v for k, v in t.keys.items() if k.startswith("stage1.") or k == "method"}, sort_keys=True
        )
        in firsts
        for t in reused
    )


def test_the_noise_model_draws_the_tables_seed_to_seed_spread_and_the_same_key_the_same_draw():
    import numpy as np

    from tuning.tabular import NoiseModel, curve_vector

    rows = synthetic_rows(SearchSpace.from_yaml(default_space_path("digits")), n=6)
    for extra_seed, shift in (
        (1, 2.0),
        (2, -2.0),
    ):  # every configuration again at two seeds, moved +-2 points
        rows += [
            {
                **r,
                "id": r["id"].replace("-s0", f"-s{extra_seed}"),
                "seed": extra_seed,
                "epochs": [
                    {
                        **e,
                        **(
                            {c: e[c] + shift for c in ("clean_acc", "pgd_acc", "aa_acc")}
                            if "aa_acc" in e
                            else {}
                        ),
                    }
                    for e in r["epochs"]
                ],
            }
            for r in rows
            if r["seed"] == 0
        ]
    noise = NoiseModel(rows)
    assert np.allclose(noise.sd, 2.0)  # deviations of +-2 and 0 around the mean, 2 degrees of freedom each
    row = rows[3]
    assert noise.perturb(row, (0, 3, 0)) == noise.perturb(row, (0, 3, 0))
    assert noise.perturb(row, (0, 3, 0)) != noise.perturb(row, (0, 3, 1))  # a re-run: another draw
    draws = np.array([curve_vector(noise.perturb(row, (0, k, 0))) for k in range(2000)]) - curve_vector(row)
    assert abs(draws[:, 4].std() - 2.0) < 0.15  # epoch 8's AA; far from 0 and 100, so never clipped


def _run(number, clean, aa, true_clean, true_aa, finished_at, replicate=0, full=True):
    from tuning.simulator import SimTrial

    return SimTrial(
        number, {}, 12, finished_at, full, True, [clean, aa], False, [true_clean, true_aa], replicate
    )


def test_the_exported_student_is_the_one_the_noisy_scores_pick_and_it_is_scored_noise_free():
    """The export picks the highest observed AA above the floor (by the mean over a race's re-runs);
    its regret is against the noise-free truth, and a pick whose true clean is below the floor is
    counted as a miss."""
    from tuning.simulator import SimResult

    lucky = _run(1, clean=81, aa=12, true_clean=75, true_aa=6, finished_at=10)  # looks best, is not
    steady = _run(2, clean=80, aa=10, true_clean=80, true_aa=9, finished_at=20)
    stopped = _run(3, clean=90, aa=30, true_clean=90, true_aa=30, finished_at=5, full=False)
    result = SimResult("s", 0, [lucky, steady, stopped], 30)
    assert result.exported(78.0).number == 1
    assert result.regret(78.0, best_aa=9.0) == 3.0 and result.misses(78.0)  # its true clean 75 misses 78
    assert result.regret(70.0, best_aa=9.0) == 3.0 and not result.misses(70.0)
    assert (
        result.exported(78.0, budget=12) is None
    )  # after one trial budget: only the stopped trial 3 is there
    assert result.exported(70.0, budget=24).number == 1 and result.regret(70.0, 9.0, budget=24) == 3.0
    assert result.regret(90.0, best_aa=9.0) == 9.0 and result.misses(
        90.0
    )  # nothing to choose: the whole best
    raced = SimResult("s", 0, [lucky, steady, _run(1, 77, 5, 75, 6, finished_at=40, replicate=1)], 40)
    assert raced.exported(70.0).number == 2  # trial 1's mean, (79, 8.5), is now behind trial 2's (80, 10)
    assert raced.regret(70.0, best_aa=9.0) == 0.0 and not raced.misses(78.0)


def test_a_racing_search_re_runs_its_best_candidates_inside_the_budget(space, answers):
    from tuning.tabular import NoiseModel

    rows = synthetic_rows(space)
    rows += [
        {
            **r,
            "id": r["id"].replace("-s0", "-s1"),
            "seed": 1,
            "epochs": [
                {**e, **({"aa_acc": e["aa_acc"] + 1.0} if "aa_acc" in e else {})} for e in r["epochs"]
            ],
        }
        for r in rows[:10]
    ]
    noise = NoiseModel(rows)
    result = simulate(
        space,
        Strategy("race", "tpe", "none", {"startup_trials": 3}, race=2),
        answers,
        seed=0,
        clean_threshold=49.22,
        budget_epochs=120,
        noise=noise,
        race_floor=55.0,
    )
    replicates = [t for t in result.trials if t.replicate]
    firsts = {t.number: t for t in result.trials if not t.replicate}
    assert len(replicates) == 2 and len({t.number for t in replicates}) == 2
    assert all(firsts[t.number].objectives[0] >= 55.0 and t.keys == firsts[t.number].keys for t in replicates)
    assert all(
        t.objectives != firsts[t.number].objectives and t.truth == firsts[t.number].truth for t in replicates
    )
    assert sum(t.epochs for t in result.trials) <= 120 + 12  # inside the budget (running trials finish)


def test_the_presets_prior_draws_near_the_presets_and_fades_as_the_study_grows(space):
    """beta large: almost every trial comes from the prior, and its keys lie near the method's preset
    (closer than random draws); the decision is the seed's, so a rerun repeats it; beta 0 is no prior."""
    from tuning.prior import PriorSampler
    from tuning.searcher import make_sampler
    from tuning.tabular import features

    def distances(sampler, n=30):
        study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
        out = []
        for _ in range(n):
            trial = study.ask()
            keys = space.sample(trial)
            center = next(p for p in space.presets if p["method"] == keys["method"])
            a, b = features(space, keys), features(space, center)
            out.append(sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5)
            study.tell(trial, [1.0, 1.0])
        return out

    random_sampler = optuna.samplers.RandomSampler(seed=0)
    prior = PriorSampler(optuna.samplers.RandomSampler(seed=0), space.presets, beta=1e6, seed=0)
    near, far = distances(prior), distances(random_sampler)
    assert sum(near) / len(near) < 0.6 * sum(far) / len(far)
    assert (
        distances(PriorSampler(optuna.samplers.RandomSampler(seed=0), space.presets, beta=1e6, seed=0))
        == near
    )
    faded = PriorSampler(optuna.samplers.RandomSampler(seed=1), space.presets, beta=1.0, seed=1)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=faded)
    for _ in range(40):
        trial = study.ask()
        space.sample(trial)
        study.tell(trial, [1.0, 1.0])
    late = sum(faded.from_prior[n] for n in range(20, 40))
    assert late <= 4  # beta / (beta + n): at most 1/21 per trial after 20 finished
    no_prior = make_sampler(space)  # the shipped space: no prior unless search.prior_weight is set
    assert isinstance(no_prior, PriorSampler) == (space.prior_weight > 0)


def test_the_table_guard_tells_identical_rows_from_noise_and_noise_from_a_changed_run_loop(space):
    import importlib.util

    from tuning.tabular import REPO, NoiseModel

    spec = importlib.util.spec_from_file_location("guard", REPO / "benchmarks" / "tabular" / "guard.py")
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    rows = synthetic_rows(space, n=6)
    rows += [
        {
            **r,
            "id": r["id"].replace("-s0", "-s1"),
            "seed": 1,
            "epochs": [
                {
                    **e,
                    **({c: e[c] + 1.0 for c in ("clean_acc", "pgd_acc", "aa_acc")} if "aa_acc" in e else {}),
                }
                for e in r["epochs"]
            ],
        }
        for r in rows
        if r["seed"] == 0
    ]
    noise = NoiseModel(rows)  # sd 0.71 for every value
    row = rows[0]

    def moved(by: float) -> dict:
        return {
            **row,
            "epochs": [
                {**e, **({"aa_acc": e["aa_acc"] + by} if "aa_acc" in e else {})} for e in row["epochs"]
            ],
        }

    assert guard.verdict(row, row, noise)[0] == "identical"
    assert guard.verdict(row, moved(1.0), noise)[0] == "within noise"
    assert guard.verdict(row, moved(5.0), noise)[0] == "stale"
