"""Shared fixtures: the real test data inside the repository (``tests/data``, ``examples``) and a
tile-mosaic helper. Every path to real data is defined here, so no test reaches outside the clone."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from geoproto.raster import open_raster
from geoproto.tiling import tile_grid

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
SPACENET = REPO / "examples" / "spacenet"
ALBERS = TEST_DATA / "albers-30m"
DUBAI = TEST_DATA / "dubai"


@pytest.fixture(scope="session")
def spacenet() -> Path:
    """The SpaceNet example: ``sample_geotiff.tif`` (0.5 m panchromatic, EPSG:32616), its 43 building
    footprints ``geotiff_labels.geojson`` and the demo's ``support.gpkg``. Read-only: copy to tmp_path
    before altering anything."""
    return SPACENET


@pytest.fixture(scope="session")
def albers() -> Path:
    """The 30 m chip in a custom Albers CRS (``sample_geotiff_custom_proj.tif``) and its centre pivots
    (``geotiff_custom_proj_labels.geojson``, whose coordinates are Albers metres declared as WGS 84)."""
    return ALBERS


@pytest.fixture(scope="session")
def dubai() -> Path:
    """A few real Dubai tiles: ``images/*.jpg``, colour-coded ``masks/*.png`` and ``classes.json``."""
    return DUBAI


@dataclass(frozen=True)
class DataPaths:
    """The real files tests use most, by what they are."""

    chip: Path = SPACENET / "sample_geotiff.tif"
    support: Path = SPACENET / "support.gpkg"
    buildings: Path = SPACENET / "geotiff_labels.geojson"
    dubai: Path = DUBAI
    dubai_query: Path = DUBAI / "images" / "image_part_005t2.jpg"  # 544 x 510: four overlapping windows
    albers_chip: Path = ALBERS / "sample_geotiff_custom_proj.tif"
    pivots: Path = ALBERS / "geotiff_custom_proj_labels.geojson"


@pytest.fixture(scope="session")
def gpu_check():
    """benchmarks/gpu_check.py as a module (a script, not a package): its real windows and the model's
    stand-in (``noisy_probabilities``) serve the CRF tests too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def paths() -> DataPaths:
    return DataPaths()


@pytest.fixture
def chip(spacenet):
    with open_raster(str(spacenet / "sample_geotiff.tif")) as src:
        yield src


@pytest.fixture
def albers_chip(albers):
    with open_raster(str(albers / "sample_geotiff_custom_proj.tif")) as src:
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


@pytest.fixture(scope="session")
def spacenet_crop(tmp_path_factory) -> Path:
    """A 720 x 320 crop of the SpaceNet chip (rows 250-570) holding support polygons of all three classes
    of ``support.gpkg``: one 320 px window row, for fast end-to-end runs on real imagery."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    path = tmp_path_factory.mktemp("spacenet-crop") / "crop.tif"
    window = Window(0, 250, 720, 320)
    with rasterio.open(SPACENET / "sample_geotiff.tif") as src:
        profile = {**src.profile, "width": window.width, "height": window.height,
                   "transform": src.transform @ Affine.translation(window.col_off, window.row_off)}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return path


@pytest.fixture(scope="session")
def dark_crop(spacenet_crop, tmp_path_factory) -> Path:
    """``spacenet_crop`` with its right 40 % (columns 432 on) a dark constant: the same ground elsewhere, but
    its own 2-98 % stretch moves. Columns up to 300 are the cores of 128 px windows (overlap 16) that,
    read with their 32 px of context, reach no blanked pixel."""
    import rasterio

    path = tmp_path_factory.mktemp("dark-crop") / "dark.tif"
    with rasterio.open(spacenet_crop) as src:
        profile, data = src.profile, src.read()
    data[:, :, 432:] = 1  # valid (nodata is 0), far below the chip's values
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture
def spy(monkeypatch):
    """``spy(target, name, record)``: calls go through; returns the list of each call's ``record(*args, **kwargs)``."""

    def install(target, name: str, record=lambda *args, **kwargs: (args, kwargs)) -> list:
        calls, original = [], getattr(target, name)

        def recording(*args, **kwargs):
            calls.append(record(*args, **kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(target, name, recording)
        return calls

    return install


@pytest.fixture
def fake_stderr(monkeypatch):
    """``fake_stderr(terminal)``: sys.stderr becomes a text buffer that says whether it is a terminal;
    returns the buffer."""

    def install(terminal: bool) -> io.StringIO:
        stream = io.StringIO()
        stream.isatty = lambda: terminal
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return install


@pytest.fixture
def support_reads(spy) -> list[str]:
    """The support files ``support.read_vector_support`` reads during the test, in order."""
    import geoproto.support

    return spy(geoproto.support, "read_vector_support", lambda path, *args, **kwargs: path)
