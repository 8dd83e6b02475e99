"""The search with real Ray, Optuna and MLflow in temporary folders (tiny models, tiny budgets)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from fakedata import write_cifar

from conftest import write_space

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
    return client, [r for r in runs if r.data.tags.get("derd.kind") == "trial"], [r for r in runs if r.data.tags.get("derd.kind") == "search"]


def test_tiny_search_logs_one_mlflow_run_per_trial(tmp_path, cluster, teacher_args):
    from tuning.search import run_search

    out = tmp_path / "s"
    summary = run_search(["--space", str(write_space(tmp_path / "space.yaml")), "--out", str(out), *teacher_args])
    client, trials, parents = _runs(out)
    assert len(trials) == 3 and len(parents) == 1 and summary["trials_finished"] == 3
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"val/clean_acc", "val/pgd_acc", "val/aa_acc", "trial/wall_time_s", "trial/device_hours"} <= set(run.data.metrics)
        assert "stage1.lambda_adv" in run.data.params and run.data.params["stage1.epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "loss/G")
        assert sorted(m.step for m in history) == [1, 2, 3, 4]  # per-epoch metrics
    presets = [r for r in trials if r.data.tags["derd.preset"] == "true"]
    assert len(presets) == 1 and float(presets[0].data.params["stage1.lambda_adv"]) == 0.05
    study = optuna.load_study(study_name="derd-digits", storage=f"sqlite:///{out / 'optuna.db'}")
    assert len(study.trials) == 3 and study.trials[0].params == {"stage1.lambda_adv": 0.05, "stage2.lambda_nat": 0.5}
    assert all(t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2 for t in study.trials)
    assert (out / "best_trials.md").read_text().count("| yes |") >= 1


def test_a_diverging_trial_fails_with_its_reason_while_the_search_goes_on(tmp_path, cluster, teacher_args):
    from tuning.search import run_search

    space = write_space(tmp_path / "space.yaml",
                        space={"stage1.lambda_bn": {"distribution": "loguniform", "low": 1e-6, "high": 1e39}},
                        presets=[{"stage1.lambda_bn": 1e38}, {"stage1.lambda_bn": 1e-5}],
                        search={"num_trials": 2, "max_concurrent": 1, "scheduler": "none"})
    out = tmp_path / "s"
    run_search(["--space", str(space), "--out", str(out), "--max-failures", "0", *teacher_args])
    _, trials, _ = _runs(out)
    by_status = {r.info.status: r for r in trials}
    assert set(by_status) == {"FAILED", "FINISHED"}
    assert "became inf" in by_status["FAILED"].data.tags["derd.error"]
    assert float(by_status["FAILED"].data.params["stage1.lambda_bn"]) == 1e38
    study = optuna.load_study(study_name="derd-digits", storage=f"sqlite:///{out / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path, cluster, teacher_args):
    from tuning.search import run_search

    out = tmp_path / "s"
    run_search(["--space", str(write_space(tmp_path / "space.yaml")), "--out", str(out), "--num-trials", "2",
                "--cpus-per-trial", "1", "--max-concurrent", "2", *teacher_args])
    _, trials, _ = _runs(out)
    assert len({r.data.tags["derd.node_id"] for r in trials}) == 2


def test_fractional_gpus_let_two_trials_share_one_gpu(tmp_path, cluster, teacher_args):
    from tuning.search import run_search

    out = tmp_path / "s"
    run_search(["--space", str(write_space(tmp_path / "space.yaml")), "--out", str(out), "--num-trials", "2",
                "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5", "--max-concurrent", "2", *teacher_args])
    _, trials, _ = _runs(out)
    assert [r.data.tags["derd.gpu_ids"] for r in trials] == ["0", "0"]
    (a, b) = sorted((r.info.start_time, r.info.end_time) for r in trials)
    assert b[0] < a[1]  # the second started before the first ended: they ran at the same time
    assert {r.data.tags["derd.device"] for r in trials} == {"cpu"}  # logical GPUs: no CUDA here


def test_interrupted_search_resumes_without_starting_over(tmp_path, teacher_args):
    space = write_space(tmp_path / "space.yaml", search={"num_trials": 3, "max_concurrent": 1, "scheduler": "none"})
    out = tmp_path / "s"
    cmd = [sys.executable, str(REPO / "tuning" / "search.py"), "--out", str(out), "--address", "local", *teacher_args]
    proc = subprocess.Popen([*cmd, "--space", str(space)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "tune").glob("derd_trainable_*"))) < 2:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) in (0, 1)
    _, before, _ = _runs(out)
    finished_before = {r.info.run_id: r.info.end_time for r in before if r.info.status == "FINISHED"}
    assert 1 <= len(finished_before) < 3
    study = optuna.load_study(study_name="derd-digits", storage=f"sqlite:///{out / 'optuna.db'}")
    first_params = study.trials[0].params

    subprocess.run([*cmd, "--resume"], check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client, after, _ = _runs(out)
    assert len(after) == 3 and all(r.info.status == "FINISHED" for r in after)
    for run in after:
        if run.info.run_id in finished_before:
            assert run.info.end_time == finished_before[run.info.run_id]  # not run again
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/G")]
        assert sorted(steps) == [1, 2, 3, 4]  # resumed from its checkpoint, no epoch twice
    study = optuna.load_study(study_name="derd-digits", storage=f"sqlite:///{out / 'optuna.db'}")
    assert len(study.trials) == 3 and study.trials[0].params == first_params


def _expect_exit_2(capsys, argv: list[str], message: str, out: Path) -> None:
    from tuning.search import main

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("field, value, message", [
    ("space", {"stage1.lambda_adv": {"distribution": "loguniform", "low": 1, "high": 2}, "stage9.x": {"distribution": "uniform", "low": 0, "high": 1}}, "space.stage9.x: unknown config key"),
    ("space", {"stage1.lambda_adv": {"distribution": "loguniform", "low": 2, "high": 1}}, "low (2.0) must be below high (1.0)"),
    ("space", {"stage1.lambda_adv": {"distribution": "loguniform", "low": 0, "high": 1}}, "a log range needs low > 0"),
    ("sampler", "tpe", "unknown key 'sampler'"),
])
def test_bad_search_space_is_rejected_before_anything_starts(tmp_path, capsys, field, value, message):
    space = write_space(tmp_path / "space.yaml", **{field: value})
    _expect_exit_2(capsys, ["--space", str(space)], message, tmp_path / "out")


def test_bad_command_lines_give_one_line_and_exit_2(tmp_path, capsys, teacher_args):
    out = tmp_path / "out"
    _expect_exit_2(capsys, ["--dataset", "svhn"], "unknown dataset 'svhn'", out)
    _expect_exit_2(capsys, ["--dataset", "cifar10"], "needs a data root: pass --data-root", out)
    _expect_exit_2(capsys, ["--dataset", "cifar10", "--data-root", str(tmp_path / "nothing")], "cifar10 not found", out)
    write_cifar(tmp_path / "c10", "cifar10")
    _expect_exit_2(capsys, ["--dataset", "cifar10", "--data-root", str(tmp_path / "c10")], "needs teacher checkpoints", out)
    _expect_exit_2(capsys, ["--dataset", "cifar10", "--data-root", str(tmp_path / "c10"), "--teacher-natural", "nat.pt",
                            "--teacher-robust", "rob.pt"], "does not exist", out)
    _expect_exit_2(capsys, ["--address", "127.0.0.1:1", *teacher_args], "no Ray cluster answers at 127.0.0.1:1", out)
    _expect_exit_2(capsys, ["--mlflow-uri", "http://127.0.0.1:1", *teacher_args], "unreachable", out)
    _expect_exit_2(capsys, ["--resume"], "nothing to resume", out)


def test_more_gpus_than_the_cluster_has_is_refused(tmp_path, capsys, cluster, teacher_args):
    _expect_exit_2(capsys, ["--space", str(write_space(tmp_path / "space.yaml")), "--gpus-per-trial", "4", *teacher_args],
                   "more than any node has (1 GPUs)", tmp_path / "out")
