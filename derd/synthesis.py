"""Synthesizers: how a data-free method makes its pseudo images.

* ``GeneratorSynthesizer``: a generator G trained on a weighted sum of named loss terms
  (DERD's stages, nature, DAFL, DFAD, ZSKT, DFARD differ only in the weights and roles);
* ``InversionSynthesizer``: each batch optimised from noise (DERD_inv's model inversion);
* ``ContrastiveSynthesizer``: CMI's contrastive model inversion with an image bank and a
  feature memory bank.

Each has ``step`` (one synthesis update, returning its loss terms as 0-dim tensors) and
``sample(n)`` (n pseudo images in [0, 1]); their state is a ``state_dict``. The terms a
generator can weigh are ``GENERATOR_TERMS``; each reads what it needs from ``Signals``,
which runs each model at most once per batch and only when a term asks.
"""
from __future__ import annotations

import contextlib
from functools import cached_property
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from derd import losses
from derd.attacks import eval_mode
from derd.context import Context, Terms
from derd.models import Generator


def adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with betas (0.5, 0.999), the data-free literature's generator optimiser; fused on CUDA
    (its step counter stays on the device: no host read per step)."""
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999), fused=device.type == "cuda")


class Signals:
    """What the synthesis terms read from one pseudo batch ``x = G(z)``, each computed once, on demand.

    ``prior`` is the teacher whose knowledge shapes the images (L_oh, L_ie, L_bn, L_a);
    ``natural`` is the one the student is measured against by the data-level adversary (the
    same module as ``prior`` when one teacher plays both roles).
    """

    def __init__(self, ctx: Context, x: torch.Tensor, z: torch.Tensor | None, prior: nn.Module,
                 natural: nn.Module | None, tau: float, needs: set[str]) -> None:
        self.ctx, self.x, self.z, self.prior, self.natural, self.tau = ctx, x, z, prior, natural, tau
        self.bn = ctx.hooks(losses.BatchNormStatistics, prior) if "bn" in needs else None
        self.penultimate = ctx.hooks(losses.PenultimateFeatures, prior) if "act" in needs else None

    @cached_property
    def prior_logits(self) -> torch.Tensor:
        with contextlib.ExitStack() as stack:
            for hooks in (self.bn, self.penultimate):
                if hooks is not None:
                    stack.enter_context(hooks.recording())
            return self.prior(self.x)

    @cached_property
    def natural_logits(self) -> torch.Tensor:
        return self.prior_logits if self.natural is self.prior else self.natural(self.x)

    @cached_property
    def student_logits(self) -> torch.Tensor:
        with eval_mode(self.ctx.student):
            return self.ctx.student(self.x)

    @cached_property
    def bn_loss(self) -> torch.Tensor:
        self.prior_logits  # noqa: B018 - the forward pass fills the hooks
        return self.bn.loss()

    @cached_property
    def features(self) -> torch.Tensor:
        self.prior_logits  # noqa: B018
        return self.penultimate.features


# name -> term of METHOD.md / the baselines, as a function of one batch's signals
GENERATOR_TERMS: dict[str, Callable[[Signals], torch.Tensor]] = {
    "oh": lambda s: losses.one_hot_loss(s.prior_logits),
    "adv": lambda s: losses.adversarial_loss(s.natural_logits, s.student_logits, s.tau),
    "adv_l1": lambda s: -losses.l1_discrepancy(s.natural_logits, s.student_logits),
    "ie": lambda s: losses.information_entropy_loss(s.prior_logits),
    "bn": lambda s: s.bn_loss,
    "d": lambda s: losses.diversity_loss(s.z, s.x),
    "act": lambda s: losses.activation_loss(s.features),
}


def weighted_sum(terms: Terms, weights: dict[str, float]) -> torch.Tensor:
    """sum_k w_k * term_k in the weights' order (a weight of 1 multiplies exactly)."""
    total = None
    for name, w in weights.items():
        part = terms[name] if w == 1 else w * terms[name]
        total = part if total is None else total + part
    return total


class GeneratorSynthesizer:
    """A generator trained on weighted named terms; its optimiser is set per phase."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        cfg = ctx.cfg
        self.generator = ctx.compute.prepare(Generator(ctx.info.image_shape, cfg.student.latent_dim,
                                                       cfg.student.generator_width))
        self.optimizer: torch.optim.Optimizer | None = None

    def start_phase(self, lr: float) -> None:
        self.optimizer = adam(self.generator.parameters(), lr, self.ctx.device)

    def step(self, batch_size: int, weights: dict[str, float], *, prior: nn.Module, natural: nn.Module | None,
             tau: float, combine: Callable[[Terms], torch.Tensor] | None = None) -> tuple[Terms, torch.Tensor]:
        """One update of G on ``combine(terms)`` (default: the weighted sum); returns (terms incl. ``G``, x)."""
        z = self.ctx.noise(batch_size)
        self.generator.train()
        x = self.generator(z)
        signals = Signals(self.ctx, x, z, prior, natural, tau, set(weights))
        terms = {name: GENERATOR_TERMS[name](signals) for name in weights}
        total = combine(terms) if combine is not None else weighted_sum(terms, weights)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.ctx.student.zero_grad(set_to_none=True)
        return {**{k: v.detach() for k, v in terms.items()}, "G": total.detach()}, x.detach()

    def sample(self, n: int) -> torch.Tensor:
        with torch.no_grad():
            return self.generator(self.ctx.noise(n))


class InversionSynthesizer:
    """Model inversion: each batch optimised from noise by Adam on its image logits (DERD_inv)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.last: torch.Tensor | None = None

    def step(self, batch_size: int, weights: dict[str, float], *, teacher: nn.Module, tau: float,
             steps: int, lr: float) -> Terms:
        ctx = self.ctx
        logits = torch.randn(batch_size, *ctx.info.image_shape, generator=ctx.rng, device=ctx.device).requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=lr)
        for _ in range(steps):
            x = torch.sigmoid(logits)
            signals = Signals(ctx, x, None, teacher, teacher, tau, set(weights))
            terms = {name: GENERATOR_TERMS[name](signals) for name in weights}
            total = weighted_sum(terms, weights)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
        ctx.student.zero_grad(set_to_none=True)
        self.last = torch.sigmoid(logits).detach()
        return {**{k: v.detach() for k, v in terms.items()}, "G": total.detach()}

    def sample(self, n: int) -> torch.Tensor | None:
        """The last optimised batch (None before the first step, e.g. a finished run resumed)."""
        return None if self.last is None else self.last[:n]


def random_views(x: torch.Tensor, generator: torch.Generator, min_scale: float, pad_frac: float) -> torch.Tensor:
    """Per-image random crop (area scale in [min_scale, 1], shifted up to ``pad_frac`` of the side)
    and horizontal flip, resampled to the input size: CMI's local (min_scale 0.25) and global
    (RandomCrop with 4/32 padding: min_scale 1, pad_frac 0.125) views, on the device."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator, device=x.device)
    side = torch.sqrt(min_scale + (1 - min_scale) * u[:, 0])  # crop side as a fraction of the image
    room = (1 - side) + 2 * pad_frac
    shift = (u[:, 1:3] * room.unsqueeze(1) - room.unsqueeze(1) / 2) * 2  # in [-1, 1] grid units
    flip = torch.where(u[:, 3] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = side * flip
    theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ProjectionHead(nn.Module):
    """CMI's head: Linear(d, h) -> ReLU -> Linear(h, 128), L2-normalised; h = min(d, 512) (our choice)."""

    def __init__(self, dim: int, out: int = 128) -> None:
        super().__init__()
        hidden = min(dim, 512)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(f.float()), dim=1)


class ContrastiveSynthesizer:
    """CMI: rounds of inversion through a freshly initialised generator, kept in an image bank.

    A round: re-initialise G (N(0, 0.02) weights, BN N(1, 0.02)), draw z and random target
    classes, optimise G and z with Adam for ``synthesis_steps`` on
    ``bn*L_bn + oh*CE(T(x_g), targets) + adv*L_adv + cr*L_cr``; keep the iterate with the
    lowest loss. ``L_adv`` = -mean of KL(T||S) over images where S still agrees with T (CMI).
    ``L_cr``: InfoNCE between the head's embeddings of a local and a global view of each
    image, against the current batch and ``negatives`` entries of a feature memory bank of
    earlier rounds. Features: per-image channel means of every BN input of the teacher.
    The student trains on batches drawn uniformly from the image bank (newest ``bank_size``).
    """

    def __init__(self, ctx: Context, teacher: nn.Module) -> None:
        self.ctx, self.teacher = ctx, teacher
        cfg = ctx.cfg
        self.generator = ctx.compute.prepare(Generator(ctx.info.image_shape, cfg.student.latent_dim,
                                                       cfg.student.generator_width))
        self.bn = ctx.hooks(losses.BatchNormStatistics, teacher, keep_features=True)
        with torch.no_grad(), self.bn.recording():
            teacher(torch.zeros(2, *ctx.info.image_shape, device=ctx.device))
            dim = self.bn.feature_vector().shape[1]
        self.head = ProjectionHead(dim).to(ctx.device)
        self.head_optimizer = adam(self.head.parameters(), cfg.cmi.lr_g, ctx.device)
        c, h, w = ctx.info.image_shape
        self.images = torch.zeros(cfg.cmi.bank_size, c, h, w, device=ctx.device)
        self.memory = torch.zeros(cfg.cmi.bank_size, 2, self.head.net[-1].out_features, device=ctx.device)
        self.count = 0  # images ever added (host-side: no device read needed)

    def _reset_generator(self) -> None:
        for m in self.generator.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                with torch.no_grad():
                    m.weight.normal_(0.0, 0.02, generator=self.ctx.rng)
                    if m.bias is not None:
                        m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                with torch.no_grad():
                    m.weight.normal_(1.0, 0.02, generator=self.ctx.rng)
                    m.bias.zero_()

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(teacher logits of the global view, its L_bn, [local, global] embeddings)."""
        ctx = self.ctx
        x_global = random_views(x, ctx.rng, 1.0, 0.125)
        x_local = random_views(x, ctx.rng, 0.25, 0.0)
        with self.bn.recording():
            logits = self.teacher(x_global)
            f_global = self.bn.feature_vector()
        bn_loss = self.bn.loss()
        with self.bn.recording():
            self.teacher(x_local)
            f_local = self.bn.feature_vector()
        return logits, bn_loss, torch.stack([self.head(f_local), self.head(f_global)], dim=1)

    def synthesize(self, batch_size: int) -> Terms:
        """One round: optimise a batch, add its best iterate to the banks; returns the last step's terms."""
        ctx, c = self.ctx, self.ctx.cfg.cmi
        self._reset_generator()
        z = ctx.noise(batch_size).requires_grad_(True)
        targets = torch.randint(0, ctx.info.num_classes, (batch_size,), generator=ctx.rng, device=ctx.device)
        opt = adam([z, *self.generator.parameters()], c.lr_g, ctx.device)
        n_neg = min(c.negatives, self.count, len(self.memory))
        best_loss, best_x, best_emb = None, None, None
        self.generator.train()
        for _ in range(c.synthesis_steps):
            x = self.generator(z)
            logits, bn_loss, emb = self._embed(x)
            with eval_mode(ctx.student):
                s_logits = ctx.student(x)
            terms = {"bn": bn_loss, "oh": losses.target_class_loss(logits, targets),
                     "adv": losses.agreeing_adversarial_loss(logits, s_logits)}
            if n_neg > 0:
                idx = torch.randint(0, min(self.count, len(self.memory)), (n_neg,), generator=ctx.rng, device=ctx.device)
                bank = self.memory[idx]
                terms["cr"] = losses.contrastive_loss(emb[:, 0], torch.cat([emb[:, 1], bank[:, 1]]), c.cr_tau)
            else:
                terms["cr"] = losses.contrastive_loss(emb[:, 0], emb[:, 1], c.cr_tau)
            total = (c.lambda_bn * terms["bn"] + c.lambda_oh * terms["oh"] + c.lambda_adv * terms["adv"]
                     + c.lambda_cr * terms["cr"])
            opt.zero_grad(set_to_none=True)
            self.head_optimizer.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            self.head_optimizer.step()
            with torch.no_grad():  # keep the best iterate without reading the loss on the host
                better = total.detach() if best_loss is None else torch.minimum(best_loss, total.detach())
                take = better == total.detach()
                best_x = x.detach() if best_x is None else torch.where(take, x.detach(), best_x)
                best_emb = emb.detach() if best_emb is None else torch.where(take, emb.detach(), best_emb)
                best_loss = better
        ctx.student.zero_grad(set_to_none=True)
        self._add(best_x, best_emb)
        return {**{f"cmi_{k}": v.detach() for k, v in terms.items()}, "G": total.detach()}

    def _add(self, x: torch.Tensor, emb: torch.Tensor) -> None:
        n = len(x)
        positions = torch.arange(self.count, self.count + n, device=x.device) % len(self.images)
        self.images[positions] = x
        self.memory[positions] = emb
        self.count += n

    def sample(self, n: int) -> torch.Tensor:
        """n images drawn uniformly (with replacement) from the bank."""
        held = min(self.count, len(self.images))
        idx = torch.randint(0, held, (n,), generator=self.ctx.rng, device=self.ctx.device)
        return self.images[idx]

    def state(self) -> dict[str, Any]:
        held = min(self.count, len(self.images))
        return {"images": self.images[:held].cpu(), "memory": self.memory[:held].cpu(), "count": self.count}

    def load_state(self, state: dict[str, Any]) -> None:
        held = len(state["images"])
        self.images[:held] = state["images"].to(self.images.device)
        self.memory[:held] = state["memory"].to(self.memory.device)
        self.count = int(state["count"])

