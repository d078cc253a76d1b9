"""Running an encoder on windows: the feature grid's geometry, the device, batching precision.

Every window is encoded with a reflected context margin, padded so that each stride-2 stage of the
trunk sees an even size (a multiple of ``GRID``), as the weights saw in training. The features
returned then sit on a registered grid: cell ``(i, j)`` describes the window's pixel block
``[8i, 8i + 8) x [8j, 8j + 8)`` (``FEATURE_STRIDE``), whatever the window's size. Matching and
prototype pooling (``fewshot``) rely on that: they upsample by exactly 8 and crop, so that support and
query features land on the pixels they describe. Training goes through the same function, so a trained
encoder sees windows as ``segment`` does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GeoprotoError
from ..fewshot import FEATURE_STRIDE

# Context around each window (real pixels where the raster has them, reflected beyond its edges): the
# features near a window's edge then match those of whole-raster processing, so overlapping windows
# agree and the convolutions' zero padding never mislabels a band along the edges. A multiple of
# FEATURE_STRIDE, so the margin is a whole number of cells.
CONTEXT_MARGIN = 32
# The coarsest stride of the trunks' stages: inputs padded to a multiple of it keep every stage even.
GRID = 16


def padded_extent(size: int) -> int:
    """The encoded extent of a ``size``-pixel window: margin before, margin and rounding after."""
    return -(-(size + 2 * CONTEXT_MARGIN) // GRID) * GRID


def window_features(encoder: nn.Module, images: torch.Tensor, context: int = 0) -> torch.Tensor:
    """Features of windows on the registered grid: B x C x ceil(H/8) x ceil(W/8) for H x W windows.

    ``images`` (B x 3 x (H + 2 context) x (W + 2 context), in [0, 1]) carry ``context`` pixels of real
    surroundings on each side (``RasterSource.read``); the rest of the margin is reflected. Differentiable:
    training calls it too.
    """
    if not 0 <= context <= CONTEXT_MARGIN:
        raise ValueError(f"context must be between 0 and {CONTEXT_MARGIN} pixels")
    height, width = images.shape[-2] - 2 * context, images.shape[-1] - 2 * context
    before = CONTEXT_MARGIN - context
    pad_bottom = padded_extent(height) - height - CONTEXT_MARGIN - context
    pad_right = padded_extent(width) - width - CONTEXT_MARGIN - context
    features = encoder(reflect(images, [before, pad_right, before, pad_bottom]))
    first = CONTEXT_MARGIN // FEATURE_STRIDE
    rows, cols = -(-height // FEATURE_STRIDE), -(-width // FEATURE_STRIDE)
    return features[..., first:first + rows, first:first + cols]


def reflect(images: torch.Tensor, pads: list[int]) -> torch.Tensor:
    """Reflection padding (left, right, top, bottom) of any width: torch reflects at most size - 1
    pixels at once, so wider margins around small windows are reflected in steps."""
    while any(pads):
        height, width = images.shape[-2:]
        limits = [width - 1, width - 1, height - 1, height - 1]
        step = [min(pad, limit) for pad, limit in zip(pads, limits)]
        images = F.pad(images, step, mode="reflect")
        pads = [pad - done for pad, done in zip(pads, step)]
    return images


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GeoprotoError("cuda: no CUDA device is available (torch.cuda.is_available() is False)", param="device")
    if name not in ("cpu", "cuda"):
        raise GeoprotoError(f"{name!r}: choose auto, cpu or cuda", param="device")
    return torch.device(name)


def default_batch_size(device: torch.device) -> int:
    """Windows per model call: batches pay off on a GPU; on a CPU one window already keeps every core
    busy, and larger batches only add memory traffic."""
    return 16 if device.type == "cuda" else 1


class FeatureExtractor:
    """Runs the encoder on batches of windows: bf16 autocast and channels_last on CUDA, float32 on CPU."""

    def __init__(self, encoder: nn.Module, device: torch.device):
        self.device = device
        self.encoder = encoder.to(device).eval()
        if device.type == "cuda":
            self.encoder = self.encoder.to(memory_format=torch.channels_last)

    @property
    def out_channels(self) -> int:
        return self.encoder.out_channels

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor, context: int = 0) -> torch.Tensor:
        """Features of a batch of windows (see ``window_features``): a host array, or a tensor already on
        ``device`` (``to_device``: a batch encoded several times goes up once)."""
        batch = self.to_device(images)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return window_features(self.encoder, batch, context).float()
        return window_features(self.encoder, batch, context)

    def to_device(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``images`` on the encoder's device: a host array through pinned memory on CUDA; a tensor as it is."""
        if isinstance(images, torch.Tensor):
            return images.to(self.device)
        batch = torch.from_numpy(images)
        return batch.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else batch
