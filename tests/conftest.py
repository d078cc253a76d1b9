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


@pytest.fixture
def scene(tmp_path) -> tuple[Path, Path]:
    """A small synthetic orthophoto and its support polygons (``synthetic.scene``), for fast end-to-end runs."""
    import synthetic

    return synthetic.scene(tmp_path)


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
