"""benchmarks/gpu_check.py, the one-call GPU check: its correctness part runs on the CPU (CPU against CPU),
and its comparisons report a disagreement when one side is perturbed."""

import numpy as np
import pytest
import torch

from geoproto.fewshot import PrototypeAccumulator

SIZE = 417


@pytest.fixture(scope="module")
def windows(gpu_check, dubai):
    """Two real windows read with context, their true classes and the model's noisy stand-in."""
    images, truths, classes = gpu_check.dubai_windows(dubai, 2)
    rng = np.random.default_rng(0)
    probabilities = np.stack([gpu_check.noisy_probabilities(truth, classes, rng) for truth in truths])
    return images, truths, classes, torch.from_numpy(probabilities)


def test_real_windows_are_read_with_the_pipelines_context(gpu_check, windows):
    images, truths, classes, probabilities = windows
    assert images.shape == (2, 3, SIZE + 64, SIZE + 64) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert truths.shape == (2, SIZE, SIZE) and classes == 5
    assert len(np.unique(truths)) >= 3  # real masks, several classes
    assert probabilities.shape == (2, 5, SIZE, SIZE)
    assert torch.allclose(probabilities.sum(1), torch.ones(2, SIZE, SIZE), atol=1e-5)
    # The stand-in is noisy but mostly right: the CRF has errors to fix.
    agreement = (probabilities.argmax(1).numpy() == truths).mean()
    assert 0.6 < agreement < 0.99


def test_correctness_part_runs_on_the_cpu(gpu_check, dubai):
    """The whole of step 1 on 2 windows, the CPU as both sides: every comparison is there, computed over
    each window's valid part (the second is refined on its 301 x 250 top-left part, as an edge window)."""
    result = gpu_check.correctness(torch.device("cpu"), 2, root=dubai, spacenet=None)
    assert set(result["crf"]) == {"dubai 0.3 m", "dubai at 9 cm's kernel"}
    for row in result["crf"].values():
        assert row["pixels"] == SIZE * SIZE + 301 * 250
        assert row["labels_changed_by_crf"] > 0.02  # the CRF had work to do, so agreeing means something
        assert (row["labels_equal"], row["max_abs_diff"], row["guard_equal"]) == (1.0, 0.0, 2)
    assert result["crf"]["dubai 0.3 m"]["bilateral_sxy_px"] == 12.0
    assert result["encoder"]["channels"] == 152 and result["encoder"]["labels_equal"] == 1.0
    assert result["encoder"]["cosine_min"] == pytest.approx(1.0, abs=1e-5)
    both = result["model_and_crf"]
    assert both["labels_equal"] == 1.0 and both["truth_accuracy_device"] == both["truth_accuracy_reference"] > 0.5
    assert {name: row["channels"] for name, row in result["variants"].items()} == {"8 orientations": 152,
                                                                                   "multi-scale": 304}
    assert all(row["labels_equal"] == 1.0 and row["cosine_min"] == pytest.approx(1.0, abs=1e-5)
               for row in result["variants"].values())


def test_probability_comparison_reports_flipped_labels(gpu_check, windows):
    """A 100 x 100 block of the second window given another class: that share of labels differs and the
    largest difference is reported; outside the valid part a change does not count."""
    _, _, classes, probabilities = windows
    perturbed = probabilities.clone()
    block = probabilities[1, :, :100, :100]
    perturbed[1, :, :100, :100] = torch.nn.functional.one_hot((block.argmax(0) + 1) % classes, classes).permute(2, 0, 1)
    result = gpu_check.compare_probabilities(probabilities, perturbed)
    assert result["labels_equal"] == pytest.approx(1 - 100 * 100 / (2 * SIZE * SIZE))
    assert result["max_abs_diff"] == pytest.approx(float((perturbed - probabilities).abs().max()))
    assert result["max_abs_diff"] > 0.5
    assert gpu_check.compare_labels(probabilities.argmax(1), perturbed.argmax(1))["labels_equal"] == \
        result["labels_equal"]
    outside = probabilities.clone()
    outside[1, :, 350:, 300:] = perturbed[1, :, :67, :117]
    cropped = gpu_check.compare_probabilities(probabilities, outside, [(SIZE, SIZE), (301, 250)])
    assert (cropped["labels_equal"], cropped["max_abs_diff"]) == (1.0, 0.0)


def test_feature_comparison_reports_turned_features(gpu_check, windows):
    """Real features of the default encoder, with 10 x 10 cells of one window turned round (negated):
    cosine -1 there, the mean drops by that share, and those cells' pixels change labels."""
    images, truths, classes, _ = windows
    features = gpu_check.encode(gpu_check.build_extractor(torch.device("cpu")), images, 2)
    accumulator = PrototypeAccumulator(classes, features.shape[1])
    accumulator.add(features, torch.from_numpy(truths + 1))
    prototypes = accumulator.prototypes()
    same = gpu_check.compare_features(features, features.clone(), prototypes, SIZE)
    assert same["cosine_min"] == pytest.approx(1.0, abs=1e-5) and same["labels_equal"] == 1.0
    perturbed = features.clone()
    perturbed[0, :, :10, :10] *= -1
    result = gpu_check.compare_features(features, perturbed, prototypes, SIZE)
    cells = features.shape[-2] * features.shape[-1]
    assert result["cosine_min"] == pytest.approx(-1.0, abs=1e-5)
    assert result["cosine_mean"] == pytest.approx(1 - 2 * 100 / (2 * cells), abs=1e-5)
    assert 1 - 84 * 84 / (2 * SIZE * SIZE) <= result["labels_equal"] < 1 - 0.5 * 76 * 76 / (2 * SIZE * SIZE)
