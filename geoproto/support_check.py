"""``check-support`` and ``--encoder auto``: what the user's own polygons say, by cross-validation.

The cross-validation itself is ``crossval``; this module decides what to run it on (the support
windows of every raster the support is fitted on, the encoders to compare) and returns the report and
the encoder chosen.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING

import torch

from .classes import ClassInfo, refuse_one_class
from .errors import GeoprotoError
from .heads import feature_extractor
from .inputs import SupportLabels, stretch_inputs, support_pairs
from .models.runtime import GRID, FeatureExtractor, default_batch_size, resolve_device
from .raster import RasterSource, path_exists
from .support import VectorLabels, is_raster
from .tiling import window_size
from .validation import check_number, check_path

if TYPE_CHECKING:
    from .segment import SegmentOptions

DEFAULT_FOLDS = 5
MAX_FOLDS = 100
# Polygons closer than this share a fold: adjacent polygons (the two halves of one roof, a road cut in
# pieces) would otherwise predict each other and flatter the score.
DEFAULT_GROUP_DISTANCE_PX = 32.0


def refuse_label_raster_support(support: str, param: str) -> None:
    """Cross-validation needs support polygons: a label raster is refused on a cheap open of the file, before
    any raster is read or stretched. ``param`` is what is at fault: the support given to ``check_support``,
    or the option ``check_support`` of a segmentation."""
    if path_exists(support) and is_raster(support):
        raise GeoprotoError(f"cross-validates support polygons; {support} is a label raster" if param == "check_support"
                            else f"{support}: cross-validation needs support polygons (a vector file), not a label "
                                 f"raster", param=param)


def check_support(images: str | list[str], support: str, options: SegmentOptions | None = None,
                  folds: int = DEFAULT_FOLDS, group_distance: float | None = None) -> dict:
    """How well the support polygons separate their classes, by spatially grouped k-fold cross-validation
    over the polygons on ``images`` (one raster or several, pooled as ``segment`` pools them)."""
    from .pipeline import check_window_memory
    from .segment import check_images, check_options, check_tiling, options_inputs

    options = check_options(options)
    images, support = check_images(images), check_path("support", support)
    check_tiling(options)
    folds = check_number("folds", folds, 2, MAX_FOLDS, integer=True)
    if group_distance is not None:
        check_number("group_distance", group_distance, 0)
    refuse_label_raster_support(support, "support")
    device = resolve_device(options.device)
    batch_size = options.batch_size or default_batch_size(device)
    read_files: dict = {}  # the support file, read once for every input
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(options_inputs(image, support, options, shared=len(images) > 1,
                                                     read_files=read_files)) for image in images]
        stretch = stretch_inputs(opened, options.stretch)  # as segment reads the same rasters
        supports, classes = support_pairs(opened, support)
        refuse_one_class(classes.names, support, "support")  # as segment refuses it, before any work
        # The largest window read: the tile, or the largest support raster's own if all are smaller.
        check_window_memory(max(window_size(source.dataset.height, source.dataset.width, options.tile_size, GRID)
                                for source, _ in supports), batch_size, len(classes.ids))
        _, encoder_info, result = choose_encoder(supports, classes, options, device, batch_size, True, folds,
                                                 group_distance or DEFAULT_GROUP_DISTANCE_PX)
    return {"inputs": images, "support": support, "encoder": encoder_info, "stretch": stretch,
            "orientations": options.orientations, **result}


def choose_encoder(supports: list[tuple[RasterSource, SupportLabels]] | None, classes: ClassInfo | None,
                   options: SegmentOptions, device: torch.device, batch_size: int, check: bool,
                   folds: int = DEFAULT_FOLDS, group_distance: float = DEFAULT_GROUP_DISTANCE_PX,
                   want_report: bool = True):
    """The encoder to segment with (a FeatureExtractor), its description, and the support's
    cross-validation report (None unless ``check`` or ``auto`` ran it, or without ``want_report``: a
    caller that needs the encoder alone spares the scoring variants' cross-validation).

    ``supports``: the (raster, labels) pairs the classifier is fitted on (``classifier.fit_support``'s),
    None for a prototype file; ``classes``: theirs. The cross-validation pools the polygons of every
    raster: one set of folds over all of them (``crossval.read_support_windows``).

    An explicit encoder (a checkpoint, a backbone, trunk weights) or the shipped ``options.encoder`` is
    used as asked; ``auto`` cross-validates every shipped encoder on the support polygons and keeps the
    default unless another reliably beats it (``crossval.reliable_choice``; the support windows are
    read once for all of them). ``check`` asks for the cross-validation report of a fixed encoder too
    (it encodes the support windows once more). A label raster cannot be cross-validated: ``auto`` then
    uses the default encoder. The report also says how the encoder's features should be scored
    (``report["scoring"]``: its ``scales`` and ``head`` go to ``classifier.fit_support``).
    """
    from . import crossval
    from .models import DEFAULT_ENCODER, build_shipped, concat_features, select_encoder, shipped_names
    from .models.shipped import is_explicit

    def extractor(encoder) -> FeatureExtractor:
        """The encoder's features as every window of the run is encoded (``options.orientations``), at 1x:
        the scoring's scales are chosen on them and added over them (``classifier.fit_support``)."""
        return feature_extractor(FeatureExtractor(encoder, device), options.orientations)

    explicit = is_explicit(options.backbone, options.checkpoint, options.init_weights)
    candidates = shipped_names() if options.encoder == "auto" and not explicit else []
    default = DEFAULT_ENCODER if DEFAULT_ENCODER in candidates or not candidates else candidates[0]
    if not candidates:
        encoder, info = select_encoder(options.encoder, options.backbone, options.checkpoint, options.init_weights)
    polygons = [(source, labels) for source, labels in supports or () if isinstance(labels, VectorLabels)]
    if not polygons or not (candidates or check):
        if candidates:  # no polygons to cross-validate: the default encoder
            encoder, info = build_shipped(default)
            info = {**info, "auto": f"support is a label raster: no cross-validation, used the default {default}"}
        return extractor(encoder), info, None

    windows = crossval.read_support_windows(polygons, classes, options.tile_size, options.overlap, folds,
                                            group_distance)
    num_classes = len(classes.ids)

    def scored(extract, features, known=None):
        """The cross-validation report of the scoring variant the support picks (``crossval.choose_scoring``:
        plain prototypes unless multi-scale features or a linear head beat them in enough bootstrap
        resamples), with the choice."""
        choice, confusions = crossval.choose_scoring(extract, features, windows, num_classes, folds, batch_size,
                                                     options.alpha, known)
        if options.progress:
            warnings.warn(f"scoring: {choice['reason']}")
        report = crossval.report(confusions[choice["picked"]], classes, windows)
        return {**report, "scoring": choice}

    if not candidates:
        extract = extractor(encoder)
        return extract, info, scored(extract, crossval.encode_windows(extract, windows, batch_size))
    built, features, confusions = {}, {}, {}
    for name in candidates:
        parts = name.split("+")
        if len(parts) == 1:
            built[name] = build_shipped(name)
            features[name] = crossval.encode_windows(extractor(built[name][0]), windows, batch_size)
        else:  # a concatenation reuses its parts' features, window by window: no extra encoding
            features[name] = [concat_features(window) for window in zip(*(features[part] for part in parts))]
        confusions[name] = crossval.cross_validate(features[name], windows, num_classes, folds, options.alpha)
    choice = {**crossval.reliable_choice(confusions, default, "encoder"), "cross_validated": windows.used()}
    picked = choice["picked"]
    encoder, info = built[picked] if picked in built else build_shipped(picked)
    if options.progress:
        warnings.warn(f"encoder auto {choice['reason']}")
    extract = extractor(encoder)
    if not want_report:
        return extract, {**info, "auto": choice}, None
    return extract, {**info, "auto": choice}, scored(extract, features[picked], {"prototypes": confusions[picked]})
