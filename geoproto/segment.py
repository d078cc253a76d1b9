"""``segment``: the orchestration of a run, from the user's files to committed outputs.

    inputs.open_inputs          raster + support, checked together
    classifier.fit_support      the support's prototypes (eq. 1), with the encoder (support_check)
    pipeline.WindowPipeline     every window: read -> score (eq. 2-3) -> refine (DenseCRF) -> write
    output.*                    legend, overviews, polygons, report, preview; StagedOutputs commits all

Memory is bounded by batch x window, whatever the raster's size.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import __version__
from . import crf as crf_module
from .aoi import ClippedSource, load_area
from .classes import NODATA
from .classifier import fit_support
from .distributed import EncoderRecipe, import_distributed, run_on_dask
from .errors import GeoprotoError
from .fewshot import DEFAULT_ALPHA
from .inputs import Inputs, open_image, open_inputs
from .models import DEFAULT_BACKBONE, DEFAULT_ENCODER
from .models.runtime import GRID, default_batch_size, resolve_device
from .output import (BLOCK_SIDE, RASTER_DRIVERS, VECTOR_DRIVERS, ResultWriter, StagedOutputs, build_overviews,
                     class_areas, class_histogram, convert_to_cog, gdal_write_errors, output_driver, sieve_classes,
                     write_area_report, write_legend, write_polygons, write_preview)
from .pipeline import RefineSettings, WindowPipeline, check_window_memory
from .prototype_file import load_prototypes
from .raster import block_cache, pixel_area_m2, pixel_size_m
from .support_check import choose_encoder
from .tiling import tile_grid
from .validation import ALPHA_MAX, MAX_WORKERS, check_number

DEFAULT_TILE_SIZE = 417
DEFAULT_OVERLAP = 64
DEFAULT_CRF_BILATERAL_M = crf_module.PAPER_BILATERAL_SXY_PX * crf_module.PAPER_PIXEL_SIZE_M


@dataclass
class SegmentOptions:
    """Everything ``segment`` can be told; the CLI maps its options one to one onto these fields."""

    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    bands: list[int] | None = None
    encoder: str = DEFAULT_ENCODER  # a shipped encoder (models.shipped), or "auto" to choose by cross-validation
    backbone: str = DEFAULT_BACKBONE
    checkpoint: str | None = None
    init_weights: str | None = None
    alpha: float = DEFAULT_ALPHA
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None  # pydensecrf2 processes; None: one per core, 0: in the main process
    # Support
    class_field: str | None = None
    layer: str | None = None
    support_crs: str | None = None
    assume_crs: str | None = None
    classes_file: str | None = None
    support_image: str | None = None
    buffer: float = 0.0
    prototypes: str | None = None  # a prototype file (prototype_file.py), used instead of a support
    # DenseCRF; ``crf_bilateral_m`` None means ``crf_params.bilateral_sxy`` is taken as pixels.
    crf: bool = True
    crf_backend: str = crf_module.DEFAULT_BACKEND  # crf.BACKENDS; see crf.resolve_backend
    crf_params: crf_module.CRFParams = field(default_factory=crf_module.CRFParams)
    crf_bilateral_m: float | None = DEFAULT_CRF_BILATERAL_M
    # Outputs
    # Cross-validate polygon support and put the report in the summary (always done for --encoder auto).
    check_support: bool = False
    probabilities: str | None = None
    vector: str | None = None
    preview: str | None = None
    report: str | None = None  # CSV of the area per class
    cog: bool = False  # the same as driver="COG"
    driver: str | None = None  # of the class raster: GTiff or COG [default: from the extension]
    vector_driver: str | None = None  # OGR driver of ``vector`` [default: from the extension]
    creation_options: dict[str, str] = field(default_factory=dict)  # GDAL creation options of the rasters
    overviews: bool = True
    min_area: float | None = None  # m²: smaller class regions are merged into their largest neighbour
    simplify: float | None = None  # polygon simplification tolerance, in the raster CRS's units
    # Only part of the raster: polygons (any CRS), or a box "XMIN,YMIN,XMAX,YMAX" (raster CRS or bbox_crs)
    aoi: str | None = None
    bbox: str | None = None
    bbox_crs: str | None = None
    command: str | None = None  # the invocation, recorded in the outputs' metadata
    overwrite: bool = False
    progress: bool = True
    # The windows on a Dask cluster (geoproto.distributed): a scheduler's address, or N local workers
    dask_scheduler: str | None = None
    dask_local: int | None = None

    def __post_init__(self):
        """Refuse NaN, infinities and out-of-range numbers before any work (NaN alpha: one class everywhere)."""
        for name, (low, high, min_open) in SEGMENT_RANGES.items():
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, check_number(name, value, low, high, min_open, name in _INTEGER_FIELDS))
        if self.dask_scheduler and self.dask_local:
            raise GeoprotoError("give a Dask scheduler's address or a number of local workers, not both",
                                param="dask_local")
        if self.dask_scheduler or self.dask_local:
            import_distributed()  # Dask missing: said now, not after the support is encoded


# Bounds (low, high, low excluded) of SegmentOptions' numbers; the CLI's options use the same.
SEGMENT_RANGES = {
    "tile_size": (32, None, False), "overlap": (0, None, False), "alpha": (0, ALPHA_MAX, True),
    "batch_size": (1, None, False), "workers": (0, MAX_WORKERS, False), "buffer": (0, None, False),
    "crf_bilateral_m": (0, 1e4, True), "min_area": (0, None, True), "simplify": (0, None, True),
    "dask_local": (1, MAX_WORKERS, False),
}
_INTEGER_FIELDS = {"tile_size", "overlap", "batch_size", "workers", "dask_local"}


def options_inputs(image: str, support: str, options: SegmentOptions) -> Inputs:
    """``inputs.open_inputs`` with the support and raster settings of ``options``."""
    return open_inputs(image, support, options.bands, options.assume_crs, options.support_image,
                       options.class_field, options.layer, options.support_crs, options.classes_file,
                       options.buffer)


def check_tiling(options: SegmentOptions) -> None:
    if options.tile_size < 32:
        raise GeoprotoError("must be at least 32 pixels", param="tile_size")
    if not 0 <= options.overlap < options.tile_size // 2:
        raise GeoprotoError("must be at least 0 and less than half the tile size", param="overlap")


@dataclass
class _Staged:
    """The staging paths of a run's outputs (None for outputs not asked for)."""

    classes: str
    probabilities: str | None
    vector: str | None
    preview: str | None
    report: str | None


def _stage(staged: StagedOutputs, output: str, options: SegmentOptions) -> _Staged:
    def stage(path, param):
        return staged.stage(path, param) if path else None

    return _Staged(staged.stage(output, "output"), stage(options.probabilities, "probabilities"),
                   stage(options.vector, "vector"), stage(options.preview, "preview"), stage(options.report, "report"))


def segment(image: str, support: str | None, output: str, options: SegmentOptions | None = None) -> dict:
    """Segment ``image`` into the classes of ``support`` (or of the prototype file ``options.prototypes``)
    and write ``output``; returns a summary."""
    options = options or SegmentOptions()
    started = time.perf_counter()
    check_tiling(options)
    taught = _prototype_file(support, options)
    if taught is not None:
        options = replace(options, encoder=taught.encoder_choice(options.encoder))
    device = resolve_device(options.device)
    crf_backend = crf_module.resolve_backend(options.crf_backend, device.type) if options.crf else None
    staged = StagedOutputs(options.overwrite, {
        "image": image, "support": support, "support_image": options.support_image,
        "classes_file": options.classes_file, "checkpoint": options.checkpoint, "init_weights": options.init_weights,
        "aoi": options.aoi, "prototypes": options.prototypes})
    try:
        paths = _stage(staged, output, options)
        # After the alias checks: an output that would replace an input is the first thing to say.
        raster_format, vector_format = _output_formats(output, options)
        if taught is None:
            inputs = options_inputs(image, support, options)
        else:
            inputs = open_image(image, taught.classes, options.bands, options.assume_crs)
        source, crs, src = inputs.source, inputs.crs, inputs.source.dataset
        output_bytes = 1 + (4 * len(inputs.classes.ids) if paths.probabilities else 0)  # classes, probabilities
        with inputs, block_cache(src, options.tile_size, output_bytes, BLOCK_SIDE):
            pixel_area = pixel_area_m2(src, crs)
            if options.min_area and pixel_area is None:
                raise GeoprotoError(f"{image}: is in square metres and needs a projected CRS", param="min_area")
            area = load_area(src, crs, options.aoi, options.bbox, options.bbox_crs)
            batch_size = options.batch_size or default_batch_size(device)
            workers = (os.cpu_count() or 1) if options.workers is None else options.workers
            check_window_memory(options.tile_size, batch_size, len(inputs.classes.ids),
                                workers if crf_backend == "densecrf" else 0)
            extract, encoder_info, check = choose_encoder(inputs, options, device, batch_size, options.check_support)
            if taught is None:
                classifier, support_stats = fit_support(extract, inputs.support_source, inputs.labels,
                                                        inputs.classes, options.tile_size, options.overlap,
                                                        batch_size, options.alpha)
            else:
                classifier, support_stats = taught.classifier(extract, encoder_info, options.alpha, image,
                                                              len(source.bands), pixel_size_m(src, crs))
            refine = RefineSettings(_crf_params(options, pixel_size_m(src, crs)), crf_backend) if options.crf \
                else None
            tiles = tile_grid(src.height, src.width, options.tile_size, options.overlap, GRID)
            if area is not None:  # windows outside the area are never read nor encoded
                tiles = [tile for tile in tiles if area.reaches(tile)]
            metadata = {"GEOPROTO_VERSION": __version__, "GEOPROTO_ENCODER": _encoder_label(encoder_info),
                        "GEOPROTO_COMMAND": options.command or "geoproto.segment.segment()",
                        "TIFFTAG_SOFTWARE": f"geoproto {__version__}"}
            with gdal_write_errors(output):
                writer = ResultWriter(src, crs, classifier.classes, paths.classes, paths.probabilities, metadata,
                                      options.creation_options)
                try:
                    windows = ClippedSource(source, area) if area is not None else source
                    if options.dask_scheduler or options.dask_local:
                        run = run_on_dask(options.dask_scheduler, options.dask_local, windows, classifier,
                                          EncoderRecipe.of(options, encoder_info), options.device, tiles, writer,
                                          options.tile_size, refine, batch_size, options.progress)
                    else:
                        run = WindowPipeline(windows, classifier, writer, options.tile_size, refine, batch_size,
                                             workers, options.progress).run(tiles)
                finally:
                    writer.close()
            counts = run.counts
            counts[NODATA] += src.width * src.height - counts.sum()  # windows outside the area: never written
        with gdal_write_errors(output):
            finished = _finish_outputs(paths, classifier.classes, counts, pixel_area, raster_format, vector_format,
                                       options)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    summary = {
        "input": image, "output": output, "tiles": len(tiles), "tile_size": options.tile_size,
        "overlap": options.overlap, "seconds": round(time.perf_counter() - started, 3), "device": device.type,
        "encoder": encoder_info, "classes": finished["areas"], "nodata_pixels": int(finished["counts"][NODATA]),
        "min_area_pixels": finished["min_pixels"] or None, "overviews": finished["overviews"],
        "support": support_stats, "stage_seconds": run.stage_seconds,
        **({"support_check": check} if check else {}),
        "crf": {"enabled": options.crf, **({"backend": crf_backend, "iterations": refine.params.iterations,
                                            "bilateral_sxy_px": round(refine.params.bilateral_sxy, 2),
                                            "tiles_kept_unrefined": run.crf_rejected} if options.crf else {})},
    }
    if finished["polygons"] is not None:
        summary["polygons"] = finished["polygons"]
    return summary


def _prototype_file(support: str | None, options: SegmentOptions):
    """The prototype file ``options.prototypes``, loaded and checked (None without one); exactly one of
    a support and a prototype file teaches the classes."""
    if (support is None) == (options.prototypes is None):
        raise GeoprotoError("give either a support or a prototype file, not " + ("both" if support else "neither"),
                            param="prototypes", mentions=("support",))
    if options.prototypes is None:
        return None
    if options.check_support:
        raise GeoprotoError("cross-validates support polygons; a prototype file has none", param="check_support")
    for name in ("class_field", "layer", "support_crs", "classes_file", "support_image", "buffer"):
        if getattr(options, name):
            raise GeoprotoError("applies to a support; a prototype file holds its classes already", param=name)
    return load_prototypes(options.prototypes)


def _crf_params(options: SegmentOptions, pixel_size: float | None) -> crf_module.CRFParams:
    """The CRF's parameters in pixels: the bilateral width is set in metres unless given in pixels."""
    params = options.crf_params
    if options.crf_bilateral_m is not None:
        sxy = crf_module.bilateral_sxy_pixels(options.crf_bilateral_m, pixel_size)
        params = crf_module.CRFParams(**{**params.__dict__, "bilateral_sxy": sxy})
    return params


def _finish_outputs(paths: _Staged, classes, counts: np.ndarray, pixel_area: float | None, raster_format: str,
                    vector_format: str | None, options: SegmentOptions) -> dict:
    """Everything made from the written class raster, in the staging folder: the minimum mapping unit
    (before anything reads the raster, so that raster and polygons agree), overviews or COG layout, the
    legend sidecar, the area report, polygons and preview."""
    min_pixels = math.ceil(options.min_area / pixel_area) if options.min_area else 0
    if min_pixels > 1:
        sieve_classes(paths.classes, min_pixels)
        counts = class_histogram(paths.classes)
    overviews = []
    if raster_format == "COG":
        convert_to_cog(paths.classes, options.creation_options)
    elif options.overviews:
        overviews = build_overviews(paths.classes)
    areas = class_areas(classes, counts, pixel_area)
    # GDAL's sidecar of the class raster (palette, category names, attribute table), written beside it in
    # the staging folder so that it moves into place with it.
    write_legend(f"{paths.classes}.aux.xml", classes, areas)
    if paths.report:
        write_area_report(paths.report, areas)
    polygons = write_polygons(paths.classes, paths.vector, classes, vector_format, options.simplify) \
        if paths.vector else None
    if paths.preview:
        write_preview(paths.classes, paths.preview, classes)
    return {"counts": counts, "areas": areas, "min_pixels": min_pixels, "overviews": overviews,
            "polygons": polygons}


def _encoder_label(info: dict) -> str:
    """The encoder in a few words for the outputs' metadata (the full description is in the summary)."""
    keys = ("name", "backbone", "checkpoint", "init_weights")
    label = {key: info[key] for key in keys if isinstance(info.get(key), str)}
    if isinstance(info.get("auto"), dict):
        label["auto_picked"] = info["auto"].get("picked")
    return json.dumps(label)


def _output_formats(output: str, options: SegmentOptions) -> tuple[str, str | None]:
    """The class raster's and the polygons' formats, checked against their file names before any work."""
    if options.cog and options.driver and options.driver.upper() != "COG":
        raise GeoprotoError(f"asks for a COG; it contradicts driver {options.driver}", param="cog")
    raster_format = output_driver(output, "COG" if options.cog else options.driver, RASTER_DRIVERS, "raster")
    if options.probabilities:
        output_driver(options.probabilities, "GTiff", RASTER_DRIVERS, "raster")
    if options.preview:
        output_driver(options.preview, "PNG", {"PNG": (".png",)}, "preview")
    if options.report:
        output_driver(options.report, "CSV", {"CSV": (".csv",)}, "report")
    if options.vector_driver and not options.vector:
        raise GeoprotoError("applies to the polygons: give a vector output too", param="vector_driver")
    vector_format = output_driver(options.vector, options.vector_driver, VECTOR_DRIVERS, "vector") \
        if options.vector else None
    if options.simplify and not options.vector:
        raise GeoprotoError("applies to the polygons: give a vector output too", param="simplify")
    return raster_format, vector_format
