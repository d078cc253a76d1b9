"""Does ``--encoder auto`` pick well? Overall accuracy of every shipped encoder and of ``auto``, per domain.

Domains with real labels:
- the Dubai areas the shipped checkpoint was not trained on (5: its validation area, 6: never used),
  each tile with its own support: boxes drawn at random inside single-class regions of its mask (3 per
  class present), scored on all other labelled pixels; a domain's OA pools its tiles' pixels;
- the SpaceNet chip: the bundled support, scored on buildings vs rest, support buildings excluded;
- the 30 m chip: 6 pivots + 3 "other" boxes as support (its CRS stated), scored on the 13 other pivots vs
  rest.
Segmentation without CRF (the choice is about the encoder), each encoder with ``segment``'s default
``--scoring auto``. Prints one row per image, then one per domain with auto's shortfall against the
domain's best fixed encoder, and the means over domains.

    .venv/bin/python benchmarks/encoder_choice.py --root DUBAI_FOLDER [--dubai-areas 5,6] [--dubai-tiles 9]

DUBAI_FOLDER holds the Dubai aerial tiles (``images/``, ``masks/``, ``classes.json``); the SpaceNet and
30 m chips come with the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import geopandas
import numpy as np
import rasterio
from rasterio.features import rasterize
from shapely.geometry import box

from geoproto.metrics import confusion_matrix
from geoproto.models import DEFAULT_ENCODER, shipped_names
from geoproto.segment import SegmentOptions, segment

sys.path.insert(0, str(Path(__file__).parent))
from segment_throughput import dubai_truth  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACENET = REPO / "examples" / "spacenet"
ALBERS = REPO / "tests" / "data" / "albers-30m"
BOX = 24
BOXES_PER_CLASS = 3


def _run(image, support, encoder, folder, **options) -> np.ndarray:
    out = Path(folder) / f"{encoder}.tif"
    summary = segment(str(image), str(support), str(out), SegmentOptions(
        encoder=encoder, crf=False, progress=False, overwrite=True, **options))
    with rasterio.open(out) as src:
        return src.read(1), summary


def place_boxes(truth: np.ndarray, info, rng: np.random.Generator, side: int = BOX,
                per_class: int = BOXES_PER_CLASS) -> tuple[list, list[str]]:
    """Support boxes of ``side`` px drawn at random inside single-class regions of ``truth``: a user's
    few polygons, ``per_class`` per class where the class has room for them; (boxes, class names)."""
    boxes, names = [], []
    for class_id, class_name in zip(info.ids, info.names):
        rows, cols = np.nonzero(truth == class_id)
        placed = tries = 0
        while placed < per_class and tries < 500 and len(rows):
            tries += 1
            i = rng.integers(len(rows))
            r, c = rows[i] - side // 2, cols[i] - side // 2
            if r < 0 or c < 0 or r + side > truth.shape[0] or c + side > truth.shape[1]:
                continue
            if (truth[r:r + side, c:c + side] == class_id).all():
                boxes.append(box(c, r, c + side, r + side))
                names.append(class_name)
                placed += 1
    return boxes, names


def box_support(truth: np.ndarray, info, rng: np.random.Generator, per_class: int = BOXES_PER_CLASS):
    """Random support boxes on a Dubai mask (``place_boxes``): (boxes, class names, the classes present
    sorted, the truth as positions 1.. of those classes with the boxes' pixels left out)."""
    boxes, names = place_boxes(truth, info, rng, per_class=per_class)
    present = sorted(set(names))
    lookup = np.zeros(256, np.int64)
    for position, class_name in enumerate(present, start=1):
        lookup[info.ids[info.names.index(class_name)]] = position
    used = rasterize(boxes, out_shape=truth.shape) > 0
    return boxes, names, present, np.where(used, 0, lookup[truth])


def dubai_domain(root: Path, name: str, folder: str, rng: np.random.Generator):
    truth, info = dubai_truth(root, name)
    boxes, names, present, expected = box_support(truth, info, rng)
    support = Path(folder) / f"{name}.gpkg"
    geopandas.GeoDataFrame({"class": names}, geometry=boxes).to_file(support)

    def score(predicted, summary):
        ids = {c["id"]: c["name"] for c in summary["classes"]}
        mapped = np.zeros_like(predicted, dtype=np.int64)
        for class_id, class_name in ids.items():
            mapped[predicted == class_id] = present.index(class_name) + 1
        return confusion_matrix(expected, mapped, len(present))

    return root / "images" / f"{name}.jpg", support, {}, score


def spacenet_truth():
    """The chip, the bundled support, and the truth: 1 building, 2 rest, 0 the support buildings."""
    chip = SPACENET / "sample_geotiff.tif"
    support = SPACENET / "support.gpkg"
    buildings = geopandas.read_file(SPACENET / "geotiff_labels.geojson")
    used_buildings = geopandas.read_file(support).query("`class` == 'building'")
    with rasterio.open(chip) as src:
        shape, transform = src.shape, src.transform
    truth = np.where(rasterize(buildings.geometry, out_shape=shape, transform=transform) > 0, 1, 2)
    truth[rasterize(used_buildings.geometry, out_shape=shape, transform=transform, all_touched=True) > 0] = 0
    return chip, support, truth


def pivots_truth(folder: str):
    """The 30 m chip, a support of 6 pivots and 3 other boxes written to ``folder``, and the truth: 1 the
    13 other pivots, 2 rest, 0 the support."""
    chip = ALBERS / "sample_geotiff_custom_proj.tif"
    pivots = geopandas.read_file(ALBERS / "geotiff_custom_proj_labels.geojson")
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
    return chip, support, truth


def _one_class_domain(chip, support, truth, name: str):
    """``name`` against the rest; a domain's ``score(predicted, summary)`` gives the confusion matrix."""
    def score(predicted, summary):
        wanted = next(c["id"] for c in summary["classes"] if c["name"] == name)
        return confusion_matrix(truth, np.where(predicted == wanted, 1, 2), 2)

    return chip, support, {}, score


def spacenet_domain(folder: str):
    return _one_class_domain(*spacenet_truth(), "building")


def pivots_domain(folder: str):
    return _one_class_domain(*pivots_truth(folder), "pivot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of the Dubai aerial tiles")
    parser.add_argument("--dubai-areas", default="5,6", help="held-out Dubai areas, comma-separated")
    parser.add_argument("--dubai-tiles", type=int, default=9, help="tiles per area (of 9)")
    args = parser.parse_args()
    encoders = shipped_names()
    columns = [*encoders, "auto"]
    rng = np.random.default_rng(0)
    counts: dict[str, dict[str, np.ndarray]] = {}
    picks: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        images = [(f"dubai area {area}", name, dubai_domain(args.root, name, folder, rng))
                  for area in args.dubai_areas.split(",")
                  for name in sorted(p.stem for p in (args.root / "images").glob(f"*t{area}.jpg"))
                  [: args.dubai_tiles]]
        images += [("spacenet buildings", "sample_geotiff", spacenet_domain(folder)),
                   ("30 m pivots", "custom_proj", pivots_domain(folder))]
        print(f"{'image':>26} " + " ".join(f"{c:>15}" for c in columns) + f" {'auto picked':>15}")
        for domain, name, (image, support, options, score) in images:
            row = {}
            for encoder in columns:
                predicted, summary = _run(image, support, encoder, folder, **options)
                matrix = score(predicted, summary)  # pooled as (correct, scored): tiles differ in classes
                row[encoder] = np.array([np.trace(matrix), matrix.sum()])
            picked = summary["encoder"]["auto"]["picked"]
            picks.setdefault(domain, []).append(picked)
            for encoder, value in row.items():
                counts.setdefault(domain, {}).setdefault(encoder, np.zeros(2, np.int64))
                counts[domain][encoder] += value
            print(f"{name:>26} " + " ".join(f"{100 * row[c][0] / row[c][1]:>15.1f}" for c in columns)
                  + f" {picked:>15}", flush=True)
    print(f"\n{'domain (pooled OA %)':>26} " + " ".join(f"{c:>15}" for c in columns) + f" {'shortfall':>10}  picks")
    table = {}
    for domain, by_encoder in counts.items():
        accuracy = {c: by_encoder[c][0] / by_encoder[c][1] for c in columns}
        shortfall = max(accuracy[e] for e in encoders) - accuracy["auto"]
        table[domain] = {"overall_accuracy": accuracy, "auto_shortfall": shortfall, "picks": picks[domain]}
        tally = ", ".join(f"{n} x{picks[domain].count(n)}" for n in sorted(set(picks[domain])))
        print(f"{domain:>26} " + " ".join(f"{100 * accuracy[c]:>15.1f}" for c in columns)
              + f" {100 * shortfall:>10.1f}  {tally}")
    mean = {c: float(np.mean([t["overall_accuracy"][c] for t in table.values()])) for c in columns}
    print(f"{'mean over domains':>26} " + " ".join(f"{100 * mean[c]:>15.1f}" for c in columns))
    worst = max(t["auto_shortfall"] for t in table.values())
    print(f"auto's largest shortfall against a domain's best fixed encoder: {100 * worst:.1f} OA points; "
          f"auto minus the default ({DEFAULT_ENCODER}) on average: {100 * (mean['auto'] - mean[DEFAULT_ENCODER]):+.1f}")
    print(json.dumps({"domains": table, "mean_overall_accuracy": mean, "worst_shortfall": worst}, default=float))


if __name__ == "__main__":
    main()
