"""The search driver at cluster scale: hundreds of concurrent trials' reports through the driver's
own code, timed (prints a table, asserts nothing).

    python benchmarks/bench_scale.py [--concurrent 8 64 256 512] [--epoch-s 10.3]

Every report of every trial passes through one process, the driver. This benchmark measures
the part of it this project adds around Ray Tune's controller, with the real objects a search
builds (``tuning.fit``), on the real on-disk stores of a search folder:

* the ``StudySearcher`` over the search's SQLite ``optuna.db`` (the paper's presets enqueued);
* the scheduler ``make_scheduler`` builds (the default: MO-ASHA, resumable);
* the ``MLflowSearchLogger`` on the search's SQLite ``mlflow.db`` and the ``SessionClock``;
* at the end, ``finish_search`` (the front, ``best_trials.md``, the search's figures).

Calls arrive in the order Tune makes them (scheduler, then searcher and callbacks; at a stop or
the last epoch, the completions), one report per trial per epoch, round-robin over the
concurrent trials. Each trial's epochs are those a digits trial of its configuration ran in the
tabulated benchmark (``tuning.tabular``; the same metric keys a real trial reports), so the
schedulers decide as they would. No trial trains and no Ray worker starts: on 2 cores,
hundreds of Ray actor processes (about 100 MB each) would not fit, and they are Ray's cost,
not ours. Ray Tune's own controller (its event loop, trial table and experiment-state
snapshots) is therefore not in these figures.

Printed per concurrency N (N trials at once, 2N in all): the driver's service time per report
(p50, p99, max; a trial's last report with its completion counted apart, as "trial end"), per
trial start (the sampler's suggestion and the trial's MLflow run), the reports per second it
sustains (reports over its whole busy time, starts included: beyond that rate the backlog grows), the rate a cluster of N GPUs would ask for at one report per
``--epoch-s`` (10.3 s: an H200 compiled CIFAR stage-II epoch of 50 x 512 images at 2,483 img/s),
the driver's CPU seconds and peak memory, the stores' sizes and SQL writes, and the summary's
time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ray.tune.schedulers import TrialScheduler  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from derd.config import apply_overrides, to_dict  # noqa: E402
from derd.methods import total_epochs  # noqa: E402
from tuning.mlflow_logger import MLflowSearchLogger  # noqa: E402
from tuning.records import SearchFolder  # noqa: E402
from tuning.scheduler import make_scheduler  # noqa: E402
from tuning.searcher import TRIAL_NUMBER, StudySearcher, enqueue_presets, open_study  # noqa: E402
from tuning.session import SessionClock  # noqa: E402
from tuning.space import SearchSpace, default_space_path  # noqa: E402
from tuning.sqlite_wal import write_ahead_in  # noqa: E402
from tuning.summary import finish_search  # noqa: E402
from tuning.tabular import TableAnswers, epoch_results, read_rows  # noqa: E402
from tuning.trainable import Reports  # noqa: E402

WRITES = {"count": 0}


@event.listens_for(Engine, "before_cursor_execute")
def _count_writes(conn, cursor, statement: str, *args: Any) -> None:
    if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
        WRITES["count"] += 1


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank below) of ``values``."""
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))]


def drive(n: int, root: Path, epoch_s: float) -> dict[str, float]:
    """2n trials, n at a time, through the driver's objects; returns the figures. Simulated time
    advances ``epoch_s`` per sweep over the running trials (one report each): the logger's write
    interval counts in it, as it would on a cluster."""
    rows = read_rows()
    threshold = rows[0]["clean_threshold"]  # the val clean floor the table's searches used
    space = SearchSpace.from_yaml(default_space_path("digits"))
    space.num_trials, space.max_concurrent = 2 * n, n
    base = to_dict(space.base_config())
    folder = SearchFolder(root)
    root.mkdir(parents=True, exist_ok=True)
    write_ahead_in(root)  # as tuning.fit.run_plan does for a search's folder
    from mlflow.tracking import MlflowClient

    client = MlflowClient(folder.mlflow_uri)
    exp = client.create_experiment("scale", artifact_location=folder.artifacts.as_uri())
    parent = client.create_run(exp).info.run_id
    study = open_study(space, folder.optuna_uri, "scale")
    enqueue_presets(study, space)
    scheduler = make_scheduler(space, study, threshold)
    stopped = getattr(scheduler, "stopped_early", set())
    sim = [0.0]  # simulated seconds
    searcher = StudySearcher(space, folder.optuna_uri, "scale", threshold, stopped)
    logger = MLflowSearchLogger(
        folder.mlflow_uri,
        exp,
        parent,
        base,
        space.presets,
        1,
        1,
        folder,
        searcher=searcher,
        stopped_early=stopped,
        scheduler=space.scheduler,
        clock=lambda: sim[0],
    )
    record = {"name": "scale", "dataset": space.dataset, "sessions": []}
    clock = SessionClock(folder.record, record)
    answers = TableAnswers(rows, space)
    latencies: dict[str, list[float]] = {"report": [], "start": [], "end": []}
    live: dict[str, SimpleNamespace] = {}
    started = 0
    WRITES["count"] = 0
    cpu0 = time.process_time()

    def start() -> None:
        nonlocal started
        trial_id = f"t{started:05d}"
        t0 = time.perf_counter()
        config = searcher.suggest(trial_id)
        trial = SimpleNamespace(config=config, trial_id=trial_id, last_result=None)
        logger.on_trial_start(0, [], trial)
        latencies["start"].append(time.perf_counter() - t0)
        keys = {k: v for k, v in config.items() if k != TRIAL_NUMBER}
        trial.results = epoch_results(answers.row_for(keys))
        trial.reports = Reports(
            space.objectives, threshold, total_epochs(apply_overrides(space.base_config(), keys))
        )
        trial.history = []
        live[trial_id] = trial
        started += 1

    while len(live) < n and started < space.num_trials:
        start()
    while live:
        sim[0] += epoch_s
        for trial_id in list(live):
            trial = live[trial_id]
            result = trial.results[len(trial.history)]
            trial.history.append(result)
            metrics = {**trial.reports.next(result, trial.history), "wall_clock": time.time()}
            last = len(trial.history) == len(trial.results)
            t0 = time.perf_counter()
            kind = "report"
            decision = scheduler.on_trial_result(None, trial, metrics)
            if decision != TrialScheduler.STOP:
                searcher.on_trial_result(trial_id, metrics)
            logger.on_trial_result(0, [], trial, metrics)
            clock.on_trial_result(0, [], trial, metrics)
            trial.last_result = metrics
            if decision == TrialScheduler.STOP or last:
                kind = "end"  # the trial's last report and its completion
                scheduler.on_trial_complete(None, trial, metrics)
                searcher.on_trial_complete(trial_id, result=metrics)
                logger.on_trial_complete(0, [], trial)
                del live[trial_id]
            latencies[kind].append(time.perf_counter() - t0)
            if trial_id not in live and started < space.num_trials:
                start()
    clock.close()
    reports_cpu = time.process_time() - cpu0
    writes = WRITES["count"]
    t0 = time.perf_counter()
    plan = SimpleNamespace(space=space, folder=folder, out=root, name="scale", tracking_uri=folder.mlflow_uri)
    finish_search(client, exp, parent, plan, record, interrupted=False)
    summary_s = time.perf_counter() - t0
    reports = sorted(latencies["report"])
    busy = sum(sum(v) for v in latencies.values())
    events = sum(len(v) for v in latencies.values())
    return {
        "n": n,
        "reports": events - len(latencies["start"]),
        "p50_ms": 1e3 * statistics.median(reports),
        "p99_ms": 1e3 * p99(reports),
        "max_ms": 1e3 * reports[-1],
        "start_ms": 1e3 * statistics.mean(latencies["start"]),
        "start_p99_ms": 1e3 * p99(latencies["start"]),
        "end_ms": 1e3 * statistics.mean(latencies["end"]),
        "sustained": (events - len(latencies["start"])) / busy,
        "cpu_s": reports_cpu,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "optuna_mb": folder.optuna_db.stat().st_size / 1e6,
        "mlflow_mb": folder.mlflow_db.stat().st_size / 1e6,
        "writes_per_report": writes / (events - len(latencies["start"])),
        "summary_s": summary_s,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrent", type=int, nargs="+", default=[8, 64, 256, 512])
    p.add_argument("--epoch-s", type=float, default=10.3, help="seconds between a GPU trial's reports")
    args = p.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPU cores; stores: SQLite on local disk")
    print(
        "| concurrent trials | reports | report p50 ms | p99 ms | max ms | trial start ms (mean) | start p99 ms | trial end ms "
        f"(mean) | sustained reports/s | needed at {args.epoch_s:g} s/epoch | driver CPU s | peak RSS MB | "
        "optuna.db MB | mlflow.db MB | SQL writes/report | summary s |"
    )
    print("|" + "---|" * 16)
    for n in args.concurrent:
        with tempfile.TemporaryDirectory() as tmp:
            f = drive(n, Path(tmp) / "search", args.epoch_s)
        print(
            f"| {n} | {f['reports']} | {f['p50_ms']:.2f} | {f['p99_ms']:.1f} | {f['max_ms']:.0f} | "
            f"{f['start_ms']:.0f} | {f['start_p99_ms']:.0f} | {f['end_ms']:.0f} | {f['sustained']:.0f} | {n / args.epoch_s:.1f} | "
            f"{f['cpu_s']:.0f} | {f['rss_mb']:.0f} | {f['optuna_mb']:.1f} | {f['mlflow_mb']:.1f} | "
            f"{f['writes_per_report']:.1f} | {f['summary_s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
