"""PASCAL-5i: VOC2012 ``JPEGImages`` with ``SegmentationClassAug`` masks, folds of five classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GeoprotoError
from ..classes import ClassInfo
from .base import LabelDecoder, LabelledDataset, Sample

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
# Our ids: 0 ignored (VOC's 255), 1 background (VOC's 0), 2..21 the VOC classes (VOC's 1..20).
CLASSES = ClassInfo(list(range(1, 22)), ["background"] + VOC_CLASSES)


def fold_classes(fold: int) -> tuple[list[str], list[str]]:
    """(seen, unseen) class names of fold ``fold``: fold i holds out VOC classes 5i+1..5i+5."""
    if fold not in range(4):
        raise GeoprotoError("PASCAL-5i folds are 0, 1, 2 and 3", param="fold")
    unseen = VOC_CLASSES[5 * fold: 5 * fold + 5]
    return [c for c in VOC_CLASSES if c not in unseen], unseen


def _names(path: Path) -> list[str] | None:
    return path.read_text().split() if path.is_file() else None


def load_pascal5i(root: str) -> LabelledDataset:
    base = Path(root)
    images, masks = base / "JPEGImages", base / "SegmentationClassAug"
    if not images.is_dir() or not masks.is_dir():
        raise GeoprotoError(f"{root}: expected JPEGImages/ and SegmentationClassAug/ (VOC2012 + SBD aug)")
    samples = [Sample(m.stem, str(images / f"{m.stem}.jpg"), str(m)) for m in sorted(masks.glob("*.png"))
               if (images / f"{m.stem}.jpg").is_file()]
    if not samples:
        raise GeoprotoError(f"{root}: no SegmentationClassAug/*.png with a JPEGImages/*.jpg beside it")
    sets = base / "ImageSets" / "Segmentation"
    val = _names(sets / "val.txt")
    train = _names(sets / "trainaug.txt") or _names(sets / "train.txt")
    all_names = [s.name for s in samples]
    if val is None:
        val = []
    val_set = set(val)
    train = [n for n in (train or all_names) if n not in val_set]
    lookup = np.zeros(256, np.uint8)
    lookup[:21] = np.arange(1, 22)
    decoder = LabelDecoder(values=lookup, ignore_values=(255,), source="SegmentationClassAug")
    return LabelledDataset("pascal5i", CLASSES, samples, decoder, {"train": train, "test": val})
