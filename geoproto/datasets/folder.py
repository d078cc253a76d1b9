"""Any labelled folder: ``images/`` and ``masks/`` with the same file stems, and a ``classes.json``."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import GeoprotoError
from ..classes import read_class_file
from .base import LabelDecoder, LabelledDataset, Sample

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png")


def load_folder(root: str, split_file: str | None = None, holdout: str | None = None) -> LabelledDataset:
    """Masks are RGB colour codes when ``classes.json`` gives colours (an ``ignore_color`` is ignored),
    else integer class ids (0 and an ``ignore_value`` are ignored). Splits: a JSON ``{"train": [stems],
    "test": [stems]}``, or ``holdout``, a regular expression whose matching stems form the test split."""
    base = Path(root)
    if not (base / "images").is_dir() or not (base / "masks").is_dir():
        raise GeoprotoError(f"{root}: expected images/ and masks/ folders")
    if not (base / "classes.json").is_file():
        raise GeoprotoError(f"{root}: no classes.json (class ids, names and optional colours)")
    classes = read_class_file(str(base / "classes.json"))
    raw = json.loads((base / "classes.json").read_text())
    masks = {p.stem: p for p in (base / "masks").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    images = sorted(p for p in (base / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    samples = [Sample(p.stem, str(p), str(masks[p.stem])) for p in images if p.stem in masks]
    if not samples:
        raise GeoprotoError(f"{root}: no image in images/ has a mask with the same name in masks/")
    unmasked = [p.name for p in images if p.stem not in masks]
    if unmasked:
        warnings.warn(f"{root}: {len(unmasked)} image(s) in images/ have no mask of the same name in masks/ "
                      f"(first: {unmasked[0]}); left out")
    _check_mask_sizes(samples)
    if all(c is not None for c in classes.colors):
        ignore_colors = (classes.ignore_color,) if classes.ignore_color else ()
        decoder = LabelDecoder(colors=dict(zip(classes.colors, classes.ids)), ignore_colors=ignore_colors,
                               source=f"{root}/masks")
    else:
        lookup = np.zeros(256, np.uint8)
        lookup[classes.ids] = classes.ids
        ignore = raw.get("ignore_value") if isinstance(raw, dict) else None
        if ignore is not None and not (isinstance(ignore, int) and 0 <= ignore <= 255):
            raise GeoprotoError(f"{base / 'classes.json'}: ignore_value {ignore!r} is no label value 0..255")
        decoder = LabelDecoder(values=lookup, ignore_values=(0,) if ignore is None else (0, ignore),
                               source=f"{root}/masks", hint=' in classes.json (its "ignore_value" ignores one)')
    names = [s.name for s in samples]
    if split_file:
        try:
            splits = {k: list(v) for k, v in json.loads(Path(split_file).read_text()).items()}
        except (OSError, ValueError, AttributeError, TypeError, RecursionError) as exc:
            raise GeoprotoError(f"{split_file}: not a split file ({str(exc)[:200] or type(exc).__name__})") from None
    elif holdout:
        try:
            pattern = re.compile(holdout)
        except re.error as exc:
            raise GeoprotoError(f"{holdout!r} is not a regular expression ({exc})", param="holdout") from None
        splits = {"train": [n for n in names if not pattern.search(n)],
                  "test": [n for n in names if pattern.search(n)]}
    else:
        splits = {"train": names, "test": []}
    known = set(names)
    for split, members in splits.items():
        missing = [n for n in members if n not in known]
        if missing:  # a typo would silently leave an image out of the split
            raise GeoprotoError(f"{split_file}: split {split!r} names {missing[0]!r}, which is no image of {root} "
                                f"with a mask of the same name ({len(missing)} such name(s))", param="split")
    return LabelledDataset(base.name, classes, samples, decoder, splits)


def _check_mask_sizes(samples: list[Sample]) -> None:
    """Labels are read in the image's pixel grid: a mask of another size (another resolution, a crop)
    would label the wrong pixels, so it is refused before any work."""
    from ..raster import open_raster

    for sample in samples:
        with open_raster(sample.image) as image, open_raster(sample.label) as mask:
            if image.shape != mask.shape:
                raise GeoprotoError(f"{sample.label}: {mask.width}x{mask.height} pixels, but its image "
                                    f"{sample.image} is {image.width}x{image.height}; a mask labels its image "
                                    f"pixel for pixel")
