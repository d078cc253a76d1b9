"""C-way K-shot episodes of crops from a LabelledDataset.

Episode ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone, so any worker can build it
and a resumed run sees exactly the episodes an uninterrupted one would. Crops are centred on cells
known to hold the wanted class (an index of class counts per 64 px cell, built once from a reduced
read of every label file) and checked after reading; flips and 90-degree rotations are applied to each
crop, since aerial imagery has no "up".

Episode labels: 0 ignored, 1 background (pixels of known classes outside the episode; PANet's
treatment), 2..C+1 the episode's classes. Pixels of classes reserved for testing stay ignored, so the
encoder is never taught to call them background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GeoprotoError
from ..datasets import LabelledDataset, Sample

CELL = 64
MIN_CELL_SHARE = 0.02
CROP_TRIES = 20
BACKGROUND = 1


@dataclass(frozen=True)
class EpisodeSpec:
    ways: int = 1
    shots: int = 5
    queries: int = 1
    crop: int = 417


class EpisodeSampler:
    """Builds episodes over ``samples`` for the class ids ``classes`` (ids of ``dataset.classes``)."""

    def __init__(self, dataset: LabelledDataset, samples: list[Sample], classes: list[int], spec: EpisodeSpec,
                 seed: int, ignored_classes: tuple[int, ...] = ()):
        if not samples:
            raise GeoprotoError(f"{dataset.name}: no images in this split")
        self.dataset, self.samples, self.spec, self.seed = dataset, samples, spec, seed
        self.ignored = np.array(ignored_classes, np.int64)
        self.sizes = [dataset.size(s) for s in samples]
        # class id -> (sample index, cell row, cell col) candidates and their weights
        candidates: dict[int, list] = {c: [] for c in classes}
        threshold = MIN_CELL_SHARE * CELL * CELL
        for index, sample in enumerate(samples):
            cells = dataset.class_cells(sample, CELL)
            for class_id in classes:
                rows, cols = np.nonzero(cells[dataset.classes.ids.index(class_id)] >= threshold)
                candidates[class_id] += [(index, r, c) for r, c in zip(rows, cols)]
        self.classes = [c for c in classes if candidates[c]]
        missing = [dataset.classes.name_of(c) for c in classes if not candidates[c]]
        if len(self.classes) < spec.ways:
            found = ", ".join(dataset.classes.name_of(c) for c in self.classes) or "none"
            absent = f"; {', '.join(missing)} do(es) not" if missing else ""
            raise GeoprotoError(f"{dataset.name}: {len(self.classes)} of the episode classes occur in these images "
                                f"({found}){absent}: too few for {spec.ways}-way episodes (lower ways)",
                                mentions=("ways",))
        self.candidates = {c: np.array(v) for c, v in candidates.items() if v}

    def _crop(self, rng: np.random.Generator, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        crop = self.spec.crop
        for _ in range(CROP_TRIES):
            index, row, col = self.candidates[class_id][rng.integers(len(self.candidates[class_id]))]
            height, width = self.sizes[index]
            centre_row = row * CELL + CELL // 2 + rng.integers(-CELL // 2, CELL // 2)
            centre_col = col * CELL + CELL // 2 + rng.integers(-CELL // 2, CELL // 2)
            top = int(np.clip(centre_row - crop // 2, 0, max(0, height - crop)))
            left = int(np.clip(centre_col - crop // 2, 0, max(0, width - crop)))
            image, labels = self.dataset.read(self.samples[index], top, left, min(crop, height), min(crop, width))
            if (labels == class_id).any():
                return _augment(rng, *pad_crop(image, labels, crop))
        raise GeoprotoError(f"{self.dataset.name}: could not crop class {class_id} after {CROP_TRIES} tries")

    def _episode_labels(self, labels: np.ndarray, episode_classes: list[int]) -> np.ndarray:
        out = np.where(labels > 0, BACKGROUND, 0).astype(np.int64)
        out[np.isin(labels, self.ignored)] = 0
        for position, class_id in enumerate(episode_classes):
            out[labels == class_id] = BACKGROUND + 1 + position
        return out

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """Support and query crops (float32 N x 3 x S x S) and episode labels (int64 N x S x S)."""
        rng = np.random.default_rng([self.seed, index])
        episode_classes = [int(c) for c in rng.choice(self.classes, self.spec.ways, replace=False)]
        supports = [self._crop(rng, c) for c in episode_classes for _ in range(self.spec.shots)]
        queries = [self._crop(rng, episode_classes[rng.integers(len(episode_classes))])
                   for _ in range(self.spec.queries)]
        return {
            "support_images": np.stack([i for i, _ in supports]),
            "support_labels": np.stack([self._episode_labels(lab, episode_classes) for _, lab in supports]),
            "query_images": np.stack([i for i, _ in queries]),
            "query_labels": np.stack([self._episode_labels(lab, episode_classes) for _, lab in queries]),
            "classes": np.array(episode_classes),
        }


def pad_crop(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images smaller than a crop: reflect the image, leave the padding unlabelled."""
    pad_rows, pad_cols = size - labels.shape[0], size - labels.shape[1]
    if pad_rows or pad_cols:
        mode = "reflect" if min(labels.shape) > max(pad_rows, pad_cols) else "edge"
        image = np.pad(image, ((0, 0), (0, pad_rows), (0, pad_cols)), mode=mode)
        labels = np.pad(labels, ((0, pad_rows), (0, pad_cols)))
    return image, labels


def _augment(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    turns = int(rng.integers(4))
    image, labels = np.rot90(image, turns, axes=(1, 2)), np.rot90(labels, turns)
    if rng.integers(2):
        image, labels = image[:, :, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(labels)
