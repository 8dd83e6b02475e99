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


@pytest.mark.parametrize("scheduler", ["moasha", "asha"])
def test_the_simulator_equals_a_real_ray_search_over_the_tables_curves(tmp_path, space, answers, teacher_args, scheduler):
    """Same seed, same sampler and scheduler: the real search (Ray, Optuna's database, the scheduler,
    MLflow) with a stand-in trial that reports the table's curves samples the same configurations and
    stops the same trials as the simulator. One trial at a time, so the order of events is fixed."""
    from tuning.search import run_search

    out = tmp_path / "real"
    run_search(["--dataset", "digits", "--out", str(out), "--num-trials", "6", "--max-concurrent", "1", "--seed", "3",
                "--scheduler", scheduler, *teacher_args], trainable=table_trainable, trainable_params={"answers": answers})
    record = json.loads((out / "search.json").read_text())
    ran = SearchSpace.from_yaml(out / "space.yaml")
    study = optuna.load_study(study_name=record["name"], storage=f"sqlite:///{out / 'optuna.db'}")
    real = {t.number: (t.params, "stopped" if t.user_attrs.get("stopped_early") else t.state.name) for t in study.trials}

    sim = simulate(ran, Strategy("as run", ran.sampler, ran.scheduler), answers, seed=3,
                   clean_threshold=record["clean_threshold"], num_trials=6, max_concurrent=1)
    simulated = {t.number: (t.keys, "stopped" if t.stopped_early else "COMPLETE") for t in sim.trials}
    assert simulated == real
    assert any(state == "stopped" for _, state in real.values())  # it did stop some: the stops are compared
    assert len({json.dumps(p, sort_keys=True) for p, _ in real.values()}) == 6


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
    assert [(t.number, t.keys, t.epochs, t.finished_at) for t in a.trials] == \
        [(t.number, t.keys, t.epochs, t.finished_at) for t in b.trials]
    spent = sum(t.epochs for t in a.trials)
    assert 200 <= spent < 200 + 2 * 12  # stops starting trials at the budget; running ones finish
    assert all(t.epochs in (8, 12) for t in a.trials)  # ASHA's rung at epoch 8, or the full budget
    assert [t.number for t in a.trials[:2]] == [0, 1] and all(not t.stopped_early for t in a.trials[:2])  # presets
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
    shared = simulate(space, Strategy("shared", "tpe", "none", {"share_stage1": 0.5}), answers, seed=0,
                      clean_threshold=49.22, num_trials=12)
    reused = [t for t in shared.trials if t.epochs == 8]
    assert reused and all(t.full_budget for t in reused)
    firsts = {json.dumps({k: v for k, v in t.keys.items() if k.startswith("stage1.") or k == "method"}, sort_keys=True)
              for t in shared.trials if t.epochs == 12}
    assert all(json.dumps({k: v for k, v in t.keys.items() if k.startswith("stage1.") or k == "method"}, sort_keys=True)
               in firsts for t in reused)
