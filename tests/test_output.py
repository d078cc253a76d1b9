"""The output writers, read back through GDAL/OGR (legend sidecar, overviews, sieve, polygons, formats),
and the staging of outputs (siblings moved together, aliases refused, stale staging of dead runs removed)."""

from __future__ import annotations

import csv
import os
import re

import geopandas
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from geoproto.errors import GeoprotoError
from geoproto.output import (RASTER_DRIVERS, VECTOR_DRIVERS, StagedOutputs, area_histogram, build_overviews,
                             class_areas, class_histogram, convert_to_cog, output_driver, remove_stale_staging, same_file,
                             sieve_classes, polygon_format, write_area_report, write_legend, write_polygons,
                             write_preview)
from geoproto.classes import ClassInfo

from conftest import gdal_band
from synthetic import ORIGIN, dead_pid, write_raster

CLASSES = ClassInfo([1, 2, 3], ["building", "ground", "tree"], [(255, 0, 0), None, None])


def _class_raster(path, labels: np.ndarray, pixel: float = 0.5) -> None:
    write_raster(path, labels[None], nodata=0, transform=from_origin(*ORIGIN, pixel, pixel), tiled=True,
                 blockxsize=256, blockysize=256)


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


def test_areas_of_a_geographic_raster_weigh_each_row_by_its_pixel_area(tmp_path, monkeypatch):
    """Rows of a raster in degrees differ in pixel area: each class's area is the sum over rows of its
    pixels there times that row's area, read in strips (here of 7 rows) as any raster is."""
    import geoproto.output
    from geoproto.raster import row_areas_m2

    labels = np.random.default_rng(2).integers(0, 4, (40, 30)).astype(np.uint8)
    path = tmp_path / "d.tif"
    write_raster(path, labels[None], nodata=0, crs="EPSG:4326", transform=from_origin(10.0, 61.0, 0.05, 0.05))
    with rasterio.open(path) as src:
        rows = row_areas_m2(src, src.crs)
    monkeypatch.setattr(geoproto.output, "VECTOR_STRIP_ROWS", 7)
    areas = area_histogram(str(path), rows)
    by_hand = [sum((labels[r] == value).sum() * rows[r] for r in range(40)) for value in range(4)]
    assert areas[:4] == pytest.approx(by_hand, rel=1e-12) and (areas[4:] == 0).all()
    assert areas.sum() == pytest.approx(rows.sum() * 30, rel=1e-12)  # the whole raster, nodata included
    assert rows[0] < rows[-1] * 0.97  # 2 degrees of latitude: the north row's pixels are 3 % smaller
    table = class_areas(CLASSES, class_histogram(path), areas)
    assert [t["area_m2"] for t in table] == [round(a, 3) for a in by_hand[1:]]
    assert [t["area_ha"] for t in table] == [round(round(a, 3) / 1e4, 4) for a in by_hand[1:]]
    assert class_areas(CLASSES, class_histogram(path), None)[0]["area_m2"] is None  # no CRS: no areas


def test_areas_of_a_projected_raster_are_exactly_pixels_times_pixel_area(tmp_path, monkeypatch):
    import geoproto.output

    path = tmp_path / "c.tif"
    _class_raster(path, _blocks(), pixel=0.07)
    monkeypatch.setattr(geoproto.output, "VECTOR_STRIP_ROWS", 64)
    histogram = class_histogram(path)
    areas = area_histogram(str(path), np.full(600, 0.07 * 0.07))
    assert areas.tolist() == (histogram * (0.07 * 0.07)).tolist()  # one multiplication, no sum of strips
    assert class_areas(CLASSES, histogram, areas) == class_areas(CLASSES, histogram, 0.07 * 0.07)


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
    write_raster(path, np.ones((1, 10, 10), np.uint8), nodata=0, crs="EPSG:4326",
                 transform=from_origin(-84.4, 33.75, 1e-4, 1e-4))
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


@pytest.mark.parametrize("path, drivers, driver", [(".gpkg", VECTOR_DRIVERS, None), ("out/.tif", RASTER_DRIVERS, None),
                                                   (".geojson", VECTOR_DRIVERS, "GeoJSON")])
def test_an_extension_alone_is_not_taken_for_a_file_without_one(path, drivers, driver):
    """``--vector .gpkg`` beside ``-o``: a suffix (what --output-dir takes), not "no extension"."""
    name = os.path.basename(path)
    with pytest.raises(GeoprotoError, match=rf"^{re.escape(path)}: is an extension alone; give a file name "
                                            rf"\(e\.g\. classes{re.escape(name)}\)$"):
        output_driver(path, driver, drivers, "x")


def test_creation_options_override_defaults_whatever_their_case():
    from geoproto.output import with_options

    assert with_options({"compress": "deflate", "tiled": True}, {"COMPRESS": "LZW"}) == \
        {"tiled": True, "COMPRESS": "LZW"}


# --- staging -------------------------------------------------------------------------------------------

def test_commit_moves_the_target_and_every_sibling_file(tmp_path):
    staged = StagedOutputs(overwrite=False)
    shapefile = staged.stage(str(tmp_path / "out.shp"), "--vector")
    raster = staged.stage(str(tmp_path / "out.tif"), "--output")
    assert os.path.dirname(shapefile) == os.path.dirname(raster) != str(tmp_path)
    assert os.path.basename(os.path.dirname(shapefile)).startswith(f".geoproto-{os.getpid()}-")
    for name in ("out.shp", "out.shx", "out.dbf", "out.prj", "out.cpg", "out.tif", "out.tif.aux.xml"):
        with open(os.path.join(os.path.dirname(shapefile), name), "w") as handle:
            handle.write(name)
    staged.commit()
    assert sorted(os.listdir(tmp_path)) == ["out.cpg", "out.dbf", "out.prj", "out.shp", "out.shx", "out.tif",
                                            "out.tif.aux.xml"]
    assert (tmp_path / "out.dbf").read_text() == "out.dbf"


def test_discard_leaves_nothing(tmp_path):
    staged = StagedOutputs(overwrite=False)
    with open(staged.stage(str(tmp_path / "a.tif")), "w") as handle:
        handle.write("half")
    staged.discard()
    assert os.listdir(tmp_path) == []


def test_an_existing_target_names_the_parameters_at_fault(tmp_path):
    """A Python caller is told which parameter to change, in its own name (no CLI flag)."""
    (tmp_path / "c.tif").write_bytes(b"precious")
    with pytest.raises(GeoprotoError) as info:
        StagedOutputs(overwrite=False).stage(str(tmp_path / "c.tif"))
    assert info.value.param == "output" and info.value.mentions == ("overwrite",) and "--" not in str(info.value)
    assert str(info.value) == f"output: {tmp_path / 'c.tif'}: exists; allow overwrite to replace it"
    assert (tmp_path / "c.tif").read_bytes() == b"precious"


def test_commit_refuses_a_target_that_appeared_meanwhile_and_replaces_orphan_siblings(tmp_path):
    staged = StagedOutputs(overwrite=False)
    path = staged.stage(str(tmp_path / "out.shp"))
    for ext in ("shp", "dbf"):
        with open(os.path.join(os.path.dirname(path), f"out.{ext}"), "w") as handle:
            handle.write("new")
    (tmp_path / "out.dbf").write_text("left from a layer whose .shp was deleted")
    (tmp_path / "out.shp").write_text("someone else's")
    with pytest.raises(GeoprotoError, match="^output: .*out.shp: appeared while running; allow overwrite"):
        staged.commit()
    (tmp_path / "out.shp").unlink()
    staged.commit()
    assert (tmp_path / "out.shp").read_text() == "new" and (tmp_path / "out.dbf").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out.dbf", "out.shp"]


@pytest.mark.parametrize("alias", ["same", "relative", "symlink", "hardlink", "symlinked-folder"])
def test_an_output_aliasing_an_input_is_refused(tmp_path, alias, monkeypatch):
    image = tmp_path / "image.tif"
    image.write_bytes(b"orthophoto")
    monkeypatch.chdir(tmp_path)
    target = {"same": str(image), "relative": "./image.tif"}.get(alias, str(tmp_path / "alias.tif"))
    if alias == "symlink":
        os.symlink(image, target)
    elif alias == "hardlink":
        os.link(image, target)
    elif alias == "symlinked-folder":
        os.symlink(tmp_path, tmp_path / "link")
        target = str(tmp_path / "link" / "image.tif")
    staged = StagedOutputs(overwrite=True, inputs={"image": str(image), "classes": None})
    with pytest.raises(GeoprotoError, match="^output: .*is the input image .*never replaces an input"):
        staged.stage(target, "output")
    staged.discard()
    assert image.read_bytes() == b"orthophoto" and not list(tmp_path.glob(".geoproto-*"))


def test_two_outputs_on_one_file_are_refused(tmp_path):
    staged = StagedOutputs(overwrite=True)
    staged.stage(str(tmp_path / "c.tif"), "output")
    os.symlink(tmp_path / "c.tif", tmp_path / "p.tif")
    with pytest.raises(GeoprotoError, match="^probabilities: .*p.tif: is also output"):
        staged.stage(str(tmp_path / "p.tif"), "probabilities")
    staged.discard()
    assert os.listdir(tmp_path) == ["p.tif"]


def test_same_file_of_paths_that_do_not_exist_or_are_virtual(tmp_path):
    assert same_file(str(tmp_path / "x.tif"), str(tmp_path / "." / "x.tif"))
    assert not same_file(str(tmp_path / "x.tif"), str(tmp_path / "y.tif"))
    assert not same_file(str(tmp_path / "x.tif"), "/vsizip/a.zip/x.tif")


def test_stale_staging_of_dead_processes_is_removed_and_live_ones_and_other_files_kept(tmp_path):
    dead = dead_pid()
    for name in (f".geoproto-{dead}-x1abcdef", f".geoproto-{os.getppid()}-x2abcdef",
                 f".geoproto-{os.getpid()}-x3abcdef"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "c.tif").write_bytes(b"half")
    kept = [f".geoproto-{os.getppid()}-x2abcdef", f".geoproto-{os.getpid()}-x3abcdef",
            ".c.partial-notapid.tif", ".geoproto-config", f".notes.partial-{dead}.txt", f".c.partial-{dead}.png"]
    for name in (f".c.partial-{dead}.tif", *kept[2:]):
        (tmp_path / name).write_text("?")
    removed = remove_stale_staging(str(tmp_path / "c.tif"))
    assert sorted(removed) == sorted([f".geoproto-{dead}-x1abcdef", f".c.partial-{dead}.tif"])
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_a_sibling_file_may_not_replace_an_input(tmp_path):
    legend = tmp_path / "c.tif.aux.xml"
    legend.write_text("an input")
    staged = StagedOutputs(overwrite=True, inputs={"--classes": str(legend)})
    folder = os.path.dirname(staged.stage(str(tmp_path / "c.tif"), "--output"))
    for name in ("c.tif", "c.tif.aux.xml"):
        with open(os.path.join(folder, name), "w") as handle:
            handle.write("new")
    with pytest.raises(GeoprotoError, match=r"c.tif.aux.xml: written beside an output, is the input --classes"):
        staged.commit()
    staged.discard()
    assert legend.read_text() == "an input" and os.listdir(tmp_path) == ["c.tif.aux.xml"]


def test_polygons_written_as_csv_carry_their_geometry_as_wkt(tmp_path):
    path = tmp_path / "c.tif"
    _class_raster(path, _blocks())
    count = write_polygons(path, tmp_path / "p.csv", CLASSES, "CSV")
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == count
    assert {row["class_name"] for row in rows} == {"building", "ground", "tree"}
    polygons = [shapely.from_wkt(row["WKT"]) for row in rows]
    assert all(p.geom_type == "Polygon" for p in polygons)
    assert sum(p.area for p in polygons) == pytest.approx((600 * 600 - 20 * 20) * 0.25)


def test_a_vector_format_this_gdal_cannot_write_is_refused_by_name(monkeypatch):
    """Parquet (GDAL built with Arrow) and the like are refused before any work, not after the run."""
    import pyogrio

    monkeypatch.setattr(pyogrio, "list_drivers", lambda **kwargs: {"GPKG": "rw", "FlatGeobuf": "r"})
    assert polygon_format("out.gpkg", None) == "GPKG"
    with pytest.raises(GeoprotoError, match=r"out\.fgb: .*cannot write FlatGeobuf"):
        polygon_format("out.fgb", None)
    with pytest.raises(GeoprotoError, match="cannot tell the vector format"):
        polygon_format("out.xyz", None)


def test_a_minimum_area_beyond_the_raster_leaves_its_largest_region_and_keeps_nodata(tmp_path):
    """A minimum area beyond the raster's (a small edge tile among large ones): every region is smaller,
    so each merges into its largest neighbour until one is left (classes 1: 959 px, 2: 600, 3: 25 inside
    1), rather than rasterio refusing a size not below the image's after the whole run, or GDAL's sieve
    leaving them all (it merges only into a region that reaches the size)."""
    path = tmp_path / "c.tif"
    labels = np.ones((40, 40), np.uint8)
    labels[:, 25:], labels[10:15, 5:10], labels[:4, :4] = 2, 3, 0
    _class_raster(path, labels)
    sieve_classes(path, 40 * 40 * 10)
    with rasterio.open(path) as src:
        sieved = src.read(1)
    assert np.array_equal(sieved, np.where(labels == 0, 0, 1))


@pytest.mark.parametrize("nodata_ring", [False, True])
def test_touching_regions_all_under_the_minimum_merge_smallest_first(tmp_path, nodata_ring):
    """Stripes of 840, 560 and 200 px (21, 14 and 5 columns of 40 rows) at a 900 px minimum, alone or as
    an island among nodata: GDAL's sieve merges none (no region reaches 900). By hand: the 200 px stripe
    joins its only neighbour (560 + 200 = 760), which, still the smaller, joins the 840 px stripe."""
    labels = np.ones((40, 40), np.uint8)
    labels[:, 21:35], labels[:, 35:] = 2, 3
    if nodata_ring:
        labels = np.pad(labels, 3)
    path = tmp_path / "c.tif"
    _class_raster(path, labels)
    sieve_classes(path, 900)
    with rasterio.open(path) as src:
        assert np.array_equal(src.read(1), np.where(labels == 0, 0, 1))


def test_regions_under_the_minimum_beside_a_larger_one_merge_as_gdal_merges_them(tmp_path):
    """The common case stays GDAL's: specks inside large regions take the surrounding class."""
    from rasterio.features import sieve

    rng = np.random.default_rng(0)
    labels = np.ones((60, 60), np.uint8)
    labels[:, 30:] = 2
    labels[rng.integers(0, 60, 40), rng.integers(0, 60, 40)] = 3
    path = tmp_path / "c.tif"
    _class_raster(path, labels)
    sieve_classes(path, 10)
    with rasterio.open(path) as src:
        sieved = src.read(1)
    assert np.array_equal(sieved, sieve(labels, 10, mask=labels, connectivity=4))
    assert set(np.unique(sieved)) == {1, 2}


def test_creation_options_of_a_cog_are_judged_by_the_cog_driver():
    """BLOCKSIZE is the COG driver's (the GeoTIFFs written beside it get BLOCKXSIZE/BLOCKYSIZE): accepted
    for a COG with probabilities, refused for a GeoTIFF."""
    from geoproto.output import check_creation_options

    check_creation_options({"BLOCKSIZE": "512", "compress": "zstd"}, "COG", probabilities=True)
    with pytest.raises(GeoprotoError, match="^creation_options: GDAL's GTiff driver has no creation option "
                                            "BLOCKSIZE: it would be ignored$"):
        check_creation_options({"BLOCKSIZE": "512"}, "GTiff", probabilities=False)


def test_preview_shows_nodata_transparent_not_black_like_a_black_class(tmp_path):
    """The RGB preview painted nodata (outside the --aoi, say) black, as it painted a class coloured #000000."""
    labels = np.zeros((6, 8), np.uint8)
    labels[:, :4], labels[:3, 4:] = 1, 2  # the lower right quarter is nodata
    path = write_raster(tmp_path / "classes.tif", labels[None], nodata=0)
    write_preview(str(path), str(tmp_path / "preview.png"), ClassInfo([1, 2], ["asphalt", "tree"],
                                                                      [(0, 0, 0), (0, 158, 115)]))
    with rasterio.open(tmp_path / "preview.png") as preview:
        rgba = preview.read()
    assert rgba.shape == (4, 6, 8)
    np.testing.assert_array_equal(rgba[3], np.where(labels == 0, 0, 255))
    assert rgba[:3, 0, 0].tolist() == [0, 0, 0] and rgba[:3, 0, 4].tolist() == [0, 158, 115]
