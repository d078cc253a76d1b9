"""Tiny synthetic rasters and support polygons written in a test's tmp_path (no real data needed)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import geopandas
import numpy as np
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from geoproto.raster import apply_transform

SIDE = 96
PIXEL = 0.5
ORIGIN = (500000.0, 3700000.0)
TRANSFORM = from_origin(*ORIGIN, PIXEL, PIXEL)
CRS = "EPSG:32616"


def two_halves(dtype: str = "uint8", bands: int = 3, side: int = SIDE, seed: int = 0) -> np.ndarray:
    """A bright, smooth left half and a dark, striped right half: two classes any encoder separates."""
    rng = np.random.default_rng(seed)
    image = np.empty((bands, side, side), np.float64)
    image[:, :, : side // 2] = 200 + rng.normal(0, 4, (bands, side, side // 2))
    stripes = 40 + 30 * (np.arange(side - side // 2) % 6 < 3)
    image[:, :, side // 2:] = stripes[None, None, :] + rng.normal(0, 4, (bands, side, side - side // 2))
    if np.issubdtype(np.dtype(dtype), np.integer):
        image = np.clip(image, 1, np.iinfo(dtype).max)
    return image.astype(dtype)


def write_raster(path: Path, data: np.ndarray, nodata=None, crs=CRS, transform=TRANSFORM, **profile) -> Path:
    """Write ``data`` (bands x rows x cols, or rows x cols) to ``path``, creating its folder; with
    ``transform=None`` the raster is not georeferenced (as a plain image or mask is)."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    georeference = {} if transform is None else {"crs": crs, "transform": transform}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=profile.pop("driver", "GTiff"), width=data.shape[2],
                           height=data.shape[1], count=data.shape[0], dtype=data.dtype, nodata=nodata,
                           **georeference, **profile) as dst:
            dst.write(data)
    return path


def write_located(path: Path, by: str = "gcps") -> Path:
    """A raster located by ground control points (``by="gcps"``) or RPCs (``"rpcs"``) only: no grid (an
    identity transform) and no CRS of its own, as an unrectified scan or a raw satellite scene is."""
    from rasterio.control import GroundControlPoint
    from rasterio.rpc import RPC

    if by == "gcps":
        located = {"gcps": [GroundControlPoint(row, col, 500000 + col / 2, 3700000 - row / 2)
                            for row in (0, SIDE) for col in (0, SIDE)], "crs": CRS}
    else:
        unit = [1.0] + [0.0] * 19  # numerator x, denominator 1: rows and columns from latitude and longitude
        located = {"rpcs": RPC(0, 1, 33.4, 0.01, unit, [0.0, 0.0, 1.0] + [0.0] * 17, SIDE / 2, SIDE / 2, -84.4, 0.01,
                               unit, [0.0, 1.0] + [0.0] * 18, SIDE / 2, SIDE / 2)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=3, dtype="uint8",
                           **located) as dst:
            dst.write(two_halves())
    return path


def pixel_box(transform, col0: float, row0: float, col1: float, row1: float):
    """The box between pixel edges ``col0``-``col1`` and ``row0``-``row1`` of the grid ``transform`` (an
    ``affine.Affine``), in that grid's CRS: polygons placed on the pixels a test reasons about."""
    xs, ys = apply_transform(transform, np.array([col0, col1]), np.array([row0, row1]))
    return box(xs.min(), ys.min(), xs.max(), ys.max())


def write_support(path: Path, classes=("bright", "dark"), side: int = SIDE, field: str = "class",
                  crs=CRS, transform=TRANSFORM) -> Path:
    """One square per class on the grid ``transform`` of a ``side`` px raster, the first in the left half,
    the second in the right half."""
    squares = [pixel_box(transform, 0.1 * side, 0.35 * side, 0.35 * side, 0.6 * side),
               pixel_box(transform, 0.65 * side, 0.35 * side, 0.9 * side, 0.6 * side)]
    geopandas.GeoDataFrame({field: list(classes)}, geometry=squares[: len(classes)], crs=crs).to_file(path)
    return path


def scene(folder: Path, data: np.ndarray | None = None, nodata=None, **profile) -> tuple[Path, Path]:
    """An image and its support in ``folder``."""
    data = two_halves() if data is None else data
    return (write_raster(folder / "image.tif", data, nodata, **profile), write_support(folder / "support.gpkg"))


def strip_scene(folder: Path, length: int = 100000) -> tuple[Path, Path]:
    """A one-band raster ``length`` px tall and SIDE px wide (``two_halves`` repeated down) and ``write_support``'s
    squares on it: read in windows of ``length`` px whatever larger tile is asked, as no chip is."""
    data = np.tile(two_halves(bands=1), (1, -(-length // SIDE), 1))[:, :length]
    return (write_raster(folder / "strip.tif", data), write_support(folder / "support.gpkg"))


def leftovers(folder: Path, *keep: str) -> list[str]:
    """Everything in ``folder`` but ``keep``: outputs, partial files and staging folders alike."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def dead_pid() -> int:
    """The id of a process that has just exited (what a run killed with kill -9 leaves in its names)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid
