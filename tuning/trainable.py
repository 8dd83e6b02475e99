"""The Ray Tune trainable: one trial is one run of the sampled method, reported every epoch.

The teachers arrive through Ray's object store (``tune.with_parameters``), once for all
trials. The whole run state is written to ``<out>/trials/<number>/run.pt``
(``tuning.records.SearchFolder``; the trial's identity is its Optuna trial number,
``tuning.searcher.TRIAL_NUMBER``) at the cadence of ``derd.cadence`` (every epoch on the
CPU; on a GPU at each val epoch, at the end, and at least every 5 minutes). That one file
is the only copy: a trial survives a worker failure (``FailureConfig``: the retry reads it)
and a driver restart (``--resume``) from it, and Tune is handed no checkpoint, which it
would copy into its storage path once more per report. Each report says which epoch the
file holds (``checkpoint/epoch``). The stage-I cache lives in the search's folder, shared
by all trials.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from derd.cadence import CheckpointCadence, checkpoint_every_s
from derd.config import apply_overrides, from_dict
from derd.errors import UserError
from derd.evaluate import VAL_CLEAN
from derd.experts import Experts
from derd.methods import total_epochs
from derd.run import DistillationRun
from tuning.records import SAVED_EPOCH, TRIAL_CACHED_EPOCHS, SearchFolder
from tuning.searcher import TRIAL_NUMBER

PLACEHOLDER = 0.0  # val/* before a trial's first evaluation (flagged by val_evaluated = False)
INFEASIBLE_PENALTY = 100.0


def search_score(
    metrics: dict[str, float], objectives: list[tuple[str, str]], clean_threshold: float
) -> float:
    """ASHA's single score: the mean of the objectives, each signed so that larger is better,
    minus 100 while val clean accuracy is below the feasibility threshold.

    With the default objectives (val clean and AA accuracy) a trial survives a rung by its
    trade-off, not by one end of it, and an infeasible (collapsed) student ranks below
    every feasible one.
    """
    mean = sum(metrics[m] if mode == "max" else -metrics[m] for m, mode in objectives) / len(objectives)
    return mean - (INFEASIBLE_PENALTY if metrics[VAL_CLEAN] < clean_threshold else 0.0)


def quiet_actor_exit() -> None:
    """Drop the traceback Ray's actor shutdown prints when a trial has ended (finished, or stopped early).

    Tune ends the trial's actor with SIGTERM; Ray's handler raises ``SystemExit(1)``. When that lands
    inside a garbage-collection callback, Python cannot raise it there and prints it as an ignored
    exception with a traceback ("Exception ignored in ... SystemExit: 1") that reads like a failure.
    The trial has reported its end by then, so a ``SystemExit`` raised where it cannot be raised is
    dropped; every other unraisable exception is printed as before. (The handler itself cannot be
    replaced: a trial runs in Ray's runner thread, and signal handlers belong to the main thread.)"""
    previous = sys.unraisablehook
    if getattr(previous, "quiet_actor_exit", False):
        return

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)

    hook.quiet_actor_exit = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def trial_device() -> torch.device:
    """The GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _open_run(
    config: dict[str, Any], base_config: dict[str, Any], experts: Experts, out: str, device: torch.device
) -> DistillationRun:
    """Continue from the trial's own file (a worker retry and a driver restart alike), else start
    the sampled config."""
    folder = SearchFolder(out)
    cache = folder.stage1_cache
    own = folder.trial_checkpoint(config[TRIAL_NUMBER])
    if own.is_file():
        return DistillationRun.resume(own, experts, device=device, stage1_cache=cache)
    sampled = {k: v for k, v in config.items() if k != TRIAL_NUMBER}
    return DistillationRun(
        apply_overrides(from_dict(base_config), sampled), experts, device=device, stage1_cache=cache
    )


def derd_trainable(
    config: dict[str, Any],
    *,
    base_config: dict[str, Any],
    experts: Experts,
    out: str,
    objectives: list[tuple[str, str]],
    clean_threshold: float,
    cpus_per_trial: float,
) -> None:
    """Run the method with the sampled keys in ``config`` (dotted keys) on top of ``base_config``."""
    import ray
    from ray import tune

    logging.getLogger("ray.train").setLevel(
        logging.WARNING
    )  # no "Checkpoint successfully created" line per epoch
    quiet_actor_exit()
    torch.set_num_threads(max(1, int(cpus_per_trial)))
    device = trial_device()
    run = _open_run(config, base_config, experts, out, device)
    where = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(map(str, ray.get_gpu_ids())),
        "device": str(device),
    }
    own = SearchFolder(out).trial_checkpoint(config[TRIAL_NUMBER])
    reports = Reports(objectives, clean_threshold, run.total_epochs, run.history)
    if (
        run.epoch >= run.total_epochs and run.history
    ):  # finished before the driver recorded it: report the end again
        results = [run.history[-1]]
    else:
        results = run.epochs()
    cadence = CheckpointCadence(
        checkpoint_every_s(run.cfg.train.checkpoint_every_s, device),
        saved_epoch=run.epoch if own.is_file() else 0,
    )
    for result in results:
        if cadence.due(result, run.total_epochs) and cadence.saved_epoch != run.epoch:
            run.save(own)
            cadence.wrote(run.epoch)
        metrics = {
            **reports.next(result, run.history),
            **where,
            "wall_clock": time.time(),
            SAVED_EPOCH: cadence.saved_epoch,
        }
        tune.report(metrics)
    run.close()


class Reports:
    """Turns a run's epoch results into what a trial reports: the objectives (the latest val
    values held between evaluations), the ASHA score, feasibility and compute time."""

    def __init__(
        self,
        objectives: list[tuple[str, str]],
        clean_threshold: float,
        total_epochs: int,
        past: list[dict[str, Any]] = (),
    ) -> None:
        self.objectives, self.clean_threshold, self.total_epochs = objectives, clean_threshold, total_epochs
        self.latest = {m: PLACEHOLDER for m, _ in objectives}
        self.latest[VAL_CLEAN] = PLACEHOLDER
        for entry in past:
            self.latest.update({k: v for k, v in entry.items() if k.startswith("val/")})

    def next(self, result: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
        evaluated = {k: v for k, v in result.items() if k.startswith("val/")}
        self.latest.update(evaluated)
        done = [h for h in history if h["epoch"] <= result["epoch"]]
        return {
            # the console's trial table shows these first
            VAL_CLEAN: self.latest[VAL_CLEAN],
            **{m: self.latest[m] for m, _ in self.objectives},
            "search/score": search_score(self.latest, self.objectives, self.clean_threshold),
            "stage": result["stage"],
            "epoch": result["epoch"],
            **result,
            **self.latest,
            "val_evaluated": bool(evaluated),
            "search/feasible": self.latest[VAL_CLEAN] >= self.clean_threshold,
            "total_epochs": self.total_epochs,
            # what this trial ran itself: stage-I epochs read from the shared cache cost it nothing
            "trial/compute_s": sum(
                h.get("time/epoch_s", 0.0) + h.get("time/eval_s", 0.0) for h in done if not h.get("cached")
            ),
            TRIAL_CACHED_EPOCHS: sum(1 for h in done if h.get("cached")),
        }


def history_result(
    path: Path, objectives: list[tuple[str, str]], clean_threshold: float
) -> list[dict[str, Any]]:
    """The reports a trial made, rebuilt from its checkpoint (for runs a killed driver left open)."""
    state = checkpoint_state(path)
    if state is None:
        return []
    reports = Reports(objectives, clean_threshold, total_epochs(from_dict(state["config"])))
    return [reports.next(entry, state["history"]) for entry in state["history"]]


def checkpoint_state(path: Path) -> dict[str, Any] | None:
    """A trial's ``run.pt`` read weights-only (``DistillationRun.read_state``); None, with a warning line,
    when it is missing, cut short or holds code: the driver then records the trial without its epochs."""
    if not path.is_file():
        return None
    try:
        return DistillationRun.read_state(path)
    except UserError as err:
        print(f"warning: {err}", file=sys.stderr, flush=True)
        return None
