"""Agreement of the torch DenseCRF (its default 2 x 2 appearance blocks) with pydensecrf2 at equal settings,
on the real data the issue names: labels compared pixel by pixel, OA and per-class F1 of both backends.

- Dubai area 6, the held-out test area, through ``evaluate`` (``--split``, default
  ``examples/dubai/split-train-1to5-test-6.json``) with ``geoproto evaluate``'s defaults (``dubai``
  encoder) and the CRF of the tiles' 0.3 m (``evaluate --pixel-size 0.3``: the rule's 12 px): once per
  backend and once without CRF for each shots value, the labels of every query patch collected with
  ``evaluate``'s ``on_patch``.
- The bundled SpaceNet chip through ``segment`` (``--scoring prototypes``, defaults otherwise: 0.5 m, so
  the rule's 8 px) with each backend and with ``--no-crf``, scored against its 43 building footprints
  (``evaluation.score``: tree and ground are "other", as is every pixel outside a footprint).
- A Dubai tile of area 2 (``image_part_005t2``, four windows) through ``segment`` with a 1-tile support
  (``image_part_003t3``'s mask as the label raster, ``imagenet`` encoder), as tests/test_pipeline.py runs
  it, scored against its mask (the JPEG has no georeferencing: the rule's width without a metric grid).

Prints one markdown row per data set: pixels compared, % of them agreeing, OA without CRF / torch /
pydensecrf2, per-class F1 torch / pydensecrf2 and the worst F1 difference (torch - pydensecrf2, points;
Dubai: means over the seeds).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/crf_agreement.py --root DUBAI_FOLDER \
        [--shots 1,5,10] [--seeds 0,1,2] [--datasets dubai,spacenet,dubai-segment]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from geoproto.crf import params_for_resolution
from geoproto.evaluation import evaluate, score
from geoproto.models import build_shipped
from geoproto.models.shipped import DEFAULT_ENCODER
from geoproto.segment import SegmentOptions, segment
from geoproto.training import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_throughput import DUBAI_PIXEL_M  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO / "examples" / "dubai" / "split-train-1to5-test-6.json"
SPACENET = REPO / "examples" / "spacenet"
BACKENDS = ("torch", "densecrf")
HEADER = ("| data | pixels compared | agreeing | OA CRF off | OA torch | OA pydensecrf2 | F1 torch / pydensecrf2 "
          "| worst F1 difference |\n|---|---|---|---|---|---|---|---|")


def row(name: str, compared: int, agreeing: int, accuracy: dict, f1: dict) -> str:
    """``accuracy``: OA per setting ("off", backends); ``f1``: per backend, per class (fractions)."""
    classes = list(f1["torch"])
    differences = {c: 100 * (f1["torch"][c] - f1["densecrf"][c]) for c in classes}
    worst = min(differences, key=differences.get)
    per_class = ", ".join(f"{c} {100 * f1['torch'][c]:.1f} / {100 * f1['densecrf'][c]:.1f}" for c in classes)
    return (f"| {name} | {compared:,} | {100 * agreeing / compared:.2f} % | {100 * accuracy['off']:.2f} | "
            f"{100 * accuracy['torch']:.2f} | {100 * accuracy['densecrf']:.2f} | {per_class} | "
            f"{differences[worst]:+.3f} ({worst}) |")


def dubai(args) -> None:
    data = load_dataset("folder", str(args.root), split=str(args.split))
    encoder = build_shipped(DEFAULT_ENCODER)[0]
    seeds = [int(s) for s in args.seeds.split(",")]
    for shots in (int(s) for s in args.shots.split(",")):
        started = time.perf_counter()
        off = evaluate(data, encoder, shots, seeds, None, False, torch.device("cpu"), progress=False)
        labels: dict[tuple[int, int], np.ndarray] = {}
        counts = {"compared": 0, "agreeing": 0, "worst": 1.0}

        def keep(seed, number, predicted):
            labels[seed, number] = predicted.astype(np.uint8)

        def compare(seed, number, predicted):
            agreeing = int((labels.pop((seed, number)) == predicted).sum())
            counts["compared"] += predicted.size
            counts["agreeing"] += agreeing
            counts["worst"] = min(counts["worst"], agreeing / predicted.size)

        reports = {backend: evaluate(data, encoder, shots, seeds, None, True, torch.device("cpu"), progress=False,
                                     crf_params=params_for_resolution(DUBAI_PIXEL_M), crf_backend=backend,
                                     on_patch=on_patch)
                   for backend, on_patch in zip(BACKENDS, (keep, compare))}
        accuracy = {"off": off["mean"]["overall_accuracy"],
                    **{b: reports[b]["mean"]["overall_accuracy"] for b in BACKENDS}}
        print(row(f"Dubai area 6, `evaluate` ({_width(DUBAI_PIXEL_M)}), {shots}-shot, seeds {args.seeds} "
                  f"({off['query_patches']} patches each; worst patch {100 * counts['worst']:.1f} %)",
                  counts["compared"], counts["agreeing"], accuracy,
                  {b: reports[b]["mean"]["f1"] for b in BACKENDS}), flush=True)
        print(f"<!-- {time.perf_counter() - started:.0f} s -->", flush=True)


def segmented(name: str, image: Path, support: Path, folder: str, truth: Path, truth_options: dict,
              **options) -> None:
    """``segment`` without CRF and with each backend, compared pixel by pixel and scored against ``truth``."""
    started = time.perf_counter()
    labels, reports = {}, {}
    for setting in ("off",) + BACKENDS:
        out = Path(folder) / f"{name}-{setting}.tif"
        segment(str(image), str(support), str(out), SegmentOptions(
            crf=setting != "off", crf_backend="auto" if setting == "off" else setting, progress=False,
            overwrite=True, **options))
        with rasterio.open(out) as src:
            labels[setting] = src.read(1)
            valid = labels[setting] != src.nodata
        reports[setting] = score(str(out), str(truth), **truth_options)
    compared = int(valid.sum())
    agreeing = int((labels["torch"] == labels["densecrf"])[valid].sum())
    print(row(name, compared, agreeing, {s: r["overall_accuracy"] for s, r in reports.items()},
              {b: {c: v["f1"] for c, v in reports[b]["classes"].items()} for b in BACKENDS}), flush=True)
    print(f"<!-- {time.perf_counter() - started:.0f} s -->", flush=True)


def _width(pixel_size_m: float | None) -> str:
    """The rule's bilateral width at ``pixel_size_m`` (None: no metric grid), for a row's name."""
    return f"{params_for_resolution(pixel_size_m).bilateral_sxy:g} px"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of the Dubai aerial tiles")
    parser.add_argument("--split", type=Path, default=SPLIT)
    parser.add_argument("--shots", default="1,5,10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--datasets", default="dubai,spacenet,dubai-segment")
    args = parser.parse_args()
    datasets = args.datasets.split(",")
    print(HEADER, flush=True)
    if "dubai" in datasets:
        dubai(args)
    with tempfile.TemporaryDirectory() as folder:
        if "spacenet" in datasets:
            segmented(f"SpaceNet chip, `segment --scoring prototypes` ({_width(0.5)}), 43 buildings",
                      SPACENET / "sample_geotiff.tif", SPACENET / "support.gpkg", folder,
                      SPACENET / "geotiff_labels.geojson",
                      {"class_field": "building", "background": "other",
                       "mapping": {"yes": "building", "tree": "other", "ground": "other"}},
                      scoring="prototypes")
        if "dubai-segment" in datasets:
            classes = str(args.root / "classes.json")
            segmented(f"Dubai 005t2, `segment`, support 003t3's mask, `imagenet` ({_width(None)}, 4 windows)",
                      args.root / "images" / "image_part_005t2.jpg", args.root / "masks" / "image_part_003t3.png",
                      folder, args.root / "masks" / "image_part_005t2.png", {"classes_file": classes},
                      encoder="imagenet", classes_file=classes,
                      support_image=str(args.root / "images" / "image_part_003t3.jpg"))


if __name__ == "__main__":
    main()
