"""ResNet-50 trunk as the paper uses it: block-2 and a dilated block-3, both at 1/8 resolution.

Module names match torchvision's ``resnet50`` so a user's ImageNet ``.pth`` loads unchanged
(its ``layer4`` and ``fc`` entries are dropped: the paper does not use them).
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1, downsample: bool = False):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if downsample else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _layer(cin: int, width: int, blocks: int, stride: int, dilation: int, first_dilation: int) -> nn.Sequential:
    # torchvision's replace_stride_with_dilation: the first block keeps the previous dilation.
    layers = [Bottleneck(cin, width, stride, first_dilation, downsample=True)]
    layers += [Bottleneck(width * 4, width, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    """Returns ``[layer2, layer3]`` features, both at stride 8 (layer3 dilated by 2)."""

    out_channels = (512, 1024)
    stride = 8
    frozen_prefixes = ("conv1.", "bn1.", "layer1.")

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 3, stride=1, dilation=1, first_dilation=1)
        self.layer2 = _layer(256, 128, 4, stride=2, dilation=1, first_dilation=1)
        self.layer3 = _layer(512, 256, 6, stride=1, dilation=2, first_dilation=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        return [c2, self.layer3(c2)]

    def load_imagenet(self, state_dict: dict) -> None:
        trunk = {k: v for k, v in state_dict.items() if not k.startswith(("layer4.", "fc."))}
        self.load_state_dict(trunk, strict=True)
