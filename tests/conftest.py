"""Shared fixtures: the real data beside the clone (``../shared/data``) and a tile-mosaic helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geoproto.raster import open_raster
from geoproto.tiling import tile_grid

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared real data (read-only: copy into tmp_path before altering anything)."""
    assert SHARED_DATA.is_dir(), f"shared data not found at {SHARED_DATA} (expected ../shared/data from the repo root)"
    return SHARED_DATA


@pytest.fixture(scope="session")
def spacenet(shared_data) -> Path:
    return shared_data / "spacenet-atlanta"


@pytest.fixture
def chip(spacenet):
    with open_raster(str(spacenet / "sample_geotiff.tif")) as src:
        yield src


@pytest.fixture
def albers_chip(spacenet):
    with open_raster(str(spacenet / "sample_geotiff_custom_proj.tif")) as src:
        yield src


def _mosaic(labels, height: int, width: int, size: int = 128, overlap: int = 16) -> np.ndarray:
    """Read ``labels`` (VectorLabels or RasterLabels) window by window and keep each window's core.

    Also checks that the cores cover every pixel exactly once.
    """
    out = np.zeros((height, width), np.uint8)
    written = np.zeros((height, width), np.int32)
    for tile in tile_grid(height, width, size, overlap):
        window = labels.read(tile, size)
        assert window.shape == (size, size)
        assert window.dtype == np.uint8
        # Beyond the raster (only for rasters smaller than a window) nothing is labelled.
        assert not window[tile.height:, :].any() and not window[:, tile.width:].any()
        rows, cols = tile.core_slices
        out[tile.core_row0:tile.core_row1, tile.core_col0:tile.core_col1] = window[rows, cols]
        written[tile.core_row0:tile.core_row1, tile.core_col0:tile.core_col1] += 1
    assert (written == 1).all(), "tile cores must cover every pixel exactly once"
    return out


@pytest.fixture(scope="session")
def mosaic():
    return _mosaic


SCENE_ORIGIN = (500000.0, 4000000.0)  # EPSG:32616, 0.5 m pixels


def write_scene(folder: Path, size: int = 128) -> tuple[Path, Path]:
    """A small synthetic orthophoto (reddish left half, green right half, with noise) and support polygons
    for both halves, for end-to-end runs that must stay fast."""
    import geopandas
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import box

    rng = np.random.default_rng(0)
    image = np.zeros((3, size, size), np.uint8)
    image[:, :, : size // 2] = np.array([200, 60, 60], np.uint8)[:, None, None]
    image[:, :, size // 2:] = np.array([40, 160, 40], np.uint8)[:, None, None]
    image += rng.integers(0, 20, image.shape, dtype=np.uint8)
    x0, y0 = SCENE_ORIGIN
    image_path, support_path = folder / "scene.tif", folder / "scene-support.gpkg"
    with rasterio.open(image_path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32616", transform=from_origin(x0, y0, 0.5, 0.5)) as dst:
        dst.write(image)
    half = size * 0.25  # metres across half the scene
    geopandas.GeoDataFrame(
        {"class": ["red", "green"]},
        geometry=[box(x0 + 0.1 * half, y0 - 1.8 * half, x0 + 0.8 * half, y0 - 0.2 * half),
                  box(x0 + 1.2 * half, y0 - 1.8 * half, x0 + 1.9 * half, y0 - 0.2 * half)],
        crs="EPSG:32616").to_file(support_path)
    return image_path, support_path


@pytest.fixture
def scene(tmp_path) -> tuple[Path, Path]:
    return write_scene(tmp_path)


def gdal_band(path):
    """Band 1 of ``path`` as GDAL itself describes it (palette, category names, attribute table), by
    serialising the dataset to VRT: what gdalinfo would print, without needing gdalinfo."""
    import tempfile
    from xml.etree import ElementTree

    import rasterio.shutil

    with tempfile.TemporaryDirectory() as folder:
        vrt = Path(folder) / "band.vrt"
        rasterio.shutil.copy(str(path), str(vrt), driver="VRT")
        return ElementTree.parse(vrt).getroot().find("VRTRasterBand")
