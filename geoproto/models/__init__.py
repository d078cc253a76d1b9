"""Encoders (backbone registry, optional head), the checkpoint format, and the encoders geoproto ships."""

from .checkpoint import build_encoder, load_checkpoint, save_checkpoint
from .encoder import BACKBONES, DEFAULT_BACKBONE, Encoder
from .shipped import (DEFAULT_ENCODER, ConcatEncoder, build_shipped, concat_features, select_encoder,
                      shipped_names)

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "DEFAULT_ENCODER", "ConcatEncoder", "Encoder", "build_encoder",
           "build_shipped", "concat_features", "load_checkpoint", "save_checkpoint", "select_encoder",
           "shipped_names"]
