"""Classifier networks: CIFAR-style ResNets, WRN, MobileNetV2, torchvision ResNets, digits CNNs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from derd.models.registry import register


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register("digits_cnn")
def digits_cnn(num_classes: int, in_channels: int = 1) -> nn.Module:
    """Teacher-sized CNN for 8x8 digits (about 100k parameters, BatchNorm for L_bn)."""
    return nn.Sequential(
        *_conv_bn(in_channels, 32),
        *_conv_bn(32, 64),
        nn.MaxPool2d(2),
        *_conv_bn(64, 128),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 4, num_classes),
    )


@register("digits_cnn_small")
def digits_cnn_small(num_classes: int, in_channels: int = 1) -> nn.Module:
    """Student-sized CNN for 8x8 digits (about 14k parameters)."""
    return nn.Sequential(
        *_conv_bn(in_channels, 16),
        nn.MaxPool2d(2),
        *_conv_bn(16, 32),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4, 64),
        nn.ReLU(inplace=True),
        nn.Linear(64, num_classes),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + shortcut


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (3x3 stem, no max-pool), as used across robustness papers."""

    def __init__(
        self, block: type, num_blocks: list[int], num_classes: int, in_channels: int, preact: bool
    ) -> None:
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64) if not preact else nn.Identity()
        layers, cin = [], 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            for j in range(n):
                layers.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.bn_final = nn.BatchNorm2d(512) if preact else nn.Identity()
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layers(out)
        if self.preact:
            out = F.relu(self.bn_final(out))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register("resnet18")
def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, preact=False)


@register("preact_resnet18")
def preact_resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarResNet(PreActBlock, [2, 2, 2, 2], num_classes, in_channels, preact=True)


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-width for 32x32 inputs (Zagoruyko & Komodakis), the usual robust teacher."""

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for i, w in enumerate(widths[1:]):
            for j in range(n):
                layers.append(WideBlock(cin, w, (1 if i == 0 else 2) if j == 0 else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register("wrn_34_10")
def wrn_34_10(num_classes: int, in_channels: int = 3) -> nn.Module:
    return WideResNet(34, 10, num_classes, in_channels)


@register("mobilenet_v2")
def mobilenet_v2(num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision's MobileNetV2 with a stride-1 stem, the CIFAR adaptation."""
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    net = tv_mobilenet_v2(weights=None, num_classes=num_classes)
    net.features[0][0] = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
    return net


def _torchvision_resnet(builder, num_classes: int, in_channels: int) -> nn.Module:
    """A torchvision ImageNet ResNet (no pretrained weights), its stem widened or narrowed to ``in_channels``."""
    net = builder(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return net


@register("tv_resnet18")
def tv_resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision's ImageNet ResNet-18 (for ImageNet-100)."""
    from torchvision.models import resnet18

    return _torchvision_resnet(resnet18, num_classes, in_channels)


@register("tv_resnet50")
def tv_resnet50(num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision's ImageNet ResNet-50 (for ImageNet-100)."""
    from torchvision.models import resnet50

    return _torchvision_resnet(resnet50, num_classes, in_channels)
