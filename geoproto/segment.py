"""``segment``: prototypes from the support, then every window of the orthophoto matched against them.

The flow is: read the support windows and average their features into class prototypes (eq. 1);
tile the orthophoto into full-size overlapping windows; encode a batch of windows, match at feature
resolution and upsample the class scores (eq. 2-3); refine each window with DenseCRF; keep each
window's core and write it. Memory is bounded by batch x window, whatever the raster's size.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from . import crf as crf_module
from .aoi import ClippedSource, load_area
from .classes import NODATA, ClassInfo
from .errors import GeoprotoError
from .fewshot import DEFAULT_ALPHA, PrototypeAccumulator
from .models import DEFAULT_BACKBONE, DEFAULT_ENCODER
from .models.runtime import CONTEXT_MARGIN, GRID, FeatureExtractor, default_batch_size, resolve_device
from .output import (BLOCK_SIDE, RASTER_DRIVERS, VECTOR_DRIVERS, ResultWriter, StagedOutputs, build_overviews,
                     class_areas, class_histogram, convert_to_cog, gdal_write_errors, output_driver, sieve_classes,
                     write_area_report, write_legend, write_polygons, write_preview)
from .pipeline import run_tiles
from .raster import RasterSource, block_cache, path_exists
from .resume import Journal, file_identity, remove_journal, segment_job
from .support import VectorLabels, is_raster, load_support
from .tiling import tile_grid
from .validation import ALPHA_MAX, MAX_WORKERS, check_memory, check_number

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
    # Keep finished windows in a journal beside the output and continue an interrupted run from it (resume.py)
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        """Refuse NaN, infinities and out-of-range numbers before any work (NaN alpha: one class everywhere)."""
        for name, (low, high, min_open) in SEGMENT_RANGES.items():
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, check_number(name, value, low, high, min_open, name in _INTEGER_FIELDS))


# Bounds (low, high, low excluded) of SegmentOptions' numbers; the CLI's options use the same.
SEGMENT_RANGES = {
    "tile_size": (32, None, False), "overlap": (0, None, False), "alpha": (0, ALPHA_MAX, True),
    "batch_size": (1, None, False), "workers": (0, MAX_WORKERS, False), "buffer": (0, None, False),
    "crf_bilateral_m": (0, 1e4, True), "min_area": (0, None, True), "simplify": (0, None, True),
}
_INTEGER_FIELDS = {"tile_size", "overlap", "batch_size", "workers"}


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def build_prototypes(extract: FeatureExtractor, supports: list[tuple[RasterSource, object]], classes: ClassInfo,
                     size: int, overlap: int, batch_size: int) -> tuple[torch.Tensor, ClassInfo, dict]:
    """Class prototypes from every support window of every (raster, labels) pair of ``supports``; fails if
    a class has no labelled pixel.

    Each labelled pixel counts once, in the window whose core owns it (the others still give it context),
    so the prototypes are those of the whole raster whatever the tiling, and support drawn on several
    rasters pools pixel by pixel.

    Classes a --classes file lists but the support never uses are left out (with a warning); the
    returned ClassInfo holds the classes the prototypes are for, in their order.
    """
    lookup = classes.positions()
    unknown: set[int] = set()
    windows = 0
    seen: set[int] = set()
    labelled = []  # tiles only: labels are read again per batch, so memory does not grow with the support
    for source, labels in supports:
        with source.dataset() as src:
            tiles = labels.candidate_tiles(tile_grid(src.height, src.width, size, overlap, GRID))
        owned = []
        for tile in tiles:
            window_labels = labels.read(tile, size)
            present = {int(v) for v in np.unique(window_labels) if v}
            unknown |= present - set(classes.ids)
            seen |= present
            if _core_labels(lookup[window_labels], tile).any():
                owned.append(tile)
        labelled.append((source, labels, owned))
    if unknown:
        raise GeoprotoError(f"support has label value(s) {sorted(unknown)} missing from the --classes file")
    unused = [name for class_id, name in zip(classes.ids, classes.names) if class_id not in seen]
    if unused and supports[0][1].classes_from_catalogue and len(unused) < len(classes.ids):
        warnings.warn(f"no support for class(es) {', '.join(unused)} of the --classes file: left out")
        classes = classes.subset(seen)
        lookup = classes.positions()
    accumulator = PrototypeAccumulator(len(classes.ids), extract.out_channels)
    model_seconds = 0.0
    for source, labels, tiles in labelled:
        with source.dataset() as src:
            for chunk in _batches(tiles, batch_size):
                reads = [source.read(src, tile, size, CONTEXT_MARGIN) for tile in chunk]
                started = time.perf_counter()
                features = extract(np.stack([image for image, _ in reads]), CONTEXT_MARGIN)
                model_seconds += time.perf_counter() - started
                # Support over nodata (or NaN) would make a prototype of fill values: left out.
                accumulator.add(features.cpu(), torch.from_numpy(np.stack(
                    [_core_labels(lookup[labels.read(tile, size)], tile) * valid
                     for tile, (_, valid) in zip(chunk, reads)])))
                windows += len(chunk)
    empty = [(name, class_id in seen) for name, class_id, pixels in
             zip(classes.names, classes.ids, accumulator.pixels.tolist()) if pixels == 0]
    if empty:
        name, over_nodata = empty[0]
        where = "on valid data (all its support lies over nodata)" if over_nodata else "inside the raster"
        raise GeoprotoError(f"class {name!r} has no labelled pixel {where}; label some or remove it")
    if len(classes.ids) < 2:
        raise GeoprotoError(f"support holds one class ({classes.names[0]!r}); label at least two, e.g. "
                            f"the class you want and what surrounds it")
    stats = {"windows": windows, "model_seconds": round(model_seconds, 3),
             "pixels": {name: int(p) for name, p in zip(classes.names, accumulator.pixels.tolist())}}
    return accumulator.prototypes(), classes, stats


def _core_labels(window_labels: np.ndarray, tile) -> np.ndarray:
    """The window's labels with every pixel outside its core unlabelled."""
    core = np.zeros_like(window_labels)
    rows, cols = tile.core_slices
    core[rows, cols] = window_labels[rows, cols]
    return core


def _metres_per_unit(crs) -> float | None:
    """Metres per unit of a projected CRS; None without a CRS or for geographic degrees."""
    if crs is None or not crs.is_projected:
        return None
    return float(crs.linear_units_factor[1])


def _pixel_area_m2(src, crs) -> float | None:
    unit = _metres_per_unit(crs)
    return None if unit is None else float(abs(src.transform.determinant) * unit ** 2)


def _pixel_size_m(src, crs) -> float | None:
    """The pixel width in metres of a north-up raster (None if rotated or without a metric CRS)."""
    unit = _metres_per_unit(crs)
    return None if unit is None or src.transform.b != 0 else float(abs(src.transform.a) * unit)


@dataclass
class Inputs:
    """The opened orthophoto and support: what every command working on a raster + support needs."""

    source: RasterSource
    crs: object  # the raster's CRS, or --assume-crs, or None
    support_source: RasterSource
    labels: object  # VectorLabels or RasterLabels; None: a support shared by several rasters misses this one
    classes: ClassInfo | None


def open_inputs(image: str, support: str, options: SegmentOptions, shared: bool = False) -> Inputs:
    """Open the orthophoto and its support, checking them against each other. ``shared``: the support
    serves several rasters and may miss this one (labels and classes None)."""
    from rasterio.crs import CRS

    source = RasterSource.open(image, options.bands)
    with source.dataset() as src:
        crs = src.crs
    if options.assume_crs:
        if crs is not None:
            raise GeoprotoError(f"{image}: has a CRS already; --assume-crs is for rasters without one")
        try:
            crs = CRS.from_user_input(options.assume_crs)
        except Exception as exc:
            raise GeoprotoError(f"--assume-crs {options.assume_crs!r}: not a CRS ({exc})") from None
    support_source = RasterSource.open(options.support_image, options.bands) if options.support_image else source
    with support_source.dataset() as support_src:
        labels = load_support(support, support_src, options.class_field, options.layer, options.support_crs,
                              options.classes_file, None if options.support_image else crs, options.buffer,
                              shared and not options.support_image)
    classes = None if labels is None else labels.classes if isinstance(labels, VectorLabels) else labels.found_classes()
    return Inputs(source, crs, support_source, labels, classes)


# Rough bytes per window pixel, to refuse up front a plan that cannot fit: a window being encoded holds
# the encoder's largest activations (lite0's 96-channel expansion at half resolution is ~100 B/px, with
# its input), plus 12 bytes per class for scores, their upsampling and softmax; a queued window holds
# its float input and mask; each DenseCRF worker holds its lattice and three float buffers per class.
MODEL_BYTES_PER_PIXEL = 160
QUEUED_BYTES_PER_PIXEL = 13
CRF_BYTES_PER_PIXEL = 64
CLASS_BYTES_PER_PIXEL = 12


def check_window_memory(size: int, batch_size: int, classes: int, crf_workers: int = 0) -> None:
    """Refuse, with the figure, a tile size and batch whose windows would not fit in memory (a tile
    size of 100000 asks for thousands of GiB per window, whatever the raster's size)."""
    pixels = (size + 2 * CONTEXT_MARGIN) ** 2
    model = batch_size * pixels * (MODEL_BYTES_PER_PIXEL + CLASS_BYTES_PER_PIXEL * classes)
    queued = (2 * batch_size + 2) * pixels * QUEUED_BYTES_PER_PIXEL  # the read queue's bound (pipeline.py)
    crf = crf_workers * pixels * (CRF_BYTES_PER_PIXEL + CLASS_BYTES_PER_PIXEL * classes)
    check_memory(model + queued + crf, f"--tile-size {size} with --batch-size {batch_size}"
                 + (f" and {crf_workers} CRF worker(s)" if crf_workers else ""),
                 "choose a smaller --tile-size or --batch-size")


def _check_tiling(options: SegmentOptions) -> None:
    if options.tile_size < 32:
        raise GeoprotoError("--tile-size must be at least 32 pixels")
    if not 0 <= options.overlap < options.tile_size // 2:
        raise GeoprotoError("--overlap must be at least 0 and less than half the tile size")


@dataclass
class _Job:
    """One input of a run and its outputs (staged paths in ``staged``)."""

    image: str
    output: str
    options: SegmentOptions  # the run's options with this input's sidecar paths
    inputs: Inputs | None = None
    tiles: list | None = None
    area: object = None
    staged: dict = field(default_factory=dict)  # option -> temporary path


def segment(image: str, support: str, output: str, options: SegmentOptions | None = None) -> dict:
    """Segment ``image`` into the classes of ``support`` and write ``output``; returns a summary."""
    options = options or SegmentOptions()
    return _segment([_Job(image, output, options)], support, options)[0][0]


def segment_many(images: list[str], support: str, output_dir: str, options: SegmentOptions | None = None) -> dict:
    """Segment every raster of ``images`` with one set of prototypes, built from ``support`` wherever it lies
    (pixel-weighted over all the inputs it touches), into ``output_dir``/<stem>.tif; sidecars asked for
    (``options.vector`` etc. empty, or a suffix) go beside each output. All or nothing: the outputs are
    committed together once every input is done; if one fails (its error names it) none is. Returns the
    summaries per input and their totals."""
    from .batch import SIDECARS, output_paths, sidecar_path

    options = options or SegmentOptions()
    started = time.perf_counter()
    if not images:
        raise GeoprotoError("no input raster")
    os.makedirs(output_dir, exist_ok=True)
    suffixes = {**SIDECARS, **({"vector": _driver_extension(options.vector_driver)} if options.vector_driver else {})}
    jobs = []
    for image, output in zip(images, output_paths(images, output_dir)):
        sidecars = {name: sidecar_path(output, name, getattr(options, name), suffixes[name])
                    for name in SIDECARS if getattr(options, name) is not None}
        jobs.append(_Job(image, output, replace(options, **sidecars)))
    results, shared = _segment(jobs, support, options)
    totals = {"inputs": len(results), "tiles": sum(r["tiles"] for r in results),
              "tiles_resumed": sum(r["tiles_resumed"] for r in results),
              "seconds": round(time.perf_counter() - started, 3), "classes": _total_areas(results)}
    return {"inputs": results, "totals": totals, **shared}


def _driver_extension(driver: str) -> str:
    match = {name.lower(): name for name in VECTOR_DRIVERS}.get(driver.lower())
    if match is None:
        raise GeoprotoError(f"vector format {driver!r} is not supported; choose one of {', '.join(VECTOR_DRIVERS)}")
    return VECTOR_DRIVERS[match][0]


def _total_areas(results: list[dict]) -> list[dict]:
    """Pixels and areas per class summed over the inputs (areas only where every input has them)."""
    totals = {}
    for result in results:
        for entry in result["classes"]:
            total = totals.setdefault(entry["id"], {**entry, "pixels": 0, "area_m2": 0.0, "area_ha": 0.0})
            total["pixels"] += entry["pixels"]
            for key in ("area_m2", "area_ha"):
                total[key] = None if entry[key] is None or total[key] is None else round(total[key] + entry[key], 4)
    return list(totals.values())


def _segment(jobs: list[_Job], support: str, options: SegmentOptions) -> tuple[list[dict], dict]:
    """The run: stage every output, open every input, one encoder and one set of prototypes, then each
    input's windows; commit all outputs at the end. Returns the summaries per input and what they share."""
    started = time.perf_counter()
    _check_tiling(options)
    device = resolve_device(options.device)
    crf_backend = crf_module.resolve_backend(options.crf_backend, device.type) if options.crf else None
    several = len(jobs) > 1
    staged = StagedOutputs(options.overwrite, {
        **{("image" if not several else f"image {job.image}"): job.image for job in jobs}, "--support": support,
        "--support-image": options.support_image, "--classes": options.classes_file,
        "--checkpoint": options.checkpoint, "--init-weights": options.init_weights, "--aoi": options.aoi})
    journals = []
    try:
        for job in jobs:
            job.staged["output"] = staged.stage(job.output, "--output")
            for name in ("probabilities", "vector", "preview", "report"):
                path = getattr(job.options, name)
                job.staged[name] = staged.stage(path, f"--{name}") if path else None
        for job in jobs:  # after the alias checks: an output that would replace an input is the first thing to say
            _output_formats(job.output, job.options)
        for job in jobs:
            with _naming(job.image, several):
                job.inputs = open_inputs(job.image, support, options, shared=several)
        supports = _supports(jobs, support)
        classes = supports[0][2]
        batch_size = options.batch_size or default_batch_size(device)
        workers = (os.cpu_count() or 1) if options.workers is None else options.workers
        check_window_memory(options.tile_size, batch_size, len(classes.ids),
                            workers if crf_backend == "densecrf" else 0)
        first = next(job.inputs for job in jobs if job.inputs.labels is not None)
        extract, encoder_info, check = resolve_encoder(first, options, device, batch_size, options.check_support)
        prototypes, classes, support_stats = build_prototypes(extract, [(s, labels) for s, labels, _ in supports],
                                                              classes, options.tile_size, options.overlap, batch_size)
        for job in jobs:
            with _naming(job.image, several), job.inputs.source.dataset() as src:
                job.area = load_area(src, job.inputs.crs, options.aoi, options.bbox, options.bbox_crs)
                job.tiles = tile_grid(src.height, src.width, options.tile_size, options.overlap, GRID)
                if job.area is not None:  # windows outside the area are never read nor encoded
                    job.tiles = [tile for tile in job.tiles if job.area.reaches(tile)]
        shared = {"device": device.type, "encoder": encoder_info, "support": support_stats,
                  **({"support_check": check} if check else {})}
        metadata = {"GEOPROTO_VERSION": __version__, "GEOPROTO_ENCODER": _encoder_label(encoder_info),
                    "GEOPROTO_COMMAND": options.command or "geoproto.segment.segment()",
                    "TIFFTAG_SOFTWARE": f"geoproto {__version__}"}
        # The prototypes come from the support over every input: all of them are part of each job.
        job_parts = {"support": file_identity(support),
                     **({"inputs": [file_identity(job.image) for job in jobs]} if several else {})}
        run = dict(extract=extract, prototypes=prototypes, classes=classes, device=device, crf_backend=crf_backend,
                   batch_size=batch_size, workers=workers, journals=journals, job_parts=job_parts, metadata=metadata)
        with tqdm(total=sum(len(job.tiles) for job in jobs), unit="tile", file=sys.stderr,
                  disable=not options.progress, desc="segment") as bar:
            results = []
            for job in jobs:
                with _naming(job.image, several):
                    results.append({**_segment_input(job, options, bar=bar, **run), **shared})
        if not several:  # the whole run's time, encoder and prototypes included
            results[0]["seconds"] = round(time.perf_counter() - started, 3)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    finally:
        for journal in journals:
            journal.close()
    for job in jobs:
        remove_journal(job.output)  # the output is complete: an earlier run's journal of it has served
    return results, shared


@contextlib.contextmanager
def _naming(image: str, several: bool):
    """With several inputs, an error that does not name its input is prefixed with it."""
    try:
        yield
    except GeoprotoError as exc:
        if several and image not in exc.message:
            raise GeoprotoError(f"{image}: {exc.message}", exc.param) from None
        raise


def _supports(jobs: list[_Job], support: str) -> list[tuple]:
    """(support raster, labels, classes) of every input the support touches (the support image alone when
    there is one); classes without a polygon on any of them are left out, with a warning."""
    if jobs[0].inputs.support_source is not jobs[0].inputs.source:  # --support-image: one support raster
        inputs = jobs[0].inputs
        return [(inputs.support_source, inputs.labels, inputs.classes)]
    touched = [job.inputs for job in jobs if job.inputs.labels is not None]
    if not touched:
        raise GeoprotoError(f"{support}: no support polygon overlaps any of the {len(jobs)} input rasters")
    classes = touched[0].classes
    if len(jobs) > 1:
        used = set().union(*(set(inputs.labels.class_ids.tolist()) for inputs in touched))
        missing = [name for class_id, name in zip(classes.ids, classes.names) if class_id not in used]
        if missing:
            warnings.warn(f"{support}: no polygon of class(es) {', '.join(missing)} overlaps any input: left out")
            classes = classes.subset(used)
    return [(inputs.source, inputs.labels, classes) for inputs in touched]


def _segment_input(job: _Job, options: SegmentOptions, extract, prototypes, classes: ClassInfo, device, crf_backend,
                   batch_size: int, workers: int, journals: list, job_parts: dict, metadata: dict, bar) -> dict:
    """One input's windows, written and post-processed in the staging folder; returns its summary."""
    started = time.perf_counter()
    inputs, tiles, area, staged = job.inputs, job.tiles, job.area, job.staged
    image, output, source, crs = job.image, job.output, inputs.source, inputs.crs
    class_tmp, probability_tmp, vector_tmp = staged["output"], staged["probabilities"], staged["vector"]
    raster_format, vector_format = _output_formats(output, job.options)
    output_bytes = 1 + (4 * len(classes.ids) if probability_tmp else 0)  # classes, probabilities
    size = options.tile_size
    with source.dataset() as src, block_cache(src, size, output_bytes, BLOCK_SIDE):
        pixel_area = _pixel_area_m2(src, crs)
        if options.min_area and pixel_area is None:
            raise GeoprotoError(f"{image}: --min-area is in square metres and needs a projected CRS")
        crf_params = options.crf_params
        if options.crf and options.crf_bilateral_m is not None:
            sxy = crf_module.bilateral_sxy_pixels(options.crf_bilateral_m, _pixel_size_m(src, crs))
            crf_params = crf_module.CRFParams(**{**crf_params.__dict__, "bilateral_sxy": sxy})
        journal = None
        if options.resume:
            journal = Journal(output, segment_job(image, options, device.type, tiles, **job_parts), tiles,
                              len(classes.ids), probability_tmp is not None)
            journals.append(journal)
            prototypes = journal.keep_prototypes(prototypes)
        with gdal_write_errors(output):
            writer = ResultWriter(src, crs, classes, class_tmp, probability_tmp, metadata, options.creation_options)
            try:
                resumed, resumed_rejected = journal.replay(writer) if journal else (0, 0)
                counts, crf_rejected, stage_seconds = run_tiles(
                    ClippedSource(source, area) if area is not None else source,
                    journal.pending() if journal else tiles, extract, prototypes, np.array(classes.ids, np.uint8),
                    writer, size, options.alpha, crf_params if options.crf else None, batch_size, workers, bar,
                    crf_backend, journal)
                counts, crf_rejected = counts + resumed, crf_rejected + resumed_rejected
            finally:
                writer.close()
        counts[NODATA] += src.width * src.height - counts.sum()  # windows outside --aoi: never written
    with gdal_write_errors(output):
        min_pixels = math.ceil(options.min_area / pixel_area) if options.min_area else 0
        if min_pixels > 1:  # before anything reads the raster, so that raster and polygons agree
            sieve_classes(class_tmp, min_pixels)
            counts = class_histogram(class_tmp)
        overviews = []
        if raster_format == "COG":
            convert_to_cog(class_tmp, options.creation_options)
        elif options.overviews:
            overviews = build_overviews(class_tmp)
        areas = class_areas(classes, counts, pixel_area)
        # GDAL's sidecar of the class raster (palette, category names, attribute table), written beside
        # it in the staging folder so that it moves into place with it.
        write_legend(f"{class_tmp}.aux.xml", classes, areas)
        if staged["report"]:
            write_area_report(staged["report"], areas)
        polygons = write_polygons(class_tmp, vector_tmp, classes, vector_format, options.simplify) \
            if vector_tmp else None
        if staged["preview"]:
            write_preview(class_tmp, staged["preview"], classes)
    summary = {
        "input": image, "output": output, "tiles": len(tiles), "tiles_resumed": len(journal.records) if journal else 0,
        "tile_size": size, "overlap": options.overlap, "seconds": round(time.perf_counter() - started, 3),
        "classes": areas, "nodata_pixels": int(counts[0]), "min_area_pixels": min_pixels or None,
        "overviews": overviews, "stage_seconds": stage_seconds,
        "crf": {"enabled": options.crf, **({"backend": crf_backend, "iterations": crf_params.iterations,
                                            "bilateral_sxy_px": round(crf_params.bilateral_sxy, 2),
                                            "tiles_kept_unrefined": crf_rejected} if options.crf else {})},
    }
    if polygons is not None:
        summary["polygons"] = polygons
    return summary


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
        raise GeoprotoError(f"--cog writes a COG; it contradicts --driver {options.driver}")
    raster_format = output_driver(output, "COG" if options.cog else options.driver, RASTER_DRIVERS, "raster")
    if options.probabilities:
        output_driver(options.probabilities, "GTiff", RASTER_DRIVERS, "raster")
    if options.preview:
        output_driver(options.preview, "PNG", {"PNG": (".png",)}, "preview")
    if options.report:
        output_driver(options.report, "CSV", {"CSV": (".csv",)}, "report")
    if options.vector_driver and not options.vector:
        raise GeoprotoError("--vector-driver needs --vector")
    vector_format = output_driver(options.vector, options.vector_driver, VECTOR_DRIVERS, "vector") \
        if options.vector else None
    if options.simplify and not options.vector:
        raise GeoprotoError("--simplify applies to the polygons: give --vector too")
    return raster_format, vector_format


DEFAULT_FOLDS = 5
MAX_FOLDS = 100
# Polygons closer than this share a fold: adjacent polygons (the two halves of one roof, a road cut in
# pieces) would otherwise predict each other and flatter the score.
DEFAULT_GROUP_DISTANCE_PX = 32.0


def check_support(image: str, support: str, options: SegmentOptions | None = None, folds: int = DEFAULT_FOLDS,
                  group_distance: float | None = None) -> dict:
    """How well the support polygons separate their classes, by spatially grouped k-fold cross-validation."""
    options = options or SegmentOptions()
    _check_tiling(options)
    folds = check_number("folds", folds, 2, MAX_FOLDS, integer=True)
    if group_distance is not None:
        check_number("group_distance", group_distance, 0)
    if path_exists(support) and is_raster(support):
        raise GeoprotoError(f"{support}: cross-validation needs support polygons (a vector file), not a label raster")
    inputs = open_inputs(image, support, options)
    device = resolve_device(options.device)
    batch_size = options.batch_size or default_batch_size(device)
    check_window_memory(options.tile_size, batch_size, len(inputs.classes.ids))
    _, encoder_info, result = resolve_encoder(inputs, options, device, batch_size, True, folds,
                                              group_distance or DEFAULT_GROUP_DISTANCE_PX)
    return {"input": image, "support": support, "encoder": encoder_info, **result}


def resolve_encoder(inputs: Inputs, options: SegmentOptions, device: torch.device, batch_size: int,
                    check: bool, folds: int = DEFAULT_FOLDS, group_distance: float = DEFAULT_GROUP_DISTANCE_PX):
    """The encoder to segment with, its description, and the support check (cross-validation) when the
    support is polygons: ``--checkpoint`` or ``--backbone``/``--init-weights`` when given, else the shipped
    encoder ``options.encoder``; ``auto`` cross-validates every shipped encoder on the support and keeps
    the default unless another reliably beats it (``crossval.compare_encoders``; support windows are read
    once for all of them). ``check`` asks
    for the cross-validation report of a fixed encoder too (it encodes the support windows once more)."""
    from . import crossval
    from .models import build_shipped, concat_features, select_encoder, shipped_names

    explicit = options.checkpoint or options.init_weights or options.backbone != DEFAULT_BACKBONE
    candidates = shipped_names() if options.encoder == "auto" and not explicit else []
    default = DEFAULT_ENCODER if DEFAULT_ENCODER in candidates or not candidates else candidates[0]
    if not candidates:
        encoder, info = select_encoder(options.encoder, options.backbone, options.checkpoint, options.init_weights)
    if not isinstance(inputs.labels, VectorLabels) or not (candidates or check):
        if candidates:  # no polygons to cross-validate: the default encoder
            encoder, info = build_shipped(default)
            info = {**info, "auto": f"support is a label raster: no cross-validation, used the default {default}"}
        return FeatureExtractor(encoder, device), info, None

    with inputs.support_source.dataset() as src:
        tiles = tile_grid(src.height, src.width, options.tile_size, options.overlap, GRID)
    windows = crossval.read_support_windows(inputs.support_source, inputs.labels, inputs.classes, tiles,
                                            options.tile_size, folds, group_distance)
    num_classes = len(inputs.classes.ids)

    def check_with(features):
        confusion = crossval.cross_validate(features, windows, num_classes, folds, options.alpha)
        return confusion, crossval.report(confusion, inputs.classes, inputs.labels, windows.folds)

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
        warnings.warn(f"--encoder auto {choice['reason']}")
    return FeatureExtractor(encoder, device), {**info, "auto": choice}, reports[picked]
