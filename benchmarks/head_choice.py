"""Which way of scoring windows works: plain prototypes (eq. 2), multi-scale features, a linear head fitted on
the support, or both (``geoproto.heads``). Validation data only.

- Dubai tiles of the validation areas (default 1-5; area 6 is the test split: never tune on it), each with
  its own support: boxes drawn at random inside single-class regions of its mask (``--boxes`` per class
  present, one draw per seed), scored on every other labelled pixel;
- the SpaceNet chip: the bundled support, scored building vs rest on the chip's 43 footprints, support
  buildings excluded;
- the 30 m chip: 6 pivots and 3 other boxes as support, scored on the 13 other pivots vs rest.
Each image is encoded once, as one window (1x and 2x), and every support draw and variant reuses those
features. No CRF unless ``--crf`` (the torch CRF with the rule's kernels, as ``segment`` applies it).
Prints OA / mIoU per image and variant, then pooled per domain (and the IoU of the building and pivot
classes); ``--choice`` also runs ``check-support``'s cross-validated choice (``crossval.choose_scoring``)
on each support and scores the variant it picks at each bootstrap confidence of ``--confidences`` (the
share of resamples a variant must win to replace prototypes; ``crossval.SCORING_CONFIDENCE`` is
``segment``'s).

    PYTHONPATH=. .venv/bin/python benchmarks/head_choice.py --root DUBAI_FOLDER [--areas 1,2,3,4,5]
        [--tiles 1] [--seeds 2] [--boxes 3] [--encoder imagenet] [--choice [--confidences 0.5,0.8,0.95]]
        [--crf [--crf-bilateral-px PX]]
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
import rasterio
import torch
from rasterio.features import rasterize

from geoproto.crossval import SCORING_CONFIDENCE, choose_scoring, encode_windows, read_support_windows, reliable_pick
from geoproto.fewshot import upsample_scores
from geoproto.heads import VARIANTS, SupportFit, concat_scales, second_scale_features
from geoproto.metrics import confusion_matrix, scores
from geoproto.models import build_shipped
from geoproto.models.runtime import FeatureExtractor
from geoproto import crf, crf_torch
from geoproto.raster import RasterSource, pixel_size_m
from geoproto.segment import SegmentOptions, options_inputs
from geoproto.tiling import Tile

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The supports and truth the encoder benchmark draws.
from encoder_choice import (BOXES_PER_CLASS, box_support, dubai_truth, pivots_truth,  # noqa: E402
                            spacenet_truth)
from segment_throughput import DUBAI_PIXEL_M  # noqa: E402

FOLDS = 5


def _whole(height: int, width: int) -> Tile:
    return Tile(0, 0, height, width, 0, height, 0, width)


def encode(extract, path: Path) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """1x and multi-scale features of the whole image as one window, and the image as the model sees it."""
    source = RasterSource.open(str(path))
    height, width = source.dataset.shape
    image = source.read(_whole(height, width), max(height, width))[0][:, :height, :width]
    images = np.ascontiguousarray(image[None])
    first = extract(images, 0)
    return first, concat_scales(first, second_scale_features(extract, images, 0)), images


def rasterised_support(support: Path, image: Path) -> tuple[np.ndarray, list[str]]:
    """A support file burnt on the image's grid: positions 1.. of its classes sorted by name."""
    frame = geopandas.read_file(support)
    with rasterio.open(image) as src:
        shape, transform = src.shape, src.transform
    present = sorted(frame["class"].unique())
    labels = np.zeros(shape, np.int64)
    for position, name in enumerate(present, start=1):
        labels[rasterize(frame[frame["class"] == name].geometry, out_shape=shape, transform=transform) > 0] = position
    return labels, present


def predict(features: torch.Tensor, support: np.ndarray, num_classes: int, head: str, image: np.ndarray,
            crf_params: crf.CRFParams | None) -> list[np.ndarray]:
    """Labels (1..) without CRF, and with ``crf_params`` also after the torch CRF ``segment`` applies."""
    fit = SupportFit(num_classes, features.shape[1], head)
    fit.add(features, torch.from_numpy(support)[None])
    with torch.inference_mode():
        probabilities = upsample_scores(fit.fit()(features), support.shape).softmax(1)
        labels = [probabilities[0].argmax(0).numpy() + 1]
        if crf_params is not None:
            refined = crf_torch.refine_batch(torch.from_numpy(image), probabilities, crf_params)[0]
            labels.append(refined[0].argmax(0).numpy() + 1)
    return labels


def check_choice(extract, image: Path, support: Path, confidences: list[float]) -> list[str]:
    """The variant ``check-support``'s cross-validation picks on this support at each confidence."""
    options = SegmentOptions(progress=False)
    inputs = options_inputs(str(image), str(support), options)
    windows = read_support_windows([(inputs.support_source, inputs.labels)], inputs.classes, options.tile_size,
                                   options.overlap, FOLDS, 32.0)  # each raster in its own window geometry
    features = encode_windows(extract, windows, 1)
    choice, _ = choose_scoring(extract, features, windows, len(inputs.classes.ids), FOLDS, 1)
    if choice["mean_f1"][choice["default"]] is None:  # nothing could be cross-validated: the default stays
        return [choice["default"]] * len(confidences)
    return [reliable_pick(choice["mean_f1"], choice["beats_default"], choice["default"], confidence)
            for confidence in confidences]


def _worst_f1_change(off: dict, on: dict, names: list[str]) -> str:
    """The lowest per-class F1 change from ``off`` to ``on`` (``metrics.scores``), in points, with its class."""
    change = np.nan_to_num(100 * (on["f1"] - off["f1"]), nan=np.inf)
    worst = int(np.argmin(change))
    return f"{change[worst]:>+7.1f} {names[worst][:11]:>11}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of the Dubai aerial tiles")
    parser.add_argument("--areas", default="1,2,3,4,5", help="validation Dubai areas (never 6, the test split)")
    parser.add_argument("--tiles", type=int, default=1, help="tiles per area")
    parser.add_argument("--seeds", type=int, default=2, help="support draws per Dubai tile")
    parser.add_argument("--encoder", default="imagenet")
    parser.add_argument("--boxes", type=int, default=BOXES_PER_CLASS, help="support boxes per class and Dubai tile")
    parser.add_argument("--choice", action="store_true", help="also score check-support's cross-validated choice")
    parser.add_argument("--crf", action="store_true", help="also score every column after segment's CRF")
    parser.add_argument("--crf-bilateral-px", type=float, help="the CRF's bilateral width [default: the rule's]")
    parser.add_argument("--confidences", default=str(SCORING_CONFIDENCE),
                        help="bootstrap confidences at which to score the choice (comma-separated)")
    args = parser.parse_args()
    if "6" in args.areas.split(","):
        parser.error("area 6 is the test split: validate on areas 1-5")
    torch.manual_seed(0)
    extract = FeatureExtractor(build_shipped(args.encoder)[0], torch.device("cpu"))
    confidences = [float(c) for c in args.confidences.split(",")]
    choices = [f"choice@{c:g}" for c in confidences] if args.choice else []
    columns = [*VARIANTS, *choices]
    columns += [f"{c}+crf" for c in columns] if args.crf else []
    pooled: dict[str, dict[str, np.ndarray]] = {}
    picks: dict[str, dict[str, list[str]]] = {}
    names_of: dict[str, list[str]] = {}  # class names per domain
    print(f"{'image':>28} " + " ".join(f"{c:>19}" for c in columns) + "   (OA / mIoU %)")

    def run(domain, label, image, encoded, support_path, truth, scored, score_classes, pixel_size, class_names):
        """Confusions over the domain's ``scored`` classes: ``score_classes`` maps predicted support positions
        (1..classes of the support) to them; ``truth`` holds them already."""
        support, present = rasterised_support(support_path, image)
        crf_params = crf.params_for_resolution(pixel_size, **(
            {"bilateral_sxy": args.crf_bilateral_px} if args.crf_bilateral_px else {})) if args.crf else None
        names_of[domain] = class_names
        row = {}
        for name, (scales, head) in VARIANTS.items():
            labels = predict(encoded[len(scales) > 1], support, len(present), head, encoded[2], crf_params)
            for suffix, predicted in zip(("", "+crf"), labels):
                row[name + suffix] = confusion_matrix(truth, score_classes(predicted), scored)
        if args.choice:
            for column, variant in zip(choices, check_choice(extract, image, support_path, confidences)):
                for suffix in ("", "+crf") if args.crf else ("",):
                    row[column + suffix] = row[variant + suffix]
                picks.setdefault(domain, {}).setdefault(column, []).append(variant)
        for name, matrix in row.items():
            pooled.setdefault(domain, {}).setdefault(name, 0)
            pooled[domain][name] = pooled[domain][name] + matrix
        cells = [scores(row[c]) for c in columns]
        print(f"{label:>28} " + " ".join(f"{100 * s['overall_accuracy']:>9.1f} / {100 * s['mean_iou']:>5.1f}"
                                         for s in cells), flush=True)

    def one_class(domain, label, chip, support_path, truth, name):
        """``name`` against the rest: truth 1 ``name``, 2 rest."""
        present = sorted(geopandas.read_file(support_path)["class"].unique())
        wanted = present.index(name) + 1
        with rasterio.open(chip) as src:
            pixel_size = pixel_size_m(src, src.crs)
        run(domain, label, chip, encode(extract, chip), support_path, truth, 2,
            lambda p: np.where(p == wanted, 1, np.where(p > 0, 2, 0)), pixel_size, [name, "rest"])

    with tempfile.TemporaryDirectory() as folder:
        for area in args.areas.split(","):
            names = sorted(p.stem for p in (args.root / "images").glob(f"*t{area}.jpg"))[: args.tiles]
            for name in names:
                started = time.perf_counter()
                image = args.root / "images" / f"{name}.jpg"
                encoded = encode(extract, image)
                truth_ids, info = dubai_truth(args.root, name)
                for seed in range(args.seeds):
                    boxes, box_names, present, truth = box_support(truth_ids, info, np.random.default_rng(seed),
                                                                   args.boxes)
                    support_path = Path(folder) / f"{name}-{seed}.gpkg"
                    geopandas.GeoDataFrame({"class": box_names}, geometry=boxes).to_file(support_path)
                    # Positions of this support's classes among all Dubai classes, so images pool.
                    to_all = np.array([0] + [info.names.index(n) + 1 for n in present])
                    run("dubai areas " + args.areas, f"{name} s{seed}", image, encoded, support_path,
                        to_all[truth], len(info.ids), lambda p: to_all[p], DUBAI_PIXEL_M, info.names)
                print(f"{'':>28} ({time.perf_counter() - started:.0f} s)", flush=True)
        one_class("spacenet building/rest", "sample_geotiff", *spacenet_truth(), "building")
        one_class("30 m pivots/rest", "custom_proj", *pivots_truth(folder), "pivot")

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
        if not domain.startswith("dubai"):
            print(f"{'IoU of the class':>28} " + " ".join(f"{100 * result[c]['iou'][0]:>17.1f}  " for c in columns))
        if args.crf:  # the CRF's per-class bar: the class F1 it lowers most, in points
            print(f"{'worst F1 change with CRF':>28} " + " ".join(
                _worst_f1_change(result[c.removesuffix("+crf")], result[c], names_of[domain])
                if c.endswith("+crf") else f"{'':>19}" for c in columns))
        for column, picked in picks.get(domain, {}).items():
            tally = ", ".join(f"{n} x{picked.count(n)}" for n in sorted(set(picked)))
            print(f"{column + ' picked':>28} {tally}")
    print(json.dumps(table, default=float))


if __name__ == "__main__":
    main()
