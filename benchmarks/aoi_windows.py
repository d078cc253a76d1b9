"""Windows labelled and seconds taken by ``segment --aoi`` when windows are kept if their core (the part each
writes) holds a pixel of the area, against keeping every window the area reaches (the rule before: windows
that reach it only in their overlap were read, encoded and written as nodata).

The demo chip (examples/spacenet, 900 px: 3 x 3 windows of 417 px, overlap 64) with its support, default
options but ``--scoring prototypes`` and ``--crf`` as asked, under a few areas drawn in pixel space; each area is
run under both rules in this process (the encoder is built once per run, as ``segment`` does). Prints one row
per area and whether the class rasters of both rules are identical.

``--grid SIDE`` (20480 by default; 0: skip) times the area's own work on a SIDE px square raster's 417 px windows,
no encoder: choosing the windows and masking the chosen ones (``AreaOfInterest.reaches``, ``.mask``), before
(the whole-window rule, every window's mask rasterised from the whole area) and now (a window inside the area or
missing it decided without rasterising), for a road and a round area of 20,001 vertices (a county's outline).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/aoi_windows.py [--crf] [--repeats 2] [--grid 20480]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import geopandas
import rasterio
import shapely

from geoproto.aoi import AreaOfInterest
from geoproto.models.runtime import GRID
from geoproto.segment import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, SegmentOptions, segment
from geoproto.tiling import tile_grid

REPO = Path(__file__).resolve().parents[1]
CHIP = REPO / "examples" / "spacenet" / "sample_geotiff.tif"
SUPPORT = REPO / "examples" / "spacenet" / "support.gpkg"

# In pixel space (column, row) of the 900 px chip, whose window cores split at 384 and 632.
AREAS = {
    "corner 0-370 px": shapely.box(0, 0, 370, 370),
    "centre 400-500 px": shapely.box(400, 400, 500, 500),
    "row band 100-300 px": shapely.box(0, 100, 900, 300),
    "diagonal road 40 px": shapely.LineString([(0, 0), (900, 900)]).buffer(20),
}


def reaches_window(area: AreaOfInterest, tile) -> bool:
    """The former rule: the whole window (overlap included) intersects the area."""
    return bool(shapely.intersects(area.geometry, shapely.box(tile.col, tile.row, tile.col + tile.width,
                                                               tile.row + tile.height)))


def area_work(side: int) -> None:
    """Seconds choosing and masking the windows of a ``side`` px raster, before and now."""
    tiles = tile_grid(side, side, DEFAULT_TILE_SIZE, DEFAULT_OVERLAP, GRID)
    areas = {"road 40 px": shapely.LineString([(0, 0), (side, side)]).buffer(20),
             "round, 20,001 vertices": shapely.Point(side / 2, side / 2).buffer(0.4 * side, quad_segs=5000)}
    print(f"\n{side} px raster, {len(tiles)} windows of {DEFAULT_TILE_SIZE} px: choosing and masking them")
    print(f"{'area':<24} {'windows before':>14} {'windows now':>11} {'seconds before':>14} {'seconds now':>11}")
    covers = AreaOfInterest._covers
    for label, geometry in areas.items():
        area, row = AreaOfInterest(geometry), []
        for rule, covering in ((reaches_window, lambda self, *box: None), (AreaOfInterest.reaches, covers)):
            AreaOfInterest._covers = covering
            try:
                started = time.perf_counter()
                kept = [tile for tile in tiles if rule(area, tile)]
                for tile in kept:
                    area.mask(tile, DEFAULT_TILE_SIZE)
                row += [len(kept), time.perf_counter() - started]
            finally:
                AreaOfInterest._covers = covers
        print(f"{label:<24} {row[0]:>14} {row[2]:>11} {row[1]:>14.2f} {row[3]:>11.2f}")


def run(folder: Path, name: str, area_file: Path, crf: bool) -> tuple[dict, float, bytes]:
    output = folder / f"{name}.tif"
    started = time.perf_counter()
    summary = segment(str(CHIP), str(SUPPORT), str(output), SegmentOptions(
        scoring="prototypes", crf=crf, progress=False, aoi=str(area_file), overwrite=True))
    seconds = time.perf_counter() - started
    with rasterio.open(output) as src:
        return summary, seconds, src.read().tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crf", action="store_true", help="with the CRF (default: off)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per area and rule (median seconds)")
    parser.add_argument("--grid", type=int, default=20480, help="side of the raster whose windows are chosen (0: skip)")
    args = parser.parse_args()
    with rasterio.open(CHIP) as src:
        transform, crs = src.transform, src.crs
    core_rule = AreaOfInterest.reaches
    print(f"{'area':<22} {'windows before':>14} {'windows now':>11} {'model s before':>14} {'model s now':>11} "
          f"{'run s before':>12} {'run s now':>9} {'identical':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, pixels in AREAS.items():
            area_file = folder / "area.gpkg"
            geometry = shapely.affinity.affine_transform(pixels, [transform.a, transform.b, transform.d,
                                                                  transform.e, transform.xoff, transform.yoff])
            geopandas.GeoDataFrame(geometry=[geometry], crs=crs).to_file(area_file)
            rows = {}
            for rule_name, rule in (("before", reaches_window), ("now", core_rule)):
                AreaOfInterest.reaches = rule
                try:
                    runs = [run(folder, rule_name, area_file, args.crf) for _ in range(args.repeats)]
                finally:
                    AreaOfInterest.reaches = core_rule
                rows[rule_name] = (runs[-1][0]["tiles"],
                                   statistics.median(r[0]["stage_seconds"]["model"] for r in runs),
                                   statistics.median(r[1] for r in runs), runs[-1][2])
            (w0, m0, s0, b0), (w1, m1, s1, b1) = rows["before"], rows["now"]
            print(f"{label:<22} {w0:>14} {w1:>11} {m0:>14.2f} {m1:>11.2f} {s0:>12.2f} {s1:>9.2f} {str(b0 == b1):>9}")
    if args.grid:
        area_work(args.grid)


if __name__ == "__main__":
    main()
