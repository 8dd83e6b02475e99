"""The search's parts without a Ray cluster: the space, the Optuna searcher, ASHA across a restart."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import optuna
import pytest
from conftest import TINY_BASE, write_space

from derd.methods import available_methods
from tuning.scheduler import ResumableASHA
from tuning.searcher import TRIAL_NUMBER, StudySearcher
from tuning.space import SearchSpace


@pytest.fixture()
def space(tmp_path):
    return SearchSpace.from_yaml(
        write_space(
            tmp_path / "space.yaml",
            space={
                "method": {"distribution": "categorical", "choices": ["derd", "derd_no_nat", "dafl"]},
                "stage2.lambda_nat": {"distribution": "loguniform", "low": 0.05, "high": 5.0},
                "dafl.lambda_act": {"distribution": "loguniform", "low": 1e-3, "high": 1.0},
                "cmi.lambda_cr": {
                    "distribution": "loguniform",
                    "low": 0.1,
                    "high": 1.0,
                },  # no searched method reads it
            },
        )
    )


def test_paper_preset_is_one_point_per_method_with_only_its_keys(space):
    assert [p["method"] for p in space.presets] == ["derd", "derd_no_nat", "dafl"]
    assert space.presets[0] == {"method": "derd", "stage2.lambda_nat": 0.5}
    assert space.presets[2] == {"method": "dafl", "dafl.lambda_act": 0.1}
    assert "cmi.lambda_cr" not in [p.key for p in space.params]


def test_define_by_run_samples_only_the_keys_a_method_reads(space):
    study = optuna.create_study(
        directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    seen = set()
    for _ in range(12):
        sampled = space.sample(study.ask())
        seen.add(sampled["method"])
        assert ("dafl.lambda_act" in sampled) == (sampled["method"] == "dafl")
        assert ("stage2.lambda_nat" in sampled) == (sampled["method"] != "dafl")
    assert seen == {"derd", "derd_no_nat", "dafl"}


def test_restricting_to_one_method_drops_the_others(tmp_path):
    space = SearchSpace.from_yaml(
        write_space(
            tmp_path / "s.yaml",
            space={
                "method": {"distribution": "categorical", "choices": ["derd", "dafl"]},
                "stage2.lambda_nat": {"distribution": "loguniform", "low": 0.05, "high": 5.0},
                "dafl.lambda_act": {"distribution": "loguniform", "low": 1e-3, "high": 1.0},
            },
        ),
        methods=["dafl"],
    )
    assert space.methods == ["dafl"] and [p.key for p in space.params] == ["dafl.lambda_act"]
    assert space.presets == [{"dafl.lambda_act": 0.1}]
    wider = SearchSpace.from_yaml(tmp_path / "s.yaml", methods=["all"])
    assert (
        wider.methods == available_methods() and [p["method"] for p in wider.presets] == available_methods()
    )


def _result(epoch: int, total: int, clean: float, aa: float) -> dict:
    return {
        "epoch": epoch,
        "total_epochs": total,
        "val/clean_acc": clean,
        "val/aa_acc": aa,
        "val_evaluated": True,
        "search/score": (clean + aa) / 2,
    }


def test_searcher_tells_complete_pruned_fail_and_leaves_interrupted_trials_running(space, tmp_path):
    """Under ASHA each epoch's score is stored (its rungs are rebuilt from them on resume)."""
    import dataclasses

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    stopped: set[int] = set()
    searcher = StudySearcher(
        dataclasses.replace(space, scheduler="asha"),
        storage,
        "s",
        clean_threshold=50.0,
        stopped_early=stopped,
    )
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b", "c", "d", "e")}
    assert [configs[t][TRIAL_NUMBER] for t in "abcde"] == [0, 1, 2, 3, 4]
    searcher.on_trial_result("a", _result(2, 4, 60.0, 5.0))
    searcher.on_trial_complete("a", _result(4, 4, 70.0, 6.0))  # full budget, feasible
    stopped.add(1)
    searcher.on_trial_complete("b", _result(2, 4, 60.0, 1.0))  # stopped by ASHA
    searcher.on_trial_complete("c", _result(4, 4, 10.0, 10.0))  # collapsed: infeasible
    searcher.on_trial_complete("d", None, error=True)
    searcher.on_trial_complete("e", _result(2, 4, 60.0, 1.0))  # interrupted with the driver
    trials = optuna.load_study(study_name="s", storage=storage).trials
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "RUNNING"]
    assert [t.user_attrs.get("stopped_early", False) for t in trials[:3]] == [False, True, False]
    assert trials[0].values == [70.0, 6.0] and trials[0].user_attrs["constraint"] == [-20.0]
    assert trials[0].user_attrs["scores"] == {"2": 32.5, "4": 38.0} and trials[0].user_attrs["intermediate"][
        "2"
    ] == [60.0, 5.0]
    assert trials[2].user_attrs["constraint"] == [40.0]  # > 0: TPE and NSGA-II treat it as infeasible
    assert trials[1].user_attrs["scores"] == {"2": 30.5}

    resumed = StudySearcher(space, storage, "s", clean_threshold=50.0, stopped_early=set())
    again = resumed.suggest("new-ray-id")
    assert again == configs["e"]  # the interrupted trial comes back first: same number, same parameters
    assert resumed.suggest("next")[TRIAL_NUMBER] == 5


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_trial_asked_but_not_drawn_when_the_driver_died_is_drawn_on_resume_as_the_live_search_drew_it(
    tmp_path, sampler
):
    """A driver killed between ``study.ask()`` and the trial's first draw leaves a RUNNING trial
    without parameters; the resumed search hands it out with the parameters the uninterrupted search
    gave that trial, not an empty config (which ran the base config under the trial's number)."""
    import dataclasses

    searched = dataclasses.replace(SearchSpace.from_yaml(write_space(tmp_path / "s.yaml")), sampler=sampler)

    def searcher(name: str) -> StudySearcher:
        return StudySearcher(
            searched, f"sqlite:///{tmp_path / name}", "s", clean_threshold=50.0, stopped_early=set()
        )

    def run(into: StudySearcher, number: int) -> dict:
        config = into.suggest(f"t{number}")
        into.on_trial_complete(f"t{number}", _result(4, 4, 60.0 + number, 5.0))
        return config

    whole = searcher("whole.db")
    live = [run(whole, i) for i in range(3)]
    killed = searcher("killed.db")
    for i in range(2):
        run(killed, i)
    killed.study.ask()  # trial 2 created, then the driver died before drawing its keys
    resumed = searcher("killed.db")
    again = resumed.suggest("new-ray-id")
    assert again[TRIAL_NUMBER] == 2 and again == live[2]
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'killed.db'}").trials[2].params


def _trial(number: int):
    return SimpleNamespace(trial_id=f"ray-{number}", config={TRIAL_NUMBER: number})


def test_asha_keeps_its_decisions_across_a_restart():
    """Rungs rebuilt from stored scores: a trial worse than the recorded ones stops at the rung, and a
    resumed trial already recorded there is not judged again."""
    history = {0: {4: 80.0, 8: 85.0}, 1: {4: 70.0, 8: 75.0}, 2: {4: 20.0}}
    asha = ResumableASHA(history=history, max_t=8, grace_period=4, reduction_factor=2)
    weak, resumed = _trial(3), _trial(2)
    for t in (weak, resumed):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, weak, {"epoch": 4, "search/score": 30.0, "total_epochs": 8}) == "STOP"
    assert asha.stopped_early == {3}
    assert (
        asha.on_trial_result(None, resumed, {"epoch": 5, "search/score": 21.0, "total_epochs": 8})
        == "CONTINUE"
    )
    fresh = ResumableASHA(max_t=8, grace_period=4, reduction_factor=2)  # what a restart without history does
    fresh.on_trial_add(None, weak)
    assert (
        fresh.on_trial_result(None, weak, {"epoch": 4, "search/score": 30.0, "total_epochs": 8}) == "CONTINUE"
    )


def test_asha_never_stops_the_papers_presets():
    asha = ResumableASHA(
        history={0: {4: 80.0}, 1: {4: 70.0}}, protected={2}, max_t=8, grace_period=4, reduction_factor=2
    )
    preset, other = _trial(2), _trial(3)
    for t in (preset, other):
        asha.on_trial_add(None, t)
    assert (
        asha.on_trial_result(None, preset, {"epoch": 4, "search/score": 10.0, "total_epochs": 8})
        == "CONTINUE"
    )
    assert asha.on_trial_result(None, other, {"epoch": 4, "search/score": 10.0, "total_epochs": 8}) == "STOP"
    assert asha.stopped_early == {3}


def test_finish_after_a_kill_between_totals_and_state_logs_the_totals_once(tmp_path):
    """A driver killed after writing a trial's totals but before closing its run: the resumed
    driver closes the run without logging the totals a second time."""
    from mlflow.tracking import MlflowClient

    from tuning.mlflow_logger import MLflowSearchLogger
    from tuning.records import SearchFolder

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    parent = client.create_run(exp).info.run_id
    result = {
        "epoch": 2,
        "total_epochs": 2,
        "trial/compute_s": 3.0,
        "search/feasible": True,
        "time/epoch_s": 1.0,
    }
    first = MLflowSearchLogger(
        uri, exp, parent, {}, [], cpus_per_trial=1, gpus_per_trial=0, folder=SearchFolder(tmp_path)
    )
    first.log_epoch(0, result, {TRIAL_NUMBER: 0})
    run_id = first.run_id(0)
    first.client.set_terminated = lambda *a, **k: None  # the kill: totals written, state not
    first.finish(0, result)
    assert client.get_run(run_id).info.status == "RUNNING"
    resumed = MLflowSearchLogger(
        uri, exp, parent, {}, [], cpus_per_trial=1, gpus_per_trial=0, folder=SearchFolder(tmp_path)
    )
    resumed.log_epoch(0, result)  # the resumed trial replays its last epoch
    resumed.finish(0, result)
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("trial/wall_time_s", "trial/device_hours", "time/epoch_s"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [2]


@pytest.mark.parametrize("written_before_kill", [True, False])
def test_an_epoch_reported_just_before_a_driver_kill_reaches_mlflow_once(tmp_path, written_before_kill):
    """The driver dies after a trial reported epoch 5 (and saved it in its checkpoint) but before the
    logger wrote it, with epochs 1-4 written, or still in its write-behind buffer; the resumed trial
    reports epoch 6 first. Every epoch 1..6 is in MLflow once."""
    import torch
    from mlflow.tracking import MlflowClient

    from tuning.mlflow_logger import MLflowSearchLogger
    from tuning.records import SearchFolder

    folder = SearchFolder(tmp_path)
    uri = folder.mlflow_uri
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    parent = client.create_run(exp).info.run_id
    history = [
        {
            "epoch": e,
            "stage": 1,
            "loss/G": float(e),
            "time/epoch_s": 0.1 * e,
            **({"val/clean_acc": 50.0 + e} if e % 2 == 0 else {}),
        }
        for e in range(1, 7)
    ]
    first = MLflowSearchLogger(uri, exp, parent, {}, [], cpus_per_trial=1, gpus_per_trial=0, folder=folder)
    for entry in history[:4]:
        first.log_epoch(0, entry, {TRIAL_NUMBER: 0})
    if written_before_kill:
        first.flush()
    # the kill: epoch 5 was reported and checkpointed, never logged; the resumed trial reaches epoch 6
    folder.trial_checkpoint(0).parent.mkdir(parents=True)
    from derd.run import RUN_FORMAT

    torch.save(
        {
            "format": RUN_FORMAT,
            "config": {},
            "epoch": 5,
            "phase": 1,
            "student": {},
            "method": {},
            "rng": torch.Generator().get_state(),
            "history": history[:5],
        },
        folder.trial_checkpoint(0),
    )
    resumed = MLflowSearchLogger(uri, exp, parent, {}, [], cpus_per_trial=1, gpus_per_trial=0, folder=folder)
    resumed.log_epoch(0, history[5])
    resumed.flush()
    run_id = resumed.run_id(0)
    for key in ("loss/G", "time/epoch_s"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3, 4, 5, 6], key
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/clean_acc")) == [2, 4, 6]


OBJECTIVES = [("val/clean_acc", "max"), ("val/aa_acc", "max")]


def _moasha(**settings):
    """MO-ASHA over the two objectives with a clean floor of 50 and rungs from epoch 4 below 8 (unless
    ``settings`` say otherwise)."""
    from tuning.scheduler import ResumableMOASHA

    defaults = dict(objectives=OBJECTIVES, clean_threshold=50.0, max_t=8, grace_period=4, reduction_factor=2)
    return ResumableMOASHA(**{**defaults, **settings})


def _rung_result(clean: float, aa: float, epoch: int = 4) -> dict:
    from tuning.trainable import search_score

    metrics = {"val/clean_acc": clean, "val/aa_acc": aa}
    return {
        "epoch": epoch,
        "total_epochs": 8,
        **metrics,
        "search/score": search_score(metrics, OBJECTIVES, 50.0),
    }


def test_moasha_keeps_a_trial_on_the_front_that_asha_stops_by_a_hand_computed_rung():
    """Rung at epoch 4 holds (clean, AA) = (90, 2), (80, 5), (60, 4). A newcomer at (70, 12) is on the
    front (the most robust), but its mean 41 is below ASHA's cutoff, the median of 46, 42.5 and 32.
    MO-ASHA: the front is {(70, 12), (90, 2), (80, 5)} and (60, 4) is behind it; in the front the
    ends of each objective, (70, 12) and (90, 2), have infinite crowding distance, the newcomer
    wins the tie, so it ranks first of 4 and is inside the top ceil(4 / 2) = 2."""
    from tuning.scheduler import rung_order, rung_point

    rung = {0: (90.0, 2.0), 1: (80.0, 5.0), 2: (60.0, 4.0)}
    asha = ResumableASHA(
        history={n: {4: _rung_result(*p)["search/score"]} for n, p in rung.items()},
        max_t=8,
        grace_period=4,
        reduction_factor=2,
    )
    moasha = _moasha(history={n: {4: rung_point(list(p), OBJECTIVES, 50.0)} for n, p in rung.items()})
    assert asha.on_trial_result(None, _trial(3), _rung_result(70, 12)) == "STOP"
    assert moasha.on_trial_result(None, _trial(3), _rung_result(70, 12)) == "CONTINUE"
    assert rung_order(
        [rung_point([70, 12], OBJECTIVES, 50), *(rung_point(list(p), OBJECTIVES, 50) for p in rung.values())]
    ) == [0, 1, 2, 3]
    # a dominated trial and an infeasible one (below 50 clean, however robust) rank last and stop
    assert moasha.on_trial_result(None, _trial(4), _rung_result(55, 1)) == "STOP"
    assert moasha.on_trial_result(None, _trial(5), _rung_result(40, 30)) == "STOP"
    assert moasha.stopped_early == {4, 5}


def test_moasha_rebuilds_its_rungs_from_the_study_on_resume(tmp_path):
    """A resumed search judges the next trial against the rung it had: the objectives the study
    stores per evaluated epoch (``intermediate``)."""
    from types import SimpleNamespace

    from tuning.scheduler import make_scheduler

    space = SearchSpace.from_yaml(
        write_space(tmp_path / "s.yaml", search={"scheduler": "moasha", "grace_period": 2})
    )
    study = optuna.create_study(directions=["maximize", "maximize"])
    for clean, aa in ((90, 2), (80, 5), (60, 4)):
        trial = study.ask()
        trial.set_user_attr("intermediate", {"2": [clean, aa]})
    resumed = make_scheduler(space, study, clean_threshold=50.0)
    fresh = make_scheduler(space, optuna.create_study(directions=["maximize"] * 2), 50.0)
    late = SimpleNamespace(config={TRIAL_NUMBER: 7})
    assert (
        resumed.on_trial_result(None, late, _rung_result(55, 1, epoch=2)) == "STOP"
    )  # behind the rebuilt rung
    assert (
        fresh.on_trial_result(None, late, _rung_result(55, 1, epoch=2)) == "CONTINUE"
    )  # first at an empty rung


def test_a_rung_records_an_evaluated_epoch_only_as_its_rebuild_on_resume_does():
    """A report whose val values are held over from an earlier evaluation is not judged at a rung: the
    first evaluated report at or past it is, which is the epoch a resumed search's rung rebuilt from
    the study's ``intermediate`` holds (so both decide on the same numbers)."""

    def moasha(history=None):  # rungs at epochs 3 and 6; val scored at epochs 2, 4, 6, 8
        return _moasha(grace_period=3, history=history)

    live = moasha()
    for number, (clean, aa) in enumerate(((90, 9), (80, 4))):
        held = _rung_result(clean, aa, epoch=3) | {"val_evaluated": False}  # epoch 2's values, held over
        assert live.on_trial_result(None, _trial(number), held) == "CONTINUE"
        assert number not in live.rungs[-1][1]
        live.on_trial_result(None, _trial(number), _rung_result(clean, aa, epoch=4))
    assert live.rungs[-1] == (3, {0: (True, (90, 9)), 1: (True, (80, 4))})
    resumed = moasha(
        {0: {2: (True, (70, 2)), 4: (True, (90, 9))}, 1: {2: (True, (70, 1)), 4: (True, (80, 4))}}
    )
    assert resumed.rungs == live.rungs
    late = _rung_result(60, 1, epoch=4)
    assert (
        live.on_trial_result(None, _trial(2), late)
        == resumed.on_trial_result(None, _trial(2), late)
        == "STOP"
    )


def test_rungs_between_evaluations_are_refused_and_the_default_grace_period_is_an_evaluation(tmp_path):
    from tuning.space import SpaceError

    space = write_space(tmp_path / "s.yaml", search={"scheduler": "asha", "grace_period": 3})
    with pytest.raises(SpaceError, match=r"rungs at epochs 3 fall between val evaluations.*e\.g\. 4"):
        SearchSpace.from_yaml(space)
    # stage I of 3 epochs, val every 2: the default first rung is epoch 4, not 3 + 2
    odd = {"budget.epochs": 9, "stage1.epochs": 3, "eval.every": 2}
    space = SearchSpace.from_yaml(
        write_space(tmp_path / "t.yaml", base={**TINY_BASE, **odd}, search={"scheduler": "moasha"})
    )
    assert space.rungs() == [4, 8]
    assert SearchSpace.from_yaml(
        write_space(tmp_path / "u.yaml", search={"scheduler": "none", "grace_period": 3})
    )


def test_the_scheduler_says_what_it_is_in_rays_status_block():

    asha = ResumableASHA(max_t=12, grace_period=4, reduction_factor=2)
    assert asha.debug_string().startswith("Using ASHA (resumable): rungs at epochs 8, 4;")
    moasha = _moasha(max_t=12)
    trial = _trial(0)
    moasha.on_trial_add(None, trial)
    moasha.stopped_early.add(5)
    assert moasha.debug_string() == "Using MO-ASHA (resumable): rungs at epochs 8, 4; 1 trials stopped early"


def test_the_reaper_ends_an_orphan_it_never_saw_by_the_drivers_mark_and_nothing_else():
    """A worker forked just before the driver's kill is orphaned before the reaper's next look; the
    mark its environment inherited still finds it. A process without the mark is left alone."""
    import os
    import subprocess
    import sys

    import psutil

    from tuning.processes import MARK, end_processes, marked

    spawn = (
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
        " print(p.pid, flush=True)"
    )  # the child prints its child's pid and exits: the grandchild is orphaned
    env = {**os.environ, MARK: "driver-1"}
    orphan = int(
        subprocess.run(
            [sys.executable, "-c", spawn], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={k: v for k, v in os.environ.items() if k != MARK},
    )
    try:
        assert psutil.Process(orphan).ppid() != os.getpid()  # not our descendant: only the mark finds it
        found = marked("driver-1")
        assert orphan in found and bystander.pid not in found and not marked("driver-2") and not marked("")
        assert end_processes(found) == 1
        assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
        assert bystander.poll() is None
    finally:
        bystander.kill()
        for pid in marked("driver-1"):
            psutil.Process(pid).kill()


def test_tpe_samples_when_stopped_trials_outnumber_the_complete_ones(space):
    """Many trials stopped early and two at full budget: TPE's good group then holds stopped trials, and
    it still samples (told PRUNED, with no values in a multi-objective study, Optuna's TPE failed here);
    a stopped trial counts as barely infeasible, a full one as feasible."""
    storage = optuna.storages.InMemoryStorage()
    stopped: set[int] = set()
    searcher = StudySearcher(
        dataclasses.replace(space, sampler="tpe"), storage, "s", clean_threshold=50.0, stopped_early=stopped
    )
    for i in range(40):
        config = searcher.suggest(f"t{i}")
        if i >= 2:
            stopped.add(config[TRIAL_NUMBER])
        searcher.on_trial_complete(f"t{i}", _result(4 if i < 2 else 2, 4, 60.0 + i, 5.0 + i))
    assert sum(bool(t.user_attrs.get("stopped_early")) for t in searcher.study.trials) == 38
    assert searcher.suggest("next")[TRIAL_NUMBER] == 40  # TPE's good group holds stopped trials: it samples
    from tuning.searcher import trial_constraint

    assert trial_constraint(searcher.study.trials[0]) == [-10.0] and trial_constraint(
        searcher.study.trials[5]
    ) == [1e-6]


def test_an_actor_exit_inside_a_gc_callback_prints_no_traceback_and_other_errors_still_do():
    """Ray ends a finished or stopped trial's actor with SIGTERM, whose handler raises SystemExit(1); raised
    inside a garbage-collection callback, Python printed it as "Exception ignored ... SystemExit: 1" (seen in
    a digits search). With ``quiet_actor_exit`` that SystemExit is silent; any other unraisable error is not."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys, weakref
        from tuning.trainable import quiet_actor_exit
        if sys.argv[1] == "quiet":
            quiet_actor_exit()
        class Thing: pass
        def ending(kind):
            def callback(ref):
                raise SystemExit(1) if kind == "exit" else ValueError("a real error")
            thing = Thing()
            ref = weakref.ref(thing, callback)
            del thing  # the callback runs here, where nothing can be raised
        ending("exit"); ending("error")
        print("still running")
    """)
    runs = {
        mode: subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=60)
        for mode in ("default", "quiet")
    }
    assert "SystemExit: 1" in runs["default"].stderr  # what the search printed before
    assert "SystemExit" not in runs["quiet"].stderr and "ValueError: a real error" in runs["quiet"].stderr
    assert all(r.stdout.strip() == "still running" for r in runs.values())


def test_noise_aware_moasha_keeps_a_trial_within_its_standard_errors_and_every_stop_says_why():
    """Rung (clean, AA) = (90, 9), (89, 8.8), (80, 2): a newcomer at (88.5, 8.5) on 359 images is
    dominated by the first two and ranks third, outside ceil(4 / 2) = 2. One binomial standard error
    up, (90.2, 10.0), it dominates them all: the noise-aware rule keeps it. A trial at (60, 1) is
    dominated beyond its errors and stops under both rules, and the stop line says where it stood."""
    from tuning.scheduler import ResumableMOASHA, rung_point

    rung = {0: (90.0, 9.0), 1: (89.0, 8.8), 2: (80.0, 2.0)}

    def moasha(noise_aware: bool) -> ResumableMOASHA:
        return _moasha(
            noise_aware=noise_aware,
            history={n: {4: rung_point(list(p), OBJECTIVES, 50.0)} for n, p in rung.items()},
        )

    plain, aware = moasha(False), moasha(True)
    newcomer = {**_rung_result(88.5, 8.5), "val/n_images": 359}
    assert plain.on_trial_result(None, _trial(3), newcomer) == "STOP"
    assert aware.on_trial_result(None, _trial(3), newcomer) == "CONTINUE"
    assert aware.on_trial_result(None, _trial(4), {**_rung_result(60, 1), "val/n_images": 359}) == "STOP"
    assert plain.stop_reasons[3] == (
        "at the epoch-4 rung: feasible, Pareto rank 3 among the feasible, place 3 of 4 "
        "trials at the rung, where the top 2 go on"
    )
    assert "ranked one standard error up" in aware.stop_reasons[4] and 3 not in aware.stop_reasons
    asha = ResumableASHA(
        history={n: {4: _rung_result(*p)["search/score"]} for n, p in rung.items()},
        max_t=8,
        grace_period=4,
        reduction_factor=2,
    )
    assert asha.on_trial_result(None, _trial(3), _rung_result(60, 1)) == "STOP"
    assert asha.stop_reasons[3].startswith("at the epoch-4 rung: score 30.50 below the rung's cutoff")


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2", "gp"])
def test_a_search_resumed_mid_study_draws_what_the_uninterrupted_one_draws(tmp_path, sampler):
    """The sampler a resumed search builds anew continues the uninterrupted search's draws instead of
    restarting them from its seed (which repeated the first session's random trials)."""
    from tuning.searcher import make_sampler

    space = SearchSpace.from_yaml(
        write_space(tmp_path / "s.yaml", search={"sampler": sampler, "startup_trials": 3, "seed": 4})
    )

    def search(restart_at: int | None, make=make_sampler) -> list[dict]:
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(storage=storage, sampler=make(space), directions=["maximize"] * 2)
        for number in range(6):
            if number == restart_at:  # a new driver: the study read back, the sampler built again
                study = optuna.load_study(study_name=study.study_name, storage=storage, sampler=make(space))
            trial = study.ask()
            params = space.sample(trial)
            study.tell(trial, [params["stage1.lambda_adv"], -params["stage2.lambda_nat"]])
        return [t.params for t in study.trials]

    assert search(restart_at=2) == search(restart_at=None)
    if sampler == "random":  # what a sampler seeded once does: the resumed search repeats trials 0, 1
        plain = search(restart_at=2, make=lambda s: optuna.samplers.RandomSampler(seed=s.seed))
        assert plain[2:4] == plain[0:2]
