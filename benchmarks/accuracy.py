"""Accuracy of ``segment``'s method on real data: the paper's protocol on a held-out Dubai area
(``evaluate``: K-shot supports, CRF off and on) and building IoU on the bundled SpaceNet chip.

    .venv/bin/python benchmarks/accuracy.py --root DUBAI_FOLDER [--encoders dubai,imagenet] [--shots 1,5,10]
        [--seeds 0,1,...,19] [--orientations 1] [--no-spacenet]

DUBAI_FOLDER holds the Dubai aerial tiles (``images/``, ``masks/``, ``classes.json``); area 6 is the test
split (``examples/dubai/split-train-1to5-test-6.json``), never used to choose a setting (the CRF's were
chosen on area 5 with ``examples/dubai/split-train-1to4-val-5.json``). Prints one row
per setting: OA, mIoU and per-class F1 in %, mean ± std over seeds, then the SpaceNet rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import geopandas
import numpy as np
import rasterio
import torch
from rasterio.features import rasterize

from geoproto.crf import params_for_resolution
from geoproto.evaluation import DEFAULT_SEEDS, evaluate, format_table
from geoproto.heads import ORIENTATIONS
from geoproto.metrics import confusion_matrix, scores
from geoproto.models import build_shipped
from geoproto.segment import SegmentOptions, segment
from geoproto.training import load_dataset
from segment_throughput import DUBAI_PIXEL_M  # this folder, first on the path of a script run here

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO / "examples" / "dubai" / "split-train-1to5-test-6.json"
SPACENET = REPO / "examples" / "spacenet"


def spacenet_building_iou(encoder: str, crf: bool, folder: str, **options) -> tuple[float, float, str]:
    """(building IoU, OA, the scoring used: ``--scoring auto``'s unless ``options`` set it) on the 35 buildings
    not used as support, support buildings left out; ``options``: other SegmentOptions (default settings)."""
    out = Path(folder) / f"{encoder}-{crf}.tif"
    summary = segment(str(SPACENET / "sample_geotiff.tif"), str(SPACENET / "support.gpkg"), str(out),
                      SegmentOptions(encoder=encoder, crf=crf, progress=False, overwrite=True, **options))
    building = next(c["id"] for c in summary["classes"] if c["name"] == "building")
    with rasterio.open(out) as src:
        predicted, transform = src.read(1), src.transform
    buildings = geopandas.read_file(SPACENET / "geotiff_labels.geojson")
    support = geopandas.read_file(SPACENET / "support.gpkg")
    truth = np.where(rasterize(buildings.geometry, out_shape=predicted.shape, transform=transform) > 0, 1, 2)
    used = rasterize(support[support["class"] == "building"].geometry, out_shape=predicted.shape,
                     transform=transform, all_touched=True) > 0
    result = scores(confusion_matrix(truth, np.where(predicted == building, 1, 2), 2, ignore=used))
    return float(result["iou"][0]), float(result["overall_accuracy"]), summary["scoring"]["used"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of the Dubai aerial tiles")
    parser.add_argument("--encoders", default="dubai,imagenet")
    parser.add_argument("--shots", default="1,5,10")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                        help="support draws; the seeds differ more than the settings, so evaluate's 20 by default")
    parser.add_argument("--crf-bilateral-px", type=float,
                        help="bilateral kernel width for the Dubai tiles [default: crf.params_for_resolution's "
                             "at their 0.3 m, as segment sets it]")
    parser.add_argument("--orientations", type=int, default=1, choices=ORIENTATIONS,
                        help="features averaged over this many orientations of each patch (segment --orientations)")
    parser.add_argument("--no-spacenet", action="store_true", help="only the Dubai rows")
    args = parser.parse_args()
    crf_params = params_for_resolution(DUBAI_PIXEL_M, **({"bilateral_sxy": args.crf_bilateral_px}
                                                         if args.crf_bilateral_px else {}))
    data = load_dataset("folder", str(args.root), split=str(SPLIT))
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"Dubai area 6, {len(seeds)} seeds, {args.orientations} orientation(s): OA, mIoU, per-class F1 (%), "
          f"mean ± std", flush=True)
    for name in args.encoders.split(","):
        encoder = build_shipped(name)[0]
        for shots in (int(s) for s in args.shots.split(",")):
            for crf in (False, True):
                started = time.perf_counter()
                report = evaluate(data, encoder, shots, seeds, None, crf, torch.device("cpu"), progress=False,
                                  crf_params=crf_params, orientations=args.orientations)
                print(f"{name:>9} {format_table(report).splitlines()[-1]}  ({time.perf_counter() - started:.0f} s)",
                      flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.encoders.split(",") if not args.no_spacenet else ():
            for crf in (False, True):
                iou, accuracy, scoring = spacenet_building_iou(name, crf, folder, orientations=args.orientations)
                print(f"SpaceNet {name:>9} CRF {'on ' if crf else 'off'}  building IoU {iou:.3f}  OA {100 * accuracy:.1f}"
                      f"  scoring {scoring}", flush=True)


if __name__ == "__main__":
    main()
