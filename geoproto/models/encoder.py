"""The shared support/query encoder: a registered trunk, its input normalisation, and an optional head.

Every trunk returns two feature maps, the first at 1/8 of the input; the second is at 1/8 too (ResNet-50
and VGG-16, dilated) or at 1/16 and upsampled bilinearly to the first (EfficientNet-Lite0). With a
trained head (the paper's 3x3 conv to 256 channels) they are concatenated and projected. Without one
(ImageNet weights, no episodic training) each map is L2-normalised per pixel and then concatenated, so
both stages weigh equally in the cosine similarity; a randomly initialised head would only blur ImageNet
features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet import EfficientNetLite0
from .resnet import ResNet50
from .vgg import VGG16

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_CHANNELS = 256


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a trunk and feed it: the registry's entry for one backbone name."""

    build: Callable[[], nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Where ImageNet weights come from when the user names no file (None: the user must bring them).
    shipped_weights: Callable[[], str] | None = None


def _lite0_weights() -> str:
    from .efficientnet import shipped_weights_path

    return shipped_weights_path()


BACKBONES: dict[str, BackboneSpec] = {
    # TF-Lite models expect (x - 127) / 128.
    "efficientnet-lite0": BackboneSpec(EfficientNetLite0, (0.498,) * 3, (0.502,) * 3, _lite0_weights),
    "resnet50": BackboneSpec(ResNet50, IMAGENET_MEAN, IMAGENET_STD),
    "vgg16": BackboneSpec(VGG16, IMAGENET_MEAN, IMAGENET_STD),
}
DEFAULT_BACKBONE = "efficientnet-lite0"


class Encoder(nn.Module):
    """Maps images in [0, 1] (B x 3 x H x W) to features at 1/8 resolution (B x C x ceil(H/8) x ...)."""

    def __init__(self, backbone: str, with_head: bool):
        super().__init__()
        spec = BACKBONES[backbone]
        self.backbone = backbone
        self.trunk = spec.build()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        channels = sum(self.trunk.out_channels)
        self.head = (
            nn.Sequential(nn.Conv2d(channels, HEAD_CHANNELS, 3, padding=1), nn.ReLU(inplace=True))
            if with_head
            else None
        )
        self.out_channels = HEAD_CHANNELS if with_head else channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        stages = self.trunk((images - self.mean) / self.std)
        size = stages[0].shape[-2:]
        stages = [s if s.shape[-2:] == size else F.interpolate(s, size, mode="bilinear", align_corners=False)
                  for s in stages]
        if self.head is not None:
            return self.head(torch.cat(stages, 1))
        return torch.cat([F.normalize(s, dim=1) for s in stages], 1)
