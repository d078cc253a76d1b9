"""`geoproto segment` on unusual but legitimate inputs and outputs (tiny synthetic rasters in tmp_path):
errors are one line naming the file or option, before any work, with nothing left behind."""

import pytest
from click.testing import CliRunner

import synthetic
from geoproto.cli import main


def run(*args):
    """``geoproto segment`` with the fastest settings (the choices are tested elsewhere)."""
    return CliRunner().invoke(main, ["segment", *map(str, args), "--encoder", "imagenet", "--no-crf",
                                     "--scoring", "prototypes", "-q"])


def test_a_vector_format_this_gdal_cannot_write_is_refused_before_any_work(tmp_path, monkeypatch):
    import pyogrio

    image, support = synthetic.scene(tmp_path / "in")
    monkeypatch.setattr(pyogrio, "list_drivers", lambda **kwargs: {"GPKG": "rw", "Parquet": "r"})
    out = tmp_path / "out"
    out.mkdir()
    result = run(image, "--support", support, "-o", out / "c.tif", "--vector", out / "c.parquet")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"Error: --vector: {out / 'c.parquet'}: ")
    assert "cannot write Parquet" in result.output and "Traceback" not in result.output
    assert synthetic.leftovers(out) == []


def test_a_raster_located_by_gcps_only_is_refused_in_one_line_leaving_nothing(tmp_path):
    image = synthetic.write_located(tmp_path / "scan.tif")
    support = synthetic.write_support(tmp_path / "support.gpkg")
    out = tmp_path / "out"
    out.mkdir()
    result = run(image, "--support", support, "-o", out / "c.tif", "--vector", out / "c.gpkg")
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {image}: is georeferenced by ground control points only, not on a "
                                     f"grid; warp it onto one first (e.g. gdalwarp {image} gridded.tif)")
    assert synthetic.leftovers(out) == []


def test_an_output_of_output_dir_is_refused_naming_output_dir_not_output(tmp_path):
    """With several inputs the user gave --output-dir; an error naming -o/--output sends them looking for
    an option they never used."""
    first = synthetic.write_raster(tmp_path / "in" / "first.tif", synthetic.two_halves())
    second = synthetic.write_raster(tmp_path / "in" / "second.tif", synthetic.two_halves(seed=1))
    support = synthetic.write_support(tmp_path / "support.gpkg")
    out = tmp_path / "out"
    (out / "second.tif").parent.mkdir()
    (out / "second.tif").write_bytes(b"an earlier result")
    result = run(first, second, "--support", support, "--output-dir", out)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: --output-dir: {out / 'second.tif'}: exists; allow --overwrite to replace it"
    result = run(first, second, "--support", support, "--output-dir", first.parent)
    assert result.output.strip().startswith(f"Error: --output-dir: {first}: is the input image 1 {first}; ")
    assert synthetic.leftovers(out, "second.tif") == [] and synthetic.leftovers(first.parent, "first.tif",
                                                                                 "second.tif") == []


def test_an_output_dir_that_cannot_be_created_is_named_in_one_line(tmp_path):
    image, support = synthetic.scene(tmp_path)
    result = run(image, "--support", support, "--output-dir", support / "classes")
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: --output-dir: {support / 'classes'}: cannot create the folder "
                                     f"(Not a directory)")


def test_an_overlap_of_half_the_tile_size_or_more_is_refused_with_both_values(tmp_path):
    image, support = synthetic.scene(tmp_path)
    result = run(image, "--support", support, "-o", tmp_path / "c.tif", "--tile-size", 100, "--overlap", 100)
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --overlap: 100 must be less than half of --tile-size 100 (at most 49)"
    assert synthetic.leftovers(tmp_path, "image.tif", "support.gpkg") == []


@pytest.mark.parametrize("extra, wrong", [
    (["--co", "BLOCKXSIZE=100"], "multiples of 16"),
    (["--co", "COMPRESS=JPEG", "--probabilities", "p.tif"], "the probabilities"),
    (["--cog", "--co", "BLOCKSIZE=100"], "the class raster"),
])
def test_creation_options_gdal_cannot_write_are_refused_before_any_work(tmp_path, monkeypatch, extra, wrong):
    """Refused by name, not as 'unexpected RasterBlockError' once the support is encoded (or the run over)."""
    import geoproto.segment

    image, support = synthetic.scene(tmp_path / "in")
    monkeypatch.setattr(geoproto.segment, "choose_encoder_and_scoring",
                        lambda *args, **kwargs: pytest.fail("reached the encoder"))
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    result = run(image, "--support", support, "-o", "c.tif", *extra)
    assert result.exit_code == 1
    assert result.output.startswith("Error: --co: GDAL cannot write ") and wrong in result.output
    assert len(result.output.strip().splitlines()) == 1 and "unexpected" not in result.output
    assert synthetic.leftovers(out) == []


@pytest.mark.parametrize("extra", [["--co", "PREDICTOR=BOGUS"], ["-f", "COG", "--co", "PREDICTOR=BOGUS"]])
def test_gdal_reason_for_refused_creation_options_names_no_trial_file(tmp_path, extra):
    """The trial raster is an in-memory file of a random name, which GDAL's GeoTIFF driver names."""
    image, support = synthetic.scene(tmp_path / "in")
    result = CliRunner().invoke(main, ["-q", "segment", str(image), "--support", str(support), "-o",
                                       str(tmp_path / "c.tif"), *extra])
    assert result.exit_code == 1
    assert result.output == ("Error: --co: GDAL cannot write the class raster with PREDICTOR=BOGUS "
                             "(PREDICTOR=BOGUS is not supported)\n")


@pytest.mark.parametrize("extra, message", [
    (["--co", "COMPRESS=BOGUS"], "COMPRESS=BOGUS: GDAL's GTiff driver does not know this value"),
    (["--co", "BOGUSOPT=1"], "GDAL's GTiff driver has no creation option BOGUSOPT"),
    (["--cog", "--co", "TILED=YES"], "GDAL's COG driver has no creation option TILED"),
    # A COG's LEVEL is tried as the GeoTIFF's ZLEVEL (ZSTD_LEVEL, JPEG_QUALITY...): named as given.
    (["-f", "COG", "--co", "LEVEL=99"], "LEVEL=99: GDAL's COG driver does not know this value"),
    (["-f", "COG", "--co", "COMPRESS=ZSTD", "--co", "level=99"],
     "level=99: GDAL's COG driver does not know this value"),
    (["-f", "COG", "--co", "COMPRESS=JPEG", "--co", "QUALITY=0"],
     "QUALITY=0: GDAL's COG driver does not know this value"),
])
def test_creation_options_gdal_would_ignore_are_refused_naming_option_and_driver(tmp_path, monkeypatch, extra,
                                                                                  message):
    """GDAL only warns about them and writes the file without them; -q hid even the warning."""
    import geoproto.segment

    image, support = synthetic.scene(tmp_path / "in")
    monkeypatch.setattr(geoproto.segment, "choose_encoder_and_scoring",
                        lambda *args, **kwargs: pytest.fail("reached the encoder"))
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(main, ["-q", "segment", str(image), "--support", str(support), "-o",
                                       str(out / "c.tif"), *extra])
    assert result.exit_code == 1
    assert result.output == f"Error: --co: {message}: it would be ignored\n"
    assert synthetic.leftovers(out) == []


def test_a_support_of_one_class_is_refused_leaving_nothing(tmp_path, monkeypatch):
    """One class would label every pixel with it: refused once the support is read, before the encoder
    cross-validates it (``--scoring auto``), naming the class."""
    from geoproto.models.runtime import FeatureExtractor

    image = synthetic.write_raster(tmp_path / "image.tif", synthetic.two_halves())
    support = synthetic.write_support(tmp_path / "support.gpkg", classes=("bright",))
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(FeatureExtractor, "__call__", lambda *args: pytest.fail("encoded"))
    result = CliRunner().invoke(main, ["segment", str(image), "--support", str(support), "-o", str(out / "c.tif")])
    assert result.exit_code == 1
    assert result.output == ("Error: support: holds one class ('bright'); label at least two, e.g. the class you "
                             "want and what surrounds it\n")
    assert synthetic.leftovers(out) == []
