"""Opening an orthophoto and its support together: what is opened is the caller's, or closed on error."""

import numpy as np
import pytest

from geoproto.errors import GeoprotoError
from geoproto.inputs import open_inputs
from geoproto.raster import RasterSource


@pytest.fixture
def closed_paths(spy) -> list[str]:
    """The paths of the RasterSources closed from now on."""
    return spy(RasterSource, "close", lambda self: self.path)


def test_the_opened_rasters_stay_open_for_the_caller(spacenet, closed_paths):
    image = str(spacenet / "sample_geotiff.tif")
    inputs = open_inputs(image, str(spacenet / "support.gpkg"), support_image=image)
    assert closed_paths == []
    assert inputs.support_source is not inputs.source and inputs.classes.names == ["building", "ground", "tree"]
    inputs.close()
    assert closed_paths == [image, image]


def test_a_failing_support_closes_the_image_and_the_support_image(spacenet, tmp_path, closed_paths):
    image = str(spacenet / "sample_geotiff.tif")
    missing = str(tmp_path / "missing.gpkg")
    with pytest.raises(GeoprotoError, match=f"{missing}: no such file"):
        open_inputs(image, missing, support_image=image)
    assert closed_paths == [image, image]  # the support image's source, then the orthophoto's


def test_an_empty_support_image_is_refused_not_taken_for_the_image(spacenet, closed_paths):
    """``support_image=""`` labelled the orthophoto itself, as if no support image were given."""
    image = str(spacenet / "sample_geotiff.tif")
    with pytest.raises(GeoprotoError, match=r"^support_image: empty path; give a file name$"):
        open_inputs(image, str(spacenet / "support.gpkg"), support_image="")
    assert closed_paths == [image]


@pytest.mark.parametrize("grid", ["same", "coarser"])
def test_a_label_raster_closes_with_the_inputs_and_reopens_on_use(tmp_path, grid):
    """The support's label raster is the inputs' too: ``Inputs.close`` closes its file (and the WarpedVRT
    onto the image's grid), and a later read opens it again, reading the same labels."""
    import synthetic
    from rasterio.transform import from_origin

    from geoproto.tiling import tile_grid

    image, _ = synthetic.scene(tmp_path)
    labels = np.zeros((synthetic.SIDE, synthetic.SIDE), np.uint8)
    labels[10:40, 5:40], labels[10:40, 60:90] = 1, 2
    step = 1 if grid == "same" else 2  # a coarser grid is warped onto the image's
    mask = synthetic.write_raster(tmp_path / "labels.tif", labels[::step, ::step],
                                  transform=from_origin(*synthetic.ORIGIN, step * synthetic.PIXEL,
                                                        step * synthetic.PIXEL))
    (tile,) = tile_grid(synthetic.SIDE, synthetic.SIDE, synthetic.SIDE, 0)
    inputs = open_inputs(str(image), str(mask))
    before = inputs.labels.read(tile, synthetic.SIDE)
    handles = [inputs.labels.dataset, inputs.labels.source]
    assert (handles[0] is handles[1]) == (grid == "same")
    inputs.close()
    assert all(handle.closed for handle in handles)
    np.testing.assert_array_equal(inputs.labels.read(tile, synthetic.SIDE), before)  # reopened
    assert inputs.classes.ids == [1, 2] and set(np.unique(before).tolist()) == {0, 1, 2}
    reopened = inputs.labels.dataset
    inputs.close()
    assert reopened is not handles[0] and reopened.closed


def test_a_label_raster_without_labels_is_closed_with_the_image(tmp_path, closed_paths, spy):
    import synthetic

    from geoproto.support import RasterLabels

    closed_labels = spy(RasterLabels, "close", lambda self: self.path)
    image, _ = synthetic.scene(tmp_path)
    empty = synthetic.write_raster(tmp_path / "labels.tif", np.zeros((synthetic.SIDE, synthetic.SIDE), np.uint8))
    with pytest.raises(GeoprotoError, match=f"{empty}: holds no labelled pixel"):
        open_inputs(str(image), str(empty))
    assert closed_labels == [str(empty)] and closed_paths == [str(image)]


@pytest.mark.parametrize("assume_crs", [None, "EPSG:32616"])
@pytest.mark.parametrize("by, named", [("gcps", "ground control points only.*gdalwarp /.*scan"),
                                       ("rpcs", "RPCs only.*gdalwarp -rpc /.*scan")])
def test_a_raster_georeferenced_by_gcps_only_is_refused_naming_the_remedy(tmp_path, closed_paths, assume_crs, by,
                                                                          named):
    """Its class raster would lose the GCPs or RPCs (a grid-less image in pixel space), and a support in their
    CRS was reported as "the raster has no CRS" or as overlapping nothing."""
    from synthetic import write_located, write_support

    image = str(write_located(tmp_path / "scan.tif", by))
    with pytest.raises(GeoprotoError, match=rf"scan\.tif: is georeferenced by {named}"):
        open_inputs(image, str(write_support(tmp_path / "s.gpkg")), assume_crs=assume_crs)
    assert closed_paths == [image]


@pytest.mark.parametrize("bands", [None, [1]])
def test_a_paletted_image_is_refused_naming_the_expansion(tmp_path, bands):
    """Its values are palette indices, in no order of brightness: read as grey levels they gave the
    encoder an image unrelated to the colours shown (white index 1 next to black index 0)."""
    import rasterio

    from synthetic import CRS, TRANSFORM

    path = tmp_path / "paletted.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs=CRS,
                       transform=TRANSFORM, photometric="palette") as dst:
        dst.write(np.indices((8, 8)).sum(axis=0).astype(np.uint8) % 2, 1)
        dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 255, 255, 255)})
    with pytest.raises(GeoprotoError, match=rf"{path}: band 1 holds palette indices, not colours; expand it to "
                                            rf"RGB first \(gdal_translate -expand rgb"):
        RasterSource.open(str(path), bands)
