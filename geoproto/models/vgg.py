"""VGG-16 trunk at stride 8 (the paper's alternative encoder), DeepLab style.

Layer indices match torchvision's ``vgg16().features`` so its ImageNet weights load unchanged: pool4
becomes a no-op and the conv5 block is dilated by 2, keeping conv4_3 and conv5_3 at 1/8 resolution.
"""

from __future__ import annotations

import torch
from torch import nn

_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
CONV4_3_RELU = 22
CONV5_3_RELU = 29


class VGG16(nn.Module):
    """Returns ``[conv4_3, conv5_3]`` features, both at stride 8."""

    out_channels = (512, 512)
    stride = 8
    frozen_prefixes = tuple(f"features.{i}." for i in range(17))

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        pools = 0
        for item in _CONFIG:
            if item == "M":
                pools += 1
                # ceil_mode keeps the output at ceil(H / 8), aligned with the other backbones.
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True) if pools <= 3 else nn.Identity())
                continue
            dilation = 2 if pools >= 4 else 1
            layers += [nn.Conv2d(cin, item, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            cin = item
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in (CONV4_3_RELU, CONV5_3_RELU):
                outputs.append(x)
        return outputs

    def load_imagenet(self, state_dict: dict) -> None:
        trunk = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        self.load_state_dict(trunk, strict=True)
