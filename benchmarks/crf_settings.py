"""DenseCRF kernels per ground resolution and the guard, on validation data: OA, mIoU, per-class F1 (%) and
windows vetoed, CRF off against each setting, per data set.

    .venv/bin/python benchmarks/crf_settings.py --root DUBAI_FOLDER [--shots 5] [--seeds 0,1] [--settings ...]
        [--encoder dubai] [--scoring auto] [--datasets dubai,spacenet,pivots]

Validation data (never Dubai area 6, the test split):
- Dubai area 5 at 0.3 m, the paper's protocol (``evaluate``'s patches and supports; supports from areas
  1-4, ``examples/dubai/split-train-1to4-val-5.json``);
- the SpaceNet chip at 0.5 m (``segment``, bundled support; buildings vs rest, support buildings left out);
- the 30 m Albers chip (``segment``, 6 pivots + 3 other boxes; the 13 other pivots vs rest).
The chips run ``segment --scoring`` (``--scoring``, default auto: what ``segment`` picks on them):
the CRF must hold the bar of issue 17 whichever scoring ``segment`` picks (OA up, no class F1 down by
more than 2 points).
The model's probabilities are computed once per data set; each kernel setting refines every window once
(torch backend, unguarded; settings equal at a data set's resolution share one row) and each guard is
then applied to the recorded windows: a vetoed window counts with its unrefined labels, as ``segment``
and ``evaluate`` keep them. The chosen rule (``crf.params_for_resolution``) is measured on the test data
by ``benchmarks/accuracy.py``. On this 2-core CPU, shared: about 15 s per setting and seed for area 5
(81 windows) after 20 s of encoding, and under a minute per setting for both chips.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from geoproto import crf, crf_torch
from geoproto.evaluation import PATCH, _read_patch, patch_index, sample_supports, shot_prototypes, summarise
from geoproto.fewshot import class_probabilities
from geoproto.metrics import confusion_matrix
from geoproto.models import build_shipped
from geoproto.models.runtime import GRID, FeatureExtractor
from geoproto.raster import pixel_size_m
from geoproto.segment import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, SegmentOptions, segment
from geoproto.tiling import tile_grid
from geoproto.training import load_dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import encoder_choice  # noqa: E402  (the same supports and truth as the encoder benchmark)
from segment_throughput import DUBAI_PIXEL_M  # noqa: E402

VALIDATION_SPLIT = REPO / "examples" / "dubai" / "split-train-1to4-val-5.json"

# Kernel settings: overrides of crf.params_for_resolution's rule (widths in metres where named _m).
SETTINGS = {
    "rule": {},
    "7.2m s5 w5": {"bilateral_m": 7.2, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "3.6m s5 w5": {"bilateral_m": 3.6, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "14.4m s5 w5": {"bilateral_m": 14.4, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "7.2m s3 w5": {"bilateral_m": 7.2, "bilateral_srgb": 3.0, "bilateral_compat": 5.0},
    "7.2m s8 w5": {"bilateral_m": 7.2, "bilateral_srgb": 8.0, "bilateral_compat": 5.0},
    "7.2m s5 w10": {"bilateral_m": 7.2, "bilateral_srgb": 5.0, "bilateral_compat": 10.0},
    "8px s5 w5": {"bilateral_px": 8.0, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "8px s5 w3": {"bilateral_px": 8.0, "bilateral_srgb": 5.0, "bilateral_compat": 3.0},
    "10px s5 w5": {"bilateral_px": 10.0, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "12px s5 w5": {"bilateral_px": 12.0, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "12px s5 w3": {"bilateral_px": 12.0, "bilateral_srgb": 5.0, "bilateral_compat": 3.0},
    "16px s5 w5 g1": {"bilateral_px": 16.0, "bilateral_srgb": 5.0, "bilateral_compat": 5.0, "gaussian_compat": 1.0},
    "16px s5 w5": {"bilateral_px": 16.0, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "16px s5 w3": {"bilateral_px": 16.0, "bilateral_srgb": 5.0, "bilateral_compat": 3.0},
    "16px s3 w5": {"bilateral_px": 16.0, "bilateral_srgb": 3.0, "bilateral_compat": 5.0},
    "20px s5 w5": {"bilateral_px": 20.0, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "24px s5 w5": {"bilateral_px": 24.0, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "40px s5 w5": {"bilateral_px": 40.0, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "80px s5 w5": {"bilateral_px": 80.0, "bilateral_srgb": 5.0, "bilateral_compat": 5.0},
    "40px s13 w10": {"bilateral_px": 40.0, "bilateral_srgb": 13.0, "bilateral_compat": 10.0},
    "paper 80px s13 w10": {"bilateral_px": 80.0, "bilateral_srgb": 13.0, "bilateral_compat": 10.0},
}
# Guards applied to the recorded windows ("guard": the defaults, CRFParams' guard_* and collapse_*).
GUARDS = {
    "guard": {},
    "none": {"guard_keep": 0.0, "collapse_lost": 1.0},
    "old 2%/20%": {"guard_share": 0.02, "guard_keep": 0.2, "collapse_lost": 1.0},
    "5%/10%+c": {"guard_share": 0.05, "guard_keep": 0.1},
    "collapse only": {"guard_keep": 0.0},
}


def params_for(pixel_size_m: float, setting: dict, guard: dict | None = None) -> crf.CRFParams:
    overrides = dict(setting)
    if "bilateral_px" in overrides:
        overrides["bilateral_sxy"] = overrides.pop("bilateral_px")
    return crf.params_for_resolution(pixel_size_m, **overrides, **(guard or {}))


def distinct_settings(settings: dict[str, dict], pixel_size_m: float) -> dict[str, crf.CRFParams]:
    """The kernel settings at ``pixel_size_m``, each refined once: settings equal there (the rule and the
    width it resolves to) share one row, named by all of them."""
    names: dict[crf.CRFParams, str] = {}
    for name, overrides in settings.items():
        params = params_for(pixel_size_m, overrides)
        names[params] = f"{names[params]} = {name}" if params in names else name
    return {name: params for params, name in names.items()}


@dataclasses.dataclass
class Window:
    """One refined window: confusion matrices of its scored pixels unrefined and refined, and its pixels
    per class before / after the CRF (what the guard sees)."""

    unrefined: np.ndarray
    refined: np.ndarray
    before: np.ndarray
    after: np.ndarray


def refine_windows(images: list[np.ndarray], probabilities: list[torch.Tensor], params: crf.CRFParams,
                   sizes: list[tuple[int, int]] | None = None):
    """Unguarded refined probabilities and (before, after) counts, window by window."""
    unguarded = dataclasses.replace(params, guard_keep=0.0, collapse_lost=1.0)
    for i, (image, probability) in enumerate(zip(images, probabilities)):
        h, w = sizes[i] if sizes else probability.shape[1:]
        refined, kept = crf_torch.refine_batch(torch.from_numpy(image)[None], probability[None].float(), unguarded,
                                               [(h, w)])
        assert kept[0]
        classes = probability.shape[0]
        before = np.bincount(probability[:, :h, :w].argmax(0).ravel().numpy(), minlength=classes)
        after = np.bincount(refined[0, :, :h, :w].argmax(0).ravel().numpy(), minlength=classes)
        yield refined[0], before, after


# --- Dubai: the paper's protocol ---------------------------------------------------------------------

def dubai_unrefined(data, encoder, shots: int, seeds: list[int]):
    """(images, per-seed probabilities, truth positions per patch, class names) as ``evaluate`` computes them."""
    classes = data.classes
    lookup = classes.positions()
    train, test = data.subset("train"), data.subset("test")
    support_patches = [p for p in patch_index(data, train) if p[2] & set(classes.ids)]
    query_patches = patch_index(data, test)
    extract = FeatureExtractor(encoder, torch.device("cpu"))
    images, truths, features = [], [], []
    for sample_index, tile, _ in query_patches:
        image, labels = _read_patch(data, test[sample_index], tile)
        truth = np.zeros_like(labels, dtype=np.int64)
        rows, cols = tile.core_slices
        truth[rows, cols] = lookup[labels][rows, cols]
        images.append(image)
        truths.append(truth)
        features.append(extract(image[None]).cpu())
    per_seed = {}
    for seed in seeds:
        chosen, _ = sample_supports(support_patches, shots, classes.ids, np.random.default_rng(seed))
        prototypes, present = shot_prototypes(data, train, [support_patches[i] for i in chosen], extract, classes)
        probabilities = []
        with torch.inference_mode():
            for feature in features:
                p = class_probabilities(feature, prototypes, (PATCH, PATCH))[0]
                p[~present] = 0
                probabilities.append(p.half())
        per_seed[seed] = probabilities
    return images, per_seed, truths, classes.names


def dubai_windows(images, per_seed, truths, classes: int, params: crf.CRFParams) -> dict[int, list[Window]]:
    result = {}
    for seed, probabilities in per_seed.items():
        windows = []
        for (refined, before, after), probability, truth in zip(
                refine_windows(images, probabilities, params), probabilities, truths):
            windows.append(Window(confusion_matrix(truth, probability.float().argmax(0).numpy() + 1, classes),
                                  confusion_matrix(truth, refined.argmax(0).numpy() + 1, classes), before, after))
        result[seed] = windows
    return result


# --- rasters through segment ---------------------------------------------------------------------------

class RasterCase:
    """A raster run once through ``segment`` without CRF, keeping its probabilities; the CRF is then
    applied to its windows as the pipeline cuts them, and scored on each window's core."""

    def __init__(self, name: str, domain, folder: str, encoder: str, scoring: str):
        self.name = name
        image, support, _, self.score = domain
        out, probabilities = Path(folder) / f"{name}.tif", Path(folder) / f"{name}-p.tif"
        self.summary = segment(str(image), str(support), str(out), SegmentOptions(
            encoder=encoder, scoring=scoring, crf=False, progress=False, overwrite=True,
            probabilities=str(probabilities)))
        with rasterio.open(out) as src:
            self.unrefined = src.read(1)
            self.pixel_size_m = pixel_size_m(src, src.crs)
        with rasterio.open(probabilities) as src:
            self.probabilities = src.read().astype(np.float32)
        self.ids = np.array([c["id"] for c in self.summary["classes"]], np.uint8)
        self.image = self._image(str(image))
        self.tiles = tile_grid(*self.unrefined.shape, DEFAULT_TILE_SIZE, DEFAULT_OVERLAP, GRID)

    @staticmethod
    def _image(path: str) -> np.ndarray:
        """The whole raster as segment's reader scales it (3 x H x W in [0, 1])."""
        from geoproto.raster import RasterSource
        from geoproto.tiling import Tile

        with RasterSource.open(path) as source:
            height, width = source.dataset.shape
            image, _ = source.read(Tile(0, 0, height, width, 0, height, 0, width), max(height, width))
        return image[:, :height, :width]

    def windows(self, params: crf.CRFParams) -> list[tuple]:
        """(tile, refined labels of the window, before, after) per window."""
        images, probabilities, sizes = [], [], []
        for tile in self.tiles:
            window = (slice(tile.row, tile.row + tile.height), slice(tile.col, tile.col + tile.width))
            images.append(np.ascontiguousarray(self.image[(slice(None), *window)]))
            probabilities.append(torch.from_numpy(np.ascontiguousarray(self.probabilities[(slice(None), *window)])))
            sizes.append((tile.height, tile.width))
        return [(tile, self.ids[refined.argmax(0).numpy()], before, after) for tile, (refined, before, after)
                in zip(self.tiles, refine_windows(images, probabilities, params, sizes))]

    def scored(self, windows: list[tuple], guard: crf.CRFParams | None) -> tuple[np.ndarray, int]:
        """(confusion matrix, windows vetoed): each window's core refined unless the guard vetoes it."""
        labels, vetoed = self.unrefined.copy(), 0
        for tile, refined, before, after in windows:
            if guard is not None and not crf.keeps_classes(before, after, guard):
                vetoed += 1
                continue
            rows, cols = tile.core_slices
            labels[tile.core_row0:tile.core_row1, tile.core_col0:tile.core_col1] = refined[rows, cols]
        return self.score(labels, self.summary), vetoed


# --- the table -----------------------------------------------------------------------------------------

def row(dataset: str, setting: str, guard: str, matrices: list[np.ndarray], names: list[str], vetoed: int,
        windows: int) -> str:
    runs = [summarise(m, names) for m in matrices]
    oa = 100 * np.mean([r["overall_accuracy"] for r in runs])
    miou = 100 * np.mean([r["mean_iou"] for r in runs])
    f1 = " ".join(f"{n[:5]} {100 * np.mean([r['classes'][n]['f1'] or 0 for r in runs]):5.1f}" for n in names)
    return (f"{dataset:<14} {setting:<20} {guard:<11} OA {oa:5.1f}  mIoU {miou:5.1f}  F1 {f1}  "
            f"vetoed {vetoed}/{windows}")


def validation(args) -> None:
    encoder = build_shipped(args.encoder)[0]
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = {k: SETTINGS[k] for k in args.settings.split(",")}
    guards = {k: params_for(1.0, {}, v) for k, v in GUARDS.items()}
    started = time.perf_counter()
    cases = []
    if "dubai" in args.datasets:
        images, per_seed, truths, names = dubai_unrefined(
            load_dataset("folder", str(args.root), split=str(VALIDATION_SPLIT)), encoder, args.shots, seeds)
        print(f"# Dubai area 5: {len(images)} patches, {len(seeds)} seeds, {args.shots}-shot "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        zero = {s: [confusion_matrix(t, p.float().argmax(0).numpy() + 1, len(names)) for p, t in zip(ps, truths)]
                for s, ps in per_seed.items()}
        print(row("dubai-5", "CRF off", "", [sum(m) for m in zero.values()], names, 0, len(images) * len(seeds)))
        for setting, params in distinct_settings(settings, DUBAI_PIXEL_M).items():
            t0 = time.perf_counter()
            windows = dubai_windows(images, per_seed, truths, len(names), params)
            for guard_name, guard in guards.items():
                matrices, vetoed = [], 0
                for seed_windows in windows.values():
                    keep = [crf.keeps_classes(w.before, w.after, guard) for w in seed_windows]
                    vetoed += keep.count(False)
                    matrices.append(sum(w.refined if k else w.unrefined for w, k in zip(seed_windows, keep)))
                print(row("dubai-5", setting, guard_name, matrices, names, vetoed, len(images) * len(seeds)),
                      flush=True)
            print(f"#   ({time.perf_counter() - t0:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        if "spacenet" in args.datasets:
            cases.append(RasterCase("spacenet", encoder_choice.spacenet_domain(folder), folder, args.encoder,
                                    args.scoring))
        if "pivots" in args.datasets:
            cases.append(RasterCase("pivots-30m", encoder_choice.pivots_domain(folder), folder, args.encoder,
                                    args.scoring))
        for case in cases:
            names = ["target", "other"]
            matrix = case.score(case.unrefined, case.summary)
            print(row(case.name, "CRF off", "", [matrix], names, 0, len(case.tiles)), flush=True)
            for setting, params in distinct_settings(settings, case.pixel_size_m).items():
                windows = case.windows(params)
                for guard_name, guard in guards.items():
                    matrix, vetoed = case.scored(windows, guard)
                    print(row(case.name, setting, guard_name, [matrix], names, vetoed, len(case.tiles)),
                          flush=True)
    print(f"# {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of the Dubai aerial tiles")
    parser.add_argument("--encoder", default="dubai")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--settings", default="rule,16px s5 w5,12px s5 w5,8px s5 w5,24px s5 w5",
                        help=f"comma-separated, of: {', '.join(SETTINGS)}")
    parser.add_argument("--datasets", default="dubai,spacenet,pivots")
    parser.add_argument("--scoring", default="auto", help="segment's --scoring on the SpaceNet and pivot chips "
                        "(Dubai scores eq. 1-3 per shot, as evaluate does)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    validation(args)


if __name__ == "__main__":
    main()
