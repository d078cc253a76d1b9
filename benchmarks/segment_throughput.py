"""Throughput and memory of the pipelined `segment` against a naive one-tile-at-a-time loop.

Builds (once, cached) realistic georeferenced orthophotos by mosaicking the shared real Dubai tiles
(tiled, compressed GeoTIFF) with a support label raster, then for each size runs, each in a fresh
process so peak resident memory is its own:

- ``pipeline``: ``geoproto.segment.segment`` end to end, with and without CRF;
- ``naive``: read one window, model in float32 batch 1, CRF, write, one tile at a time.

Prints the encoder's speed at each CPU thread count, then tiles per second, seconds per stage, peak
RSS, and the pipeline/naive ratios.

    .venv/bin/python benchmarks/segment_throughput.py --sizes 4096 [--repeat 3] [--device cpu] [--workers N]
    .venv/bin/python benchmarks/segment_throughput.py --sizes 20480 --no-naive   # memory at 20k
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

DUBAI = Path(__file__).resolve().parents[2] / "shared" / "data" / "dubai"
CACHE = Path(tempfile.gettempdir()) / "geoproto-bench"
CLASSES = DUBAI / "classes.json"
SUPPORT_SIDE = 1024  # the support labels cover the top-left corner only


def build_mosaic(side: int) -> tuple[Path, Path]:
    """A side x side RGB GeoTIFF tiled from the Dubai images, and its support label raster (cached)."""
    image_path, label_path = CACHE / f"dubai-{side}.tif", CACHE / f"dubai-{side}-labels.tif"
    if image_path.exists() and label_path.exists():
        return image_path, label_path
    CACHE.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_CACHEMAX=256 << 20):  # GDAL's default cache would hold gigabytes of the mosaic
        _write_mosaic(side, image_path, label_path)
    return image_path, label_path


def _write_mosaic(side: int, image_path: Path, label_path: Path) -> None:
    """Written block row by block row, so memory stays small whatever ``side``."""
    from geoproto.support import RasterLabels, read_class_file
    from geoproto.tiling import Tile

    info = read_class_file(str(CLASSES))
    names = sorted(p.stem for p in (DUBAI / "images").glob("*.jpg"))
    tiles = []
    for name in names:
        with rasterio.open(DUBAI / "images" / f"{name}.jpg") as src:
            image = src.read()
        with rasterio.open(DUBAI / "masks" / f"{name}.png") as src:
            labels = RasterLabels(src.name, src, info).read(Tile(0, 0, src.height, src.width, 0, 0, 0, 0),
                                                            max(src.shape))[: src.height, : src.width]
        tiles.append((image[:, :500, :500], labels[:500, :500]))
    profile = {"driver": "GTiff", "width": side, "height": side, "crs": "EPSG:32640", "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER",
               "transform": from_origin(300000, 2800000, 0.3, 0.3)}
    with rasterio.open(f"{image_path}.tmp", "w", count=3, dtype="uint8", **profile) as image_dst, \
            rasterio.open(f"{label_path}.tmp", "w", count=1, dtype="uint8", nodata=0, **profile) as label_dst:
        for row in range(0, side, 500):
            height = min(500, side - row)
            strip = np.zeros((3, height, side), np.uint8)
            strip_labels = np.zeros((height, side), np.uint8)
            for col in range(0, side, 500):
                width = min(500, side - col)
                image, labels = tiles[(row // 500 * 7 + col // 500) % len(tiles)]
                strip[:, :, col:col + width] = image[:, :height, :width]
                if row < SUPPORT_SIDE and col < SUPPORT_SIDE:
                    strip_labels[:, col:col + width] = labels[:height, :width]
            image_dst.write(strip, window=Window(0, row, side, height))
            label_dst.write(strip_labels, 1, window=Window(0, row, side, height))
    os.replace(f"{image_path}.tmp", image_path)
    os.replace(f"{label_path}.tmp", label_path)


def run_pipeline(image: str, labels: str, crf: bool, device: str, workers: int | None) -> dict:
    from geoproto.segment import SegmentOptions, segment

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = segment(image, labels, os.path.join(folder, "c.tif"),
                          SegmentOptions(crf=crf, device=device, classes_file=str(CLASSES), progress=False,
                                         workers=workers))
        seconds = time.perf_counter() - started
    return {"tiles": summary["tiles"], "seconds": seconds,
            "stages": {**summary["stage_seconds"], "support": summary["support"]["model_seconds"]}}


def run_naive(image: str, labels: str, crf: bool, device: str) -> dict:
    """The reference: one window read, encoded (float32, batch 1), refined and written at a time."""
    import torch

    from geoproto import crf as crf_module
    from geoproto.fewshot import class_probabilities
    from geoproto.models import DEFAULT_ENCODER, build_shipped
    from geoproto.output import ResultWriter
    from geoproto.raster import RasterSource
    from geoproto.segment import FeatureExtractor, build_prototypes, resolve_device
    from geoproto.support import load_support
    from geoproto.tile_labels import finish_tile
    from geoproto.tiling import tile_grid

    started = time.perf_counter()
    source = RasterSource.open(image)
    extract = FeatureExtractor(build_shipped(DEFAULT_ENCODER)[0], resolve_device(device))  # as segment's
    stages = {"read": 0.0, "model": 0.0, "crf": 0.0, "write": 0.0}
    with source.dataset() as src, tempfile.TemporaryDirectory() as folder:
        support = load_support(labels, src, classes_file=str(CLASSES))
        prototypes, classes, support_stats = build_prototypes(extract, source, support, support.classes,
                                                              417, 64, 1)
        ids = np.array(classes.ids, np.uint8)
        tiles = tile_grid(src.height, src.width, 417, 64)
        writer = ResultWriter(src, src.crs, classes, os.path.join(folder, "c.tif"), None)
        params = crf_module.CRFParams(bilateral_sxy=crf_module.bilateral_sxy_pixels(7.2, 0.3)) if crf else None
        for tile in tiles:
            t0 = time.perf_counter()
            window_image, valid = source.read(src, tile, 417)
            t1 = time.perf_counter()
            with torch.inference_mode():
                scores = class_probabilities(extract(window_image[None]), prototypes, (417, 417))[0].numpy()
            t2 = time.perf_counter()
            rgb = crf_module.to_rgb8(window_image) if crf else None
            result = finish_tile(tile, rgb, scores, valid, ids, params, False)
            t3 = time.perf_counter()
            writer.write(tile, result.labels, None)
            t4 = time.perf_counter()
            for key, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[key] += seconds
        writer.close()
    return {"tiles": len(tiles), "seconds": time.perf_counter() - started,
            "stages": {**stages, "support": support_stats["model_seconds"]}}


def thread_sweep() -> dict[int, float]:
    """Seconds per window of the default encoder (batch 1) at each torch thread count up to the cores,
    interleaved over 3 rounds (median): which count ``segment`` should use on this CPU."""
    import torch

    from geoproto.models import DEFAULT_ENCODER, build_shipped
    from geoproto.segment import FeatureExtractor

    extract = FeatureExtractor(build_shipped(DEFAULT_ENCODER)[0], torch.device("cpu"))
    window = np.random.default_rng(0).random((1, 3, 417, 417), np.float32)
    extract(window)
    timings: dict[int, list[float]] = {}
    for _ in range(3):
        for threads in range(1, (os.cpu_count() or 1) + 1):
            torch.set_num_threads(threads)
            started = time.perf_counter()
            for _ in range(5):
                extract(window)
            timings.setdefault(threads, []).append((time.perf_counter() - started) / 5)
    return {threads: float(np.median(t)) for threads, t in timings.items()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux that starts from
    the RSS of the process that exec'd it, here the parent benchmark (1.4 GB after writing the 20k mosaic)."""
    with open("/proc/self/status") as status:
        kilobytes = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return kilobytes / 1024


def child(args) -> None:
    """Run one configuration and print its result with this process's peak RSS."""
    if args.mode == "pipeline":
        result = run_pipeline(args.image, args.labels, args.crf, args.device, args.workers)
    else:
        result = run_naive(args.image, args.labels, args.crf, args.device)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def measure(mode: str, image: Path, labels: Path, crf: bool, device: str, workers: int | None) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--image", str(image), "--labels", str(labels),
               "--device", device] + (["--crf"] if crf else []) + \
              (["--workers", str(workers)] if workers is not None else [])
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096", help="comma-separated raster sides, e.g. 4096,20480")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, help="DenseCRF processes [default: one per core]")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive reference loop")
    parser.add_argument("--modes", default="off,on", help="CRF settings to run: off, on or both")
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternate pipeline and naive runs this many times and report the median run of "
                             "each (shared cloud CPUs drift in speed by tens of percent within minutes)")
    parser.add_argument("--child", choices=["pipeline", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--crf", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    print(f"device {args.device}, {os.cpu_count()} cores, CRF workers {args.workers or os.cpu_count()}, "
          f"median of {args.repeat} run(s)")
    print(f"{'side':>6} {'crf':>4} {'mode':>9} {'tiles':>6} {'tiles/s':>8} {'seconds':>8} {'read':>6} "
          f"{'model':>7} {'support':>8} {'crf':>7} {'write':>6} {'peak MB':>8}")
    if args.device == "cpu":
        print("model seconds per window by torch threads: " + ", ".join(
            f"{threads}: {seconds:.3f}" for threads, seconds in thread_sweep().items()))
    modes = ["naive"] * (not args.no_naive) + ["pipeline"]
    for side in (int(s) for s in args.sizes.split(",")):
        image, labels = build_mosaic(side)
        for crf in (mode == "on" for mode in args.modes.split(",")):
            runs = {mode: [] for mode in modes}
            for _ in range(args.repeat):
                for mode in modes:
                    runs[mode].append(measure(mode, image, labels, crf, args.device,
                                              args.workers if mode == "pipeline" else None))
            results = {mode: sorted(r, key=lambda run: run["seconds"])[len(r) // 2] for mode, r in runs.items()}
            for mode, r in results.items():
                s = r["stages"]
                print(f"{side:>6} {'on' if crf else 'off':>4} {mode:>9} {r['tiles']:>6} "
                      f"{r['tiles'] / r['seconds']:>8.2f} {r['seconds']:>8.1f} {s['read']:>6.1f} {s['model']:>7.1f} "
                      f"{s['support']:>8.1f} {s['crf']:>7.1f} {s['write']:>6.1f} {r['peak_rss_mb']:>8.0f}")
            pipeline = results["pipeline"]
            model = pipeline["stages"]["model"] + pipeline["stages"]["support"]
            ratios = [f"pipeline total / its model time (tiles + support windows) {pipeline['seconds'] / model:.2f}"]
            if "naive" in results:
                naive = results["naive"]
                ratios.insert(0, f"pipeline/naive tiles per second "
                                 f"{(pipeline['tiles'] / pipeline['seconds']) / (naive['tiles'] / naive['seconds']):.2f}")
            print(f"{'':>6} {'':>4} {'ratio':>9} " + "; ".join(ratios))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
