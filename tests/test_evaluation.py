"""Metrics against hand-computed confusion matrices, the protocol's support sampling, and `score`."""

import json
import warnings
from pathlib import Path

import geopandas
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.features import rasterize
from shapely.affinity import translate

from geoproto.cli import main
from geoproto.errors import GeoprotoError
from geoproto.evaluation import evaluate, sample_supports, score
from geoproto.metrics import confusion_matrix, scores
from geoproto.models import build_encoder
from geoproto.tiling import Tile
from geoproto.training import load_dataset



def test_confusion_matrix_counts_and_ignores():
    truth = np.array([[1, 1, 2], [2, 0, 3]])
    predicted = np.array([[1, 2, 2], [2, 1, 1]])
    ignore = np.array([[False, False, False], [True, False, False]])
    matrix = confusion_matrix(truth, predicted, 3, ignore)
    # (1,1), (1,2), (2,2), [ignored (2,2)], [truth 0 skipped], (3,1)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_scores_by_hand():
    matrix = np.array([[50, 10], [5, 35]])  # rows truth, columns predicted
    result = scores(matrix)
    assert result["overall_accuracy"] == pytest.approx(0.85)
    expected_agreement = (60 * 55 + 40 * 45) / 100 ** 2
    assert result["kappa"] == pytest.approx((0.85 - expected_agreement) / (1 - expected_agreement))
    assert result["f1"][0] == pytest.approx(2 * 50 / (60 + 55))
    assert result["iou"][1] == pytest.approx(35 / (40 + 45 - 35))
    assert result["mean_iou"] == pytest.approx((50 / 65 + 35 / 50) / 2)


def test_scores_with_an_absent_class():
    matrix = np.array([[10, 0, 0], [0, 0, 0], [2, 0, 8]])  # class 2 neither present nor predicted
    result = scores(matrix)
    assert np.isnan(result["f1"][1]) and np.isnan(result["iou"][1])
    assert result["mean_f1"] == pytest.approx((20 / 22 + 16 / 18) / 2)  # absent class left out of the mean
    assert result["overall_accuracy"] == pytest.approx(18 / 20)


def _patches(sets):
    return [(0, Tile(0, 0, 1, 1, 0, 1, 0, 1), frozenset(s)) for s in sets]


def test_support_sampling_covers_the_classes_whenever_possible():
    patches = _patches([{1}, {1}, {1}, {1}, {1, 2}, {1}, {3}, {1}, {1}, {1}])
    for seed in range(50):
        chosen, covered = sample_supports(patches, 2, [1, 2, 3], np.random.default_rng(seed))
        assert covered == {1, 2, 3} and len(set(chosen)) == 2
        assert set(chosen) == {4, 6}  # the only 2-patch cover


def test_support_sampling_says_when_coverage_is_impossible():
    patches = _patches([{1}, {2}, {3}, {1}])
    chosen, covered = sample_supports(patches, 2, [1, 2, 3], np.random.default_rng(0))
    assert len(chosen) == 2 and len(covered) == 2 and covered < {1, 2, 3}
    chosen, covered = sample_supports(_patches([{1}, {2}]), 2, [1, 2, 5], np.random.default_rng(0))
    assert covered == {1, 2}  # class 5 occurs nowhere: covered as far as possible


def _raster_from_buildings(paths, path: Path, buildings) -> None:
    with rasterio.open(paths.chip) as src:
        labels = np.where(rasterize(buildings.geometry, out_shape=src.shape, transform=src.transform) > 0, 1, 2)
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1, "dtype": "uint8",
                   "crs": src.crs, "transform": src.transform, "nodata": 0}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels.astype(np.uint8), 1)
        dst.update_tags(GEOPROTO_CLASSES=json.dumps({1: "building", 2: "other"}))


def test_score_spacenet_against_its_own_polygons(paths, tmp_path):
    buildings = geopandas.read_file(paths.buildings)[["geometry"]].assign(kind="building")
    buildings.to_file(tmp_path / "truth.gpkg")
    _raster_from_buildings(paths, tmp_path / "exact.tif", buildings)
    report = score(str(tmp_path / "exact.tif"), str(tmp_path / "truth.gpkg"), "kind", background="other")
    assert report["classes"]["building"]["iou"] == 1.0 and report["overall_accuracy"] == 1.0

    # Every building shifted 2 m east: IoU drops to what the overlap of each footprint with itself gives.
    shifted = buildings.assign(geometry=buildings.geometry.apply(lambda g: translate(g, xoff=2.0)))
    _raster_from_buildings(paths, tmp_path / "shifted.tif", shifted)
    report = score(str(tmp_path / "shifted.tif"), str(tmp_path / "truth.gpkg"), "kind", background="other")
    with rasterio.open(paths.chip) as src:
        truth = rasterize(buildings.geometry, out_shape=src.shape, transform=src.transform) > 0
        moved = rasterize(shifted.geometry, out_shape=src.shape, transform=src.transform) > 0
    expected = (truth & moved).sum() / (truth | moved).sum()
    assert report["classes"]["building"]["iou"] == pytest.approx(expected, abs=1e-6)
    assert 0.3 < expected < 0.9


def test_score_cli_with_mapping_and_reprojected_truth(paths, tmp_path):
    buildings = geopandas.read_file(paths.buildings)[["geometry"]].assign(kind="house").to_crs("EPSG:4326")
    buildings.to_file(tmp_path / "truth.geojson")
    _raster_from_buildings(paths, tmp_path / "exact.tif", buildings.to_crs("EPSG:32616"))
    result = CliRunner().invoke(main, ["score", str(tmp_path / "exact.tif"), "--truth", str(tmp_path / "truth.geojson"),
                                       "--class-field", "kind", "--map", "house=building", "--background", "other",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["class_names"] == ["building", "other"]
    assert report["classes"]["building"]["iou"] > 0.999


@pytest.mark.slow
def test_evaluate_protocol_on_dubai_runs_and_is_reproducible(dubai):
    data = load_dataset("folder", str(dubai), holdout="image_part_00[12]t6$")
    data.splits["train"] = [n for n in data.splits["train"] if n.endswith("t1")][:3]
    encoder = build_encoder()[0]
    import torch

    first = evaluate(data, encoder, 1, [0, 1], None, False, torch.device("cpu"), progress=False)
    again = evaluate(data, encoder, 1, [0], None, False, torch.device("cpu"), progress=False)
    assert first["runs"][0]["overall_accuracy"] == again["runs"][0]["overall_accuracy"]
    assert first["runs"][0]["supports"] == again["runs"][0]["supports"]
    assert first["mean"]["overall_accuracy"] == pytest.approx(
        np.mean([r["overall_accuracy"] for r in first["runs"]]), abs=1e-6)
    assert 0.2 < first["mean"]["overall_accuracy"] < 1


def test_evaluate_averages_prototypes_over_shots_as_the_paper(dubai):
    """Eq. 1 over K shots: per-shot class means averaged with equal weight per shot; checked against the
    maths by hand (features upsampled x8 and cropped, masked means) on real patches, one of which holds
    a class in a few pixels only, so pixel weighting would give a different prototype."""
    import torch
    import torch.nn.functional as F

    from geoproto.evaluation import PATCH, _read_patch, patch_index, shot_prototypes
    from geoproto.models.runtime import FeatureExtractor

    data = load_dataset("folder", str(dubai), holdout="image_part_00[12]t6$")
    train = data.subset("train")
    patches = patch_index(data, train)
    extract = FeatureExtractor(build_encoder()[0], torch.device("cpu"))
    lookup = data.classes.positions()
    counts = np.array([np.bincount(lookup[_read_patch(data, train[i], tile)[1]].ravel(),
                                   minlength=len(data.classes.ids) + 1)[1:] for i, tile, _ in patches])
    # Three shots, two of which hold some class in amounts 20 times apart.
    first, second = next((a, b) for a in range(len(patches)) for b in range(len(patches))
                         if ((counts[a] > 0) & (counts[a] * 20 < counts[b])).any())
    shots = [patches[first], patches[second], patches[(second + 1) % len(patches)]]
    labels = [lookup[_read_patch(data, train[i], tile)[1]] for i, tile, _ in shots]
    prototypes, present = shot_prototypes(data, train, shots, extract, data.classes)

    by_hand = []  # per shot, per class: the mean upsampled feature over the class's pixels (None: absent)
    for (i, tile, _), label in zip(shots, labels):
        image, _ = _read_patch(data, train[i], tile)
        features = F.interpolate(extract(image[None]).float(), scale_factor=8, mode="bilinear",
                                 align_corners=False)[0, :, :PATCH, :PATCH]
        by_hand.append([features[:, torch.from_numpy(label == k + 1)].mean(1) if (label == k + 1).any() else None
                        for k in range(len(data.classes.ids))])
    for k in range(len(data.classes.ids)):
        means = [shot[k] for shot in by_hand if shot[k] is not None]
        assert bool(present[k]) == bool(means)
        if means:
            torch.testing.assert_close(prototypes[k], torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_evaluate_scores_queries_with_the_linear_head_segment_fits(dubai):
    """``scoring="linear"``: the head is fitted on the shots' labelled cells, started at their per-shot
    prototypes, and it, not eq. 2, labels the queries: the same supports, other labels where the head
    moved the boundary, and every query pixel labelled as the head's argmax says."""
    import torch

    from geoproto.evaluation import PATCH, _read_patch, patch_index, shot_features
    from geoproto.fewshot import masked_average_prototypes, pull_back_labels, upsample_scores
    from geoproto.heads import SupportCells, fit_linear_head
    from geoproto.models.runtime import FeatureExtractor

    data = load_dataset("folder", str(dubai), holdout="image_part_001t6$")
    data.splits["train"] = [n for n in data.splits["train"] if n.endswith("t1")][:3]
    encoder = build_encoder()[0]
    labelled = {}
    runs = {scoring: evaluate(data, encoder, 2, [0], None, False, torch.device("cpu"), progress=False, scoring=scoring,
                              on_patch=lambda seed, number, predicted, scoring=scoring:
                              labelled.__setitem__((scoring, number), predicted))
            for scoring in ("prototypes", "linear")}
    assert runs["linear"]["scoring"] == "linear" and runs["linear"]["runs"][0]["supports"] == \
        runs["prototypes"]["runs"][0]["supports"]
    changed = sum(int((labelled["linear", n] != labelled["prototypes", n]).sum()) for n in range(9))
    assert changed > 0

    # The head by hand, from the supports the report names, scores the first query patch.
    train = data.subset("train")
    patches = patch_index(data, train)
    names = runs["linear"]["runs"][0]["supports"]
    shots = [p for p in patches if f"{train[p[0]].name}@{p[1].row},{p[1].col}" in names]
    extract = FeatureExtractor(encoder, torch.device("cpu"))
    features, labels = shot_features(data, train, shots, extract, data.classes)
    prototypes = masked_average_prototypes(features, labels, len(data.classes.ids))
    cells = SupportCells()
    for feature, label in zip(features, labels):
        cells.add(feature[None], pull_back_labels(label[None], len(data.classes.ids), feature[None])[0])
    head = fit_linear_head(*cells.arrays(), prototypes)
    test = data.subset("test")
    sample, tile, _ = patch_index(data, test)[0]
    image, _ = _read_patch(data, test[sample], tile)
    present = torch.bincount(labels.reshape(-1), minlength=len(data.classes.ids) + 1)[1:] > 0
    with torch.inference_mode():
        logits = upsample_scores(head(extract(image[None], 0)), (PATCH, PATCH))[0]
        logits[~present] = -torch.inf  # a class no shot holds is never predicted
    rows, cols = tile.core_slices
    expected = (logits.argmax(0).numpy() + 1)[rows, cols]
    assert (expected == labelled["linear", 0]).mean() > 0.999


@pytest.mark.slow
def test_evaluate_averages_every_patch_over_the_orientations_asked(dubai, spy):
    """``orientations``: shots and queries alike are encoded in each orientation (2: twice) and their averaged
    features score the queries; the report says how many."""
    import torch

    from geoproto.models.runtime import FeatureExtractor

    data = load_dataset("folder", str(dubai), holdout="image_part_001t6$")
    data.splits["train"] = [n for n in data.splits["train"] if n.endswith("t1")][:3]
    encoder = build_encoder()[0]
    reports, labelled, encoded = {}, {}, {}
    for orientations in (1, 2):
        calls = spy(FeatureExtractor, "__call__", lambda extract, images, context=0: images.shape)
        reports[orientations] = evaluate(
            data, encoder, 2, [0], None, False, torch.device("cpu"), progress=False, orientations=orientations,
            on_patch=lambda seed, number, predicted, key=orientations: labelled.__setitem__((key, number), predicted))
        encoded[orientations] = len(calls)
        calls.clear()
    assert reports[2]["orientations"] == 2 and reports[1]["orientations"] == 1
    assert encoded[2] == 2 * encoded[1] == 2 * (2 + reports[1]["query_patches"])  # 2 shots and every query
    assert reports[2]["runs"][0]["supports"] == reports[1]["runs"][0]["supports"]
    assert any((labelled[1, n] != labelled[2, n]).any() for n in range(reports[1]["query_patches"]))


def test_evaluate_refuses_a_scoring_it_does_not_know():
    import torch

    with pytest.raises(GeoprotoError, match="scoring: 'auto': choose prototypes, multiscale, linear, multiscale"):
        evaluate(None, None, 1, [0], None, False, torch.device("cpu"), scoring="auto")


@pytest.mark.parametrize("option, value", [("--crf-bilateral-px", "nan"), ("--crf-bilateral-px", "0"),
                                           ("--shots", "0"), ("--seeds", "1,x"), ("--seeds", "-1"),
                                           ("--fold", "9")])
def test_evaluate_cli_refuses_bad_numbers(tmp_path, option, value):
    result = CliRunner().invoke(main, ["evaluate", "--dataset", "folder", "--root", str(tmp_path), option, value])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output


@pytest.mark.parametrize("names, message", [
    (["road"], "only 'road': one class is every pixel's prediction, scored 100 %; name at least two classes"),
    (["road", "road"], "'road' is named twice; name each class once"),
    (["road", "lake"], "d: no class 'lake' \\(classes: road, water\\)"),
])
def test_evaluate_needs_two_distinct_known_class_names(names, message):
    """--class-names road scored 100 % (its prototype was the only one), and road,road that too."""
    from types import SimpleNamespace

    from geoproto.classes import ClassInfo

    data = SimpleNamespace(name="d", classes=ClassInfo([1, 2], ["road", "water"]))
    with pytest.raises(GeoprotoError, match=f"^class_names: {message}$"):
        evaluate(data, None, 1, [0], names, False, torch.device("cpu"))


def test_more_shots_than_patches_names_the_shots():
    with pytest.raises(GeoprotoError, match="^shots: 3 requested but the training split has only 2 patches$"):
        sample_supports([(0, None, frozenset({1})), (0, None, frozenset({2}))], 3, [1, 2], np.random.default_rng(0))


def test_evaluate_fold_evaluates_the_folds_unseen_classes(tmp_path, monkeypatch):
    """--fold was accepted and ignored: PASCAL-5i runs scored all 20 classes, not the fold's 5."""
    from types import SimpleNamespace

    import geoproto.cli.evaluate
    from geoproto.datasets import fold_classes

    seen = {}
    data = SimpleNamespace(pixel_size_m=None)
    monkeypatch.setattr(geoproto.cli.evaluate, "load_dataset", lambda *a, **k: data)
    monkeypatch.setattr(geoproto.cli.evaluate, "select_encoder", lambda *a: (None, {}))
    monkeypatch.setattr(geoproto.cli.evaluate, "evaluate", lambda data, model, shots, seeds, names, *a, **k:
                        seen.setdefault("names", names) and {"runs": []})
    monkeypatch.setattr(geoproto.cli.evaluate, "format_table", lambda result: "table")
    arguments = ["evaluate", "--dataset", "pascal5i", "--root", str(tmp_path), "--fold", "1", "--no-crf"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert seen["names"] == fold_classes(1)[1] == ["bus", "car", "cat", "chair", "cow"]
    result = CliRunner().invoke(main, [*arguments, "--class-names", "bus,car"])
    assert result.exit_code == 1
    assert result.output == "Error: --fold: evaluates the fold's unseen classes; give it or --class-names\n"
    folder = CliRunner().invoke(main, ["evaluate", "--dataset", "folder", "--root", str(tmp_path), "--fold", "1"])
    assert folder.exit_code == 1 and "--fold: applies to the pascal5i dataset(s), not folder" in folder.output


def test_the_library_evaluates_a_folds_unseen_classes_or_the_names_given():
    from geoproto.datasets import fold_classes
    from geoproto.evaluation import evaluated_classes

    assert evaluated_classes(1, None) == fold_classes(1)[1]
    assert evaluated_classes(None, ["bus", "car"]) == ["bus", "car"] and evaluated_classes(None, None) is None
    with pytest.raises(GeoprotoError, match=r"^fold: evaluates the fold's unseen classes; give it or class_names$"):
        evaluated_classes(1, ["bus", "car"])


def test_evaluate_cli_draws_twenty_supports_by_default(tmp_path, monkeypatch):
    """Five draws misled (10 shots looked worse than 5 on the held-out Dubai area; README "Shipped
    encoders"): the default is the 20 the help advises, and it says so."""
    from types import SimpleNamespace

    import geoproto.cli.evaluate

    seen = {}
    monkeypatch.setattr(geoproto.cli.evaluate, "load_dataset", lambda *a, **k: SimpleNamespace(pixel_size_m=None))
    monkeypatch.setattr(geoproto.cli.evaluate, "select_encoder", lambda *a: (None, {}))
    monkeypatch.setattr(geoproto.cli.evaluate, "evaluate", lambda data, model, shots, seeds, *a, **k:
                        seen.setdefault("seeds", seeds) and {"runs": []})
    monkeypatch.setattr(geoproto.cli.evaluate, "format_table", lambda result: "table")
    result = CliRunner().invoke(main, ["evaluate", "--dataset", "folder", "--root", str(tmp_path), "--no-crf"])
    assert result.exit_code == 0, result.output
    assert seen["seeds"] == list(range(20))
    assert "compare settings over 20 or more. [default: (0,1,...,19)]" in " ".join(
        CliRunner().invoke(main, ["evaluate", "--help"]).output.split())


def test_evaluate_cli_refuses_a_seed_given_twice_or_none(tmp_path, monkeypatch):
    """It ran the same draw twice: counted twice in the mean, and a smaller standard deviation."""
    import geoproto.cli.evaluate

    monkeypatch.setattr(geoproto.cli.evaluate, "load_dataset", lambda *a, **k: pytest.fail("evaluation started"))
    result = CliRunner().invoke(main, ["evaluate", "--dataset", "folder", "--root", str(tmp_path), "--seeds",
                                       "0,1,2,1"])
    assert result.exit_code == 2
    assert "Invalid value for '--seeds': '0,1,2,1': 1 is given twice; give each once" in result.output
    result = CliRunner().invoke(main, ["evaluate", "--dataset", "folder", "--root", str(tmp_path), "--seeds", ""])
    assert result.exit_code == 2  # was "unexpected TypeError: object of type 'NoneType' has no len()"
    assert "Invalid value for '--seeds': empty; give whole numbers separated by commas, e.g. 1,2,3" in result.output


def _class_raster(path, data, tags=None, nodata=0, categories: list[str] | None = None):
    """A class raster with ``tags`` (e.g. GEOPROTO_CLASSES), or named by GDAL ``categories`` in a legend
    sidecar as QGIS would read it."""
    from synthetic import write_raster

    write_raster(path, data[None], nodata=nodata, transform=rasterio.transform.from_origin(500000, 3700000, 1, 1))
    if tags:
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(**tags)
    if categories:
        from geoproto.output import class_areas, write_legend
        from geoproto.classes import ClassInfo

        classes = ClassInfo(list(range(1, len(categories))), categories[1:])
        write_legend(f"{path}.aux.xml", classes, class_areas(classes, np.zeros(256, np.int64), 1.0))
    return str(path)


@pytest.mark.parametrize("kind, words", [
    ("uint16-image", ("holds value 1000", "class ids 0..255", "image rather than a classification")),
    ("float-image", ("holds float32 values", "class ids 0..255")),
    ("corrupt-tag", ("GEOPROTO_CLASSES tag is corrupt", "remove the tag")),
    ("tag-not-object", ("GEOPROTO_CLASSES tag is corrupt",)),
])
def test_score_refuses_what_is_not_a_class_raster_by_name(tmp_path, kind, words):
    truth = _class_raster(tmp_path / "truth.tif", np.tile(np.array([1, 2], np.uint8), (64, 32)))
    if kind == "uint16-image":
        prediction = _class_raster(tmp_path / "p.tif", np.full((64, 64), 1000, np.uint16))
    elif kind == "float-image":
        prediction = _class_raster(tmp_path / "p.tif", np.full((64, 64), 0.5, np.float32), nodata=None)
    else:
        tag = '{"1": "a", ' if kind == "corrupt-tag" else '["a", "b"]'
        prediction = _class_raster(tmp_path / "p.tif", np.ones((64, 64), np.uint8), {"GEOPROTO_CLASSES": tag})
    result = CliRunner().invoke(main, ["score", prediction, "--truth", truth])
    assert result.exit_code == 1, result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: ") and "p.tif" in message and "unexpected" not in message
    for word in words:
        assert word in message


def test_score_prints_class_names_with_escapes_escaped(tmp_path):
    truth = _class_raster(tmp_path / "truth.tif", np.tile(np.array([1, 2], np.uint8), (64, 32)))
    prediction = _class_raster(tmp_path / "p.tif", np.tile(np.array([1, 2], np.uint8), (64, 32)),
                               {"GEOPROTO_CLASSES": json.dumps({"1": "class_1", "2": "evil\x1b]0;pwned\x07"})})
    result = CliRunner().invoke(main, ["score", prediction, "--truth", truth])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "evil\\x1b]0;pwned\\x07" in result.output


def test_score_warns_of_truth_pixels_of_ids_the_classes_file_does_not_name(tmp_path):
    """A classes file naming class 1 alone left the truth's class 2 pixels out of every score, unsaid."""
    ids = np.tile(np.array([1, 2], np.uint8), (64, 32))
    prediction = _class_raster(tmp_path / "p.tif", ids, {"GEOPROTO_CLASSES": json.dumps({1: "tree", 2: "ground"})})
    truth = _class_raster(tmp_path / "truth.tif", ids)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"1": "tree"}))
    result = CliRunner().invoke(main, ["score", prediction, "--truth", truth, "--classes", str(classes), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"Warning: {truth}: 2048 truth pixels hold class id(s) 2, not among the classes of "
                             f"--classes; left out of these scores\n")
    assert json.loads(result.stdout)["truth_pixels"] == 2048
    classes.write_text(json.dumps({"1": "tree", "2": "ground"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert score(prediction, truth, classes_file=str(classes))["truth_pixels"] == 4096
    # the same on the prediction's side: an edited geoproto raster holding an id its tag does not name
    edited = _class_raster(tmp_path / "edited.tif", np.where(ids == 2, 7, ids).astype(np.uint8),
                           {"GEOPROTO_CLASSES": json.dumps({1: "tree", 2: "ground"})})
    with pytest.warns(UserWarning, match="edited.tif: 2048 truth pixels are predicted as class id\\(s\\) 7, "
                                         "not among its class names; left out of these scores"):
        report = score(edited, truth, classes_file=str(classes))
    assert report["confusion"] == [[2048, 0], [0, 0]]


@pytest.mark.parametrize("dtype, nodata", [("uint16", 65535), ("int16", -9999)])
def test_score_of_a_prediction_whose_nodata_is_no_class_id(tmp_path, dtype, nodata):
    """It failed with "unexpected IndexError: index 65535 is out of bounds" (nodata looked up as a class)."""
    ids = np.tile(np.array([1, 2], np.uint8), (64, 32))
    truth = _class_raster(tmp_path / "truth.tif", ids, {"GEOPROTO_CLASSES": json.dumps({1: "class_1", 2: "class_2"})})
    predicted = ids.astype(dtype)
    predicted[:8] = nodata
    prediction = _class_raster(tmp_path / "p.tif", predicted, nodata=nodata)
    report = score(prediction, truth)
    assert report["confusion"] == [[56 * 32, 0], [0, 56 * 32]]
    assert (report["unpredicted_pixels"], report["truth_pixels"]) == (8 * 64, 64 * 64)


def test_score_refuses_a_renaming_without_a_new_name_or_given_twice(tmp_path):
    """--map tree= scored a class named ""; --map tree=a --map tree=b kept the last silently."""
    ids = np.tile(np.array([1, 2], np.uint8), (64, 32))
    classes = {"GEOPROTO_CLASSES": json.dumps({1: "tree", 2: "ground"})}
    prediction = _class_raster(tmp_path / "p.tif", ids, classes)
    truth = _class_raster(tmp_path / "truth.tif", ids, classes)
    result = CliRunner().invoke(main, ["score", prediction, "--truth", truth, "--map", "tree="])
    assert (result.exit_code, result.output) == (1, "Error: --map: tree=: gives 'tree' an empty name; write NAME=NEW\n")
    result = CliRunner().invoke(main, ["score", prediction, "--truth", truth, "--map", "tree=a", "--map", "tree=b"])
    assert result.exit_code == 2 and "'tree' is given twice (tree=a, tree=b); give it once" in result.output
    with pytest.raises(GeoprotoError, match="mapping: ground= : gives 'ground' an empty name"):
        score(prediction, truth, mapping={"ground": " "})


def test_score_table_columns_stay_aligned_with_long_class_names(tmp_path):
    """A name longer than 16 characters pushed its row's numbers out of their columns."""
    names = {"1": "Arbre/forêt très longue étiquette", "2": "sol"}
    ids = np.tile(np.array([1, 2], np.uint8), (64, 32))
    prediction = _class_raster(tmp_path / "p.tif", ids, {"GEOPROTO_CLASSES": json.dumps(names)})
    result = CliRunner().invoke(main, ["score", prediction, "--truth", prediction])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    table, confusion = lines[1:4], lines[5:7]
    assert len({len(line) for line in table}) == 1 and len({len(line) for line in confusion}) == 1
    assert table[1].startswith("Arbre/forêt très longue étiquette ") and table[2].endswith(" 2048")


def test_score_refuses_a_multiband_image_as_prediction(tmp_path):
    truth = _class_raster(tmp_path / "truth.tif", np.tile(np.array([1, 2], np.uint8), (64, 32)))
    with rasterio.open(tmp_path / "rgb.tif", "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:32616", transform=rasterio.transform.from_origin(500000, 3700000, 1, 1)) as dst:
        dst.write(np.full((3, 64, 64), 200, np.uint8))
    result = CliRunner().invoke(main, ["score", str(tmp_path / "rgb.tif"), "--truth", truth])
    assert result.exit_code == 1 and "rgb.tif: has 3 bands; a class raster has one band" in result.output


def test_evaluate_report_into_a_missing_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    import geoproto.cli.evaluate

    monkeypatch.setattr(geoproto.cli.evaluate, "load_dataset", lambda *a, **k: pytest.fail("evaluation started"))
    result = CliRunner().invoke(main, ["evaluate", "--dataset", "folder", "--root", str(tmp_path), "--report",
                                       str(tmp_path / "missing" / "report.json")])
    assert result.exit_code == 1
    assert result.output == f"Error: --report: {tmp_path / 'missing'}: output directory does not exist\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_evaluate_report_never_replaces_the_checkpoint(tmp_path, monkeypatch):
    import geoproto.cli.evaluate

    monkeypatch.setattr(geoproto.cli.evaluate, "load_dataset", lambda *a, **k: pytest.fail("evaluation started"))
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    result = CliRunner().invoke(main, ["evaluate", "--dataset", "folder", "--root", str(tmp_path), "--checkpoint",
                                       str(checkpoint), "--report", str(checkpoint)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: --report: {checkpoint}: is the input --checkpoint {checkpoint}; ")
    assert checkpoint.read_bytes() == b"weights"


def test_evaluate_report_that_exists_is_kept_unless_overwrite(tmp_path, monkeypatch):
    """As every other output: refused before any work, replaced only with --overwrite."""
    import geoproto.cli.evaluate
    from geoproto.errors import GeoprotoError

    def started(*args, **kwargs):
        raise GeoprotoError("evaluation started")

    monkeypatch.setattr(geoproto.cli.evaluate, "load_dataset", started)
    report = tmp_path / "report.json"
    report.write_text("{}")
    arguments = ["evaluate", "--dataset", "folder", "--root", str(tmp_path), "--report", str(report)]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 1
    assert result.output == f"Error: --report: {report}: exists; allow --overwrite to replace it\n"
    result = CliRunner().invoke(main, arguments + ["--overwrite"])
    assert result.output == "Error: evaluation started\n"
    assert report.read_text() == "{}"


def test_evaluate_refuses_a_shipped_encoder_beside_a_checkpoint_before_any_work(tmp_path, monkeypatch):
    """As segment does; without --encoder the checkpoint is the encoder."""
    import geoproto.cli.evaluate

    monkeypatch.setattr(geoproto.cli.evaluate, "load_dataset", lambda *a, **k: pytest.fail("evaluation started"))
    arguments = ["evaluate", "--dataset", "folder", "--root", str(tmp_path), "--checkpoint", str(tmp_path / "m.pt")]
    result = CliRunner().invoke(main, arguments + ["--encoder", "imagenet"])
    assert result.exit_code == 1
    assert result.output == ("Error: --encoder: imagenet is a shipped encoder and --checkpoint gives one of your "
                             "own: give one of them\n")
    from geoproto.errors import GeoprotoError

    def selected(encoder, *rest):
        raise GeoprotoError(f"selected {encoder!r}")

    monkeypatch.setattr(geoproto.cli.evaluate, "load_dataset", lambda *a, **k: None)
    monkeypatch.setattr(geoproto.cli.evaluate, "select_encoder", selected)
    assert CliRunner().invoke(main, arguments).output == "Error: selected None\n"


def test_evaluate_refuses_a_shipped_encoder_beside_another_backbone_before_any_work(tmp_path, monkeypatch):
    """The shipped encoders are EfficientNet-Lite0s: --backbone resnet50 silently won over --encoder imagenet."""
    import geoproto.cli.evaluate

    monkeypatch.setattr(geoproto.cli.evaluate, "load_dataset", lambda *a, **k: pytest.fail("evaluation started"))
    arguments = ["evaluate", "--dataset", "folder", "--root", str(tmp_path), "--backbone", "resnet50"]
    result = CliRunner().invoke(main, arguments + ["--encoder", "imagenet"])
    assert result.exit_code == 1
    assert result.output == ("Error: --encoder: imagenet is a shipped encoder, on efficientnet-lite0, and --backbone "
                             "resnet50 is another architecture: give one of them\n")


def test_evaluate_encoder_auto_is_refused(tmp_path, monkeypatch):
    """``auto`` needs support polygons: the library refuses it naming its parameter; evaluate neither offers
    nor describes it (its choices are the shipped encoders), and says so before any work."""
    import geoproto.cli.evaluate
    from geoproto.errors import GeoprotoError
    from geoproto.models import select_encoder

    with pytest.raises(GeoprotoError, match="^encoder: auto chooses by cross-validating support polygons") as info:
        select_encoder("auto", "efficientnet-lite0", None, None)
    assert info.value.param == "encoder"
    monkeypatch.setattr(geoproto.cli.evaluate, "load_dataset", lambda *a, **k: pytest.fail("evaluation started"))
    result = CliRunner().invoke(main, ["evaluate", "--dataset", "folder", "--root", str(tmp_path), "--encoder", "auto"])
    assert result.exit_code == 2
    assert "Invalid value for '--encoder': 'auto' is not one of 'imagenet', 'dubai', 'imagenet+dubai'" in result.output
    assert "auto" not in CliRunner().invoke(main, ["evaluate", "--help"]).output.split("--encoder")[1].split("--")[0]


def test_evaluate_refuses_a_nan_alpha_from_python():
    from geoproto.errors import GeoprotoError

    with pytest.raises(GeoprotoError, match="alpha: must be a finite number, got nan"):
        evaluate(None, None, 1, [0], None, False, None, alpha=float("nan"))


def test_score_reads_class_names_of_a_class_raster_truth(tmp_path):
    truth = np.ones((64, 64), np.uint8)
    truth[:, 32:] = 2
    # The same map with the ids swapped, as another geoproto run may number the classes.
    prediction = np.where(truth == 1, 2, 1).astype(np.uint8)
    prediction[:16] = 0  # left as nodata: a quarter of the truth
    _class_raster(tmp_path / "p.tif", prediction, {"GEOPROTO_CLASSES": json.dumps({2: "tree", 1: "ground"})})
    _class_raster(tmp_path / "geoproto.tif", truth, {"GEOPROTO_CLASSES": json.dumps({1: "tree", 2: "ground"})})
    _class_raster(tmp_path / "qgis.tif", truth, categories=["nodata", "tree", "ground"])
    for truth_path in ("geoproto.tif", "qgis.tif"):  # GEOPROTO_CLASSES, or GDAL category names
        report = score(str(tmp_path / "p.tif"), str(tmp_path / truth_path))
        assert report["class_names"] == ["tree", "ground"] and report["overall_accuracy"] == 1.0
        assert (report["unpredicted_pixels"], report["unpredicted_share"]) == (16 * 64, 0.25)
    result = CliRunner().invoke(main, ["score", str(tmp_path / "p.tif"), "--truth", str(tmp_path / "qgis.tif")])
    assert result.exit_code == 0, result.output
    assert "the prediction is nodata on 1024 truth pixels (25.00 %), left out of these scores" in result.stderr


def test_score_refuses_classes_that_pair_nothing_naming_both_sides(tmp_path):
    """A truth raster of bare ids against a geoproto result scored 0 everywhere, and a --map typo paired
    nothing: both looked like results."""
    ids = np.tile(np.array([1, 2], np.uint8), (64, 32))
    prediction = _class_raster(tmp_path / "p.tif", ids, {"GEOPROTO_CLASSES": json.dumps({1: "tree", 2: "ground"})})
    truth = _class_raster(tmp_path / "truth.tif", ids)
    sides = f"the truth {truth} ('class_1', 'class_2')", f"the prediction {prediction} ('tree', 'ground')"
    result = CliRunner().invoke(main, ["score", prediction, "--truth", truth])
    assert result.exit_code == 1
    assert result.output == (f"Error: no class of {sides[0]} is named as one of {sides[1]}, so every score would be "
                             f"0: name the truth raster's classes (--classes) or pair them with --map (e.g. "
                             f"class_1=tree)\n")
    result = CliRunner().invoke(main, ["score", prediction, "--truth", truth, "--map", "class_1=tree",
                                       "--map", "clas_2=ground"])
    assert result.exit_code == 1
    assert result.output == f"Error: --map: clas_2=ground: 'clas_2' is no class of {sides[0]} nor of {sides[1]}\n"
    report = score(prediction, truth, mapping={"class_1": "tree", "class_2": "ground"})
    assert report["class_names"] == ["tree", "ground"] and report["overall_accuracy"] == 1.0


def test_score_of_a_prediction_without_a_class_says_it_is_all_nodata(tmp_path):
    """It failed with 'unexpected IndexError' while looking for a class name both sides share."""
    truth = _class_raster(tmp_path / "truth.tif", np.tile(np.array([1, 2], np.uint8), (64, 32)),
                          {"GEOPROTO_CLASSES": json.dumps({1: "tree", 2: "ground"})})
    prediction = _class_raster(tmp_path / "p.tif", np.zeros((64, 64), np.uint8))
    report = score(prediction, truth)
    assert (report["unpredicted_pixels"], report["unpredicted_share"]) == (64 * 64, 1.0)
    # the text report said "overall accuracy None  kappa None ..."
    result = CliRunner().invoke(main, ["score", prediction, "--truth", truth])
    assert result.exit_code == 0 and result.stdout.splitlines()[0] == (
        "overall accuracy n/a  kappa n/a  mean IoU n/a  mean F1 n/a")


@pytest.mark.parametrize("option, value", [("--background", "tree"), ("--class-field", "kind"),
                                           ("--truth-crs", "EPSG:4326"), ("--layer", "truth")])
def test_score_refuses_polygon_options_with_a_truth_raster(tmp_path, option, value):
    """They were ignored: --background tree did not make unlabelled truth pixels tree."""
    ids = np.tile(np.array([1, 2], np.uint8), (64, 32))
    classes = {"GEOPROTO_CLASSES": json.dumps({1: "tree", 2: "ground"})}
    prediction = _class_raster(tmp_path / "p.tif", ids, classes)
    truth = _class_raster(tmp_path / "truth.tif", ids, classes)
    result = CliRunner().invoke(main, ["score", prediction, "--truth", truth, option, value])
    assert result.exit_code == 1
    assert result.output == (f"Error: {option}: applies to polygon truth; {truth} is a raster (its unlabelled "
                             f"pixels, 0 or nodata, are left out)\n")


def test_score_names_its_own_options_in_errors_reading_polygon_truth(tmp_path):
    """A truth vector without a CRS said "support_crs: ...", an option score does not have."""
    from shapely.geometry import box

    prediction = _class_raster(tmp_path / "p.tif", np.ones((64, 64), np.uint8),
                               {"GEOPROTO_CLASSES": json.dumps({1: "tree"})})
    truth = tmp_path / "truth.gpkg"
    geopandas.GeoDataFrame({"class": ["tree"]}, geometry=[box(500010, 3699950, 500030, 3699970)]).to_file(truth)
    result = CliRunner().invoke(main, ["score", prediction, "--truth", str(truth)])
    assert result.exit_code == 1
    assert result.output == (f"Error: --truth-crs: {truth}: has no CRS while the raster has one; state the vector's "
                             f"CRS\n")
    report = score(prediction, str(truth), truth_crs="EPSG:32616")
    assert report["overall_accuracy"] == 1.0 and report["truth_pixels"] == 400


def test_score_reads_the_named_layer_of_a_truth_file_of_several(tmp_path):
    """A GeoPackage of two layers could not be scored: "layer: ... has 2 layers; choose one", with no option to."""
    from shapely.geometry import box

    ids = np.tile(np.array([1, 2], np.uint8), (64, 32))
    prediction = _class_raster(tmp_path / "p.tif", ids, {"GEOPROTO_CLASSES": json.dumps({1: "tree", 2: "ground"})})
    truth = tmp_path / "truth.gpkg"
    geopandas.GeoDataFrame({"class": ["tree", "ground"]}, crs="EPSG:32616", geometry=[
        box(500000, 3699936, 500001, 3700000), box(500001, 3699936, 500002, 3700000)]).to_file(truth, layer="survey")
    geopandas.GeoDataFrame({"class": ["ground"]}, crs="EPSG:32616", geometry=[
        box(500000, 3699936, 500001, 3700000)]).to_file(truth, layer="draft")
    result = CliRunner().invoke(main, ["score", prediction, "--truth", str(truth)])
    assert (result.exit_code, result.output) == (1, f"Error: --layer: {truth}: has 2 layers (survey, draft); "
                                                    f"choose one\n")
    report = score(prediction, str(truth), layer="survey")
    assert report["confusion"] == [[64, 0], [0, 64]]
    draft = score(prediction, str(truth), layer="draft")  # its one polygon: ground over predicted tree
    assert (draft["class_names"], draft["confusion"]) == (["ground", "tree"], [[0, 64], [0, 0]])


def test_score_refuses_point_truth_naming_no_option_it_lacks(tmp_path):
    """It said "buffer: ... (a buffer distance turns points and lines into polygons)", which score has not."""
    from shapely.geometry import Point

    prediction = _class_raster(tmp_path / "p.tif", np.ones((64, 64), np.uint8), {"GEOPROTO_CLASSES": '{"1": "tree"}'})
    truth = tmp_path / "truth.gpkg"
    geopandas.GeoDataFrame({"class": ["tree"]}, geometry=[Point(500010, 3699950)], crs="EPSG:32616").to_file(truth)
    result = CliRunner().invoke(main, ["score", prediction, "--truth", str(truth)])
    assert (result.exit_code, result.output) == (1, f"Error: --truth: {truth}: polygon truth is rasterised onto the "
                                                    f"prediction's pixels; found Point (buffer them into polygons "
                                                    f"first)\n")


def test_score_of_a_prediction_without_crs_against_polygons_in_one_says_what_to_give(tmp_path):
    """It said "--assume-crs: ... state the raster's CRS", an option score does not have."""
    from shapely.geometry import box

    from synthetic import write_raster

    prediction = str(write_raster(tmp_path / "p.tif", np.ones((1, 64, 64), np.uint8), crs=None,
                                  transform=rasterio.transform.from_origin(500000, 3700000, 1, 1)))
    truth = tmp_path / "truth.gpkg"
    geopandas.GeoDataFrame({"class": ["class_1"]}, geometry=[box(500010, 3699950, 500030, 3699970)],
                           crs="EPSG:32616").to_file(truth)
    result = CliRunner().invoke(main, ["score", prediction, "--truth", str(truth)])
    assert result.exit_code == 1
    assert result.output == (f"Error: PREDICTION: {truth}: is in WGS 84 / UTM zone 16N but the prediction {prediction} "
                             f"has no CRS; give it its CRS (gdal_edit.py -a_srs EPSG:...)\n")


@pytest.fixture
def truth_handles(monkeypatch):
    """Every handle a label raster opens (the file, and the WarpedVRT onto another grid), recorded."""
    import geoproto.support

    handles = []

    def recorded(opener):
        def open_and_record(*args, **kwargs):
            handles.append(opener(*args, **kwargs))
            return handles[-1]
        return open_and_record

    for name in ("open_raster", "WarpedVRT"):
        monkeypatch.setattr(geoproto.support, name, recorded(getattr(geoproto.support, name)))
    return handles


@pytest.mark.parametrize("origin", [(500000, 3700000), (500016, 3699984)], ids=["same-grid", "warped"])
def test_score_closes_the_truth_raster(tmp_path, truth_handles, origin):
    from synthetic import write_raster

    classes = {"GEOPROTO_CLASSES": json.dumps({1: "tree", 2: "ground"})}
    prediction = _class_raster(tmp_path / "p.tif", np.tile(np.array([1, 2], np.uint8), (64, 32)), classes)
    truth = write_raster(tmp_path / "truth.tif", np.tile(np.array([1, 2], np.uint8), (1, 64, 32)), nodata=0,
                         transform=rasterio.transform.from_origin(*origin, 1, 1))
    with rasterio.open(truth, "r+") as dst:
        dst.update_tags(**classes)
    report = score(prediction, str(truth))
    assert report["class_names"] == ["tree", "ground"] and report["truth_pixels"] > 0
    assert len(truth_handles) == (1 if origin == (500000, 3700000) else 2)
    assert all(handle.closed for handle in truth_handles)


def test_score_closes_a_truth_raster_it_refuses(tmp_path, truth_handles):
    prediction = _class_raster(tmp_path / "p.tif", np.ones((64, 64), np.uint8),
                               {"GEOPROTO_CLASSES": json.dumps({1: "tree"})})
    truth = _class_raster(tmp_path / "truth.tif", np.zeros((64, 64), np.uint8))
    with pytest.raises(GeoprotoError, match=f"{truth}: holds no labelled pixel"):
        score(prediction, truth)
    assert truth_handles and all(handle.closed for handle in truth_handles)


def test_option_names_mean_one_thing_across_commands():
    """--classes is a JSON file, --bands band numbers, --json a stdout flag, in every command."""
    runner = CliRunner()
    evaluate_help = runner.invoke(main, ["evaluate", "--help"]).output
    assert "--class-names" in evaluate_help and "--isprs-bands" in evaluate_help and "--report" in evaluate_help
    assert "--classes " not in evaluate_help and "--bands " not in evaluate_help
    assert "--isprs-bands" in runner.invoke(main, ["train", "--help"]).output
    wrong = runner.invoke(main, ["evaluate", "--dataset", "folder", "--root", ".", "--classes", "a,b"])
    assert wrong.exit_code == 2 and "No such option '--classes'. (Did you mean one of: '--class-names'" in wrong.output


@pytest.mark.slow
def test_evaluate_with_either_crf_backend_scores_within_the_agreement_bar(dubai):
    """The torch CRF and pydensecrf2 at equal settings: labels of every query patch (as ``on_patch``
    receives them) agree on >= 97 % of the pixels, overall accuracy within 0.5 points, no class's F1 more
    than 1 point worse (measured: 97.5 % of the labels, OA 51.08 against 51.32, F1 within 0.32 points)."""
    import torch

    data = load_dataset("folder", str(dubai), holdout="image_part_001t6$")
    data.splits["train"] = [n for n in data.splits["train"] if n.endswith("t1")][:2]
    encoder = build_encoder()[0]
    labels = {"torch": {}, "densecrf": {}}

    def collect(backend):
        def on_patch(seed, number, predicted):
            labels[backend][seed, number] = predicted
        return on_patch

    reports = {backend: evaluate(data, encoder, 1, [0], None, True, torch.device("cpu"), progress=False,
                                 crf_backend=backend, on_patch=collect(backend)) for backend in labels}
    assert reports["torch"]["crf_backend"] == "torch" and reports["densecrf"]["crf_backend"] == "densecrf"
    assert list(labels["torch"]) == [(0, n) for n in range(reports["torch"]["query_patches"])] == list(labels["densecrf"])
    torch_labels, reference_labels = (np.concatenate([p.ravel() for p in labels[b].values()]) for b in labels)
    assert set(np.unique(reference_labels)) <= set(range(1, len(reports["torch"]["classes"]) + 1))
    assert (torch_labels == reference_labels).mean() >= 0.97
    torch_run, reference = reports["torch"]["runs"][0], reports["densecrf"]["runs"][0]
    # The torch CRF's appearance kernel works on 2 x 2 blocks (crf_torch): the issue's bar, not equality.
    assert abs(torch_run["overall_accuracy"] - reference["overall_accuracy"]) <= 0.005
    assert all(torch_run["classes"][name]["f1"] >= scores["f1"] - 0.01 for name, scores in reference["classes"].items())


@pytest.mark.parametrize("options, pixels", [([], 72.0), (["--pixel-size", "0.09"], 40.0),
                                             (["--crf-bilateral-px", "20"], 20.0)])
def test_evaluate_sets_the_crf_kernel_from_the_ground_resolution(tmp_path, options, pixels):
    """As ``segment`` does (crf.params_for_resolution: 3.6 m, 8 to 80 px): from the dataset's
    georeferencing (5 cm here: 72 px), a pixel size given, or a width given in pixels."""
    from rasterio.transform import from_origin

    result = _evaluate_halves(tmp_path, {"crs": "EPSG:32632", "transform": from_origin(500000, 4000000, 0.05, 0.05)},
                              "--quiet", *options)
    report = json.loads(result.stdout)
    assert report["crf_bilateral_px"] == pixels
    assert report["mean"]["overall_accuracy"] > 0.9


def test_evaluate_says_when_the_crf_kernel_has_no_width_on_the_ground(tmp_path):
    """Images without georeferencing get the rule's floor of 8 px, said once in a warning naming the
    options that fix it; a pixel size or a width in pixels given, or no CRF, and nothing is said."""
    warned = _evaluate_halves(tmp_path, {"crs": None, "transform": None})
    assert json.loads(warned.stdout)["crf_bilateral_px"] == 8.0
    assert warned.stderr.count("Warning: ") == 1, warned.stderr
    assert (f"Warning: {tmp_path}: no pixel size in metres (no projected CRS, or a rotated grid), so the CRF's "
            f"appearance kernel is 8 px wide, the rule's 3.6 m only on 0.45 m pixels; on other imagery give the "
            f"pixel size (--pixel-size) or the kernel's width in pixels (--crf-bilateral-px)") in warned.stderr
    for options, pixels in ((["--pixel-size", "0.3"], 12.0), (["--crf-bilateral-px", "20"], 20.0),
                            (["--no-crf"], None)):
        given = _evaluate_halves(tmp_path, {"crs": None, "transform": None}, *options)
        assert json.loads(given.stdout).get("crf_bilateral_px") == pixels
        assert "Warning" not in given.stderr, (options, given.stderr)


def _evaluate_halves(folder, grid: dict, *options):
    """``evaluate --json`` (1 shot, seed 0) on a folder of two images whose left half is one class and
    right half another, written on ``grid`` (crs and transform)."""
    import synthetic

    rng = np.random.default_rng(0)
    ids = np.repeat(np.array([[1, 2]], np.uint8), 48, 0).repeat(24, 1)  # left half class 1, right half 2
    for name in ("a", "b"):
        image = (ids * 90 + rng.integers(0, 20, ids.shape)).astype(np.uint8)
        synthetic.write_raster(folder / "images" / f"{name}.tif", np.stack([image] * 3), **grid)
        synthetic.write_raster(folder / "masks" / f"{name}.tif", ids, transform=None)
    (folder / "classes.json").write_text(json.dumps({"1": "dark", "2": "bright"}))
    result = CliRunner().invoke(main, ["evaluate", "--dataset", "folder", "--root", str(folder), "--holdout", "^b$",
                                       "--shots", "1", "--seeds", "0", "--json", *options])
    assert result.exit_code == 0, result.output
    return result
