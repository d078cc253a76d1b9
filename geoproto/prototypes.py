"""``prototypes``: learn the classes of one or more supports once, into a prototype file for ``segment``.

Each (image, support) pair is read as ``segment`` reads its support (same windows, same pixel
weighting), with one encoder for all pairs; their per-class sums pool into one file
(``prototype_file.merge``), so polygons drawn on several rasters of a flight make one model. The file is
made for the scoring ``segment`` would use on the same support (``--scoring``, auto by cross-validation):
multi-scale features are summed as such, and a linear head is fitted on every pair's labelled cells.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np
import torch

from .classes import MAX_CLASS_ID, ClassInfo, refuse_one_class
from .classifier import accumulate_support
from .errors import GeoprotoError
from .heads import LINEAR, VARIANTS, SupportFit, at_scales
from .inputs import Inputs, SupportLabels, stretch_inputs
from .models.runtime import GRID, default_batch_size, resolve_device
from .output import StagedOutputs
from .prototype_file import (PrototypeFile, check_output_name, encoder_fingerprint, encoder_label, file_sha256,
                             load_prototypes, merge, scoring_record)
from .pipeline import check_window_memory
from .raster import RasterSource, absolute_path, pixel_size_m
from .segment import SegmentOptions, check_options, check_tiling, choose_encoder_and_scoring, options_inputs
from .support import VectorLabels
from .tiling import window_size
from .validation import check_path, check_paths, check_sequence


def build_prototype_file(pairs: list[tuple[str, str]], options: SegmentOptions | None = None
                         ) -> tuple[PrototypeFile, dict]:
    """The prototype file of the (image, support) ``pairs``, and a summary of what it took.

    The encoder and the scoring are chosen once, from ``options``, as ``segment`` chooses them (``auto``
    cross-validates the polygons of every pair, pooled). ``options.support_image`` applies to a single pair only.
    The file is made at ``options.alpha`` (its linear head is fitted at it) and records it. Each pair may hold
    a single class, as long as the pairs pool into two or more.
    """
    return _build(*_checked_request(pairs, options))


def _checked_request(pairs, options) -> tuple[list[tuple[str, str]], SegmentOptions]:
    """``pairs`` and ``options`` checked (and None options made the defaults), before any work or output."""
    options = check_options(options)
    check_tiling(options)
    pairs = check_pairs(pairs)
    if not pairs:
        raise GeoprotoError("give at least one image and its support")
    if options.support_image and len(pairs) > 1:
        raise GeoprotoError("names the raster of a single support; give each support with its own image",
                            param="support_image")
    _refuse_repeated_pairs(pairs)
    return pairs, options


def _build(pairs: list[tuple[str, str]], options: SegmentOptions) -> tuple[PrototypeFile, dict]:
    """``build_prototype_file`` of checked ``pairs`` and ``options`` (``_checked_request``)."""
    device = resolve_device(options.device)
    batch_size = options.batch_size or default_batch_size(device)
    opened: list[Inputs] = []
    read_files: dict = {}  # a support file given for several pairs is read once
    try:
        for image, support in pairs:
            opened.append(options_inputs(image, support, options, read_files=read_files))
            src = opened[-1].support_source.dataset  # its support's windows: the tile, or the raster's own size
            check_window_memory(window_size(src.height, src.width, options.tile_size, GRID), batch_size,
                                len(opened[-1].classes.ids))
            opened[-1].close()  # handles reopen on use: a run over many pairs keeps few files open
        # each pair may hold one class (trees over one raster, buildings over another), as long as they pool
        # into two or more
        support_files = list(dict.fromkeys(support for _, support in pairs))
        where = support_files[0] if len(support_files) == 1 else "the supports of every pair"
        refuse_one_class([name for inputs in opened for name in inputs.classes.names], where, "support")
        stretch = stretch_inputs(opened, options.stretch)  # as segment stretches the same rasters
        extract, info, _, chosen = choose_encoder_and_scoring(
            *_cross_validation_pairs(opened, [support for _, support in pairs]), options, device, batch_size,
            want_report=options.scoring == "auto")
        scales, head = VARIANTS[chosen["used"]]
        scoring = scoring_record(chosen["used"], chosen["reason"])
        fingerprint = encoder_fingerprint(extract.encoder)
        extract = at_scales(extract, scales)
        encoder = {"name": encoder_label(info), "fingerprint": fingerprint, "channels": int(extract.out_channels),
                   "description": info}
        files, accumulators, supports = [], [], []
        # sha256 of each support file, once however many rasters share it
        digests = {path: file_sha256(path) for path in dict.fromkeys(absolute_path(s) for _, s in pairs)}
        for (image, support), inputs in zip(pairs, opened):
            accumulator, classes, stats = accumulate_support(extract, [(inputs.support_source, inputs.labels)],
                                                             inputs.classes, options.tile_size, options.overlap,
                                                             batch_size, head, min_classes=1)
            files.append(PrototypeFile(classes, accumulator.feature_sum.numpy(), accumulator.pixels.numpy(),
                                       encoder, [_provenance(inputs, support, digests[absolute_path(support)], options,
                                                   stats["pixels"])],
                                       inputs.polygons is not None and inputs.polygons.numbered_by_name,
                                       scoring=scoring, alpha=options.alpha,
                                       orientations=options.orientations))
            accumulators.append(accumulator)
            inputs.close()
            supports.append({"image": image, "support": support, **stats})
    finally:
        for inputs in opened:
            inputs.close()
    pooled = merge(files)
    refuse_one_class(pooled.classes.names, where, "support")  # a classes file's classes may lack pixels
    fitted = {"weight": _pooled_fit(accumulators, files, pooled).fit(options.alpha).weight.numpy()} \
        if head == LINEAR else {}
    return replace(pooled, head=fitted, scoring=scoring), {"supports": supports, "device": device.type,
                                                           "tile_size": options.tile_size, "overlap": options.overlap,
                                                           "stretch": stretch}


def check_pairs(pairs) -> list[tuple[str, str]]:
    """``pairs`` as a list of (image, support) ``str`` paths; one bare pair, ``(image, support)``, is refused
    rather than read as two pairs of characters."""
    checked = []
    for pair in check_sequence("pairs", pairs, "of (image, support) pairs, as [('a.tif', 'a.gpkg')]"):
        if isinstance(pair, (str, os.PathLike)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise GeoprotoError(f"must be a list of (image, support) pairs, as [('a.tif', 'a.gpkg')]; got an item "
                                f"{pair!r}", param="pairs")
        checked.append((check_path("pairs", pair[0]), check_path("pairs", pair[1])))
    return checked


def _refuse_repeated_pairs(pairs: list[tuple[str, str]]) -> None:
    """A pair given twice would count its support's pixels twice (``prototype_file.merge`` refuses the
    same in files): refused before any work, naming both positions."""
    seen: dict[tuple[str, str], int] = {}
    for number, (image, support) in enumerate(pairs, 1):
        first = seen.setdefault((absolute_path(image), absolute_path(support)), number)
        if first != number:
            raise GeoprotoError(f"pair {number} ({image} with support {support}) repeats pair {first}; its pixels "
                                f"would count twice (give each image and support once)")


def _pooled_fit(accumulators: list[SupportFit], files: list[PrototypeFile], pooled: PrototypeFile) -> SupportFit:
    """One accumulator holding every pair's sums and labelled cells, in the pooled file's class order, for
    a head fitted on them all (as ``classifier.fit_support`` fits one on a support spread over rasters).
    A single pair's is its own."""
    names = pooled.classes.names
    if len(accumulators) == 1:
        return accumulators[0]
    fit = SupportFit(len(names), pooled.feature_sum.shape[1], accumulators[0].head)
    fit.feature_sum, fit.pixels = torch.from_numpy(pooled.feature_sum), torch.from_numpy(pooled.pixels)
    for accumulator, item in zip(accumulators, files):
        features, weights = accumulator.cells.arrays()
        pooled_weights = torch.zeros(len(weights), len(names), dtype=weights.dtype)
        pooled_weights[:, [names.index(name) for name in item.classes.names]] = weights
        fit.cells.features.append(features)
        fit.cells.weights.append(pooled_weights)
    return fit


def write_prototypes(pairs: list[tuple[str, str]], output: str, options: SegmentOptions | None = None) -> dict:
    """Build the prototype file of ``pairs`` and write it to ``output`` (atomically); returns a summary."""
    started = time.perf_counter()
    pairs, options = _checked_request(pairs, options)
    output = check_path("output", output)
    inputs = {f"image {i + 1}": image for i, (image, _) in enumerate(pairs)}
    inputs.update({f"support {i + 1}": support for i, (_, support) in enumerate(pairs)})
    inputs.update({"support_image": options.support_image, "classes_file": options.classes_file,
                   "checkpoint": options.checkpoint, "init_weights": options.init_weights})
    with StagedOutputs(options.overwrite, inputs) as staged:
        staging = staged.stage(output, "output")
        check_output_name(output)
        pooled, summary = _build(pairs, options)
        pooled.save(staging)
        staged.commit()
    return {"output": output, **_describe(pooled), **summary, "seconds": round(time.perf_counter() - started, 3)}


def merge_prototype_files(paths: list[str], output: str, overwrite: bool = False) -> dict:
    """Pool the prototype files ``paths`` into ``output`` (``prototype_file.merge``); returns a summary."""
    paths, output = check_paths("paths", paths), check_path("output", output)
    with StagedOutputs(overwrite, {f"file {i + 1}": path for i, path in enumerate(paths)}) as staged:
        staging = staged.stage(output, "output")
        check_output_name(output)
        pooled = merge([load_prototypes(path, None) for path in paths])
        pooled.save(staging)
        staged.commit()
    return {"output": output, "inputs": paths, **_describe(pooled)}


def _cross_validation_pairs(opened: list[Inputs], supports: list[str]
                            ) -> tuple[list[tuple[RasterSource, SupportLabels]], ClassInfo]:
    """Every pair's (raster, labels), for ``--encoder auto`` to cross-validate them pooled, and the classes
    of their polygons.

    Classes are matched by name, as the pairs' files are pooled (``prototype_file.merge``), whatever id
    each support gave them. A support file numbers its polygons by its rows, so those of each further
    file are offset past the previous files': polygons of two files are never taken for pieces of one
    (which would put them in one spatial group); a file given for several rasters keeps its numbers, so
    the pieces of a polygon drawn across two of them stay together.
    """
    names = list(dict.fromkeys(name for inputs in opened if inputs.polygons is not None
                               for name in inputs.polygons.classes.names))
    classes = ClassInfo(list(range(1, len(names) + 1)), names)
    files = [absolute_path(support) for support in supports]
    rows: dict[str, int] = {}  # per file, past its highest polygon number
    for inputs, path in zip(opened, files):
        if inputs.polygons is not None:
            rows[path] = max(rows.get(path, 0), int(inputs.polygons.features.max()) + 1)
    offsets = dict(zip(rows, np.cumsum([0, *rows.values()]).tolist()))
    pooled = []
    for inputs, path in zip(opened, files):
        labels = inputs.polygons
        if labels is None:  # a label raster: nothing to cross-validate
            pooled.append((inputs.support_source, inputs.labels))
            continue
        offset = offsets[path]
        renumber = np.zeros(MAX_CLASS_ID + 1, np.int64)
        renumber[labels.classes.ids] = [names.index(name) + 1 for name in labels.classes.names]
        pooled.append((inputs.support_source, VectorLabels(labels.geometries, renumber[labels.class_ids], classes,
                                                           labels.features + offset, labels.numbered_by_name)))
    return pooled, classes


def _provenance(inputs: Inputs, support: str, support_sha256: str | None, options: SegmentOptions,
                pixels: dict[str, int]) -> dict:
    """Where a support's prototypes come from and what the encoder saw: the raster the labels lie on, its
    bands, input scaling and ground resolution."""
    labelled = inputs.support_source
    src = labelled.dataset
    crs = src.crs if options.support_image else inputs.crs
    return {"image": absolute_path(labelled.path), "support": absolute_path(support),
            "support_sha256": support_sha256,
            "bands": list(labelled.bands), "dtype": labelled.dtype,
            "scaling": [list(pair) for pair in labelled.scale], "pixel_size_m": pixel_size_m(src, crs),
            "crs": crs.to_string() if crs is not None else None, "pixels": pixels}


def _describe(pooled: PrototypeFile) -> dict:
    return {"classes": [{"id": i, "name": n, "pixels": p} for i, n, p in
                        zip(pooled.classes.ids, pooled.classes.names, pooled.pixels.tolist())],
            "sources": len(pooled.sources), "encoder_name": pooled.encoder["name"],
            "encoder_sha256": pooled.encoder["fingerprint"], "scoring": pooled.scoring,
            "orientations": pooled.orientations}
