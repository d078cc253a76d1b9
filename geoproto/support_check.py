"""``check-support`` and ``--encoder auto``: what the user's own polygons say, by cross-validation.

The cross-validation itself is ``crossval``; this module decides what to run it on (the support
windows of the raster, the encoders to compare) and returns the report and the encoder chosen.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from .errors import GeoprotoError
from .inputs import Inputs
from .models.runtime import GRID, FeatureExtractor, default_batch_size, resolve_device
from .raster import path_exists
from .support import is_raster
from .tiling import tile_grid
from .validation import check_number

if TYPE_CHECKING:
    from .segment import SegmentOptions

DEFAULT_FOLDS = 5
MAX_FOLDS = 100
# Polygons closer than this share a fold: adjacent polygons (the two halves of one roof, a road cut in
# pieces) would otherwise predict each other and flatter the score.
DEFAULT_GROUP_DISTANCE_PX = 32.0


def check_support(image: str, support: str, options: SegmentOptions | None = None, folds: int = DEFAULT_FOLDS,
                  group_distance: float | None = None) -> dict:
    """How well the support polygons separate their classes, by spatially grouped k-fold cross-validation."""
    from .pipeline import check_window_memory
    from .segment import SegmentOptions, check_tiling, options_inputs

    options = options or SegmentOptions()
    check_tiling(options)
    folds = check_number("folds", folds, 2, MAX_FOLDS, integer=True)
    if group_distance is not None:
        check_number("group_distance", group_distance, 0)
    if path_exists(support) and is_raster(support):
        raise GeoprotoError(f"{support}: cross-validation needs support polygons (a vector file), not a label "
                            f"raster", param="support")
    device = resolve_device(options.device)
    batch_size = options.batch_size or default_batch_size(device)
    with options_inputs(image, support, options) as inputs:
        check_window_memory(options.tile_size, batch_size, len(inputs.classes.ids))
        _, encoder_info, result = choose_encoder(inputs, options, device, batch_size, True, folds,
                                                 group_distance or DEFAULT_GROUP_DISTANCE_PX)
    return {"input": image, "support": support, "encoder": encoder_info, **result}


def choose_encoder(inputs: Inputs, options: SegmentOptions, device: torch.device, batch_size: int, check: bool,
                   folds: int = DEFAULT_FOLDS, group_distance: float = DEFAULT_GROUP_DISTANCE_PX):
    """The encoder to segment with (a FeatureExtractor), its description, and the support's
    cross-validation report (None unless ``check`` or ``auto`` ran it).

    An explicit encoder (a checkpoint, a backbone, trunk weights) or the shipped ``options.encoder`` is
    used as asked; ``auto`` cross-validates every shipped encoder on the support polygons and keeps the
    default unless another reliably beats it (``crossval.compare_encoders``; the support windows are
    read once for all of them). ``check`` asks for the cross-validation report of a fixed encoder too
    (it encodes the support windows once more). A label raster cannot be cross-validated: ``auto`` then
    uses the default encoder.
    """
    from . import crossval
    from .models import DEFAULT_ENCODER, build_shipped, concat_features, select_encoder, shipped_names
    from .models.shipped import is_explicit

    explicit = is_explicit(options.backbone, options.checkpoint, options.init_weights)
    candidates = shipped_names() if options.encoder == "auto" and not explicit else []
    default = DEFAULT_ENCODER if DEFAULT_ENCODER in candidates or not candidates else candidates[0]
    if not candidates:
        encoder, info = select_encoder(options.encoder, options.backbone, options.checkpoint, options.init_weights)
    polygons = inputs.polygons
    if polygons is None or not (candidates or check):
        if candidates:  # no polygons to cross-validate: the default encoder
            encoder, info = build_shipped(default)
            info = {**info, "auto": f"support is a label raster: no cross-validation, used the default {default}"}
        return FeatureExtractor(encoder, device), info, None

    src = inputs.support_source.dataset
    tiles = tile_grid(src.height, src.width, options.tile_size, options.overlap, GRID)
    windows = crossval.read_support_windows(inputs.support_source, polygons, inputs.classes, tiles,
                                            options.tile_size, folds, group_distance)
    num_classes = len(inputs.classes.ids)

    def check_with(features):
        confusion = crossval.cross_validate(features, windows, num_classes, folds, options.alpha)
        return confusion, crossval.report(confusion, inputs.classes, polygons, windows.folds)

    if not candidates:
        extract = FeatureExtractor(encoder, device)
        return extract, info, check_with(crossval.encode_windows(extract, windows, batch_size))[1]
    built, features, confusions, reports = {}, {}, {}, {}
    for name in candidates:
        parts = name.split("+")
        if len(parts) == 1:
            built[name] = build_shipped(name)
            features[name] = crossval.encode_windows(FeatureExtractor(built[name][0], device), windows, batch_size)
        else:  # a concatenation reuses its parts' features: no extra encoding
            features[name] = concat_features([features[part] for part in parts])
        confusions[name], reports[name] = check_with(features[name])
    choice = crossval.compare_encoders(confusions, default)
    picked = choice["picked"]
    encoder, info = built[picked] if picked in built else build_shipped(picked)
    if options.progress:
        warnings.warn(f"encoder auto {choice['reason']}")
    return FeatureExtractor(encoder, device), {**info, "auto": choice}, reports[picked]
