"""The one checkpoint format ``train`` writes and ``segment`` reads, and the encoder builder.

A checkpoint is a plain dict of tensors, strings and numbers saved with ``torch.save``:
``format``, ``version``, ``backbone``, ``with_head``, ``state_dict`` (the whole encoder), ``mean``/``std``
(input normalisation), ``feature_layers`` and free-form ``metadata`` (training command, data, seed).
Checkpoints are untrusted input, so they are only ever read with ``weights_only=True``: a file carrying
arbitrary pickled objects is refused without running them.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile

import torch

from ..errors import GeoprotoError, no_such_file, renamed_params
from ..validation import check_memory
from .encoder import BACKBONES, DEFAULT_BACKBONE, Encoder

FORMAT = "geoproto-checkpoint"
VERSION = 1
FEATURE_LAYERS = {
    "efficientnet-lite0": ["_blocks.4", "_blocks.10"],
    "resnet50": ["layer2", "layer3"],
    "vgg16": ["features.22", "features.29"],
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# torch.save stores tensors uncompressed: a weights file that inflates to many times its size is a
# zip bomb, refused from the sizes its zip directory declares before anything is read.
MAX_INFLATION = 4
INFLATION_SLACK_BYTES = 16 << 20


def _check_declared_size(path: str) -> None:
    if not zipfile.is_zipfile(path):
        return  # torch's legacy (pre-1.6) format: read as it is
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(max(0, entry.file_size) for entry in archive.infolist())
            members = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise GeoprotoError(f"{path}: not a readable PyTorch weights file ({_first_line(exc)})") from None
    if {"header.npy", "feature_sum.npy"} <= members:  # torch would say "file in archive is not in a subdirectory"
        raise GeoprotoError(f"{path}: is a prototype file, not weights (segment --prototypes reads it)")
    size = os.path.getsize(path)
    if declared > MAX_INFLATION * size + INFLATION_SLACK_BYTES:
        raise GeoprotoError(f"{path}: declares {declared / 2 ** 20:.0f} MiB of contents in a {size / 2 ** 20:.1f} MiB "
                            f"file; refused (weights files are stored uncompressed)")
    check_memory(declared, f"{path}: loading", "this is not a weights file this machine can load")


def safe_load(path: str) -> object:
    if not os.path.isfile(path):
        raise no_such_file(path)
    _check_declared_size(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc), re.IGNORECASE)
        if found:
            raise GeoprotoError(f"{path}: refused to load: the file calls {found.group(1)}; a checkpoint must "
                                f"hold weights only") from None
        raise GeoprotoError(f"{path}: not a readable PyTorch weights file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError) as exc:
        raise GeoprotoError(f"{path}: not a readable PyTorch weights file ({_first_line(exc)})") from None


def save_checkpoint(encoder: Encoder, path: str, metadata: dict | None = None, half: bool = False) -> None:
    """Write ``encoder`` in the checkpoint format (atomically: temporary file, then rename); ``half``
    stores convolution weights in float16 (loaded back as float32). BatchNorm statistics stay float32:
    their variances underflow float16 and would change the features."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": encoder.backbone,
        "with_head": encoder.head is not None,
        "mean": encoder.mean.flatten().tolist(),
        "std": encoder.std.flatten().tolist(),
        "feature_layers": FEATURE_LAYERS[encoder.backbone],
        "state_dict": {k: v.detach().cpu().half() if half and v.dim() == 4 else v.detach().cpu()
                       for k, v in encoder.state_dict().items()},
        "metadata": metadata or {},
    }
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str) -> tuple[Encoder, dict]:
    """Build the encoder a checkpoint describes; returns it with the checkpoint's metadata."""
    payload = safe_load(path)
    if isinstance(payload, dict) and {"encoder", "optimizer", "iteration"} <= set(payload):
        raise GeoprotoError(f"{path}: is the training state train resumes from, not a checkpoint; give the run's "
                            f"model.pt or best.pt", param="checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GeoprotoError(f"{path}: not a geoproto checkpoint (ImageNet weights are initial weights, not a "
                            f"checkpoint)", param="checkpoint")
    if payload.get("version") != VERSION:
        raise GeoprotoError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    backbone = payload.get("backbone")
    if backbone not in BACKBONES:
        raise GeoprotoError(f"{path}: unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")
    encoder = Encoder(backbone, with_head=bool(payload.get("with_head")))
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GeoprotoError(f"{path}: checkpoint has no state_dict of tensors")
    try:
        encoder.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        encoder.mean.copy_(torch.tensor(payload["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        encoder.std.copy_(torch.tensor(payload["std"], dtype=torch.float32).view(1, 3, 1, 1))
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise GeoprotoError(f"{path}: weights do not fit the {backbone} encoder ({_first_line(exc)})") from None
    metadata = payload.get("metadata")
    return encoder.eval(), dict(metadata) if isinstance(metadata, dict) else {}


def build_encoder(backbone: str = DEFAULT_BACKBONE, checkpoint: str | None = None,
                  init_weights: str | None = None, with_head: bool = False) -> tuple[Encoder, dict]:
    """A checkpoint's encoder if given, else ImageNet trunk weights; a head (randomly initialised) only
    when asked for, i.e. to be trained. The description names the file (a checkpoint's metadata does not)."""
    if checkpoint is not None:  # an empty path is refused as one, not taken for none
        with renamed_params({None: "checkpoint"}):
            encoder, metadata = load_checkpoint(checkpoint)
        return encoder, {**metadata, "checkpoint": os.path.basename(checkpoint)}
    if backbone not in BACKBONES:
        raise GeoprotoError(f"unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})", param="backbone")
    spec = BACKBONES[backbone]
    weights = init_weights if init_weights is not None else spec.shipped_weights() if spec.shipped_weights else None
    if weights is None:
        raise GeoprotoError(
            f"the {backbone} encoder ships without weights: give ImageNet weights in torchvision's layout, "
            f"or a trained checkpoint", param="init_weights")
    with renamed_params({None: "init_weights" if init_weights is not None else None}):
        state = safe_load(weights)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise GeoprotoError(f"{weights}: not a state dict")
    encoder = Encoder(backbone, with_head=with_head)
    try:
        encoder.trunk.load_imagenet(state)
    except RuntimeError as exc:
        raise GeoprotoError(f"{weights}: weights do not fit the {backbone} trunk ({_first_line(exc)})") from None
    return encoder.eval(), {"backbone": backbone, "weights": os.path.basename(weights), "trained": False}
