"""DenseCRF: the torch backend against pydensecrf2 (the reference) on real imagery, batching, the guard."""

import sys
from pathlib import Path

import geopandas
import numpy as np
import pytest
import rasterio
import torch
from rasterio.features import rasterize

from geoproto import crf, crf_torch
from geoproto.errors import GeoprotoError
from geoproto.classes import read_class_file

WINDOW = 417


def _spacenet_window(spacenet: Path):
    """The 0.5 m panchromatic chip's top-left window (grey replicated to RGB, as segment reads it), with
    buildings / the rest as truth."""
    from geoproto.raster import RasterSource
    from geoproto.tiling import tile_grid

    source = RasterSource.open(str(spacenet / "sample_geotiff.tif"))
    with source.dataset as src:
        tile = tile_grid(src.height, src.width, WINDOW, 64)[0]
        image, _ = source.read(tile, WINDOW)
        transform = src.transform
    buildings = geopandas.read_file(spacenet / "geotiff_labels.geojson")
    truth = (rasterize(buildings.geometry, out_shape=(WINDOW, WINDOW), transform=transform) > 0).astype(int)
    return image, truth, 2


def _dubai_window(dubai: Path, name: str):
    """A 417 px crop of a real Dubai tile (RGB) and its mask as class indices."""
    info = read_class_file(str(dubai / "classes.json"))
    with rasterio.open(dubai / "images" / f"{name}.jpg") as src:
        image = src.read(window=((0, WINDOW), (0, WINDOW))).astype(np.float32) / 255
    with rasterio.open(dubai / "masks" / f"{name}.png") as src:
        mask = src.read(window=((0, WINDOW), (0, WINDOW))).transpose(1, 2, 0).astype(int)
    colours = np.array(info.colors)
    truth = np.abs(mask[:, :, None, :] - colours[None, None]).sum(-1).argmin(-1)
    return image, truth, len(colours)


def _both_backends(image, probabilities, params, appearance_stride=crf_torch.APPEARANCE_STRIDE):
    reference, reference_kept = crf.refine(crf.to_rgb8(image), probabilities, params)
    refined, kept = crf_torch.refine_batch(torch.from_numpy(image)[None], torch.from_numpy(probabilities)[None],
                                           params, appearance_stride=appearance_stride)
    return reference, reference_kept, refined[0].numpy(), kept[0]


def _f1_per_class(labels: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    hits = np.bincount(truth[labels == truth], minlength=classes)
    predicted, actual = np.bincount(labels.ravel(), minlength=classes), np.bincount(truth.ravel(), minlength=classes)
    return 2 * hits / np.maximum(predicted + actual, 1)


@pytest.mark.parametrize("window", ["spacenet", "image_part_005t2", "image_part_003t3"])
def test_torch_labels_agree_with_pydensecrf_on_real_imagery(spacenet, dubai, gpu_check, window):
    """Equal settings, real imagery (the 0.5 m grey chip at the 14.4 px kernel of 7.2 m; Dubai RGB at the
    rule's 12 px for 0.3 m), a CRF that changes a good share of the labels. Exact (stride 1), the torch
    lattice reproduces pydensecrf2's: labels agree on (nearly) every pixel (measured: all of them). With
    the default appearance blocks, the issue's bar: >= 97 % of the labels agree (measured 98.6-100 %),
    overall accuracy within 0.5 points and no class's F1 more than 1 point worse. (On 3 of 16 other Dubai
    windows a class under 1 % of the pixels lost 2.3-3.5 F1 points at 8 or 12 px while OA moved under 0.3:
    a few hundred pixels; ``benchmarks/crf_agreement.py`` measures whole areas.)"""
    if window == "spacenet":
        image, truth, classes = _spacenet_window(spacenet)
        params = crf.CRFParams(bilateral_sxy=crf.bilateral_sxy_pixels(7.2, 0.5))
    else:
        image, truth, classes = _dubai_window(dubai, window)
        params = crf.params_for_resolution(0.3)
    probabilities = gpu_check.noisy_probabilities(truth, classes, np.random.default_rng(len(window)))
    reference, reference_kept, exact, exact_kept = _both_backends(image, probabilities, params, appearance_stride=1)
    assert reference_kept and exact_kept
    changed = (reference.argmax(0) != probabilities.argmax(0)).mean()
    assert changed > 0.02, "the CRF must have had something to do for the comparison to mean anything"
    assert (exact.argmax(0) == reference.argmax(0)).mean() >= 0.999
    assert np.abs(exact - reference).max() < 1e-3

    refined, kept = crf_torch.refine_batch(torch.from_numpy(image)[None], torch.from_numpy(probabilities)[None],
                                           params)
    labels, reference_labels = refined[0].numpy().argmax(0), reference.argmax(0)
    assert kept[0]
    assert (labels == reference_labels).mean() >= 0.97
    assert (labels == truth).mean() >= (reference_labels == truth).mean() - 0.005
    assert np.all(_f1_per_class(labels, truth, classes) >= _f1_per_class(reference_labels, truth, classes) - 0.01)


@pytest.mark.parametrize("stride", [1, 2])
def test_batch_of_windows_matches_each_window_alone(dubai, gpu_check, stride):
    """Windows share one lattice (the window index is a key digit) and a cropped edge window is refined
    on its valid part only (its blocks too), as crf.refine refines the cropped window: batching changes
    nothing."""
    image, truth, classes = _dubai_window(dubai, "image_part_003t3")
    other = np.ascontiguousarray(image[:, ::-1, :])  # same colours elsewhere: vertices that would collide
    probabilities = gpu_check.noisy_probabilities(truth, classes, np.random.default_rng(1))
    images = torch.from_numpy(np.stack([image, other]))
    batch = torch.from_numpy(np.stack([probabilities, probabilities[:, ::-1, :].copy()]))
    params = crf.CRFParams(bilateral_sxy=24.0)
    sizes = [(WINDOW, WINDOW), (301, 250)]
    together, kept = crf_torch.refine_batch(images, batch, params, sizes, appearance_stride=stride)
    alone = crf_torch.refine_batch(images[:1], batch[:1], params, appearance_stride=stride)[0][0]
    cropped = crf_torch.refine_batch(images[1:, :, :301, :250].contiguous(), batch[1:, :, :301, :250].contiguous(),
                                     params, appearance_stride=stride)[0][0]
    assert kept == [True, True]
    assert torch.allclose(together[0], alone, atol=1e-5)
    assert torch.allclose(together[1, :, :301, :250], cropped, atol=1e-5)
    assert torch.equal(together[1, :, 301:], batch[1, :, 301:])  # outside the valid part: untouched
    if stride == 1:
        reference, _ = crf.refine(crf.to_rgb8(other[:, :301, :250]), batch[1, :, :301, :250].numpy(), params)
        assert np.abs(together[1, :, :301, :250].numpy() - reference).max() < 1e-3


def test_backend_resolution(monkeypatch):
    """auto: torch on either device (faster than pydensecrf2's pool on a CPU too); asking for densecrf
    without it fails early, naming the fix."""
    assert crf.resolve_backend("auto") == "torch"
    assert crf.resolve_backend("torch") == "torch" and crf.resolve_backend("densecrf") == "densecrf"
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import pydensecrf... raises ImportError
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    assert crf.resolve_backend("auto") == "torch"
    with pytest.raises(GeoprotoError, match=r"crf_backend: densecrf needs pydensecrf2.*geoproto\[crf\]"):
        crf.resolve_backend("densecrf")
    with pytest.raises(GeoprotoError, match="crf_backend: 'gpu': choose auto, torch, densecrf"):
        crf.resolve_backend("gpu")


def test_lattice_sorted_for_cuda_is_valid_csr_and_filters_alike():
    """On the CPU the slice's columns stay in vertex order (MKL takes them so); sorted, as CUDA's sparse
    products want, the matrices are valid CSR (sorted, unique columns per row) and filter the same."""
    rng = np.random.default_rng(0)
    colours = torch.from_numpy(rng.integers(0, 255, (3, 40, 50)).astype(np.float32))
    features = torch.cat([crf_torch._pixel_grid(40, 50, 5.0, "cpu"), colours.reshape(3, -1).T / 13.0], 1)
    segments = torch.arange(40 * 50) // 1000
    lattice = crf_torch.Lattice(features, segments, sorted_columns=True).normalise(10.0)
    for matrix in [lattice._splat, lattice._slice]:
        torch.sparse_csr_tensor(matrix.crow_indices(), matrix.col_indices(), matrix.values(), matrix.shape,
                                check_invariants=True)  # raises if not
    values = torch.from_numpy(rng.random((40 * 50, 3)).astype(np.float32))
    unsorted = crf_torch.Lattice(features, segments, sorted_columns=False).normalise(10.0)
    assert torch.allclose(lattice.filter(values), unsorted.filter(values), rtol=1e-5, atol=1e-6)


def test_key_table_finds_present_keys_and_only_them():
    """The vectorised hash table: keys crowded into a small range collide at every level; each present
    query gets its key's index, each absent one the missing marker."""
    rng = np.random.default_rng(1)
    keys = torch.from_numpy(rng.choice(2 ** 40, 5000, replace=False))
    table = crf_torch._KeyTable(keys)
    assert len(table.levels) > 1  # collisions happened and were resolved
    absent = torch.from_numpy(np.setdiff1d(rng.integers(0, 2 ** 40, 3000), keys.numpy()))
    queries = torch.cat([keys[torch.randperm(5000)], absent]).view(2, -1)
    found = table.find(queries, -1)
    expected = {int(k): i for i, k in enumerate(keys)}
    assert found.tolist() == [[expected.get(int(q), -1) for q in row] for row in queries]


def test_kernel_too_narrow_for_the_lattice_is_a_clear_error():
    image = torch.rand(1, 3, 64, 64)
    probabilities = torch.softmax(torch.rand(1, 2, 64, 64), 1)
    with pytest.raises(GeoprotoError, match="crf_backend: DenseCRF kernel widths too small.*crf_bilateral_srgb"):
        crf_torch.refine_batch(image, probabilities, crf.CRFParams(bilateral_sxy=0.01, bilateral_srgb=0.01))


# --- the guard against collapse, and the kernels per ground resolution ---------------------------------

def _refine_unguarded_and_guarded(image, probabilities, params):
    """(unguarded refined labels, whether the guard keeps them) with the torch backend, and the guarded
    result of both backends (which must agree)."""
    import dataclasses

    unguarded = dataclasses.replace(params, guard_keep=0.0, collapse_lost=1.0)
    refined = crf_torch.refine_batch(torch.from_numpy(image)[None], torch.from_numpy(probabilities)[None],
                                     unguarded)[0][0].numpy()
    return refined.argmax(0), _both_backends(image, probabilities, params)


def test_guard_vetoes_a_window_collapsing_into_one_class():
    """Flat colours, three classes, two of them winning by a hair (30 % and 15 % of the window): the
    paper's kernels (80 px, colour range 13, weight 10) turn the window into one class; both backends
    keep its unrefined labels. The kernels of the resolution rule leave all three classes."""
    image = np.full((3, WINDOW, WINDOW), 0.5, np.float32)
    probabilities = np.full((3, WINDOW, WINDOW), 0.1, np.float32)
    probabilities[0] = 0.8
    probabilities[:, :, 230:355] = np.array([0.3, 0.4, 0.3], np.float32)[:, None, None]
    probabilities[:, :, 355:] = np.array([0.3, 0.3, 0.4], np.float32)[:, None, None]
    paper = crf.CRFParams(bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0)
    collapsed, (reference, reference_kept, refined, kept) = _refine_unguarded_and_guarded(image, probabilities, paper)
    assert np.all(collapsed == 0)  # what the guard prevents
    assert not reference_kept and not kept
    assert np.array_equal(refined, probabilities) and np.array_equal(reference, probabilities)
    labels, (_, _, _, kept) = _refine_unguarded_and_guarded(image, probabilities, crf.params_for_resolution(0.3))
    assert kept and set(np.unique(labels)) == {0, 1, 2}


def test_guard_lets_a_window_lose_a_speckle_class(dubai, gpu_check):
    """A real Dubai window whose model output has a false class speckled over 3 % of it in 3x3 blobs: the
    CRF erases the speckle and the window is refined (the former 2 % rule vetoed it), gaining accuracy."""
    image, truth, classes = _dubai_window(dubai, "image_part_003t3")
    probabilities = np.concatenate([gpu_check.noisy_probabilities(truth, classes, np.random.default_rng(3)),
                                    np.zeros((1, WINDOW, WINDOW), np.float32)])
    speckle = np.zeros((WINDOW, WINDOW), bool)
    for row, col in np.random.default_rng(0).integers(0, WINDOW - 3, (600, 2)):
        speckle[row:row + 3, col:col + 3] = True
    probabilities[classes][speckle] = 1.1 * probabilities[:classes].max(0)[speckle]
    probabilities /= probabilities.sum(0, keepdims=True)
    unrefined = probabilities.argmax(0)
    assert 0.025 < (unrefined == classes).mean() < 0.035
    params = crf.params_for_resolution(0.3)
    _, (reference, reference_kept, refined, kept) = _refine_unguarded_and_guarded(image, probabilities, params)
    assert reference_kept and kept
    assert (refined.argmax(0) == classes).mean() < 0.001
    assert (refined.argmax(0) == truth).mean() > (unrefined == truth).mean() + 0.05
    before, after = (np.bincount(p.argmax(0).ravel(), minlength=classes + 1) for p in (probabilities, refined))
    assert not crf.keeps_classes(before, after, crf.CRFParams(guard_share=0.02, guard_keep=0.2))


def test_guard_rule_on_counts():
    params = crf.CRFParams()
    assert crf.keeps_classes(np.array([600, 370, 30]), np.array([620, 380, 0]), params)  # a 3 % class vanishes
    assert crf.keeps_classes(np.array([800, 150, 50]), np.array([870, 130, 0]), params)  # 5 % gone, rest stays
    assert crf.keeps_classes(np.array([700, 220, 80]), np.array([760, 240, 0]), params)  # 8 %: may vanish
    assert not crf.keeps_classes(np.array([600, 300, 100]), np.array([600, 400, 0]), params)  # 10 % class gone
    assert not crf.keeps_classes(np.array([600, 300, 100]), np.array([760, 59, 181]), params)  # 30 % keeps < 20 %
    assert crf.keeps_classes(np.array([600, 300, 100]), np.array([640, 60, 300]), params)  # keeps 20 %
    assert not crf.keeps_classes(np.array([300, 700]), np.array([900, 100]), params)  # the dominant class goes
    # Two small classes together 12 %, erased: the window is left one class.
    assert not crf.keeps_classes(np.array([880, 60, 60]), np.array([1000, 0, 0]), params)
    # A window that was one class with a little noise may become one class.
    assert crf.keeps_classes(np.array([950, 30, 20]), np.array([1000, 0, 0]), params)
    assert crf.keeps_classes(np.zeros(3, int), np.zeros(3, int), params)  # an empty window: nothing to guard


def test_kernels_per_ground_resolution():
    """The wider of 3.6 m and 8 px (a feature cell), at most the paper's 80 px; a width asked for in
    metres is honoured down to 3 px; explicit fields win."""
    assert crf.params_for_resolution(0.09).bilateral_sxy == pytest.approx(40.0)  # the paper's 9 cm tiles
    assert crf.params_for_resolution(0.15).bilateral_sxy == pytest.approx(24.0)
    assert crf.params_for_resolution(0.3).bilateral_sxy == pytest.approx(12.0)  # Dubai
    for coarse in (0.5, 30.0):  # SpaceNet, Landsat: the 8 px floor
        assert crf.params_for_resolution(coarse).bilateral_sxy == pytest.approx(8.0)
    assert crf.params_for_resolution(0.01).bilateral_sxy == pytest.approx(80.0)
    assert crf.params_for_resolution(None).bilateral_sxy == pytest.approx(8.0)
    assert crf.params_for_resolution(0.5, bilateral_m=3.0).bilateral_sxy == pytest.approx(6.0)
    assert crf.params_for_resolution(30.0, bilateral_m=7.2).bilateral_sxy == pytest.approx(3.0)
    params = crf.params_for_resolution(0.5, bilateral_sxy=40.0, bilateral_srgb=13.0)
    assert (params.bilateral_sxy, params.bilateral_srgb, params.bilateral_compat) == (40.0, 13.0, 5.0)
    with pytest.raises(GeoprotoError, match="CRF bilateral_srgb"):
        crf.params_for_resolution(0.5, bilateral_srgb=float("nan"))


def test_a_width_in_metres_needs_a_metric_pixel_size():
    """Without a metric grid (no projected CRS, or rotated) metres cannot become pixels: the width asked for
    is refused, not replaced by another, unless a width in pixels overrides it."""
    with pytest.raises(GeoprotoError, match=r"^crf_bilateral_m: 7.2 m cannot be converted to pixels: the raster has "
                                            r"no metric pixel size .*; give the width in pixels \(crf_bilateral_px\)"):
        crf.params_for_resolution(None, bilateral_m=7.2)
    assert crf.params_for_resolution(None, bilateral_m=7.2, bilateral_sxy=20.0).bilateral_sxy == pytest.approx(20.0)


@pytest.mark.slow
def test_crf_raises_accuracy_on_real_dubai_tiles(dubai):
    """The paper's protocol on real Dubai tiles (supports from area 1, queries from areas 2 and 3; area 6
    is the test split the benchmark measures once), the default encoder: CRF-on OA is above CRF-off OA
    and no class collapses. (Vegetation, small patches here, loses 6 of its 20 F1 points on these 8
    patches: measured, not hidden; on the 81 patches of validation area 5 no class lost F1.)"""
    from geoproto.evaluation import evaluate
    from geoproto.models import DEFAULT_ENCODER, build_shipped
    from geoproto.training import load_dataset

    data = load_dataset("folder", str(dubai), holdout="image_part_00(5t2|3t3)$")
    data.splits["train"] = [n for n in data.splits["train"] if n.endswith("t1")]
    assert sorted(data.splits["test"]) == ["image_part_003t3", "image_part_005t2"]
    encoder = build_shipped(DEFAULT_ENCODER)[0]
    off, on = (evaluate(data, encoder, 3, [0], None, refine, torch.device("cpu"), progress=False,
                        crf_params=crf.params_for_resolution(0.3), crf_backend="torch")["runs"][0]
               for refine in (False, True))
    assert on["overall_accuracy"] > off["overall_accuracy"]
    for name, scores in off["classes"].items():
        if scores["f1"] is not None:
            assert on["classes"][name]["f1"] >= 0.6 * scores["f1"], name
