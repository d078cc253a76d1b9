"""``segment``: prototypes from the support, then every window of the orthophoto matched against them.

The flow is: read the support windows and average their features into class prototypes (eq. 1);
tile the orthophoto into full-size overlapping windows; encode a batch of windows, match at feature
resolution and upsample the class scores (eq. 2-3); refine each window with DenseCRF; keep each
window's core and write it. Memory is bounded by batch x window, whatever the raster's size.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from . import crf as crf_module
from .errors import GeoprotoError
from .fewshot import DEFAULT_ALPHA, PrototypeAccumulator
from .models import DEFAULT_BACKBONE, DEFAULT_ENCODER, Encoder
from .output import (BLOCK_SIDE, ResultWriter, StagedOutputs, convert_to_cog, gdal_write_errors, write_polygons,
                     write_preview)
from .pipeline import run_tiles
from .raster import RasterSource, block_cache
from .support import ClassInfo, VectorLabels, is_raster, load_support
from .tiling import tile_grid

DEFAULT_TILE_SIZE = 417
DEFAULT_OVERLAP = 64
# Windows are reflect-padded by this many pixels before encoding and the margin's features dropped:
# zero padding inside the convolutions otherwise makes a band of wrong labels along the raster's edges
# (SpaceNet chip: building IoU 0.174 -> 0.189). A multiple of the encoder stride (8).
CONTEXT_MARGIN = 16
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
    cog: bool = False
    overwrite: bool = False
    progress: bool = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GeoprotoError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise GeoprotoError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


class FeatureExtractor:
    """Runs the encoder on batches of windows: bf16 autocast and channels_last on CUDA, float32 on CPU."""

    def __init__(self, encoder: Encoder, device: torch.device):
        self.device = device
        self.encoder = encoder.to(device).eval()
        if device.type == "cuda":
            self.encoder = self.encoder.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(images)
        batch = torch.nn.functional.pad(batch, (CONTEXT_MARGIN,) * 4, mode="reflect")
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True).contiguous(
                memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                features = self.encoder(batch).float()
        else:
            features = self.encoder(batch)
        cells = CONTEXT_MARGIN // 8
        return features[..., cells:features.shape[-2] - cells, cells:features.shape[-1] - cells]


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def build_prototypes(extract: FeatureExtractor, source: RasterSource, labels, classes: ClassInfo,
                     size: int, overlap: int, batch_size: int) -> tuple[torch.Tensor, ClassInfo, dict]:
    """Class prototypes from every support window; fails if a class has no labelled pixel.

    Classes a --classes file lists but the support never uses are left out (with a warning); the
    returned ClassInfo holds the classes the prototypes are for, in their order.
    """
    lookup = np.zeros(256, np.int64)
    lookup[classes.ids] = np.arange(1, len(classes.ids) + 1)
    unknown: set[int] = set()
    windows = 0
    seen: set[int] = set()
    with source.dataset() as src:
        tiles = labels.candidate_tiles(tile_grid(src.height, src.width, size, overlap))
        labelled = []  # tiles only: labels are read again per batch, so memory does not grow with the support
        for tile in tiles:
            window_labels = labels.read(tile, size)
            present = {int(v) for v in np.unique(window_labels) if v}
            unknown |= present - set(classes.ids)
            seen |= present
            if (lookup[window_labels] > 0).any():
                labelled.append(tile)
        if unknown:
            raise GeoprotoError(f"support has label value(s) {sorted(unknown)} missing from the --classes file")
        unused = [name for class_id, name in zip(classes.ids, classes.names) if class_id not in seen]
        if unused and labels.classes_from_catalogue and len(unused) < len(classes.ids):
            warnings.warn(f"no support for class(es) {', '.join(unused)} of the --classes file: left out")
            classes = classes.subset(seen)
            lookup[:] = 0
            lookup[classes.ids] = np.arange(1, len(classes.ids) + 1)
        accumulator = PrototypeAccumulator(len(classes.ids), extract.encoder.out_channels)
        model_seconds = 0.0
        for chunk in _batches(labelled, batch_size):
            images = np.stack([source.read(src, tile, size)[0] for tile in chunk])
            started = time.perf_counter()
            features = extract(images)
            model_seconds += time.perf_counter() - started
            accumulator.add(features.cpu(), torch.from_numpy(np.stack([lookup[labels.read(tile, size)]
                                                                       for tile in chunk])))
            windows += len(chunk)
    empty = [name for name, pixels in zip(classes.names, accumulator.pixels.tolist()) if pixels == 0]
    if empty:
        raise GeoprotoError(f"class {empty[0]!r} has no labelled pixel inside the raster; label some or remove it")
    if len(classes.ids) < 2:
        raise GeoprotoError(f"support holds one class ({classes.names[0]!r}); label at least two, e.g. "
                            f"the class you want and what surrounds it")
    stats = {"windows": windows, "model_seconds": round(model_seconds, 3),
             "pixels": {name: int(p) for name, p in zip(classes.names, accumulator.pixels.tolist())}}
    return accumulator.prototypes(), classes, stats


def _pixel_size_m(src, crs) -> float | None:
    if crs is None or not crs.is_projected:
        return None
    unit = crs.linear_units_factor[1] if hasattr(crs, "linear_units_factor") else 1.0
    return float(abs(src.transform.a) * unit) if src.transform.b == 0 else None


@dataclass
class Inputs:
    """The opened orthophoto and support: what every command working on a raster + support needs."""

    source: RasterSource
    crs: object  # the raster's CRS, or --assume-crs, or None
    support_source: RasterSource
    labels: object  # VectorLabels or RasterLabels
    classes: ClassInfo


def open_inputs(image: str, support: str, options: SegmentOptions) -> Inputs:
    """Open the orthophoto and its support, checking them against each other."""
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
                              options.classes_file, None if options.support_image else crs, options.buffer)
    classes = labels.classes if isinstance(labels, VectorLabels) else labels.found_classes()
    return Inputs(source, crs, support_source, labels, classes)


def _check_tiling(options: SegmentOptions) -> None:
    if options.tile_size < 32:
        raise GeoprotoError("--tile-size must be at least 32 pixels")
    if not 0 <= options.overlap < options.tile_size // 2:
        raise GeoprotoError("--overlap must be at least 0 and less than half the tile size")


def segment(image: str, support: str, output: str, options: SegmentOptions | None = None) -> dict:
    """Segment ``image`` into the classes of ``support`` and write ``output``; returns a summary."""
    options = options or SegmentOptions()
    started = time.perf_counter()
    _check_tiling(options)
    device = resolve_device(options.device)
    crf_backend = crf_module.resolve_backend(options.crf_backend, device.type) if options.crf else None
    staged = StagedOutputs(options.overwrite)
    class_tmp = staged.stage(output)
    probability_tmp = staged.stage(options.probabilities) if options.probabilities else None
    vector_tmp = staged.stage(options.vector) if options.vector else None
    preview_tmp = staged.stage(options.preview) if options.preview else None
    try:
        inputs = open_inputs(image, support, options)
        source, crs, labels = inputs.source, inputs.crs, inputs.labels
        output_bytes = 1 + (4 * len(inputs.classes.ids) if probability_tmp else 0)  # classes, probabilities
        with source.dataset() as src, block_cache(src, options.tile_size, output_bytes, BLOCK_SIDE):
            batch_size = options.batch_size or (16 if device.type == "cuda" else 1)
            workers = (os.cpu_count() or 1) if options.workers is None else options.workers
            extract, encoder_info, check = resolve_encoder(inputs, options, device, batch_size,
                                                           options.check_support)
            size = options.tile_size
            prototypes, classes, support_stats = build_prototypes(extract, inputs.support_source, labels,
                                                                  inputs.classes, size, options.overlap, batch_size)
            crf_params = options.crf_params
            if options.crf and options.crf_bilateral_m is not None:
                sxy = crf_module.bilateral_sxy_pixels(options.crf_bilateral_m, _pixel_size_m(src, crs))
                crf_params = crf_module.CRFParams(**{**crf_params.__dict__, "bilateral_sxy": sxy})
            tiles = tile_grid(src.height, src.width, size, options.overlap)
            with gdal_write_errors(output):
                writer = ResultWriter(src, crs, classes, class_tmp, probability_tmp)
                try:
                    counts, crf_rejected, stage_seconds = run_tiles(
                        source, tiles, extract, prototypes, np.array(classes.ids, np.uint8), writer, size,
                        options.alpha, crf_params if options.crf else None, batch_size, workers,
                        options.progress, crf_backend)
                finally:
                    writer.close()
        with gdal_write_errors(output):
            if options.cog:
                convert_to_cog(class_tmp)
            polygons = write_polygons(class_tmp, vector_tmp, classes) if vector_tmp else None
            if preview_tmp:
                write_preview(class_tmp, preview_tmp, classes)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    summary = {
        "input": image, "output": output, "tiles": len(tiles), "tile_size": size, "overlap": options.overlap,
        "seconds": round(time.perf_counter() - started, 3), "device": device.type, "encoder": encoder_info,
        "classes": [{"id": i, "name": n, "pixels": int(counts[k])}
                    for k, (i, n) in enumerate(zip(classes.ids, classes.names))],
        "nodata_pixels": int(counts[-1]), "support": support_stats, "stage_seconds": stage_seconds,
        **({"support_check": check} if check else {}),
        "crf": {"enabled": options.crf, **({"backend": crf_backend, "iterations": crf_params.iterations,
                                            "bilateral_sxy_px": round(crf_params.bilateral_sxy, 2),
                                            "tiles_kept_unrefined": crf_rejected} if options.crf else {})},
    }
    if polygons is not None:
        summary["polygons"] = polygons
    return summary


DEFAULT_FOLDS = 5
# Polygons closer than this share a fold: adjacent polygons (the two halves of one roof, a road cut in
# pieces) would otherwise predict each other and flatter the score.
DEFAULT_GROUP_DISTANCE_PX = 32.0


def check_support(image: str, support: str, options: SegmentOptions | None = None, folds: int = DEFAULT_FOLDS,
                  group_distance: float | None = None) -> dict:
    """How well the support polygons separate their classes, by spatially grouped k-fold cross-validation."""
    options = options or SegmentOptions()
    _check_tiling(options)
    if folds < 2:
        raise GeoprotoError("--folds must be at least 2")
    if os.path.exists(support) and is_raster(support):
        raise GeoprotoError(f"{support}: cross-validation needs support polygons (a vector file), not a label raster")
    inputs = open_inputs(image, support, options)
    device = resolve_device(options.device)
    batch_size = options.batch_size or (16 if device.type == "cuda" else 1)
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
        tiles = tile_grid(src.height, src.width, options.tile_size, options.overlap)
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
