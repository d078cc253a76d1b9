"""Encoders (backbone registry, optional head) and the checkpoint format."""

from .checkpoint import build_encoder, load_checkpoint, save_checkpoint
from .encoder import BACKBONES, DEFAULT_BACKBONE, Encoder

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "Encoder", "build_encoder", "load_checkpoint", "save_checkpoint"]
