"""MLflow records written from the Ray driver: one parent run per search, one child per trial.

Only the driver talks to the tracking store, so concurrent trials never contend for it
(SQLite included). Child runs carry the trial's full config under the dotted keys as
params, per-epoch metrics (``loss/*``, ``sga/*``, and ``val/*`` when evaluated), the final
``val/*`` columns, wall time and device-hours, and end FINISHED or FAILED (with the reason).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from derd.config import to_flat

TRIAL_TAG = "derd.trial_id"
PARENT_TAG = "mlflow.parentRunId"
LOGGED_PREFIXES = ("loss/", "sga/", "time/")


def _param_value(value: Any) -> str:
    return "None" if value is None else str(value)


class MLflowSearchLogger(Callback):
    """A Tune callback that mirrors trials into MLflow child runs of the search's parent run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, base_config: dict[str, Any],
                 presets: list[dict[str, Any]], cpus_per_trial: float, gpus_per_trial: float) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.base_config = base_config
        self.presets = presets
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self._client = None
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment state
        state = dict(self.__dict__)
        state["_client"] = None
        state["_runs"] = {}
        return state

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _run_id(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self.client.search_runs([self.experiment_id], f"tags.`{TRIAL_TAG}` = '{trial.trial_id}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            run_id = self._create_run(trial)
        self._runs[trial.trial_id] = run_id
        return run_id

    def _create_run(self, trial) -> str:
        from mlflow.entities import Param, RunTag

        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.trial_id}",
                                     tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id, "derd.kind": "trial"})
        flat = to_flat(self._trial_config(trial.config))
        params = [Param(k, _param_value(v)) for k, v in flat.items() if k != "origin"]
        searched = ",".join(sorted(trial.config))
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        self.client.log_batch(run.info.run_id, tags=[RunTag("derd.searched_keys", searched),
                                                      RunTag("derd.preset", str(trial.config in self.presets).lower())])
        return run.info.run_id

    def _trial_config(self, sampled: dict[str, Any]):
        from derd.config import apply_overrides, from_dict

        return apply_overrides(from_dict(self.base_config), sampled)

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info: Any) -> None:
        from mlflow.entities import Metric

        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if k.startswith(LOGGED_PREFIXES) and isinstance(v, (int, float))]
        if result.get("val_evaluated"):
            metrics += [Metric(k, float(v), now, step) for k, v in result.items() if k.startswith("val/")]
        if metrics:
            self.client.log_batch(self._run_id(trial), metrics=metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        from mlflow.entities import Metric, RunTag

        result = trial.last_result or {}
        run_id = self._run_id(trial)
        now = int(time.time() * 1000)
        step = int(result.get("epoch", 0))
        wall = float(result.get("time_total_s", 0.0))
        units = self.gpus_per_trial if self.gpus_per_trial > 0 else self.cpus_per_trial
        metrics = [Metric("trial/wall_time_s", wall, now, step), Metric("trial/device_hours", wall / 3600 * units, now, step),
                    Metric("trial/epochs", float(step), now, step)]
        stopped_early = step < int(result.get("total_epochs", step))
        tags = [RunTag("derd.stopped_early", str(stopped_early).lower()),
                RunTag("derd.device", str(result.get("device", ""))),
                RunTag("derd.node_id", str(result.get("node_id", ""))),
                RunTag("derd.gpu_ids", str(result.get("gpu_ids", ""))),
                RunTag("derd.device_unit", "gpu" if self.gpus_per_trial > 0 else "cpu-core")]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        run_id = self._run_id(trial)
        reason = _error_line(trial)
        self.client.set_tag(run_id, "derd.error", reason[:5000])
        result = trial.last_result or {}
        if "time_total_s" in result:
            self.client.log_metric(run_id, "trial/wall_time_s", float(result["time_total_s"]))
        self.client.set_terminated(run_id, "FAILED")


def _error_line(trial) -> str:
    """The most telling line of a failed trial's traceback (the exception message)."""
    text = ""
    try:  # the driver writes the local error file first; storage gets its copy later
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text()
        else:
            text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - best effort: the error may live on another node's disk
        text = ""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln or "Diverged" in ln:
            return ln
    return lines[-1] if lines else "trial failed (no error text available)"
