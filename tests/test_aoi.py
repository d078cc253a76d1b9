"""``--aoi`` / ``--bbox``: only the windows under the area are read and encoded; outside is nodata."""

import geopandas
import numpy as np
import pytest
import rasterio

from geoproto.aoi import load_area, parse_bbox
from geoproto.errors import GeoprotoError
from geoproto.raster import RasterSource
from geoproto.segment import SegmentOptions, segment

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
    # Only the two windows the area reaches (columns 112-240 and 224-352 of the first row) are read:
    # one for the support, both for segmenting.
    assert sorted(set(reads)) == [(0, 112), (0, 224)] and summary["tiles"] == 2
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
