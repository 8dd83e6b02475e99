"""The DCGAN-style generator of data-free distillation (DAFL, DFAD), sized from the image shape."""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    """Noise z ~ N(0, I) to pseudo images in [0, 1].

    A linear layer makes a small feature map (side at most 8), then nearest-neighbour
    upsampling + conv + BatchNorm blocks double it up to the image side; a sigmoid keeps
    pixels in [0, 1] (the models normalise inside themselves).
    """

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int = 100, width: int = 128) -> None:
        super().__init__()
        channels, side, _ = image_shape
        self.latent_dim = latent_dim
        self.image_shape = image_shape
        self.init_side, n_up = side, 0
        while self.init_side > 8 and self.init_side % 2 == 0:
            self.init_side //= 2
            n_up += 1
        if n_up == 0:  # tiny images (digits): still one upsampling for spatial structure
            if side % 2:
                raise ValueError(f"image side {side} must be even")
            self.init_side, n_up = side // 2, 1
        self.fc = nn.Linear(latent_dim, width * self.init_side**2)
        self.width = width
        blocks: list[nn.Module] = [nn.BatchNorm2d(width)]
        cin = width
        for i in range(n_up):
            cout = max(width // (2 ** max(0, i - 1)), 32) if i > 0 else width
            blocks += [
                nn.Upsample(scale_factor=2),
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            cin = cout
        blocks += [nn.Conv2d(cin, channels, 3, 1, 1), nn.Sigmoid()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.fc(z).view(z.shape[0], self.width, self.init_side, self.init_side)
        return self.blocks(out)

    def sample_noise(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=device)


class ConditionalGenerator(Generator):
    """(z, y) to pseudo images of class y: the noise times a learnt embedding of the label, then the
    generator above (GDFQ's conditional generator, Xu et al. ECCV 2020: ``gen_input =
    torch.mul(self.label_emb(labels), z)`` with ``label_emb = nn.Embedding(n_classes, latent_dim)``)."""

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, latent_dim: int = 100, width: int = 128
    ) -> None:
        super().__init__(image_shape, latent_dim, width)
        self.label_embedding = nn.Embedding(num_classes, latent_dim)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return super().forward(self.label_embedding(labels) * z)
