"""The context a run gives a method's parts: config, dataset, device, models, the seeded stream,
the student's optimiser for the current phase, and the phase itself.

It lives outside ``derd.methods`` so that the parts (``derd.synthesis``, ``derd.objectives``)
and the methods that compose them can import it without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from derd import losses

if TYPE_CHECKING:
    from derd.config import RunConfig
    from derd.data import DatasetInfo
    from derd.device import Compute
    from derd.experts import Experts

Terms = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Phase:
    """One stretch of training with one student optimiser (cosine over the phase)."""

    stage: int  # 1 = natural warm-up, 2 = the main (robust) stage; MLflow's ``stage`` metric
    epochs: int
    iters_per_epoch: int
    batch_size: int
    lr_s: float
    updates_per_iter: int = 1  # student SGD steps per iteration (DERD's stage I: stage1.student_steps)
    weight_decay: float = 5e-4
    max_grad_norm: float | None = None  # clip the student's gradient to this L2 norm before each step (ZSKT)


class StudentTrainer:
    """The student and its optimiser for the current phase (SGD, momentum 0.9, the phase's weight
    decay, cosine to zero over the phase's updates; its gradient norm clipped if the phase says so)."""

    def __init__(self, student: nn.Module) -> None:
        self.student = student
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.max_grad_norm: float | None = None

    def start_phase(self, phase: Phase) -> None:
        self.optimizer = torch.optim.SGD(
            self.student.parameters(), lr=phase.lr_s, momentum=0.9, weight_decay=phase.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, max(1, phase.epochs * phase.iters_per_epoch * phase.updates_per_iter)
        )
        self.max_grad_norm = phase.max_grad_norm

    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def update(self, loss: torch.Tensor) -> None:
        """One SGD step on ``loss``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.step()

    def step(self) -> None:
        """One SGD step on the gradients already in ``.grad`` (SGA writes them itself)."""
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params(), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()


class Context:
    """What the run hands every part: config, dataset, device, the models and the seeded stream.

    ``rng`` lives on the run's device and is the only source of randomness after model
    initialisation (noise, PGD starts, SGA's choices, CMI's views), so a resumed run repeats
    an uninterrupted one bit for bit on the same device.
    """

    def __init__(
        self,
        cfg: "RunConfig",
        info: "DatasetInfo",
        compute: "Compute",
        student: nn.Module,
        experts: "Experts",
        rng: torch.Generator,
        new_student: Callable[[], nn.Module],
    ) -> None:
        self.cfg, self.info, self.compute = cfg, info, compute
        self.device = compute.device
        self.student, self.experts, self.rng = student, experts, rng
        self.new_student = new_student  # an untrained model of the student's architecture
        self.trainer = StudentTrainer(student)
        self._hooks: dict[tuple[str, int], losses.Hooks] = {}

    def noise(self, n: int) -> torch.Tensor:
        """n latent vectors z ~ N(0, I) from the run's stream."""
        return torch.randn(n, self.cfg.student.latent_dim, generator=self.rng, device=self.device)

    def hooks(self, kind: type, model: nn.Module, **kwargs: Any):
        """One hook set of a kind per model, created on first use and removed by ``close()``."""
        key = (kind.__name__, id(model))
        if key not in self._hooks:
            self._hooks[key] = kind(model, **kwargs)
        return self._hooks[key]

    def close(self) -> None:
        for h in self._hooks.values():
            h.remove()
        self._hooks = {}
