"""The classifier at the centre of geoproto: encode once, predict many (as segment-anything's predictor).

A ``Classifier`` holds what a support taught (the class prototypes of eq. 1, with the classes they
stand for) and, when it is to label imagery, the encoder that makes features. It gives per-window class
scores (eq. 2, at pixel resolution); their softmax is eq. 3. ``segment``, ``check-support``'s
cross-validation, ``evaluate`` and training's validation all score through it, so there is one place
where support becomes a model and a model becomes scores.

``fit_support`` is eq. 1 over a user's support on one raster or several: each labelled pixel counts
once, in the window whose core owns it (its neighbours still give it context), so the prototypes are
those of the whole raster whatever the tiling, and support drawn on several rasters pools pixel by pixel.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .classes import ClassInfo, refuse_one_class
from .errors import GeoprotoError
from .fewshot import DEFAULT_ALPHA, class_scores, upsample_scores
from .heads import PROTOTYPES, SupportFit, at_scales, orientations_of, scales_of
from .models.runtime import CONTEXT_MARGIN, GRID, FeatureExtractor
from .tiling import Tile, raster_windows

if TYPE_CHECKING:  # scoring windows needs no GDAL (benchmarks/gpu_check.py runs where it is not installed)
    from .raster import RasterSource


@dataclass
class Classifier:
    """Class prototypes (K x C) for ``classes``, matched with softmax scale ``alpha``; ``extract`` (a
    ``FeatureExtractor``) is needed only to score images rather than features. ``head``, when given,
    scores instead of eq. 2: features -> logits on the feature grid (``heads.LinearHead``)."""

    prototypes: torch.Tensor
    classes: ClassInfo | None = None
    alpha: float = DEFAULT_ALPHA
    extract: FeatureExtractor | None = None
    pixels: dict[str, int] = field(default_factory=dict)  # labelled support pixels per class
    head: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def scales(self) -> tuple[int, ...]:
        """The input scales its features come from: (1,), or (1, 2) for multi-scale features."""
        return scales_of(self.extract)

    @property
    def orientations(self) -> int:
        """How many orientations of each window its features are averaged over (``heads.ORIENTATIONS``)."""
        return orientations_of(self.extract)

    @property
    def ids(self) -> np.ndarray:
        """The class id of each score channel, as written to the class raster."""
        return np.array(self.classes.ids, np.uint8)

    def encode(self, images: np.ndarray, context: int = CONTEXT_MARGIN) -> torch.Tensor:
        """Features of a batch of windows read with ``context`` pixels around them (``RasterSource.read``)."""
        if self.extract is None:
            raise GeoprotoError("this classifier has no encoder: it scores features, not images")
        return self.extract(images, context)

    def score_features(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Class logits (B x K x H x W) of windows of ``size`` from their features (eq. 2, or ``head``); the
        argmax is the label, the softmax eq. 3."""
        if self.head is not None:
            return upsample_scores(self.head(features), size)
        return class_scores(features, self.prototypes, size, self.alpha)

    @torch.inference_mode()
    def score(self, images: np.ndarray, size: int, context: int = CONTEXT_MARGIN) -> torch.Tensor:
        """Class logits (B x K x size x size, float32) of a batch of windows, on the encoder's device."""
        return self.score_features(self.encode(images, context), (size, size)).float()


def fit_support(extract: FeatureExtractor, supports: list[tuple[RasterSource, object]], classes: ClassInfo,
                size: int, overlap: int, batch_size: int, alpha: float = DEFAULT_ALPHA, head: str = PROTOTYPES,
                scales: tuple[int, ...] = (1,)) -> tuple[Classifier, dict]:
    """The classifier a support teaches: prototypes from every support window (eq. 1) of each (raster,
    labels) pair of ``supports`` (one, or every raster of a run the support touches), pixel-weighted.

    ``scales`` (1,) or ``heads.SCALES`` (1, 2): encode windows at their own scale, or at 1x and 2x
    (``heads.MultiScaleExtractor``, for support and queries alike), over ``extract``'s own 1x features
    (``heads.feature_extractor`` with its orientations: ``support_check.choose_encoder``). ``head``:
    ``prototypes`` (eq. 2) or ``linear`` (``heads.fit_linear_head`` on the support's labelled pixels).
    ``check-support``'s cross-validation says which the support favours (its report's ``scoring``).

    Classes a classes file lists but the support never uses are left out (with a warning); the
    classifier's ``classes`` are those it has prototypes for, in their order. Fails if a class has no
    labelled pixel on valid data, or if fewer than two classes remain.
    """
    extract = at_scales(extract, scales)
    accumulator, classes, stats = accumulate_support(extract, supports, classes, size, overlap, batch_size, head)
    classifier = Classifier(accumulator.prototypes(), classes, alpha, extract, stats["pixels"],
                            None if head == PROTOTYPES else accumulator.fit(alpha))
    return classifier, stats


def accumulate_support(extract: FeatureExtractor, supports: list[tuple[RasterSource, object]], classes: ClassInfo,
                       size: int, overlap: int, batch_size: int, head: str = PROTOTYPES,
                       min_classes: int = 2) -> tuple[SupportFit, ClassInfo, dict]:
    """Eq. 1's sums over a support (``fit_support``): the accumulator (per-class feature sums and pixel
    counts, which pool exactly across supports; it fits ``head`` too), the classes kept, and what it took.

    Each raster is read in windows of ``size`` (with ``overlap``), or in one window of its own size if it is
    smaller (``tiling.window_geometry``, as ``segment`` reads queries): a support chip is encoded as its
    queries are, and not padded to a full tile. Windows are batched by size."""
    unknown: set[int] = set()
    seen: set[int] = set()
    lookup = classes.positions()
    # Tiles only, per window side in order of appearance: labels are read again per batch, so memory does
    # not grow with the support.
    labelled: dict[int, list] = {}
    for source, labels in supports:
        src = source.dataset
        side, tiles = raster_windows(src.height, src.width, size, overlap, GRID)
        for tile in labels.candidate_tiles(tiles):
            window_labels = labels.read(tile, side)
            present = {int(v) for v in np.unique(window_labels) if v}
            unknown |= present - set(classes.ids)
            seen |= present
            if core_labels(lookup[window_labels], tile).any():
                labelled.setdefault(side, []).append((source, labels, tile))
    if unknown:
        raise GeoprotoError(f"support has label value(s) {sorted(unknown)} missing from the classes file",
                            param="classes_file")
    unused = [name for class_id, name in zip(classes.ids, classes.names) if class_id not in seen]
    if unused and supports[0][1].classes_from_catalogue and len(unused) < len(classes.ids):
        warnings.warn(f"no support for class(es) {', '.join(unused)} of the classes file: left out")
        classes = classes.subset(seen)
        lookup = classes.positions()
    accumulator = SupportFit(len(classes.ids), extract.out_channels, head)
    model_seconds = 0.0
    for side, tiles in labelled.items():
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start:start + batch_size]
            reads = [source.read(tile, side, CONTEXT_MARGIN) for source, _, tile in chunk]
            started = time.perf_counter()
            features = extract(np.stack([image for image, _ in reads]), CONTEXT_MARGIN)
            model_seconds += time.perf_counter() - started
            # Support over nodata (or NaN) would make a prototype of fill values: left out.
            accumulator.add(features.cpu(), torch.from_numpy(np.stack(
                [core_labels(lookup[labels.read(tile, side)], tile) * valid
                 for (_, labels, tile), (_, valid) in zip(chunk, reads)])))
    empty = [(name, class_id in seen) for name, class_id, pixels in
             zip(classes.names, classes.ids, accumulator.pixels.tolist()) if pixels == 0]
    if empty:
        name, over_nodata = empty[0]
        where = "on valid data (all its support lies over nodata)" if over_nodata else "inside the raster"
        raise GeoprotoError(f"class {name!r} has no labelled pixel {where}; label some or remove it")
    if min_classes > 1:  # 1: one of several supports pooled (``prototypes``)
        refuse_one_class(classes.names, "support")
    # The window sides used: ``size`` for rasters larger than a window, their own for smaller ones.
    stats = {"windows": sum(map(len, labelled.values())), "window_sizes": sorted(labelled),
             "model_seconds": round(model_seconds, 3),
             "pixels": {name: int(p) for name, p in zip(classes.names, accumulator.pixels.tolist())}}
    return accumulator, classes, stats


def core_labels(window_labels: np.ndarray, tile: Tile) -> np.ndarray:
    """The window's labels with every pixel outside its core unlabelled: each pixel counted once."""
    core = np.zeros_like(window_labels)
    rows, cols = tile.core_slices
    core[rows, cols] = window_labels[rows, cols]
    return core
