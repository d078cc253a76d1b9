"""Opening an orthophoto and its support together: what is opened is the caller's, or closed on error."""

import pytest

from geoproto.errors import GeoprotoError
from geoproto.inputs import open_inputs
from geoproto.raster import RasterSource


@pytest.fixture
def closed_paths(monkeypatch) -> list[str]:
    """The paths of the RasterSources closed from now on."""
    closed, close = [], RasterSource.close

    def recording_close(self):
        closed.append(self.path)
        close(self)

    monkeypatch.setattr(RasterSource, "close", recording_close)
    return closed


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
