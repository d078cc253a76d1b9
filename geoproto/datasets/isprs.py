"""ISPRS 2-D semantic labelling (Vaihingen, Potsdam), unpacked as the official downloads are."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import GeoprotoError
from ..classes import ClassInfo
from .base import LabelDecoder, LabelledDataset, Sample

CLASSES = ClassInfo(
    [1, 2, 3, 4, 5, 6],
    ["impervious", "building", "low_vegetation", "tree", "car", "clutter"],
    [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)],
)
BOUNDARY = (0, 0, 0)  # eroded ground truth marks boundaries black: ignored
DEFAULT_SPLIT = Path(__file__).with_name("splits") / "isprs.json"
VAIHINGEN_LABEL_DIRS = ["gts_for_participants", "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE",
                        "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE", "ground_truth", "gt", "."]


def _find(root: Path, folders: list[str], name: str) -> Path | None:
    for folder in folders:
        candidate = root / folder / name
        if candidate.is_file():
            return candidate
    return None


def _split(city: str, split_file: str | None) -> dict[str, list[str]]:
    path = split_file or DEFAULT_SPLIT
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return {k: [str(v) for v in names] for k, names in data[city].items()}
    except (OSError, KeyError, ValueError, AttributeError, TypeError, RecursionError) as exc:
        raise GeoprotoError(f"{path}: no {city} split ({str(exc)[:200] or type(exc).__name__})") from None


def load_isprs(root: str, city: str = "vaihingen", bands: str = "IRRG", eroded: bool = False,
               downsample: int | None = None, split_file: str | None = None) -> LabelledDataset:
    """Vaihingen: ``top/top_mosaic_09cm_areaN.tif`` (IRRG) with ``top_mosaic_09cm_areaN[_noBoundary].tif``
    ground truth; Potsdam: ``2_Ortho_RGB``/``3_Ortho_IRRG`` tiles with ``5_Labels_all[_noBoundary]``."""
    base = Path(root)
    if not base.is_dir():
        raise GeoprotoError(f"{root}: no such directory", param="root")
    if city not in ("vaihingen", "potsdam"):
        raise GeoprotoError(f"unknown ISPRS city {city!r}: vaihingen or potsdam", param="city")
    split = _split(city, split_file)
    samples = []
    if city == "vaihingen":
        if bands.upper() != "IRRG":
            raise GeoprotoError("Vaihingen is distributed as IRRG only", param="bands")
        tops = sorted((base / "top").glob("top_mosaic_09cm_area*.tif"))
        if not tops:
            raise GeoprotoError(f"{root}: no top/top_mosaic_09cm_area*.tif (is this the Vaihingen folder?)")
        for top in tops:
            area = re.search(r"area(\d+)", top.name).group(1)
            label_name = top.stem + ("_noBoundary" if eroded else "") + ".tif"
            label = _find(base, VAIHINGEN_LABEL_DIRS, label_name)
            if label is None or label.resolve() == top.resolve():
                continue  # test areas ship without ground truth
            samples.append(Sample(area, str(top), str(label)))
        default_downsample, pixel_m = 1, 0.09
    else:
        folder = {"RGB": "2_Ortho_RGB", "IRRG": "3_Ortho_IRRG"}.get(bands.upper())
        if folder is None:
            raise GeoprotoError("Potsdam bands: RGB or IRRG", param="bands")
        tops = sorted((base / folder).glob(f"top_potsdam_*_{bands.upper()}.tif"))
        if not tops:
            raise GeoprotoError(f"{root}: no {folder}/top_potsdam_*_{bands.upper()}.tif (is this the Potsdam folder?)")
        label_dir = base / ("5_Labels_all_noBoundary" if eroded else "5_Labels_all")
        for top in tops:
            tile = re.search(r"top_potsdam_(\d+_\d+)_", top.name).group(1)
            label = label_dir / f"top_potsdam_{tile}_label{'_noBoundary' if eroded else ''}.tif"
            if not label.is_file():
                continue
            samples.append(Sample(tile, str(top), str(label)))
        default_downsample, pixel_m = 2, 0.05  # the paper halves Potsdam's 5 cm resolution
    if not samples:
        raise GeoprotoError(f"{root}: no {city} tile has ground truth beside it")
    decoder = LabelDecoder(colors=dict(zip(CLASSES.colors, CLASSES.ids)), ignore_colors=(BOUNDARY,),
                           source=f"{city} labels")
    return LabelledDataset(f"isprs-{city}", CLASSES, samples, decoder, split,
                           downsample=downsample or default_downsample, source_pixel_m=pixel_m)
