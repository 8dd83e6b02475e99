"""``dfhl_rs``: data-free hard-label robustness stealing (Yuan et al., "Data-Free Hard-Label Robustness
Stealing Attack", AAAI 2024, arXiv 2312.05924), as its official code has it (LetheSec/DFHL-RS-Attack
@050cea35f52263f5bb2dc5d7776626f63c307383: ``train.py``, ``query_sample.py``, ``losses.py``,
``dataset.py``, ``utils.py``, ``models/generator.py``). The "target model" is T_rob, the "clone" the
student; it reads **only T_rob's hard labels** (its argmax), never its logits.

A round (DFHL-RS's epoch), every ``dfhl_rs.student_steps`` iterations (its N_C = 500):

* **Generation** (``data_generation``): a fresh z ~ N(0, I) of 256 dimensions and fresh pseudo labels
  y ~ U(classes); a fresh Adam over the (persistent) generator at lr_G 2e-3 and over z at lr_z 1e-2,
  betas (0.5, 0.999); ``generator_steps`` (N_G = 10) steps on
  ``KL(smooth(y) || S(aug(G(z))))`` (batch mean; ``smooth``: 1 - s on y, s / (C - 1) elsewhere,
  s = ``label_smoothing``) ``+ lam * sum_c pbar_c log10 pbar_c`` (pbar: the batch-mean softmax of
  S; lam = 3), S in eval mode, ``aug`` the standard augmentation (random crop with 4/32 padding,
  horizontal flip). The generator learns against the *student*, the surrogate: no query of T_rob.
  The batch with the lowest loss (each measured before its step) joins the memory.
* **Memory** (``save_batch_fake``, ``FakeDataset``): every round's kept batch is appended; nothing
  is ever dropped. The student's batches are drawn from all of it, reshuffled every pass (a
  ``DataLoader`` with ``shuffle=True``, the last batch of a pass partial), a new pass each round.
* **Query samples** (``generate_hee``, query mode HEE, the paper's): the batch, standard-augmented,
  then strongly augmented (``strong_aug``: a centre crop of int(side * U(0.95, 1)) per axis resized
  back, + 0.001 N(0, I) clamped, vertical and horizontal flips each with p 0.5, a rotation by one of
  -15, 0, 15 degrees; one draw per batch), then ``hee_steps`` (10) signed-gradient *ascent* steps of
  ``hee_step`` (0.03) on the student's mean prediction entropy from x + 0.001 N(0, I), clamped to
  [0, 1] with no eps-ball: high-entropy examples near the student's decision boundaries.
* **Student** (``train_clone_model``): CE(S(x_hee), argmax T_rob(x_hee)) in train mode; SGD lr 0.1,
  momentum 0.9, weight decay 1e-4, cosine (``train.py``'s defaults).

Published settings: CIFAR-10 label smoothing 0.2, CIFAR-100 0.02 (``--label_smooth_factor``'s help);
every other setting is ``train.py``'s default on both. digits takes CIFAR-10's (10 classes),
ImageNet-100 CIFAR-100's (100 classes).

Deviations forced by the harness, each tested in ``tests/test_fidelity.py``:

* the budget: the shared budget of student updates (``budget``); a round every ``student_steps`` of
  them, so the ratio of generation to student steps is DFHL-RS's and the memory grows at its rate
  (on digits' 900 updates, 2 rounds at N_C = 500: the search draws N_C from 20 to 500);
* the student's cosine runs to 0 over the updates (DFHL-RS: per epoch to 2e-4), the shared trainer's;
* the batch is the shared ``budget.batch_size`` (DFHL-RS: 256);
* the generator is the shared ``derd.models.Generator`` at ``student.generator_width`` (DFHL-RS's:
  the same layers, its last block 64 channels wide instead of 128), ending in a sigmoid as DFHL-RS's;
* the strong augmentation is one bilinear resampling (crop, resize, flips and rotation as one affine
  map; torchvision resizes bilinearly, then rotates with nearest-neighbour sampling), and its crop
  size is a fraction of the image side (DFHL-RS: of 32 pixels);
* the robust evaluation is the shared one (``derd.evaluate``), not ``robust_test.py``'s.

``dfhl_rs.teacher_access: logits`` is **not the paper's method**: the student then fits T_rob's
softmax on x_hee (KL, batch mean) instead of its hard label, for comparison only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from derd import losses
from derd.methods.base import Context, Method, Phase, Terms
from derd.methods.registry import register_method
from derd.models import Generator
from derd.settings import LR_MAX, WEIGHT_MAX, integer, loguniform, setting, uniform
from derd.synthesis import GAN_BETAS, random_views

ACCESS = ("hard_labels", "logits")


@dataclass
class DFHLRSConfig:
    """DFHL-RS's generator, memory and high-entropy queries; defaults: ``train.py``'s (CIFAR-10)."""

    student_steps: int = setting(
        500, lo=1, hi=1_000_000, doc="student iterations per generation round (N_C)", search=integer(20, 500)
    )
    generator_steps: int = setting(10, lo=1, hi=100_000, doc="generator steps per round (N_G)")
    lr_g: float = setting(
        2e-3,
        lo=1e-12,
        hi=LR_MAX,
        doc="Adam of the generator, betas (0.5, 0.999), fresh each round",
        search=loguniform(2e-4, 2e-2),
    )
    lr_z: float = setting(1e-2, lo=1e-12, hi=LR_MAX, doc="Adam of the round's noise z")
    lam: float = setting(
        3.0, lo=0, hi=WEIGHT_MAX, doc="weight of the base-10 batch-entropy term", search=loguniform(0.3, 30)
    )
    label_smoothing: float = setting(
        0.2,
        lo=0,
        hi=0.999,
        doc="mass off the pseudo label (CIFAR-10 0.2, CIFAR-100 0.02)",
        search=uniform(0.0, 0.5),
    )
    hee_steps: int = setting(10, lo=0, hi=1000, doc="signed entropy-ascent steps of a high-entropy example")
    hee_step: float = setting(
        0.03, lo=0, hi=1.0, doc="their step size, in [0, 1] pixels", search=loguniform(0.003, 0.1)
    )
    latent_dim: int = setting(256, lo=2, hi=65_536, doc="the generator's noise size")
    lr_s: float = setting(
        0.1, lo=1e-12, hi=LR_MAX, doc="the student's SGD, momentum 0.9, cosine", search=loguniform(0.01, 1.0)
    )
    weight_decay: float = setting(1e-4, lo=0, hi=1.0, doc="the student's SGD weight decay")
    teacher_access: str = setting(
        "hard_labels",
        choices=ACCESS,
        doc="hard_labels (the paper's); logits: fit T_rob's softmax, not the paper's method",
    )


def smooth_labels(y: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    """DFHL-RS's ``smooth_one_hot``: 1 - s on the label, s / (C - 1) on every other class."""
    out = torch.full((len(y), classes), smoothing / (classes - 1), device=y.device)
    return out.scatter_(1, y.unsqueeze(1), 1.0 - smoothing)


def generation_loss(logits: torch.Tensor, targets: torch.Tensor, lam: float) -> torch.Tensor:
    """``cross_entropy`` (KL(targets || softmax), batch mean) + lam * ``div_loss`` (sum_c pbar_c log10 pbar_c)."""
    kl = F.kl_div(F.log_softmax(logits, 1), targets, reduction="batchmean")
    return kl + lam * losses.information_entropy_loss(logits, base=10)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The mean prediction entropy (nats): ``Entropy_Loss(reduction="mean")``."""
    return -(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum(1).mean()


def strong_augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """``strong_aug``, one draw per batch: a centre crop of int(side * U(0.95, 1)) per axis resized back,
    + 0.001 N(0, I) clamped to [0, 1], vertical and horizontal flips (p 0.5 each), a rotation by -15, 0
    or 15 degrees; crop, flips and rotation as one bilinear resampling, the noise before it as in the code."""
    n, _, h, w = x.shape
    u = torch.rand(5, generator=rng, device=x.device).tolist()  # one host read per batch
    crop = torch.tensor([int(w * (0.95 + 0.05 * u[1])) / w, int(h * (0.95 + 0.05 * u[0])) / h])
    flips = torch.tensor([-1.0 if u[3] > 0.5 else 1.0, -1.0 if u[2] > 0.5 else 1.0])  # hflip, vflip
    angle = math.radians((-15.0, 0.0, 15.0)[min(int(u[4] * 3), 2)])
    x = (x + 0.001 * torch.randn(x.shape, generator=rng, device=x.device)).clamp(0, 1)
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]])
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, :, :2] = (rot * (crop * flips).unsqueeze(0)).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def high_entropy_examples(
    model: torch.nn.Module, x: torch.Tensor, steps: int, step: float, rng: torch.Generator
) -> torch.Tensor:
    """``generate_hee``: from x + 0.001 N(0, I), ``steps`` signed ascent steps of ``step`` on the model's mean
    prediction entropy (eval mode), clamped to [0, 1], no eps-ball."""
    was_training = model.training
    model.eval()
    x_hee = x.detach() + 0.001 * torch.randn(x.shape, generator=rng, device=x.device)
    for _ in range(steps):
        x_hee.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(entropy(model(x_hee)), [x_hee])
        x_hee = (x_hee.detach() + step * grad.sign()).clamp(0, 1)
    model.train(was_training)
    return x_hee.detach()


def standard_augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """``std_aug``: random crop with 4/32 zero padding (whole pixels) and horizontal flip, per image."""
    return random_views(x, rng, min_scale=1.0, pad_frac=0.125, whole_pixels=True)


class ImageMemory:
    """Generated images kept for good (``save_batch_fake``), read in shuffled passes (``FakeDataset`` in a
    ``DataLoader`` with ``shuffle=True``: the last batch of a pass partial); a new pass after each append, as
    DFHL-RS and FERD build a new loader every round. Shared with ``derd.methods.ferd``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.images = torch.empty(0, *ctx.info.image_shape, device=ctx.device)
        self.shuffled = torch.empty(0, dtype=torch.long, device=ctx.device)  # this pass's permutation
        self.cursor = 0

    def __len__(self) -> int:
        return len(self.images)

    def _new_pass(self) -> None:
        self.shuffled = torch.randperm(len(self.images), generator=self.ctx.rng, device=self.ctx.device)
        self.cursor = 0

    def append(self, x: torch.Tensor) -> None:
        self.images = torch.cat([self.images, x.detach()])
        self._new_pass()

    def next_batch(self, n: int) -> torch.Tensor:
        """The next batch of this pass; a new shuffled pass when it is spent."""
        if self.cursor >= len(self.shuffled):
            self._new_pass()
        idx = self.shuffled[self.cursor : self.cursor + n]
        self.cursor += len(idx)
        return self.images[idx]

    def latest(self, n: int) -> torch.Tensor | None:
        return self.images[-n:] if len(self.images) else None

    def state(self) -> dict[str, Any]:
        return {"memory": self.images.cpu(), "shuffled": self.shuffled.cpu(), "cursor": self.cursor}

    def load_state(self, state: dict[str, Any]) -> None:
        if "memory" in state:
            self.images = state["memory"].to(self.ctx.device)
            self.shuffled = state["shuffled"].to(self.ctx.device)
            self.cursor = int(state["cursor"])


@register_method
class DFHLRS(Method):
    name = "dfhl_rs"
    label = "DFHL-RS"
    order = 10
    sections = {"dfhl_rs": DFHLRSConfig}
    metric_prefixes = ("dfhl/",)
    presets = {
        "cifar100": {"dfhl_rs.label_smoothing": 0.02},
        "imagenet100": {"dfhl_rs.label_smoothing": 0.02},
    }

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        d = self.cfg.dfhl_rs
        self.generator = ctx.compute.prepare(
            Generator(ctx.info.image_shape, d.latent_dim, self.cfg.student.generator_width)
        )
        self.modules["generator"] = self.generator
        self.memory = ImageMemory(ctx)
        self.queries = 0

    @classmethod
    def phases(cls, cfg) -> list[Phase]:
        b, d = cfg.budget, cfg.dfhl_rs
        return [Phase(2, b.epochs, b.iters_per_epoch, b.batch_size, d.lr_s, weight_decay=d.weight_decay)]

    # ---- generation -------------------------------------------------------------------
    def generate(self, batch_size: int) -> Terms:
        """One round of ``data_generation``: N_G steps from fresh z and y, the lowest-loss batch kept."""
        ctx, d, student = self.ctx, self.cfg.dfhl_rs, self.ctx.student
        z = torch.randn(batch_size, d.latent_dim, generator=ctx.rng, device=ctx.device).requires_grad_(True)
        y = torch.randint(0, ctx.info.num_classes, (batch_size,), generator=ctx.rng, device=ctx.device)
        targets = smooth_labels(y, ctx.info.num_classes, d.label_smoothing)
        opt = torch.optim.Adam(
            [{"params": self.generator.parameters()}, {"params": [z], "lr": d.lr_z}],
            lr=d.lr_g,
            betas=GAN_BETAS,
        )
        was_training = student.training
        student.eval()
        self.generator.train()
        losses_seen, batches = [], []
        for _ in range(d.generator_steps):
            x = self.generator(z)
            loss = generation_loss(student(standard_augment(x, ctx.rng)), targets, d.lam)
            losses_seen.append(loss.detach())
            batches.append(x.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        student.zero_grad(set_to_none=True)
        student.train(was_training)
        best = int(
            torch.stack(losses_seen).argmin()
        )  # the first of equal ones, as ``best_loss > loss`` keeps
        self.memory.append(batches[best])
        return {"dfhl/G": losses_seen[best]}

    # ---- the student ------------------------------------------------------------------
    def iteration(self, phase: Phase, step: int) -> Terms:
        ctx, d = self.ctx, self.cfg.dfhl_rs
        terms: Terms = {}
        if step % d.student_steps == 0 or len(self.memory) == 0:
            terms = self.generate(phase.batch_size)
        x = strong_augment(standard_augment(self.memory.next_batch(phase.batch_size), ctx.rng), ctx.rng)
        x_hee = high_entropy_examples(ctx.student, x, d.hee_steps, d.hee_step, ctx.rng)
        with torch.no_grad():
            teacher_logits = ctx.experts.robust(x_hee)
        self.queries += len(x_hee)
        ctx.student.train()
        logits = ctx.student(x_hee)
        if d.teacher_access == "hard_labels":
            loss = F.cross_entropy(logits, teacher_logits.argmax(1))
        else:  # not the paper's method
            loss = losses.kl_divergence(teacher_logits, logits)
        ctx.trainer.update(loss)
        terms["dfhl/student"] = loss.detach()
        return terms

    def end_epoch(self, phase: Phase, means: dict[str, float]) -> dict[str, float]:
        return {"dfhl/memory": float(len(self.memory)), "dfhl/queries": float(self.queries)}

    def sample(self, n: int) -> torch.Tensor | None:
        return self.memory.latest(n)

    def extra_state(self) -> dict[str, Any]:
        return {**self.memory.state(), "queries": self.queries}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.memory.load_state(state)
        self.queries = int(state.get("queries", 0))
