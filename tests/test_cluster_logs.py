"""What a search on a cluster writes and joins: plain progress lines in log files, a restored
trial named as such, and a head started with ``ray start --head`` (token authentication on)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY_BASE, write_space

REPO = Path(__file__).resolve().parent.parent


# ---- progress off a terminal ------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_is_plain_lines_at_a_bounded_rate(monkeypatch):
    """100 steps, one second each, a line at most every 10 s: 10 lines and the last, no carriage return."""
    import derd.progress as progress

    clock = iter(range(10_000))
    monkeypatch.setattr(progress.time, "monotonic", lambda: float(next(clock)))
    log = io.StringIO()
    with progress.progress_bar(total=100, desc="natural cnn on digits", stream=log, every_s=10) as bar:
        for step in range(100):
            bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 2 <= len(lines) <= 11
    assert lines[-1].startswith("natural cnn on digits: 100/100 (") and lines[-1].endswith("loss=0.010")
    assert (
        progress.progress_bar(range(3), stream=_Terminal()).__class__.__name__ == "tqdm"
    )  # a terminal keeps its bar


def test_evaluate_and_teacher_training_write_no_bar_to_a_log():
    """The callers (derd.evaluate, derd.teachers) write at most their last line to a redirected stderr."""
    import torch

    from derd.data import dataset_info, load_split, make_loader
    from derd.evaluate import Protocol, evaluate
    from derd.teachers import train_teacher

    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 10)
    )  # untrained: only its progress counts
    log = io.StringIO()
    with redirect_stderr(log):
        table = evaluate(
            model,
            make_loader(load_split("digits", "val"), 16),
            Protocol("t", ("clean_acc",), None, "fast"),
            eps=0.1,
            progress=True,
        )
        train_teacher(
            dataset_info("digits"), "natural", "digits_cnn_small", epochs=2, batch_size=256, progress=True
        )
    assert 0 <= table["clean_acc"] <= 100
    text = log.getvalue()
    assert "\r" not in text
    lines = (
        text.splitlines()
    )  # the evaluation's batches: no line (erased bar, fast); the teacher: its last line
    assert len(lines) == 1 and "train_acc=" in lines[0]
    assert lines[0].startswith("natural digits_cnn_small on digits: 2/2 (")


# ---- a restored trial --------------------------------------------------------------------------
def _logger(tmp_path):
    from mlflow.tracking import MlflowClient

    from tuning.mlflow_logger import MLflowSearchLogger
    from tuning.records import SearchFolder

    folder = SearchFolder(tmp_path)
    client = MlflowClient(folder.mlflow_uri)
    exp = client.create_experiment("e")
    parent = client.create_run(exp).info.run_id
    return MLflowSearchLogger(
        folder.mlflow_uri, exp, parent, {}, [], cpus_per_trial=1, gpus_per_trial=0, folder=folder
    ), client


def _fake_trial(tmp_path, error: str, checkpoint_epoch: int | None, failures: int):
    """What ``on_trial_recover`` reads of a Ray Tune trial, and the trial's own checkpoint file if it has one."""
    from tuning.records import SAVED_EPOCH, SearchFolder
    from tuning.searcher import TRIAL_NUMBER

    error_file = tmp_path / "error.txt"
    error_file.write_text(f"Failure # {failures} (occurred at now)\n{error}\n")
    own = SearchFolder(tmp_path).trial_checkpoint(15)
    if checkpoint_epoch is None:
        own.unlink(missing_ok=True)
    else:
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_bytes(b"state")
    return SimpleNamespace(
        config={TRIAL_NUMBER: 15},
        trial_id="abc_00015",
        last_result={"epoch": 6, SAVED_EPOCH: checkpoint_epoch or 0},
        max_failures=2,
        num_failures=failures,
        error_file=str(error_file),
        get_error=lambda: "",
    )


def _ours(capsys) -> list[str]:
    """The lines of ours on stderr (MLflow logs its store's creation there too)."""
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("trial-")]


def test_a_restored_trial_is_named_and_counted(tmp_path, capsys):
    """A unit test with fake trials (no worker killed): the line, and the run's restore count."""
    from tuning.records import Tag

    logger, client = _logger(tmp_path)
    died = "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."
    logger.on_trial_recover(0, [], _fake_trial(tmp_path, died, 6, failures=1))
    assert _ours(capsys) == [
        "trial-0015: worker lost after epoch 6; resumes from its epoch-6 checkpoint (retry 1 of 2)"
    ]
    logger.on_trial_recover(
        0, [], _fake_trial(tmp_path, died, 4, failures=1)
    )  # a time cadence: epochs 5, 6 unsaved
    assert _ours(capsys) == [
        "trial-0015: worker lost after epoch 6; resumes from its epoch-4 checkpoint, redoing "
        "epochs 5-6 (retry 1 of 2)"
    ]
    logger.on_trial_recover(
        0, [], _fake_trial(tmp_path, "Traceback ...\nValueError: bad batch", None, failures=2)
    )
    assert _ours(capsys) == [
        "trial-0015: failed (ValueError: bad batch) after epoch 6; restarts from its start "
        "(no checkpoint yet) (retry 2 of 2)"
    ]
    assert client.get_run(logger.run_id(15)).data.tags[Tag.RESTORES] == "3"


# ---- a head started with `ray start --head` ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(home: Path) -> dict[str, str]:
    """This machine's environment with HOME in the test's folder, no Ray address or auth settings of the
    user's, and Ray on the loopback interface (its single-machine mode)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    return {**env, "HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """A Ray head started by the real CLI with Ray's default authentication: ``ray start --head`` turns
    token authentication on when its machine holds a token (any earlier local ``ray.init()`` writes
    ``~/.ray/auth_token``; here ``ray get-auth-token --generate`` does). It binds to loopback, lives in
    the test's folder, and is stopped by its process ids (``ray stop`` would stop every Ray here)."""
    import psutil

    from tuning.processes import terminate

    root = tmp_path_factory.mktemp("head")
    ray_tmp = Path(tempfile.mkdtemp(prefix="derd-ray-"))  # short: Ray's socket paths live under it
    home = root / "home"
    home.mkdir()
    env = _clean_env(home)
    ray_cli = str(Path(sys.executable).parent / "ray")
    subprocess.run(
        [ray_cli, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60
    )
    port = _free_port()
    head = subprocess.Popen(
        [
            ray_cli,
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(ray_tmp),
            "--num-cpus",
            "1",
            "--include-dashboard",
            "false",
            "--dashboard-port",
            str(_free_port()),
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--disable-usage-stats",
        ],
        env=env,
        stdout=(root / "head.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        while "Ray runtime started" not in (root / "head.log").read_text():
            assert head.poll() is None and time.time() < deadline, (root / "head.log").read_text()
            time.sleep(0.5)
        assert "Token authentication is enabled" in (root / "head.log").read_text()
        yield SimpleNamespace(
            address=f"127.0.0.1:{port}", env=env, token=(home / ".ray" / "auth_token").read_text()
        )
    finally:
        procs = [psutil.Process(head.pid)]
        try:
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            pass
        terminate(procs, grace=5)
        shutil.rmtree(ray_tmp, ignore_errors=True)


# The driver: the real search, its trial's worker killed (SIGKILL) once, right after epoch 3 was reported
# (its checkpoint, written at the val epochs 2 and 4 only, then holds epoch 2).
KILLED_ONCE = """
import sys
from tuning.search import run_search
from tuning.trainable import derd_trainable

def trainable(config, **kw):
    import os, signal
    from pathlib import Path
    import ray.tune
    marker, report = Path(kw["out"]) / "worker-killed", ray.tune.report
    def report_then_die(metrics, checkpoint=None):
        report(metrics, checkpoint=checkpoint)
        if metrics["epoch"] == 3 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    ray.tune.report = report_then_die
    derd_trainable(config, **kw)

summary = run_search(sys.argv[1:], trainable=trainable)
print("restored", summary["trials_restored"], "failed", summary["trials_failed"])
"""


def test_a_search_joins_a_token_head_and_names_a_restored_trial(tmp_path, token_head, teacher_args):
    """``--address HOST:PORT`` of a head that requires its token: the search picks the token up from
    ~/.ray/auth_token (RAY_AUTH_MODE unset) and runs. The trial writes its checkpoint by a time cadence
    (``train.checkpoint_every_s``: at the val epochs and the end here, not every epoch), and its worker is
    killed after epoch 3: it is named by one line, resumed from its epoch-2 checkpoint, redoes epoch 3
    bit for bit, is logged once per epoch and counted as restored."""
    import torch
    from mlflow.tracking import MlflowClient

    from tuning.records import SearchFolder, Tag

    space = write_space(
        tmp_path / "space.yaml",
        search={"num_trials": 1, "max_concurrent": 1, "scheduler": "none"},
        base={**TINY_BASE, "train.checkpoint_every_s": 3600},
    )
    out = tmp_path / "s"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_ONCE,
            "--space",
            str(space),
            "--out",
            str(out),
            "--address",
            token_head.address,
            "--cpus-per-trial",
            "1",
            *teacher_args,
        ],
        env=token_head.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "worker-killed").is_file() and "restored 1 failed 0" in done.stdout
    assert "\r" not in done.stderr  # the driver's log, trials' lines included, holds no progress-bar runs
    assert (
        done.stderr.count(
            "trial-0000: worker lost after epoch 3; resumes from its epoch-2 checkpoint, redoing "
            "epoch 3 (retry 1 of 2)\n"
        )
        == 1
    ), done.stderr[-3000:]
    client = MlflowClient(SearchFolder(out).mlflow_uri)
    (run,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("derd-digits").experiment_id])
        if r.data.tags.get(Tag.KIND) == "trial"
    ]
    assert run.info.status == "FINISHED" and run.data.tags[Tag.RESTORES] == "1"
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss/G")}
    assert sorted(logged) == [1, 2, 3, 4]  # epoch 3 logged once: from the killed worker, the redo skipped
    redone = torch.load(SearchFolder(out).trial_checkpoint(0), weights_only=True)["history"][2]
    assert redone["epoch"] == 3 and redone["loss/G"] == logged[3]  # the redo repeated the lost epoch exactly
    assert "1 restored from a checkpoint after a failure" in (out / "best_trials.md").read_text()


def test_a_wrong_or_missing_token_is_one_line_and_exit_2_before_anything_is_written(
    tmp_path, token_head, teacher_args
):
    """The preflight asks the head itself: no 20 s of retries, no traceback, no folder."""
    cases = {
        "rejects this machine's token ($RAY_AUTH_TOKEN)": {
            **token_head.env,
            "RAY_AUTH_TOKEN": "not-the-token",
        },
        "requires a token (its token authentication is on) and this machine has none": {
            **token_head.env,
            "HOME": str(tmp_path),
        },
    }
    for expected, env in cases.items():
        out = tmp_path / "s"
        done = subprocess.run(
            [
                sys.executable,
                str(REPO / "tuning" / "search.py"),
                "--out",
                str(out),
                "--address",
                token_head.address,
                *teacher_args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert re.match(
            rf"error: the Ray cluster at {re.escape(token_head.address)} {re.escape(expected)}; copy the "
            r"head's ~/.ray/auth_token .* or set RAY_AUTH_TOKEN to it$",
            lines[0],
        ), lines[0]
        assert not out.exists()
