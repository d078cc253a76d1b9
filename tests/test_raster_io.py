"""Label rasters as support, the tile/mosaic/write round trip, and orthophoto reads (bands, scaling, masks)."""

from __future__ import annotations

import json
import math
import os

import geopandas
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.warp import calculate_default_transform, reproject

from geoproto.errors import GeoprotoError
from geoproto.classes import NODATA, ClassInfo, read_class_file
from geoproto.output import ResultWriter, class_areas, class_histogram, write_legend
from geoproto.raster import RasterSource, open_raster, pixel_area_m2, row_areas_m2, shared_scaling
from geoproto.support import RasterLabels
from geoproto.tiling import Tile, tile_grid

from synthetic import write_raster

TILE, OVERLAP = 128, 16
# Share of labelled pixels allowed to differ after label raster -> EPSG:4326 -> back, both with nearest
# (two nearest-neighbour resamplings move building edges by a pixel). Measured: 0.61% of 33,926.
MAX_WARPED_DIFF = 0.01


def _label_raster(frame, classes: dict, src, path, nodata=None) -> np.ndarray:
    """Burn ``frame`` (coordinates in ``src``'s CRS) into a uint8 GeoTIFF on ``src``'s grid; return the array."""
    labels = rasterize(((g, classes[c]) for g, c in zip(frame.geometry, frame["class"])), out_shape=src.shape,
                       transform=src.transform, dtype="uint8")
    profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1, "dtype": "uint8",
               "crs": src.crs, "transform": src.transform, "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels, 1)
    return labels


@pytest.fixture(scope="module")
def building_frame(spacenet):
    frame = geopandas.read_file(spacenet / "geotiff_labels.geojson")
    frame["class"] = ["building" if i % 2 == 0 else "other" for i in range(len(frame))]
    return frame


@pytest.fixture(scope="module")
def pivot_frame(albers):
    # Coordinates are the raster's Albers metres although the file says WGS 84; used as they are.
    frame = geopandas.read_file(albers / "geotiff_custom_proj_labels.geojson")
    frame["class"] = ["pivot" if i % 3 else "other" for i in range(len(frame))]
    return frame


# --- label rasters as support ---------------------------------------------------------------------------

@pytest.mark.parametrize("nodata", [None, 0])
def test_label_raster_same_grid_is_read_exactly(building_frame, chip, tmp_path, mosaic, nodata):
    path = tmp_path / "labels.tif"
    expected = _label_raster(building_frame, {"building": 1, "other": 2}, chip, path, nodata)
    labels = RasterLabels(str(path), chip, None)
    assert labels.source is labels.dataset  # same grid: read directly, no warping
    np.testing.assert_array_equal(mosaic(labels, chip.height, chip.width), expected)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # inside rasterio.warp
def test_label_raster_in_another_grid_is_warped_onto_the_orthophoto(building_frame, chip, tmp_path, mosaic):
    expected = _label_raster(building_frame, {"building": 1, "other": 2}, chip, tmp_path / "utm.tif")
    transform, width, height = calculate_default_transform(chip.crs, "EPSG:4326", chip.width, chip.height,
                                                           *chip.bounds)
    warped = np.zeros((height, width), np.uint8)
    reproject(expected, warped, src_transform=chip.transform, src_crs=chip.crs, dst_transform=transform,
              dst_crs="EPSG:4326", resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
    path = tmp_path / "labels_4326.tif"
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=transform, nodata=0) as dst:
        dst.write(warped, 1)
    labels = RasterLabels(str(path), chip, None)
    got = mosaic(labels, chip.height, chip.width)
    assert got.shape == expected.shape
    labelled = (got > 0) | (expected > 0)
    differ = (got != expected).sum() / labelled.sum()
    assert differ <= MAX_WARPED_DIFF, f"{differ:.2%} of labelled pixels differ"
    # The same nearest-neighbour warp done directly with rasterio gives nearly the same pixels (measured: 17
    # differ, from GDAL's approximate transformer).
    back = np.zeros(chip.shape, np.uint8)
    reproject(warped, back, src_transform=transform, src_crs="EPSG:4326", dst_transform=chip.transform,
              dst_crs=chip.crs, resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
    assert (back != got).sum() <= 0.001 * labelled.sum()
    # Both classes survive and stay where they were (no shift or flip): most of each class overlaps.
    for class_id in (1, 2):
        both = ((got == class_id) & (expected == class_id)).sum()
        assert both >= 0.95 * (expected == class_id).sum()


def test_colour_coded_mask_maps_colours_to_ids(dubai, mosaic):
    classes = read_class_file(str(dubai / "classes.json"))
    image = dubai / "images" / "image_part_001t1.jpg"
    mask = dubai / "masks" / "image_part_001t1.png"
    with open_raster(str(image)) as reference:
        labels = RasterLabels(str(mask), reference, classes)
        got = mosaic(labels, reference.height, reference.width)
    with open_raster(str(mask)) as src:
        rgb = src.read()
    code = (rgb[0].astype(np.int32) << 16) | (rgb[1].astype(np.int32) << 8) | rgb[2]
    colours = {0x3C1098: 1, 0x8429F6: 2, 0x6EC1E4: 3, 0xFEDD3A: 4, 0xE2A929: 5, 0x9B9B9B: 0}
    assert set(np.unique(code).tolist()) <= set(colours)  # the mask holds only these colours
    expected = np.zeros(code.shape, np.uint8)
    for colour, class_id in colours.items():
        expected[code == colour] = class_id
    np.testing.assert_array_equal(got, expected)
    assert (got[code == 0x9B9B9B] == 0).all() and (code == 0x9B9B9B).sum() > 0
    assert set(np.unique(got).tolist()) == {0, 1, 2, 3, 4, 5}


def test_label_raster_errors(building_frame, chip, tmp_path, dubai):
    rgb_mask = str(dubai / "masks" / "image_part_001t1.png")
    # RGB labels without a colour for every class.
    rgb = tmp_path / "rgb.tif"
    with rasterio.open(rgb, "w", driver="GTiff", width=chip.width, height=chip.height, count=3, dtype="uint8",
                       crs=chip.crs, transform=chip.transform) as dst:
        dst.write(np.zeros((3, chip.height, chip.width), np.uint8))
    with pytest.raises(GeoprotoError, match="one band of class ids.*it has 3"):
        RasterLabels(str(rgb), chip, ClassInfo([1, 2], ["a", "b"]))
    with pytest.raises(GeoprotoError, match="one band of class ids.*it has 3"):
        RasterLabels(str(rgb), chip, ClassInfo([1, 2], ["a", "b"], [(1, 2, 3), None]))
    # A label raster without CRS over an orthophoto with one.
    with pytest.raises(GeoprotoError, match="both have a CRS or both lack one"):
        RasterLabels(rgb_mask, chip, read_class_file(str(dubai / "classes.json")))
    # Values above 254.
    path = tmp_path / "bad.tif"
    _label_raster(building_frame, {"building": 1, "other": 255}, chip, path)
    labels = RasterLabels(str(path), chip, None)
    with pytest.raises(GeoprotoError, match="label values must be 0..254"):
        for tile in tile_grid(chip.height, chip.width, TILE, OVERLAP):
            labels.read(tile, TILE)
    with pytest.raises(GeoprotoError, match="no such file"):
        RasterLabels(str(tmp_path / "missing.tif"), chip, None)


# --- tiles -> identity model -> ResultWriter round trip ------------------------------------------------

@pytest.mark.parametrize("which", ["spacenet", "albers"])
def test_tile_write_round_trip_is_exact(which, chip, albers_chip, building_frame, pivot_frame, tmp_path):
    src, frame, names = ((chip, building_frame, ["building", "other"]) if which == "spacenet"
                         else (albers_chip, pivot_frame, ["other", "pivot"]))
    classes = ClassInfo([1, 2], names)
    label_path = tmp_path / "labels.tif"
    expected = _label_raster(frame, {names[0]: 1, names[1]: 2}, src, label_path)
    assert (expected == 1).sum() > 100 and (expected == 2).sum() > 100
    labels = RasterLabels(str(label_path), src, classes)
    out = tmp_path / "classes.tif"
    writer = ResultWriter(src, src.crs, classes, str(out), None)
    tiles = tile_grid(src.height, src.width, TILE, OVERLAP)
    assert len(tiles) == (64 if which == "spacenet" else 25)
    try:
        for tile in tiles:
            window = labels.read(tile, TILE)  # the "model": its prediction is the label itself
            writer.write(tile, window[: tile.height, : tile.width], None)
    finally:
        writer.close()
    write_legend(f"{out}.aux.xml", classes, class_areas(classes, class_histogram(str(out)), None))

    with rasterio.open(out) as result:
        np.testing.assert_array_equal(result.read(1), expected)
        assert result.crs == src.crs
        assert result.crs.to_wkt() == src.crs.to_wkt()
        assert result.transform == src.transform
        assert result.shape == src.shape
        assert result.nodata == NODATA == 0
        assert result.dtypes == ("uint8",)
        assert result.profile["tiled"] and result.block_shapes == [(256, 256)]
        assert result.compression is not None and result.compression.value.lower() == "deflate"
        colormap = result.colormap(1)  # from the legend sidecar, through GDAL
        assert len(colormap) == 3 and colormap[0] == (0, 0, 0, 0)
        assert colormap[1][3] == 255 and colormap[2][3] == 255 and colormap[1] != colormap[2]
        assert json.loads(result.tags()["GEOPROTO_CLASSES"]) == {"1": names[0], "2": names[1]}
        assert result.tags()["CLASS_1"] == names[0]


# --- RasterSource ---------------------------------------------------------------------------------------

def test_uint16_single_band_scaled_once_for_the_whole_raster(spacenet, chip):
    source = RasterSource.open(str(spacenet / "sample_geotiff.tif"))
    assert source.bands == [1]
    data = chip.read(1)
    low, high = np.percentile(data[data != 0], (2, 98))
    assert len(source.scale) == 1
    assert source.scale[0] == pytest.approx((low, high))
    tiles = tile_grid(chip.height, chip.width, TILE, OVERLAP)
    first, last = tiles[0], tiles[-1]
    own_stretch = []
    with source:
        for tile in (first, last):
            image, valid = source.read(tile, TILE)
            assert image.shape == (3, TILE, TILE) and image.dtype == np.float32
            assert valid.shape == (TILE, TILE) and valid.all()
            np.testing.assert_array_equal(image[0], image[1])
            np.testing.assert_array_equal(image[0], image[2])
            assert image.min() >= 0.0 and image.max() <= 1.0
            raw = data[tile.row:tile.row + tile.height, tile.col:tile.col + tile.width].astype(np.float32)
            np.testing.assert_allclose(image[0], np.clip((raw - low) / (high - low), 0, 1), atol=1e-6)
            own_stretch.append(tuple(np.percentile(raw, (2, 98))))
    # A per-tile stretch would have differed between these tiles; the global one did not.
    assert own_stretch[0] != own_stretch[1]


def test_rasters_processed_together_share_one_stretch(tmp_path):
    """A dark and a bright raster holding the same 32 x 32 patch: each stretched by its own percentiles the
    patch becomes two different model inputs; the pooled stretch, one for both, is the percentiles of both
    rasters' valid pixels together, as of one raster (their nodata left out)."""
    rng = np.random.default_rng(0)
    patch = rng.integers(500, 3000, (3, 32, 32))
    dark, bright = rng.integers(100, 1000, (3, 64, 96)), rng.integers(1000, 4000, (3, 96, 64))
    dark[:, :32, :32], bright[:, 40:72, 8:40] = patch, patch
    dark[:, 48:, :], bright[:, :, 56:] = 0, 0  # nodata (19 % of the pixels): counted, the 2nd percentile would be 0
    sources = [RasterSource.open(_write(tmp_path / "dark.tif", dark.astype("uint16"), 0)),
               RasterSource.open(_write(tmp_path / "bright.tif", bright.astype("uint16"), 0))]
    assert sources[0].scale != sources[1].scale
    with sources[0], sources[1]:
        first = sources[0].read(Tile(0, 0, 32, 32, 0, 32, 0, 32), 32)[0]
        second = sources[1].read(Tile(40, 8, 32, 32, 0, 32, 0, 32), 32)[0]
    assert not np.allclose(first, second)
    pixels = np.concatenate([image[:, image[0] != 0] for image in (dark, bright)], axis=1)  # bands x valid pixels
    np.testing.assert_allclose(shared_scaling(sources), [np.percentile(band, (2, 98)) for band in pixels])


def test_rasters_that_cannot_share_a_stretch(tmp_path):
    """Bands of different data types or counts keep their own stretch; byte bands are never stretched."""
    data = np.random.default_rng(1).integers(1, 200, (3, 16, 16))
    uint16, float32, byte = (RasterSource.open(_write(tmp_path / f"{dtype}.tif", data.astype(dtype), 0))
                             for dtype in ("uint16", "float32", "uint8"))
    single = RasterSource.open(_write(tmp_path / "single.tif", data[:1].astype("uint16"), 0))
    with uint16, float32, byte, single:
        assert shared_scaling([uint16, float32]) is None
        assert shared_scaling([uint16, single]) is None
        assert shared_scaling([byte, byte]) is None
        np.testing.assert_allclose(shared_scaling([uint16]), uint16.scale)  # alone: its own


def test_nodata_pixels_are_invalid(spacenet, tmp_path):
    path = tmp_path / "holes.tif"
    with rasterio.open(spacenet / "sample_geotiff.tif") as src:
        data = src.read(1)
        profile = src.profile
    assert profile["nodata"] == 0 and (data != 0).all()
    data[100:200, 300:420] = 0
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    source = RasterSource.open(str(path))
    low, _ = source.scale[0]
    assert low > 0  # nodata stays out of the statistics
    tile = next(t for t in tile_grid(900, 900, TILE, OVERLAP) if t.row <= 100 < t.row + TILE and t.col <= 300 < t.col + TILE)
    with source:
        _, valid = source.read(tile, TILE)
    expected = data[tile.row:tile.row + TILE, tile.col:tile.col + TILE] != 0
    assert (~expected).sum() > 0
    np.testing.assert_array_equal(valid, expected)


def _rgba(path, height=200, width=160):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (4, height, width), dtype=np.uint8)
    data[3] = 255
    data[3, 20:60, 30:90] = 0
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=4, dtype="uint8",
                       crs="EPSG:32616", transform=Affine(0.5, 0, 733601, 0, -0.5, 3725139),
                       photometric="RGB", alpha="YES") as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    return data


def test_rgba_alpha_masks_pixels(tmp_path):
    path = tmp_path / "rgba.tif"
    data = _rgba(path)
    source = RasterSource.open(str(path))
    assert source.bands == [1, 2, 3]
    assert source.scale == [(0.0, 255.0)] * 3
    tile = tile_grid(200, 160, TILE, OVERLAP)[0]
    with source:
        image, valid = source.read(tile, TILE)
    np.testing.assert_array_equal(valid, data[3, :TILE, :TILE] > 0)
    assert not valid[20:60, 30:90].any() and valid.sum() == TILE * TILE - 40 * 60
    expected = data[:3, :TILE, :TILE] / 255.0
    np.testing.assert_allclose(image[:, valid], expected[:, valid], atol=1e-6)
    # Transparent pixels are filled with the window's mean colour, not their (arbitrary) values.
    np.testing.assert_allclose(image[:, ~valid], np.broadcast_to(expected[:, valid].mean(1, keepdims=True),
                                                                 (3, 40 * 60)), atol=1e-5)


@pytest.mark.parametrize("bands", [[4, 3, 2], [4]])
def test_the_alpha_band_is_refused_as_imagery(tmp_path, bands):
    """RGBA taken for RGBN (--bands 4,3,2): transparency would be read as the red channel. An RGBN file whose
    near-infrared band is tagged alpha is told how to retag it, and is then read (what gdal_edit.py does)."""
    path = tmp_path / "rgba.tif"
    _rgba(path)
    with pytest.raises(GeoprotoError, match=rf"^bands: {path}: band 4 is its alpha \(transparency\) band, not "
                                            rf"imagery; it masks the others already \(if it holds imagery, such as "
                                            rf"near-infrared, retag it: gdal_edit.py -colorinterp_4 undefined "
                                            rf"{path}\)$"):
        RasterSource.open(str(path), bands)
    assert RasterSource.open(str(path), [3, 2, 1]).bands == [3, 2, 1]
    with rasterio.open(path, "r+") as dst:  # gdal_edit.py -colorinterp_4 undefined
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    assert RasterSource.open(str(path), bands).bands == bands


def test_raster_smaller_than_tile_is_reflect_padded(tmp_path):
    path = tmp_path / "small.tif"
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (3, 100, 80), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=80, height=100, count=3, dtype="uint8",
                       crs="EPSG:32616", transform=Affine(1, 0, 733601, 0, -1, 3725139)) as dst:
        dst.write(data)
    source = RasterSource.open(str(path))
    tiles = tile_grid(100, 80, TILE, OVERLAP)
    assert len(tiles) == 1 and (tiles[0].height, tiles[0].width) == (100, 80)
    with source:
        image, valid = source.read(tiles[0], TILE)
    assert image.shape == (3, TILE, TILE)
    expected = np.pad(data / 255.0, ((0, 0), (0, TILE - 100), (0, TILE - 80)), mode="reflect")
    np.testing.assert_allclose(image, expected, atol=1e-6)
    np.testing.assert_allclose(image[:, 100, :80], data[:, 98] / 255.0, atol=1e-6)  # mirrored, edge not repeated
    assert valid[:100, :80].all() and not valid[100:].any() and not valid[:, 80:].any()


def test_band_selection_errors(albers, tmp_path):
    three = str(albers / "sample_geotiff_custom_proj.tif")
    with pytest.raises(GeoprotoError, match="has 3 band\\(s\\); no band 5"):
        RasterSource.open(three, [5])
    with pytest.raises(GeoprotoError, match="no band 0"):
        RasterSource.open(three, [1, 2, 0])
    with pytest.raises(GeoprotoError, match="bands: takes 1 or 3 band numbers, got 2"):
        RasterSource.open(three, [1, 2])
    assert RasterSource.open(three, [3, 2, 1]).bands == [3, 2, 1]
    default = RasterSource.open(three)
    assert default.bands == [1, 2, 3] and len(default.scale) == 3
    two = tmp_path / "two.tif"
    with rasterio.open(two, "w", driver="GTiff", width=10, height=10, count=2, dtype="uint8", crs="EPSG:32616",
                       transform=Affine(1, 0, 733601, 0, -1, 3725139)) as dst:
        dst.write(np.ones((2, 10, 10), np.uint8))
    with pytest.raises(GeoprotoError, match="bands: .*2 data bands; choose 1 or 3 of them"):
        RasterSource.open(str(two))
    with pytest.raises(GeoprotoError, match="no such file"):
        RasterSource.open(str(tmp_path / "missing.tif"))


# --- NaN, complex values, nothing valid, unreadable VRT sources -----------------------------------------

def _write(path, data, nodata=None):
    from synthetic import write_raster

    return str(write_raster(path, data, nodata, transform=Affine(0.5, 0, 733601, 0, -0.5, 3725139)))


@pytest.mark.parametrize("nodata", [None, float("nan")], ids=["undeclared", "declared"])
def test_nan_is_invalid_left_out_of_the_stretch_and_never_encoded(tmp_path, nodata):
    rng = np.random.default_rng(0)
    data = rng.uniform(100, 200, (3, 96, 96)).astype(np.float32)
    data[:, :, :10] = np.nan
    data[1, 50, 50] = np.inf
    source = RasterSource.open(_write(tmp_path / "nan.tif", data, nodata))
    finite = data[:, np.isfinite(data).all(0)]
    for (low, high), band in zip(source.scale, finite):
        assert np.isfinite([low, high]).all()
        assert low == pytest.approx(np.percentile(band, 2), rel=1e-3)
    with source:
        image, valid = source.read(tile_grid(96, 96, 96, 0)[0], 96)
    assert np.isfinite(image).all()
    assert not valid[:, :10].any() and not valid[50, 50] and valid[:, 10:].sum() == 96 * 86 - 1


@pytest.mark.parametrize("kind", ["transparent", "nodata", "nan"])
def test_a_raster_with_no_valid_pixel_is_refused_alike(tmp_path, kind):
    path = tmp_path / f"{kind}.tif"
    if kind == "transparent":
        data = np.full((4, 64, 64), 120, np.uint8)
        data[3] = 0
        with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8",
                           photometric="RGB", alpha="YES") as dst:
            dst.write(data)
    elif kind == "nodata":
        _write(path, np.zeros((3, 64, 64), np.uint16), nodata=0)
    else:
        _write(path, np.full((3, 64, 64), np.nan, np.float32))
    with pytest.raises(GeoprotoError, match=f"{kind}.tif: no valid pixels \\(all nodata, NaN or transparent\\)"):
        RasterSource.open(str(path))


def test_a_small_valid_area_missed_by_the_decimated_read_still_counts(tmp_path, monkeypatch):
    import geoproto.raster

    monkeypatch.setattr(geoproto.raster, "STATS_MAX_SIDE", 8)
    data = np.zeros((3, 256, 256), np.uint16)
    data[:, 101, 77] = 500  # one valid pixel, between the decimated read's samples
    source = RasterSource.open(_write(tmp_path / "speck.tif", data, nodata=0))
    assert len(source.scale) == 3


def test_complex_raster_is_refused(tmp_path):
    path = _write(tmp_path / "c.tif", np.ones((3, 32, 32), np.complex64))
    with pytest.raises(GeoprotoError, match="c.tif: holds complex numbers \\(complex64\\)"):
        open_raster(path)


def test_an_empty_raster_path_is_named_as_empty(tmp_path):
    """Not ": no such file", about a file called ""."""
    with pytest.raises(GeoprotoError, match=r"^empty path; give a file name$"):
        open_raster("")
    with pytest.raises(GeoprotoError, match=r"^.*missing.tif: no such file$"):
        open_raster(str(tmp_path / "missing.tif"))


def test_vrt_with_missing_source_names_it(tmp_path):
    import rasterio.shutil

    source = _write(tmp_path / "source.tif", np.full((3, 32, 32), 7, np.uint16))
    rasterio.shutil.copy(source, tmp_path / "m.vrt", driver="VRT")
    os.remove(source)
    with pytest.raises(GeoprotoError, match="m.vrt: read error .*source.tif: No such file"):
        RasterSource.open(str(tmp_path / "m.vrt"))


def zone_m2(south: float, north: float, width: float) -> float:
    """The area of the WGS 84 zone between two parallels over ``width`` degrees of longitude, in closed form
    (Snyder's q of the authalic latitude): the reference for ``row_areas_m2``, which integrates numerically."""
    major, flattening = 6378137.0, 1 / 298.257223563
    eccentricity = math.sqrt(flattening * (2 - flattening))

    def q(latitude):
        sine = math.sin(math.radians(latitude))
        return sine / (1 - (eccentricity * sine) ** 2) + math.atanh(eccentricity * sine) / eccentricity

    return math.radians(width) * (major * (1 - flattening)) ** 2 / 2 * (q(north) - q(south))


@pytest.mark.parametrize("south, cell_km2", [(0.0, 12308.464), (60.0, 6123.141)])
def test_row_areas_of_a_geographic_raster_add_up_to_the_ellipsoid_zone(tmp_path, south, cell_km2):
    """A 1 x 1 degree cell in 40 x 40 pixels, at the equator and at 60 N on WGS 84."""
    path = write_raster(tmp_path / "d.tif", np.ones((1, 40, 40), np.uint8), crs="EPSG:4326",
                        transform=from_origin(10.0, south + 1, 1 / 40, 1 / 40))
    with rasterio.open(path) as src:
        rows = row_areas_m2(src, src.crs)
    assert rows.shape == (40,) and (np.diff(rows) > 0).all()  # pixels grow towards the equator (row 0 is north)
    assert zone_m2(south, south + 1, 1.0) / 1e6 == pytest.approx(cell_km2, abs=1e-3)
    assert rows.sum() * 40 == pytest.approx(zone_m2(south, south + 1, 1.0), rel=1e-6)
    for row in (0, 39):  # each row on its own too
        north = south + 1 - row / 40
        assert rows[row] == pytest.approx(zone_m2(north - 1 / 40, north, 1 / 40), rel=1e-9)


def test_row_areas_of_centimetre_pixels_match_geodesic_quadrilaterals(tmp_path):
    """Drone pixels (2e-7 degrees, about 2 cm) at 45 N, against pyproj's geodesic polygon of one pixel: at
    this size the geodesic edges are the parallels."""
    from pyproj import Geod

    side = 2e-7
    path = write_raster(tmp_path / "d.tif", np.ones((1, 3, 3), np.uint8), crs="EPSG:4326",
                        transform=from_origin(6.0, 45.0, side, side))
    with rasterio.open(path) as src:
        rows = row_areas_m2(src, src.crs)
    quad = Geod(ellps="WGS84").polygon_area_perimeter([6.0, 6.0 + side, 6.0 + side, 6.0],
                                                       [45.0, 45.0, 45.0 - side, 45.0 - side])[0]
    assert rows[0] == pytest.approx(abs(quad), rel=1e-6)
    assert rows[0] == pytest.approx(3.5e-4, rel=0.01)  # 2.2 cm (latitude) x 1.6 cm (longitude)


def test_row_areas_are_the_pixel_area_when_projected_and_none_when_unknown(tmp_path):
    projected = write_raster(tmp_path / "p.tif", np.ones((1, 5, 4), np.uint8))
    rotated = write_raster(tmp_path / "r.tif", np.ones((1, 5, 4), np.uint8), crs="EPSG:4326",
                           transform=Affine.rotation(30) * Affine.scale(1e-5, -1e-5))
    plain = write_raster(tmp_path / "n.tif", np.ones((1, 5, 4), np.uint8), transform=None)
    with rasterio.open(projected) as src:
        assert row_areas_m2(src, src.crs).tolist() == [pixel_area_m2(src, src.crs)] * 5 == [0.25] * 5
    for path in (rotated, plain):
        with rasterio.open(path) as src:
            assert row_areas_m2(src, src.crs) is None
