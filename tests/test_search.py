"""The search with real Ray, Optuna and MLflow in temporary folders (tiny models, tiny budgets)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import psutil
import pytest
import torch
from conftest import TINY_BASE, write_space
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    """Two one-CPU Ray nodes on this machine; the head also has one logical GPU."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    c.add_node(num_cpus=1)
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def _runs(out: Path, name: str = "derd-digits"):
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    return (
        client,
        [r for r in runs if r.data.tags.get("derd.kind") == "trial"],
        [r for r in runs if r.data.tags.get("derd.kind") == "search"],
    )


def _study(out: Path, name: str = "derd-digits"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")


def test_tiny_search_over_methods_logs_one_run_per_trial(tmp_path, cluster, teacher_args):
    """The method dimension samples both methods, each with only the keys it reads."""
    from tuning.search import run_search

    space = write_space(
        tmp_path / "space.yaml",
        space={
            "method": {"distribution": "categorical", "choices": ["derd", "dafl"]},
            "stage1.lambda_adv": {"distribution": "loguniform", "low": 1e-3, "high": 1.0},
            "dafl.lambda_act": {"distribution": "loguniform", "low": 1e-3, "high": 1.0},
        },
        search={"num_trials": 4, "max_concurrent": 2, "scheduler": "none", "sampler": "random", "seed": 1},
    )
    out = tmp_path / "s"
    summary = run_search(["--space", str(space), "--out", str(out), *teacher_args])
    client, trials, parents = _runs(out)
    assert len(trials) == 4 and len(parents) == 1 and summary["trials_finished"] == 4
    assert parents[0].info.status == "FINISHED"
    by_method = {}
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert (
            run.data.tags["derd.protocol"] == "search" and float(run.data.tags["derd.eps"]) > 0
        )  # its val scores'
        assert {"val/clean_acc", "val/pgd_acc", "val/aa_acc", "val/n_images", "trial/wall_time_s"} <= set(
            run.data.metrics
        )
        by_method.setdefault(run.data.params["method"], []).append(run)
        history = client.get_metric_history(run.info.run_id, "loss/G")
        assert sorted(m.step for m in history) == [1, 2, 3, 4]  # per-epoch metrics, each epoch once
    assert set(by_method) == {"derd", "dafl"}
    assert all(
        "stage1.lambda_adv" in r.data.params and "dafl.lambda_act" not in r.data.params
        for r in by_method["derd"]
    )
    assert all(
        "dafl.lambda_act" in r.data.params and "stage1.lambda_adv" not in r.data.params
        for r in by_method["dafl"]
    )
    presets = [r for r in trials if r.data.tags["derd.preset"] == "true"]
    assert {r.data.params["method"] for r in presets} == {"derd", "dafl"}  # 'paper': one preset per method
    study = _study(out)
    assert len(study.trials) == 4 and study.metric_names == ["val/clean_acc", "val/aa_acc"]
    assert (
        study.trials[0].params["stage1.lambda_adv"] == 0.05
        and study.trials[1].params["dafl.lambda_act"] == 0.1
    )
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2
        run = client.get_run(t.user_attrs["mlflow_run_id"])  # Optuna -> MLflow and back
        assert run.data.tags["optuna.trial_number"] == str(t.number)
        assert set(t.user_attrs["intermediate"]) == {"2", "4"} and "constraint" in t.user_attrs
        assert "scores" not in t.user_attrs  # no ASHA here: no Optuna write per epoch
    assert (out / "best_trials.md").read_text().startswith("Best trials (4 finished")


def test_a_diverging_trial_fails_with_its_reason_while_the_search_goes_on(tmp_path, cluster, teacher_args):
    """Every weight is in its range, so the divergence comes from a natural teacher whose logits overflow:
    DERD, which reads it, diverges; DERD w/o T_nat, which does not, finishes."""
    import torch

    from tuning.search import run_search

    state = torch.load(teacher_args[1], weights_only=True)
    last = [k for k in state["state_dict"] if k.endswith("weight")][-1]
    state["state_dict"][last] = state["state_dict"][last] * 1e38
    torch.save(state, tmp_path / "overflowing.pt")
    space = write_space(
        tmp_path / "space.yaml",
        space={
            "method": {"distribution": "categorical", "choices": ["derd", "derd_no_nat"]},
            "stage1.lambda_bn": {"distribution": "loguniform", "low": 1e-6, "high": 1.0},
        },
        presets=["paper"],
        search={"num_trials": 2, "max_concurrent": 1, "scheduler": "none"},
    )
    out = tmp_path / "s"
    run_search(
        [
            "--space",
            str(space),
            "--out",
            str(out),
            "--max-failures",
            "0",
            "--teacher-natural",
            str(tmp_path / "overflowing.pt"),
            *teacher_args[2:],
        ]
    )
    _, trials, _ = _runs(out)
    by_status = {r.info.status: r for r in trials}
    assert set(by_status) == {"FAILED", "FINISHED"}
    assert re.search(
        r"loss term \S+ became (inf|nan) in stage 1, epoch 1", by_status["FAILED"].data.tags["derd.error"]
    )
    assert by_status["FAILED"].data.params["method"] == "derd"
    assert sorted(t.state.name for t in _study(out).trials) == ["COMPLETE", "FAIL"]


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path, cluster, teacher_args):
    from tuning.search import run_search

    out = tmp_path / "s"
    run_search(
        [
            "--space",
            str(write_space(tmp_path / "space.yaml")),
            "--out",
            str(out),
            "--num-trials",
            "2",
            "--cpus-per-trial",
            "1",
            "--max-concurrent",
            "2",
            *teacher_args,
        ]
    )
    _, trials, _ = _runs(out)
    assert len({r.data.tags["derd.node_id"] for r in trials}) == 2


def test_fractional_gpus_let_two_trials_share_one_gpu(tmp_path, cluster, teacher_args):
    from tuning.search import run_search

    out = tmp_path / "s"
    run_search(
        [
            "--space",
            str(write_space(tmp_path / "space.yaml")),
            "--out",
            str(out),
            "--num-trials",
            "2",
            "--gpus-per-trial",
            "0.5",
            "--cpus-per-trial",
            "0.5",
            "--max-concurrent",
            "2",
            *teacher_args,
        ]
    )
    _, trials, _ = _runs(out)
    assert [r.data.tags["derd.gpu_ids"] for r in trials] == ["0", "0"]
    (a, b) = sorted((r.info.start_time, r.info.end_time) for r in trials)
    assert b[0] < a[1]  # the second started before the first ended: they ran at the same time
    assert {r.data.tags["derd.device"] for r in trials} == {"cpu"}  # logical GPUs: no CUDA here


@pytest.fixture()
def start():
    """Start a search driver in its own session; a test that fails mid-way leaves no driver behind
    (the driver's reaper then ends its Ray processes)."""
    started: list[subprocess.Popen] = []

    def run(cmd: list[str]) -> subprocess.Popen:
        started.append(
            subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
        )
        return started[-1]

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _wait_for(predicate, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError("timed out")


def _finished_trials(out: Path, name: str = "derd-digits") -> int:
    try:
        return sum(t.state.is_finished() for t in _study(out, name).trials)
    except Exception:  # noqa: BLE001 - the study may not exist yet
        return 0


def _assert_complete_and_unique(out: Path, n: int, name: str = "derd-digits") -> None:
    """n trials: one MLflow child run and one finished Optuna trial each, every epoch logged once."""
    client, trials, parents = _runs(out, name)
    assert len(trials) == n and all(r.info.status == "FINISHED" for r in trials)
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in trials) == list(range(n))
    for run in trials:
        for key in ("loss/G", "time/epoch_s", "trial/wall_time_s"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (key, steps)  # no step logged twice
    study = _study(out, name)
    assert len(study.trials) == n and all(t.state.is_finished() for t in study.trials)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def _listening(pid: int) -> set[str]:
    """The addresses a process and its descendants listen on (TCP)."""

    found = set()
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                found |= {
                    c.laddr.ip for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
                }
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return found


def _running(pid: int, started: float) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (not a zombie)."""
    import psutil

    try:
        p = psutil.Process(pid)
        return p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_sigint_then_resume_finishes_without_starting_over(tmp_path, teacher_args, start):
    """A local search (no --address) listens on the loopback interface only; Ctrl-C then --resume."""
    space = write_space(
        tmp_path / "space.yaml", search={"num_trials": 3, "max_concurrent": 1, "scheduler": "none"}
    )
    out = tmp_path / "s"
    cmd = [sys.executable, str(REPO / "tuning" / "search.py"), "--out", str(out), *teacher_args]
    proc = start([*cmd, "--space", str(space)])
    _wait_for(lambda: _finished_trials(out) >= 1)
    addresses = _listening(
        proc.pid
    )  # GCS, raylet, the driver's and the trial's workers, the runtime-env agent
    assert addresses and addresses <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, addresses
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130  # interrupted: not success
    _, before, _ = _runs(out)
    finished_before = {r.info.run_id: r.info.end_time for r in before if r.info.status == "FINISHED"}
    assert 1 <= len(finished_before) < 3
    first_params = _study(out).trials[0].params
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # a new user's shell
    resumed = subprocess.run(
        [sys.executable, str(REPO / "tuning" / "search.py"), "--out", str(out), "--resume"],
        check=True,
        timeout=300,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the local instance keeps Ray's tokens without Ray's WARNING about them on every run
    assert "Token authentication" not in resumed.stderr, resumed.stderr
    _assert_complete_and_unique(out, 3)
    _, after, _ = _runs(out)
    for run in after:
        if run.info.run_id in finished_before:
            assert run.info.end_time == finished_before[run.info.run_id]  # not run again
    assert _study(out).trials[0].params == first_params


def test_kill_9_of_the_driver_then_resume_by_folder_alone(tmp_path, teacher_args, start):
    """A driver killed with SIGKILL leaves no Ray process behind for more than a few seconds; --resume
    with --out only (no --name) finishes the search, counting both sessions."""
    from tuning.processes import descendants

    space = write_space(
        tmp_path / "space.yaml", search={"num_trials": 4, "max_concurrent": 2, "scheduler": "none"}
    )
    out = tmp_path / "s"
    cmd = [sys.executable, str(REPO / "tuning" / "search.py"), "--out", str(out), "--address", "local"]
    proc = start([*cmd, "--space", str(space), "--name", "killed", *teacher_args])
    _wait_for(lambda: _finished_trials(out, "killed") >= 1)
    ray_processes = descendants(proc.pid)  # GCS, raylet, the agents, the trials' workers (and the reaper)
    assert len(ray_processes) >= 3
    proc.kill()  # SIGKILL to the driver alone, as `kill -9 PID` does
    proc.wait(timeout=30)

    _wait_for(lambda: not [p for p, t in ray_processes.items() if _running(p, t)], timeout=15)
    subprocess.run(
        [*cmd, "--resume"], check=True, timeout=400, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    assert sorted(e.name for e in client.search_experiments()) == [
        "Default",
        "killed",
    ]  # the name came from the folder
    _assert_complete_and_unique(out, 4, "killed")
    assert len(json.loads((out / "search.json").read_text())["sessions"]) == 2
    assert "over 2 session(s)" in (out / "best_trials.md").read_text().splitlines()[0]


def test_kill_9_and_resume_under_moasha_reaches_the_uninterrupted_searchs_stops(
    tmp_path, teacher_args, start
):
    """MO-ASHA's rungs rebuilt on --resume decide as the live ones did: a search killed with SIGKILL
    mid-way and resumed stops the same trials at the same epochs as the same search uninterrupted."""
    from tuning.processes import descendants
    from tuning.searcher import STOPPED

    space = write_space(
        tmp_path / "space.yaml",
        base={**TINY_BASE, "stage1.epochs": 1},  # val at epochs 2 (the rung) and 4: both in stage II
        search={
            "num_trials": 5,
            "max_concurrent": 1,  # one order of events, so both searches see the same rungs
            "scheduler": "moasha",
            "sampler": "random",
            "seed": 5,
        },
    )
    cmd = [sys.executable, str(REPO / "tuning" / "search.py"), "--space", str(space), *teacher_args]
    quiet = dict(check=True, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([*cmd, "--out", str(tmp_path / "whole")], **quiet)
    killed = start([*cmd, "--out", str(tmp_path / "killed")])
    _wait_for(lambda: _finished_trials(tmp_path / "killed") >= 3, timeout=400)
    ray_processes = descendants(killed.pid)
    killed.kill()
    killed.wait(timeout=30)
    _wait_for(lambda: not [p for p, t in ray_processes.items() if _running(p, t)], timeout=30)
    resumed = subprocess.run(
        [*cmd[:2], "--out", str(tmp_path / "killed"), "--resume"],
        timeout=600,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def decisions(out: Path) -> list[tuple]:
        return [
            (t.number, t.params, bool(t.user_attrs.get(STOPPED)), t.user_attrs.get("epochs"))
            for t in _study(out).trials
        ]

    whole = decisions(tmp_path / "whole")
    assert any(stopped for _, _, stopped, _ in whole)  # the rule did stop trials: a comparison that can fail
    assert decisions(tmp_path / "killed") == whole
    _assert_complete_and_unique(tmp_path / "killed", 5)


def test_resuming_a_finished_search_runs_nothing_and_keeps_its_figures(tmp_path, cluster, teacher_args):
    from tuning.search import run_search

    out = tmp_path / "s"
    run_search(
        [
            "--space",
            str(write_space(tmp_path / "space.yaml")),
            "--out",
            str(out),
            "--num-trials",
            "2",
            *teacher_args,
        ]
    )
    client, _, parents = _runs(out)
    before = parents[0].data.metrics
    again = run_search(["--out", str(out), "--resume"])
    assert not again["interrupted"] and again["trials_finished"] == 2
    _, trials, parents = _runs(out)
    assert len(trials) == 2
    after = parents[0].data.metrics
    assert after["search/wall_time_s"] == pytest.approx(before["search/wall_time_s"])
    assert after["search/trials_per_hour"] == pytest.approx(before["search/trials_per_hour"])


def test_a_finished_search_extended_with_num_trials_runs_only_the_new_trials(
    tmp_path, cluster, teacher_args, capsys
):
    """--resume --num-trials 6 on a finished 4-trial search: the same study samples trials 4 and 5; 6 Optuna
    trials, 6 child runs, no duplicate, the first four untouched, the front over all six. Flags that would
    change what the search compares are refused with the reason, and nothing is written."""
    from tuning.search import main, run_search

    space = write_space(
        tmp_path / "space.yaml",
        search={
            "num_trials": 4,
            "max_concurrent": 2,
            "scheduler": "asha",
            "grace_period": 2,
            "sampler": "tpe",
            "seed": 3,
        },
    )
    out = tmp_path / "s"
    run_search(["--space", str(space), "--out", str(out), *teacher_args])
    _, before, _ = _runs(out)
    ended = {r.info.run_id: r.info.end_time for r in before}
    summary = run_search(["--out", str(out), "--resume", "--num-trials", "6"])
    assert "resuming with num_trials 4 -> 6" in capsys.readouterr().out
    _assert_complete_and_unique(out, 6)
    client, after, parents = _runs(out)
    assert all(
        r.info.end_time == ended[r.info.run_id] for r in after if r.info.run_id in ended
    )  # not run again
    assert all("pareto_front" in r.data.tags for r in after)  # the front was taken over all six
    assert (
        summary["trials_finished"] == 6
        and "of 6 requested" in (out / "best_trials.md").read_text().splitlines()[0]
    )
    assert "num_trials: 6" in (out / "space.yaml").read_text()  # the next --resume continues from six
    state = (out / "optuna.db").read_bytes()
    for flag in (
        ["--method", "dafl"],
        ["--scheduler", "none"],
        ["--seed", "1"],
        ["--dataset", "cifar10"],
        ["--teacher-robust", teacher_args[3]],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(out), "--resume", *flag])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{flag[0]} cannot change when resuming" in err[0], err
    assert (out / "optuna.db").read_bytes() == state


def test_more_gpus_than_the_cluster_has_is_refused(tmp_path, capsys, cluster, teacher_args):
    from tuning.search import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--space",
                str(write_space(tmp_path / "space.yaml")),
                "--gpus-per-trial",
                "4",
                "--out",
                str(out),
                *teacher_args,
            ]
        )
    assert exc.value.code == 2
    assert "more than any node has (1 GPUs)" in capsys.readouterr().err


@pytest.fixture()
def ray_nodes(tmp_path):
    """Ray nodes started by the real CLI (``tests/ray_nodes.py``), with HOME in the test's folder (the token
    there, never the user's ~/.ray); every node is stopped by its process ids at the end."""
    from ray_nodes import RayNode, cluster_env, generate_token

    home = tmp_path / "home"
    home.mkdir()
    env = cluster_env(home, REPO)
    generate_token(env)
    started: list = []

    def start(name: str, ip: str, head: str | None = None):
        started.append(RayNode(tmp_path, name, env, num_cpus=1, head=head, ip=ip))
        return started[-1].wait_started()

    yield SimpleNamespace(start=start, env=env)
    for node in reversed(started):
        node.stop()


def test_a_lost_node_s_trial_resumes_on_the_surviving_node_and_a_new_node_takes_trials(
    tmp_path, ray_nodes, teacher_args
):
    """A head (``ray start --head``) and a worker node (``ray start --address``), one CPU each, token
    authentication on; the search joins with --address and runs one trial on each. Every process of the
    worker node is killed with SIGKILL after its trial saved an epoch: the trial resumes on the head from
    its own run.pt (the folder both nodes see), each epoch is logged once, the restore is tagged and
    counted. A node that joins afterwards takes trials."""
    from ray_nodes import trial_of

    from tuning.records import SearchFolder, Tag

    head = ray_nodes.start("head", "127.0.0.2")
    node2 = ray_nodes.start("node2", "127.0.0.3", head.address)
    space = write_space(
        tmp_path / "space.yaml",
        search={"num_trials": 4, "max_concurrent": 2, "scheduler": "none"},
        # epochs of about a second on an idle machine (more under load): the kill falls inside a trial
        base={**TINY_BASE, "budget.iters_per_epoch": 120, "eval.every": 4},
    )
    out = tmp_path / "s"
    folder = SearchFolder(out)
    log = tmp_path / "driver.log"
    cmd = [sys.executable, str(REPO / "tuning" / "search.py"), "--space", str(space), "--out", str(out)]
    with log.open("w") as f:
        driver = subprocess.Popen(
            [*cmd, "--address", head.address, "--cpus-per-trial", "1", *teacher_args],
            env=ray_nodes.env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def on_node2() -> int | None:
            for proc in node2.trial_workers():
                number = trial_of(proc, out)
                if number is not None and folder.trial_checkpoint(number).is_file():
                    return number
            return None

        _wait_for(lambda: on_node2() is not None or driver.poll() is not None)
        lost = on_node2()
        assert lost is not None, log.read_text()[-3000:]
        node2_id = node2.node_id()
        time.sleep(0.3)
        assert node2.kill() >= 3  # ray start, its raylet, its agents and the trial's worker
        epoch = torch.load(folder.trial_checkpoint(lost), weights_only=True)["history"][-1]["epoch"]
        assert epoch < 4  # killed mid-trial

        def resumed_on_head() -> bool:
            return any(trial_of(p, out) == lost for p in head.trial_workers())

        _wait_for(lambda: resumed_on_head() or driver.poll() is not None)
        node3 = ray_nodes.start("node3", "127.0.0.4", head.address)
        assert driver.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    text = log.read_text()
    assert f"trial-{lost:04d}: worker lost after epoch " in text and "resumes from its epoch-" in text, text[
        -3000:
    ]
    _assert_complete_and_unique(out, 4)
    client, trials, _ = _runs(out)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in trials}
    assert by_number[lost].data.tags[Tag.RESTORES] == "1"
    assert {r.data.tags.get(Tag.RESTORES, "0") for n, r in by_number.items() if n != lost} == {"0"}
    for run in trials:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss/G")) == [1, 2, 3, 4]
    # Ray's record of the lost trial's reports (Tune's result.json): its first epochs on node2, the rest
    # on the head
    (results,) = [p for p in (out / "tune").rglob("result.json") if f"trial_number={lost}_" in p.parent.name]
    nodes = [json.loads(line)["node_id"] for line in results.read_text().splitlines()]
    head_id = head.node_id()
    assert nodes[0] == node2_id != head_id and nodes[-1] == head_id == by_number[lost].data.tags[Tag.NODE_ID]
    # the node that joined took a trial (one of those started after it joined)
    assert node3.node_id() in {r.data.tags[Tag.NODE_ID] for r in trials}
    assert "1 restored from a checkpoint after a failure" in (out / "best_trials.md").read_text()
