"""Support polygons and class files: labels land on the right pixels, and bad input fails clearly."""

from __future__ import annotations

import json
import re

import geopandas
import numpy as np
import pandas
import pytest
import rasterio
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.features import rasterize
from shapely.geometry import Polygon, box

from synthetic import pixel_box
from geoproto.errors import GeoprotoError
from geoproto.raster import open_raster
from geoproto.classes import ClassInfo, read_class_file
from geoproto.support import VectorLabels, load_support, load_vector_support
from geoproto.tiling import tile_grid

# Share of labelled pixels allowed to change when the SpaceNet buildings come as EPSG:4326 (GeoJSON
# rounds degrees to 7 decimals, ~1 cm). Measured: 0 of 33,818 for both GeoJSON and GPKG; 0.05% is ~17 px.
MAX_REPROJECTED_DIFF = 0.0005


def reference_labels(frame, column_ids: dict, transform, shape) -> np.ndarray:
    """Independent expectation: each class burnt on the raster's own transform; overlaps of classes -> 0."""
    out = np.zeros(shape, np.uint8)
    claimed = np.zeros(shape, np.int32)
    for class_id in sorted(set(column_ids.values())):
        geoms = [g for g, c in zip(frame.geometry, frame["class"]) if column_ids[c] == class_id]
        burned = rasterize(((g, 1) for g in geoms), out_shape=shape, transform=transform, dtype="uint8")
        out[burned > 0] = class_id
        claimed += burned
    out[claimed > 1] = 0
    return out


@pytest.fixture
def buildings(spacenet, tmp_path):
    """The 43 SpaceNet footprints (EPSG:32616) with a 'class' column: alternately building / other."""
    frame = geopandas.read_file(spacenet / "geotiff_labels.geojson")
    assert len(frame) == 43 and frame.crs.to_epsg() == 32616
    frame["class"] = ["building" if i % 2 == 0 else "other" for i in range(len(frame))]
    path = tmp_path / "buildings.geojson"
    frame.to_file(path, driver="GeoJSON")
    return path, frame


def test_vector_support_lands_on_the_right_pixels(buildings, chip, mosaic):
    path, frame = buildings
    labels = load_vector_support(str(path), chip)
    assert labels.classes.ids == [1, 2] and labels.classes.names == ["building", "other"]
    got = mosaic(labels, chip.height, chip.width)
    expected = reference_labels(frame, {"building": 1, "other": 2}, chip.transform, chip.shape)
    assert (expected == 1).sum() > 1000 and (expected == 2).sum() > 1000
    np.testing.assert_array_equal(got, expected)
    # Windows the support touches are offered, windows it does not touch are not.
    tiles = tile_grid(chip.height, chip.width, 128, 16)
    candidates = labels.candidate_tiles(tiles)
    assert 0 < len(candidates) <= len(tiles)
    for tile in set(tiles) - set(candidates):
        assert not labels.read(tile, 128).any()


@pytest.mark.parametrize("name, driver", [("buildings_4326.geojson", "GeoJSON"), ("buildings_4326.gpkg", "GPKG")])
def test_vector_support_in_another_crs_lands_on_the_same_pixels(buildings, chip, mosaic, tmp_path, name, driver):
    path, frame = buildings
    original = mosaic(load_vector_support(str(path), chip), chip.height, chip.width)
    reprojected = tmp_path / name
    frame.to_crs("EPSG:4326").to_file(reprojected, driver=driver)
    labels = load_vector_support(str(reprojected), chip)
    assert labels.classes.names == ["building", "other"]
    got = mosaic(labels, chip.height, chip.width)
    labelled = (original > 0) | (got > 0)
    differ = (got != original).sum() / labelled.sum()
    assert differ <= MAX_REPROJECTED_DIFF, f"{differ:.4%} of labelled pixels moved after reprojection"
    assert (got == 1).sum() > 1000 and (got == 2).sum() > 1000


# --- the 30 m Albers chip whose GeoJSON declares WGS 84 but holds metres ---------------------------------

@pytest.fixture
def pivots(albers, tmp_path, albers_chip):
    """The 19 pivots ('pivot') plus one 'other' box inside the chip, keeping the file's wrong WGS 84 label."""
    frame = geopandas.read_file(albers / "geotiff_custom_proj_labels.geojson")
    assert len(frame) == 19 and frame.crs.to_epsg() == 4326
    frame["class"] = "pivot"
    left, bottom, right, top = albers_chip.bounds
    box = shapely.box(left + 3000, bottom + 3000, left + 4500, bottom + 4500)  # 50 x 50 px, away from pivots
    assert not frame.geometry.intersects(box).any()
    frame = geopandas.GeoDataFrame(
        {"id": list(frame["id"]) + [0], "class": list(frame["class"]) + ["other"]},
        geometry=list(frame.geometry) + [box], crs=frame.crs)
    path = tmp_path / "pivots.geojson"
    frame.to_file(path, driver="GeoJSON")
    return path, frame


def test_projected_coordinates_declared_as_wgs84_are_detected(pivots, albers_chip):
    path, _ = pivots
    with pytest.raises(GeoprotoError) as info:
        load_vector_support(str(path), albers_chip)
    message = str(info.value)
    assert "look projected" in message and message.startswith("support_crs: ") and str(path) in message


def test_support_crs_fixes_mislabelled_vector(pivots, albers_chip, mosaic):
    path, frame = pivots
    labels = load_vector_support(str(path), albers_chip, support_crs=albers_chip.crs.to_wkt())
    assert labels.classes.names == ["other", "pivot"]  # ids 1, 2
    pixel_extent = shapely.box(0, 0, albers_chip.width, albers_chip.height)
    assert len(labels.geometries) == 20
    # All 20 polygons reach into the chip (four pivots are cut by its east edge; none lies outside it).
    assert all(pixel_extent.intersects(g) for g in labels.geometries)
    assert sum(pixel_extent.contains(g) for g in labels.geometries) == 16
    got = mosaic(labels, albers_chip.height, albers_chip.width)
    expected = reference_labels(frame, {"other": 1, "pivot": 2}, albers_chip.transform, albers_chip.shape)
    np.testing.assert_array_equal(got, expected)
    assert (got == 1).sum() == 50 * 50
    # Every pivot polygon is burnt onto some pixels of the chip.
    for geometry in frame.geometry[frame["class"] == "pivot"]:
        burned = rasterize([(geometry, 1)], out_shape=albers_chip.shape, transform=albers_chip.transform)
        assert burned.sum() > 0
        assert (got[burned > 0] == 2).all()


# --- errors -----------------------------------------------------------------------------------------------

def _write(frame, path, **kwargs):
    frame.to_file(path, **kwargs)
    return str(path)


def test_missing_vector_file(chip, tmp_path):
    missing = str(tmp_path / "nope.geojson")
    with pytest.raises(GeoprotoError, match="no such file"):
        load_vector_support(missing, chip)
    with pytest.raises(GeoprotoError, match="no such file"):
        load_support(missing, chip)


def test_empty_support_and_class_file_paths_are_named_as_empty(chip, tmp_path):
    """Not ": no such file", about a file called ""; the parameter that gave it is named."""
    empty = r"^support: empty path; give a file name$"
    with pytest.raises(GeoprotoError, match=empty):
        load_vector_support("", chip)
    with pytest.raises(GeoprotoError, match=empty):
        load_support("", chip)
    with pytest.raises(GeoprotoError, match=r"^empty path; give a file name$"):
        read_class_file("")
    boxes = [pixel_box(chip.transform, 0, 0, 10, 10), pixel_box(chip.transform, 20, 20, 30, 30)]
    support = _write(geopandas.GeoDataFrame({"class": ["a", "b"]}, geometry=boxes, crs=chip.crs),
                     tmp_path / "s.geojson")
    with pytest.raises(GeoprotoError, match=r"^classes_file: empty path; give a file name$"):
        load_support(support, chip, class_field="class", classes_file="")


def test_unreadable_vector_file(chip, tmp_path):
    path = tmp_path / "garbage.geojson"
    path.write_text("this is not a vector file")
    with pytest.raises(GeoprotoError, match="not a readable vector file"):
        load_vector_support(str(path), chip)


@pytest.mark.parametrize("features", [[], [{"type": "Feature", "properties": {"class": "a"}, "geometry": None}]])
def test_vector_without_geometries(chip, tmp_path, features):
    path = tmp_path / "empty.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with pytest.raises(GeoprotoError, match="holds no geometries"):
        load_vector_support(str(path), chip)


def test_polygons_outside_the_raster(buildings, chip, tmp_path):
    _, frame = buildings
    far = frame.copy()
    far["geometry"] = frame.geometry.translate(xoff=10_000)
    path = _write(far, tmp_path / "far.gpkg")
    with pytest.raises(GeoprotoError, match="no support polygon overlaps"):
        load_vector_support(path, chip)


@pytest.mark.filterwarnings("ignore:.crs. was not provided")
def test_vector_without_crs_over_raster_with_crs(buildings, chip, tmp_path):
    _, frame = buildings
    path = _write(frame[["class", "geometry"]].set_crs(None, allow_override=True), tmp_path / "nocrs.gpkg")
    assert geopandas.read_file(path).crs is None
    with pytest.raises(GeoprotoError, match="has no CRS") as info:
        load_vector_support(path, chip)
    assert info.value.param == "support_crs" and str(info.value).startswith("support_crs: ")
    # Stating the CRS makes it work and gives the same labels as the original.
    labels = load_vector_support(path, chip, support_crs="EPSG:32616")
    assert labels.classes.names == ["building", "other"]


def test_points_are_not_support(buildings, chip, tmp_path):
    _, frame = buildings
    points = frame[["class", "geometry"]].copy()
    points["geometry"] = frame.geometry.centroid
    path = _write(points, tmp_path / "points.gpkg")
    with pytest.raises(GeoprotoError, match="must be polygons; found Point"):
        load_vector_support(path, chip)


def test_class_field_missing_lists_fields(buildings, chip, tmp_path):
    _, frame = buildings
    frame = frame[["class", "osm_id", "geometry"]]
    path = _write(frame, tmp_path / "b.gpkg")
    with pytest.raises(GeoprotoError) as info:
        load_vector_support(path, chip, class_field="landuse_type")
    message = str(info.value)
    assert "'landuse_type'" in message and "class" in message and "osm_id" in message
    assert load_vector_support(path, chip, class_field="class").classes.names == ["building", "other"]


def test_ambiguous_class_field(buildings, chip, tmp_path):
    _, frame = buildings
    ambiguous = geopandas.GeoDataFrame({"kind": frame["class"], "colour": ["red", "blue"] * 21 + ["red"]},
                                       geometry=frame.geometry, crs=frame.crs)
    path = _write(ambiguous, tmp_path / "ambiguous.gpkg")
    with pytest.raises(GeoprotoError) as info:
        load_vector_support(path, chip)
    message = str(info.value)
    assert "cannot tell which field" in message and message.startswith("class_field: ")
    assert "kind" in message and "colour" in message
    assert load_vector_support(path, chip, class_field="kind").classes.names == ["building", "other"]


def test_gpkg_with_two_layers(buildings, chip, tmp_path):
    _, frame = buildings
    path = str(tmp_path / "two.gpkg")
    frame[["class", "geometry"]].to_file(path, layer="roofs", driver="GPKG")
    frame[["class", "geometry"]].iloc[:5].to_file(path, layer="few", driver="GPKG")
    with pytest.raises(GeoprotoError) as info:
        load_vector_support(path, chip)
    message = str(info.value)
    assert "2 layers" in message and "roofs" in message and "few" in message and message.startswith("layer: ")
    labels = load_vector_support(path, chip, layer="few")
    assert len(labels.geometries) == 5
    assert len(load_vector_support(path, chip, layer="roofs").geometries) == 43


@pytest.mark.parametrize("codes", [(1, 2), (3, 7)])
def test_numeric_class_codes_are_ids(buildings, chip, tmp_path, mosaic, codes):
    _, frame = buildings
    numeric = frame[["geometry"]].copy()
    numeric["class"] = [codes[0] if c == "building" else codes[1] for c in frame["class"]]
    path = _write(numeric, tmp_path / "codes.gpkg")
    labels = load_vector_support(path, chip)
    assert labels.classes.ids == list(codes)
    assert labels.classes.names == [f"class_{c}" for c in codes]
    got = mosaic(labels, chip.height, chip.width)
    expected = reference_labels(frame, {"building": codes[0], "other": codes[1]}, chip.transform, chip.shape)
    np.testing.assert_array_equal(got, expected)


def test_read_class_file_dubai(dubai):
    info = read_class_file(str(dubai / "classes.json"))
    assert info.ids == [1, 2, 3, 4, 5]
    assert info.names == ["building", "land", "road", "vegetation", "water"]
    assert info.colors == [(0x3C, 0x10, 0x98), (0x84, 0x29, 0xF6), (0x6E, 0xC1, 0xE4), (0xFE, 0xDD, 0x3A),
                           (0xE2, 0xA9, 0x29)]


def test_read_class_file_errors(dubai, tmp_path):
    broken = tmp_path / "classes.json"
    text = (dubai / "classes.json").read_text()
    broken.write_text(text[: len(text) // 2])
    with pytest.raises(GeoprotoError, match="not valid JSON"):
        read_class_file(str(broken))
    with pytest.raises(GeoprotoError, match="no such file"):
        read_class_file(str(tmp_path / "missing.json"))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"name": "no id"}]))
    with pytest.raises(GeoprotoError, match="expected"):
        read_class_file(str(wrong))
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps({"0": "background"}))
    with pytest.raises(GeoprotoError, match="outside 1..254"):
        read_class_file(str(zero))


# --- dispatch and rasters without a CRS -----------------------------------------------------------------

def test_load_support_tells_vectors_from_rasters(buildings, chip, tmp_path, dubai):
    path, frame = buildings
    gpkg = _write(frame[["class", "geometry"]], tmp_path / "b.gpkg")
    vector = load_support(gpkg, chip)
    assert type(vector).__name__ == "VectorLabels" and vector.classes.names == ["building", "other"]
    labels = rasterize(((g, 1) for g in frame.geometry), out_shape=chip.shape, transform=chip.transform,
                       dtype="uint8")
    tif = tmp_path / "labels.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=chip.width, height=chip.height, count=1, dtype="uint8",
                       crs=chip.crs, transform=chip.transform) as dst:
        dst.write(labels, 1)
    assert type(load_support(str(tif), chip)).__name__ == "RasterLabels"
    # A --classes file is applied to vector support: names map to its ids.
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"7": "other", "3": "building"}))
    with_file = load_support(gpkg, chip, classes_file=str(classes))
    assert with_file.classes.ids == [3, 7] and with_file.classes.names == ["building", "other"]
    assert set(np.unique(with_file.class_ids).tolist()) == {3, 7}
    classes.write_text(json.dumps({"1": "building"}))
    with pytest.raises(GeoprotoError, match="classes: .*'other' is not one of the classes given"):
        load_support(gpkg, chip, classes_file=str(classes))


def test_raster_without_crs(buildings, chip, tmp_path, mosaic):
    """A raster lacking a CRS: a vector with one needs assume_crs, then lands as usual."""
    path, frame = buildings
    bare = tmp_path / "bare.tif"
    profile = {**chip.profile, "crs": None}
    with rasterio.open(bare, "w", **profile) as dst:
        dst.write(chip.read())
    expected = mosaic(load_vector_support(str(path), chip), chip.height, chip.width)
    wgs84 = _write(frame[["class", "geometry"]].to_crs("EPSG:4326"), tmp_path / "b4326.gpkg")
    with open_raster(str(bare)) as src:
        assert src.crs is None
        with pytest.raises(GeoprotoError, match="assume_crs: .*the raster has no CRS; state the raster's CRS"):
            load_vector_support(wgs84, src)
        labels = load_vector_support(wgs84, src, assume_crs=chip.crs)
        np.testing.assert_array_equal(mosaic(labels, src.height, src.width), expected)


def test_overlaps_between_classes_are_unlabelled_and_large_polygons_span_windows(chip, tmp_path, mosaic):
    frame = geopandas.GeoDataFrame(
        {"class": ["field", "field", "road"]},
        geometry=[pixel_box(chip.transform, *edges) for edges in ((50, 60, 450, 500), (400, 400, 600, 650),
                                                                  (300, 0, 340, 900))],
        crs=chip.crs)
    path = _write(frame, tmp_path / "boxes.gpkg")
    got = mosaic(load_vector_support(path, chip), chip.height, chip.width)  # field = 1, road = 2
    expected = np.zeros(chip.shape, np.uint8)
    expected[60:500, 50:450] = 1
    expected[400:650, 400:600] = 1  # overlapping polygons of one class stay labelled
    expected[:, 300:340] = 2
    expected[60:500, 300:340] = 0  # claimed by both classes: ambiguous, unlabelled
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("content, message", [
    ("[" * 100000 + "]" * 100000, "JSON nested too deeply to be a class file"),
    (" " * ((1 << 20) + 1) + "{}", "1048579 bytes; a class file is a small JSON list"),
    ('{"1": "a", "2": "  "}', "a class has an empty name"),
    ('[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]', "class id 1 is listed twice"),
    ('{"1": "a", "300": "b"}', "class id 300 outside 1..254"),
    ('{"1": "a", "2": "NoData"}', "class name 'NoData' is reserved for the pixels without a class"),
])
def test_bad_class_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "classes.json"
    path.write_text(content)
    with pytest.raises(GeoprotoError, match=f"classes.json: {re.escape(message)}"):
        read_class_file(str(path))


def test_class_file_that_is_a_folder(tmp_path):
    with pytest.raises(GeoprotoError, match="is a directory, not a JSON file"):
        read_class_file(str(tmp_path))


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_class_values_in_vector_support_are_refused(tmp_path, chip, blank):
    frame = geopandas.GeoDataFrame({"class": ["a", blank]}, crs=chip.crs, geometry=[
        box(*chip.xy(10, 10), *chip.xy(20, 20)), box(*chip.xy(30, 30), *chip.xy(40, 40))])
    frame.to_file(tmp_path / "s.gpkg")
    with pytest.raises(GeoprotoError, match="s.gpkg: 1 polygon\\(s\\) have an empty class name in 'class'"):
        load_support(str(tmp_path / "s.gpkg"), chip)


def test_spaces_around_a_class_name_do_not_make_a_second_class(tmp_path, chip):
    """"building " typed in an attribute table is "building": one class, with a warning naming it."""
    frame = geopandas.GeoDataFrame({"class": ["building", "building ", " road"]}, crs=chip.crs, geometry=[
        box(*chip.xy(10, 10), *chip.xy(20, 20)), box(*chip.xy(30, 30), *chip.xy(40, 40)),
        box(*chip.xy(50, 50), *chip.xy(60, 60))])
    frame.to_file(tmp_path / "s.gpkg")
    with pytest.warns(UserWarning, match="s.gpkg: class name\\(s\\) in 'class' read without their leading or "
                                         "trailing spaces: ' road' as 'road', 'building ' as 'building'$"):
        labels = load_support(str(tmp_path / "s.gpkg"), chip)
    assert labels.classes.names == ["building", "road"]
    assert labels.class_ids.tolist() == [1, 1, 2]


def test_a_class_named_nodata_is_refused_as_the_legend_names_nodata_so(tmp_path, chip):
    """Its legend entry would read like the nodata entry's, and score would skip it in a GDAL legend."""
    frame = geopandas.GeoDataFrame({"class": ["building", " nodata"]}, crs=chip.crs, geometry=[
        box(*chip.xy(10, 10), *chip.xy(20, 20)), box(*chip.xy(30, 30), *chip.xy(40, 40))])
    frame.to_file(tmp_path / "s.gpkg")
    with pytest.raises(GeoprotoError, match="s.gpkg: 'class': class name 'nodata' is reserved for the pixels "
                                            "without a class in the results' legend; rename the class"):
        load_support(str(tmp_path / "s.gpkg"), chip)


def test_support_under_vsizip_loads_and_a_missing_member_is_named(tmp_path, chip):
    import zipfile

    frame = geopandas.GeoDataFrame({"class": ["a", "b"]}, crs=chip.crs, geometry=[
        box(*chip.xy(10, 10), *chip.xy(20, 20)), box(*chip.xy(30, 30), *chip.xy(40, 40))])
    frame.to_file(tmp_path / "s.gpkg")
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as archive:
        archive.write(tmp_path / "s.gpkg", "s.gpkg")
    labels = load_support(f"/vsizip/{tmp_path}/s.zip/s.gpkg", chip)
    assert labels.classes.names == ["a", "b"]
    with pytest.raises(GeoprotoError, match="nope.gpkg: not a readable vector file"):
        load_support(f"/vsizip/{tmp_path}/s.zip/nope.gpkg", chip)


# Property tests of support rasterisation: labels land inside their polygons, and inside only.

PROPERTY_SIZE = 64


@st.composite
def polygons(draw):
    """1-4 random triangles or boxes (pixel space) with classes 1..3, inside a 150 x 170 raster."""
    shapes = []
    for _ in range(draw(st.integers(1, 4))):
        # Subnormal coordinates (1e-239) only probe GDAL's scanline arithmetic, not ours.
        points = [(draw(st.floats(-10, 180, allow_subnormal=False)), draw(st.floats(-10, 160, allow_subnormal=False)))
                  for _ in range(3)]
        polygon = Polygon(points)
        if polygon.area < 1:
            polygon = shapely.box(points[0][0], points[0][1], points[0][0] + 3, points[0][1] + 2)
        shapes.append((polygon, draw(st.integers(1, 3))))
    return shapes


@settings(max_examples=60, deadline=None, derandomize=True)
@given(polygons())
def test_labels_land_inside_their_polygons(shapes):
    height, width = 150, 170
    geometries = np.array([s for s, _ in shapes])
    labels = VectorLabels(geometries, np.array([c for _, c in shapes]), ClassInfo([1, 2, 3], ["a", "b", "c"]))
    mosaic = np.zeros((height, width), np.uint8)
    for tile in tile_grid(height, width, PROPERTY_SIZE, 8):
        window = labels.read(tile, PROPERTY_SIZE)
        rows, cols = tile.core_slices
        mosaic[tile.core_row0:tile.core_row1, tile.core_col0:tile.core_col1] = window[rows, cols]
    rows, cols = np.mgrid[0:height, 0:width]
    centres = shapely.points(cols.ravel() + 0.5, rows.ravel() + 0.5).reshape(height, width)
    for class_id in (1, 2, 3):
        mine = geometries[[c == class_id for _, c in shapes]]
        others = geometries[[c != class_id for _, c in shapes]]
        labelled = mosaic == class_id
        if not len(mine):
            assert not labelled.any()
            continue
        union = shapely.union_all(mine)
        # every labelled pixel touches a polygon of its class (tiny polygons burn touched pixels) ...
        cells = shapely.box(cols[labelled], rows[labelled], cols[labelled] + 1, rows[labelled] + 1)
        assert shapely.intersects(cells, union).all()
        # ... and every pixel centre strictly inside one of them, and in no other class's, is labelled
        inside = shapely.contains_properly(union, centres)
        if len(others):
            inside &= ~shapely.intersects(shapely.union_all(others), centres)
        assert labelled[inside].all()


def test_a_buffer_wider_than_the_raster_is_refused(paths, chip, tmp_path):
    """A distance of 1e300 used to reach GEOS and fail there with a TopologyException."""
    import geopandas

    points = geopandas.read_file(paths.support).to_crs(chip.crs)
    points["geometry"] = points.geometry.centroid
    points.to_file(tmp_path / "points.gpkg")
    with pytest.raises(GeoprotoError, match=r"buffer: 1e\+300 is 2e\+300 pixels, wider than the raster \(900 x 900"):
        load_support(str(tmp_path / "points.gpkg"), chip, buffer=1e300)
    assert len(load_support(str(tmp_path / "points.gpkg"), chip, buffer=2.0).geometries) == len(points)



def test_each_polygon_keeps_its_file_row_on_every_raster(tmp_path):
    """A support shared by two rasters: a polygon read for each (a piece each) keeps its row in the file,
    skipped rows included, so cross-validation can tell the pieces of one polygon from two polygons."""
    import synthetic
    from rasterio.transform import from_origin

    first = synthetic.write_raster(tmp_path / "one.tif", synthetic.two_halves())
    x0, y0 = synthetic.ORIGIN
    width = synthetic.SIDE * synthetic.PIXEL  # 48 m
    second = synthetic.write_raster(tmp_path / "two.tif", synthetic.two_halves(),
                                    transform=from_origin(x0 + width, y0, synthetic.PIXEL, synthetic.PIXEL))
    frame = geopandas.GeoDataFrame(
        {"class": [None, "a", "b", "a"]},
        geometry=[box(x0 + 1, y0 - 5, x0 + 5, y0 - 1),  # row 0: no class, skipped
                  box(x0 + 1, y0 - 5, x0 + 5, y0 - 1),  # row 1: on the first raster
                  box(x0 + width - 4, y0 - 5, x0 + width + 4, y0 - 1),  # row 2: across both
                  box(x0 + width + 1, y0 - 5, x0 + width + 5, y0 - 1)],  # row 3: on the second
        crs=synthetic.CRS)
    frame.to_file(tmp_path / "s.gpkg")
    rows = []
    for path in (first, second):
        with open_raster(str(path)) as reference, pytest.warns(UserWarning, match="skipped 1 polygon"):
            rows.append(load_vector_support(str(tmp_path / "s.gpkg"), reference, shared=True).features.tolist())
    assert rows == [[1, 2], [2, 3]]


def test_a_support_read_once_lands_on_rasters_in_two_crss(tmp_path, mosaic, support_reads):
    """One support file shared by rasters in two CRSs is read once (reprojected per CRS): each raster gets,
    pixel for pixel, the labels that reading the file for it alone gives."""
    import synthetic
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from rasterio.transform import from_origin

    whole = synthetic.write_raster(tmp_path / "whole.tif", synthetic.two_halves(side=192))
    x0, y0 = synthetic.ORIGIN
    geopandas.GeoDataFrame(
        {"class": ["bright", "dark", "dark"]},
        geometry=[box(x0 + 10, y0 - 60, x0 + 30, y0 - 35), box(x0 + 60, y0 - 30, x0 + 80, y0 - 10),
                  Polygon([(x0 + 60, y0 - 60), (x0 + 80, y0 - 80), (x0 + 80, y0 - 60), (x0 + 60, y0 - 80)])],
        crs=synthetic.CRS).to_file(tmp_path / "s.gpkg")
    with rasterio.open(whole) as src:  # the same ground in EPSG:3857
        transform, width, height = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height,
                                                               *src.bounds)
        warped = np.zeros((3, height, width), np.uint8)
        reproject(src.read(), warped, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                  dst_crs="EPSG:3857", resampling=Resampling.nearest)
    mercator = synthetic.write_raster(tmp_path / "mercator.tif", warped, crs="EPSG:3857", transform=transform)
    data = synthetic.two_halves(side=192)
    rasters = [synthetic.write_raster(tmp_path / f"t{row}-{col}.tif", data[:, row:row + 96, col:col + 96],
                                      transform=from_origin(x0 + col * 0.5, y0 - row * 0.5, 0.5, 0.5))
               for row in (0, 96) for col in (0, 96)]
    rasters.insert(2, mercator)  # four UTM tiles, the Mercator raster among them
    reads = support_reads
    read_files = {}
    with pytest.warns(UserWarning, match="repaired 1 invalid polygon") as caught:
        placed = []
        for path in rasters:
            with open_raster(str(path)) as reference:
                labels = load_support(str(tmp_path / "s.gpkg"), reference, shared=True, read_files=read_files)
                placed.append(None if labels is None else mosaic(labels, reference.height, reference.width))
    assert reads == [str(tmp_path / "s.gpkg")]
    assert sum("repaired" in str(w.message) for w in caught) == 1
    for path, got in zip(rasters, placed):
        with open_raster(str(path)) as reference, pytest.warns(UserWarning, match="repaired 1 invalid polygon"):
            alone = mosaic(load_vector_support(str(tmp_path / "s.gpkg"), reference, shared=True),
                           reference.height, reference.width)
        np.testing.assert_array_equal(got, alone)
    assert set(np.unique(placed[2])) == {0, 1, 2}  # the Mercator raster holds every polygon
    assert [set(np.unique(labels)) for i, labels in enumerate(placed) if i != 2] == [{0, 1}, {0, 2}, {0, 1}, {0, 2}]


@pytest.mark.parametrize("crs", ["EPSG:32616", None])
def test_a_label_raster_beside_the_image_is_said_not_to_overlap_it(tmp_path, crs):
    """Not "holds no labelled pixel": it holds labels, elsewhere (a wrong file, a wrong CRS)."""
    from rasterio.transform import from_origin

    from synthetic import ORIGIN, SIDE, write_raster

    image = write_raster(tmp_path / "image.tif", np.ones((3, SIDE, SIDE), np.uint8), crs=crs)
    labels = np.zeros((SIDE, SIDE), np.uint8)
    labels[10:40, 10:40], labels[50:90, 50:90] = 1, 2
    beside = write_raster(tmp_path / "labels.tif", labels, crs=crs,
                          transform=from_origin(ORIGIN[0] + 1000, ORIGIN[1], 0.5, 0.5))
    with open_raster(str(image)) as reference:
        with pytest.raises(GeoprotoError, match=rf"^{beside}: does not overlap the raster {image}$"):
            load_support(str(beside), reference)


def test_polygons_beyond_the_rasters_projection_zone_are_left_out_quietly(tmp_path):
    """A world-wide label file in lon/lat on a UTM tile: polygons on other continents have no coordinates in
    the tile's CRS (infinite); they are left out like any polygon off the raster, without a stray warning
    from GEOS, and the near ones land where the same polygons in the tile's CRS do."""
    import warnings

    from synthetic import scene

    image, support = scene(tmp_path)
    near = geopandas.read_file(support)
    far = geopandas.GeoDataFrame({"class": ["bright", "dark"]}, geometry=[box(0, 0, 1, 1), box(100, -40, 100.1, -39.9)],
                                 crs="EPSG:4326")
    world = tmp_path / "world.gpkg"
    geopandas.GeoDataFrame(pandas.concat([near.to_crs("EPSG:4326"), far]), crs="EPSG:4326").to_file(world)
    with open_raster(str(image)) as reference, warnings.catch_warnings():
        warnings.simplefilter("error")
        placed = load_vector_support(str(world), reference)
        alone = load_vector_support(str(support), reference)
    assert len(placed.geometries) == 2 and placed.classes.names == ["bright", "dark"]
    tile = tile_grid(96, 96, 96, 0)[0]
    assert (placed.read(tile, 96) != alone.read(tile, 96)).sum() <= 2  # lon/lat round trip: a pixel at most
    assert (alone.read(tile, 96) > 0).sum() > 0


@pytest.mark.parametrize("bands, param", [(2, "support"), (3, "classes_file")])
def test_a_label_raster_of_several_bands_names_what_to_fix(tmp_path, bands, param):
    """Two bands: the support file is at fault; three: a colour mask, read with a classes file's colours.
    Either way the parameter named is one a caller has (not "classes")."""
    from synthetic import write_raster

    image = write_raster(tmp_path / "image.tif", np.zeros((3, 16, 16), np.uint8) + 100)
    labels = write_raster(tmp_path / "labels.tif", np.ones((bands, 16, 16), np.uint8))
    with open_raster(str(image)) as reference:
        with pytest.raises(GeoprotoError, match=rf"^{param}: {labels}: a label raster has one band of class ids \(or "
                                                rf"RGB colours, with classes that each have a colour\); it has {bands}$"):
            load_support(str(labels), reference)


@pytest.mark.parametrize("crs", ["EPSG:32616", "EPSG:4326"])
def test_a_bow_tie_is_repaired_once_into_its_two_triangles(tmp_path, mosaic, spy, crs):
    """Read, placed and rasterised, an invalid (self-crossing) polygon is repaired once, when read (a
    reprojection into the raster's CRS leaves it valid: nothing to repair again), and labels the pixels of
    the two triangles it makes, in the raster's CRS or in another."""
    from synthetic import TRANSFORM, write_raster

    image = write_raster(tmp_path / "image.tif", np.ones((3, 96, 96), np.uint8))
    # crossing at (45, 40); no pixel centre on an edge, where a reprojection's rounding would decide
    corners = [TRANSFORM @ point for point in ((20, 20), (70, 60), (70, 20), (20, 60))]
    square = pixel_box(TRANSFORM, 80, 0, 90, 10)
    frame = geopandas.GeoDataFrame({"class": ["a", "b"]}, geometry=[Polygon(corners), square], crs="EPSG:32616")
    frame.to_crs(crs).to_file(tmp_path / "s.gpkg")
    repairs = spy(shapely, "make_valid", lambda geometries, *args, **kwargs: int(np.size(geometries)))
    with open_raster(str(image)) as reference, pytest.warns(UserWarning, match="repaired 1 invalid polygon"):
        labels = mosaic(load_vector_support(str(tmp_path / "s.gpkg"), reference), 96, 96)
    assert sum(repairs) == 1
    triangles = rasterize([(shapely.make_valid(Polygon(corners)), 1), (square, 2)], (96, 96), transform=TRANSFORM)
    np.testing.assert_array_equal(labels, triangles)
    assert (labels == 1).sum() == 1000  # the two triangles' area: 2 x 40 x 25 / 2 px


def test_class_names_differing_only_by_case_are_warned_about(buildings, chip, tmp_path):
    """"Tree" and "tree" typed in one attribute table stay two classes: warned about once, naming both."""
    _, frame = buildings
    frame["class"] = ["tree" if i % 3 == 0 else "Tree" if i % 3 == 1 else "building" for i in range(len(frame))]
    path = _write(frame, tmp_path / "twins.gpkg")
    with pytest.warns(UserWarning) as caught:
        labels = load_vector_support(path, chip)
    twins = [str(w.message) for w in caught if "differ only by case" in str(w.message)]
    assert twins == [f"{path}: 'class': class names 'Tree' and 'tree' differ only by case and stay separate classes; "
                     f"if each pair is one class, give it one spelling"]
    assert labels.classes.names == ["Tree", "building", "tree"]


def test_a_class_differing_from_the_classes_given_only_by_case_is_refused_with_the_spelling(buildings, chip,
                                                                                             tmp_path):
    _, frame = buildings
    frame["class"] = ["Building" if i % 2 == 0 else "other" for i in range(len(frame))]
    path = _write(frame, tmp_path / "capital.gpkg")
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"1": "building", "2": "other"}))
    with pytest.raises(GeoprotoError, match=re.escape("class 'Building' is not one of the classes given (did you "
                                                      "mean 'building'? names are case-sensitive)")):
        load_support(path, chip, classes_file=str(classes))
    classes.write_text(json.dumps({"1": "roof", "2": "other"}))  # no spelling to suggest: no hint
    with pytest.raises(GeoprotoError, match=r"class 'Building' is not one of the classes given$"):
        load_support(path, chip, classes_file=str(classes))


@pytest.mark.parametrize("class_field", [None, "class"])
def test_a_support_vector_without_attribute_fields_says_to_add_one(buildings, chip, tmp_path, class_field):
    _, frame = buildings
    path = _write(frame[["geometry"]], tmp_path / "bare.gpkg")
    with pytest.raises(GeoprotoError) as info:
        load_vector_support(path, chip, class_field=class_field)
    assert str(info.value) == (f"support: {path}: has no attribute field to hold a class; add a class field to its "
                               f"polygons in your GIS (one class name per polygon, e.g. 'building'), then run again")


def _label_file(path, values: np.ndarray, chip, nodata=None) -> str:
    """``values`` (bands x H x W, uint8) on the chip's grid."""
    with rasterio.open(path, "w", driver="GTiff", width=chip.width, height=chip.height, count=len(values),
                       dtype="uint8", crs=chip.crs, transform=chip.transform, nodata=nodata) as dst:
        dst.write(values)
    return str(path)


def test_a_label_raster_with_255_and_no_nodata_is_told_how_to_declare_it(chip, tmp_path):
    from geoproto.support import RasterLabels

    values = np.zeros((1, chip.height, chip.width), np.uint8)
    values[0, :300], values[0, 300:600], values[0, 600:] = 1, 2, 255
    path = _label_file(tmp_path / "labels.tif", values, chip)
    (tile,) = tile_grid(chip.height, chip.width, 1024, 0)
    with pytest.raises(GeoprotoError, match=re.escape(f"{path}: label values must be 0..254, found 1..255; 255 is "
                                                      f"usually nodata: declare it with gdal_edit.py -a_nodata 255 "
                                                      f"{path}")):
        RasterLabels(path, chip, None).read(tile, 1024)
    declared = _label_file(tmp_path / "declared.tif", values, chip, nodata=255)
    read = RasterLabels(declared, chip, None).read(tile, 1024)
    assert np.array_equal(np.bincount(read.ravel(), minlength=3)[:3], [1024 * 1024 - 600 * 900, 300 * 900, 300 * 900])


def test_a_colour_mask_warns_once_about_colours_no_class_has(chip, tmp_path):
    """Pixels of a colour the classes file does not list were left unlabelled without a word (a colour typed
    wrong there drops a whole class); the file's ignore_color is not warned about."""
    import warnings

    from geoproto.support import RasterLabels

    values = np.zeros((3, chip.height, chip.width), np.uint8)
    values[0, :400] = 255  # red: class 'a'
    values[1, 400:800] = 255  # green: class 'b'; the 100 rows below stay black (89,500 px)...
    values[:, 850:, :10] = [[[255]], [[0]], [[255]]]  # ... but for 500 px of magenta
    path = _label_file(tmp_path / "mask.tif", values, chip)
    classes = ClassInfo([1, 2], ["a", "b"], [(255, 0, 0), (0, 255, 0)])
    (tile,) = tile_grid(chip.height, chip.width, 1024, 0)
    labels = RasterLabels(path, chip, classes)
    with pytest.warns(UserWarning) as caught:
        assert np.array_equal(np.bincount(labels.read(tile, 1024)[:900, :900].ravel()), [90_000, 360_000, 360_000])
        labels.read(tile, 1024)  # once per file
    assert [str(w.message) for w in caught] == [
        f"{path}: pixels of a colour no class of the classes file has, 90,000 in the window read at row 0, column 0 "
        f"(#000000 (89,500 px), #FF00FF (500 px)): left unlabelled; give their class that colour, or declare it "
        f"the file's \"ignore_color\""]
    classes.ignore_color = (0, 0, 0)
    with pytest.warns(UserWarning, match=r", 500 in the window read .* \(#FF00FF \(500 px\)\)"):
        RasterLabels(path, chip, classes).read(tile, 1024)
    values[:, 850:, :10] = 0
    quiet = _label_file(tmp_path / "quiet.tif", values, chip)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RasterLabels(quiet, chip, classes).read(tile, 1024)


def test_a_paletted_mask_warns_about_palette_colours_no_class_has(chip, tmp_path):
    from geoproto.support import RasterLabels

    values = np.ones((1, chip.height, chip.width), np.uint8)
    values[0, 450:] = 2
    values[0, 890:] = 3  # blue: no class, 9,000 px
    values[0, :10] = 0  # unlabelled, whatever the palette's colour 0 (black here, no class's)
    path = _label_file(tmp_path / "palette.tif", values, chip)
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (0, 0, 255, 255)})
    classes = ClassInfo([1, 2], ["a", "b"], [(255, 0, 0), (0, 255, 0)])
    (tile,) = tile_grid(chip.height, chip.width, 1024, 0)
    with pytest.warns(UserWarning, match=r"palette\.tif: pixels of a colour no class of the classes file has, "
                                         r"9,000 in the window read at row 0, column 0 \(#0000FF \(9,000 px\)\): "
                                         r"left unlabelled"):
        RasterLabels(path, chip, classes).read(tile, 1024)
