"""Seconds per 417x417 tile of `segment` on this machine, with and without DenseCRF.

Builds (once, cached) a georeferenced RGB GeoTIFF by mosaicking the shared real Dubai tiles, with a
label raster holding the masks of one corner as support, then times the library call end to end.

    .venv/bin/python benchmarks/segment_speed.py [--side 2048] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from geoproto.segment import SegmentOptions, segment
from geoproto.support import RasterLabels, read_class_file
from geoproto.tiling import Tile

DUBAI = Path(__file__).resolve().parents[2] / "shared" / "data" / "dubai"
CACHE = Path(tempfile.gettempdir()) / "geoproto-bench"


def build_mosaic(side: int) -> tuple[Path, Path]:
    image_path, label_path = CACHE / f"dubai-{side}.tif", CACHE / f"dubai-{side}-labels.tif"
    if image_path.exists() and label_path.exists():
        return image_path, label_path
    CACHE.mkdir(parents=True, exist_ok=True)
    info = read_class_file(str(DUBAI / "classes.json"))
    image = np.zeros((3, side, side), np.uint8)
    labels = np.zeros((side, side), np.uint8)
    row = col = row_height = 0
    names = sorted(p.stem for p in (DUBAI / "images").glob("*.jpg"))
    index = 0
    while row < side:
        with rasterio.open(DUBAI / "images" / f"{names[index % len(names)]}.jpg") as src:
            tile = src.read()
        with rasterio.open(DUBAI / "masks" / f"{names[index % len(names)]}.png") as src:
            mask = RasterLabels(src.name, src, info).read(Tile(0, 0, src.height, src.width, 0, 0, 0, 0),
                                                            max(src.shape))
        height, width = min(tile.shape[1], side - row), min(tile.shape[2], side - col)
        image[:, row:row + height, col:col + width] = tile[:, :height, :width]
        if index == 0:  # support: the masks of the first tile only
            labels[row:row + height, col:col + width] = mask[:height, :width]
        row_height = max(row_height, height)
        col += width
        index += 1
        if col >= side:
            row, col, row_height = row + row_height, 0, 0
    profile = {"driver": "GTiff", "width": side, "height": side, "crs": "EPSG:32640", "tiled": True,
               "transform": from_origin(300000, 2800000, 0.3, 0.3), "compress": "deflate"}
    with rasterio.open(image_path, "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(image)
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=0, **profile) as dst:
        dst.write(labels, 1)
    return image_path, label_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    image, labels = build_mosaic(args.side)
    classes = str(DUBAI / "classes.json")
    print(f"raster {args.side}x{args.side}, device {args.device}, torch threads {os.cpu_count()} cores")
    for crf in (False, True):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            summary = segment(str(image), str(labels), os.path.join(folder, "c.tif"),
                              SegmentOptions(crf=crf, device=args.device, classes_file=classes, progress=False))
            seconds = time.perf_counter() - started
        print(f"crf={'on ' if crf else 'off'} tiles={summary['tiles']} total={seconds:.1f}s "
              f"per_tile={seconds / summary['tiles']:.3f}s support_windows={summary['support']['windows']}")


if __name__ == "__main__":
    main()
