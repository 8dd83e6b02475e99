"""``ferd``: fairness-enhanced data-free robustness distillation (FERD, arXiv 2509.20793), as its official
code has it (mayaobuduyao/FERD @c975d9e1a2cd75de1cd6287f6c1ef999d0532871: ``test.py``,
``IBD_module_cmi.py``, ``losses.py``, ``query_sample.py``, ``models/IFP.py``, ``README.md``'s command).

A round (FERD's epoch), every ``ferd.student_steps`` iterations (its N_S = 400):

* **Class-balanced labels**: y ~ Multinomial(p) over the classes, p uniform at first and after each
  round ``p_c = 0.05 + 0.15 * minmax(r)_c``, normalised, where r_c is class c's *robust risk*: the mean
  over the round's images of class c of ``max_{j != y} T(x_adv)_j - T(x_adv)_y``, x_adv a PGD-20 attack
  of T_rob (uniform start, steps of eps / 4) on the last generator batch (0 for a class not drawn).
  Classes T_rob defends worst get more pseudo images: FERD's robustness-guided class reweighting.
* **Generator** (``Train_Gen_Module.train``): re-initialised each round (``reset_model``: conv and
  linear weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0), fresh z; Adam over G at lr_G
  2e-3 and z at lr_z 0.015, betas (0.5, 0.999); ``generator_steps`` (N_G = 200) steps on
  ``bn * L_bn(T) + adv * L_adv + oh * CE(T(x), y) + uni * L_uni`` (5, 1, 1, 5), x the global view
  (random crop with 4/32 padding, horizontal flip) of G(z):

  - L_adv = -DKL(S(x), T(x)) with DKL FERD's decoupled KL (``dkl_loss``, GI off): the cross-entropy
    of softmax T against S plus 0.25 * sum_{b,i,j} w_bij ((t_i - t_j) - (s_i - s_j))^2 / sum w, w the
    outer product of softmax(T / 100) with itself; the student in eval mode;
  - L_uni = KL(uniform || softmax T_nr(x)), T_nr T's logits from the *non-robust* part of its features
    (``InformativeFeaturePackage``, below): it pushes the generator to images whose non-robust features
    carry no class, so that robust features carry the knowledge;
  - L_bn: DeepInversion's sum over T's BatchNorm layers of the L2 norms of the mean and variance gaps
    (``DeepInversionHook``, momentum 0: ``derd.losses.BatchNormStatistics``).

  The lowest-loss G(z) (measured before each step) and its labels join the memory, never dropped.
* **Informative features** (``models/IFP.py``, ``find_features``): at T's feature map f (``pop`` 3 of a
  WRN: the output of its last BatchNorm, before ReLU, pooling and the classifier), per image and channel
  a noise scale ``softplus(l)`` (l from 0, Adam lr 0.1, 50 steps) learns to keep
  ``CE(T_tail(f + softplus(l) * N(0, I)), y) + 0.3 * KL`` low (KL: 0.5 * mean(var_hw(f) / s^2 + log(s^2 /
  var_hw(f)) - 1)); the channels whose noise variance exceeds the largest spatial variance of any channel
  are the "robust" ones; T_nr is T's tail on f with them zeroed.
* **Student** (``train_model_ds_at``): after the warm-up rounds without student updates (FERD: 20),
  N_S steps on memory batches (reshuffled every round, the last batch of a pass partial), standard
  augmentation, ``5/6 * DKL(S(x), T(x)) + 1/6 * DKL(S(x_adv), T(x))`` with the class prior of the drawn
  labels (GI on: w the outer product of the one-hot label, so the pairwise term is exactly 0 and DKL is
  the soft cross-entropy), x_adv 10 PGD steps of eps / 4 from x + 0.001 N(0, I) on sum KL(T(x) || S(x_adv))
  (``generate_adv``); SGD lr 0.1 (README's command), momentum 0.9, weight decay 5e-4, cosine.

Published settings: README's CIFAR-10 command (the only one published; ``--lr_z 0.015``, ``--lr 0.1``
override ``test.py``'s defaults 0.01 and 0.01), so every dataset takes the section's defaults.

Deviations, each tested in ``tests/test_fidelity.py``:

* the robust risk's PGD: ``test.py`` calls ``pgd_attack(teacher, x, t_logits, labels)``, which puts the
  logits in the labels' place and the labels in eps's, and cannot run (``uniform_(-eps, eps)`` takes no
  tensor); here the attack the function describes, on the drawn labels at the dataset's eps (FERD: 8/255,
  steps 2/255: eps / 4); ``is_fooled`` is ``margin < 99999``, always true, so every image counts;
* the budget: the shared budget of student updates; a round every ``student_steps`` of them, and
  before the first student update a warm-up of ``warmup_share`` (0.1) of those rounds, rounded up, on
  top (FERD: 20 warm-up epochs per 200 that train the student; digits' 900 updates: 3 rounds, 1 warm-up);
* the student's cosine runs to 0 over its updates (FERD: per epoch, warm-up epochs included);
* the batch is the shared ``budget.batch_size`` (FERD: 256);
* the generator is the shared ``derd.models.Generator`` (FERD's: the same layers, its last block 64
  channels wide), its width ``student.generator_width``;
* the feature map: the output of T's last 2-D BatchNorm (WRN's pop 3 exactly, on any architecture);
  the tail is T run on x with that output replaced (FERD's ``intermediate_propagate``);
* unused in FERD's loss and so not built: the local view and the CMI projection head (stepped by an
  optimiser but in no term), the memory's labels in the student's pairwise term (identically 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from derd import losses
from derd.attacks import pgd
from derd.evaluate import REFERENCE_EPS
from derd.methods.base import Context, Method, Phase, Terms
from derd.methods.dfhl_rs import ImageMemory, standard_augment
from derd.methods.registry import register_method
from derd.models import Generator
from derd.models.fold import FoldedBatchNorm
from derd.settings import LR_MAX, WEIGHT_MAX, integer, loguniform, setting
from derd.synthesis import GAN_BETAS


@dataclass
class FERDConfig:
    """FERD's class-reweighted generator and fair robust distillation; defaults: README's CIFAR-10 command."""

    student_steps: int = setting(
        400, lo=1, hi=1_000_000, doc="student iterations per round (N_S)", search=integer(20, 400)
    )
    generator_steps: int = setting(
        200, lo=1, hi=100_000, doc="generator steps per round (N_G)", search=integer(20, 200)
    )
    warmup_share: float = setting(
        0.1,
        lo=0,
        hi=100,
        doc="rounds before the student's first update, per round of the budget (FERD: 20 per 200)",
    )
    lr_g: float = setting(
        2e-3, lo=1e-12, hi=LR_MAX, doc="Adam of the re-initialised generator, betas (0.5, 0.999)"
    )
    lr_z: float = setting(0.015, lo=1e-12, hi=LR_MAX, doc="Adam of the round's noise z")
    latent_dim: int = setting(100, lo=2, hi=65_536, doc="the generator's noise size")
    lambda_bn: float = setting(5.0, lo=0, hi=WEIGHT_MAX, search=loguniform(0.05, 50))
    lambda_adv: float = setting(1.0, lo=0, hi=WEIGHT_MAX, search=loguniform(0.1, 10))
    lambda_oh: float = setting(1.0, lo=0, hi=WEIGHT_MAX)
    lambda_uni: float = setting(
        5.0, lo=0, hi=WEIGHT_MAX, doc="weight of KL(uniform || T_nr(x))", search=loguniform(0.5, 50)
    )
    ifd_steps: int = setting(
        50, lo=0, hi=100_000, doc="Adam steps of the per-channel noise scales", search=integer(5, 50)
    )
    ifd_lr: float = setting(0.1, lo=1e-12, hi=LR_MAX)
    ifd_beta: float = setting(0.3, lo=0, hi=WEIGHT_MAX, doc="weight of the noise's KL to the features")
    class_min: float = setting(0.05, lo=0, hi=1, doc="class probability before normalising, least risk")
    class_max: float = setting(0.2, lo=0, hi=1, doc="and most risk")
    natural_weight: float = setting(
        5 / 6, lo=0, hi=1, doc="weight of DKL(S(x), T(x)) beside the adversarial one"
    )
    lr_s: float = setting(
        0.1, lo=1e-12, hi=LR_MAX, doc="the student's SGD, momentum 0.9, cosine", search=loguniform(0.01, 1.0)
    )
    weight_decay: float = setting(5e-4, lo=0, hi=1.0)


def decoupled_kl(
    student: torch.Tensor, teacher: torch.Tensor, prior: torch.Tensor | None = None, t2: float = 100.0
) -> torch.Tensor:
    """FERD's ``dkl_loss`` (gamma 1): 0.25 * sum w (dt - ds)^2 / sum w + CE(softmax teacher, student), the
    pairwise weights w the outer product of ``prior`` (GI) or of softmax(teacher / t2)."""
    dt = teacher.unsqueeze(2) - teacher.unsqueeze(1)
    ds = student.unsqueeze(2) - student.unsqueeze(1)
    with torch.no_grad():
        s = prior if prior is not None else F.softmax(teacher / t2, 1)
        w = s.unsqueeze(2) * s.unsqueeze(1)
    mse = 0.25 * ((dt - ds) ** 2 * w).sum() / w.sum()
    sce = -(F.softmax(teacher, 1).detach() * F.log_softmax(student, 1)).sum(1).mean()
    return mse + sce


def class_probabilities(risk: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``labels_prob``: the risks min-max scaled into [low, high], normalised to sum to 1."""
    scaled = (risk - risk.min()) / (risk.max() - risk.min() + 1e-8) * (high - low) + low
    return scaled / scaled.sum()


def class_risk(logits: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per class, the mean negative margin ``max_{j != y} z_j - z_y`` of its images (0 for a class absent)."""
    true = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    other = logits.scatter(1, labels.unsqueeze(1), float("-inf")).max(1).values
    total = torch.zeros(classes, device=logits.device).scatter_add_(0, labels, other - true)
    count = torch.zeros(classes, device=logits.device).scatter_add_(0, labels, torch.ones_like(true))
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def reset_generator(generator: nn.Module, rng: torch.Generator) -> None:
    """``reset_model``: conv and linear weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0."""
    with torch.no_grad():
        for m in generator.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)):
                mean = 1.0 if isinstance(m, nn.BatchNorm2d) else 0.0
                m.weight.copy_(mean + 0.02 * torch.randn(m.weight.shape, generator=rng, device=rng.device))
                if m.bias is not None:
                    m.bias.zero_()


class FeatureSplice:
    """T's feature map f at its last 2-D BatchNorm's output, and T's tail run from a given f (the output
    replaced: upstream layers still run on x, their result discarded)."""

    def __init__(self, model: nn.Module) -> None:
        norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FoldedBatchNorm))]
        if not norms:
            raise ValueError("FERD's informative features need a teacher with a 2-D BatchNorm layer")
        self.model, self.recorded, self.replacement = model, None, None
        self.handle = norms[-1].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self.replacement is not None:
            return self.replacement.clone()  # an in-place ReLU after it must not touch the caller's tensor
        self.recorded = output.clone()
        return None

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, T(x))."""
        logits = self.model(x)
        return self.recorded, logits

    def tail(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        self.replacement = f
        try:
            return self.model(x)
        finally:
            self.replacement = None

    def remove(self) -> None:
        self.handle.remove()


def robust_channels(
    splice: FeatureSplice,
    x: torch.Tensor,
    f: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float,
    beta: float,
    rng: torch.Generator,
) -> torch.Tensor:
    """``find_features``' robust index, [B, C, 1, 1]: 1 where softplus(l)^2 > the largest spatial variance."""
    f = f.detach()
    scale = torch.zeros(*f.shape[:2], 1, 1, device=f.device, requires_grad=True)
    opt = torch.optim.Adam([scale], lr=lr)
    var_f = f.var(dim=(2, 3))
    for _ in range(steps):
        s = F.softplus(scale)
        noisy = f + s * torch.randn(f.shape, generator=rng, device=f.device)
        q_var = s.squeeze(-1).squeeze(-1) ** 2
        kl = 0.5 * (var_f / (q_var + 1e-10) + torch.log((q_var + 1e-10) / (var_f + 1e-10)) - 1).mean()
        loss = F.cross_entropy(splice.tail(x, noisy), labels) + beta * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (F.softplus(scale.detach()) ** 2 > var_f.max()).float()


def warmup_rounds(f: FERDConfig, phase: Phase) -> int:
    """FERD's warm-up scaled to the budget: ``warmup_share`` (20 / 200) of the budget's rounds, rounded up."""
    rounds = math.ceil(phase.epochs * phase.iters_per_epoch / f.student_steps)
    return math.ceil(f.warmup_share * rounds - 1e-9)


@register_method
class FERD(Method):
    name = "ferd"
    label = "FERD"
    order = 11
    sections = {"ferd": FERDConfig}
    metric_prefixes = ("ferd/",)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        f = self.cfg.ferd
        self.generator = ctx.compute.prepare(
            Generator(ctx.info.image_shape, f.latent_dim, self.cfg.student.generator_width)
        )
        self.modules["generator"] = self.generator
        self.splice = FeatureSplice(ctx.experts.robust)
        self.bn = ctx.hooks(losses.BatchNormStatistics, ctx.experts.robust)
        classes = ctx.info.num_classes
        self.probs = torch.full((classes,), 1.0 / classes, device=ctx.device)
        self.memory = ImageMemory(ctx)

    @classmethod
    def phases(cls, cfg) -> list[Phase]:
        b, f = cfg.budget, cfg.ferd
        return [Phase(2, b.epochs, b.iters_per_epoch, b.batch_size, f.lr_s, weight_decay=f.weight_decay)]

    # ---- a round ----------------------------------------------------------------------
    def generate(self, batch_size: int) -> Terms:
        """One ``Train_Gen_Module.train`` and the class probabilities' update."""
        ctx, f, teacher, student = self.ctx, self.cfg.ferd, self.ctx.experts.robust, self.ctx.student
        classes = ctx.info.num_classes
        labels = torch.multinomial(self.probs, batch_size, replacement=True, generator=ctx.rng).sort().values
        reset_generator(self.generator, ctx.rng)
        z = torch.randn(batch_size, f.latent_dim, generator=ctx.rng, device=ctx.device).requires_grad_(True)
        opt = torch.optim.Adam(
            [{"params": self.generator.parameters()}, {"params": [z], "lr": f.lr_z}],
            lr=f.lr_g,
            betas=GAN_BETAS,
        )
        was_training = student.training
        student.eval()
        self.generator.train()
        best, best_x, x_view, terms = float("inf"), None, None, {}
        for _ in range(f.generator_steps):
            x = self.generator(z)
            x_view = standard_augment(x, ctx.rng)
            with self.bn.recording():
                feats, t_logits = self.splice.features(x_view)
            keep = robust_channels(
                self.splice, x_view, feats, labels, f.ifd_steps, f.ifd_lr, f.ifd_beta, ctx.rng
            )
            t_nonrobust = self.splice.tail(x_view, feats * (1 - keep))
            uniform = torch.full_like(t_nonrobust, 1.0 / classes)
            terms = {
                "bn": self.bn.loss(),
                "adv": -decoupled_kl(student(x_view), t_logits),
                "oh": F.cross_entropy(t_logits, labels),
                "uni": F.kl_div(F.log_softmax(t_nonrobust, 1), uniform, reduction="batchmean"),
            }
            total = (
                f.lambda_bn * terms["bn"]
                + f.lambda_adv * terms["adv"]
                + f.lambda_oh * terms["oh"]
                + f.lambda_uni * terms["uni"]
            )
            value = float(total.detach())  # FERD's loss.item(): one host read per generator step
            if value < best or best_x is None:
                best, best_x = value, x.detach()
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
        student.zero_grad(set_to_none=True)
        student.train(was_training)
        eps = ctx.info.eps
        x_adv = pgd(
            teacher,
            x_view.detach(),
            labels,
            eps=eps,
            steps=20,
            step_size=eps / 4,
            start="uniform",
            generator=ctx.rng,
        )
        with torch.no_grad():
            risk = class_risk(teacher(x_adv), labels, classes)
        if torch.isfinite(
            risk
        ).all():  # a diverged round (non-finite images) leaves the sampling weights as they were;
            self.probs = class_probabilities(
                risk, f.class_min, f.class_max
            )  # the run loop names its loss term
        self.memory.append(best_x)
        return {f"ferd/{k}": v.detach() for k, v in terms.items()} | {
            "ferd/G": torch.tensor(best, device=ctx.device)
        }

    # ---- the student ------------------------------------------------------------------
    def iteration(self, phase: Phase, step: int) -> Terms:
        ctx, f = self.ctx, self.cfg.ferd
        terms: Terms = {}
        if len(self.memory) == 0:
            for _ in range(warmup_rounds(f, phase)):
                self.generate(phase.batch_size)
        if step % f.student_steps == 0 or len(self.memory) == 0:
            terms = self.generate(phase.batch_size)
        x = standard_augment(self.memory.next_batch(phase.batch_size), ctx.rng)
        teacher, student, eps = ctx.experts.robust, ctx.student, ctx.info.eps
        with torch.no_grad():
            target = teacher(x)
        x_adv = pgd(
            student,
            x,
            target,
            eps=eps,
            steps=10,
            step_size=eps / 4,
            start="normal",
            start_scale=0.001 * eps / REFERENCE_EPS,
            loss_fn=losses.kl_attack_loss(1.0),
            generator=ctx.rng,
        )
        student.train()
        prior = F.one_hot(
            target.argmax(1), ctx.info.num_classes
        ).float()  # the pairwise term is 0 under any one-hot
        nat, rob = decoupled_kl(student(x), target, prior), decoupled_kl(student(x_adv), target, prior)
        loss = f.natural_weight * nat + (1 - f.natural_weight) * rob
        ctx.trainer.update(loss)
        return {**terms, "ferd/nat": nat.detach(), "ferd/rob": rob.detach()}

    def end_epoch(self, phase: Phase, means: dict[str, float]) -> dict[str, float]:
        return {"ferd/memory": float(len(self.memory)), "ferd/min_class_prob": float(self.probs.min())}

    def sample(self, n: int) -> torch.Tensor | None:
        return self.memory.latest(n)

    def extra_state(self) -> dict[str, Any]:
        return {**self.memory.state(), "probs": self.probs.cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.memory.load_state(state)
        if "probs" in state:
            self.probs = state["probs"].to(self.ctx.device)
