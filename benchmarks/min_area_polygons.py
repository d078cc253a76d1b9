"""How many polygons ``--vector`` writes for the demo chip, without and with ``--min-area``/``--simplify``,
and whether the polygons still agree with the class raster pixel for pixel.

The chip is segmented once (the demo's settings); each minimum mapping unit then sieves a copy of the
class raster and polygonises it, as ``segment --min-area`` does. Prints one row per setting, with the
seconds of the sieve (``output.sieve_classes``: GDAL's sieve, then ``_merge_small_groups``'s pass over what it
leaves, both whole-raster) and of polygonising. ``--mosaic N``: the chip's class raster repeated N x N (mirrored,
so regions run on across the seams), a larger orthophoto's class raster for the timings.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/min_area_polygons.py [--min-areas 0,5,10,25]
        [--simplify 0.5] [--mosaic 8]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import geopandas
import rasterio
import numpy as np
import shapely
from rasterio.features import rasterize

from geoproto import output
from geoproto.evaluation import prediction_classes
from geoproto.output import sieve_classes, write_polygons
from geoproto.segment import SegmentOptions, segment

REPO = Path(__file__).resolve().parents[1]
CHIP = REPO / "examples" / "spacenet" / "sample_geotiff.tif"
SUPPORT = REPO / "examples" / "spacenet" / "support.gpkg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-areas", default="0,5,10,25", help="m², comma-separated (0: no sieve)")
    parser.add_argument("--simplify", type=float, default=0.5, help="tolerance in metres for the last column")
    parser.add_argument("--mosaic", type=int, default=1, help="repeat the class raster N x N (mirrored)")
    args = parser.parse_args()
    merge_seconds = []
    merge = output._merge_small_groups

    def timed_merge(*merge_args):
        started = time.perf_counter()
        merge(*merge_args)
        merge_seconds.append(time.perf_counter() - started)

    output._merge_small_groups = timed_merge
    with tempfile.TemporaryDirectory() as folder:
        classes_path = Path(folder) / "classes.tif"
        segment(str(CHIP), str(SUPPORT), str(classes_path), SegmentOptions(progress=False))
        classes = prediction_classes(str(classes_path))
        if args.mosaic > 1:
            mosaic(classes_path, args.mosaic)
        with rasterio.open(classes_path) as src:
            pixel_area = abs(src.transform.determinant)
            print(f"class raster {src.width} x {src.height} px")
        print(f"{'min area m2':>11} {'pixels':>6} {'polygons':>8} {'vertices':>8} {'simplified':>10} "
              f"{'raster=vector':>13} {'sieve s':>7} {'of which merge s':>16} {'polygons s':>10}")
        for min_area in [float(v) for v in args.min_areas.split(",")]:
            path = Path(folder) / f"sieved-{min_area}.tif"
            shutil.copy(classes_path, path)
            min_pixels = math.ceil(min_area / pixel_area) if min_area else 0
            merge_seconds.clear()
            started = time.perf_counter()
            if min_pixels > 1:
                sieve_classes(str(path), min_pixels)
            sieve_seconds = time.perf_counter() - started
            started = time.perf_counter()
            count = write_polygons(str(path), str(path.with_suffix(".gpkg")), classes, "GPKG")
            polygon_seconds = time.perf_counter() - started
            write_polygons(str(path), str(path.with_suffix(".s.gpkg")), classes, "GPKG", args.simplify)
            frame = geopandas.read_file(path.with_suffix(".gpkg"))
            simple = geopandas.read_file(path.with_suffix(".s.gpkg"))
            with rasterio.open(path) as src:
                labels, transform = src.read(1), src.transform
            burned = rasterize(zip(frame.geometry, frame.class_id), out_shape=labels.shape, transform=transform)
            print(f"{min_area:>11g} {min_pixels:>6} {count:>8} "
                  f"{int(shapely.get_num_coordinates(frame.geometry.values).sum()):>8} "
                  f"{int(shapely.get_num_coordinates(simple.geometry.values).sum()):>10} "
                  f"{(burned == labels).mean():>13.4f} {sieve_seconds:>7.2f} {sum(merge_seconds):>16.2f} "
                  f"{polygon_seconds:>10.2f}")


def mosaic(path: Path, times: int) -> None:
    """Replace the class raster at ``path`` by itself repeated ``times`` x ``times``, every other copy mirrored."""
    with rasterio.open(path) as src:
        labels, profile = src.read(1), src.profile
    row = np.concatenate([labels if i % 2 == 0 else labels[:, ::-1] for i in range(times)], axis=1)
    whole = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(times)], axis=0)
    with rasterio.open(path, "w", **{**profile, "width": whole.shape[1], "height": whole.shape[0]}) as dst:
        dst.write(whole, 1)


if __name__ == "__main__":
    main()
