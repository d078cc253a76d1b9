"""Throughput and memory of the pipelined `segment` against a naive one-tile-at-a-time loop, and of the
two DenseCRF backends.

Builds (once, cached) realistic georeferenced orthophotos by mosaicking the real Dubai tiles of
``--root`` (tiled, compressed GeoTIFF) with a support label raster, then for each size runs, each in a
fresh process so peak resident memory is its own:

- ``pipeline``: ``geoproto.segment.segment`` end to end, without CRF (``off``), with the torch CRF
  (``torch``) and with the pydensecrf2 process pool (``densecrf``);
- ``naive``: read one window, model in float32 batch 1, CRF (pydensecrf2), write, one tile at a time.

First it measures the CRF alone on real 417 px Dubai windows (the resolution rule's kernel at 0.3 m, as
``segment`` sets it: 12 px): windows
per second of the torch backend (batches on ``--device``, torch's threads) against the pydensecrf2 pool
(one process per core), on the same cores. Prints the encoder's speed at each CPU thread count, then
tiles per second, seconds per stage, peak RSS, and the ratios.

    .venv/bin/python benchmarks/segment_throughput.py --root DUBAI --sizes 4096 [--repeat 3] [--device cpu]
    .venv/bin/python benchmarks/segment_throughput.py --root DUBAI --sizes 20480 --no-naive --modes torch
    .venv/bin/python benchmarks/segment_throughput.py --root DUBAI --sizes 0   # the CRF comparison only
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

CACHE = Path(tempfile.gettempdir()) / "geoproto-bench"
SUPPORT_SIDE = 1024  # the support labels cover the top-left corner only
DUBAI_PIXEL_M = 0.3  # the Dubai tiles' pixels (the JPEGs carry no georeferencing; the mosaic says so)


def build_mosaic(side: int, root: Path) -> tuple[Path, Path]:
    """A side x side RGB GeoTIFF tiled from the Dubai images, and its support label raster (cached)."""
    image_path, label_path = CACHE / f"dubai-{side}.tif", CACHE / f"dubai-{side}-labels.tif"
    if image_path.exists() and label_path.exists():
        return image_path, label_path
    CACHE.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_CACHEMAX=256 << 20):  # GDAL's default cache would hold gigabytes of the mosaic
        _write_mosaic(side, root, image_path, label_path)
    return image_path, label_path


def dubai_truth(root: Path, name: str):
    """A Dubai tile's mask as class ids, and the class file (read as ``segment`` reads a label raster; no
    geopandas or shapely, which ``gpu_check``'s device run does not install)."""
    import contextlib

    from geoproto.classes import read_class_file
    from geoproto.support import RasterLabels
    from geoproto.tiling import Tile

    info = read_class_file(str(root / "classes.json"))
    with rasterio.open(root / "masks" / f"{name}.png") as src, \
            contextlib.closing(RasterLabels(src.name, src, info)) as labels:
        truth = labels.read(Tile(0, 0, src.height, src.width, 0, 0, 0, 0), max(src.shape))[: src.height, : src.width]
    return truth, info


def _write_mosaic(side: int, root: Path, image_path: Path, label_path: Path) -> None:
    """Written block row by block row, so memory stays small whatever ``side``."""
    names = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    tiles = []
    for name in names:
        with rasterio.open(root / "images" / f"{name}.jpg") as src:
            image = src.read()
        labels, _ = dubai_truth(root, name)
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


def run_pipeline(image: str, labels: str, classes: str, crf: str, device: str, workers: int | None) -> dict:
    from geoproto.segment import SegmentOptions, segment

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = segment(image, labels, os.path.join(folder, "c.tif"),
                          SegmentOptions(crf=crf != "off", crf_backend="torch" if crf == "off" else crf,
                                         device=device, classes_file=classes, progress=False, workers=workers))
        seconds = time.perf_counter() - started
    return {"tiles": summary["tiles"], "seconds": seconds,
            "stages": {**summary["stage_seconds"], "support": summary["support"]["model_seconds"]}}


def run_naive(image: str, labels: str, classes_file: str, crf: bool, device: str) -> dict:
    """The reference: one window read, encoded (float32, batch 1), refined and written at a time."""
    import torch

    from geoproto import crf as crf_module
    from geoproto.fewshot import class_probabilities
    from geoproto.models import DEFAULT_ENCODER, build_shipped
    from geoproto.output import ResultWriter
    from geoproto.raster import RasterSource
    from geoproto.classifier import fit_support
    from geoproto.models.runtime import FeatureExtractor, resolve_device
    from geoproto.support import load_support
    from geoproto.tile_labels import finish_tile
    from geoproto.tiling import tile_grid

    started = time.perf_counter()
    source = RasterSource.open(image)
    extract = FeatureExtractor(build_shipped(DEFAULT_ENCODER)[0], resolve_device(device))  # as segment's
    stages = {"read": 0.0, "model": 0.0, "crf": 0.0, "write": 0.0}
    with source.dataset as src, tempfile.TemporaryDirectory() as folder:
        support = load_support(labels, src, classes_file=classes_file)
        classifier, support_stats = fit_support(extract, [(source, support)], support.classes, 417, 64, 1)
        classes, prototypes, ids = classifier.classes, classifier.prototypes, classifier.ids
        tiles = tile_grid(src.height, src.width, 417, 64)
        writer = ResultWriter(src, src.crs, classes, os.path.join(folder, "c.tif"), None)
        params = crf_module.params_for_resolution(DUBAI_PIXEL_M) if crf else None
        for tile in tiles:
            t0 = time.perf_counter()
            window_image, valid = source.read(tile, 417)
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
    from geoproto.models.runtime import FeatureExtractor

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


def crf_windows(root: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` real 417 px windows (image in [0, 1], class probabilities): Dubai crops, with the true
    labels smoothed and spatially correlated noise added as the model's stand-in (``gpu_check.noisy_probabilities``,
    as tests/test_crf.py makes them): the CRF has real errors to fix along real edges and (mostly) keeps every class, so the
    labels compared are refined ones. The CRF's cost does not depend on them."""
    from gpu_check import noisy_probabilities

    from geoproto.classes import read_class_file

    colours = np.array(read_class_file(str(root / "classes.json")).colors)
    names = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    rng = np.random.default_rng(0)
    windows = []
    for i in range(count):
        name = names[i % len(names)]
        corner = 90 * (i // len(names))
        area = ((corner, corner + 417), (corner, corner + 417))
        with rasterio.open(root / "images" / f"{name}.jpg") as src:
            image = src.read(window=area).astype(np.float32) / 255
        with rasterio.open(root / "masks" / f"{name}.png") as src:
            mask = src.read(window=area).transpose(1, 2, 0).astype(int)
        truth = np.abs(mask[:, :, None, :] - colours[None, None]).sum(-1).argmin(-1)
        windows.append((image, noisy_probabilities(truth, len(colours), rng)))
    return windows


def crf_comparison(root: Path, count: int, device: str, batch_size: int, workers: int | None,
                   rounds: int) -> dict:
    """Windows per second of each CRF backend on the same windows and cores, steady state (the pool is
    started and the Gaussian lattice cached before timing), alternated over ``rounds`` (the median of
    each, and of the per-round ratios to the pool: on shared cores the speed drifts within minutes), and
    how many labels each shares with pydensecrf2's.

    Torch runs as ``refine_batch`` (default 2 x 2 appearance blocks) on all of torch's threads and on
    one, as one window per thread on ``workers`` threads of one torch thread each (what the pool does
    with processes: no thread ever waits for another), and exactly (appearance_stride=1) on all threads."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    import torch

    from geoproto import crf as crf_module
    from geoproto import crf_torch
    from geoproto.tile_labels import init_worker

    windows = crf_windows(root, count)
    params = crf_module.params_for_resolution(DUBAI_PIXEL_M)
    workers = workers or os.cpu_count() or 1
    target = torch.device(device)
    threads = torch.get_num_threads()
    chunks = [windows[start:start + batch_size] for start in range(0, count, batch_size)]

    def refine_chunk(chunk, stride):
        images = torch.from_numpy(np.stack([image for image, _ in chunk])).to(target)
        probabilities = torch.from_numpy(np.stack([p for _, p in chunk])).to(target)
        refined, kept = crf_torch.refine_batch(images, probabilities, params, appearance_stride=stride)
        return list(zip(refined.cpu().numpy(), kept))

    def run_torch(count_threads, stride):
        torch.set_num_threads(count_threads)
        try:
            return [window for chunk in chunks for window in refine_chunk(chunk, stride)]
        finally:
            torch.set_num_threads(threads)

    def run_split():
        # torch.set_num_threads in a worker thread sets that thread's OpenMP team size only.
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as split:
            return [window for done in split.map(lambda chunk: refine_chunk(chunk, default), [[w] for w in windows])
                    for window in done]

    default = crf_torch.APPEARANCE_STRIDE
    configurations = {f"torch, {threads} thread(s), batch {batch_size}": lambda: run_torch(threads, default)}
    if target.type == "cpu":
        configurations.update({
            f"torch, 1 thread, batch {batch_size}": lambda: run_torch(1, default),
            f"torch, {workers} threads of 1 torch thread, a window each": run_split,
        })
    configurations[f"torch exact (appearance_stride=1), {threads} thread(s), batch {batch_size}"] = \
        lambda: run_torch(threads, 1)
    for stride in {1, default}:  # warm-up: the Gaussian lattice's cache, the allocator
        refine_chunk(chunks[0], stride)
    seconds = {name: [] for name in ["densecrf", *configurations]}
    results = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_worker) as pool:
        warm_up = [pool.submit(crf_module.refine, crf_module.to_rgb8(image), p, params) for image, p in windows[:workers]]
        [f.result() for f in warm_up]
        for _ in range(rounds):
            started = time.perf_counter()
            futures = [pool.submit(crf_module.refine, crf_module.to_rgb8(image), p, params) for image, p in windows]
            results["densecrf"] = [f.result() for f in futures]
            seconds["densecrf"].append(time.perf_counter() - started)
            for name, run in configurations.items():
                started = time.perf_counter()
                results[name] = run()
                seconds[name].append(time.perf_counter() - started)
    reference = [labels.argmax(0) for labels, _ in results["densecrf"]]
    table = {}
    for name, times in seconds.items():
        ratios = [pool_seconds / own for pool_seconds, own in zip(seconds["densecrf"], times)]
        table[name] = {"per_s": count / float(np.median(times)), "ratio": float(np.median(ratios)),
                       "agree": float(np.mean([(labels.argmax(0) == ref).mean()
                                               for (labels, _), ref in zip(results[name], reference)])),
                       "kept": sum(kept for _, kept in results[name])}
    return {"windows": count, "workers": workers, "rounds": rounds, "bilateral_px": params.bilateral_sxy, "table": table}


def child(args) -> None:
    """Run one configuration and print its result with this process's peak RSS."""
    if args.mode == "pipeline":
        result = run_pipeline(args.image, args.labels, args.classes, args.crf, args.device, args.workers)
    else:
        result = run_naive(args.image, args.labels, args.classes, args.crf != "off", args.device)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def measure(mode: str, image: Path, labels: Path, classes: Path, crf: str, device: str,
            workers: int | None) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--image", str(image), "--labels", str(labels),
               "--classes", str(classes), "--device", device, "--crf", crf] + \
              (["--workers", str(workers)] if workers is not None else [])
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="the Dubai folder: images/, masks/, classes.json")
    parser.add_argument("--sizes", default="4096", help="comma-separated raster sides, e.g. 4096,20480 (0: none)")
    parser.add_argument("--crf-windows", type=int, default=32, help="windows for the CRF comparison (0: skip it)")
    parser.add_argument("--crf-batch", type=int, help="windows per torch CRF batch [default: 1 on CPU, 16 on CUDA]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, help="DenseCRF processes [default: one per core]")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive reference loop")
    parser.add_argument("--modes", default="off,torch,densecrf", help="CRF settings to run: off, torch, densecrf")
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternate pipeline and naive runs (and the CRF backends) this many times and report "
                             "the median run of each (shared cloud CPUs drift in speed by tens of percent within "
                             "minutes)")
    parser.add_argument("--child", choices=["pipeline", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--classes", help=argparse.SUPPRESS)
    parser.add_argument("--crf", default="off", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    if args.root is None:
        parser.error("--root is required: the Dubai folder (images/, masks/, classes.json)")
    print(f"device {args.device}, {os.cpu_count()} cores, CRF workers {args.workers or os.cpu_count()}, "
          f"median of {args.repeat} run(s), load average {os.getloadavg()[0]:.1f} at start")
    if args.crf_windows:
        crf = crf_comparison(args.root, args.crf_windows, args.device,
                             args.crf_batch or (16 if args.device == "cuda" else 1), args.workers, args.repeat)
        print(f"CRF alone, {crf['windows']} windows of 417 px, {crf['bilateral_px']:.0f} "
              f"px bilateral kernel, median of {crf['rounds']} "
              f"alternated round(s), load average {os.getloadavg()[0]:.1f} at the end:")
        print(f"  {'backend':<66} {'windows/s':>9} {'x pool':>7} {'labels = pydensecrf2':>20} {'kept':>5}")
        for name, row in crf["table"].items():
            label = f"pydensecrf2 pool of {crf['workers']} processes" if name == "densecrf" else name
            print(f"  {label:<66} {row['per_s']:>9.2f} {row['ratio']:>7.2f} {100 * row['agree']:>19.3f}% "
                  f"{row['kept']:>5}")
        sys.stdout.flush()
    sides = [int(s) for s in args.sizes.split(",") if int(s)]
    if not sides:
        return
    print(f"{'side':>6} {'crf':>8} {'mode':>9} {'tiles':>6} {'tiles/s':>8} {'seconds':>8} {'read':>6} "
          f"{'model':>7} {'support':>8} {'crf':>7} {'write':>6} {'peak MB':>8}")
    if args.device == "cpu":
        print("model seconds per window by torch threads: " + ", ".join(
            f"{threads}: {seconds:.3f}" for threads, seconds in thread_sweep().items()))
    classes = args.root / "classes.json"
    for side in sides:
        image, labels = build_mosaic(side, args.root)
        pipeline_per_s = {}
        for crf in args.modes.split(","):
            # The naive loop is the reference without CRF and with the pydensecrf2 CRF.
            modes = ["naive"] * (not args.no_naive and crf != "torch") + ["pipeline"]
            runs = {mode: [] for mode in modes}
            for _ in range(args.repeat):
                for mode in modes:
                    runs[mode].append(measure(mode, image, labels, classes, crf, args.device,
                                              args.workers if mode == "pipeline" else None))
            results = {mode: sorted(r, key=lambda run: run["seconds"])[len(r) // 2] for mode, r in runs.items()}
            for mode, r in results.items():
                s = r["stages"]
                print(f"{side:>6} {crf:>8} {mode:>9} {r['tiles']:>6} "
                      f"{r['tiles'] / r['seconds']:>8.2f} {r['seconds']:>8.1f} {s['read']:>6.1f} {s['model']:>7.1f} "
                      f"{s['support']:>8.1f} {s['crf']:>7.1f} {s['write']:>6.1f} {r['peak_rss_mb']:>8.0f}")
            pipeline = results["pipeline"]
            pipeline_per_s[crf] = pipeline["tiles"] / pipeline["seconds"]
            model = pipeline["stages"]["model"] + pipeline["stages"]["support"]
            ratios = [f"pipeline total / its model time (tiles + support windows) {pipeline['seconds'] / model:.2f}"]
            if "naive" in results:
                naive = results["naive"]
                ratios.insert(0, f"pipeline/naive tiles per second "
                                 f"{pipeline_per_s[crf] / (naive['tiles'] / naive['seconds']):.2f}")
            print(f"{'':>6} {'':>8} {'ratio':>9} " + "; ".join(ratios))
            sys.stdout.flush()
        if "torch" in pipeline_per_s and "densecrf" in pipeline_per_s:
            print(f"{side:>6} pipeline with the torch CRF / with the pydensecrf2 pool, tiles per second: "
                  f"{pipeline_per_s['torch'] / pipeline_per_s['densecrf']:.2f}")


if __name__ == "__main__":
    main()
