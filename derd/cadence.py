"""When a run writes its checkpoint (``run.pt``): a time cadence instead of every epoch.

A CIFAR-scale run state is 120-165 MB (student, its SGD state, the generator and its Adam
state, derd_no_nat's frozen copy). On an H200 a compiled stage-II epoch takes about 10 s,
so a write per epoch is 12-16 MB/s per trial, and 64 trials on a cluster's shared
filesystem would write about 1 GB/s. ``train.checkpoint_every_s`` bounds that: a run
writes at the end, at each epoch that was scored on val (the epochs the search's
schedulers decide on), and otherwise once that many seconds have passed since its last
write (stage I needs no write of its own: the shared stage-I cache holds it). Unset, it is 0 (every epoch) on the CPU, where an epoch is
slow and a state small, and 300 on CUDA.

What a cadence costs: a run killed between writes redoes the epochs since its last write.
They repeat bit for bit (the generator of the run's randomness is in the checkpoint), and
the search's MLflow logger writes each epoch once, so nothing is logged twice.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

GPU_EVERY_S = 300.0  # about one write per 5 minutes per trial on a GPU, unless an evaluation comes first


def checkpoint_every_s(configured: float | None, device: torch.device) -> float:
    """``train.checkpoint_every_s`` with its device default: 0 (every epoch) on the CPU, 300 s on CUDA."""
    if configured is not None:
        return float(configured)
    return GPU_EVERY_S if device.type == "cuda" else 0.0


class CheckpointCadence:
    """Says, epoch by epoch, whether the run's checkpoint is due; counts the writes it allowed."""

    def __init__(
        self, every_s: float, clock: Callable[[], float] = time.monotonic, saved_epoch: int = 0
    ) -> None:
        self.every_s, self.clock = every_s, clock
        self.last_write = clock()
        self.writes = 0
        self.saved_epoch = saved_epoch  # the epoch the checkpoint on disk holds (0: none)

    def due(self, result: dict[str, Any], total_epochs: int) -> bool:
        """True at the last epoch, an evaluated epoch, or once ``every_s`` has passed since the last write."""
        if int(result["epoch"]) >= total_epochs or any(k.startswith("val/") for k in result):
            return True
        return self.clock() - self.last_write >= self.every_s

    def wrote(self, epoch: int) -> None:
        """Record a write holding ``epoch``."""
        self.last_write, self.saved_epoch = self.clock(), epoch
        self.writes += 1
