"""`geoproto prototypes` and `geoproto merge-prototypes` through click's CliRunner."""

import json

import geopandas
import numpy as np
import pandas
import pytest
import rasterio
import torch
from click.testing import CliRunner

import synthetic
from geoproto.classifier import fit_support
from geoproto.cli import main
from geoproto.inputs import support_pairs
from geoproto.models import DEFAULT_ENCODER, build_shipped
from geoproto.models.runtime import FeatureExtractor
from geoproto.prototype_file import load_prototypes
from geoproto.segment import SegmentOptions, options_inputs


def run(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def assert_refused(result, message: str, unwritten) -> None:
    """The command failed (exit 1) saying ``message``, and wrote no ``unwritten`` file."""
    assert result.exit_code == 1
    assert message in result.output
    assert not unwritten.exists()


def test_prototypes_writes_a_file_and_its_summary(scene, tmp_path):
    image, support = scene
    out = tmp_path / "out" / "classes.gpp"
    out.parent.mkdir()
    result = run("prototypes", image, "-s", support, "-o", out, "--tile-size", 96, "--overlap", 0, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    made = load_prototypes(str(out))
    assert [c["name"] for c in summary["classes"]] == made.classes.names == ["bright", "dark"]
    assert [c["pixels"] for c in summary["classes"]] == made.pixels.tolist()
    assert summary["encoder_name"] == made.encoder["name"] == "dubai"
    assert summary["encoder_sha256"] == made.encoder["fingerprint"]
    assert synthetic.leftovers(out.parent) == ["classes.gpp"]  # no staging folder left behind

    again = run("prototypes", image, "-s", support, "-o", out, "--tile-size", 96, "--overlap", 0)
    assert again.exit_code == 1 and "classes.gpp: exists; allow --overwrite to replace it" in again.output
    replaced = run("prototypes", image, "-s", support, "-o", out, "--tile-size", 96, "--overlap", 0, "--overwrite",
                   "--encoder", "imagenet")
    assert replaced.exit_code == 0, replaced.output
    assert load_prototypes(str(out)).encoder["name"] == "imagenet"


def test_pairs_pool_exactly_as_merging_their_files(tmp_path):
    first = synthetic.scene(tmp_path / "first")
    second = synthetic.scene(tmp_path / "second", synthetic.two_halves(seed=1))
    tiling = ["--tile-size", 96, "--overlap", 16, "-q"]
    for name, (image, support) in {"a": first, "b": second}.items():
        assert run("prototypes", image, "-s", support, "-o", tmp_path / f"{name}.gpp", *tiling).exit_code == 0
    both = run("prototypes", first[0], second[0], "-s", first[1], "-s", second[1], "-o", tmp_path / "ab.gpp", *tiling)
    assert both.exit_code == 0, both.output
    merged = run("merge-prototypes", tmp_path / "a.gpp", tmp_path / "b.gpp", "-o", tmp_path / "merged.gpp", "--json")
    assert merged.exit_code == 0, merged.output
    a, b = load_prototypes(str(tmp_path / "a.gpp")), load_prototypes(str(tmp_path / "b.gpp"))
    pooled, merged_file = load_prototypes(str(tmp_path / "ab.gpp")), load_prototypes(str(tmp_path / "merged.gpp"))
    for made in (pooled, merged_file):
        assert made.pixels.tolist() == (a.pixels + b.pixels).tolist()
        np.testing.assert_array_equal(made.feature_sum, a.feature_sum + b.feature_sum)
        assert [s["image"] for s in made.sources] == [str(first[0]), str(second[0])]
    assert json.loads(merged.stdout)["sources"] == 2


def test_pairs_sharing_a_support_file_read_it_once(tmp_path, spy, support_reads):
    """Two rasters given the same support file: it is read and hashed once, and the file pools both pairs
    as building each pair's file apart and merging them does."""
    import geoproto.prototypes
    image, support = synthetic.scene(tmp_path / "first")
    other = synthetic.write_raster(tmp_path / "second" / "image.tif", synthetic.two_halves(seed=1))
    tiling = ["--tile-size", 96, "--overlap", 16, "-q"]
    for name, raster in {"a": image, "b": other}.items():
        assert run("prototypes", raster, "-s", support, "-o", tmp_path / f"{name}.gpp", *tiling).exit_code == 0
    reads = support_reads
    reads.clear()  # what was read before is not this test's
    hashed = spy(geoproto.prototypes, "file_sha256", lambda path: path)
    both = run("prototypes", image, other, "-s", support, "-s", support, "-o", tmp_path / "ab.gpp", *tiling)
    assert both.exit_code == 0, both.output
    assert reads == [str(support)] and hashed == [str(support)]
    a, b = load_prototypes(str(tmp_path / "a.gpp")), load_prototypes(str(tmp_path / "b.gpp"))
    pooled = load_prototypes(str(tmp_path / "ab.gpp"))
    assert pooled.pixels.tolist() == (a.pixels + b.pixels).tolist()
    np.testing.assert_array_equal(pooled.feature_sum, a.feature_sum + b.feature_sum)
    assert [source["support_sha256"] for source in pooled.sources] == [a.sources[0]["support_sha256"]] * 2


def test_merge_refuses_files_of_two_encoders(scene, tmp_path):
    image, support = scene
    tiling = ["--tile-size", 96, "--overlap", 0, "-q"]
    assert run("prototypes", image, "-s", support, "-o", tmp_path / "d.gpp", *tiling).exit_code == 0
    assert run("prototypes", image, "-s", support, "-o", tmp_path / "i.gpp", "--encoder", "imagenet",
               *tiling).exit_code == 0
    result = run("merge-prototypes", tmp_path / "d.gpp", tmp_path / "i.gpp", "-o", tmp_path / "m.gpp")
    assert_refused(result, "i.gpp: made with encoder imagenet", tmp_path / "m.gpp")
    assert "d.gpp with dubai" in result.output


def test_one_support_per_image_is_required(scene, tmp_path):
    image, support = scene
    result = run("prototypes", image, image, "-s", support, "-o", tmp_path / "x.gpp")
    assert result.exit_code == 2 and "2 IMAGE(s) but 1 --support" in result.output
    result = run("prototypes", image, image, "-s", support, "-s", support, "--support-image", image,
                 "-o", tmp_path / "x.gpp")
    assert result.exit_code == 1 and "names the raster of a single support" in result.output
    result = run("merge-prototypes", support, "-o", tmp_path / "x.gpp")
    assert result.exit_code == 1 and "support.gpkg: not a geoproto prototype file" in result.output


@pytest.mark.slow
def test_segment_with_the_file_gives_the_labels_of_segment_with_the_support(paths, spacenet_crop, tmp_path):
    tiling = ["--tile-size", 320, "--overlap", 32]
    made = run("prototypes", spacenet_crop, "-s", paths.support, "-o", tmp_path / "p.gpp", *tiling, "-q")
    assert made.exit_code == 0, made.output
    common = [*tiling, "--no-crf", "--no-overviews", "--json", "-q"]
    # Both --scoring auto: the file is made for the scoring segment picks on the same support, for the same reason.
    direct = run("segment", spacenet_crop, "-s", paths.support, "-o", tmp_path / "direct.tif", *common)
    reused = run("segment", spacenet_crop, "--prototypes", tmp_path / "p.gpp", "-o", tmp_path / "reused.tif", *common)
    assert direct.exit_code == 0 and reused.exit_code == 0, direct.output + reused.output
    picked = json.loads(direct.stdout)["scoring"]
    recorded = load_prototypes(str(tmp_path / "p.gpp")).scoring
    assert (recorded["name"], recorded["reason"]) == (picked["used"], picked["reason"])
    assert json.loads(reused.stdout)["scoring"] == {"used": picked["used"], "reason": "from the prototype file"}
    with rasterio.open(tmp_path / "direct.tif") as a, rasterio.open(tmp_path / "reused.tif") as b:
        labels = a.read(1)
        np.testing.assert_array_equal(labels, b.read(1))
        assert a.tags()["GEOPROTO_CLASSES"] == b.tags()["GEOPROTO_CLASSES"]
    assert len(np.unique(labels)) == 3  # a real map, not one class
    summary = json.loads(reused.stdout)["support"]
    assert summary["prototypes"] == str(tmp_path / "p.gpp") and summary["warnings"] == []
    assert summary["pixels"] == json.loads(direct.stdout)["support"]["pixels"]


def test_a_raster_without_valid_pixels_is_refused_with_a_file_s_stretch(paths, spacenet_crop, tmp_path):
    """Read with a prototype file's stretch a raster is not measured, yet one without a valid pixel is still
    refused, and nothing is written."""
    made = run("prototypes", spacenet_crop, "-s", paths.support, "-o", tmp_path / "p.gpp", "--tile-size", 128,
               "--overlap", 16, "--scoring", "prototypes", "-q")
    assert made.exit_code == 0, made.output
    with rasterio.open(spacenet_crop) as src:
        empty = synthetic.write_raster(tmp_path / "empty.tif", np.zeros((src.count, 64, 64), src.dtypes[0]), nodata=0,
                                       crs=src.crs, transform=src.transform)
    result = run("segment", empty, "--prototypes", tmp_path / "p.gpp", "-o", tmp_path / "labels.tif", "--no-crf")
    assert_refused(result, "empty.tif: no valid pixels (all nodata, NaN or transparent)", tmp_path / "labels.tif")


def test_a_raster_scored_with_a_file_is_stretched_as_its_supports_were(paths, spacenet_crop, dark_crop, tmp_path):
    """A file made on the crop scores a copy of it whose right 40 % is blanked dark (its own percentiles
    move): read with the file's stretch, the untouched part gets the crop's labels; with its own
    (``--stretch per-input``) it does not."""
    tiling = ["--tile-size", 128, "--overlap", 16]
    made = run("prototypes", spacenet_crop, "-s", paths.support, "-o", tmp_path / "p.gpp", *tiling,
               "--scoring", "prototypes", "-q")
    assert made.exit_code == 0, made.output
    untouched = np.s_[:, :300]
    common = [*tiling, "--prototypes", tmp_path / "p.gpp", "--no-crf", "--no-overviews", "--json", "-q"]
    labels = {}
    for name, image, stretch in (("crop", spacenet_crop, "shared"), ("dark", dark_crop, "shared"),
                                 ("own", dark_crop, "per-input")):
        result = run("segment", image, "-o", tmp_path / f"labels-{name}.tif", "--stretch", stretch, *common)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["stretch"] == ("prototype file" if stretch == "shared" else "per-input")
        with rasterio.open(tmp_path / f"labels-{name}.tif") as src:
            labels[name] = src.read(1)[untouched]
    np.testing.assert_array_equal(labels["crop"], labels["dark"])
    assert len(np.unique(labels["crop"])) == 3
    assert (labels["own"] != labels["crop"]).mean() > 0.01


def test_segment_uses_the_file_s_encoder_and_refuses_another_naming_both(scene, tmp_path):
    """Without --encoder, a prototype file segments with the encoder it was made with (imagenet here, not the
    default dubai); naming another is refused, naming both."""
    image, support = scene
    made = run("prototypes", image, "-s", support, "-o", tmp_path / "i.gpp", "--encoder", "imagenet",
               "--tile-size", 96, "--overlap", 0, "-q")
    assert made.exit_code == 0, made.output
    result = run("segment", image, "--prototypes", tmp_path / "i.gpp", "-o", tmp_path / "c.tif", "--no-crf",
                 "--encoder", "dubai")
    assert result.exit_code == 1
    assert "i.gpp: made with imagenet" in result.output and "this run uses dubai" in result.output
    assert "--encoder imagenet" in result.output
    assert synthetic.leftovers(tmp_path, "image.tif", "support.gpkg", "i.gpp") == []
    for given in ([], ["--encoder", "auto"]):  # none given, or auto: the file's own encoder
        own = run("segment", image, "--prototypes", tmp_path / "i.gpp", "-o", tmp_path / "c.tif", "--no-crf",
                  *given, "--tile-size", 96, "--overlap", 0, "--json", "-q", "--overwrite")
        assert own.exit_code == 0, own.output
        assert json.loads(own.stdout)["encoder"]["name"] == "imagenet"
    direct = run("segment", image, "-s", support, "-o", tmp_path / "d.tif", "--no-crf", "--encoder", "imagenet",
                 "--tile-size", 96, "--overlap", 0, "-q")
    assert direct.exit_code == 0, direct.output
    with rasterio.open(tmp_path / "c.tif") as reused, rasterio.open(tmp_path / "d.tif") as built:
        np.testing.assert_array_equal(reused.read(1), built.read(1))


def test_segment_takes_a_support_or_a_prototype_file(scene, tmp_path):
    image, support = scene
    neither = run("segment", image, "-o", tmp_path / "c.tif")
    assert neither.exit_code == 1 and "--prototypes: give either a --support or a prototype file, not neither" \
        in neither.output
    both = run("segment", image, "-s", support, "--prototypes", support, "-o", tmp_path / "c.tif")
    assert both.exit_code == 1 and "not both" in both.output
    support_option = run("segment", image, "--prototypes", support, "--class-field", "class", "-o", tmp_path / "c.tif")
    assert support_option.exit_code == 1 and "--class-field: applies to a support" in support_option.output


def test_text_classes_named_like_numbered_ones_are_numbered_as_segment_numbers_them(tmp_path):
    """Text classes ``class_1``, ``class_2`` are numbered from their names, as any text classes are: the file
    records it, so files whose names overlap pool renumbered, as one support file holding them all would be."""
    from geoproto.support import load_support

    first = synthetic.scene(tmp_path / "first")
    second = synthetic.scene(tmp_path / "second", synthetic.two_halves(seed=1))
    synthetic.write_support(first[1], ("class_1", "class_2"))
    synthetic.write_support(second[1], ("class_2", "class_3"))
    both = tmp_path / "both.gpkg"  # one support file holding both files' polygons
    pandas.concat([geopandas.read_file(first[1]), geopandas.read_file(second[1])]).to_file(both)
    tiling = ["--tile-size", 96, "--overlap", 0, "-q"]

    def segment_classes(image, support):
        with rasterio.open(image) as reference:
            found = load_support(str(support), reference).found_classes()
        return found.ids, found.names

    assert run("prototypes", first[0], "-s", first[1], "-o", tmp_path / "one.gpp", *tiling).exit_code == 0
    one = load_prototypes(str(tmp_path / "one.gpp"))
    assert (one.classes.ids, one.classes.names) == segment_classes(*first) == ([1, 2], ["class_1", "class_2"])
    assert one.numbered_by_name

    result = run("prototypes", first[0], second[0], "-s", first[1], "-s", second[1], "-o", tmp_path / "two.gpp",
                 *tiling)
    assert result.exit_code == 0, result.output
    two = load_prototypes(str(tmp_path / "two.gpp"))
    assert (two.classes.ids, two.classes.names) == segment_classes(first[0], both) == (
        [1, 2, 3], ["class_1", "class_2", "class_3"])


def test_encoder_auto_cross_validates_the_polygons_of_every_pair(tmp_path):
    """Two support files, each numbering its polygons from row 0 and naming its classes alike, over two
    rasters: ``--encoder auto`` judges the encoders on the four polygons of both files, never taking two
    polygons of different files for pieces of one."""
    pairs = [synthetic.scene(tmp_path / "first"), synthetic.scene(tmp_path / "second", synthetic.two_halves(seed=1))]
    for _, support in pairs:
        assert geopandas.read_file(support).index.tolist() == [0, 1]
    result = run("prototypes", pairs[0][0], pairs[1][0], "-s", pairs[0][1], "-s", pairs[1][1], "-o",
                 tmp_path / "auto.gpp", "--encoder", "auto", "--tile-size", 96, "--overlap", 0, "-q")
    assert result.exit_code == 0, result.output
    auto = load_prototypes(str(tmp_path / "auto.gpp")).encoder["description"]["auto"]
    assert auto["cross_validated"] == {"polygons": 4, "windows": 2, "window_sizes": [96], "rasters": 2}


@pytest.mark.parametrize("scoring", ["linear", "multiscale"])
def test_a_file_keeps_the_scoring_segment_uses_with_the_support(paths, spacenet_crop, tmp_path, scoring):
    """A file made for multi-scale features holds their sums, one made for a linear head holds the head:
    segment with the file labels the raster as segment with the support does, to the byte."""
    tiling = ["--tile-size", 320, "--overlap", 32]
    made = run("prototypes", spacenet_crop, "-s", paths.support, "-o", tmp_path / "p.gpp", *tiling, "--scoring",
               scoring, "--json")
    assert made.exit_code == 0, made.output
    written = load_prototypes(str(tmp_path / "p.gpp"))
    scales = [1, 2] if scoring == "multiscale" else [1]
    assert written.scoring == json.loads(made.stdout)["scoring"] == {
        "name": scoring, "scales": scales, "head": "linear" if scoring == "linear" else "prototypes",
        "reason": "asked for"}
    assert written.encoder["channels"] == written.feature_sum.shape[1]
    if scoring == "linear":
        assert written.head["weight"].shape == written.feature_sum.shape
        assert written.head["weight"].dtype == np.float32
    else:
        assert written.head == {}
    common = [*tiling, "--no-crf", "--no-overviews", "--json", "-q"]
    direct = run("segment", spacenet_crop, "-s", paths.support, "-o", tmp_path / "direct.tif", *common,
                 "--scoring", scoring)
    reused = run("segment", spacenet_crop, "--prototypes", tmp_path / "p.gpp", "-o", tmp_path / "reused.tif", *common)
    assert direct.exit_code == 0 and reused.exit_code == 0, direct.output + reused.output
    with rasterio.open(tmp_path / "direct.tif") as a, rasterio.open(tmp_path / "reused.tif") as b:
        labels = a.read(1)
        np.testing.assert_array_equal(labels, b.read(1))
    assert len(np.unique(labels)) == 3  # a real map, not one class
    assert json.loads(reused.stdout)["scoring"] == {"used": scoring, "reason": "from the prototype file"}


@pytest.mark.parametrize("scoring", ["prototypes", "linear"])
def test_a_file_made_at_an_alpha_scores_at_it_unless_another_is_given(paths, spacenet_crop, tmp_path, scoring):
    """prototypes --alpha 10 records it: segment --prototypes then gives the labels and probabilities of
    segment --support --alpha 10 (a linear head holds alpha in its weight, a plain file in its header). An
    explicit --alpha rescales the logits: probabilities p become p^2 / sum(p^2) from 10 to 20."""
    tiling = ["--tile-size", 320, "--overlap", 32, "--scoring", scoring]
    made = run("prototypes", spacenet_crop, "-s", paths.support, "-o", tmp_path / "p.gpp", "--alpha", 10, *tiling,
               "-q")
    assert made.exit_code == 0, made.output
    assert load_prototypes(str(tmp_path / "p.gpp")).alpha == 10.0

    def segment(name, *args):
        result = run("segment", spacenet_crop, *args, "-o", tmp_path / f"{name}.tif", "--probabilities",
                     tmp_path / f"{name}-p.tif", *tiling, "--no-crf", "--no-overviews", "--json", "-q")
        assert result.exit_code == 0, result.output
        with rasterio.open(tmp_path / f"{name}.tif") as labels, rasterio.open(tmp_path / f"{name}-p.tif") as p:
            return labels.read(1), p.read(), json.loads(result.stdout)

    direct_labels, direct_p, _ = segment("direct", "-s", paths.support, "--alpha", 10)
    labels, probabilities, summary = segment("reused", "--prototypes", tmp_path / "p.gpp")
    np.testing.assert_array_equal(labels, direct_labels)
    np.testing.assert_allclose(probabilities, direct_p, rtol=1e-5, atol=1e-6)
    assert summary["support"]["alpha"] == 10.0 and len(np.unique(labels)) == 3
    sharper_labels, sharper, summary = segment("sharper", "--prototypes", tmp_path / "p.gpp", "--alpha", 20)
    assert summary["support"]["alpha"] == 20.0
    np.testing.assert_array_equal(sharper_labels, labels)  # a temperature: the argmax stays
    np.testing.assert_allclose(sharper, probabilities ** 2 / (probabilities ** 2).sum(0), rtol=1e-3, atol=1e-5)
    if scoring == "prototypes":  # a plain file at 20 is the support at 20 (the default)
        _, default_p, _ = segment("default", "-s", paths.support)
        np.testing.assert_allclose(sharper, default_p, rtol=1e-5, atol=1e-6)


def test_a_file_is_used_with_its_own_scoring_only(scene, tmp_path):
    """segment --scoring must be auto or the file's; merging files of different scales is refused, and a
    merge drops heads, scoring with the features' scales alone."""
    image, support = scene
    tiling = ["--tile-size", 96, "--overlap", 0, "-q"]
    other = synthetic.write_raster(tmp_path / "other.tif", synthetic.two_halves(seed=1))  # a support merged once
    for scoring in ("prototypes", "multiscale", "linear"):
        made = run("prototypes", other if scoring == "linear" else image, "-s", support, "-o",
                   tmp_path / f"{scoring}.gpp", "--scoring", scoring, *tiling)
        assert made.exit_code == 0, made.output
    assert load_prototypes(str(tmp_path / "multiscale.gpp")).feature_sum.shape[1] == \
        2 * load_prototypes(str(tmp_path / "prototypes.gpp")).feature_sum.shape[1]

    refused = run("segment", image, "--prototypes", tmp_path / "prototypes.gpp", "-o", tmp_path / "c.tif",
                  "--scoring", "linear", "--no-crf", *tiling)
    assert_refused(refused, f"--scoring: asks for linear, but {tmp_path / 'prototypes.gpp'} was made with scoring "
                            f"prototypes", tmp_path / "c.tif")

    mixed = run("merge-prototypes", tmp_path / "multiscale.gpp", tmp_path / "prototypes.gpp", "-o", tmp_path / "m.gpp")
    assert_refused(mixed, f"{tmp_path / 'prototypes.gpp'}: made with scoring prototypes (features at 1x), but "
                          f"{tmp_path / 'multiscale.gpp'} with multiscale (features at 1x+2x)", tmp_path / "m.gpp")

    merged = run("merge-prototypes", tmp_path / "linear.gpp", tmp_path / "prototypes.gpp", "-o", tmp_path / "m.gpp")
    assert merged.exit_code == 0, merged.output
    assert "Warning: the merged prototypes have no head" in merged.output
    pooled = load_prototypes(str(tmp_path / "m.gpp"))
    assert pooled.head == {} and pooled.scoring == {
        "name": "prototypes", "scales": [1], "head": "prototypes",
        "reason": "merged from 2 prototype files; heads dropped (of linear)"}
    plain = run("segment", image, "--prototypes", tmp_path / "m.gpp", "-o", tmp_path / "c.tif", "--no-crf", "--json",
                "--scoring", "prototypes", *tiling[:-1])
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["scoring"] == {"used": "prototypes", "reason": "from the prototype file"}


def test_a_linear_head_is_fitted_on_the_cells_of_every_pair(tmp_path):
    """Two rasters sharing a support file: the file's head is fitted on both rasters' labelled cells, as
    segment fits one on a support spread over its inputs, and labels them alike."""
    image, support = synthetic.scene(tmp_path / "first")
    other = synthetic.write_raster(tmp_path / "second" / "other.tif", synthetic.two_halves(seed=1))
    tiling = ["--tile-size", 96, "--overlap", 16, "-q"]
    made = run("prototypes", image, other, "-s", support, "-s", support, "-o", tmp_path / "ab.gpp", "--scoring",
               "linear", *tiling)
    assert made.exit_code == 0, made.output
    pooled = load_prototypes(str(tmp_path / "ab.gpp"))
    assert pooled.variant == "linear" and len(pooled.sources) == 2
    with options_inputs(str(image), str(support), SegmentOptions(), shared=True) as first, \
            options_inputs(str(other), str(support), SegmentOptions(), shared=True) as second:
        supports, classes = support_pairs([first, second], str(support))
        extract = FeatureExtractor(build_shipped(DEFAULT_ENCODER)[0], torch.device("cpu"))
        fitted, _ = fit_support(extract, supports, classes, 96, 16, 1, head="linear")
    assert classes.names == pooled.classes.names
    np.testing.assert_allclose(pooled.head["weight"], fitted.head.weight.numpy(), rtol=1e-4, atol=1e-5)
    direct = run("segment", image, other, "-s", support, "--output-dir", tmp_path / "direct", "--scoring", "linear",
                 "--no-crf", *tiling)
    reused = run("segment", image, other, "--prototypes", tmp_path / "ab.gpp", "--output-dir", tmp_path / "reused",
                 "--no-crf", *tiling)
    assert direct.exit_code == 0 and reused.exit_code == 0, direct.output + reused.output
    for raster in (image, other):
        name = f"{raster.stem}.tif"
        with rasterio.open(tmp_path / "direct" / name) as a, rasterio.open(tmp_path / "reused" / name) as b:
            np.testing.assert_array_equal(a.read(1), b.read(1))


def test_a_support_given_twice_is_refused_rather_than_counted_twice(scene, tmp_path):
    """The same pair twice in one run, the same file twice in a merge, or a merged file with one of its
    parts: each wrote a file weighing that support double, saying "2 support(s)"."""
    image, support = scene
    tiling = ["--tile-size", 96, "--overlap", 0, "-q"]
    twice = run("prototypes", image, image, "-s", support, "-s", support, "-o", tmp_path / "twice.gpp", *tiling)
    assert twice.exit_code == 1
    assert twice.output == (f"Error: pair 2 ({image} with support {support}) repeats pair 1; its pixels would "
                            f"count twice (give each image and support once)\n")
    other = synthetic.write_raster(tmp_path / "other.tif", synthetic.two_halves(seed=1))
    for name, raster in (("a", image), ("b", other)):
        assert run("prototypes", raster, "-s", support, "-o", tmp_path / f"{name}.gpp", *tiling).exit_code == 0
    a, b, ab = (tmp_path / f"{name}.gpp" for name in ("a", "b", "ab"))
    assert run("merge-prototypes", a, b, "-o", ab, "-q").exit_code == 0
    again = run("merge-prototypes", a, b, a, "-o", tmp_path / "m.gpp")
    assert again.exit_code == 1
    assert again.output == (f"Error: {a}: given twice; pooled, the pixels of its support {support} on {image} "
                            f"would count twice (give each file once)\n")
    part = run("merge-prototypes", ab, a, "-o", tmp_path / "m.gpp")
    assert part.exit_code == 1
    assert part.output == (f"Error: {a} and {ab} both hold the prototypes of support {support} on {image}; pooled, "
                           f"its pixels would count twice (merge each support once)\n")
    assert synthetic.leftovers(tmp_path, "image.tif", "support.gpkg", "other.tif", "a.gpp", "b.gpp", "ab.gpp") == []


def test_merge_into_one_of_its_files_is_refused_naming_the_file(tmp_path):
    """It read 'is the input input 1'."""
    first = tmp_path / "a.gpp"
    first.write_bytes(b"prototypes")
    result = run("merge-prototypes", first, "-o", first, "--overwrite")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: --output: {first}: is the input file 1 {first}; an output never "
                                    f"replaces an input")
    assert first.read_bytes() == b"prototypes"


def test_a_prototype_file_named_like_a_raster_is_refused_and_replaces_nothing(scene, tmp_path):
    """-o classes.tif wrote a zip named .tif; with --overwrite it replaced segment's class raster."""
    image, support = scene
    made = run("prototypes", image, "-s", support, "-o", tmp_path / "a.gpp", "--tile-size", 96, "--overlap", 0, "-q")
    assert made.exit_code == 0, made.output
    classes = tmp_path / "classes.tif"
    classes.write_bytes(b"a class raster")
    for command in (["prototypes", image, "-s", support, "--tile-size", 96, "--overlap", 0],
                    ["merge-prototypes", tmp_path / "a.gpp"]):
        result = run(*command, "-o", classes, "--overwrite")
        assert result.exit_code == 1
        assert result.output == f"Error: --output: {classes}: a prototype file is named *.gpp (or *.npz), not *.tif\n"
        assert classes.read_bytes() == b"a class raster"
    assert synthetic.leftovers(tmp_path, "image.tif", "support.gpkg", "a.gpp", "classes.tif") == []


def test_pairs_of_one_class_each_pool_into_one_file_of_both(scene, tmp_path):
    """Bright drawn with one pair and dark with another: the file holds both, with the prototypes one support
    of both squares gives, so it segments alike; a support of one class on its own is still refused."""
    image, support = scene
    squares = geopandas.read_file(support)
    squares.iloc[[0]].to_file(tmp_path / "bright.gpkg")
    squares.iloc[[1]].to_file(tmp_path / "dark.gpkg")
    tiling = ["--tile-size", 96, "--overlap", 0, "--scoring", "prototypes", "-q"]
    pooled = run("prototypes", image, image, "-s", tmp_path / "bright.gpkg", "-s", tmp_path / "dark.gpkg",
                 "-o", tmp_path / "pooled.gpp", *tiling, "--json")
    assert pooled.exit_code == 0, pooled.output
    assert [c["name"] for c in json.loads(pooled.stdout)["classes"]] == ["bright", "dark"]
    whole = run("prototypes", image, "-s", support, "-o", tmp_path / "whole.gpp", *tiling)
    assert whole.exit_code == 0, whole.output
    for name in ("pooled", "whole"):
        result = run("segment", image, "--prototypes", tmp_path / f"{name}.gpp", "-o", tmp_path / f"{name}.tif",
                     "--no-crf", *tiling)
        assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "pooled.tif") as a, rasterio.open(tmp_path / "whole.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert set(np.unique(a.read(1))) == {1, 2}
    alone = run("prototypes", image, "-s", tmp_path / "bright.gpkg", "-o", tmp_path / "alone.gpp", *tiling)
    assert_refused(alone, f"--support: {tmp_path / 'bright.gpkg'}: holds one class ('bright'); label at least two",
                   tmp_path / "alone.gpp")


def test_a_file_made_with_a_checkpoint_segments_with_it(scene, tmp_path):
    """The checkpoint names the encoder: nothing else to give (no --encoder, which a checkpoint refuses), and
    without it the file says what it was made with."""
    from geoproto.models import Encoder, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(Encoder("efficientnet-lite0", with_head=False), str(tmp_path / "own.pt"))
    image, support = scene
    tiling = ["--tile-size", 96, "--overlap", 0, "--scoring", "prototypes", "-q"]
    made = run("prototypes", image, "-s", support, "-o", tmp_path / "own.gpp", "--checkpoint", tmp_path / "own.pt",
               *tiling)
    assert made.exit_code == 0, made.output
    used = run("segment", image, "--prototypes", tmp_path / "own.gpp", "--checkpoint", tmp_path / "own.pt",
               "-o", tmp_path / "c.tif", "--no-crf", *tiling)
    assert used.exit_code == 0, used.output
    alone = run("segment", image, "--prototypes", tmp_path / "own.gpp", "-o", tmp_path / "d.tif", "--no-crf",
                *tiling)
    assert alone.exit_code == 1
    assert alone.output == (f"Error: --prototypes: {tmp_path / 'own.gpp'}: made with encoder own.pt, not a shipped "
                            f"one; give the --checkpoint or --init-weights it was made with\n")


def test_library_takes_pathlib_paths_and_refuses_a_bare_pair(scene, tmp_path):
    """``write_prototypes`` pairs of pathlib.Path work as str ones; one bare (image, support) tuple is refused
    by name, not unpacked as two pairs of characters; ``merge_prototype_files`` takes one Path as one file."""
    from pathlib import Path

    from geoproto.errors import GeoprotoError
    from geoproto.prototypes import merge_prototype_files, write_prototypes

    image, support = map(Path, scene)
    options = SegmentOptions(encoder="imagenet", scoring="prototypes", progress=False)
    with pytest.raises(GeoprotoError, match=r"^pairs: must be a list of \(image, support\) pairs, as "
                                            r"\[\('a.tif', 'a.gpkg'\)\]; got an item "):
        write_prototypes((str(image), str(support)), str(tmp_path / "bare.gpp"), options)
    summary = write_prototypes([(image, support)], tmp_path / "a.gpp", options)
    merged = merge_prototype_files(tmp_path / "a.gpp", tmp_path / "m.gpp")
    assert summary["output"] == str(tmp_path / "a.gpp") and merged["inputs"] == [str(tmp_path / "a.gpp")]
    made = load_prototypes(str(tmp_path / "m.gpp"))
    assert made.sources[0]["image"] == str(image) and made.classes.names == ["bright", "dark"]
    assert not (tmp_path / "bare.gpp").exists()


def test_a_file_keeps_the_orientations_its_features_were_averaged_over(paths, spacenet_crop, tmp_path):
    """prototypes --orientations 4 records them: segment --prototypes averages the query windows alike (the
    labels of segment --support --orientations 4, to the byte), refuses other orientations, and merging
    with a file of plain features is refused."""
    common = ["--tile-size", 320, "--overlap", 32, "--scoring", "prototypes"]
    for name, orientations in (("turned", 4), ("plain", 1)):
        made = run("prototypes", spacenet_crop, "-s", paths.support, "-o", tmp_path / f"{name}.gpp", *common,
                   "--orientations", orientations, "--json")
        assert made.exit_code == 0, made.output
        assert json.loads(made.stdout)["orientations"] == orientations
    turned, plain = load_prototypes(str(tmp_path / "turned.gpp")), load_prototypes(str(tmp_path / "plain.gpp"))
    assert turned.orientations == 4 and plain.orientations == 1
    assert not np.allclose(turned.feature_sum, plain.feature_sum, rtol=1e-3)  # averaged features, not the window's

    segment = [*common, "--no-crf", "--no-overviews", "--json", "-q"]
    direct = run("segment", spacenet_crop, "-s", paths.support, "-o", tmp_path / "direct.tif", *segment,
                 "--orientations", 4)
    reused = run("segment", spacenet_crop, "--prototypes", tmp_path / "turned.gpp", "-o", tmp_path / "reused.tif",
                 *segment)
    assert direct.exit_code == 0 and reused.exit_code == 0, direct.output + reused.output
    assert json.loads(direct.stdout)["orientations"] == json.loads(reused.stdout)["orientations"] == 4
    with rasterio.open(tmp_path / "direct.tif") as a, rasterio.open(tmp_path / "reused.tif") as b:
        labels = a.read(1)
        np.testing.assert_array_equal(labels, b.read(1))
    assert len(np.unique(labels)) == 3

    refused = run("segment", spacenet_crop, "--prototypes", tmp_path / "turned.gpp", "-o", tmp_path / "c.tif",
                  *segment, "--orientations", 8)
    assert_refused(refused, f"--orientations: asks for 8, but {tmp_path / 'turned.gpp'} was made with features "
                            f"averaged over 4 orientation(s)", tmp_path / "c.tif")
    mixed = run("merge-prototypes", tmp_path / "turned.gpp", tmp_path / "plain.gpp", "-o", tmp_path / "m.gpp")
    assert_refused(mixed, f"{tmp_path / 'plain.gpp'}: made with features averaged over 1 orientation(s), but "
                          f"{tmp_path / 'turned.gpp'} over 4", tmp_path / "m.gpp")
