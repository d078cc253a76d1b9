"""Opening what a command works on: the orthophoto, its CRS and the support labels, checked together."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .classes import ClassInfo
from .errors import GeoprotoError, no_such_file
from .raster import RasterSource, absolute_path, shared_scaling
from .support import VectorLabels, load_support
from .tiling import Tile


class SupportLabels(Protocol):
    """What the support of a raster gives, whether polygons (``support.VectorLabels``) or a label raster
    (``support.RasterLabels``): class ids per window of the segmentation grid (0 = unlabelled).

    What only polygons have (their polygon numbers for cross-validation, ``numbered_by_name``: ids given
    from text class names) is not part of it: callers read it on ``Inputs.polygons``, a VectorLabels.
    """

    classes_from_catalogue: bool  # classes come from a classes file, so some may go unused

    def candidate_tiles(self, tiles: list[Tile]) -> list[Tile]:
        """The tiles that may hold labels (the others are never read)."""

    def read(self, tile: Tile, size: int) -> np.ndarray:
        """The tile's labels as a size x size uint8 array of class ids."""

    def found_classes(self) -> ClassInfo:
        """The classes the support uses."""

    def close(self) -> None:
        """Close any file it holds open (a label raster's); it opens again on use."""


@dataclass
class Inputs:
    """The opened orthophoto and support: what every command working on a raster + support needs."""

    source: RasterSource
    crs: object  # the raster's CRS, or assume_crs, or None
    support_source: RasterSource  # the raster the support labels (``support_image``, else ``source``)
    # None when the classes come from a prototype file, or when a support shared by several rasters
    # (``open_inputs(shared=True)``) misses this one (classes None too)
    labels: SupportLabels | None
    classes: ClassInfo | None

    def __enter__(self) -> "Inputs":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the rasters' handles, the support's label raster's included. They reopen on use: a run
        over many rasters closes each between the steps that use it, keeping a bounded number of files
        open."""
        self.source.close()
        self.support_source.close()
        if self.labels is not None:
            self.labels.close()

    @property
    def polygons(self) -> VectorLabels | None:
        """The support polygons, for what only polygons allow (cross-validation); None for a label raster."""
        return self.labels if isinstance(self.labels, VectorLabels) else None


def open_inputs(image: str, support: str, bands: list[int] | None = None, assume_crs: str | None = None,
                support_image: str | None = None, class_field: str | None = None, layer: str | None = None,
                support_crs: str | None = None, classes_file: str | None = None, buffer: float = 0.0,
                shared: bool = False, read_files: dict | None = None) -> Inputs:
    """Open the orthophoto and its support, checking them against each other. ``shared``: the support
    serves several rasters, so it may miss this one (``support.load_vector_support``); ``read_files``:
    the support files read so far in the run, read once whatever the number of rasters
    (``support.load_support``). The rasters' stretch is left to ``stretch_inputs`` (or their first read)."""
    with contextlib.ExitStack() as on_error:
        source = on_error.enter_context(RasterSource.open(image, bands, measure=False))
        crs = _crs(source, image, assume_crs)
        own_support = support_image is not None
        if support_image == "":  # refused as empty, not taken for none (which labels the image itself)
            raise no_such_file(support_image, param="support_image")
        support_source = on_error.enter_context(RasterSource.open(support_image, bands, measure=False)) \
            if own_support else source
        labels = load_support(support, support_source.dataset, class_field, layer, support_crs, classes_file,
                              None if own_support else crs, buffer, shared and not own_support, read_files)
        if labels is not None:
            on_error.callback(labels.close)
        inputs = Inputs(source, crs, support_source, labels, None if labels is None else labels.found_classes())
        on_error.pop_all()  # opened for the caller, who closes them (``Inputs.close``)
    return inputs


def support_pairs(opened: list[Inputs], support: str) -> tuple[list[tuple[RasterSource, SupportLabels]], ClassInfo]:
    """The (raster, labels) pairs a support teaches on, over the inputs ``opened`` together: the support
    image's, or those of every input the support touches; and the classes: with several inputs, those
    with a polygon on at least one."""
    inputs = opened[0]
    if len(opened) == 1 or inputs.support_source is not inputs.source:  # one raster holds the support
        return [(inputs.support_source, inputs.labels)], inputs.classes
    touched = [inputs for inputs in opened if inputs.labels is not None]
    if not touched:
        raise GeoprotoError(f"{support}: no support polygon overlaps any of the {len(opened)} input rasters",
                            param="support")
    classes = touched[0].classes  # every class of the file (``shared``)
    used = set().union(*(set(inputs.labels.class_ids.tolist()) for inputs in touched))
    missing = [name for class_id, name in zip(classes.ids, classes.names) if class_id not in used]
    if missing:
        warnings.warn(f"{support}: no polygon of class(es) {', '.join(missing)} overlaps any input: left out")
        classes = classes.subset(used)
    return [(inputs.source, inputs.labels) for inputs in touched], classes


def stretch_inputs(opened: list[Inputs], asked: str) -> str:
    """Stretch the rasters of inputs processed together as asked (``SegmentOptions.stretch``); returns the
    stretch they got. ``shared``: one for them all, the support image's included (``raster.shared_scaling``),
    so that tiles of one orthophoto given as separate files are scaled as the whole would be, and labels
    drawn on one raster teach on the scale of the others; not for a single raster, which has its own, nor
    when their bands differ in data type or count, nor for byte bands, never stretched. Otherwise
    ``per-input``: each its own, measured now, so that a raster without a valid pixel is refused before any
    model work. Each file is read once however many inputs hold it (a support image is opened for each
    input), and its handles closed again."""
    by_path: dict[str, list[RasterSource]] = {}
    for inputs in opened:
        for source in {id(s): s for s in (inputs.source, inputs.support_source)}.values():
            by_path.setdefault(absolute_path(source.path), []).append(source)
    try:
        pooled = shared_scaling([first for first, *_ in by_path.values()]) \
            if asked == "shared" and len(by_path) > 1 else None
        for first, *copies in by_path.values():
            if pooled is None:
                first.measure()
            else:
                first.scale = pooled
            for source in copies:
                source.scale = first.scale
    finally:
        for sources in by_path.values():
            for source in sources:
                source.close()
    return "per-input" if pooled is None else "shared"


def open_image(image: str, classes: ClassInfo, bands: list[int] | None = None,
               assume_crs: str | None = None) -> Inputs:
    """The orthophoto alone, for ``classes`` taught without a support here (a prototype file); its stretch
    is left to the caller (``segment``: the file's, or ``stretch_inputs``)."""
    with contextlib.ExitStack() as on_error:
        source = on_error.enter_context(RasterSource.open(image, bands, measure=False))
        inputs = Inputs(source, _crs(source, image, assume_crs), source, None, classes)
        on_error.pop_all()  # opened for the caller, who closes it (``Inputs.close``)
    return inputs


def _crs(source: RasterSource, image: str, assume_crs: str | None):
    """The raster's CRS, or ``assume_crs`` for a raster without one. A raster located by ground control
    points or RPCs alone is refused: it has no grid to write the classes on (its class raster would lose
    them), and its CRS is the points', not its own."""
    from rasterio.crs import CRS

    dataset = source.dataset
    crs = dataset.crs
    if crs is None and (dataset.gcps[0] or dataset.rpcs is not None):
        located_by = "ground control points" if dataset.gcps[0] else "RPCs"
        raise GeoprotoError(f"{image}: is georeferenced by {located_by} only, not on a grid; warp it onto one "
                            f"first (e.g. gdalwarp{' -rpc' if not dataset.gcps[0] else ''} {image} gridded.tif)")
    if assume_crs:
        if crs is not None:
            raise GeoprotoError(f"{image}: has a CRS already; assume_crs is for rasters without one",
                                param="assume_crs")
        try:
            crs = CRS.from_user_input(assume_crs)
        except Exception as exc:
            raise GeoprotoError(f"{assume_crs!r}: not a CRS ({exc})", param="assume_crs") from None
    return crs

