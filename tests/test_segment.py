"""The library's ``segment``: support prototypes and labels do not depend on how the raster is tiled, and
a raster smaller than a window is encoded in a window its own size."""

import contextlib
import dataclasses
import os
import sys

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from synthetic import two_halves, write_raster, write_support

from geoproto import pipeline, resume
from geoproto.models import build_shipped
from geoproto.models.runtime import CONTEXT_MARGIN, FeatureExtractor
from geoproto.classifier import fit_support
from geoproto.segment import SegmentOptions, options_inputs, segment, segment_many


@pytest.fixture(scope="module")
def extract():
    return FeatureExtractor(build_shipped("imagenet")[0], torch.device("cpu"))


def prototypes(paths, extract, size, overlap):
    inputs = options_inputs(str(paths.chip), str(paths.support), SegmentOptions(tile_size=size, overlap=overlap))
    classifier, stats = fit_support(extract, [(inputs.support_source, inputs.labels)], inputs.classes, size, overlap,
                                    1)
    return classifier.prototypes, stats


@pytest.mark.slow
def test_prototypes_do_not_depend_on_the_tiling(paths, extract):
    """Against the whole 900 px chip encoded as one window: each labelled pixel counts once, with
    features from windows on the encoder's grid and real surroundings, whatever the tile size and
    overlap (window-weighted means on an unaligned grid gave cosines down to 0.989)."""
    whole, whole_stats = prototypes(paths, extract, 900, 0)
    assert whole_stats["windows"] == 1
    for size, overlap in ((417, 64), (512, 200), (480, 96)):
        tiled, stats = prototypes(paths, extract, size, overlap)
        assert stats["windows"] > 1 and stats["pixels"] == whole_stats["pixels"]
        cosine = F.cosine_similarity(tiled, whole, dim=1)
        assert cosine.min() >= 0.999, (size, overlap, cosine)


@pytest.mark.slow
def test_windowed_labels_equal_whole_raster_labels(paths, tmp_path):
    """A 544 x 510 Dubai tile in four 417 px windows, and as one window: the same map."""
    labels = {}
    for size in (417, 544):
        out = tmp_path / f"{size}.tif"
        options = SegmentOptions(scoring="prototypes", encoder="imagenet", tile_size=size, crf=False, progress=False,
                                 classes_file=str(paths.dubai / "classes.json"),
                                 support_image=str(paths.dubai / "images" / "image_part_003t3.jpg"))
        summary = segment(str(paths.dubai_query), str(paths.dubai / "masks" / "image_part_003t3.png"), str(out),
                          options)
        assert summary["tiles"] == (4 if size == 417 else 1)
        with rasterio.open(out) as src:
            labels[size] = src.read(1)
    agreement = (labels[417] == labels[544]).mean()
    assert agreement >= 0.99, agreement  # ambiguous pixels still see context beyond the 32 px margin


SMALL = dict(encoder="imagenet", scoring="prototypes", crf=False, progress=False)


def encoded_windows(spy) -> list:
    """The window size and image shapes of every batch the encoder scores, as ``segment`` runs."""
    return spy(pipeline, "_model_scores",
               lambda classifier, windows, size, *args: (size, {window.image.shape for window in windows}))


@pytest.mark.parametrize("crf", [False, True])
def test_a_raster_smaller_than_the_tile_is_encoded_in_a_window_its_own_size(tmp_path, spy, crf):
    """A 60 x 100 raster and the default 417 px tile: one 112 px window (100 rounded up to the encoder's
    grid) and its context, not 417 px of mostly mirrored padding; the summary says so; the class raster
    lies on the input's grid and has each half's class."""
    image = write_raster(tmp_path / "small.tif", two_halves(side=100)[:, :60])
    support = write_support(tmp_path / "support.gpkg", side=100)
    encoded = encoded_windows(spy)
    summary = segment(str(image), str(support), str(tmp_path / "out.tif"), SegmentOptions(**{**SMALL, "crf": crf}))
    assert encoded == [(112, {(3, 112 + 2 * CONTEXT_MARGIN, 112 + 2 * CONTEXT_MARGIN)})]
    assert (summary["tile_size"], summary["overlap"], summary["tiles"]) == (112, 0, 1)
    with rasterio.open(image) as src, rasterio.open(tmp_path / "out.tif") as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, (60, 100))
        labels = out.read(1)
    ids = {item["name"]: item["id"] for item in summary["classes"]}
    assert (labels[:, :50] == ids["bright"]).mean() >= 0.95 and (labels[:, 50:] == ids["dark"]).mean() >= 0.95


def test_a_raster_larger_than_the_tile_keeps_the_tile_size(tmp_path, spy):
    image = write_raster(tmp_path / "image.tif", two_halves())  # 96 px
    support = write_support(tmp_path / "support.gpkg")
    encoded = encoded_windows(spy)
    summary = segment(str(image), str(support), str(tmp_path / "out.tif"),
                      SegmentOptions(**SMALL, tile_size=64, overlap=8))
    assert {size for size, _ in encoded} == {64} and (summary["tile_size"], summary["overlap"]) == (64, 8)
    assert summary["tiles"] == 4


@contextlib.contextmanager
def crashing_after_one_window(monkeypatch):
    """Inside, the run's journal records one window, then the run crashes as if the machine went away."""
    record = resume.Journal.record

    def crash_after_one(journal, *args):
        record(journal, *args)
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(resume.Journal, "record", crash_after_one)
    with pytest.raises(RuntimeError, match="the machine went away"):
        yield
    monkeypatch.setattr(resume.Journal, "record", record)


def test_small_rasters_resume_to_the_uninterrupted_outputs(tmp_path, monkeypatch):
    """Two chips smaller than the tile, the run crashing after the first: rerun with resume, the first
    chip's window comes from the journal and the outputs are those of an uninterrupted run."""
    images = [str(write_raster(tmp_path / "in" / f"{name}.tif", two_halves(side=100, seed=seed)[:, :60]))
              for seed, name in enumerate(("one", "two"))]
    support = str(write_support(tmp_path / "support.gpkg", side=100))
    options = SegmentOptions(**SMALL, resume=True)
    expected = segment_many(images, support, str(tmp_path / "expected"), options)
    with crashing_after_one_window(monkeypatch):
        segment_many(images, support, str(tmp_path / "out"), options)
    assert os.path.isdir(resume.resume_folder(str(tmp_path / "out" / "one.tif")))
    summary = segment_many(images, support, str(tmp_path / "out"), options)
    assert [(item["tiles_resumed"], item["tile_size"]) for item in summary["inputs"]] == [(1, 112), (0, 112)]
    assert [item["tile_size"] for item in expected["inputs"]] == [112, 112]
    for name in ("one.tif", "two.tif"):
        with rasterio.open(tmp_path / "expected" / name) as first, rasterio.open(tmp_path / "out" / name) as second:
            np.testing.assert_array_equal(first.read(), second.read())


@pytest.mark.parametrize("own", ["checkpoint", "init_weights"])
def test_a_shipped_encoder_beside_ones_own_weights_is_refused(tmp_path, own):
    """--encoder imagenet --checkpoint m.pt names two encoders; one would be silently ignored. Not naming
    one (None, the CLI's value when --encoder is not given) or auto lets the weights decide."""
    from click.testing import CliRunner

    from geoproto.cli import main
    from geoproto.errors import GeoprotoError

    weights = str(tmp_path / "m.pt")
    with pytest.raises(GeoprotoError, match=f"^encoder: imagenet is a shipped encoder and {own} gives one of your "
                                            f"own: give one of them$") as info:
        SegmentOptions(encoder="imagenet", **{own: weights})
    assert info.value.mentions == (own,)
    assert SegmentOptions(encoder="auto", **{own: weights}).encoder == "auto"
    # the weights name the encoder, also once options are replaced per input (segment_many's sidecars)
    assert dataclasses.replace(SegmentOptions(**{own: weights}), vector="a.gpkg").encoder is None
    flag = "--" + own.replace("_", "-")
    for command in (["segment", "in.tif", "-s", "s.gpkg", "-o", str(tmp_path / "c.tif")],
                    ["check-support", "in.tif", "-s", "s.gpkg"]):
        result = CliRunner().invoke(main, command + ["--encoder", "dubai", flag, weights])
        assert result.exit_code == 1
        assert result.output == f"Error: --encoder: dubai is a shipped encoder and {flag} gives one of your own: " \
                                f"give one of them\n"


def test_a_shipped_encoder_beside_another_backbone_is_refused(tmp_path):
    """--backbone resnet50 --encoder imagenet: the shipped encoders are EfficientNet-Lite0s, so the backbone
    silently won (and asked for weights). Without --encoder the backbone is the encoder."""
    from click.testing import CliRunner

    from geoproto.cli import main
    from geoproto.errors import GeoprotoError

    with pytest.raises(GeoprotoError, match="^encoder: imagenet is a shipped encoder, on efficientnet-lite0, and "
                                            "backbone resnet50 is another architecture: give one of them$") as info:
        SegmentOptions(encoder="imagenet", backbone="resnet50")
    assert info.value.mentions == ("backbone",)
    assert SegmentOptions(backbone="resnet50").encoder is None
    assert SegmentOptions(encoder="auto", backbone="vgg16").encoder == "auto"
    assert SegmentOptions(encoder="dubai", backbone="efficientnet-lite0").encoder == "dubai"
    for command in (["segment", "in.tif", "-s", "s.gpkg", "-o", str(tmp_path / "c.tif")],
                    ["check-support", "in.tif", "-s", "s.gpkg"]):
        result = CliRunner().invoke(main, command + ["--encoder", "dubai", "--backbone", "vgg16"])
        assert result.exit_code == 1
        assert result.output == ("Error: --encoder: dubai is a shipped encoder, on efficientnet-lite0, and --backbone "
                                 "vgg16 is another architecture: give one of them\n")


def test_several_rasters_segment_with_ones_own_checkpoint(tmp_path):
    """Each input's options are the run's with its own sidecars (``dataclasses.replace``): a checkpoint
    given without --encoder made every multi-raster run refuse the default encoder beside it."""
    from geoproto.models import Encoder, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(Encoder("efficientnet-lite0", with_head=False), str(tmp_path / "own.pt"))
    images = [str(write_raster(tmp_path / f"in-{k}.tif", two_halves(seed=k))) for k in range(2)]
    support = write_support(tmp_path / "s.gpkg")
    summary = segment_many(images, str(support), str(tmp_path / "out"), SegmentOptions(
        checkpoint=str(tmp_path / "own.pt"), scoring="prototypes", crf=False, progress=False, vector=""))
    assert [os.path.basename(item["output"]) for item in summary["inputs"]] == ["in-0.tif", "in-1.tif"]
    assert summary["encoder"]["checkpoint"] == "own.pt"


def test_the_library_takes_pathlib_paths(tmp_path):
    """Paths as pathlib.Path (what a Python caller has at hand) work as str ones do: image, support,
    outputs, output folder; one Path to ``segment_many`` is one raster."""
    from pathlib import Path

    image = write_raster(tmp_path / "small.tif", two_halves(side=100)[:, :60])
    support = write_support(tmp_path / "support.gpkg", side=100)
    assert isinstance(image, Path) and isinstance(support, Path)
    summary = segment(image, support, tmp_path / "out.tif",
                      SegmentOptions(**SMALL, probabilities=tmp_path / "p.tif"))
    many = segment_many(image, support, tmp_path / "folder", SegmentOptions(**SMALL))
    assert summary["output"] == str(tmp_path / "out.tif") and many["totals"]["inputs"] == 1
    with rasterio.open(tmp_path / "out.tif") as one, rasterio.open(tmp_path / "folder" / "small.tif") as other, \
            rasterio.open(tmp_path / "p.tif") as probabilities:
        np.testing.assert_array_equal(one.read(), other.read())
        assert probabilities.count == 2


def test_wrong_argument_types_are_refused_by_name(tmp_path):
    from geoproto.errors import GeoprotoError

    image = str(write_raster(tmp_path / "small.tif", two_halves(side=100)[:, :60]))
    with pytest.raises(GeoprotoError, match=r"^image: must be a file path \(a str or pathlib.Path\), got list"):
        segment([image], None, str(tmp_path / "out.tif"))
    with pytest.raises(GeoprotoError, match=r"^options: must be a SegmentOptions \(SegmentOptions\(tile_size=512, "
                                            r"\.\.\.\)\), got dict$"):
        segment(image, None, str(tmp_path / "out.tif"), {"tile_size": 512})
    assert sorted(os.listdir(tmp_path)) == ["small.tif"]


def test_check_support_with_a_label_raster_is_refused_not_skipped(tmp_path, spy):
    """There are no polygons to cross-validate: refused before any encoding, as with a prototype file (it was
    silently left out of the summary), and before the inputs are opened (a uint16 raster's whole-raster
    stretch was computed first)."""
    from geoproto import segment as segment_module
    from geoproto.errors import GeoprotoError

    opened = spy(segment_module, "options_inputs")
    stretched = spy(segment_module, "_stretch")
    image = write_raster(tmp_path / "image.tif", two_halves("uint16"))
    labels = np.zeros((96, 96), np.uint8)
    labels[30:60, 10:30], labels[30:60, 60:90] = 1, 2
    support = write_raster(tmp_path / "labels.tif", labels)
    with pytest.raises(GeoprotoError, match=rf"^check_support: cross-validates support polygons; {support} is a "
                                            rf"label raster$"):
        segment(str(image), str(support), str(tmp_path / "out.tif"), SegmentOptions(**SMALL, check_support=True))
    assert sorted(os.listdir(tmp_path)) == ["image.tif", "labels.tif"]
    assert opened == [] and stretched == []


def _refuses_to_resume_once_rewritten(image: str, support: str, source, rewritten: np.ndarray, tmp_path, monkeypatch):
    """A run of ``image`` with ``support`` crashes after its first window; ``source`` (a file a VRT reads) is
    then rewritten as ``rewritten``, the VRT unchanged: the run refuses to resume, naming the sources."""
    from geoproto.errors import GeoprotoError

    options = SegmentOptions(**SMALL, resume=True, tile_size=64, overlap=8)
    with crashing_after_one_window(monkeypatch):
        segment(image, support, str(tmp_path / "out.tif"), options)
    write_raster(source, rewritten)
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 10**9))
    with pytest.raises(GeoprotoError, match=r"cannot resume: the interrupted run was made with other inputs or "
                                            r"options \(sources changed\)"):
        segment(image, support, str(tmp_path / "out.tif"), options)


def test_resume_notices_a_vrts_source_rewritten(tmp_path, monkeypatch):
    """The .vrt is unchanged when a tile it reads is rewritten: the journal's windows of the old tile are not
    replayed into the new one's output."""
    import rasterio.shutil

    tile = write_raster(tmp_path / "tile.tif", two_halves())
    mosaic = str(tmp_path / "mosaic.vrt")
    rasterio.shutil.copy(str(tile), mosaic, driver="VRT")
    support = str(write_support(tmp_path / "support.gpkg"))
    _refuses_to_resume_once_rewritten(mosaic, support, tile, two_halves(seed=1)[:, :, ::-1].copy(), tmp_path,
                                      monkeypatch)  # the same size, other pixels


def test_resume_notices_a_label_raster_vrts_source_rewritten(tmp_path, monkeypatch):
    """A label-raster support read through a VRT: its source rewritten under the unchanged .vrt teaches other
    prototypes, so the journal's windows are not replayed."""
    import rasterio.shutil

    image = str(write_raster(tmp_path / "image.tif", two_halves()))
    labels = np.zeros((96, 96), np.uint8)
    labels[30:60, 10:30], labels[30:60, 60:90] = 1, 2
    source = write_raster(tmp_path / "labels.tif", labels)
    support = str(tmp_path / "labels.vrt")
    rasterio.shutil.copy(str(source), support, driver="VRT")
    _refuses_to_resume_once_rewritten(image, support, source, labels[:, ::-1].copy(), tmp_path,
                                      monkeypatch)  # the same size, the classes swapped


def test_progress_defaults_to_whether_stderr_is_a_terminal(monkeypatch, fake_stderr):
    for terminal in (False, True):
        fake_stderr(terminal)
        assert SegmentOptions().progress is terminal
        assert SegmentOptions(progress=not terminal).progress is (not terminal)  # as given
    monkeypatch.setattr(sys, "stderr", None)  # pythonw: no stderr at all
    assert SegmentOptions().progress is False


@pytest.mark.parametrize("terminal", [False, True])
def test_a_progress_bar_only_on_a_terminal(tmp_path, fake_stderr, terminal):
    """Left to its default, a library run draws its bar on a terminal, never into a log file or a notebook's
    captured stream (the carriage-return frames of every window)."""
    stderr = fake_stderr(terminal)
    image = write_raster(tmp_path / "small.tif", two_halves(side=100)[:, :60])
    support = write_support(tmp_path / "support.gpkg", side=100)
    segment_many([image], support, tmp_path / "out", SegmentOptions(encoder="imagenet", scoring="prototypes",
                                                                     crf=False))
    assert ("1/1" in stderr.getvalue()) is terminal  # the bar's window count
    assert ("\r" in stderr.getvalue()) is terminal


def test_segment_many_takes_folders_and_glob_patterns_as_the_cli_does(tmp_path):
    from geoproto.errors import GeoprotoError

    folder = tmp_path / "flight"
    folder.mkdir()
    images = [str(write_raster(folder / f"tile-{k}.tif", two_halves(side=64, seed=k))) for k in range(2)]
    (folder / "notes.txt").write_text("not a raster")
    support = write_support(tmp_path / "support.gpkg", side=64)
    for given in ([str(folder / "tile-*.tif")], folder):
        summary = segment_many(given, support, tmp_path / "out", SegmentOptions(**SMALL, overwrite=True))
        assert [item["input"] for item in summary["inputs"]] == images
        assert sorted(os.listdir(tmp_path / "out")) == ["tile-0.tif", "tile-0.tif.aux.xml", "tile-1.tif",
                                                        "tile-1.tif.aux.xml"]
    with pytest.raises(GeoprotoError, match=r"elsewhere-\*\.tif: matches no file$"):
        segment_many([str(folder / "elsewhere-*.tif")], support, tmp_path / "other", SegmentOptions(**SMALL))
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("changes, param, message", [
    ({"driver": "PNG"}, "driver", "raster format 'PNG' is not supported; choose one of GTiff, COG"),
    ({"vector": "v.dxf", "vector_driver": "DXF"}, "vector_driver", "vector format 'DXF' is not supported; choose "
                                                                   "one of GPKG"),
])
def test_a_refused_output_driver_names_its_parameter(changes, param, message):
    from geoproto.errors import GeoprotoError

    with pytest.raises(GeoprotoError, match=rf"^{param}: {message}") as caught:
        SegmentOptions(**changes)
    assert caught.value.param == param
    assert (SegmentOptions(driver="cog").driver, SegmentOptions(vector_driver="geojson").vector_driver) == \
        ("COG", "GeoJSON")  # spelt as GDAL does, whatever the case given


@pytest.mark.parametrize("changes, param, message", [
    ({"device": "tpu"}, "device", "'tpu': choose auto, cpu or cuda"),
    ({"encoder": None, "backbone": "vgg99"}, "backbone", "unknown backbone 'vgg99' \\(known: "),
])
def test_a_refused_device_or_backbone_names_its_parameter(tmp_path, changes, param, message):
    from geoproto.errors import GeoprotoError
    from geoproto.support_check import check_support

    image = write_raster(tmp_path / "small.tif", two_halves(side=64))
    support = write_support(tmp_path / "support.gpkg", side=64)
    for run in (lambda options: segment(image, support, tmp_path / "out.tif", options),
                lambda options: check_support(image, support, options)):
        with pytest.raises(GeoprotoError, match=rf"^{param}: {message}") as caught:
            run(SegmentOptions(**{**SMALL, **changes}))
        assert caught.value.param == param
    assert sorted(os.listdir(tmp_path)) == ["small.tif", "support.gpkg"]
