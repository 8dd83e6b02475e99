"""MLflow records written from the Ray driver: one parent run per search, one child per trial.

Only the driver talks to the tracking store, so concurrent trials never contend for it
(SQLite included). A child run is named by the trial's Optuna number (``trial-0007``,
tag ``optuna.trial_number``; the Optuna trial holds the run id as user attribute
``mlflow_run_id``), so a resumed search finds it again. It carries the trial's config under
the dotted keys its method reads as params, per-epoch metrics (``loss/*``, ``sga/*``,
``kd/*``, ``time/*``, and ``val/*`` when evaluated, each epoch once even across a
resume), the final ``val/*`` columns with the number of val images scored (``val/n_images``), compute time and
device-hours, and ends FINISHED or FAILED (with the reason). Tags: ``derd.method``, the protocol
of its val scores (``derd.protocol``, ``derd.eps``, ``derd.attacks``, ``derd.max_images``),
``derd.preset``, ``derd.stopped_early``, ``derd.feasible``, ``derd.budget`` (full|partial), and ``derd.restores``
(how often Tune restored the trial from its checkpoint after a failure; absent if never).

Epochs are written behind: buffered, then one ``log_batch`` per trial once its oldest buffered
epoch is ``flush_s`` seconds old (30; each trial on its own clock, so the writes spread over
the reports), at the trial's end and at the search's end. MLflow's SQL store pays about 20 ms
per call on this project's 2-core machine, and a cluster's driver sees a report per GPU
every 10 s (``benchmarks/bench_scale.py``). A driver killed with epochs in its buffer loses
none: the resumed search's logger starts from what MLflow holds, and takes the missing epochs
from the trial's checkpoint or from the trial that redoes them (``log_epoch``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

from derd.config import apply_overrides, from_dict, to_flat
from derd.methods import logged_prefixes, uses_key
from derd.validation import val_protocol
from tuning.records import (
    EPOCH_TIME,
    SAVED_EPOCH,
    TRIAL_CACHED_EPOCHS,
    TRIAL_DEVICE_HOURS,
    TRIAL_EPOCHS,
    TRIAL_WALL,
    SearchFolder,
    Tag,
    protocol_tags,
)
from tuning.searcher import TRIAL_NUMBER
from tuning.store import SEARCH_PAGE, runs_tagged

FLUSH_S = 30.0  # seconds between writes of the buffered epochs
MLFLOW_BATCH = 1000  # MLflow's most metrics per log_batch


def _param_value(value: Any) -> str:
    return "None" if value is None else str(value)


def trial_run_name(number: int) -> str:
    return f"trial-{number:04d}"


class MLflowSearchLogger(Callback):
    """A Tune callback that mirrors trials into MLflow child runs of the search's parent run."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        base_config: dict[str, Any],
        presets: list[dict[str, Any]],
        cpus_per_trial: float,
        gpus_per_trial: float,
        folder: SearchFolder,
        searcher=None,
        stopped_early: set[int] | None = None,
        scheduler: str = "asha",
        flush_s: float = FLUSH_S,
        clock: Callable[[], float] = time.monotonic,
        stop_reasons: dict[int, str] | None = None,
    ) -> None:
        from tuning.scheduler import scheduler_name

        self.scheduler_name = scheduler_name(scheduler)
        self.tracking_uri = tracking_uri
        self.folder = folder
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.base_config = base_config
        self.presets = presets
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self.searcher = searcher
        self.stopped_early = stopped_early if stopped_early is not None else set()
        # the scheduler's (shared, filled as it stops trials): what it decided each stop on
        self.stop_reasons: dict[int, str] = stop_reasons if stop_reasons is not None else {}
        self._client = None
        self._runs: dict[int, str] = {}
        self._earlier_runs: dict[int, Any] | None = None
        self._logged_epoch: dict[int, int] = {}  # the last epoch of each trial written or buffered
        self._pending: dict[str, list] = {}  # run id -> metrics buffered, not yet written
        self._since: dict[str, float] = {}  # run id -> when its oldest buffered epoch arrived
        self.flush_s, self.clock = flush_s, clock  # clock: a benchmark's simulated time
        self._prefixes = logged_prefixes()  # every registered method's metrics

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment state
        return {
            **self.__dict__,
            "_client": None,
            "_runs": {},
            "_earlier_runs": None,
            "_logged_epoch": {},
            "_pending": {},
            "_since": {},
            "searcher": None,
        }

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_id(self, number: int, config: dict[str, Any] | None = None, ray_trial_id: str = "") -> str:
        """The trial's run: found by its number (created from ``config`` on first sight)."""
        if number in self._runs:
            return self._runs[number]
        found = self.earlier_run(number)
        if found:
            run_id = found.info.run_id
            history = self.client.get_metric_history(run_id, EPOCH_TIME)
            self._logged_epoch[number] = max((m.step for m in history), default=0)
        else:
            run_id = self._create_run(number, config or {}, ray_trial_id)
            self._logged_epoch[number] = 0
        self._runs[number] = run_id
        return run_id

    def earlier_run(self, number: int):
        """The trial's run, if an earlier session of this search created it (else None). The trial runs
        are read once, so a trial start makes no search of the store (one per start grew with it); a
        search of more trials than one MLflow page asks for the rest one by one."""
        if self._earlier_runs is None:
            tags = {Tag.PARENT: self.parent_run_id, Tag.KIND: "trial"}
            runs = runs_tagged(self.client, [self.experiment_id], tags)
            self._earlier_runs = {
                int(r.data.tags[Tag.TRIAL_NUMBER]): r for r in reversed(runs)
            }  # newest wins
        found = self._earlier_runs.get(number)
        if found is None and len(self._earlier_runs) >= SEARCH_PAGE:
            tags = {Tag.TRIAL_NUMBER: str(number), Tag.PARENT: self.parent_run_id}
            found = next(iter(runs_tagged(self.client, [self.experiment_id], tags, max_results=1)), None)
        return found

    def _create_run(self, number: int, config: dict[str, Any], ray_trial_id: str) -> str:
        from mlflow.entities import Param, RunTag

        sampled = {k: v for k, v in config.items() if k != TRIAL_NUMBER}
        cfg = apply_overrides(from_dict(self.base_config), sampled)
        protocol = val_protocol(cfg)
        run = self.client.create_run(
            self.experiment_id,
            run_name=trial_run_name(number),
            tags={
                Tag.PARENT: self.parent_run_id,
                Tag.TRIAL_NUMBER: str(number),
                Tag.TRIAL_ID: trial_run_name(number),
                Tag.KIND: "trial",
                Tag.METHOD: cfg.method,
                Tag.RAY_TRIAL_ID: ray_trial_id,
                **protocol_tags(protocol),
            },
        )  # what its val/* scores were measured under
        params = [
            Param(k, _param_value(v))
            for k, v in to_flat(cfg).items()
            if k != "origin"
            and uses_key(cfg.method, k)
            and (cfg.eval.validation == "synthetic" or not k.startswith("synthetic_val."))
        ]  # only what it read
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        self.client.log_batch(
            run.info.run_id,
            tags=[
                RunTag(Tag.SEARCHED_KEYS, ",".join(sorted(sampled))),
                RunTag(Tag.PRESET, str(sampled in self.presets).lower()),
            ],
        )
        if self.searcher is not None:
            self.searcher.set_user_attr(number, "mlflow_run_id", run.info.run_id)
        return run.info.run_id

    # ---- what Tune reports ---------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.run_id(trial.config[TRIAL_NUMBER], trial.config, trial.trial_id)

    def on_trial_result(
        self, iteration: int, trials: list, trial, result: dict[str, Any], **info: Any
    ) -> None:
        self.log_epoch(trial.config[TRIAL_NUMBER], result, trial.config)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        result = trial.last_result or {}
        number = trial.config[TRIAL_NUMBER]
        stopped_early = int(result.get("epoch", 0)) < int(result.get("total_epochs", 0))
        if stopped_early and number not in self.stopped_early:
            return  # interrupted with the driver: the resumed search finishes it
        self.finish(number, result, trial.config)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.fail(trial.config[TRIAL_NUMBER], _error_line(trial), trial.last_result or {}, trial.config)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        """A failed trial Tune retries (``FailureConfig``): Ray's own lines read as a failure (an error
        count, a guess at the OOM killer), so one line of ours says what happens, and the trial's run
        counts its restores (tag ``derd.restores``, read by the summary)."""
        number = trial.config[TRIAL_NUMBER]
        run_id = self.run_id(number, trial.config, trial.trial_id)
        restores = int(self.client.get_run(run_id).data.tags.get(Tag.RESTORES, "0")) + 1
        self.client.set_tag(run_id, Tag.RESTORES, str(restores))
        print(self.recover_line(number, trial), file=sys.stderr, flush=True)

    def recover_line(self, number: int, trial) -> str:
        """``trial-0015: worker lost after epoch 6; resumes from its epoch-6 checkpoint (retry 1 of 2)``:
        what failed, the last epoch reported, what the retry starts from (the trial's own file, at the
        epoch its last report named: ``checkpoint/epoch``) and the retries used."""
        epoch = int((trial.last_result or {}).get("epoch", 0))
        saved = int((trial.last_result or {}).get(SAVED_EPOCH, 0))
        if saved and self.folder.trial_checkpoint(number).is_file():
            redo = (
                ""
                if saved >= epoch
                else f", redoing epoch {epoch}"
                if saved + 1 == epoch
                else f", redoing epochs {saved + 1}-{epoch}"
            )
            start = f"resumes from its epoch-{saved} checkpoint{redo}"
        else:
            start = "restarts from its start (no checkpoint yet)"
        limit = "unlimited" if trial.max_failures < 0 else str(trial.max_failures)
        when = f"after epoch {epoch}" if epoch else "before its first epoch ended"
        return (
            f"{trial_run_name(number)}: {_failure_kind(trial)} {when}; {start} "
            f"(retry {trial.num_failures} of {limit})"
        )

    # ---- the records ------------------------------------------------------------------------
    def log_epoch(self, number: int, result: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        """One epoch's metrics, once: epochs logged before a resume are skipped, and epochs the trial
        reported while no driver logged them (killed between the report and the write) are taken
        from the trial's checkpoint first, so that MLflow holds every epoch exactly once."""
        run_id = self.run_id(number, config)
        step = int(result.get("epoch", 0))
        if step <= self._logged_epoch[number]:
            return
        if step > self._logged_epoch[number] + 1:
            for entry in self._checkpoint_history(number):
                if self._logged_epoch[number] < entry["epoch"] < step:
                    self._write_epoch(run_id, number, entry)
        self._write_epoch(run_id, number, result)

    def _checkpoint_history(self, number: int) -> list[dict[str, Any]]:
        from tuning.trainable import checkpoint_state

        state = checkpoint_state(self.folder.trial_checkpoint(number))
        return list(state["history"]) if state is not None else []

    def _write_epoch(self, run_id: str, number: int, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = int(result["epoch"])
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, step)
            for k, v in result.items()
            if k.startswith(self._prefixes) and isinstance(v, (int, float))
        ]
        if result.get(
            "val_evaluated", any(k.startswith("val/") for k in result)
        ):  # history entries: val/* iff evaluated
            metrics += [Metric(k, float(v), now, step) for k, v in result.items() if k.startswith("val/")]
        if metrics:
            self._pending.setdefault(run_id, []).extend(metrics)
            self._since.setdefault(run_id, self.clock())
        self._logged_epoch[number] = step
        if run_id in self._since and self.clock() - self._since[run_id] >= self.flush_s:
            self.flush(run_id)  # each trial on its own clock: the writes spread over the reports

    def flush(self, run_id: str | None = None) -> None:
        """Write the buffered epochs of one run (or of all): one call per run."""
        for rid in [run_id] if run_id is not None else list(self._pending):
            metrics = self._pending.pop(rid, [])
            self._since.pop(rid, None)
            for i in range(0, len(metrics), MLFLOW_BATCH):
                self.client.log_batch(rid, metrics=metrics[i : i + MLFLOW_BATCH])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()

    def finish(self, number: int, result: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        """Close the trial's run FINISHED with its totals and tags (once)."""
        from mlflow.entities import Metric, RunTag

        run_id = self.run_id(number, config)
        self.flush(run_id)
        run = self.client.get_run(run_id)
        if run.info.status == "FINISHED":
            return  # recorded by an earlier session
        step = int(result.get("epoch", 0))
        total = int(result.get("total_epochs", step))
        stopped_early = step < total
        now = int(time.time() * 1000)
        compute = float(result.get("trial/compute_s", 0.0))
        units = self.gpus_per_trial if self.gpus_per_trial > 0 else self.cpus_per_trial
        metrics = (
            []
            if TRIAL_WALL in run.data.metrics
            else [  # logged already by a driver killed before closing the run
                Metric(TRIAL_WALL, compute, now, step),
                Metric(TRIAL_DEVICE_HOURS, compute / 3600 * units, now, step),
                Metric(TRIAL_EPOCHS, float(step), now, step),
                Metric(TRIAL_CACHED_EPOCHS, float(result.get(TRIAL_CACHED_EPOCHS, 0)), now, step),
            ]
        )
        tags = [
            RunTag(Tag.STOPPED_EARLY, str(stopped_early).lower()),
            RunTag(Tag.BUDGET, "partial" if stopped_early else "full"),
            RunTag(Tag.FEASIBLE, str(bool(result.get("search/feasible", False))).lower()),
            RunTag(Tag.DEVICE, str(result.get("device", ""))),
            RunTag(Tag.NODE_ID, str(result.get("node_id", ""))),
            RunTag(Tag.GPU_IDS, str(result.get("gpu_ids", ""))),
            RunTag(Tag.DEVICE_UNIT, "gpu" if self.gpus_per_trial > 0 else "cpu-core"),
        ]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(run_id, "FINISHED")
        if stopped_early:
            why = self.stop_reasons.get(number) or f"score {result.get('search/score', float('nan')):.2f}"
            print(
                f"{trial_run_name(number)}: stopped early by {self.scheduler_name} at epoch {step} of {total} "
                f"({why})",
                file=sys.stderr,
                flush=True,
            )

    def fail(
        self, number: int, reason: str, result: dict[str, Any], config: dict[str, Any] | None = None
    ) -> None:
        run_id = self.run_id(number, config)
        self.flush(run_id)
        self.client.set_tag(run_id, Tag.ERROR, reason[:5000])
        if "trial/compute_s" in result and TRIAL_WALL not in self.client.get_run(run_id).data.metrics:
            self.client.log_metric(run_id, TRIAL_WALL, float(result["trial/compute_s"]))
        self.client.set_terminated(run_id, "FAILED")

    def reconcile(self, study, objectives: list[tuple[str, str]], clean_threshold: float) -> int:
        """Close runs a killed driver left open although Optuna recorded their end (the driver
        died between telling Optuna and writing MLflow): epochs from the trial's checkpoint,
        totals, state. Returns how many runs were closed."""
        from optuna.trial import TrialState

        from tuning.trainable import history_result

        closed = 0
        for t in study.trials:
            if t.state == TrialState.RUNNING or t.state == TrialState.WAITING:
                continue
            found = self.earlier_run(t.number)
            if not found or found.info.status != "RUNNING":
                continue
            if t.state == TrialState.FAIL:
                self.fail(t.number, "trial failed (recorded by Optuna; the driver stopped before MLflow)", {})
            else:
                results = history_result(self.folder.trial_checkpoint(t.number), objectives, clean_threshold)
                if not results:
                    self.fail(
                        t.number,
                        "finished, but its checkpoint is missing or unreadable: epochs not recorded",
                        {},
                    )
                    closed += 1
                    continue
                for result in results:
                    self.log_epoch(t.number, result)
                self.finish(t.number, results[-1])
            closed += 1
        return closed


def _error_text(trial) -> str:
    """A failed trial's error file: each failure's text after a ``Failure # N`` line, the latest last."""
    try:  # the driver writes the local error file first; storage gets its copy later
        if trial.error_file and Path(trial.error_file).is_file():
            return Path(trial.error_file).read_text()
        return str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - best effort: the error may live on another node's disk
        return ""


# what Ray writes when a trial's process died (killed, lost with its node), not when its code raised
WORKER_LOST = (
    "ActorDiedError",
    "RayActorError",
    "ActorUnavailableError",
    "The actor died",
    "worker process has died",
    "is unavailable",  # its node lost: the worker's connection reset (ActorUnavailableError's message alone)
    "NodeDiedError",
)


def _failure_kind(trial) -> str:
    """``worker lost`` when the trial's latest failure is its process dying, else ``failed (<error line>)``."""
    latest = _error_text(trial).rsplit("Failure # ", 1)[-1]
    if any(mark in latest for mark in WORKER_LOST):
        return "worker lost"
    return f"failed ({_error_line(trial, latest)})"


def _error_line(trial, text: str | None = None) -> str:
    """The most telling line of a failed trial's traceback (the exception message)."""
    text = _error_text(trial) if text is None else text
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln or "Diverged" in ln:
            return ln
    return lines[-1] if lines else "trial failed (no error text available)"
