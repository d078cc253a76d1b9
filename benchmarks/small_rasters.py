"""Rasters smaller than a window: wall time and peak memory of ``segment`` on small synthetic chips, and
how far its labels of a real crop move, against another geoproto tree (``--before``: ``8f32007^``, before
``tiling.window_size``, padded every such raster to a full ``--tile-size`` window; ``7a481f1`` still padded
support rasters).

Each run is a fresh process (its own peak resident memory, VmHWM) calling ``geoproto.segment.segment``
with default options but the encoder (``--encoder``), with and without the CRF:

- ``--sides``: a folder of ``--count`` square synthetic chips (a bright smooth half and a dark striped
  half) segmented in one run (``segment_many``), the support (one square in each half) lying on another
  such chip (``support_image``), ``--repeats`` runs each (``--tile-size``: the tile size asked for);
- ``--crop``: a ``--crop`` px crop of examples/spacenet/sample_geotiff.tif segmented with the bundled
  support (support.gpkg on the whole image, ``support_image``) by ``--crop-encoder``, under both trees;
  prints the share of pixels labelled alike;
- ``--support-chip``: one such synthetic chip segmented with its own support (on the chip: the support
  windows are the chip's, not another raster's), CRF off, at each of ``--support-tiles`` (417 and 4096):
  before ``tiling.window_geometry`` reached the support side, its support was padded to the full tile.

    git archive REV geoproto | tar -x -C /tmp/before
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/small_rasters.py --before /tmp/before
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/small_rasters.py --before /tmp/before --sides --crop 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "spacenet"


def chip(folder: Path, side: int) -> tuple[Path, Path]:
    """A side x side synthetic chip (EPSG:32616, 0.5 m) and its two-class support."""
    import geopandas
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import box

    rng = np.random.default_rng(0)
    image = np.empty((3, side, side))
    image[:, :, : side // 2] = 200 + rng.normal(0, 4, (3, side, side // 2))
    image[:, :, side // 2:] = 40 + 30 * (np.arange(side - side // 2) % 6 < 3) + rng.normal(0, 4, (3, side, side - side // 2))
    transform = from_origin(500000.0, 3700000.0, 0.5, 0.5)
    path = folder / f"chip-{side}.tif"
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
                       crs="EPSG:32616", transform=transform) as dst:
        dst.write(np.clip(image, 1, 255).astype("uint8"))
    x0, y0 = transform * (0, 0)
    squares = [box(x0 + 0.5 * a * side, y0 - 0.5 * 0.6 * side, x0 + 0.5 * b * side, y0 - 0.5 * 0.35 * side)
               for a, b in ((0.1, 0.35), (0.65, 0.9))]
    support = folder / f"chip-{side}.gpkg"
    geopandas.GeoDataFrame({"class": ["bright", "dark"]}, geometry=squares, crs="EPSG:32616").to_file(support)
    return path, support


def crop(folder: Path, side: int) -> Path:
    """The side x side crop of the example raster around its centre."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(EXAMPLE / "sample_geotiff.tif") as src:
        window = Window((src.width - side) // 2, (src.height - side) // 2, side, side)
        profile = {**src.profile, "width": side, "height": side, "transform": src.window_transform(window)}
        path = folder / f"crop-{side}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return path


def one(images: str, support: str, output: str, encoder: str, crf: bool, support_image: str, tile_size: int) -> None:
    """Child: one run over the comma-separated ``images``, its figures as JSON on stdout."""
    from geoproto.segment import SegmentOptions, segment_many
    from segment_throughput import peak_rss_mb

    started = time.perf_counter()
    summary = segment_many(images.split(","), support, output,
                           SegmentOptions(encoder=encoder, crf=crf, support_image=support_image or None, workers=0,
                                          tile_size=tile_size))
    first = summary["inputs"][0]
    print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak_rss_mb()),
                      "inputs": len(summary["inputs"]), "tile_size": first["tile_size"], "tiles": first["tiles"],
                      "scoring": summary["scoring"]["used"],
                      "support_windows": summary["support"].get("window_sizes", "tile size")}))


def run(tree: str, images: list[Path], support: Path, output: Path, encoder: str, crf: bool,
        support_image: Path | None, tile_size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, str(ROOT / "benchmarks")]),
           "OMP_WAIT_POLICY": "PASSIVE"}
    args = [sys.executable, __file__, "--one", ",".join(map(str, images)), str(support), str(output), encoder,
            str(int(crf)), str(support_image or ""), str(tile_size)]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="a geoproto tree (its folder holds geoproto/) to compare with")
    parser.add_argument("--sides", type=int, nargs="*", default=[100, 256])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--encoder", default="imagenet")
    parser.add_argument("--crop", type=int, default=200)
    parser.add_argument("--crop-encoder", default="dubai")
    parser.add_argument("--tile-size", type=int, default=417)
    parser.add_argument("--support-chip", type=int, default=96, help="side of the chip with its own support (0: none)")
    parser.add_argument("--support-tiles", type=int, nargs="*", default=[417, 4096])
    parser.add_argument("--one", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        image, support, output, encoder, crf, support_image, tile_size = args.one
        one(image, support, output, encoder, crf == "1", support_image, int(tile_size))
        return
    if not args.before:
        parser.error("--before is required")
    import rasterio

    trees = {"before": args.before, "after": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for side in args.sides:
            image, support = chip(folder, side)
            chips = [folder / f"{side}" / f"chip-{i:03d}.tif" for i in range(args.count)]
            chips[0].parent.mkdir()
            for path in chips:
                shutil.copy(image, path)
            for crf in (False, True):
                for name, tree in trees.items():
                    for i in range(args.repeats):
                        figures = run(tree, chips, support, folder / f"{name}-{side}-{crf}-{i}", args.encoder, crf,
                                      image, args.tile_size)
                        print(f"{args.count} x {side:4d} px  crf={crf!s:5}  {name:6}  run {i + 1}: {figures}", flush=True)
        if args.crop:
            image = crop(folder, args.crop)
            labels = {}
            for name, tree in trees.items():
                output = folder / f"{name}-crop"
                figures = run(tree, [image], EXAMPLE / "support.gpkg", output, args.crop_encoder, True,
                              EXAMPLE / "sample_geotiff.tif", args.tile_size)
                with rasterio.open(output / image.name) as src:
                    labels[name] = src.read(1)
                print(f"crop {args.crop} px  {args.crop_encoder}  {name:6}: {figures}", flush=True)
            print(f"crop {args.crop} px: labels agree on {np.mean(labels['before'] == labels['after']):.2%} of pixels")
        if args.support_chip:
            image, support = chip(folder, args.support_chip)
            for tile_size in args.support_tiles:
                for name, tree in trees.items():
                    figures = run(tree, [image], support, folder / f"{name}-support-{tile_size}", args.encoder, False,
                                  None, tile_size)
                    print(f"{args.support_chip} px chip, its own support, tile {tile_size:4d}  {name:6}: {figures}",
                          flush=True)


if __name__ == "__main__":
    main()
