"""Episodic training: episode sampling and the training loop."""

from __future__ import annotations

from ..datasets import LabelledDataset, fold_classes, load_folder, load_isprs, load_pascal5i
from ..errors import GeoprotoError
from .episodes import EpisodeSampler, EpisodeSpec
from .trainer import TrainConfig, check_run_folder, train

DATASETS = ("isprs", "pascal5i", "folder")
# The datasets each optional setting of load_dataset (and PASCAL-5i's fold) means something for.
APPLIES_TO = {"eroded": ("isprs",), "downsample": ("isprs",), "split": ("isprs", "folder"), "holdout": ("folder",),
              "fold": ("pascal5i",)}


def check_dataset_settings(kind: str, **settings) -> None:
    """Refuse a setting given for a dataset that has no use for it (``--holdout`` with ISPRS, ``--fold``
    with a folder), or two that each choose the test images: ignored, they would leave the user believing
    a protocol was followed that was not."""
    for param, value in settings.items():
        if value not in (None, False) and kind not in APPLIES_TO[param]:
            raise GeoprotoError(f"applies to the {' and '.join(APPLIES_TO[param])} dataset(s), not {kind}",
                                param=param)
    if settings.get("split") and settings.get("holdout"):
        raise GeoprotoError("chooses the test images, as split does; give one", param="holdout", mentions=("split",))


def load_dataset(kind: str, root: str, city: str = "vaihingen", bands: str = "IRRG", eroded: bool = False,
                 downsample: int | None = None, split: str | None = None,
                 holdout: str | None = None) -> LabelledDataset:
    """The reader for ``kind`` applied to ``root``."""
    if kind not in DATASETS:
        raise GeoprotoError(f"unknown dataset {kind!r} (known: {', '.join(DATASETS)})")
    check_dataset_settings(kind, eroded=eroded, downsample=downsample, split=split, holdout=holdout)
    if kind == "isprs":
        return load_isprs(root, city, bands, eroded, downsample, split)
    if kind == "pascal5i":
        return load_pascal5i(root)
    return load_folder(root, split, holdout)


def _class_ids(data: LabelledDataset, names: str | list[str] | None) -> list[int]:
    if not names:
        return []
    names = names.split(",") if isinstance(names, str) else names
    unknown = [n for n in names if n not in data.classes.names]
    if unknown:
        raise GeoprotoError(f"{data.name}: no class {unknown[0]!r} (classes: {', '.join(data.classes.names)})")
    return [data.classes.ids[data.classes.names.index(n)] for n in names]


def build_samplers(data: LabelledDataset, config: TrainConfig, train_classes: str | None = None,
                   test_classes: str | None = None, fold: int | None = None, val_split: str | None = "test"):
    """Training episodes over the train split's seen classes; validation episodes over ``val_split``
    (the test classes when some are held out, else the same classes on other images)."""
    if fold is not None and (train_classes or test_classes):
        raise GeoprotoError("chooses the trained and held-out classes itself; give it or train_classes and "
                            "test_classes", param="fold", mentions=("train_classes", "test_classes"))
    test_ids = _class_ids(data, test_classes)
    if fold is not None:  # PASCAL-5i: the fold's five classes are unseen
        seen, unseen = fold_classes(fold)
        test_ids = _class_ids(data, unseen)
        train_ids = _class_ids(data, seen)
    else:
        train_ids = _class_ids(data, train_classes) or [c for c in data.classes.ids if c not in test_ids]
        both = [data.classes.name_of(c) for c in train_ids if c in test_ids]
        if both:  # training would see the pixels of a class held out to test on
            raise GeoprotoError(f"class {both[0]!r} is both trained on and held out; a class is in train_classes "
                                f"or test_classes", param="test_classes", mentions=("train_classes", "test_classes"))
        if not train_ids:
            raise GeoprotoError(f"holds out every class of {data.name}; leave some to train on",
                                param="test_classes")
    if val_split and val_split != "none" and val_split not in data.splits:
        raise GeoprotoError(f"{data.name}: no split {val_split!r} (have: {', '.join(data.splits)}; none: no "
                            f"validation)", param="val_split")
    spec = EpisodeSpec(config.ways, config.shots, config.queries, config.crop)
    train_sampler = EpisodeSampler(data, data.subset("train"), train_ids, spec, config.seed, tuple(test_ids))
    val_sampler = None
    if val_split and val_split != "none" and data.splits.get(val_split):
        val_sampler = EpisodeSampler(data, data.subset(val_split), test_ids or train_ids, spec, config.seed)
    return train_sampler, val_sampler


__all__ = ["EpisodeSampler", "EpisodeSpec", "TrainConfig", "build_samplers", "check_run_folder", "load_dataset",
           "train"]
