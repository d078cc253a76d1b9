"""How many polygons ``--vector`` writes for the demo chip, without and with ``--min-area``/``--simplify``,
and whether the polygons still agree with the class raster pixel for pixel.

The chip is segmented once (the demo's settings); each minimum mapping unit then sieves a copy of the
class raster and polygonises it, as ``segment --min-area`` does. Prints one row per setting.

    .venv/bin/python benchmarks/min_area_polygons.py [--min-areas 0,5,10,25] [--simplify 0.5]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path

import geopandas
import rasterio
import shapely
from rasterio.features import rasterize

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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        classes_path = Path(folder) / "classes.tif"
        segment(str(CHIP), str(SUPPORT), str(classes_path), SegmentOptions(progress=False))
        classes = prediction_classes(str(classes_path))
        with rasterio.open(classes_path) as src:
            pixel_area = abs(src.transform.determinant)
        print(f"{'min area m2':>11} {'pixels':>6} {'polygons':>8} {'vertices':>8} {'simplified':>10} "
              f"{'raster=vector':>13}")
        for min_area in [float(v) for v in args.min_areas.split(",")]:
            path = Path(folder) / f"sieved-{min_area}.tif"
            shutil.copy(classes_path, path)
            min_pixels = math.ceil(min_area / pixel_area) if min_area else 0
            if min_pixels > 1:
                sieve_classes(str(path), min_pixels)
            count = write_polygons(str(path), str(path.with_suffix(".gpkg")), classes, "GPKG")
            write_polygons(str(path), str(path.with_suffix(".s.gpkg")), classes, "GPKG", args.simplify)
            frame = geopandas.read_file(path.with_suffix(".gpkg"))
            simple = geopandas.read_file(path.with_suffix(".s.gpkg"))
            with rasterio.open(path) as src:
                labels, transform = src.read(1), src.transform
            burned = rasterize(zip(frame.geometry, frame.class_id), out_shape=labels.shape, transform=transform)
            print(f"{min_area:>11g} {min_pixels:>6} {count:>8} "
                  f"{int(shapely.get_num_coordinates(frame.geometry.values).sum()):>8} "
                  f"{int(shapely.get_num_coordinates(simple.geometry.values).sum()):>10} "
                  f"{(burned == labels).mean():>13.4f}")


if __name__ == "__main__":
    main()
