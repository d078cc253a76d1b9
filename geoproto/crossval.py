"""Cross-validation on the user's own support polygons: how well the support separates its classes.

The user's polygons are the one ground truth available at run time. Polygons are grouped spatially
(polygons closer than ``group_distance`` pixels share a group, so neighbours never sit in different
folds and leak into each other), groups are dealt to ``folds`` folds class by class, and for each
fold the prototypes of the other folds label the held-out polygons' pixels. Several random deals are
pooled, so the score does not hinge on one split of a dozen polygons. The pooled confusion matrix gives
per-class F1, the confusions between classes, and plain warnings.

The same machinery compares encoders, and ways of scoring (multi-scale features, a linear head fitted on
the support: ``heads``), on the same support (``reliable_choice``): the confusion is kept per spatial
group, so resampling the groups (a bootstrap) shows whether one candidate's lead is more than the luck of
which few polygons were drawn.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from .classes import ClassInfo
from .errors import GeoprotoError
from .fewshot import DEFAULT_ALPHA, upsample_scores
from .heads import DEFAULT_VARIANT, PROTOTYPES, VARIANTS, SupportFit, concat_scales, second_scale_features
from .metrics import json_number, scores
from .models.runtime import CONTEXT_MARGIN, GRID
from .raster import RasterSource, apply_transform
from .support import VectorLabels
from .tiling import Tile, raster_windows

MIN_POLYGONS = 3
CONFUSION_WARNING = 0.3
LOW_F1_WARNING = 0.5
MAX_WINDOWS = 256  # windows cross-validated at most (chosen at random beyond): bounds memory and time
DEFAULT_DRAWS = 3  # random deals of the groups to folds, pooled
BOOTSTRAP_RESAMPLES = 2000
# ``--encoder auto`` leaves the default encoder only for one that beats it in this share of the bootstrap
# resamples of the support's spatial groups: a plain best-F1 choice of encoder cost up to 11 OA points.
SWITCH_CONFIDENCE = 0.95
# Scoring leaves plain prototypes for the variant with the best cross-validated F1 once it wins at least
# half the resamples: a looser bar than the encoder's, which did best on validation data over three
# domains and both encoders (``benchmarks/head_choice.py``; the README gives the figures).
SCORING_CONFIDENCE = 0.5


@dataclass
class SupportWindows:
    """The support windows of a run, over one raster or several: tiles and the raster each is read from,
    per-pixel polygon numbers (0 = none), and how the polygons are grouped and dealt to folds. Each raster's
    windows have the side it is fitted and segmented with (``tiling.window_geometry``): a chip smaller than the
    tile is one window of its own size, so windows of several rasters may differ in size.

    A polygon is numbered once per raster it lies on (a piece each): a polygon across two rasters is two
    pieces, in one spatial group, so they are always in the same fold."""

    sources: list[RasterSource]
    tile_sources: list[int]  # the index in ``sources`` of each window's raster
    tiles: list[Tile]
    polygons: list[np.ndarray]  # per window, S_n x S_n: piece index + 1
    polygon_classes: np.ndarray  # class position (1..K) of each piece
    polygon_features: np.ndarray  # the support file's row of each piece (one per polygon, whatever its pieces)
    groups: np.ndarray  # spatial group of each piece
    fold_draws: np.ndarray  # draws x pieces: the fold of each piece in each random deal

    @property
    def folds(self) -> np.ndarray:
        """The fold of each piece in the first deal."""
        return self.fold_draws[0]

    def used(self) -> dict:
        """What the cross-validation saw: the polygons with pixels (on valid data) in its windows, the windows
        and their distinct sides, and the rasters they lie on."""
        seen = np.zeros(len(self.polygon_features) + 1, bool)
        for numbers in self.polygons:
            seen[numbers.ravel()] = True
        return {"polygons": int(len(np.unique(self.polygon_features[seen[1:]]))),
                "windows": len(self.tiles), "window_sizes": sorted({numbers.shape[-1] for numbers in self.polygons}),
                "rasters": len(set(self.tile_sources))}


def _in_first_grid(datasets: list) -> list[tuple[object, float]]:
    """For each raster of ``datasets``: a map of its pixel coordinates ((N, 2) arrays) into the pixel grid
    of the first raster (None for the first itself), and the size of its pixel there.

    One frame for every raster lets polygons close together across the edge between two rasters be
    found close. Rasters in different CRSs are reprojected; a raster without a CRS is taken to share the
    first one's frame (its polygons were placed with the same assumed CRS)."""
    frames = [(None, 1.0)]
    for dataset in datasets[1:]:
        mapped = functools.partial(_to_first_grid, dataset, datasets[0])
        centre = np.array([[dataset.width / 2, dataset.height / 2]])
        corners = mapped(np.concatenate([centre, centre + [1, 0], centre + [0, 1]]))
        frames.append((mapped, float(np.hypot(*(corners[1:] - corners[0]).T).max())))
    return frames


def _to_first_grid(dataset, first, coords: np.ndarray) -> np.ndarray:
    """Pixel coordinates (N x 2) of ``dataset`` in the pixel grid of ``first``."""
    from rasterio.warp import transform as reproject

    xs, ys = apply_transform(dataset.transform, coords[:, 0], coords[:, 1])
    if dataset.crs is not None and first.crs is not None and dataset.crs != first.crs:
        xs, ys = reproject(dataset.crs, first.crs, xs, ys)
    cols, rows = apply_transform(~first.transform, np.asarray(xs), np.asarray(ys))
    return np.column_stack([cols, rows])


def spatial_groups(supports: list[tuple[RasterSource, VectorLabels]], classes: ClassInfo, group_distance: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The spatial group of each polygon piece of ``supports`` (each raster and its polygons, pieces
    numbered raster after raster) and the class position covering most of each group.

    A group is a connected component of the pieces within ``group_distance`` px of each other, joined
    with the other pieces of their polygons. Every raster's pieces are put in the first raster's grid
    (``_in_first_grid``) so pieces on different rasters are compared too; where pixel sizes differ the
    distance is that of the coarsest raster. Groups are numbered in the order of their first polygon in
    the support file, so the same polygons get the same groups however the rasters cut them.
    """
    import shapely

    frames = _in_first_grid([source.dataset for source, _ in supports])
    pieces = [labels for _, labels in supports]
    geometries = np.concatenate([labels.geometries if mapped is None else shapely.transform(labels.geometries, mapped)
                                 for (mapped, _), labels in zip(frames, pieces)])
    distance = group_distance * max(size for _, size in frames)
    first, second = shapely.STRtree(geometries).query(geometries, predicate="dwithin", distance=distance)
    features = np.concatenate([labels.features for labels in pieces])
    order = np.argsort(features, kind="stable")
    same = features[order[1:]] == features[order[:-1]]  # consecutive pieces of one polygon
    first = np.concatenate([first, order[1:][same]])
    second = np.concatenate([second, order[:-1][same]])
    groups = np.arange(len(geometries))
    while True:  # connected components: propagate the smallest member index, with pointer jumping
        merged = groups.copy()
        np.minimum.at(merged, first, groups[second])
        np.minimum.at(merged, second, groups[first])
        merged = merged[merged]
        if np.array_equal(merged, groups):
            break
        groups = merged
    first_feature = np.full(len(geometries), features.max(initial=0) + 1)
    np.minimum.at(first_feature, groups, features)
    _, group_of = np.unique(first_feature[groups], return_inverse=True)
    # Each polygon's area once (its pieces are the same polygon), in the first raster's pixels.
    _, piece = np.unique(features, return_index=True)
    class_ids = np.concatenate([labels.class_ids for labels in pieces])
    area = np.zeros((int(group_of.max(initial=-1)) + 1, len(classes.ids)))
    np.add.at(area, (group_of[piece], np.searchsorted(classes.ids, class_ids[piece])), shapely.area(geometries[piece]))
    return group_of, area.argmax(1)


def deal_folds(dominant: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold of each group: groups dealt to folds class by class in random order, so every class is
    spread over the folds."""
    rng = np.random.default_rng(seed)
    fold_of_group = np.zeros(len(dominant), np.int64)
    dealt = 0
    for position in np.unique(dominant):
        members = rng.permutation(np.nonzero(dominant == position)[0])
        fold_of_group[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return fold_of_group


def read_support_windows(supports: list[tuple[RasterSource, VectorLabels]], classes: ClassInfo, size: int,
                         overlap: int, folds: int, group_distance: float, draws: int = DEFAULT_DRAWS) -> SupportWindows:
    """The support windows to cross-validate over every (raster, its polygons) of ``supports`` (at most
    MAX_WINDOWS over the run, drawn at random beyond), their polygons' pixels on valid data only (support over
    nodata would teach and score fill values), and the polygons' spatial groups and folds.

    Each raster is cut as ``classifier.accumulate_support`` fits it and ``segment`` reads it: in windows of
    ``size`` with ``overlap``, or in one window of its own size if it is smaller (``tiling.window_geometry``),
    so the features cross-validated are those the classifier is fitted and scored on."""
    sides, candidates = [], []
    for n, (source, labels) in enumerate(supports):
        src = source.dataset
        side, tiles = raster_windows(src.height, src.width, size, overlap, GRID)
        sides.append(side)
        candidates += [(n, tile) for tile in labels.candidate_tiles(tiles)]
    if len(candidates) > MAX_WINDOWS:
        keep = np.random.default_rng(0).choice(len(candidates), MAX_WINDOWS, replace=False)
        candidates = [candidates[i] for i in sorted(keep)]
    offsets = np.cumsum([0] + [len(labels.geometries) for _, labels in supports])
    chosen, polygons = [], []
    for n, tile in candidates:
        source, labels = supports[n]
        numbers = labels.read_polygons(tile, sides[n])
        if numbers.any():
            numbers[numbers > 0] += offsets[n]  # pieces numbered over the run
            numbers = numbers * source.read(tile, sides[n])[1]
        if numbers.any():
            chosen.append((n, tile))
            polygons.append(numbers)
    if not chosen:
        raise GeoprotoError("every support polygon lies over nodata: nothing to cross-validate", param="support")
    position = {class_id: k + 1 for k, class_id in enumerate(classes.ids)}
    pieces = [labels for _, labels in supports]
    group_of, dominant = spatial_groups(supports, classes, group_distance)
    fold_draws = np.stack([deal_folds(dominant, folds, seed)[group_of] for seed in range(draws)])
    return SupportWindows([source for source, _ in supports], [n for n, _ in chosen], [tile for _, tile in chosen],
                          polygons, np.array([position[c] for labels in pieces for c in labels.class_ids]),
                          np.concatenate([labels.features for labels in pieces]), group_of, fold_draws)


def encode_windows(extract, windows: SupportWindows, batch_size: int) -> list[torch.Tensor]:
    """Features of every support window, each read from its raster (1 x C x h x w each, half precision on the
    CPU to bound memory). Only windows of one side are batched together: a raster's windows are consecutive,
    so batches are cut within each run of equal side."""
    features = []
    for size, run in itertools.groupby(range(len(windows.tiles)), key=lambda n: windows.polygons[n].shape[-1]):
        run = list(run)
        for start in range(0, len(run), batch_size):
            images = np.stack([windows.sources[windows.tile_sources[n]].read(windows.tiles[n], size, CONTEXT_MARGIN)[0]
                               for n in run[start:start + batch_size]])
            features += extract(images, CONTEXT_MARGIN).cpu().half().split(1)
    return features


def cross_validate(features: list[torch.Tensor], windows: SupportWindows, num_classes: int, folds: int,
                   alpha: float = DEFAULT_ALPHA, head: str = PROTOTYPES) -> np.ndarray:
    """Confusion of held-out polygon pixels per spatial group, averaged over the fold deals
    (G x K x K, rows: true class); summed over groups it is the pooled confusion matrix. ``features``: each
    window's (``encode_windows``); ``head``: how the other folds' pixels score the held-out ones
    (``heads.SupportFit``)."""
    polygon_class = np.concatenate([[0], windows.polygon_classes])
    polygon_group = np.concatenate([[0], windows.groups])
    class_maps = [torch.from_numpy(polygon_class[numbers]) for numbers in windows.polygons]  # class positions
    group_maps = [polygon_group[numbers] for numbers in windows.polygons]
    cores = []
    for numbers, tile in zip(windows.polygons, windows.tiles):
        core = torch.zeros(numbers.shape, dtype=torch.bool)
        core[tile.core_slices] = True  # score each pixel once, in the window that owns it
        cores.append(core)
    cells = num_classes * num_classes
    matrix = np.zeros((int(windows.groups.max(initial=0)) + 1) * cells, np.float64)
    for fold_of_polygon in windows.fold_draws:
        fold_of = np.concatenate([[-1], fold_of_polygon])
        fold_maps = [torch.from_numpy(fold_of[numbers]) for numbers in windows.polygons]
        for fold in range(folds):
            held_out = [(fold_map == fold) & core for fold_map, core in zip(fold_maps, cores)]
            if not any(mask.any() for mask in held_out):
                continue
            support = SupportFit(num_classes, features[0].shape[1], head)
            for n, (fold_map, core, class_map) in enumerate(zip(fold_maps, cores, class_maps)):
                training_labels = torch.where((fold_map != fold) & core, class_map, 0)
                if training_labels.any():
                    support.add(features[n], training_labels[None].long())
            if (support.pixels == 0).any():
                continue  # a class has all its polygons in this fold: nothing to learn it from
            score = support.fit(alpha)
            for n, mask in enumerate(held_out):
                if not mask.any():
                    continue
                with torch.inference_mode():
                    predicted = upsample_scores(score(features[n].float()), mask.shape)[0].argmax(0)
                truth = class_maps[n][mask].numpy() - 1
                cell = group_maps[n][mask.numpy()] * cells + truth * num_classes + predicted[mask].numpy()
                matrix += np.bincount(cell, minlength=matrix.size)
    return matrix.reshape(-1, num_classes, num_classes) / len(windows.fold_draws)


def reliable_choice(group_confusions: dict[str, np.ndarray], default: str, kind: str = "encoder", seed: int = 0,
                    resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = SWITCH_CONFIDENCE) -> dict:
    """Which of several ways of segmenting (``kind``: encoders, scoring variants) to use, from each one's
    per-group confusion on the same support and folds.

    The default stays unless another's cross-validated mean class F1 beats it in at least ``confidence``
    of the bootstrap resamples of the spatial groups (the same resamples for every candidate); among
    those, the best mean F1 wins. With a dozen polygons, leads of a few F1 points come and go with the
    polygons drawn (measured on the Dubai tiles: the plain best-F1 choice of encoder cost up to 11 OA
    points on a tile), so a lead must be reliable to overrule the default.
    """
    if not any(m.sum() for m in group_confusions.values()):
        return {"picked": default, "default": default, "mean_f1": dict.fromkeys(group_confusions),
                "beats_default": dict.fromkeys(name for name in group_confusions if name != default),
                "reason": f"kept the default {default}: nothing could be cross-validated (every fold held out all "
                          f"the polygons of some class, leaving nothing to learn it from: draw each class in "
                          f"more places)"}
    rng = np.random.default_rng(seed)
    groups = next(iter(group_confusions.values())).shape[0]
    weights = rng.multinomial(groups, np.full(groups, 1 / groups), size=resamples).astype(np.float64)
    resampled = {name: _mean_f1(np.einsum("bg,gkl->bkl", weights, m)) for name, m in group_confusions.items()}
    mean_f1 = {name: _mean_f1(m.sum(0)[None])[0] for name, m in group_confusions.items()}
    wins = {name: float(np.mean(resampled[name] > resampled[default]))
            for name in group_confusions if name != default}
    picked = reliable_pick(mean_f1, wins, default, confidence)
    ranking = ", ".join(f"{name} {mean_f1[name]:.3f}" for name in sorted(mean_f1, key=lambda n: -mean_f1[n]))
    if picked == default:
        best = max(wins, key=wins.get) if wins else None
        reason = (f"kept the default {default}: no {kind} beats it in enough resamples (cross-validated mean class F1: "
                  f"{ranking}" + (f"; {best} beats it in {wins[best]:.0%} of {resamples} bootstrap resamples of "
                                  f"the support's polygon groups, {confidence:.0%} needed)" if best else ")"))
    else:
        reason = (f"picked {picked}: cross-validated mean class F1 {mean_f1[picked]:.3f} against {mean_f1[default]:.3f} "
                  f"for the default {default}, better in {wins[picked]:.0%} of {resamples} bootstrap resamples of "
                  f"the support's polygon groups ({ranking})")
    return {"picked": picked, "default": default, "mean_f1": {k: round(float(v), 4) for k, v in mean_f1.items()},
            "beats_default": {k: round(v, 4) for k, v in wins.items()}, "reason": reason}


def reliable_pick(mean_f1: dict[str, float], wins: dict[str, float], default: str, confidence: float) -> str:
    """The best mean F1 among the candidates that beat ``default`` in at least ``confidence`` of the
    resamples (``wins``) and on the whole support; ``default`` if none does."""
    reliable = [name for name, share in wins.items() if share >= confidence and mean_f1[name] > mean_f1[default]]
    return max(reliable, key=mean_f1.get) if reliable else default


def choose_scoring(extract, features: list[torch.Tensor], windows: SupportWindows, num_classes: int, folds: int,
                   batch_size: int, alpha: float = DEFAULT_ALPHA,
                   known: dict[str, np.ndarray] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Whether to score with plain prototypes (eq. 2) or with multi-scale features and/or a linear head
    fitted on the support (``heads``), cross-validated on the same folds as ``features`` (the 1x features
    of ``windows`` by ``extract``; the 2x ones are encoded here). The default, prototypes, stays unless a
    variant beats it in at least SCORING_CONFIDENCE of the resamples (``reliable_choice``).

    Returns the choice (``reliable_choice``'s keys plus ``scales`` and ``head``: the picked variant's
    settings) and each variant's per-group confusion. ``known``: confusions already computed on these
    features and folds (the encoder choice's plain prototypes), not computed again.
    """
    second = encode_windows(
        lambda images, context: second_scale_features(extract, extract.to_device(images), context), windows, batch_size)
    multiscale = [concat_scales(first, twice).half() for first, twice in zip(features, second)]
    del second
    known = known or {}
    confusions = {name: known[name] if name in known else
                  cross_validate(multiscale if len(scales) > 1 else features, windows, num_classes, folds, alpha, head)
                  for name, (scales, head) in VARIANTS.items()}
    choice = reliable_choice(confusions, DEFAULT_VARIANT, "variant", confidence=SCORING_CONFIDENCE)
    scales, head = VARIANTS[choice["picked"]]
    return {**choice, "scales": list(scales), "head": head}, confusions


def _mean_f1(matrices: np.ndarray) -> np.ndarray:
    """Mean class F1 of each of a stack of confusion matrices (B x K x K); classes never seen nor
    predicted are left out, as in ``metrics.scores``; NaN where no class is (nothing held out), which
    compares unequal to every score."""
    true_positive = np.diagonal(matrices, axis1=1, axis2=2)
    total = matrices.sum(1) + matrices.sum(2)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(total > 0, 2 * true_positive / total, np.nan)
        counted = np.isfinite(f1).sum(1)
        return np.where(counted > 0, np.nansum(f1, 1) / np.maximum(counted, 1), np.nan)


def report(group_confusion: np.ndarray, classes: ClassInfo, windows: SupportWindows) -> dict:
    """Per-class cross-validated F1, the row-normalised confusion, warnings in plain words, and what was
    cross-validated (``SupportWindows.used``), from the per-group confusion ``cross_validate`` returns."""
    matrix = group_confusion.sum(0)
    result = scores(matrix)
    warnings_found = []
    polygons = {class_id: int(len(np.unique(windows.polygon_features[windows.polygon_classes == k + 1])))
                for k, class_id in enumerate(classes.ids)}
    for class_id, name in zip(classes.ids, classes.names):
        if polygons[class_id] < MIN_POLYGONS:
            warnings_found.append(f"class {name} has {polygons[class_id]} polygon(s): cross-validation needs at "
                                  f"least {MIN_POLYGONS}; draw more in other places")
    rows = matrix.sum(1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    for i, a in enumerate(classes.names):
        for j, b in enumerate(classes.names):
            if i < j and max(shares[i, j], shares[j, i]) >= CONFUSION_WARNING:
                warnings_found.append(f"{a} and {b} are confused {max(shares[i, j], shares[j, i]):.0%} of the "
                                      f"time: add support for both")
    for i, name in enumerate(classes.names):
        if rows[i, 0] == 0:
            warnings_found.append(f"class {name} could not be cross-validated (all its polygons are in one "
                                  f"spatial group); draw polygons further apart")
        elif np.isfinite(result["f1"][i]) and result["f1"][i] < LOW_F1_WARNING:
            warnings_found.append(f"class {name} is hard to tell apart (cross-validated F1 {result['f1'][i]:.2f}): "
                                  f"add polygons in more places")
    folds_used = int(len(np.unique(windows.folds)))
    return {
        "classes": {name: {"f1": json_number(result["f1"][i], 4),
                           "precision": json_number(result["precision"][i], 4),
                           "recall": json_number(result["recall"][i], 4), "polygons": polygons[class_id],
                           "held_out_pixels": int(rows[i, 0])}
                    for i, (class_id, name) in enumerate(zip(classes.ids, classes.names))},
        "mean_f1": json_number(result["mean_f1"], 4), "overall_accuracy": json_number(result["overall_accuracy"], 4),
        "confusion": np.rint(matrix).astype(np.int64).tolist(), "confusion_share": np.round(shares, 4).tolist(), "folds": folds_used,
        "cross_validated": windows.used(), "warnings": warnings_found,
    }
