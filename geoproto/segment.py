"""``segment``: the orchestration of a run, from the user's files to committed outputs.

    inputs.open_inputs          raster + support, checked together
    classifier.fit_support      the support's prototypes (eq. 1), with the encoder (support_check)
    pipeline.WindowPipeline     every window: read -> score (eq. 2-3) -> refine (DenseCRF) -> write
    output.*                    legend, overviews, polygons, report, preview; StagedOutputs commits all

``segment_many`` runs the same flow over several rasters: every input is opened (and every output
staged) first, the classifier is fitted once on the support wherever it lies, then each input is
segmented in turn; all outputs are committed together. With ``resume`` each input's finished windows are
kept in a journal (``resume.py``) and replayed by the next run. Memory is bounded by batch x window,
whatever the raster's size.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field, fields, replace

import numpy as np

from . import __version__
from . import crf as crf_module
from .aoi import ClippedSource, load_area
from .batch import SIDECARS, expand_images, output_paths, sidecar_path
from .classes import NODATA, refuse_one_class
from .classifier import Classifier, fit_support
from .distributed import (ClassifierRecipe, EncoderRecipe, check_scheduler_address, cluster, import_distributed,
                          probe_scheduler, run_on_cluster)
from .errors import GeoprotoError, GeoprotoWarning
from .heads import DEFAULT_ORIENTATIONS, DEFAULT_VARIANT, VARIANTS, check_orientations
from .inputs import Inputs, open_image, open_inputs, stretch_inputs, support_pairs
from .models import DEFAULT_BACKBONE, DEFAULT_ENCODER
from .models.runtime import GRID, default_batch_size, resolve_device
from .models.shipped import is_explicit, refuse_two_encoders
from .output import (BLOCK_SIDE, RASTER_DRIVERS, VECTOR_DRIVERS, ResultWriter, StagedOutputs, area_histogram,
                     build_overviews, check_creation_options, class_areas, class_histogram, convert_to_cog, driver_name,
                     gdal_write_errors, output_driver, polygon_format, sieve_classes, write_area_report, write_legend,
                     write_polygons, write_preview)
from .pipeline import RefineSettings, WindowPipeline, check_window_memory, segment_bar
from .progress import stderr_is_terminal
from .prototype_file import PrototypeFile, load_prototypes
from .raster import block_cache, check_valid, component_files, pixel_area_m2, pixel_size_m, row_areas_m2
from .resume import FILE_OPTIONS, Journal, file_identity, remove_journal, segment_job
from .support_check import choose_encoder, refuse_label_raster_support
from .tiling import tile_grid, window_geometry, window_size
from .validation import ALPHA_RANGE, DEFAULT_ALPHA, MAX_WORKERS, check_number, check_path, check_paths, check_sequence

DEFAULT_TILE_SIZE = 417
DEFAULT_OVERLAP = 64

SCORING_CHOICES = ("auto", *VARIANTS)
# How several inputs are stretched: one stretch pooled over them (``inputs.stretch_inputs``) or each its own.
STRETCH_CHOICES = ("shared", "per-input")


@dataclass
class SegmentOptions:
    """Everything ``segment`` can be told; the CLI maps its options one to one onto these fields."""

    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    bands: list[int] | None = None
    # A shipped encoder (models.shipped), "auto" to choose by cross-validation, or None: a prototype file's own
    # (``prototypes``), else DEFAULT_ENCODER; None too where a checkpoint, weights or another backbone name it.
    encoder: str | None = None
    backbone: str = DEFAULT_BACKBONE
    checkpoint: str | None = None
    init_weights: str | None = None
    # Softmax scale of the cosines (eq. 3). None: a prototype file's own (``prototypes``), else
    # DEFAULT_ALPHA (set so at creation); given with a prototype file, it replaces the file's.
    alpha: float | None = None
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
    # DenseCRF, set for the raster's ground resolution unless overridden.
    crf: bool = True
    crf_backend: str = crf_module.DEFAULT_BACKEND  # crf.BACKENDS; see crf.resolve_backend
    # CRFParams fields that replace the resolution rule's (crf.params_for_resolution), e.g.
    # {"iterations": 10, "bilateral_sxy": 30}; ``crf_bilateral_m`` replaces the rule's bilateral width.
    crf_overrides: dict[str, float] = field(default_factory=dict)
    crf_bilateral_m: float | None = None
    # How windows are scored (heads.VARIANTS), or "auto": as the cross-validation of the support polygons
    # picks (plain prototypes unless a variant beats them reliably; prototypes without polygons).
    scoring: str = "auto"
    # Orientations of each window its features are averaged over (heads.ORIENTATIONS: 1, 2, 4 or 8; support and
    # queries alike). None: a prototype file's own (``prototypes``), else DEFAULT_ORIENTATIONS.
    orientations: int | None = None
    stretch: str = "shared"  # STRETCH_CHOICES: several inputs' stretch (one raster always has one)
    # Outputs
    # Cross-validate polygon support and put the report in the summary (done anyway for encoder and
    # scoring auto).
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
    # Keep finished windows in a journal beside each output, and continue an interrupted run (resume.py)
    resume: bool = False
    progress: bool | None = None  # a progress bar on stderr; None: when stderr is a terminal (progress.py)
    # The windows on a Dask cluster (geoproto.distributed): a scheduler's address, or N local workers
    dask_scheduler: str | None = None
    dask_local: int | None = None

    def __post_init__(self):
        """Refuse NaN, infinities and out-of-range numbers before any work (NaN alpha: one class everywhere)."""
        for name, (low, high, min_open) in SEGMENT_RANGES.items():
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, check_number(name, value, low, high, min_open, name in _INTEGER_FIELDS))
        for name in _PATH_FIELDS:
            if getattr(self, name) is not None:
                setattr(self, name, check_path(name, getattr(self, name)))
        if self.bands is not None:
            self.bands = _check_bands(self.bands)
        for name, example in (("crf_overrides", "{'iterations': 10}"), ("creation_options", "{'COMPRESS': 'ZSTD'}")):
            value = {} if getattr(self, name) is None else getattr(self, name)
            if not isinstance(value, dict):
                raise GeoprotoError(f"must be a dict such as {example}, got {type(value).__name__}", param=name)
            setattr(self, name, value)
        unknown = sorted(set(self.crf_overrides) - {f.name for f in fields(crf_module.CRFParams)})
        if unknown:
            raise GeoprotoError(f"{', '.join(map(str, unknown))}: not a CRF setting; choose among "
                                f"{', '.join(f.name for f in fields(crf_module.CRFParams))}", param="crf_overrides")
        if self.scoring not in SCORING_CHOICES:
            raise GeoprotoError(f"{self.scoring!r}: choose {', '.join(SCORING_CHOICES)}", param="scoring")
        if self.stretch not in STRETCH_CHOICES:
            raise GeoprotoError(f"{self.stretch!r}: choose {', '.join(STRETCH_CHOICES)}", param="stretch")
        if self.orientations is not None:
            check_orientations(self.orientations)
        for name, drivers, what in (("driver", RASTER_DRIVERS, "raster"), ("vector_driver", VECTOR_DRIVERS, "vector")):
            if getattr(self, name) is not None:  # as GDAL spells it (its names ignore case)
                setattr(self, name, driver_name(getattr(self, name), drivers, what, name))
        if self.progress is None:
            self.progress = stderr_is_terminal()
        if self.dask_scheduler and self.dask_local:
            raise GeoprotoError("give a Dask scheduler's address or a number of local workers, not both",
                                param="dask_local")
        # Dask missing, or an address it cannot take: said now, not after the support is encoded.
        if self.dask_scheduler:
            check_scheduler_address(self.dask_scheduler)  # imports Dask
        elif self.dask_local:
            import_distributed()
        refuse_two_encoders(self.encoder, self.backbone, self.checkpoint, self.init_weights)
        if self.prototypes is None:
            self.alpha = DEFAULT_ALPHA if self.alpha is None else self.alpha
            self.orientations = DEFAULT_ORIENTATIONS if self.orientations is None else self.orientations
            # a checkpoint, weights or another backbone name the encoder (``replace`` re-checks)
            if not is_explicit(self.backbone, self.checkpoint, self.init_weights):
                self.encoder = self.encoder or DEFAULT_ENCODER


# Bounds (low, high, low excluded) of SegmentOptions' numbers; the CLI's options use the same.
SEGMENT_RANGES = {
    "tile_size": (32, None, False), "overlap": (0, None, False), "alpha": ALPHA_RANGE,
    "batch_size": (1, None, False), "workers": (0, MAX_WORKERS, False), "buffer": (0, None, False),
    "crf_bilateral_m": (0, 1e4, True), "min_area": (0, None, True), "simplify": (0, None, True),
    "dask_local": (1, MAX_WORKERS, False),
}
_INTEGER_FIELDS = {"tile_size", "overlap", "batch_size", "workers", "dask_local"}
# SegmentOptions' files, taken as str or os.PathLike (``validation.check_path``): the inputs and the sidecar
# outputs, in field order (the first bad one is named).
_PATH_FIELDS = tuple(f.name for f in fields(SegmentOptions) if f.name in FILE_OPTIONS | SIDECARS.keys())


def _check_bands(bands) -> list[int]:
    """Band numbers as a list of whole numbers >= 1: a string or a lone number would otherwise be taken
    apart character by character, or fail deep inside the raster reader."""
    return [check_number("bands", band, 1, integer=True) for band in check_sequence("bands", bands,
                                                                                     "of band numbers, as [3, 2, 1]")]


def options_inputs(image: str, support: str, options: SegmentOptions, shared: bool = False,
                   read_files: dict | None = None) -> Inputs:
    """``inputs.open_inputs`` with the support and raster settings of ``options``; ``read_files``: see there
    (one dict for the run's inputs)."""
    return open_inputs(image, support, options.bands, options.assume_crs, options.support_image,
                       options.class_field, options.layer, options.support_crs, options.classes_file,
                       options.buffer, shared, read_files)


def check_tiling(options: SegmentOptions) -> None:
    """The overlap against the tile size (``SegmentOptions`` bounds each alone: ``SEGMENT_RANGES``)."""
    if options.overlap >= options.tile_size // 2:
        raise GeoprotoError(f"{options.overlap} must be less than half of tile_size {options.tile_size} (at most "
                            f"{options.tile_size // 2 - 1})", param="overlap", mentions=("tile_size",))


@dataclass
class _Staged:
    """The staging paths of a run's outputs (None for outputs not asked for)."""

    classes: str
    probabilities: str | None
    vector: str | None
    preview: str | None
    report: str | None


def _stage(staged: StagedOutputs, output: str, options: SegmentOptions, output_param: str) -> _Staged:
    def stage(path, param):
        return staged.stage(path, param) if path else None

    return _Staged(staged.stage(output, output_param), stage(options.probabilities, "probabilities"),
                   stage(options.vector, "vector"), stage(options.preview, "preview"), stage(options.report, "report"))


@dataclass
class _Job:
    """One input of a run: its output, the run's options with its own sidecar paths, and what the run
    finds out about it before segmenting it."""

    image: str
    output: str
    options: SegmentOptions
    output_param: str = "output"  # the parameter that chose ``output``, for errors about it
    paths: _Staged | None = None
    inputs: Inputs | None = None
    tiles: list | None = None
    tile_size: int | None = None  # its windows' side: ``options.tile_size`` or less (``tiling.window_geometry``)
    overlap: int | None = None  # ``options.overlap``; 0 for a raster within one window
    area: object = None
    refine: RefineSettings | None = None  # its CRF settings (None without the CRF)
    pixel_size: float | None = None  # metres per pixel (None without a metric grid)
    pixel_area: float | None = None  # m² per pixel (None without a metric CRS)
    formats: tuple[str, str | None] | None = None  # of its class raster and polygons (``_output_formats``)


def segment(image: str, support: str | None, output: str, options: SegmentOptions | None = None) -> dict:
    """Segment ``image`` into the classes of ``support`` (or of the prototype file ``options.prototypes``)
    and write ``output``; returns a summary."""
    options = check_options(options)
    image, output = check_path("image", image), check_path("output", output)
    support = None if support is None else check_path("support", support)
    return _segment([_Job(image, output, options)], support, options)[0][0]


def segment_many(images: list[str], support: str | None, output_dir: str,
                 options: SegmentOptions | None = None) -> dict:
    """Segment every raster of ``images`` with one classifier, fitted on ``support`` wherever it lies
    (pixel-weighted over all the inputs it touches) or taken from the prototype file
    ``options.prototypes``, into ``output_dir``/<stem>.tif; the sidecars asked
    for (``options.vector`` etc. empty, or a suffix: ``batch.sidecar_path``) go beside each output.

    All or nothing: the outputs are committed together once every input is done; if one input fails (its
    error names it) none is, and with ``resume`` a rerun continues from every window already done.
    Returns the summary of each input, their totals, and what they share (encoder, support).
    """
    options = check_options(options)
    started = time.perf_counter()
    images, output_dir = check_images(images), check_path("output_dir", output_dir)
    support = None if support is None else check_path("support", support)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission
        raise GeoprotoError(f"{output_dir}: cannot create the folder ({exc.strerror})", param="output_dir") from None
    suffixes = {**SIDECARS, **({"vector": VECTOR_DRIVERS[options.vector_driver][0]} if options.vector_driver else {})}
    jobs = []
    for image, output in zip(images, output_paths(images, output_dir)):
        sidecars = {name: sidecar_path(output, name, getattr(options, name), suffixes[name])
                    for name in SIDECARS if getattr(options, name) is not None}
        jobs.append(_Job(image, output, replace(options, **sidecars), "output_dir"))
    results, shared = _segment(jobs, support, options)
    totals = {"inputs": len(results), "tiles": sum(r["tiles"] for r in results),
              "tiles_resumed": sum(r["tiles_resumed"] for r in results),
              "seconds": round(time.perf_counter() - started, 3), "classes": _total_areas(results)}
    return {"inputs": results, "totals": totals, **shared}


def check_images(images) -> list[str]:
    """The input rasters named by ``images`` (``validation.check_paths``): files, folders of rasters and glob
    patterns, as the CLI takes them (``batch.expand_images``), at least one."""
    images = check_paths("images", images)
    if not images:
        raise GeoprotoError("no input raster", param="images")
    return expand_images(images)


def check_options(options) -> SegmentOptions:
    """``options``, or the defaults for None; a dict or keyword-like object is refused by name."""
    if options is None:
        return SegmentOptions()
    if not isinstance(options, SegmentOptions):
        raise GeoprotoError(f"must be a SegmentOptions (SegmentOptions(tile_size=512, ...)), got "
                            f"{type(options).__name__}", param="options")
    return options


def _total_areas(results: list[dict]) -> list[dict]:
    """Pixels and areas per class summed over the inputs (an area only where every input has one)."""
    totals: dict[int, dict] = {}
    for result in results:
        for entry in result["classes"]:
            total = totals.setdefault(entry["id"], {**entry, "pixels": 0, "area_m2": 0.0, "area_ha": 0.0})
            total["pixels"] += entry["pixels"]
            for key in ("area_m2", "area_ha"):
                total[key] = None if entry[key] is None or total[key] is None else round(total[key] + entry[key], 4)
    return list(totals.values())


def _segment(jobs: list[_Job], support: str | None, options: SegmentOptions) -> tuple[list[dict], dict]:
    """The run: stage every output, open every input, choose the encoder and fit the classifier once, then
    segment each input; commit every output at the end. Returns the summaries per input and what they share."""
    started = time.perf_counter()
    check_tiling(options)
    taught = _prototype_file(support, options)
    if taught is not None:  # the file's encoder, alpha (unless given) and orientations, for everything after
        options = replace(options, encoder=taught.encoder_choice(options.encoder, is_explicit(
                              options.backbone, options.checkpoint, options.init_weights)),
                          alpha=taught.alpha if options.alpha is None else options.alpha,
                          orientations=taught.orientations)
    device = resolve_device(options.device)
    crf_backend = crf_module.resolve_backend(options.crf_backend) if options.crf else None
    several = len(jobs) > 1
    # What each raster's GDAL dataset reads besides itself: a VRT's sources, sidecars (none for a vector support).
    read_by = {raster: component_files(raster)
               for raster in [job.image for job in jobs] + [options.support_image, support] if raster}
    staged = StagedOutputs(options.overwrite, {
        **{("image" if not several else f"image {n}"): job.image for n, job in enumerate(jobs, 1)}, "support": support,
        "support_image": options.support_image, "classes_file": options.classes_file,
        "checkpoint": options.checkpoint, "init_weights": options.init_weights, "aoi": options.aoi,
        "prototypes": options.prototypes,
        # what a VRT reads: replacing one of its sources would destroy an input as surely
        **{f"source {k} of {raster}": path for raster, paths in read_by.items() for k, path in enumerate(paths, 1)}})
    journals: list[Journal] = []
    inputs_stack = contextlib.ExitStack()
    try:
        for job in jobs:
            job.paths = _stage(staged, job.output, job.options, job.output_param)
        for job in jobs:  # after the alias checks: an output that would replace an input is the first thing to say
            job.formats = _output_formats(job.output, job.options)
        for raster_format in {job.formats[0] for job in jobs}:
            check_creation_options(options.creation_options, raster_format, options.probabilities is not None)
        if options.dask_scheduler:  # said in seconds, before the support is read and encoded
            probe_scheduler(options.dask_scheduler)
        read_files: dict = {}  # the support file, read once for every input
        unscaled = []  # inputs whose CRF kernel has no width on the ground
        for job in jobs:
            with _naming(job.image, several):
                job.inputs = inputs_stack.enter_context(
                    open_image(job.image, taught.classes, options.bands, options.assume_crs) if taught
                    else options_inputs(job.image, support, options, shared=several, read_files=read_files))
                # Set now, where the pixel size is known: a CRF width or minimum area the raster cannot
                # take is refused before the encoder is built, and before any input's output is written.
                src = job.inputs.source.dataset
                job.pixel_size = pixel_size_m(src, job.inputs.crs)
                job.refine = RefineSettings(crf_module.params_for_resolution(
                    job.pixel_size, options.crf_bilateral_m, **options.crf_overrides), crf_backend) \
                    if options.crf else None
                if options.crf and crf_module.kernel_at_floor(job.pixel_size, options.crf_overrides):
                    unscaled.append(job.image)
                job.pixel_area = pixel_area_m2(src, job.inputs.crs)
                job.tile_size, job.overlap = window_geometry(src.height, src.width, options.tile_size, options.overlap,
                                                             GRID)
                if options.min_area and job.pixel_area is None:
                    raise _min_area_refusal(job.image, job.inputs.crs)
                if options.simplify and options.vector:
                    _warn_wide_simplify(job.image, options.simplify, src, job.inputs.crs)
            job.inputs.close()
        if unscaled:  # said once, for every such input
            warnings.warn(crf_module.floor_warning(
                unscaled[0] if len(unscaled) == 1 else f"{len(unscaled)} inputs ({unscaled[0]}, ...)"))
        stretch = _stretch([job.inputs for job in jobs], taught, options.stretch)
        supports, classes = support_pairs([job.inputs for job in jobs], support) if taught is None \
            else (None, taught.classes)
        if taught is None:  # before the support is encoded and cross-validated (the classifier checks again:
            refuse_one_class(classes.names, "support")  # a classes file's other classes may have no pixel)
        batch_size = options.batch_size or default_batch_size(device)
        workers = (os.cpu_count() or 1) if options.workers is None else options.workers
        # The largest window the run reads: a folder of small chips never needs a full tile's memory.
        support_windows = [window_size(source.dataset.height, source.dataset.width, options.tile_size, GRID)
                           for source, _ in supports or ()]
        check_window_memory(max([job.tile_size for job in jobs] + support_windows), batch_size, len(classes.ids),
                            workers if crf_backend == "densecrf" else 0)
        extract, encoder_info, check, scoring = choose_encoder_and_scoring(supports, classes, options, device,
                                                                           batch_size, taught=taught)
        if taught is None:
            scales, head = VARIANTS[scoring["used"]]
            classifier, support_stats = fit_support(extract, supports, classes, options.tile_size, options.overlap,
                                                    batch_size, options.alpha, head, scales)
        else:
            classifier, support_stats = taught.classifier(extract, encoder_info, options.alpha)
        for job in jobs:
            with _naming(job.image, several):
                src = job.inputs.source.dataset
                if taught is not None:  # each raster against the supports' resolution and bands
                    support_stats["warnings"] += taught.check_raster(job.image, len(job.inputs.source.bands),
                                                                     job.pixel_size)
                job.area = load_area(src, job.inputs.crs, options.aoi, options.bbox, options.bbox_crs, several)
                job.tiles = tile_grid(src.height, src.width, job.tile_size, job.overlap, GRID)
                if job.area is not None:  # windows that would write only nodata are never read nor encoded
                    job.tiles = [tile for tile in job.tiles if job.area.reaches(tile)]
            job.inputs.close()
        skipped = [job.image for job in jobs if not job.tiles]  # outside the area: no output
        if skipped:
            if len(skipped) == len(jobs):
                raise GeoprotoError(f"{options.aoi or options.bbox}: overlaps none of the {len(jobs)} input rasters",
                                    param="aoi" if options.aoi else "bbox")
            warnings.warn(f"{len(skipped)} input(s) outside the area, skipped (no output): {', '.join(skipped)}")
            jobs = [job for job in jobs if job.tiles]
        shared = {"device": device.type, "encoder": encoder_info, "scoring": scoring,
                  "orientations": classifier.orientations, "support": support_stats,
                  "stretch": stretch,
                  **({"support_check": check} if check else {}), **({"skipped": skipped} if skipped else {})}
        metadata = {"GEOPROTO_VERSION": __version__, "GEOPROTO_ENCODER": _encoder_label(encoder_info),
                    "GEOPROTO_COMMAND": options.command or "geoproto.segment.segment()",
                    "TIFFTAG_SOFTWARE": f"geoproto {__version__}"}
        # The prototypes come from the support over every input: the whole list is part of each job.
        # A VRT's sources too: one rewritten under an unchanged .vrt would be replayed from the journal. Not
        # the sidecars that viewers rewrite (QGIS's statistics in .aux.xml, overviews), which change no label.
        sources = [file_identity(path) for paths in read_by.values() for path in paths
                   if not path.lower().endswith((".aux.xml", ".ovr"))]
        job_inputs = {"support": file_identity(support),
                      **({"inputs": [file_identity(job.image) for job in jobs]} if several else {}),
                      **({"sources": sources} if sources else {})}
        recipe = EncoderRecipe.of(options, encoder_info) if options.dask_scheduler or options.dask_local else None
        with segment_bar(options.progress, sum(len(job.tiles) for job in jobs)) as bar, \
                (cluster(options.dask_scheduler, options.dask_local, max(job.tile_size for job in jobs), batch_size,
                         len(classes.ids), any(job.paths.probabilities for job in jobs))
                 if recipe else contextlib.nullcontext()) as client:
            results = []
            for job in jobs:
                with _naming(job.image, several):
                    # the stretch itself: pooled, it also depends on inputs the area may have skipped
                    journal = Journal(job.output, segment_job(job.image, options, device.type, job.tiles,
                                                              stretch=job.inputs.source.scale, **job_inputs),
                                      job.tiles, len(classifier.classes.ids),
                                      job.paths.probabilities is not None) if options.resume else None
                    journals += [journal] if journal else []
                    results.append({**_segment_input(job, classifier, batch_size, workers, metadata,
                                                     journal, bar, (client, recipe) if recipe else None), **shared})
                job.inputs.close()
        if not several:  # the whole run's time, the encoder and the support included
            results[0]["seconds"] = round(time.perf_counter() - started, 3)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    finally:
        inputs_stack.close()
        for journal in journals:
            journal.close()
    for job in jobs:
        remove_journal(job.output)  # the output is complete: an earlier run's journal of it has served
    return results, shared


# A --simplify tolerance this many pixels wide is taken for one in the wrong units (metres on a lon/lat raster).
SIMPLIFY_WARN_PIXELS = 50


def _warn_wide_simplify(image: str, tolerance: float, src, crs) -> None:
    """Warn, before any work, of a simplification tolerance many pixels wide: it is in the raster CRS's units,
    so ``0.5`` meant as metres is 0.5 degrees on a lon/lat raster, and every polygon collapses."""
    pixels = tolerance / math.hypot(src.transform.a, src.transform.d)
    if pixels >= SIMPLIFY_WARN_PIXELS:
        units = "degrees" if crs is not None and crs.is_geographic else (
            crs.linear_units if crs is not None and crs.linear_units not in ("", "unknown") else "CRS units")
        warnings.warn(GeoprotoWarning(
            f"{image}: simplify {tolerance:g} is in the raster CRS's units ({units}): {pixels:,.0f} pixels wide, "
            f"which leaves little of the polygons; give a tolerance of a pixel or two", mentions=("simplify",)))


def _min_area_refusal(image: str, crs) -> GeoprotoError:
    """Why a minimum area in m² has no pixel count on ``image`` (a CRS not in metres), with the way round:
    "needs a projected CRS" alone reads as a fault of the file rather than of the option."""
    reproject = "reproject the raster to a projected CRS (e.g. gdalwarp -t_srs EPSG:326xx, its UTM zone)"
    if crs is None:
        why, way = "the raster has no CRS, so its pixels have no area", "state its projected CRS (assume_crs)"
    elif crs.is_geographic:
        why, way = "the raster's CRS is geographic (degrees), where a pixel's area changes with latitude", reproject
    else:
        why, way = "the raster's CRS is not in metres", reproject
    return GeoprotoError(f"{image}: min_area is in m² while {why}; {way} or leave out min_area",
                         param="min_area", mentions=("min_area", "assume_crs"))


@contextlib.contextmanager
def _naming(image: str, several: bool):
    """With several inputs, an error that does not name its input is stated with it."""
    try:
        yield
    except GeoprotoError as exc:
        if several and image not in exc.message:
            raise GeoprotoError(f"{image}: {exc.message}", exc.param, exc.mentions) from None
        raise


def _stretch(opened: list[Inputs], taught: PrototypeFile | None, asked: str) -> str:
    """Stretch the inputs as asked (``SegmentOptions.stretch``) and say how: ``prototype file`` (as the
    file's supports were read, where it fits every input: the same ground, the same model input),
    or as ``inputs.stretch_inputs`` does (one stretch pooled over several rasters, or each its own)."""
    if asked == "shared" and taught is not None:
        scales = [taught.stretch(inputs.source.dtype, len(inputs.source.bands)) for inputs in opened]
        if all(scale is not None for scale in scales):
            for inputs, scale in zip(opened, scales):
                check_valid(inputs.source)  # not measured: refused here, before any model work
                inputs.source.scale = scale
                inputs.source.close()
            return "prototype file"
        for inputs in opened:
            inputs.source.close()
    return stretch_inputs(opened, asked)


def _segment_input(job: _Job, classifier: Classifier, batch_size: int, workers: int, metadata: dict,
                   journal: Journal | None, bar, dask: tuple | None) -> dict:
    """One input's windows labelled by ``classifier``, written (after the journal's, with ``resume``) and
    finished in the staging folder, on the Dask cluster when ``dask`` gives its (client, EncoderRecipe);
    returns its summary."""
    started = time.perf_counter()
    options, paths, source, crs, tiles = job.options, job.paths, job.inputs.source, job.inputs.crs, job.tiles
    refine = job.refine
    raster_format, vector_format = job.formats
    output_bytes = 1 + (4 * len(classifier.classes.ids) if paths.probabilities else 0)  # classes, probabilities
    src = source.dataset
    with block_cache(src, job.tile_size, output_bytes, BLOCK_SIDE):
        if journal is not None:
            classifier = replace(classifier, prototypes=journal.keep_prototypes(classifier.prototypes))
        with gdal_write_errors(job.output):
            writer = ResultWriter(src, crs, classifier.classes, paths.classes, paths.probabilities, metadata,
                                  options.creation_options, cog=raster_format == "COG")
            try:
                resumed, resumed_rejected = journal.replay(writer) if journal else (0, 0)
                windows = ClippedSource(source, job.area) if job.area is not None else source
                todo = journal.pending() if journal else tiles
                if dask is not None:
                    client, encoder = dask
                    run = run_on_cluster(client, windows, ClassifierRecipe.of(classifier, encoder, options.device),
                                         todo, writer, job.tile_size, refine, batch_size, bar, journal)
                else:
                    run = WindowPipeline(windows, classifier, writer, job.tile_size, refine, batch_size, workers,
                                         bar, journal).run(todo)
            finally:
                writer.close()
        counts = run.counts + resumed
        counts[NODATA] += src.width * src.height - counts.sum()  # windows outside the area: never written
    with gdal_write_errors(job.output):
        # One pixel area (projected) needs no second read of the raster; rows of their own (degrees) do.
        row_areas = None if job.pixel_area is not None else row_areas_m2(src, crs)
        finished = _finish_outputs(paths, classifier.classes, counts, job.pixel_area, row_areas, raster_format,
                                   vector_format, options)
    summary = {
        "input": job.image, "output": job.output, "tiles": len(tiles),
        "tiles_resumed": len(journal.records) if journal else 0, "tile_size": job.tile_size,
        "overlap": job.overlap, "seconds": round(time.perf_counter() - started, 3),
        "classes": finished["areas"], "nodata_pixels": int(finished["counts"][NODATA]),
        "min_area_pixels": finished["min_pixels"] or None, "overviews": finished["overviews"],
        "stage_seconds": run.stage_seconds,
        "crf": {"enabled": options.crf, **({"backend": refine.backend, "iterations": refine.params.iterations,
                                            "bilateral_sxy_px": round(refine.params.bilateral_sxy, 2),
                                            "tiles_kept_unrefined": run.crf_rejected + resumed_rejected}
                                           if options.crf else {})},
    }
    if finished["polygons"] is not None:
        summary["polygons"] = finished["polygons"]
    return summary


def choose_encoder_and_scoring(supports, classes, options: SegmentOptions, device, batch_size: int,
                               want_report: bool = True, taught=None):
    """The encoder (a FeatureExtractor), its description, the support's cross-validation report (None unless
    it ran) and the scoring variant to fit with it (``used``, and why): what ``segment`` and ``prototypes``
    decide alike on the same support (``support_check.choose_encoder``'s arguments). With a prototype file
    (``taught``; ``supports`` None) the scoring is the file's.

    Cross-validation (check_support, encoder and scoring auto) pools the support over every raster it touches;
    the report (and the scoring variants' cross-validation) only where ``check_support`` or ``scoring`` auto
    asks for it: ``encoder`` auto with a fixed scoring needs the encoders compared, not the variants.
    """
    cross_validate = options.check_support or (options.scoring == "auto" and taught is None)
    extract, info, check = choose_encoder(supports, classes, options, device, batch_size, cross_validate,
                                          want_report=want_report and cross_validate)
    return extract, info, check, _scoring(options.scoring, check, taught)


def _scoring(asked: str, check: dict | None, taught) -> dict:
    """The scoring variant a run uses (``used``) and why: a prototype file's own, the one asked for, or for
    ``auto`` the one the support's cross-validation picked (plain prototypes without polygons to
    cross-validate)."""
    if taught is not None:  # ``_prototype_file`` refused any other asked for
        return {"used": taught.variant, "reason": "from the prototype file"}
    if asked != "auto":
        return {"used": asked, "reason": "asked for"}
    if check is None:
        return {"used": DEFAULT_VARIANT,
                "reason": f"the support is a label raster: no cross-validation, used {DEFAULT_VARIANT}"}
    return {"used": check["scoring"]["picked"], "reason": check["scoring"]["reason"]}


def _prototype_file(support: str | None, options: SegmentOptions):
    """The prototype file ``options.prototypes``, loaded and checked (None without one); exactly one of
    a support and a prototype file teaches the classes; ``check_support`` needs support polygons."""
    if (support is None) == (options.prototypes is None):
        raise GeoprotoError("give either a support or a prototype file, not " + ("both" if support else "neither"),
                            param="prototypes", mentions=("support",))
    if options.prototypes is None:
        if options.check_support:  # before any raster is read or stretched
            refuse_label_raster_support(support, "check_support")
        return None
    if options.check_support:
        raise GeoprotoError("cross-validates support polygons; a prototype file has none", param="check_support")
    for name in ("class_field", "layer", "support_crs", "classes_file", "support_image", "buffer"):
        if getattr(options, name):
            raise GeoprotoError("applies to a support; a prototype file holds its classes already", param=name)
    taught = load_prototypes(options.prototypes)
    if options.scoring not in ("auto", taught.variant):
        raise GeoprotoError(f"asks for {options.scoring}, but {taught.name} was made with scoring {taught.variant}; "
                            f"leave it auto, or rebuild the file with `geoproto prototypes --scoring "
                            f"{options.scoring}`", param="scoring")
    if options.orientations not in (None, taught.orientations):
        raise GeoprotoError(f"asks for {options.orientations}, but {taught.name} was made with features averaged "
                            f"over {taught.orientations} orientation(s); leave it out, or rebuild the file with "
                            f"`geoproto prototypes --orientations {options.orientations}`", param="orientations")
    return taught




def _finish_outputs(paths: _Staged, classes, counts: np.ndarray, pixel_area: float | None,
                    row_areas: np.ndarray | None, raster_format: str, vector_format: str | None,
                    options: SegmentOptions) -> dict:
    """Everything made from the written class raster, in the staging folder: the minimum mapping unit
    (before anything reads the raster, so that raster and polygons agree), overviews or COG layout, the
    legend sidecar, the area report, polygons and preview. Areas are pixels times ``pixel_area``, or, given
    ``row_areas`` (``raster.row_areas_m2``: a geographic raster's), each row's pixels times its own."""
    min_pixels = math.ceil(options.min_area / pixel_area) if options.min_area else 0
    if min_pixels > 1:
        sieve_classes(paths.classes, min_pixels)
        counts = class_histogram(paths.classes)
    overviews = []
    if raster_format == "COG":
        convert_to_cog(paths.classes, options.creation_options)
    elif options.overviews:
        overviews = build_overviews(paths.classes)
    areas = class_areas(classes, counts, pixel_area if row_areas is None else area_histogram(paths.classes, row_areas))
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
    vector_format = polygon_format(options.vector, options.vector_driver) if options.vector else None
    if options.simplify and not options.vector:
        raise GeoprotoError("applies to the polygons: give a vector output too", param="simplify")
    return raster_format, vector_format
