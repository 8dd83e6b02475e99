"""Every loss term of DERD (docs/methods.md) and of the baselines as its own small function, and the hooks they read.

Logit arguments are raw model outputs; KL terms use softmax at temperature ``tau`` and are
scaled by tau^2 (Hinton et al.) so that their gradients keep their size across tau. Every
term returns a 0-dim tensor and never reads a value on the host, so a training step that
sums them runs without a device synchronisation.

Loss scales. Each term's docstring states its *reduction* (what it sums or averages over) and
its *typical magnitude* (measured on the digits teachers, a freshly initialised generator at
batch 128, 10 classes; K classes in general). A published weight multiplies its paper's own
form of a term: before reusing it here, compare the two reductions (a sum over layers against
a mean, norms against means of squares, a batch mean against an element mean) and rescale the
weight so that the weighted term has the paper's size next to the others at the start of
training (docs/methods.md: "Converting a published weight"; GDFQ's L_bn weight is the worked example).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from derd.models.fold import FoldedBatchNorm
from derd.models.registry import Normalize


def kl_divergence(target_logits: torch.Tensor, logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL(softmax(target/tau) || softmax(logits/tau)) * tau^2, averaged over the batch.

    Reduction: sum over classes, mean over the batch (``batchmean``). Magnitude: 0 when the two agree,
    about 0.6 between a trained teacher and an untrained student on pseudo images, at most ~ln K per
    image for confident disagreement."""
    target = F.softmax(target_logits / tau, dim=1)
    return F.kl_div(F.log_softmax(logits / tau, dim=1), target, reduction="batchmean") * tau**2


# RSLAD's distillation KL (zibojia/RSLAD, rslad_cifar10.py / rslad_cifar100.py): an element mean over
# batch x classes on CIFAR-10 (10 classes) and ten times that on CIFAR-100 (100 classes): a tenth of
# the batch-mean KL on both. Kept at that tenth on every dataset.
RSLAD_KL_SCALE = 0.1


def rslad_divergence(target_logits: torch.Tensor, logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """RSLAD's KL(softmax(target/tau) || softmax(logits/tau)) * tau^2: a tenth of ``kl_divergence``.

    Reduction: RSLAD's element mean over batch x classes on CIFAR-10, kept as 0.1 x the batch mean
    everywhere. Magnitude: about 0.06 at the start (a tenth of ``kl_divergence``'s)."""
    return RSLAD_KL_SCALE * kl_divergence(target_logits, logits, tau)


def kl_attack_loss(tau: float = 1.0):
    """An attack objective KL(target || model(x_adv)) summed over the batch, for ``attacks.pgd`` (PGD follows
    its gradient's sign, so its scale does not matter).

    Its target is the logits of a teacher on the clean input (stage II's sample-level
    adversary, KL(T_rob(x) || S(x_adv))) or of the model itself (TRADES).
    """

    def loss(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
        return kl_divergence(target_logits, logits, tau) * logits.shape[0]

    return loss


def one_hot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """L_oh = CE(T(x), argmax T(x)) (DAFL): pseudo images the teacher classifies confidently.

    Reduction: mean over the batch. Magnitude: in [0, ln K]; about 0.7 at the start on digits, falling
    towards 0 as G learns."""
    return F.cross_entropy(teacher_logits, teacher_logits.argmax(dim=1))


def adversarial_loss(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """L_adv = -KL(T(x) || S(x)) (DFAD-style data-level adversary): G seeks disagreement.

    Reduction: ``kl_divergence``'s (batch mean). Magnitude: about -0.6 at the start, unbounded below
    (hence its small weights: lambda_adv 0.05, lambda_gen 0.003)."""
    return -kl_divergence(teacher_logits, student_logits, tau)


def information_entropy_loss(teacher_logits: torch.Tensor, base: float | None = None) -> torch.Tensor:
    """L_ie = -H(mean over the batch of softmax T(x)): minimising it balances classes. The entropy is in
    nats (DERD, docs/methods.md); DAFL's code takes it in base 10 (``base=10``), 1/ln 10 of it.

    Reduction: one value of the batch-mean distribution. Magnitude: in [-ln K, 0] (-2.30 for 10 balanced
    classes, -4.61 for 100); about -1.8 at the start on digits."""
    mean_prob = F.softmax(teacher_logits, dim=1).mean(dim=0)
    neg_entropy = (mean_prob * torch.log(mean_prob + 1e-12)).sum()
    return neg_entropy if base is None else neg_entropy / math.log(base)


def diversity_loss(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L_d = -mean(|G(z1)-G(z2)|_1 / |z1-z2|_1) over the batch split into halves (mode seeking).

    The L1 distances are per-element means, so the ratio does not grow with image size.

    Reduction: mean over the batch's pairs of a ratio of element means. Magnitude: about -0.08 at the
    start (sigmoid outputs move little per unit of noise), more negative as G spreads its images.
    """
    half = z.shape[0] // 2
    if half == 0:
        return z.new_zeros(())
    dx = (x[:half] - x[half : 2 * half]).abs().flatten(1).mean(dim=1)
    dz = (z[:half] - z[half : 2 * half]).abs().flatten(1).mean(dim=1)
    return -(dx / (dz + 1e-8)).mean()


def consistency_loss(clean_logits: torch.Tensor, adv_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """L_cons = KL(S(x) || S(x_adv)): the student's clean and adversarial views agree.

    Reduction: ``kl_divergence``'s (batch mean). Magnitude: 0 to a few tenths (the PGD's effect on S)."""
    return kl_divergence(clean_logits, adv_logits, tau)


def agreeing_adversarial_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """CMI's L_adv = -mean over the batch of [argmax S = argmax T] * KL(T(x) || S(x)): the adversary
    pushes only on images where the student still agrees with the teacher.

    Reduction: KL summed over classes, mean over the whole batch (disagreeing images count as 0).
    Magnitude: 0 while the student agrees nowhere, down to about -KL's batch mean (-0.6) when it agrees everywhere."""
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    kl = F.kl_div(F.log_softmax(student_logits, 1), F.softmax(teacher_logits, 1), reduction="none").sum(1)
    return -(agree * kl).mean()


def target_class_loss(teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE(T(x), y) for drawn target classes y (CMI's class-conditional form of L_oh; GDFQ's one-hot loss).

    Reduction: mean over the batch. Magnitude: about ln K at the start (2.3-2.6 on 10 classes: the drawn
    class is random for an untrained G), towards 0 as G renders its classes."""
    return F.cross_entropy(teacher_logits, targets)


def l1_discrepancy(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """mean |T(x) - S(x)| over batch and classes (DFAD's model discrepancy on logits).

    Reduction: element mean over batch x classes. Magnitude: in logit units, about 0.9 at the start on digits
    (it grows with the teachers' logit scale)."""
    return (teacher_logits - student_logits).abs().mean()


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """L_a = -mean |f_T(x)| over batch and feature dimensions (DAFL): features a real image would excite.

    Reduction: element mean over batch x features. Magnitude: minus the teacher's mean activation, about
    -0.8 at the start on digits; unbounded below."""
    return -features.abs().mean()


def attention_map(activation: torch.Tensor) -> torch.Tensor:
    """ZSKT's spatial attention: channel mean of squared activations, flattened, L2-normalised per image."""
    return F.normalize(activation.float().pow(2).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(
    student_acts: list[torch.Tensor], teacher_acts: list[torch.Tensor]
) -> torch.Tensor:
    """sum over matched layers of mean_{b,j} (a_S - a_T)^2 (ZSKT's attention transfer, beta outside).

    Reduction: element mean over batch x positions per layer, summed over layers. Magnitude: small, about
    0.02 on digits (a_S, a_T are unit vectors per image), hence ZSKT's beta = 250."""
    total = student_acts[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_acts, teacher_acts):
        total = total + (attention_map(s) - attention_map(t)).pow(2).mean()
    return total


def contrastive_loss(
    anchors: torch.Tensor, keys: torch.Tensor, tau: float, current: int | None = None
) -> torch.Tensor:
    """CMI's InfoNCE instance discrimination (contrastive.py 320-326): row i of ``anchors`` must pick row i
    of ``keys`` among all keys; the keys are detached (the head and the generator learn through the
    anchors only). Both are L2-normalised embeddings. With ``current`` (the current batch's rows
    first, memory-bank rows after), the loss is the mean over the current rows plus the mean over
    the bank's, as CMI sums them.

    Reduction: cross-entropy per anchor row, mean over rows (two means summed with ``current``). Magnitude:
    up to about ln(number of keys) (ln 128 = 4.9 per mean at the start), falling as the views separate."""
    logits = anchors @ keys.detach().t() / tau
    per_row = F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device), reduction="none")
    if current is None or current >= len(anchors):
        return per_row.mean()
    return per_row[:current].mean() + per_row[current:].mean()


class Hooks:
    """Forward hooks that record only inside ``recording()`` (other forwards of the model pay nothing)."""

    def __init__(self) -> None:
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.active = False

    @contextlib.contextmanager
    def recording(self) -> Iterator["Hooks"]:
        """Record the forward passes inside. They run eagerly even in a compiled model: compiled code does
        not reliably replay the hooks' Python side effects (seen with PyTorch 2.14: a recording pass after
        a backward through the same graph recorded nothing), and nothing else depends on them."""
        self.clear()
        self.active = True
        try:
            with torch.compiler.set_stance("force_eager"):
                yield self
        finally:
            self.active = False

    def clear(self) -> None:
        raise NotImplementedError

    def __deepcopy__(self, memo: dict) -> "Hooks":
        """A copied model (a folded or compiled teacher) keeps the entries of hook sets still registered on
        its original; they stay this set, which records only while its own run records."""
        return self

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class BatchNormStatistics(Hooks):
    """Hooks on every BatchNorm layer of a model, for L_bn (DeepInversion) and CMI's features.

    While recording, each hook adds the distance between the batch statistics of the layer's
    input and the layer's running statistics, and (``keep_features``) the per-image channel
    means of that input.
    """

    def __init__(self, model: nn.Module, keep_features: bool = False) -> None:
        super().__init__()
        self.keep_features = keep_features
        self.terms: list[torch.Tensor] = []
        self.features: list[torch.Tensor] = []
        self.handles = [
            m.register_forward_hook(self._hook)
            for m in model.modules()
            if isinstance(m, (*BATCHNORMS, FoldedBatchNorm))
        ]
        if not self.handles:
            raise ValueError("L_bn needs a teacher with BatchNorm layers")

    def _hook(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if not self.active:
            return None
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        folded = isinstance(
            module, FoldedBatchNorm
        )  # x is the folded convolution's output: recover the BN input's
        if folded:
            mean, var = module.input_mean(mean), module.input_var(var)
        self.terms.append(
            torch.linalg.vector_norm(mean - module.running_mean, 2)
            + torch.linalg.vector_norm(var - module.running_var, 2)
        )
        if self.keep_features:
            per_image = x.mean(dim=list(range(2, x.dim()))) if x.dim() > 2 else x
            self.features.append(module.input_mean(per_image) if folded else per_image)
        if (
            folded
        ):  # the statistics keep the folded convolution's output: an in-place ReLU after must not change it
            return output.clone()
        return None

    def clear(self) -> None:
        self.terms, self.features = [], []

    def loss(self) -> torch.Tensor:
        """L_bn = sum over layers of ||mu(x) - mu||_2 + ||var(x) - var||_2 of the recorded forward pass.

        Reduction: L2 norm over channels, *summed* over BN layers (DeepInversion's form). Magnitude: grows
        with depth and width: about 5 on a digits teacher with two BN layers at a fresh generator, one such
        term per BN layer on deeper teachers (a ResNet-18 has 20), each larger on wider layers; hence weights of 1e-5 (DERD) to 1e-3 (GDFQ's 0.1, which weighs a mean
        over layers of per-channel MSEs, converted: derd/methods/gdfq.py)."""
        if not self.terms:
            raise RuntimeError("no forward pass recorded")
        return torch.stack(self.terms).sum()

    def feature_vector(self) -> torch.Tensor:
        """The recorded per-image channel means of every BN input, concatenated (CMI's features)."""
        return torch.cat(self.features, dim=1)


class PenultimateFeatures(Hooks):
    """The input of a classifier's last linear layer (DAFL's f_T), recorded while recording."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("DAFL's activation loss needs a model that ends with a linear layer")
        self.features: torch.Tensor | None = None
        self.handles = [linears[-1].register_forward_hook(self._hook)]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self.active:
            self.features = inputs[0].flatten(1)

    def clear(self) -> None:
        self.features = None


class ResolutionActivations(Hooks):
    """The output of a model's last residual block at each spatial size (ZSKT's attention layers).

    ZSKT's WRNs return the outputs of their three groups of blocks (the residual sums, before any
    BatchNorm-ReLU; ZeroShotKnowledgeTransfer ``models/wresnet.py`` 88-99). The rule that gives
    exactly those and works across the registry: hook every residual block (``RESIDUAL_BLOCKS``)
    and keep, per spatial size, the last one to finish (modules finish in forward order). A model
    without residual blocks (the digits CNNs) gives its last 4-D activation at each size.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.by_size: dict[tuple[int, int], torch.Tensor] = {}
        blocks = [m for m in model.modules() if isinstance(m, residual_blocks())]
        candidates = blocks or [m for m in model.modules() if m is not model and not isinstance(m, Normalize)]
        self.handles = [m.register_forward_hook(self._hook) for m in candidates]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self.active and isinstance(output, torch.Tensor) and output.dim() == 4:
            self.by_size[tuple(output.shape[2:])] = output

    def clear(self) -> None:
        self.by_size = {}


def matched_activations(student: ResolutionActivations, teacher: ResolutionActivations) -> tuple[list, list]:
    """The two models' activations at the spatial sizes both produce, largest first."""
    sizes = sorted(set(student.by_size) & set(teacher.by_size), reverse=True)
    return [student.by_size[s] for s in sizes], [teacher.by_size[s] for s in sizes]


def residual_blocks() -> tuple[type, ...]:
    """The residual block classes of the registry's architectures (theirs and torchvision's)."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock as TVBasicBlock
    from torchvision.models.resnet import Bottleneck

    from derd.models.classifiers import BasicBlock, PreActBlock, WideBlock

    return BasicBlock, PreActBlock, WideBlock, TVBasicBlock, Bottleneck, InvertedResidual
