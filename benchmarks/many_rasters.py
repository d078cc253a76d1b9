"""Many rasters, segmented locally and on a Dask LocalCluster: windows per second, peak memory per
process, and the cluster's overhead per window.

Cuts ``--count`` tiles of ``--side`` pixels from a mosaic of the real Dubai tiles (``segment_throughput.
build_mosaic``, cached), the support labels lying on the first tile only (``support_image``), and
segments every tile, each configuration in a fresh process so peak resident memory is its own:

- ``local``: ``geoproto.segment.segment`` on each tile in turn (the local pipeline);
- ``cluster``: the same calls with ``dask_scheduler`` pointing at one LocalCluster of ``--workers``
  processes started for all tiles (as a user would point a flight at a running cluster).

The cluster's overhead per window is the worker time not spent on windows (reading, encoding,
labelling, building the encoder): scheduling, transfers and the run's tail, from the per-run
``stage_seconds`` of ``segment``'s summary.

``--support-polygons N`` times only the reading of one support file of N generated squares (in
EPSG:4326, the tiles in UTM) over ``--count`` generated tiles, as ``segment`` places it on each input
(``support.load_support(shared=True)``): read for each input, then read once for the run (``read_files``).

    .venv/bin/python benchmarks/many_rasters.py --root DUBAI                      # 16 tiles of 4096^2
    .venv/bin/python benchmarks/many_rasters.py --root DUBAI --count 4 --side 2048 --workers 2
    .venv/bin/python benchmarks/many_rasters.py --count 64 --side 512 --support-polygons 20000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from segment_throughput import CACHE, build_mosaic, peak_rss_mb


def cut_tiles(count: int, side: int, root: Path) -> tuple[list[Path], Path]:
    """``count`` side x side GeoTIFFs cut from one mosaic, and the support labels of the first (cached)."""
    across = math.ceil(math.sqrt(count))
    mosaic, labels = build_mosaic(across * side, root)
    folder = CACHE / f"many-{count}x{side}"
    paths = [folder / f"tile-{i:03d}.tif" for i in range(count)]
    support = folder / "support-labels.tif"
    if all(p.exists() for p in paths) and support.exists():
        return paths, support
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate([*paths, support]):
        source = labels if path == support else mosaic
        window = Window(0, 0, side, side) if path == support else Window(i % across * side, i // across * side,
                                                                           side, side)
        with rasterio.Env(GDAL_CACHEMAX=256 << 20), rasterio.open(source) as src:
            profile = {**src.profile, "width": side, "height": side, "transform": src.window_transform(window)}
            with rasterio.open(f"{path}.tmp", "w", **profile) as dst:
                for _, block in dst.block_windows(1):
                    dst.write(src.read(window=Window(window.col_off + block.col_off, window.row_off + block.row_off,
                                                     block.width, block.height)), window=block)
        os.replace(f"{path}.tmp", path)
    return paths, support


def segment_all(tiles: list[str], support: str, classes: str, crf: bool, device: str,
                scheduler: str | None) -> dict:
    from geoproto.segment import SegmentOptions, segment

    windows, stages = 0, {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for i, tile in enumerate(tiles):
            summary = segment(tile, support, os.path.join(folder, f"classes-{i}.tif"), SegmentOptions(
                support_image=tiles[0], classes_file=classes, crf=crf, device=device, progress=False,
                overviews=False, dask_scheduler=scheduler))
            windows += summary["tiles"]
            for stage, seconds in summary["stage_seconds"].items():
                stages[stage] = stages.get(stage, 0.0) + seconds
    return {"windows": windows, "seconds": time.perf_counter() - started, "stages": stages}


def support_loading(count: int, side: int, polygons: int) -> None:
    """Print the seconds to place one support of ``polygons`` squares on ``count`` tiles of side^2 pixels,
    reading the file for each tile and reading it once."""
    import geopandas
    import numpy as np
    from rasterio.transform import from_origin
    from shapely import box

    from geoproto.raster import open_raster
    from geoproto.support import load_support

    across, pixel, (x0, y0) = math.ceil(math.sqrt(count)), 0.5, (500000.0, 3700000.0)
    extent = across * side * pixel
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, extent - 10, (polygons, 2))
    sizes = rng.uniform(1, 10, (polygons, 2))
    with tempfile.TemporaryDirectory() as folder:
        support = os.path.join(folder, "support.gpkg")
        geopandas.GeoDataFrame(
            {"class": rng.choice(["building", "road", "tree"], polygons)},
            geometry=box(x0 + corners[:, 0], y0 - corners[:, 1] - sizes[:, 1], x0 + corners[:, 0] + sizes[:, 0],
                         y0 - corners[:, 1]), crs="EPSG:32616").to_crs("EPSG:4326").to_file(support)
        tiles = []
        for i in range(count):
            tiles.append(os.path.join(folder, f"tile-{i:03d}.tif"))
            with rasterio.open(tiles[-1], "w", driver="GTiff", width=side, height=side, count=1, dtype="uint8",
                               crs="EPSG:32616", transform=from_origin(x0 + i % across * side * pixel,
                                                                       y0 - i // across * side * pixel, pixel, pixel)):
                pass
        print(f"{count} tiles of {side}^2, one support of {polygons} polygons (EPSG:4326)")
        for mode, read_files in (("each", None), ("once", {})):
            started, placed = time.perf_counter(), 0
            for tile in tiles:
                with open_raster(tile) as reference:
                    placed += len(load_support(support, reference, shared=True, read_files=read_files).geometries)
            print(f"  read {mode:>4}: {time.perf_counter() - started:7.2f} s ({placed} polygons placed)")


def child(args) -> None:
    """One configuration in this process; prints its result with the peak RSS of each process."""
    tiles = args.tiles.split(",")
    if args.child == "local":
        result = segment_all(tiles, args.support, args.classes, args.crf, args.device, None)
        result["peak_rss_mb"] = {"client": peak_rss_mb()}
    else:
        from geoproto.distributed import connect, worker_memory_bytes
        from geoproto.models.runtime import default_batch_size, resolve_device
        from geoproto.segment import DEFAULT_TILE_SIZE

        batch = default_batch_size(resolve_device(args.device))
        started = time.perf_counter()
        memory = worker_memory_bytes(DEFAULT_TILE_SIZE, batch, 6, False)
        with connect(local_workers=args.workers, memory_limit=memory) as client:
            startup = time.perf_counter() - started
            result = segment_all(tiles, args.support, args.classes, args.crf, args.device,
                                 client.scheduler.address)
            workers = client.run(peak_rss_mb)
        result["startup_seconds"] = startup
        result["peak_rss_mb"] = {"client+scheduler": peak_rss_mb(),
                                 **{f"worker {i}": mb for i, mb in enumerate(workers.values())}}
    print(json.dumps(result))


def measure(mode: str, tiles: list[Path], support: Path, classes: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--tiles", ",".join(map(str, tiles)),
               "--support", str(support), "--classes", str(classes), "--device", args.device,
               "--workers", str(args.workers)] + (["--crf"] if args.crf else [])
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="the Dubai folder: images/, masks/, classes.json")
    parser.add_argument("--count", type=int, default=16, help="rasters to segment")
    parser.add_argument("--side", type=int, default=4096, help="pixels a side of each raster")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--crf", action="store_true", help="with the torch DenseCRF (default: without)")
    parser.add_argument("--support-polygons", type=int, help="time only the support's reading, with this many "
                        "generated polygons")
    parser.add_argument("--child", choices=["local", "cluster"], help=argparse.SUPPRESS)
    parser.add_argument("--tiles", help=argparse.SUPPRESS)
    parser.add_argument("--support", help=argparse.SUPPRESS)
    parser.add_argument("--classes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.support_polygons:
        support_loading(args.count, args.side, args.support_polygons)
        return
    if args.root is None:
        parser.error("--root is required: the Dubai folder (images/, masks/, classes.json)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the Dubai JPEGs the mosaic is made of
        tiles, support = cut_tiles(args.count, args.side, args.root)
    print(f"{args.count} rasters of {args.side}^2, device {args.device}, CRF {'torch' if args.crf else 'off'}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'mode':>8} {'windows':>8} {'seconds':>8} {'windows/s':>10} {'startup s':>10} "
          f"{'overhead ms/window':>19}  peak MB per process")
    for mode in ("local", "cluster"):
        r = measure(mode, tiles, support, args.root / "classes.json", args)
        idle = r["stages"].get("worker_idle")
        overhead = "" if idle is None else f"{1000 * idle / r['windows']:.1f}"
        print(f"{mode:>8} {r['windows']:>8} {r['seconds']:>8.1f} {r['windows'] / r['seconds']:>10.2f} "
              f"{r.get('startup_seconds', 0.0):>10.1f} {overhead:>19}  "
              + ", ".join(f"{name} {mb:.0f}" for name, mb in r["peak_rss_mb"].items()))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
