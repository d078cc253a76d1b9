"""Eq. 1-3 of the paper (geoproto.fewshot) against small tensors whose results are worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from geoproto.fewshot import DEFAULT_ALPHA, PrototypeAccumulator, class_probabilities, match_logits


def feature_map(*channels):
    """1 x C x h x w float tensor from C nested lists (one h x w grid per channel)."""
    return torch.tensor([list(channels)], dtype=torch.float32)


def label_map(*windows):
    """B x H x W integer labels from B nested lists."""
    return torch.tensor(list(windows), dtype=torch.long)


# --------------------------------------------------------------------------------------------------
# Eq. 1: masked average pooling, accumulated over windows
# --------------------------------------------------------------------------------------------------

def test_masked_average_same_size_by_hand():
    # Labels at the feature size, so the bilinear "upsampling" is the identity.
    features = feature_map([[1, 2], [3, 4]],
                           [[10, 20], [30, 40]])
    labels = label_map([[1, 1],
                        [2, 0]])
    acc = PrototypeAccumulator(num_classes=2, channels=2)
    acc.add(features, labels)
    # class 1: pixels (0,0) and (0,1) -> ((1+2)/2, (10+20)/2); class 2: pixel (1,0) -> (3, 30).
    # Pixel (1,1) is unlabelled: its (4, 40) must not leak into any prototype.
    expected = torch.tensor([[1.5, 15.0],
                             [3.0, 30.0]])
    torch.testing.assert_close(acc.prototypes(), expected)
    assert acc.prototypes().dtype == torch.float32
    assert acc.pixels.tolist() == [2, 1]
    assert acc.windows.tolist() == [1, 1]


def test_unlabelled_pixels_are_ignored_not_background():
    features = feature_map([[100, 1], [-100, 3]])
    labels = label_map([[0, 1],
                        [0, 1]])
    acc = PrototypeAccumulator(num_classes=1, channels=1)
    acc.add(features, labels)
    torch.testing.assert_close(acc.prototypes(), torch.tensor([[2.0]]))
    assert acc.pixels.tolist() == [2]


def test_class_in_one_of_two_windows_is_averaged_over_windows_holding_it():
    # Window A: class 1 on three pixels, class 2 on one pixel.
    features_a = feature_map([[1, 2], [3, 4]],
                             [[0, 0], [0, 6]])
    labels_a = [[1, 1],
                [1, 2]]
    # Window B: class 1 on one pixel only, class 2 absent.
    features_b = feature_map([[10, 99], [99, 99]],
                             [[8, 99], [99, 99]])
    labels_b = [[1, 0],
                [0, 0]]
    # class 1: window means (2, 0) and (10, 8) -> prototype (6, 4).
    #   (pixel-weighted would be ((1+2+3+10)/4, 8/4) = (4, 2): eq. 1 is a mean of window means.)
    # class 2: only window A holds it -> (4, 6), not halved by the window that lacks it.
    expected = torch.tensor([[6.0, 4.0],
                             [4.0, 6.0]])

    one_batch = PrototypeAccumulator(2, 2)
    one_batch.add(torch.cat([features_a, features_b]), label_map(labels_a, labels_b))
    torch.testing.assert_close(one_batch.prototypes(), expected)
    assert one_batch.pixels.tolist() == [4, 1]
    assert one_batch.windows.tolist() == [2, 1]

    # The same through two separate add() calls (one window per batch).
    two_calls = PrototypeAccumulator(2, 2)
    two_calls.add(features_a, label_map(labels_a))
    two_calls.add(features_b, label_map(labels_b))
    torch.testing.assert_close(two_calls.prototypes(), expected)
    assert two_calls.pixels.tolist() == [4, 1]
    assert two_calls.windows.tolist() == [2, 1]


def test_window_without_labels_changes_nothing():
    acc = PrototypeAccumulator(2, 1)
    acc.add(feature_map([[5, 5], [5, 5]]), label_map([[2, 0], [0, 0]]))
    acc.add(feature_map([[1000, 1000], [1000, 1000]]), label_map([[0, 0], [0, 0]]))
    torch.testing.assert_close(acc.prototypes(), torch.tensor([[0.0], [5.0]]))
    assert acc.pixels.tolist() == [0, 1]
    assert acc.windows.tolist() == [0, 1]


def test_class_without_pixels_has_zero_prototype_and_zero_counts():
    acc = PrototypeAccumulator(3, 2)
    acc.add(feature_map([[1, 1], [1, 1]], [[2, 2], [2, 2]]), label_map([[1, 1], [3, 3]]))
    protos = acc.prototypes()
    torch.testing.assert_close(protos[1], torch.zeros(2))
    assert acc.pixels.tolist() == [2, 0, 2]
    assert acc.windows.tolist() == [1, 0, 1]


def test_labels_outside_1_to_k_are_ignored_and_uint8_labels_work():
    features = feature_map([[1, 2], [3, 4]])
    labels = torch.tensor([[[1, 7], [255, 1]]], dtype=torch.uint8)
    acc = PrototypeAccumulator(1, 1)
    acc.add(features, labels)
    torch.testing.assert_close(acc.prototypes(), torch.tensor([[2.5]]))  # (1 + 4) / 2
    assert acc.pixels.tolist() == [2]


def test_pixels_count_every_labelled_pixel_across_windows():
    acc = PrototypeAccumulator(2, 1)
    labels = label_map([[1, 1, 2], [0, 2, 2]], [[2, 2, 2], [2, 2, 1]])
    acc.add(torch.zeros(2, 1, 2, 3), labels)
    assert acc.pixels.tolist() == [3, 8]
    assert acc.windows.tolist() == [2, 2]


# Bilinear, align_corners=False, 2 -> 4: output i samples source (i + 0.5) / 2 - 0.5, clamped at 0,
# i.e. -0.25 -> 0, 0.25, 0.75, 1.25 -> 1. As a matrix acting on a length-2 vector:
UPSAMPLE_2_TO_4 = torch.tensor([[1.0, 0.0],
                                [0.75, 0.25],
                                [0.25, 0.75],
                                [0.0, 1.0]])


def test_hand_upsampling_matrix_is_torch_bilinear():
    grid = torch.tensor([[0.0, 4.0], [8.0, 12.0]])
    by_hand = UPSAMPLE_2_TO_4 @ grid @ UPSAMPLE_2_TO_4.T
    expected = torch.tensor([[0.0, 1.0, 3.0, 4.0],
                             [2.0, 3.0, 5.0, 6.0],
                             [6.0, 7.0, 9.0, 10.0],
                             [8.0, 9.0, 11.0, 12.0]])
    torch.testing.assert_close(by_hand, expected)
    torch.testing.assert_close(
        F.interpolate(grid[None, None], (4, 4), mode="bilinear", align_corners=False)[0, 0], expected)


def test_features_upsampled_bilinearly_to_label_size():
    # 2x2 features, 4x4 labels. Channel 0 upsamples to
    #   [[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]]   (see the test above)
    # Channel 1 is constant 1 and stays 1 everywhere.
    features = feature_map([[0, 4], [8, 12]],
                           [[1, 1], [1, 1]])
    labels = label_map([[1, 1, 0, 0],
                        [1, 1, 3, 3],
                        [0, 0, 0, 0],
                        [0, 0, 0, 2]])
    acc = PrototypeAccumulator(3, 2)
    acc.add(features, labels)
    expected = torch.tensor([[(0 + 1 + 2 + 3) / 4, 1.0],   # class 1: top-left 2x2
                             [12.0, 1.0],                   # class 2: bottom-right pixel
                             [(5 + 6) / 2, 1.0]])           # class 3: row 1, columns 2-3
    torch.testing.assert_close(acc.prototypes(), expected)
    assert acc.pixels.tolist() == [4, 1, 2]


def test_upsampling_to_non_multiple_size_matches_interpolate():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 3, 4)
    labels = torch.randint(0, 3, (2, 7, 9))
    labels[:, 0, 0] = 1
    labels[:, 0, 1] = 2
    acc = PrototypeAccumulator(2, 3)
    acc.add(features, labels)
    up = F.interpolate(features, (7, 9), mode="bilinear", align_corners=False)
    expected = []
    for k in (1, 2):
        window_means = [up[b][:, labels[b] == k].mean(1) for b in range(2)]
        expected.append(torch.stack(window_means).mean(0))
    torch.testing.assert_close(acc.prototypes(), torch.stack(expected), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Eq. 2: cosine logits
# --------------------------------------------------------------------------------------------------

def test_cosine_logits_by_hand():
    # Three pixels in a 1x3 feature map: (1, 0), (0, 3), (1, 1); one antiparallel (-2, 0).
    features = feature_map([[1, 0, 1, -2]],
                           [[0, 3, 1, 0]])
    prototypes = torch.tensor([[2.0, 0.0],     # along x
                               [0.0, 5.0]])    # along y
    logits = match_logits(features, prototypes)
    assert logits.shape == (1, 2, 1, 4)
    a = DEFAULT_ALPHA
    r = a / math.sqrt(2)
    expected = torch.tensor([[[[a, 0.0, r, -a]],
                              [[0.0, a, r, 0.0]]]])
    torch.testing.assert_close(logits, expected)


def test_cosine_logits_scale_with_alpha_and_ignore_magnitude():
    features = feature_map([[3.0]], [[4.0]])           # (3, 4), |.| = 5
    prototypes = torch.tensor([[4.0, -3.0],            # orthogonal -> 0
                               [0.6, 0.8],             # parallel  -> alpha
                               [1.0, 0.0]])            # cos = 3/5
    logits = match_logits(features, prototypes, alpha=5.0)
    torch.testing.assert_close(logits[0, :, 0, 0], torch.tensor([0.0, 5.0, 3.0]))
    torch.testing.assert_close(match_logits(features * 1000, prototypes * 0.01, alpha=5.0), logits)


def test_default_alpha_is_20():
    assert DEFAULT_ALPHA == 20.0
    logits = match_logits(feature_map([[1.0]], [[1.0]]), torch.tensor([[7.0, 7.0]]))
    torch.testing.assert_close(logits.flatten(), torch.tensor([20.0]))


# --------------------------------------------------------------------------------------------------
# Eq. 3: softmax over classes at full size
# --------------------------------------------------------------------------------------------------

def test_class_probabilities_at_feature_size_by_hand():
    features = feature_map([[1, 0, 1]],
                           [[0, 1, 1]])
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    probs = class_probabilities(features, prototypes, (1, 3), alpha=2.0)
    p = 1 / (1 + math.exp(-2.0))  # softmax([2, 0])[0]
    expected = torch.tensor([[[[p, 1 - p, 0.5]],
                              [[1 - p, p, 0.5]]]])
    torch.testing.assert_close(probs, expected)


def test_class_probabilities_sum_to_one_and_argmax_is_nearest_prototype():
    torch.manual_seed(1)
    features = torch.randn(2, 8, 5, 6)
    prototypes = torch.randn(4, 8)
    probs = class_probabilities(features, prototypes, (5, 6))
    assert probs.shape == (2, 4, 5, 6)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 5, 6))
    assert bool((probs >= 0).all())
    cos = torch.einsum("bchw,kc->bkhw", F.normalize(features, dim=1), F.normalize(prototypes, dim=1))
    assert torch.equal(probs.argmax(1), cos.argmax(1))


def test_class_probabilities_upsample_class_scores_to_requested_size():
    torch.manual_seed(2)
    features = torch.randn(1, 6, 3, 3)
    prototypes = torch.randn(3, 6)
    probs = class_probabilities(features, prototypes, (24, 20), alpha=10.0)
    assert probs.shape == (1, 3, 24, 20)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 24, 20))
    logits = match_logits(features, prototypes, alpha=10.0)
    expected = F.interpolate(logits, (24, 20), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(probs, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_float_dtypes_are_accepted(dtype):
    features = feature_map([[1, 2], [3, 4]]).to(dtype)
    acc = PrototypeAccumulator(1, 1)
    acc.add(features, label_map([[1, 1], [0, 0]]))
    torch.testing.assert_close(acc.prototypes(), torch.tensor([[1.5]]))
    logits = match_logits(features, acc.prototypes().to(dtype))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, torch.full((1, 1, 2, 2), DEFAULT_ALPHA))
