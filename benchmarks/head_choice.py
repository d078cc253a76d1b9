"""Which way of scoring windows works: plain prototypes (eq. 2), multi-scale features, a linear head fitted on
the support, or both (``geoproto.heads``). Validation data only.

- Dubai tiles of the validation areas (default 1-5; area 6 is the test split: never tune on it), each with
  its own support: boxes drawn at random inside single-class regions of its mask (3 per class present, one
  draw per seed), scored on every other labelled pixel;
- the SpaceNet chip: the bundled support, scored building vs rest on the chip's 43 footprints, support
  buildings excluded.
Each image is encoded once, as one window (1x and 2x), and every support draw and variant reuses those
features. No CRF. Prints OA / mIoU per image and variant, then pooled per domain (and the SpaceNet building
IoU); ``--choice`` also runs ``check-support``'s cross-validated choice (``crossval.choose_scoring``) on each
support and scores the variant it picks.

    PYTHONPATH=. .venv/bin/python benchmarks/head_choice.py --root DUBAI_FOLDER [--areas 1,2,3,4,5]
        [--tiles 1] [--seeds 2] [--encoder imagenet] [--choice]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import geopandas
import numpy as np
import torch
from rasterio.features import rasterize

from geoproto.classes import read_class_file
from geoproto.crossval import choose_scoring, encode_windows, read_support_windows
from geoproto.heads import VARIANTS
from geoproto.fewshot import upsample_scores
from geoproto.heads import SupportFit, concat_scales, second_scale_features
from geoproto.metrics import confusion_matrix, scores
from geoproto.models import build_shipped
from geoproto.models.runtime import GRID, FeatureExtractor
from geoproto.raster import RasterSource
from geoproto.segment import SegmentOptions, options_inputs
from geoproto.support import RasterLabels
from geoproto.tiling import Tile, tile_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoder_choice import place_boxes  # noqa: E402  (the supports the encoder benchmark draws)

REPO = Path(__file__).resolve().parents[1]
SPACENET = REPO / "examples" / "spacenet"
BOX = 24
BOXES_PER_CLASS = 3
FOLDS = 5


def _whole(height: int, width: int) -> Tile:
    return Tile(0, 0, height, width, 0, height, 0, width)


def encode(extract, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """1x and multi-scale features of the whole image as one window."""
    source = RasterSource.open(str(path))
    height, width = source.dataset.shape
    image = source.read(_whole(height, width), max(height, width))[0][:, :height, :width]
    images = np.ascontiguousarray(image[None])
    first = extract(images, 0)
    return first, concat_scales(first, second_scale_features(extract, images, 0))


def _dubai_truth(root: Path, name: str):
    import rasterio

    info = read_class_file(str(root / "classes.json"))
    with rasterio.open(root / "masks" / f"{name}.png") as src:
        truth = RasterLabels(src.name, src, info).read(_whole(src.height, src.width), max(src.shape))
        return truth[: src.height, : src.width], info


def dubai_support(truth: np.ndarray, info, rng: np.random.Generator):
    """Boxes inside single-class regions: (support labels, truth without support, class names, boxes)."""
    boxes, names = place_boxes(truth, info, rng, BOX, BOXES_PER_CLASS)
    present = sorted(set(names))
    lookup = np.zeros(256, np.int64)
    for position, class_name in enumerate(present, start=1):
        lookup[info.ids[info.names.index(class_name)]] = position
    support = np.zeros(truth.shape, np.int64)
    for geometry, class_name in zip(boxes, names):
        support[rasterize([geometry], out_shape=truth.shape) > 0] = present.index(class_name) + 1
    return support, np.where(support > 0, 0, lookup[truth]), present, (boxes, names)


def spacenet_support():
    """The bundled support and building-vs-rest truth (support buildings removed)."""
    import rasterio

    chip = SPACENET / "sample_geotiff.tif"
    frame = geopandas.read_file(SPACENET / "support.gpkg")
    buildings = geopandas.read_file(SPACENET / "geotiff_labels.geojson")
    with rasterio.open(chip) as src:
        shape, transform = src.shape, src.transform
    present = sorted(frame["class"].unique())
    support = np.zeros(shape, np.int64)
    for position, name in enumerate(present, start=1):
        burned = rasterize(frame[frame["class"] == name].geometry, out_shape=shape, transform=transform)
        support[burned > 0] = position
    truth = np.where(rasterize(buildings.geometry, out_shape=shape, transform=transform) > 0, 1, 2)
    used = frame[frame["class"] == "building"].geometry
    truth[rasterize(used, out_shape=shape, transform=transform, all_touched=True) > 0] = 0
    building = present.index("building") + 1
    return chip, support, truth, present, building


def predict(features: torch.Tensor, support: np.ndarray, num_classes: int, head: str) -> np.ndarray:
    fit = SupportFit(num_classes, features.shape[1], head)
    fit.add(features, torch.from_numpy(support)[None])
    with torch.inference_mode():
        return upsample_scores(fit.fit()(features), support.shape)[0].argmax(0).numpy() + 1


def check_choice(extract, image: Path, boxes, names, crs, folder: str) -> str:
    """The variant ``check-support``'s cross-validation picks on this support."""
    path = Path(folder) / "support.gpkg"
    geopandas.GeoDataFrame({"class": names}, geometry=boxes, crs=crs).to_file(path)
    options = SegmentOptions(progress=False)
    inputs = options_inputs(str(image), str(path), options)
    src = inputs.support_source.dataset
    tiles = tile_grid(src.height, src.width, options.tile_size, options.overlap, GRID)
    windows = read_support_windows([(inputs.support_source, inputs.labels, tiles)], inputs.classes,
                                   options.tile_size, FOLDS, 32.0)
    features = encode_windows(extract, windows, 1)
    choice, _ = choose_scoring(extract, features, windows, len(inputs.classes.ids), FOLDS, 1)
    return choice["picked"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of the Dubai aerial tiles")
    parser.add_argument("--areas", default="1,2,3,4,5", help="validation Dubai areas (never 6, the test split)")
    parser.add_argument("--tiles", type=int, default=1, help="tiles per area")
    parser.add_argument("--seeds", type=int, default=2, help="support draws per Dubai tile")
    parser.add_argument("--encoder", default="imagenet")
    parser.add_argument("--choice", action="store_true", help="also score check-support's cross-validated choice")
    args = parser.parse_args()
    if "6" in args.areas.split(","):
        parser.error("area 6 is the test split: validate on areas 1-5")
    torch.manual_seed(0)
    extract = FeatureExtractor(build_shipped(args.encoder)[0], torch.device("cpu"))
    columns = [*VARIANTS, *(["choice"] if args.choice else [])]
    pooled: dict[str, dict[str, np.ndarray]] = {}
    picks: dict[str, list[str]] = {}
    print(f"{'image':>28} " + " ".join(f"{c:>19}" for c in columns) + "   (OA / mIoU %)")

    def run(domain, label, features, support, truth, present, scored, score_classes, crs, boxes, image):
        """Confusions over the domain's ``scored`` classes: ``score_classes`` maps predicted support positions
        (1..len(present)) to them; ``truth`` holds them already."""
        row = {}
        for name, (scales, head) in VARIANTS.items():
            predicted = predict(features[len(scales) > 1], support, len(present), head)
            row[name] = confusion_matrix(truth, score_classes(predicted), scored)
        if args.choice:
            with tempfile.TemporaryDirectory() as folder:
                picked = check_choice(extract, image, *boxes, crs, folder)
            row["choice"] = row[picked]
            picks.setdefault(domain, []).append(picked)
        for name, matrix in row.items():
            pooled.setdefault(domain, {}).setdefault(name, 0)
            pooled[domain][name] = pooled[domain][name] + matrix
        cells = [scores(row[c]) for c in columns]
        print(f"{label:>28} " + " ".join(f"{100 * s['overall_accuracy']:>9.1f} / {100 * s['mean_iou']:>5.1f}"
                                         for s in cells), flush=True)

    for area in args.areas.split(","):
        names = sorted(p.stem for p in (args.root / "images").glob(f"*t{area}.jpg"))[: args.tiles]
        for name in names:
            started = time.perf_counter()
            features = encode(extract, args.root / "images" / f"{name}.jpg")
            truth_ids, info = _dubai_truth(args.root, name)
            for seed in range(args.seeds):
                support, truth, present, boxes = dubai_support(truth_ids, info, np.random.default_rng(seed))
                # Positions of this support's classes among all Dubai classes, so images pool.
                to_all = np.array([0] + [info.names.index(n) + 1 for n in present])
                run("dubai areas " + args.areas, f"{name} s{seed}", features, support, to_all[truth], present,
                    len(info.ids), lambda p: to_all[p], None, boxes, args.root / "images" / f"{name}.jpg")
            print(f"{'':>28} ({time.perf_counter() - started:.0f} s)", flush=True)
    chip, support, truth, present, building = spacenet_support()
    features = encode(extract, chip)
    spacenet_boxes = None
    if args.choice:
        frame = geopandas.read_file(SPACENET / "support.gpkg")
        spacenet_boxes = (list(frame.geometry), list(frame["class"]))
    run("spacenet building/rest", "sample_geotiff", features, support, truth, present, 2,
        lambda p: np.where(p == building, 1, np.where(p > 0, 2, 0)), geopandas.read_file(SPACENET / "support.gpkg").crs,
        spacenet_boxes, chip)

    print(f"\n{'pooled':>28} " + " ".join(f"{c:>19}" for c in columns))
    table = {}
    for domain, matrices in pooled.items():
        result = {name: scores(matrix) for name, matrix in matrices.items()}
        table[domain] = {name: {"overall_accuracy": r["overall_accuracy"], "mean_iou": r["mean_iou"],
                                "iou": r["iou"].tolist()} for name, r in result.items()}
        if domain in picks:
            table[domain]["picks"] = picks[domain]
        print(f"{domain:>28} " + " ".join(f"{100 * result[c]['overall_accuracy']:>9.1f} / "
                                          f"{100 * result[c]['mean_iou']:>5.1f}" for c in columns))
        if domain.startswith("spacenet"):
            print(f"{'building IoU':>28} " + " ".join(f"{100 * result[c]['iou'][0]:>17.1f}  " for c in columns))
        if domain in picks:
            tally = ", ".join(f"{n} x{picks[domain].count(n)}" for n in sorted(set(picks[domain])))
            print(f"{'choice picked':>28} {tally}")
    print(json.dumps(table, default=float))


if __name__ == "__main__":
    main()
