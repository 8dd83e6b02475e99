"""Models: registry, normalisation inside the model, the generator's shape and range."""
from __future__ import annotations

import pytest
import torch

from derd.errors import UserError
from derd.models import Generator, available_models, create_model

SMALL_INPUT = {"digits_cnn": (1, 8, 8), "digits_cnn_small": (1, 8, 8), "tv_resnet18": (3, 32, 32), "tv_resnet50": (3, 32, 32)}


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
