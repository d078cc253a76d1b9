"""Which rasters a ``segment`` run over many inputs takes, and where their outputs go."""

import os

import pytest

from geoproto.batch import expand_images, output_paths, sidecar_path
from geoproto.errors import GeoprotoError


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def test_folders_globs_and_files_expand_in_name_order_each_once(tmp_path):
    b, a = touch(tmp_path / "flight" / "b.tif"), touch(tmp_path / "flight" / "a.TIF")
    touch(tmp_path / "flight" / "notes.txt")
    touch(tmp_path / "flight" / ".geoproto-1-abcdefgh.tif")  # hidden: another run's staging
    (tmp_path / "flight" / "sub.tif").mkdir()  # a folder is not a raster, whatever its name
    c = touch(tmp_path / "more" / "c.vrt")
    pattern = str(tmp_path / "more" / "*.vrt")
    assert expand_images([str(tmp_path / "flight"), pattern, b]) == [a, b, c]


def test_a_folder_without_rasters_and_a_glob_without_match_are_refused(tmp_path):
    touch(tmp_path / "empty" / "readme.md")
    with pytest.raises(GeoprotoError, match=r"empty: folder holds no raster"):
        expand_images([str(tmp_path / "empty")])
    with pytest.raises(GeoprotoError, match=r"\*\.tif: matches no file"):
        expand_images([str(tmp_path / "*.tif")])


def test_a_file_named_like_a_glob_is_taken_as_is(tmp_path):
    odd = touch(tmp_path / "scan[1].tif")
    assert expand_images([odd]) == [odd]


def test_outputs_are_named_from_the_inputs_and_may_not_collide(tmp_path):
    assert output_paths(["a/x.tif", "b/y.vrt"], "out") == [os.path.join("out", "x.tif"), os.path.join("out", "y.tif")]
    with pytest.raises(GeoprotoError, match=r"b/x\.jp2: its output out/x\.tif would also be that of a/x\.tif"):
        output_paths(["a/x.tif", "b/x.jp2"], "out")


def test_sidecars_take_a_suffix_never_a_path():
    assert sidecar_path("out/x.tif", "vector", "") == "out/x.gpkg"
    assert sidecar_path("out/x.tif", "vector", "", ".fgb") == "out/x.fgb"
    assert sidecar_path("out/x.tif", "probabilities", "") == "out/x_probabilities.tif"
    assert sidecar_path("out/x.tif", "report", "_areas.csv") == "out/x_areas.csv"
    with pytest.raises(GeoprotoError, match=r"preview: other/p\.png: with output_dir, give the option alone"):
        sidecar_path("out/x.tif", "preview", "other/p.png")



@pytest.mark.parametrize("value", ["polygons.gpkg", "areas.csv", "2024.png"])
def test_a_sidecar_file_name_is_not_glued_to_each_inputs_name(value):
    """``--vector polygons.gpkg`` with --output-dir wrote x.tif's polygons to xpolygons.gpkg: a file name,
    not a suffix; refused saying so (``_polygons.gpkg`` or ``-polygons.gpkg`` are suffixes)."""
    with pytest.raises(GeoprotoError, match=rf"^vector: {value}: with output_dir, give the option alone or a suffix "
                                            r"such as '\.gpkg', not a file name$"):
        sidecar_path("out/x.tif", "vector", value)
    assert sidecar_path("out/x.tif", "vector", "-polygons.gpkg") == "out/x-polygons.gpkg"
