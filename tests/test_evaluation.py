"""Metrics against hand-computed confusion matrices, the protocol's support sampling, and `score`."""

import json
from pathlib import Path

import geopandas
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.features import rasterize
from shapely.affinity import translate

from geoproto.cli import main
from geoproto.evaluation import evaluate, sample_supports, score
from geoproto.metrics import confusion_matrix, scores
from geoproto.models import build_encoder
from geoproto.tiling import Tile
from geoproto.training import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CHIP = SHARED / "spacenet-atlanta" / "sample_geotiff.tif"
BUILDINGS = SHARED / "spacenet-atlanta" / "geotiff_labels.geojson"


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


def _raster_from_buildings(path: Path, buildings) -> None:
    with rasterio.open(CHIP) as src:
        labels = np.where(rasterize(buildings.geometry, out_shape=src.shape, transform=src.transform) > 0, 1, 2)
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1, "dtype": "uint8",
                   "crs": src.crs, "transform": src.transform, "nodata": 0}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels.astype(np.uint8), 1)
        dst.update_tags(GEOPROTO_CLASSES=json.dumps({1: "building", 2: "other"}))


def test_score_spacenet_against_its_own_polygons(tmp_path):
    buildings = geopandas.read_file(BUILDINGS)[["geometry"]].assign(kind="building")
    buildings.to_file(tmp_path / "truth.gpkg")
    _raster_from_buildings(tmp_path / "exact.tif", buildings)
    report = score(str(tmp_path / "exact.tif"), str(tmp_path / "truth.gpkg"), "kind", background="other")
    assert report["classes"]["building"]["iou"] == 1.0 and report["overall_accuracy"] == 1.0

    # Every building shifted 2 m east: IoU drops to what the overlap of each footprint with itself gives.
    shifted = buildings.assign(geometry=buildings.geometry.apply(lambda g: translate(g, xoff=2.0)))
    _raster_from_buildings(tmp_path / "shifted.tif", shifted)
    report = score(str(tmp_path / "shifted.tif"), str(tmp_path / "truth.gpkg"), "kind", background="other")
    with rasterio.open(CHIP) as src:
        truth = rasterize(buildings.geometry, out_shape=src.shape, transform=src.transform) > 0
        moved = rasterize(shifted.geometry, out_shape=src.shape, transform=src.transform) > 0
    expected = (truth & moved).sum() / (truth | moved).sum()
    assert report["classes"]["building"]["iou"] == pytest.approx(expected, abs=1e-6)
    assert 0.3 < expected < 0.9


def test_score_cli_with_mapping_and_reprojected_truth(tmp_path):
    buildings = geopandas.read_file(BUILDINGS)[["geometry"]].assign(kind="house").to_crs("EPSG:4326")
    buildings.to_file(tmp_path / "truth.geojson")
    _raster_from_buildings(tmp_path / "exact.tif", buildings.to_crs("EPSG:32616"))
    result = CliRunner().invoke(main, ["score", str(tmp_path / "exact.tif"), "--truth", str(tmp_path / "truth.geojson"),
                                       "--class-field", "kind", "--map", "house=building", "--background", "other",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["class_names"] == ["building", "other"]
    assert report["classes"]["building"]["iou"] > 0.999


def test_evaluate_protocol_on_dubai_runs_and_is_reproducible():
    data = load_dataset("folder", str(SHARED / "dubai"), holdout="image_part_00[12]t6$")
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


def test_evaluate_with_either_crf_backend_gives_the_same_scores():
    """The torch CRF and pydensecrf2 at equal settings: the same confusion, so the same scores."""
    import torch

    data = load_dataset("folder", str(SHARED / "dubai"), holdout="image_part_001t6$")
    data.splits["train"] = [n for n in data.splits["train"] if n.endswith("t1")][:2]
    encoder = build_encoder()[0]
    reports = {backend: evaluate(data, encoder, 1, [0], None, True, torch.device("cpu"), progress=False,
                                 crf_backend=backend) for backend in ("torch", "densecrf")}
    assert reports["torch"]["crf_backend"] == "torch" and reports["densecrf"]["crf_backend"] == "densecrf"
    assert reports["torch"]["runs"][0]["classes"] == reports["densecrf"]["runs"][0]["classes"]
