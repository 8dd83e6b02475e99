"""The Ray Tune trainable: one trial is one DERD run (both stages), reported every epoch.

The teachers arrive through Ray's object store (``tune.with_parameters``), once for all
trials. Each epoch the whole run state is checkpointed through Tune, so a trial survives a
worker failure (``FailureConfig``) and a resumed search continues its trials where they
stopped. The stage-I cache lives in the search's folder, shared by all trials.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from derd.config import apply_overrides, from_dict
from derd.method import DERDRun, Experts

PLACEHOLDER = 0.0  # val/* before a trial's first evaluation (flagged by val_evaluated = False)


def scalarise(metrics: dict[str, float], objectives: list[tuple[str, str]]) -> float:
    """ASHA's single score: the mean of the objectives, each signed so that larger is better.

    With the default objectives (val clean and val AA accuracy) this is their average: a trial
    survives a rung if it is good at the trade-off, not at one end of it.
    """
    return sum(metrics[m] if mode == "max" else -metrics[m] for m, mode in objectives) / len(objectives)


def trial_device() -> torch.device:
    """The GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def derd_trainable(
    config: dict[str, Any],
    *,
    base_config: dict[str, Any],
    experts: Experts,
    cache_dir: str,
    objectives: list[tuple[str, str]],
    cpus_per_trial: float,
) -> None:
    """Run DERD with the sampled weights in ``config`` (dotted keys) on top of ``base_config``."""
    import ray
    from ray import tune

    torch.set_num_threads(max(1, int(cpus_per_trial)))
    device = trial_device()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run = DERDRun.resume(Path(folder) / "run.pt", experts, device=device, stage1_cache=cache_dir)
    else:
        cfg = apply_overrides(from_dict(base_config), config)
        run = DERDRun(cfg, experts, device=device, stage1_cache=cache_dir)
    latest = {m: PLACEHOLDER for m, _ in objectives}
    for past in run.history:
        latest.update({k: v for k, v in past.items() if k.startswith("val/")})
    where = {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ",".join(map(str, ray.get_gpu_ids())),
             "device": str(device)}
    for result in run.epochs():
        evaluated = {k: v for k, v in result.items() if k.startswith("val/")}
        latest.update(evaluated)
        metrics = {**result, **latest, **where, "val_evaluated": bool(evaluated), "search/score": scalarise(latest, objectives),
                   "total_epochs": run.total_epochs, "wall_clock": time.time()}
        with tempfile.TemporaryDirectory() as folder:
            run.save(Path(folder) / "run.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    run.close()
