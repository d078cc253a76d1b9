"""Cross-validation on the user's own support polygons: how well the support separates its classes.

The user's polygons are the one ground truth available at run time. Polygons are grouped spatially
(polygons closer than ``group_distance`` pixels share a group, so neighbours never sit in different
folds and leak into each other), groups are spread over ``folds`` folds class by class, and for each
fold the prototypes of the other folds label the held-out polygons' pixels. The pooled confusion
matrix gives per-class F1, the confusions between classes, and plain warnings.

The same machinery scores several encoders on the same support (``choose_encoder``): the support
windows are read once, each encoder's features are computed once and reused for the final prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .fewshot import DEFAULT_ALPHA, class_probabilities, window_class_means
from .metrics import scores
from .raster import RasterSource
from .support import ClassInfo, VectorLabels
from .tiling import Tile

MIN_POLYGONS = 3
CONFUSION_WARNING = 0.3
LOW_F1_WARNING = 0.5


MAX_WINDOWS = 256  # windows cross-validated at most (chosen at random beyond): bounds memory and time


@dataclass
class SupportWindows:
    """The support windows of one raster: tiles and per-pixel polygon numbers (0 = none)."""

    source: RasterSource
    tiles: list[Tile]
    polygons: np.ndarray  # N x S x S, polygon index + 1
    polygon_classes: np.ndarray  # class position (1..K) of each polygon
    folds: np.ndarray  # fold of each polygon


def spatial_folds(labels: VectorLabels, classes: ClassInfo, folds: int, group_distance: float,
                  seed: int = 0) -> np.ndarray:
    """Fold number of each polygon: spatial groups (connected components of polygons within
    ``group_distance`` px of each other) dealt to folds class by class (a group counts for the class
    covering most of it), so every class is spread over the folds."""
    import shapely

    count = len(labels.geometries)
    first, second = labels.tree.query(labels.geometries, predicate="dwithin", distance=group_distance)
    groups = np.arange(count)
    while True:  # connected components: propagate the smallest member index, with pointer jumping
        merged = groups.copy()
        np.minimum.at(merged, first, groups[second])
        np.minimum.at(merged, second, groups[first])
        merged = merged[merged]
        if np.array_equal(merged, groups):
            break
        groups = merged
    group_ids, group_of = np.unique(groups, return_inverse=True)
    class_position = np.searchsorted(classes.ids, labels.class_ids)
    area = np.zeros((len(group_ids), len(classes.ids)))
    np.add.at(area, (group_of, class_position), shapely.area(labels.geometries))
    dominant = area.argmax(1)
    rng = np.random.default_rng(seed)
    fold_of_group = np.zeros(len(group_ids), np.int64)
    dealt = 0
    for position in range(len(classes.ids)):
        members = rng.permutation(np.nonzero(dominant == position)[0])
        fold_of_group[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return fold_of_group[group_of]


def read_support_windows(source: RasterSource, labels: VectorLabels, classes: ClassInfo, tiles: list[Tile],
                         size: int, folds: int, group_distance: float) -> SupportWindows:
    candidates = labels.candidate_tiles(tiles)
    if len(candidates) > MAX_WINDOWS:
        keep = np.random.default_rng(0).choice(len(candidates), MAX_WINDOWS, replace=False)
        candidates = [candidates[i] for i in sorted(keep)]
    chosen, polygons = [], []
    for tile in candidates:
        numbers = labels.read_polygons(tile, size)
        if numbers.any():
            chosen.append(tile)
            polygons.append(numbers)
    position = {class_id: k + 1 for k, class_id in enumerate(classes.ids)}
    return SupportWindows(source, chosen, np.stack(polygons),
                          np.array([position[c] for c in labels.class_ids]),
                          spatial_folds(labels, classes, folds, group_distance))


def encode_windows(extract, windows: SupportWindows, batch_size: int) -> torch.Tensor:
    """Features of every support window (N x C x h x w, half precision on the CPU to bound memory)."""
    size = windows.polygons.shape[-1]
    features = []
    with windows.source.dataset() as src:
        for start in range(0, len(windows.tiles), batch_size):
            images = np.stack([windows.source.read(src, tile, size)[0]
                               for tile in windows.tiles[start:start + batch_size]])
            features.append(extract(images).cpu().half())
    return torch.cat(features)


def cross_validate(features: torch.Tensor, windows: SupportWindows, num_classes: int, folds: int,
                   alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Pooled K x K confusion matrix (rows: true class) of held-out polygon pixels over all folds."""
    size = windows.polygons.shape[-2:]
    polygon_class = np.concatenate([[0], windows.polygon_classes])
    polygon_fold = np.concatenate([[-1], windows.folds])
    class_map = torch.from_numpy(polygon_class[windows.polygons])  # N x S x S class positions
    fold_map = torch.from_numpy(polygon_fold[windows.polygons])
    core = torch.zeros(windows.polygons.shape, dtype=torch.bool)
    for n, tile in enumerate(windows.tiles):
        rows, cols = tile.core_slices
        core[n, rows, cols] = True  # score each pixel once, in the window that owns it
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for fold in range(folds):
        held_out = (fold_map == fold) & core
        if not held_out.any():
            continue
        training_labels = torch.where(fold_map != fold, class_map, 0)
        sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
        windows_with = torch.zeros(num_classes)
        for n in range(len(features)):
            means, area = window_class_means(features[n:n + 1].float(), training_labels[n:n + 1].long(),
                                             num_classes)
            sums += (means[0] * (area[0] > 0)[:, None]).double()
            windows_with += (area[0] > 0).float()
        if (windows_with == 0).any():
            continue  # a class has all its polygons in this fold: nothing to learn it from
        prototypes = (sums / windows_with[:, None]).float()
        for n in torch.nonzero(held_out.flatten(1).any(1)).flatten().tolist():
            with torch.inference_mode():
                predicted = class_probabilities(features[n:n + 1].float(), prototypes, size, alpha)[0].argmax(0) + 1
            mask = held_out[n]
            truth = class_map[n][mask].numpy() - 1
            guess = predicted[mask].numpy() - 1
            matrix += np.bincount(truth * num_classes + guess, minlength=num_classes ** 2).reshape(
                num_classes, num_classes)
    return matrix


def report(matrix: np.ndarray, classes: ClassInfo, labels: VectorLabels, folds: np.ndarray) -> dict:
    """Per-class cross-validated F1, the row-normalised confusion, and warnings in plain words."""
    result = scores(matrix)
    warnings_found = []
    polygons = {c: int((labels.class_ids == c).sum()) for c in classes.ids}
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
    folds_used = int(len(np.unique(folds)))
    return {
        "classes": {name: {"f1": _num(result["f1"][i]), "precision": _num(result["precision"][i]),
                           "recall": _num(result["recall"][i]), "polygons": polygons[class_id],
                           "held_out_pixels": int(rows[i, 0])}
                    for i, (class_id, name) in enumerate(zip(classes.ids, classes.names))},
        "mean_f1": _num(result["mean_f1"]), "overall_accuracy": _num(result["overall_accuracy"]),
        "confusion": matrix.tolist(), "confusion_share": np.round(shares, 4).tolist(), "folds": folds_used,
        "warnings": warnings_found,
    }


def _num(value) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 4)
