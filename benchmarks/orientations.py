"""Do features averaged over orientations of each window (``--orientations``, ``heads.OrientedExtractor``) label
better, and what do they cost? Validation data only.

- Dubai: the paper's protocol (``evaluate``) with supports from areas 1-4 and queries from area 5
  (``examples/dubai/split-train-1to4-val-5.json``; area 6 is the test split: never tuned on), 0.3 m pixels;
- the SpaceNet chip: ``segment`` with the bundled support, building IoU and OA on the buildings not used as
  support (``accuracy.spacenet_building_iou``), default settings otherwise;
- the encoder's time per window: one ``segment`` window (417 px, with its context) in each orientation count,
  on ``--device`` (a CUDA device is synchronised before the clock stops).

Prints OA, mIoU, mean F1 and per-class F1 (%, mean over seeds), the OA change from 1 orientation and in how
many seeds it gains, then the SpaceNet rows and the time per window.

    PYTHONPATH=. .venv/bin/python benchmarks/orientations.py --root DUBAI_FOLDER [--encoders dubai,imagenet]
        [--orientations 1,2,4,8] [--shots 5] [--seeds 0,...,9] [--crf] [--spacenet-scoring auto,prototypes]
        [--device cpu|cuda|auto]
    PYTHONPATH=. .venv/bin/python benchmarks/orientations.py --no-dubai [...]   (no --root needed)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geoproto.crf import params_for_resolution
from geoproto.evaluation import evaluate
from geoproto.heads import feature_extractor
from geoproto.models import build_shipped
from geoproto.models.runtime import CONTEXT_MARGIN, FeatureExtractor, resolve_device
from geoproto.segment import DEFAULT_TILE_SIZE
from geoproto.training import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import spacenet_building_iou  # noqa: E402
from segment_throughput import DUBAI_PIXEL_M  # noqa: E402

SPLIT = Path(__file__).resolve().parents[1] / "examples" / "dubai" / "split-train-1to4-val-5.json"


def window_seconds(extract, orientations: int, repeats: int = 3) -> float:
    """Seconds the encoder takes for one ``segment`` window in ``orientations`` orientations (best of
    ``repeats``, after one warm-up call), from the host array to the features on the encoder's device."""
    side = DEFAULT_TILE_SIZE + 2 * CONTEXT_MARGIN
    images = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    turned = feature_extractor(extract, orientations)
    best = float("inf")
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        turned(images, CONTEXT_MARGIN)
        if extract.device.type == "cuda":
            torch.cuda.synchronize(extract.device)
        best = best if repeat == 0 else min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="folder of the Dubai aerial tiles (not with --no-dubai)")
    parser.add_argument("--encoders", default="dubai,imagenet")
    parser.add_argument("--orientations", default="1,2,4,8")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seeds", default=",".join(map(str, range(10))))
    parser.add_argument("--crf", action="store_true", help="with segment's CRF (the torch backend, the rule's kernels)")
    parser.add_argument("--spacenet-scoring", default="auto,prototypes",
                        help="segment --scoring values to run the SpaceNet chip with ('' for none)")
    parser.add_argument("--no-dubai", action="store_true", help="only the SpaceNet chip and the time per window")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                        help="where the time per window is measured")
    args = parser.parse_args()
    if args.root is None and not args.no_dubai:
        parser.error("--root is required unless --no-dubai")
    counts = [int(n) for n in args.orientations.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.no_dubai:
        data = load_dataset("folder", str(args.root), split=str(SPLIT))
        print(f"Dubai validation (area 5 queries, area 1-4 supports), {args.shots} shots, CRF "
              f"{'on' if args.crf else 'off'}, {len(seeds)} seeds: %, mean over seeds", flush=True)
    for name in args.encoders.split(",") if not args.no_dubai else ():
        encoder = build_shipped(name)[0]
        baseline = None
        for count in counts:
            started = time.perf_counter()
            report = evaluate(data, encoder, args.shots, seeds, None, args.crf, torch.device("cpu"), "train", "test",
                              crf_params=params_for_resolution(DUBAI_PIXEL_M), progress=False, orientations=count)
            mean = report["mean"]
            per_seed = np.array([run["overall_accuracy"] for run in report["runs"]])
            baseline = per_seed if baseline is None else baseline
            change = 100 * (per_seed - baseline)
            f1 = " ".join(f"{c[:5]} {100 * v:4.1f}" for c, v in mean["f1"].items())
            print(f"{name:>9} orientations {count}: OA {100 * mean['overall_accuracy']:5.2f} "
                  f"(±{100 * report['std']['overall_accuracy']:.1f}, {change.mean():+.2f}, gains in "
                  f"{int((change > 0).sum())}/{len(seeds)} seeds)  mIoU {100 * mean['mean_iou']:5.2f}  "
                  f"mean F1 {100 * mean['mean_f1']:5.2f}  F1: {f1}  ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    scorings = [s for s in args.spacenet_scoring.split(",") if s]
    with tempfile.TemporaryDirectory() as folder:
        for name in args.encoders.split(","):
            for scoring in scorings:
                for count in counts:
                    iou, accuracy, used = spacenet_building_iou(name, args.crf, folder, orientations=count,
                                                                scoring=scoring)
                    print(f"SpaceNet {name:>9} CRF {'on ' if args.crf else 'off'} scoring {scoring:>10} "
                          f"orientations {count}: building IoU {iou:.3f}  OA {100 * accuracy:.1f}  (used {used})",
                          flush=True)
    for name in args.encoders.split(","):
        extract = FeatureExtractor(build_shipped(name)[0], resolve_device(args.device))
        seconds = {count: window_seconds(extract, count) for count in counts}
        print(f"encoder time per {DEFAULT_TILE_SIZE} px window, {name}, {extract.device.type}: " + ", ".join(
            f"{count}: {seconds[count]:.2f} s (x{seconds[count] / seconds[counts[0]]:.1f})" for count in counts),
              flush=True)


if __name__ == "__main__":
    main()
