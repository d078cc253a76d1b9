"""``--aoi`` / ``--bbox``: only the windows under the area are read and encoded; outside is nodata."""

import geopandas
import numpy as np
import pytest
import rasterio
import shapely

from geoproto.aoi import load_area, parse_bbox
from geoproto.errors import GeoprotoError
from geoproto.raster import RasterSource
from geoproto.segment import SegmentOptions, segment
from geoproto.tiling import Tile

from synthetic import TRANSFORM, pixel_box, scene, two_halves, write_raster


def test_windows_outside_the_aoi_are_never_read(tmp_path, spy):
    image = write_raster(tmp_path / "image.tif", two_halves(side=384))  # 128 px windows, overlap 16: 4 x 4
    support = tmp_path / "support.gpkg"
    geopandas.GeoDataFrame({"class": ["red", "green"]},
                           geometry=[pixel_box(TRANSFORM, 150, 20, 185, 80), pixel_box(TRANSFORM, 200, 20, 220, 80)],
                           crs="EPSG:32616").to_file(support)
    aoi = tmp_path / "aoi.geojson"  # in another CRS than the raster's
    geopandas.GeoDataFrame(geometry=[pixel_box(TRANSFORM, 150, 10, 230, 90)], crs="EPSG:32616").to_crs(
        "EPSG:4326").to_file(aoi)
    reads = spy(RasterSource, "read", lambda self, tile, *args, **kwargs: (tile.row, tile.col))
    summary = segment(str(image), str(support), str(tmp_path / "c.tif"),
                      SegmentOptions(scoring="prototypes", tile_size=128, overlap=16, crf=False, progress=False, aoi=str(aoi)))
    # Only the window whose core (columns 120-232 of columns 112-240) holds the area is read, for the support
    # and for segmenting; the next one (224-352) reaches it only in the overlap this one writes.
    assert sorted(set(reads)) == [(0, 112)] and summary["tiles"] == 1
    with rasterio.open(tmp_path / "c.tif") as src:
        labels = src.read(1)
    inside = np.zeros_like(labels, bool)
    inside[10:90, 150:230] = True
    assert (labels[~inside] == 0).all()
    assert (labels[11:89, 151:229] > 0).all()  # pixel centres inside (edges may move by reprojection)
    assert summary["nodata_pixels"] == (labels == 0).sum()


def test_bbox_in_another_crs(tmp_path):
    image, _ = scene(tmp_path)
    corner = pixel_box(TRANSFORM, 0, 0, 64, 32)
    lonlat = geopandas.GeoSeries([corner], crs="EPSG:32616").to_crs("EPSG:4326").total_bounds
    with rasterio.open(image) as src:
        area = load_area(src, src.crs, bbox=",".join(map(str, lonlat)), bbox_crs="EPSG:4326")
        same = load_area(src, src.crs, bbox=",".join(map(str, corner.bounds)))
    assert same.geometry.bounds == pytest.approx((0, 0, 64, 32))
    # The lon/lat box's bounds enclose the projected box, up to a pixel.
    assert area.geometry.bounds == pytest.approx((0, 0, 64, 32), abs=1.0)


def test_area_errors(tmp_path):
    image, _ = scene(tmp_path)
    with rasterio.open(image) as src:
        with pytest.raises(GeoprotoError, match="bbox: '1,2,3': give XMIN,YMIN,XMAX,YMAX"):
            load_area(src, src.crs, bbox="1,2,3")
        with pytest.raises(GeoprotoError, match="bbox: does not overlap the raster"):
            load_area(src, src.crs, bbox="0,0,10,10")
        with pytest.raises(GeoprotoError, match="bbox: give an area of interest or a bounding box, not both"):
            load_area(src, src.crs, aoi=str(image), bbox="0,0,10,10")
        with pytest.raises(GeoprotoError, match="nowhere.gpkg: no such file"):
            load_area(src, src.crs, aoi=str(tmp_path / "nowhere.gpkg"))
        with pytest.raises(GeoprotoError, match=r"^aoi: empty path; give a file name$"):
            load_area(src, src.crs, aoi="")
    assert parse_bbox("1 2 3 4") == (1, 2, 3, 4)
    for text in ("0,0,nan,1", "0,-inf,1,1"):
        with pytest.raises(GeoprotoError, match="bbox: must be a finite number, got (nan|-inf)"):
            parse_bbox(text)


def test_a_bbox_crs_for_a_raster_without_crs_names_bbox_crs_and_the_raster(tmp_path):
    """Not "bbox: has a CRS while the raster has none": the box has none, the option that gave it one is
    bbox_crs, and the raster is named."""
    image = write_raster(tmp_path / "image.tif", two_halves(), transform=None)
    with rasterio.open(image) as reference:
        with pytest.raises(GeoprotoError, match=rf"^bbox_crs: 'EPSG:4326' given, but the raster {image} has no "
                                                rf"CRS; give the box in its own coordinates, without bbox_crs$"):
            load_area(reference, None, bbox="0,0,50,50", bbox_crs="EPSG:4326")
        aoi = tmp_path / "aoi.gpkg"
        geopandas.GeoDataFrame(geometry=[pixel_box(TRANSFORM, 0, 0, 10, 10)], crs="EPSG:32616").to_file(aoi)
        with pytest.raises(GeoprotoError, match=rf"^aoi: {aoi}: has a CRS while the raster {image} has none$"):
            load_area(reference, None, aoi=str(aoi))


def test_a_box_in_lon_lat_far_beyond_the_rasters_projection_zone(tmp_path):
    """A UTM raster: a box on another continent has no coordinates in its CRS (infinite, which GEOS cannot
    handle), and a continent-wide box has them only in part; the first misses the raster, the second covers
    all of it."""
    image, _ = scene(tmp_path)
    with rasterio.open(image) as src:
        with pytest.raises(GeoprotoError, match=f"^bbox: does not overlap the raster {image}$"):
            load_area(src, src.crs, bbox="0,0,1,1", bbox_crs="EPSG:4326")
        far = load_area(src, src.crs, bbox="0,0,1,1", bbox_crs="EPSG:4326", shared=True)  # one of several inputs
        wide = load_area(src, src.crs, bbox="-180,-85,180,85", bbox_crs="EPSG:4326")
        raster = shapely.box(0, 0, src.width, src.height)
    assert not far.reaches(Tile(0, 0, 96, 96, 0, 96, 0, 96))
    assert wide.geometry.contains(raster)


def test_an_area_covering_no_pixel_centre_is_refused(tmp_path):
    """An area that only touches the raster's edge, or lies within one pixel, would leave every pixel nodata
    (and a window encoded for nothing): refused as not overlapping, saying why."""
    image, _ = scene(tmp_path)
    edge, inside_one_pixel = tmp_path / "edge.gpkg", tmp_path / "speck.gpkg"
    geopandas.GeoDataFrame(geometry=[pixel_box(TRANSFORM, 96, 0, 120, 96)], crs="EPSG:32616").to_file(edge)
    geopandas.GeoDataFrame(geometry=[pixel_box(TRANSFORM, 10.1, 10.1, 10.4, 10.4)], crs="EPSG:32616").to_file(
        inside_one_pixel)
    with rasterio.open(image) as src:
        for aoi in (edge, inside_one_pixel):
            with pytest.raises(GeoprotoError, match=rf"^aoi: {aoi}: does not overlap the raster {image} \(it covers "
                                                    rf"no pixel centre of it\)$"):
                load_area(src, src.crs, aoi=str(aoi))
            assert not load_area(src, src.crs, aoi=str(aoi), shared=True).reaches(Tile(0, 0, 96, 96, 0, 96, 0, 96))
        speck = pixel_box(TRANSFORM, 10.2, 10.2, 10.8, 10.8)
        one_pixel = load_area(src, src.crs, bbox=",".join(map(str, speck.bounds)))
    assert one_pixel.mask(Tile(0, 0, 96, 96, 0, 96, 0, 96), 96).sum() == 1  # a pixel centre inside: kept


def test_an_area_in_utm_on_a_world_raster_in_lon_lat(tmp_path):
    """The raster's surroundings have no coordinates in the area's UTM zone (the world, in lon/lat): the area is
    reprojected whole, as before, not taken for missing the raster."""
    from rasterio.transform import from_origin

    image = write_raster(tmp_path / "world.tif", np.zeros((3, 180, 360), np.uint8) + 100, crs="EPSG:4326",
                         transform=from_origin(-180, 90, 1, 1))
    aoi = tmp_path / "utm.gpkg"
    geopandas.GeoDataFrame(geometry=[shapely.box(500000, 3000000, 800000, 4000000)], crs="EPSG:32616").to_file(aoi)
    with rasterio.open(image) as src:
        area = load_area(src, src.crs, aoi=str(aoi))
    col0, row0, col1, row1 = area.geometry.bounds  # lon -87..-84, lat 27..36 in 1-degree pixels
    assert (round(col0), round(col1)) == (93, 96) and 53 <= row0 < row1 <= 63


def test_an_area_that_crosses_itself_once_reprojected_is_repaired(tmp_path):
    """A valid lon/lat polygon whose straight edge runs 10 um from a row of its own vertices: in the raster's
    UTM CRS the edge stays straight while the vertices follow the curved parallel, so the ring crosses
    itself; repaired after the reprojection (GEOS refused it: "TopologyException: side location conflict")."""
    from pyproj import Transformer

    image, _ = scene(tmp_path)
    to_lonlat = Transformer.from_crs("EPSG:32616", "EPSG:4326", always_xy=True)
    (west, bottom), (east, _), (middle, top) = (to_lonlat.transform(x, y) for x, y in
                                                ((499990, 3699976), (500058, 3699976), (500030, 3699990)))
    strip = [(lon, bottom + 1e-10) for lon in np.linspace(east, middle, 50)]  # back along the edge, just above
    polygon = shapely.Polygon([(west, bottom), (east, bottom), *strip, (middle, top), (west, top)])
    assert polygon.is_valid
    assert not geopandas.GeoSeries([polygon], crs="EPSG:4326").to_crs("EPSG:32616").is_valid.any()
    aoi = tmp_path / "aoi.gpkg"
    geopandas.GeoDataFrame(geometry=[polygon], crs="EPSG:4326").to_file(aoi)
    with rasterio.open(image) as src:
        area = load_area(src, src.crs, aoi=str(aoi))
    # The block west of x 500030 m, rows 20 to 48 (y 3699990 to 3699976 m): 80 x 28 px; the strip has no area.
    assert area.geometry.is_valid
    assert area.geometry.area == pytest.approx(80 * 28, abs=0.01)
    assert area.reaches(Tile(0, 0, 96, 96, 0, 96, 0, 96))


def test_windows_whose_core_misses_the_area_are_not_encoded(tmp_path, spy, monkeypatch):
    """A corner area on 3 x 3 windows (128 px, overlap 16, cores split at 120 and 232): the windows right of and
    below the corner one overlap the area, but only in the overlap that the corner window writes. They are
    neither read nor encoded, nor counted in the progress bar or the summary, and every output is the same,
    bit for bit, as when every window is labelled."""
    import geoproto.segment
    from geoproto.aoi import AreaOfInterest
    from geoproto.classifier import Classifier

    image = write_raster(tmp_path / "image.tif", two_halves(side=352))
    support = tmp_path / "support.gpkg"
    geopandas.GeoDataFrame({"class": ["red", "green"]},
                           geometry=[pixel_box(TRANSFORM, 20, 20, 150, 80), pixel_box(TRANSFORM, 200, 20, 330, 80)],
                           crs="EPSG:32616").to_file(support)
    aoi = tmp_path / "aoi.gpkg"
    geopandas.GeoDataFrame(geometry=[pixel_box(TRANSFORM, 0, 0, 116, 116)], crs="EPSG:32616").to_file(aoi)

    def run(name):
        encoded = spy(Classifier, "score", lambda self, images, *args, **kwargs: len(images))
        totals = spy(geoproto.segment, "segment_bar", lambda show, windows: windows)
        summary = segment(str(image), str(support), str(tmp_path / f"{name}.tif"), SegmentOptions(
            scoring="prototypes", tile_size=128, overlap=16, crf=False, progress=False, aoi=str(aoi),
            probabilities=str(tmp_path / f"{name}_p.tif"), vector=str(tmp_path / f"{name}.gpkg")))
        outputs = []
        for path in (f"{name}.tif", f"{name}_p.tif"):
            with rasterio.open(tmp_path / path) as src:
                outputs.append((src.read(), src.profile, src.tags()))
        outputs.append(geopandas.read_file(tmp_path / f"{name}.gpkg"))
        return sum(encoded), list(totals), summary, outputs

    encoded, totals, summary, skipping = run("skipping")
    monkeypatch.setattr(AreaOfInterest, "reaches", lambda self, tile: True)  # every window labelled
    every_encoded, every_total, every_summary, everything = run("every")
    assert (encoded, totals, summary["tiles"]) == (1, [1], 1)
    # Labelling every window encodes the three whose overlap holds part of the area too (the others hold no
    # valid pixel: read, but not encoded).
    assert (every_encoded, every_total, every_summary["tiles"]) == (4, [9], 9)
    for (data, profile, tags), (every_data, every_profile, every_tags) in zip(skipping[:2], everything[:2]):
        assert data.tobytes() == every_data.tobytes()
        assert repr(profile) == repr(every_profile) and tags == every_tags  # repr: the probabilities' nodata is NaN
    assert (skipping[0][0][0, :116, :116] > 0).all() and (skipping[0][0] > 0).sum() == 116 * 116
    polygons, every_polygon = skipping[2], everything[2]
    assert len(polygons) and polygons.geom_equals_exact(every_polygon, 0).all()
    assert polygons.drop(columns="geometry").equals(every_polygon.drop(columns="geometry"))
    assert summary["classes"] == every_summary["classes"] and summary["nodata_pixels"] == every_summary["nodata_pixels"]


def test_reaches_only_a_window_whose_core_holds_a_pixel_of_the_area(tmp_path):
    """The window's kept part decides: an area in its overlap only (written by its neighbour) is not reached,
    nor one that touches the core's edge without holding a pixel centre of it."""
    from geoproto.aoi import AreaOfInterest

    window = Tile(0, 112, 128, 128, 0, 120, 120, 232)  # columns 112-240, keeps 120-232
    assert not AreaOfInterest(shapely.box(0, 0, 119.5, 50)).reaches(window)  # in the overlap only
    assert not AreaOfInterest(shapely.box(0, 0, 120.4, 50)).reaches(window)  # short of column 120's centre
    assert AreaOfInterest(shapely.box(0, 0, 120.6, 50)).reaches(window)
    assert AreaOfInterest(shapely.box(130, 10, 140, 20)).reaches(window)  # well inside
    assert not AreaOfInterest(shapely.box(100, 128, 300, 140)).reaches(window)  # below the window


def test_only_windows_the_areas_edge_crosses_are_rasterised(spy):
    """A window inside the area is all inside, one it misses all outside, without rasterising the area (all of
    its vertices, for every window): masks and reaches as rasterising every window decides them."""
    import rasterio.features
    from affine import Affine

    from geoproto.aoi import AreaOfInterest
    from geoproto.tiling import tile_grid

    geometry = shapely.Point(200.3, 190.6).buffer(150, quad_segs=256)  # 1,025 vertices
    tiles = tile_grid(400, 380, 64, 8)
    rasterised_each = [rasterio.features.geometry_mask([geometry], (t.height, t.width),
                                                       Affine.translation(t.col, t.row), invert=True) for t in tiles]
    crossing = sum(0 < inside.sum() < inside.size for inside in rasterised_each)
    area = AreaOfInterest(geometry)
    rasterised = spy(rasterio.features, "geometry_mask")
    for tile, inside in zip(tiles, rasterised_each):
        mask = area.mask(tile, 64)
        assert np.array_equal(mask[: tile.height, : tile.width], inside) and not mask[tile.height:, tile.width:].any()
        assert area.reaches(tile) == inside[tile.core_slices].any()
    assert any(inside.all() for inside in rasterised_each) and not all(inside.any() for inside in rasterised_each)
    assert len(rasterised) <= 2 * crossing  # a mask and a reach for each window the edge crosses, no other
