"""Does ``--encoder auto`` pick well? Overall accuracy of every shipped encoder and of ``auto``, per domain.

Domains with real labels:
- each tile of the held-out Dubai area 6 (never used in training): support = boxes drawn at random
  inside single-class regions of its mask (3 per class present), scored on all other labelled pixels;
- the SpaceNet chip: the bundled support, scored on buildings vs rest, support buildings excluded;
- the 30 m chip: 6 pivots + 3 "other" boxes as support (its CRS stated), scored on the 13 other pivots vs
  rest.
Segmentation without CRF (the choice is about the encoder). Prints one row per domain and the mean.

    .venv/bin/python benchmarks/encoder_choice.py [--dubai-tiles 9]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import geopandas
import numpy as np
import rasterio
from rasterio.features import rasterize
from shapely.geometry import box

from geoproto.metrics import confusion_matrix, scores
from geoproto.models import shipped_names
from geoproto.segment import SegmentOptions, segment
from geoproto.support import RasterLabels, read_class_file
from geoproto.tiling import Tile

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BOX = 24
BOXES_PER_CLASS = 3


def _run(image, support, encoder, folder, **options) -> np.ndarray:
    out = Path(folder) / f"{encoder}.tif"
    summary = segment(str(image), str(support), str(out), SegmentOptions(
        encoder=encoder, crf=False, progress=False, overwrite=True, **options))
    with rasterio.open(out) as src:
        return src.read(1), summary


def _accuracy(truth: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    return float(scores(confusion_matrix(truth, predicted, classes))["overall_accuracy"])


def dubai_domain(name: str, folder: str, rng: np.random.Generator):
    info = read_class_file(str(SHARED / "dubai" / "classes.json"))
    mask_path = SHARED / "dubai" / "masks" / f"{name}.png"
    with rasterio.open(mask_path) as src:
        truth = RasterLabels(src.name, src, info).read(Tile(0, 0, src.height, src.width, 0, 0, 0, 0),
                                                       max(src.shape))[: src.height, : src.width]
    boxes, names = [], []
    for class_id, class_name in zip(info.ids, info.names):
        rows, cols = np.nonzero(truth == class_id)
        tries = 0
        placed = 0
        while placed < BOXES_PER_CLASS and tries < 500 and len(rows):
            tries += 1
            i = rng.integers(len(rows))
            r, c = rows[i] - BOX // 2, cols[i] - BOX // 2
            if r < 0 or c < 0 or r + BOX > truth.shape[0] or c + BOX > truth.shape[1]:
                continue
            if (truth[r:r + BOX, c:c + BOX] == class_id).all():
                boxes.append(box(c, r, c + BOX, r + BOX))
                names.append(class_name)
                placed += 1
    support = Path(folder) / f"{name}.gpkg"
    frame = geopandas.GeoDataFrame({"class": names}, geometry=boxes)
    frame.to_file(support)
    used = rasterize(boxes, out_shape=truth.shape) > 0
    present = sorted(set(names))
    lookup = np.zeros(256, np.int64)
    for position, class_name in enumerate(present, start=1):
        lookup[info.ids[info.names.index(class_name)]] = position
    expected = np.where(used, 0, lookup[truth])

    def score(predicted, summary):
        ids = {c["id"]: c["name"] for c in summary["classes"]}
        mapped = np.zeros_like(predicted, dtype=np.int64)
        for class_id, class_name in ids.items():
            mapped[predicted == class_id] = present.index(class_name) + 1
        return _accuracy(expected, mapped, len(present))

    return SHARED / "dubai" / "images" / f"{name}.jpg", support, {}, score


def spacenet_domain(folder: str):
    chip = REPO / "examples" / "spacenet" / "sample_geotiff.tif"
    support = REPO / "examples" / "spacenet" / "support.gpkg"
    buildings = geopandas.read_file(SHARED / "spacenet-atlanta" / "geotiff_labels.geojson")
    used_buildings = geopandas.read_file(support).query("`class` == 'building'")
    with rasterio.open(chip) as src:
        shape, transform = src.shape, src.transform
    truth = np.where(rasterize(buildings.geometry, out_shape=shape, transform=transform) > 0, 1, 2)
    truth[rasterize(used_buildings.geometry, out_shape=shape, transform=transform, all_touched=True) > 0] = 0

    def score(predicted, summary):
        building = next(c["id"] for c in summary["classes"] if c["name"] == "building")
        return _accuracy(truth, np.where(predicted == building, 1, 2), 2)

    return chip, support, {}, score


def pivots_domain(folder: str):
    chip = SHARED / "spacenet-atlanta" / "sample_geotiff_custom_proj.tif"
    pivots = geopandas.read_file(SHARED / "spacenet-atlanta" / "geotiff_custom_proj_labels.geojson")
    with rasterio.open(chip) as src:
        shape, transform, crs = src.shape, src.transform, src.crs

    def pixel_box(col0, row0, col1, row1):
        (x0, y0), (x1, y1) = transform * (col0, row0), transform * (col1, row1)
        return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    others = [pixel_box(10, 10, 40, 40), pixel_box(200, 460, 230, 490), pixel_box(250, 250, 270, 270)]
    frame = geopandas.GeoDataFrame({"class": ["pivot"] * 6 + ["other"] * 3},
                                   geometry=list(pivots.geometry[:6]) + others, crs=crs.to_wkt())
    support = Path(folder) / "pivots.gpkg"
    frame.to_file(support)
    truth = np.where(rasterize(pivots.geometry[6:], out_shape=shape, transform=transform) > 0, 1, 2)
    truth[rasterize(frame.geometry, out_shape=shape, transform=transform) > 0] = 0

    def score(predicted, summary):
        pivot = next(c["id"] for c in summary["classes"] if c["name"] == "pivot")
        return _accuracy(truth, np.where(predicted == pivot, 1, 2), 2)

    return chip, support, {}, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dubai-tiles", type=int, default=9, help="how many area-6 tiles (of 9)")
    args = parser.parse_args()
    encoders = shipped_names()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        domains = [(f"dubai {n}", dubai_domain(n, folder, rng))
                   for n in sorted(p.stem for p in (SHARED / "dubai" / "images").glob("*t6.jpg"))[: args.dubai_tiles]]
        domains += [("spacenet buildings", spacenet_domain(folder)), ("30 m pivots", pivots_domain(folder))]
        print(f"{'domain':>26} " + " ".join(f"{e:>15}" for e in encoders) + f" {'auto':>15} {'auto picked':>15}")
        for name, (image, support, options, score) in domains:
            accuracy = {}
            for encoder in encoders:
                predicted, summary = _run(image, support, encoder, folder, **options)
                accuracy[encoder] = score(predicted, summary)
            predicted, summary = _run(image, support, "auto", folder, **options)
            picked = summary["encoder"]["auto"]["picked"]
            accuracy["auto"] = score(predicted, summary)
            rows.append(accuracy)
            print(f"{name:>26} " + " ".join(f"{100 * accuracy[e]:>15.1f}" for e in encoders)
                  + f" {100 * accuracy['auto']:>15.1f} {picked:>15}", flush=True)
    mean = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
    worst_gap = max(max(r[e] for e in encoders) - r["auto"] for r in rows)
    print(f"{'mean':>26} " + " ".join(f"{100 * mean[e]:>15.1f}" for e in encoders) + f" {100 * mean['auto']:>15.1f}")
    print(f"auto's largest shortfall against the best fixed encoder of a domain: {100 * worst_gap:.1f} OA points")
    print(json.dumps({"mean_overall_accuracy": mean, "worst_shortfall": worst_gap}))


if __name__ == "__main__":
    main()
