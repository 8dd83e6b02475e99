"""Models: registry, normalisation inside the model, the generator's shape and range."""

from __future__ import annotations

import pytest
import torch

from derd.errors import UserError
from derd.models import Generator, available_models, create_model

SMALL_INPUT = {
    "digits_cnn": (1, 8, 8),
    "digits_cnn_small": (1, 8, 8),
    "tv_resnet18": (3, 32, 32),
    "tv_resnet50": (3, 32, 32),
}


@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_maps_unit_images_to_logits(name):
    shape = SMALL_INPUT.get(name, (3, 32, 32))
    if name == "wrn_34_10":
        pytest.skip("46M parameters; covered by the step benchmark")
    model = create_model(name, 7, in_channels=shape[0]).eval()
    assert model(torch.rand(2, *shape)).shape == (2, 7)


def test_normalisation_lives_inside_the_model():
    model = create_model("digits_cnn_small", 10, in_channels=1, mean=(0.5,), std=(0.25,)).eval()
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(model(x), model.net((x - 0.5) / 0.25))
    assert "normalize.mean" in model.state_dict()


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown architecture 'resnet7'"):
        create_model("resnet7", 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (3, 64, 64)])
def test_generator_produces_unit_range_images_of_the_dataset_shape(shape):
    gen = Generator(shape, latent_dim=16)
    x = gen(gen.sample_noise(4))
    assert x.shape == (4, *shape) and x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize(
    "arch, shape",
    [
        ("digits_cnn", (1, 8, 8)),
        ("resnet18", (3, 32, 32)),
        ("preact_resnet18", (3, 32, 32)),
        ("tv_resnet18", (3, 64, 64)),
    ],
)
def test_a_folded_teacher_computes_the_same_logits_input_gradients_and_bn_statistics(arch, shape):
    """Folding the frozen teacher's BatchNorm into its convolutions is exact up to float rounding: logits
    within 1e-5, the same gradient with respect to the input (the generator and PGD backpropagate
    through teachers), and the same L_bn and per-image BN-input features (DeepInversion, CMI)."""
    from derd.losses import BatchNormStatistics
    from derd.models.fold import FoldedBatchNorm, fold_batchnorm

    torch.manual_seed(0)
    teacher = create_model(arch, 10, in_channels=shape[0], mean=(0.4,) * shape[0], std=(0.2,) * shape[0])
    with (
        torch.no_grad()
    ):  # trained-looking BatchNorm statistics and affine maps, not the identity of a fresh model
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    teacher.eval().requires_grad_(False)
    folded, count = fold_batchnorm(teacher, torch.rand(2, *shape))
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    assert count >= bns // 2 and sum(isinstance(m, FoldedBatchNorm) for m in folded.modules()) == count
    assert all(
        isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules() if "BatchNorm" in type(m).__name__
    )

    x = torch.rand(4, *shape, requires_grad=True)
    xf = x.detach().clone().requires_grad_(True)
    stats, stats_f = (
        BatchNormStatistics(teacher, keep_features=True),
        BatchNormStatistics(folded, keep_features=True),
    )
    with stats.recording():
        logits = teacher(x)
    with stats_f.recording():
        logits_f = folded(xf)
    assert torch.allclose(logits_f, logits, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(logits.square().sum(), x)
    (grad_f,) = torch.autograd.grad(logits_f.square().sum(), xf)
    assert torch.allclose(grad_f, grad, atol=1e-5, rtol=1e-4)
    assert torch.allclose(stats_f.loss(), stats.loss(), rtol=1e-4)
    assert torch.allclose(stats_f.feature_vector(), stats.feature_vector(), atol=1e-4, rtol=1e-4)


def test_folding_a_convolution_whose_output_is_used_twice_is_refused():
    """A BatchNorm after a convolution whose output also feeds something else cannot be folded: the check
    on an example input returns the model unfolded."""
    from derd.models.fold import fold_batchnorm

    class Branching(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            h = self.conv(x)
            return self.head((self.bn(h) + h).flatten(1))

    model = Branching()
    with torch.no_grad():
        model.bn.running_var.fill_(4.0)
    folded, count = fold_batchnorm(model.eval(), torch.rand(2, 1, 8, 8))
    assert count == 0 and isinstance(folded.bn, torch.nn.BatchNorm2d)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(folded(x), model(x))
