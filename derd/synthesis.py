"""Synthesizers: how a data-free method makes its pseudo images.

* ``GeneratorSynthesizer``: a generator G trained on a weighted sum of named loss terms
  (DERD's stages, nature, DAFL, DFAD, ZSKT, DFARD differ only in the weights and roles);
* ``InversionSynthesizer``: each batch optimised from noise (DERD_inv's model inversion);
* ``ContrastiveSynthesizer``: CMI's contrastive model inversion with an image bank and a
  feature memory bank.

Each has ``step`` (one synthesis update, returning its loss terms as 0-dim tensors) and
``sample(n)`` (n pseudo images in [0, 1]); their state is a ``state_dict``.

The terms a synthesizer can weigh are ``GeneratorTerm``s: a function of one batch's ``Signals``
(the pseudo images with their gradient, the noise, the drawn labels, the teachers' and the
student's logits, the BN statistics), which runs each model at most once per batch and only
when a term asks. ``GENERATOR_TERMS`` are the shared ones (DERD's, docs/methods.md, and the baselines');
a method adds its own by name (``derd.methods.base.GeneratorMethod.generator_terms``: defined
in the method's file, reading ``Signals`` or the method's own tensors, with gradients). Every
synthesizer looks a name up with ``resolve_terms``, so CMI's class loss and DAFL's one-hot
loss come from the same table.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterable, Mapping, Union

import torch
import torch.nn.functional as F
from torch import nn

from derd import losses
from derd.attacks import eval_mode
from derd.context import Context, Terms
from derd.models import ConditionalGenerator, Generator

GAN_BETAS = (0.5, 0.999)  # the generator optimiser of DERD, DFARD and CMI's synthesis
DEFAULT_BETAS = (0.9, 0.999)  # PyTorch's default, which DAFL, DFAD and ZSKT keep


def adam(params, lr: float, device: torch.device, betas: tuple[float, float] = GAN_BETAS) -> torch.optim.Adam:
    """Adam for a generator (or image logits, a projection head); fused on CUDA (its step counter stays
    on the device: no host read per step)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=device.type == "cuda")


class Signals:
    """What the synthesis terms read from one pseudo batch ``x = G(z)``, each computed once, on demand.

    ``prior`` is the teacher whose knowledge shapes the images (L_oh, L_ie, L_bn, L_a);
    ``natural`` is the one the student is measured against by the data-level adversary (the
    same module as ``prior`` when one teacher plays both roles). ``labels`` are the classes a
    conditional synthesizer drew for the batch (None otherwise). ``needs`` names the hooks the
    batch's terms read (``GeneratorTerm.needs``): ``bn`` (BN statistics), ``act`` (penultimate features).
    """

    def __init__(
        self,
        ctx: Context,
        x: torch.Tensor,
        z: torch.Tensor | None,
        prior: nn.Module,
        natural: nn.Module | None,
        tau: float,
        needs: set[str],
        student_train: bool = False,
        labels: torch.Tensor | None = None,
    ) -> None:
        self.ctx, self.x, self.z, self.prior, self.natural, self.tau = ctx, x, z, prior, natural, tau
        self.student_train, self.labels = student_train, labels
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
        """The student on x: in eval mode, or as it is (train mode: batch statistics, updated; DFAD and ZSKT)."""
        if self.student_train:
            return self.ctx.student(self.x)
        with eval_mode(self.ctx.student):
            return self.ctx.student(self.x)

    @cached_property
    def bn_loss(self) -> torch.Tensor:
        if self.bn is None:
            raise RuntimeError("a term read the BN statistics without declaring needs={'bn'} (GeneratorTerm)")
        self.prior_logits  # noqa: B018 - the forward pass fills the hooks
        return self.bn.loss()

    @property
    def drawn_labels(self) -> torch.Tensor:
        """The batch's drawn classes (a term over them needs a conditional synthesizer)."""
        if self.labels is None:
            raise RuntimeError(
                "a term read the drawn labels of a batch that has none (use a conditional synthesizer)"
            )
        return self.labels

    @cached_property
    def features(self) -> torch.Tensor:
        self.prior_logits  # noqa: B018
        return self.penultimate.features


@dataclass(frozen=True)
class GeneratorTerm:
    """One loss term of a synthesizer: ``fn(signals)`` -> 0-dim tensor with its gradient, and the hooks it
    reads (``needs``: ``bn``, ``act``), which ``Signals`` must register before the teacher's forward pass."""

    fn: Callable[[Signals], torch.Tensor]
    needs: frozenset[str] = frozenset()

    def __call__(self, signals: Signals) -> torch.Tensor:
        return self.fn(signals)


# A term as a method may write it: a GeneratorTerm, or a plain function of the signals (that needs no hooks).
TermLike = Union[GeneratorTerm, Callable[[Signals], torch.Tensor]]

# name -> term of DERD (docs/methods.md) or a baseline, as a function of one batch's signals (each loss's scale: derd.losses)
GENERATOR_TERMS: Mapping[str, GeneratorTerm] = {
    "oh": GeneratorTerm(lambda s: losses.one_hot_loss(s.prior_logits)),
    "cls": GeneratorTerm(lambda s: losses.target_class_loss(s.prior_logits, s.drawn_labels)),
    "adv": GeneratorTerm(lambda s: losses.adversarial_loss(s.natural_logits, s.student_logits, s.tau)),
    "adv_agree": GeneratorTerm(lambda s: losses.agreeing_adversarial_loss(s.prior_logits, s.student_logits)),
    "adv_l1": GeneratorTerm(lambda s: -losses.l1_discrepancy(s.natural_logits, s.student_logits)),
    "ie": GeneratorTerm(lambda s: losses.information_entropy_loss(s.prior_logits)),
    "ie_log10": GeneratorTerm(lambda s: losses.information_entropy_loss(s.prior_logits, base=10.0)),
    "bn": GeneratorTerm(lambda s: s.bn_loss, frozenset({"bn"})),
    "d": GeneratorTerm(lambda s: losses.diversity_loss(s.z, s.x)),
    "act": GeneratorTerm(lambda s: losses.activation_loss(s.features), frozenset({"act"})),
}


def resolve_terms(
    names: Iterable[str], own: Mapping[str, TermLike] | None = None
) -> dict[str, GeneratorTerm]:
    """The terms ``names`` by name: a method's own (``own``) or the shared ``GENERATOR_TERMS``. A method's term
    may not take a shared term's name (its logged ``loss/<name>`` would mean two things)."""
    own = dict(own or {})
    clash = sorted(set(own) & set(GENERATOR_TERMS))
    if clash:
        raise ValueError(
            f"generator term {clash[0]!r} is a shared term (derd.synthesis.GENERATOR_TERMS); name the "
            f"method's own term differently"
        )
    out = {}
    for name in names:
        term = own.get(name, GENERATOR_TERMS.get(name))
        if term is None:
            known = ", ".join([*GENERATOR_TERMS, *own])
            raise KeyError(f"unknown generator term {name!r}; known: {known}")
        out[name] = term if isinstance(term, GeneratorTerm) else GeneratorTerm(term)
    return out


def term_needs(terms: Mapping[str, GeneratorTerm]) -> set[str]:
    """The hooks a set of terms reads (``Signals``'s ``needs``)."""
    return set().union(*(t.needs for t in terms.values()))


def evaluate_terms(terms: Mapping[str, GeneratorTerm], signals: Signals) -> Terms:
    """Each term on one batch's signals, in order (0-dim tensors with their gradients)."""
    return {name: term(signals) for name, term in terms.items()}


def weighted_sum(terms: Terms, weights: dict[str, float]) -> torch.Tensor:
    """sum_k w_k * term_k in the weights' order (a weight of 1 multiplies exactly)."""
    total = None
    for name, w in weights.items():
        part = terms[name] if w == 1 else w * terms[name]
        total = part if total is None else total + part
    return total


class GeneratorSynthesizer:
    """A generator trained on weighted named terms; its optimiser is set per phase.

    A method may set the generator's noise size (``latent_dim``, else ``student.latent_dim``),
    its Adam's ``betas``, a gradient-norm clip (``max_grad_norm``), whether the student runs
    in train mode while the generator learns against it (``student_train``: DFAD, ZSKT), its own
    terms by name (``terms``, beside ``GENERATOR_TERMS``) and whether the generator is conditional
    (``conditional``: each batch draws uniform labels y from the run's stream, x = G(z, y), and the
    terms read y as ``Signals.labels``; GDFQ).
    """

    def __init__(
        self,
        ctx: Context,
        *,
        latent_dim: int | None = None,
        betas: tuple[float, float] = GAN_BETAS,
        max_grad_norm: float | None = None,
        student_train: bool = False,
        terms: Mapping[str, TermLike] | None = None,
        conditional: bool = False,
    ) -> None:
        self.ctx = ctx
        cfg = ctx.cfg
        self.latent_dim = latent_dim or cfg.student.latent_dim
        self.betas, self.max_grad_norm, self.student_train = betas, max_grad_norm, student_train
        self.own_terms = dict(terms or {})
        resolve_terms((), self.own_terms)  # a clash with a shared name fails when the method is built
        self.conditional = conditional
        shape, width = ctx.info.image_shape, cfg.student.generator_width
        generator = (
            ConditionalGenerator(shape, ctx.info.num_classes, self.latent_dim, width)
            if conditional
            else Generator(shape, self.latent_dim, width)
        )
        self.generator = ctx.compute.prepare(generator)
        self.optimizer: torch.optim.Optimizer | None = None

    def start_phase(self, lr: float) -> None:
        self.optimizer = adam(self.generator.parameters(), lr, self.ctx.device, self.betas)

    def noise(self, n: int) -> torch.Tensor:
        """n latent vectors z ~ N(0, I) from the run's stream."""
        return torch.randn(n, self.latent_dim, generator=self.ctx.rng, device=self.ctx.device)

    def labels(self, n: int) -> torch.Tensor | None:
        """n uniform classes from the run's stream for a conditional generator (None for a plain one)."""
        if not self.conditional:
            return None
        return torch.randint(
            0, self.ctx.info.num_classes, (n,), generator=self.ctx.rng, device=self.ctx.device
        )

    def step(
        self,
        batch_size: int,
        weights: dict[str, float],
        *,
        prior: nn.Module,
        natural: nn.Module | None,
        tau: float,
        combine: Callable[[Terms], torch.Tensor] | None = None,
        z: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[Terms, torch.Tensor]:
        """One update of G on ``combine(terms)`` (default: the weighted sum) at noise ``z`` (default: fresh) and,
        for a conditional generator, classes ``labels`` (default: freshly drawn); returns (terms incl. ``G``,
        x = G(z) before the update, detached). The terms are evaluated here, on x with its gradient."""
        z = self.noise(batch_size) if z is None else z
        labels = self.labels(batch_size) if labels is None else labels
        self.generator.train()
        x = self.generator(z) if labels is None else self.generator(z, labels)
        chosen = resolve_terms(weights, self.own_terms)
        signals = Signals(self.ctx, x, z, prior, natural, tau, term_needs(chosen), self.student_train, labels)
        terms = evaluate_terms(chosen, signals)
        total = combine(terms) if combine is not None else weighted_sum(terms, weights)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.ctx.student.zero_grad(set_to_none=True)
        return {**{k: v.detach() for k, v in terms.items()}, "G": total.detach()}, x.detach()

    def render(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """G(z) (a conditional generator: G(z, labels), labels drawn if not given) without a gradient, the
        generator in its current mode."""
        labels = self.labels(len(z)) if labels is None else labels
        with torch.no_grad():
            return self.generator(z) if labels is None else self.generator(z, labels)

    def sample(self, n: int) -> torch.Tensor:
        return self.render(self.noise(n))


class InversionSynthesizer:
    """Model inversion: each batch optimised from noise by Adam on its image logits (DERD_inv)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.last: torch.Tensor | None = None

    def step(
        self,
        batch_size: int,
        weights: dict[str, float],
        *,
        teacher: nn.Module,
        tau: float,
        steps: int,
        lr: float,
    ) -> Terms:
        ctx = self.ctx
        logits = torch.randn(
            batch_size, *ctx.info.image_shape, generator=ctx.rng, device=ctx.device
        ).requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=lr)
        chosen = resolve_terms(weights)
        for _ in range(steps):
            x = torch.sigmoid(logits)
            signals = Signals(ctx, x, None, teacher, teacher, tau, term_needs(chosen))
            terms = evaluate_terms(chosen, signals)
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


def random_views(
    x: torch.Tensor, generator: torch.Generator, min_scale: float, pad_frac: float, whole_pixels: bool = False
) -> torch.Tensor:
    """Per-image random crop (area scale in [min_scale, 1], shifted up to ``pad_frac`` of the side)
    and horizontal flip, resampled to the input size, on the device: CMI's local view
    (RandomResizedCrop, scale [0.25, 1]: min_scale 0.25) and its global view and the student's
    augmentation (RandomCrop with 4/32 zero padding: min_scale 1, pad_frac 0.125, ``whole_pixels``:
    shifts by whole pixels, so the crop copies pixels exactly)."""
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator, device=x.device)
    side = torch.sqrt(min_scale + (1 - min_scale) * u[:, 0])  # crop side as a fraction of the image
    room = (1 - side) + 2 * pad_frac
    shift = (u[:, 1:3] * room.unsqueeze(1) - room.unsqueeze(1) / 2) * 2  # in [-1, 1] grid units
    if whole_pixels:
        pixel = torch.tensor([2 / w, 2 / h], device=x.device, dtype=shift.dtype)
        shift = torch.round(shift / pixel) * pixel
    flip = torch.where(u[:, 3] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = side * flip
    theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ProjectionHead(nn.Module):
    """CMI's head: Linear(d, d) -> ReLU -> Linear(d, out), L2-normalised (datafree/synthesis/contrastive.py
    17-31, out = 256 as datafree_kd.py 276 sets it)."""

    def __init__(self, dim: int, out: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(f.float()), dim=1)


# CMI's weighted terms (logged as cmi_<key>) -> the shared terms they are
CMI_TERMS = {"bn": "bn", "oh": "cls", "adv": "adv_agree"}


class ContrastiveSynthesizer:
    """CMI's contrastive model inversion (zju-vipa/CMI @9e79fa9, ``datafree/synthesis/contrastive.py``).

    A round (lines 261-357): re-initialise every layer of G (N(0, 0.02) weights, BN weights
    N(1, 0.02), zero biases), draw z and random target classes, optimise G and z with a fresh
    Adam (betas (0.5, 0.999)) for ``synthesis_steps`` on
    ``bn*L_bn + oh*CE(T(x_g), targets) + adv*L_adv + cr*L_cr`` and keep the iterate with the
    lowest loss. L_bn, the class loss and L_adv are the shared terms ``bn``, ``cls`` and ``adv_agree``
    (``GENERATOR_TERMS``) on the global view's ``Signals`` with the drawn targets as its labels. x_g, the global view, is a random crop (zero padding of 4/32) and flip of x;
    x_l, the local view, a random resized crop (scale [0.25, 1]) and flip. L_bn reads T's BN
    inputs on x_g; L_adv = -mean over the batch of [argmax S = argmax T] KL(T(x_g) || S(x_g)): the
    student sees the very view the teacher sees (line 288).

    L_cr (lines 298-326): features f are the per-image channel means of every BN input of T
    (raw, before the head). Anchors are head(f(x_l)) and keys head(f(x_g)), detached, of the
    current batch and of ``negatives`` rows drawn without replacement from a memory of the raw
    [local | global] features of earlier rounds' kept iterates (``feature_bank`` rows, a ring),
    re-projected through the current head every step; ``losses.contrastive_loss``. The head and
    its Adam (PyTorch's default betas) persist across rounds.

    The kept iterate of every round joins the image bank, which keeps every image (as CMI's
    8-bit PNGs do: stored as uint8, truncated). The student draws batches from it without
    replacement within a pass over a fresh shuffle (a new pass after each round, as CMI builds
    a new loader), each batch randomly cropped and flipped (CMI's training transform).
    """

    def __init__(self, ctx: Context, teacher: nn.Module) -> None:
        self.ctx, self.teacher = ctx, teacher
        cfg, c = ctx.cfg, ctx.cfg.cmi
        self.generator = ctx.compute.prepare(
            Generator(ctx.info.image_shape, cfg.student.latent_dim, cfg.student.generator_width)
        )
        self.bn = ctx.hooks(losses.BatchNormStatistics, teacher, keep_features=True)
        with torch.no_grad(), self.bn.recording():
            teacher(torch.zeros(2, *ctx.info.image_shape, device=ctx.device))
            dim = self.bn.feature_vector().shape[1]
        self.head = ProjectionHead(dim, c.head_dim).to(ctx.device)
        self.head_optimizer = adam(self.head.parameters(), c.lr_g, ctx.device, DEFAULT_BETAS)
        self.features = torch.zeros(c.feature_bank, 2 * dim, device=ctx.device)  # raw [local | global]
        self.rows = 0  # feature rows ever added (host-side counts: no device read)
        self.images = torch.zeros(0, *ctx.info.image_shape, dtype=torch.uint8, device=ctx.device)
        self.order: torch.Tensor | None = None  # this pass's shuffle of the image bank
        self.position = 0
        self.terms = resolve_terms(CMI_TERMS.values())

    @property
    def count(self) -> int:
        """Images in the bank."""
        return len(self.images)

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

    def _views(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[Signals, torch.Tensor, torch.Tensor]:
        """(the global view's signals, with T's logits and L_bn read; raw features of the local view, of the
        global view)."""
        ctx = self.ctx
        x_global = random_views(x, ctx.rng, 1.0, 0.125, whole_pixels=True)
        x_local = random_views(x, ctx.rng, 0.25, 0.0)
        signals = Signals(
            ctx, x_global, None, self.teacher, self.teacher, 1.0, term_needs(self.terms), labels=targets
        )
        signals.prior_logits  # noqa: B018 - T on the global view, recording its BN statistics and features
        f_global = self.bn.feature_vector()
        signals.bn_loss  # noqa: B018 - read before the local view's pass records over the statistics
        with self.bn.recording():
            self.teacher(x_local)
            f_local = self.bn.feature_vector()
        return signals, f_local, f_global

    def synthesize(self, batch_size: int) -> Terms:
        """One round: optimise a batch, add its best iterate to the banks; returns the last step's terms."""
        ctx, c = self.ctx, self.ctx.cfg.cmi
        self._reset_generator()
        z = ctx.noise(batch_size).requires_grad_(True)
        targets = torch.randint(0, ctx.info.num_classes, (batch_size,), generator=ctx.rng, device=ctx.device)
        opt = adam([z, *self.generator.parameters()], c.lr_g, ctx.device)
        held = min(self.rows, len(self.features))
        n_neg = min(c.negatives, held)
        dim = self.features.shape[1] // 2
        best_loss, best_x, best_f = None, None, None
        self.generator.train()
        for _ in range(c.synthesis_steps):
            x = self.generator(z)
            signals, f_local, f_global = self._views(x, targets)
            shared = evaluate_terms(self.terms, signals)  # the student sees the global view (in eval mode)
            cached = self.features[torch.randperm(held, generator=ctx.rng, device=ctx.device)[:n_neg]]
            anchors = self.head(torch.cat([f_local, cached[:, :dim]]))
            keys = self.head(torch.cat([f_global, cached[:, dim:]]))
            terms = {
                **{own: shared[name] for own, name in CMI_TERMS.items()},
                "cr": losses.contrastive_loss(anchors, keys, c.cr_tau, current=batch_size),
            }
            total = (
                c.lambda_bn * terms["bn"]
                + c.lambda_oh * terms["oh"]
                + c.lambda_adv * terms["adv"]
                + c.lambda_cr * terms["cr"]
            )
            with torch.no_grad():  # keep the best iterate (its loss before its update) without a host read
                better = total.detach() if best_loss is None else torch.minimum(best_loss, total.detach())
                take = better == total.detach()
                f = torch.cat([f_local, f_global], dim=1).detach()
                best_x = x.detach() if best_x is None else torch.where(take, x.detach(), best_x)
                best_f = f if best_f is None else torch.where(take, f, best_f)
                best_loss = better
            opt.zero_grad(set_to_none=True)
            self.head_optimizer.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            self.head_optimizer.step()
        ctx.student.zero_grad(set_to_none=True)
        self._add(best_x, best_f)
        return {**{f"cmi_{k}": v.detach() for k, v in terms.items()}, "G": total.detach()}

    def _add(self, x: torch.Tensor, f: torch.Tensor) -> None:
        n = len(x)
        positions = torch.arange(self.rows, self.rows + n, device=x.device) % len(self.features)
        self.features[positions] = f
        self.rows += n
        self.images = torch.cat(
            [self.images, (x.clamp(0, 1) * 255).to(torch.uint8)]
        )  # truncated, as CMI's PNGs
        self.order, self.position = None, 0  # a new pass over the grown bank

    def batch(self, n: int) -> torch.Tensor:
        """The student's next batch: up to n images of this pass (the last of a pass may be smaller),
        randomly cropped and flipped."""
        if self.order is None or self.position >= len(self.order):
            self.order, self.position = (
                torch.randperm(self.count, generator=self.ctx.rng, device=self.ctx.device),
                0,
            )
        idx = self.order[self.position : self.position + n]
        self.position += len(idx)
        x = self.images[idx].float() / 255
        return random_views(x, self.ctx.rng, 1.0, 0.125, whole_pixels=True)

    def sample(self, n: int) -> torch.Tensor:
        """The bank's first n images (figures; draws nothing from the run's stream)."""
        return self.images[:n].float() / 255

    def state(self) -> dict[str, Any]:
        held = min(self.rows, len(self.features))
        return {
            "images": self.images.cpu(),
            "features": self.features[:held].cpu(),
            "rows": self.rows,
            "order": None if self.order is None else self.order.cpu(),
            "position": self.position,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        device = self.ctx.device
        held = len(state["features"])
        self.features[:held] = state["features"].to(device)
        self.rows = int(state["rows"])
        self.images = state["images"].to(device)
        self.order = None if state["order"] is None else state["order"].to(device)
        self.position = int(state["position"])
