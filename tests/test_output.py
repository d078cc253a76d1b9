"""The output writers, read back through GDAL/OGR: legend sidecar, overviews, sieve, polygons, formats."""

import csv

import geopandas
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from geoproto.errors import GeoprotoError
from geoproto.output import (RASTER_DRIVERS, VECTOR_DRIVERS, build_overviews, class_areas, class_histogram,
                             convert_to_cog, output_driver, sieve_classes, write_area_report, write_legend,
                             write_polygons)
from geoproto.support import ClassInfo

from conftest import gdal_band

CLASSES = ClassInfo([1, 2, 3], ["building", "ground", "tree"], [(255, 0, 0), None, None])


def _class_raster(path, labels: np.ndarray, pixel: float = 0.5) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1,
                       dtype="uint8", crs="EPSG:32616", transform=from_origin(500000, 4000000, pixel, pixel),
                       nodata=0, tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(labels, 1)


def _blocks(size: int = 600) -> np.ndarray:
    """Three classes in large blocks, a nodata corner, and isolated specks of 1 and 6 pixels."""
    labels = np.full((size, size), 2, np.uint8)
    labels[: size // 2, : size // 2] = 1
    labels[size // 2:, size // 2:] = 3
    labels[:20, -20:] = 0
    labels[400, 100] = 3  # a 1-pixel speck of tree in ground
    labels[100:102, 100:103] = 2  # a 6-pixel speck of ground in building
    return labels


def test_legend_is_read_by_gdal(tmp_path):
    path = tmp_path / "c.tif"
    labels = _blocks()
    _class_raster(path, labels)
    areas = class_areas(CLASSES, class_histogram(path), 0.25)
    write_legend(f"{path}.aux.xml", CLASSES, areas)
    band = gdal_band(path)
    assert [c.text or "" for c in band.find("CategoryNames")] == ["nodata", "building", "ground", "tree"]
    entries = band.find("ColorTable").findall("Entry")
    assert len(entries) == 4  # K + 1: QGIS lists nodata and the three classes, not 256 values
    assert [int(entries[1].get(k)) for k in ("c1", "c2", "c3", "c4")] == [255, 0, 0, 255]
    assert entries[0].get("c4") == "0"
    rat = band.find("GDALRasterAttributeTable")
    assert rat.get("tableType") == "thematic"
    fields = [f.find("Name").text for f in rat.findall("FieldDefn")]
    assert fields[:5] == ["value", "class_name", "pixels", "area_m2", "area_ha"]
    rows = [[f.text for f in row.findall("F")] for row in rat.findall("Row")]
    assert [r[:2] for r in rows] == [["1", "building"], ["2", "ground"], ["3", "tree"]]
    counts = np.bincount(labels.ravel(), minlength=4)
    assert [int(r[2]) for r in rows] == counts[1:].tolist()
    assert [float(r[3]) for r in rows] == pytest.approx((counts[1:] * 0.25).tolist())
    assert [float(r[4]) for r in rows] == pytest.approx((counts[1:] * 0.25 / 1e4).tolist(), abs=1e-4)
    with rasterio.open(path) as src:  # rasterio sees the palette through GDAL too
        assert src.colormap(1)[1] == (255, 0, 0, 255)


def test_area_report_csv(tmp_path):
    areas = class_areas(CLASSES, np.bincount(_blocks().ravel(), minlength=256), 0.25)
    write_area_report(tmp_path / "r.csv", areas)
    with open(tmp_path / "r.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class_name"] for r in rows] == ["building", "ground", "tree"]
    buildings = 300 * 300 - 6  # the building block less the ground speck
    assert (int(rows[0]["pixels"]), float(rows[0]["area_m2"])) == (buildings, pytest.approx(buildings * 0.25))
    assert float(rows[0]["area_ha"]) == pytest.approx(buildings * 0.25 / 1e4, abs=1e-4)


def test_overviews_use_mode(tmp_path):
    path = tmp_path / "c.tif"
    labels = np.where((np.arange(600)[None, :] % 3) == 0, 1, 2).astype(np.uint8).repeat(1, 0)
    labels = np.broadcast_to(labels, (600, 600)).copy()  # columns 1, 2, 2, 1, 2, 2, ...
    _class_raster(path, labels)
    assert build_overviews(path) == [2, 4]
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2, 4]
        small = src.read(1, out_shape=(150, 150))
    # Every value of an overview is a class (no averaging into ids of other classes)...
    assert set(np.unique(small)) <= {1, 2}
    # ...and the majority class: two thirds of the columns are class 2.
    assert (small == 2).mean() > 0.6


def test_cog_is_valid_with_mode_overviews(tmp_path):
    path = tmp_path / "c.tif"
    _class_raster(path, _blocks())
    convert_to_cog(path)
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1)
        assert set(np.unique(src.read(1, out_shape=(150, 150)))) <= {0, 1, 2, 3}


def test_sieve_then_polygons_agree_with_raster(tmp_path):
    path = tmp_path / "c.tif"
    _class_raster(path, _blocks())
    sieve_classes(path, 10)
    with rasterio.open(path) as src:
        sieved = src.read(1)
    assert sieved[400, 100] == 2 and (sieved[100:102, 100:103] == 1).all()  # specks took their surroundings
    assert (sieved[:20, -20:] == 0).all()  # nodata stays nodata
    count = write_polygons(path, tmp_path / "p.gpkg", CLASSES, "GPKG")
    polygons = geopandas.read_file(tmp_path / "p.gpkg")
    assert count == len(polygons) == 4  # ground: two quadrants meeting at a corner only
    assert polygons["area_m2"].sum() == pytest.approx((sieved > 0).sum() * 0.25)
    for class_id in (1, 2, 3):
        assert polygons.loc[polygons.class_id == class_id, "area_m2"].sum() == pytest.approx(
            (sieved == class_id).sum() * 0.25)


def test_sieve_written_in_strips_matches_whole_raster(tmp_path, monkeypatch):
    import geoproto.output
    from rasterio.features import sieve

    rng = np.random.default_rng(1)
    labels = rng.integers(1, 4, (300, 300)).astype(np.uint8)
    labels = labels.repeat(2, 0).repeat(2, 1)[:300, :300]  # regions of a few pixels
    path = tmp_path / "c.tif"
    _class_raster(path, labels)
    monkeypatch.setattr(geoproto.output, "VECTOR_STRIP_ROWS", 64)
    sieve_classes(path, 12)
    with rasterio.open(path) as src:
        assert (src.read(1) == sieve(labels, 12, mask=labels > 0, connectivity=4)).all()


def test_simplified_polygons_keep_shared_edges(tmp_path):
    path = tmp_path / "c.tif"
    yy, xx = np.mgrid[:200, :200]
    labels = np.where((xx - 100) ** 2 + (yy - 100) ** 2 < 60 ** 2, 1, 2).astype(np.uint8)  # a stair-step disc
    _class_raster(path, labels)
    write_polygons(path, tmp_path / "raw.fgb", CLASSES, "FlatGeobuf")
    write_polygons(path, tmp_path / "s.fgb", CLASSES, "FlatGeobuf", simplify=1.0)
    raw, simple = geopandas.read_file(tmp_path / "raw.fgb"), geopandas.read_file(tmp_path / "s.fgb")
    assert shapely.get_num_coordinates(simple.geometry.values).sum() < \
        shapely.get_num_coordinates(raw.geometry.values).sum() / 3
    disc, ground = simple.geometry[simple.class_id == 1].iloc[0], simple.geometry[simple.class_id == 2].iloc[0]
    assert disc.intersection(ground).area == pytest.approx(0, abs=1e-6)  # no overlap
    assert disc.union(ground).area == pytest.approx(100 * 100, rel=1e-9)  # no gap: the edge is shared
    assert simple["area_m2"].tolist() == pytest.approx(simple.geometry.area.tolist())


def test_polygon_area_in_square_metres_on_geographic_rasters(tmp_path):
    path = tmp_path / "c.tif"
    with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(-84.4, 33.75, 1e-4, 1e-4), nodata=0) as dst:
        dst.write(np.ones((1, 10, 10), np.uint8))
    write_polygons(path, tmp_path / "p.geojson", CLASSES, "GeoJSON")
    # 0.001 degrees at 33.7 N: 111 m (latitude) x 92.6 m (longitude)
    assert geopandas.read_file(tmp_path / "p.geojson")["area_m2"][0] == pytest.approx(111.0 * 92.6, rel=0.01)


@pytest.mark.parametrize("path, driver, expected", [
    ("out.tif", None, "GTiff"), ("out.TIFF", "cog", "COG"), ("out.gpkg", None, "GPKG"),
    ("out.shp", None, "ESRI Shapefile"), ("out.fgb", "flatgeobuf", "FlatGeobuf")])
def test_output_driver(path, driver, expected):
    drivers = VECTOR_DRIVERS if expected not in RASTER_DRIVERS else RASTER_DRIVERS
    assert output_driver(path, driver, drivers, "x") == expected


def test_output_driver_refuses_a_foreign_extension():
    with pytest.raises(GeoprotoError, match=r"out.png: cannot tell the raster format from '.png'; use one of"):
        output_driver("out.png", None, RASTER_DRIVERS, "raster")
    with pytest.raises(GeoprotoError, match=r"out.gpkg: a GeoJSON file is named \*.geojson, not \*.gpkg"):
        output_driver("out.gpkg", "GeoJSON", VECTOR_DRIVERS, "vector")
    with pytest.raises(GeoprotoError, match="vector format 'DXF' is not supported"):
        output_driver("out.dxf", "DXF", VECTOR_DRIVERS, "vector")


def test_creation_options_override_defaults_whatever_their_case():
    from geoproto.output import with_options

    assert with_options({"compress": "deflate", "tiled": True}, {"COMPRESS": "LZW"}) == \
        {"tiled": True, "COMPRESS": "LZW"}
