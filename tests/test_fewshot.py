"""Eq. 1-3 of the paper (geoproto.fewshot) against small tensors whose results are worked out by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geoproto.fewshot import (DEFAULT_ALPHA, FEATURE_STRIDE, PrototypeAccumulator, class_probabilities,
                              masked_average_prototypes, match_logits, upsample_scores)


def feature_map(*channels):
    """1 x C x h x w float tensor from C nested lists (one h x w grid per channel)."""
    return torch.tensor([list(channels)], dtype=torch.float32)


def label_map(*windows):
    """B x H x W integer labels from B nested lists."""
    return torch.tensor(list(windows), dtype=torch.long)


def blocks(*windows):
    """B x 8h x 8w pixel labels from B nested lists of per-cell labels: each cell labels its 8 x 8 block."""
    return torch.tensor(np.kron(np.array(windows), np.ones((FEATURE_STRIDE, FEATURE_STRIDE))), dtype=torch.long)


def constant(*values, cells=(2, 2)):
    """1 x C x h x w features with the same value in every cell (they upsample to that value everywhere)."""
    return torch.tensor(values, dtype=torch.float32)[None, :, None, None].expand(1, len(values), *cells).clone()


def plain_prototypes(features, labels, num_classes):
    """Eq. 1 the plain way: features explicitly upsampled by 8 and cropped, then averaged over every
    labelled pixel of every window (pixel-weighted)."""
    up = F.interpolate(features, scale_factor=8, mode="bilinear", align_corners=False)[..., :labels.shape[1], :labels.shape[2]]
    rows = []
    for k in range(1, num_classes + 1):
        picked = torch.cat([up[b][:, labels[b] == k] for b in range(len(features))], 1)
        rows.append(picked.mean(1))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------------
# Eq. 1: masked average pooling, accumulated over windows
# --------------------------------------------------------------------------------------------------

def test_masked_average_of_constant_features_by_hand():
    # Class 1 on two blocks, class 2 on one, the fourth block unlabelled: (4, 40) must not leak anywhere.
    features = torch.tensor([[[[1.0, 1.0], [3.0, 4.0]], [[10.0, 10.0], [30.0, 40.0]]]])
    labels = blocks([[1, 1], [0, 0]])
    acc = PrototypeAccumulator(num_classes=2, channels=2)
    acc.add(features, labels)
    # Rows 0-7 see only the top cells (the bottom ones start blending in below row 4, but class 1 stops at row 7).
    expected_class_1 = plain_prototypes(features, labels, 1)[0]
    torch.testing.assert_close(acc.prototypes()[0], expected_class_1)
    assert acc.prototypes().dtype == torch.float32
    assert acc.pixels.tolist() == [128, 0]


def test_unlabelled_pixels_are_ignored_not_background():
    acc = PrototypeAccumulator(num_classes=1, channels=1)
    acc.add(constant(2.0), blocks([[0, 1], [0, 1]]))
    acc.add(constant(-100.0), blocks([[0, 0], [0, 0]]))
    torch.testing.assert_close(acc.prototypes(), torch.tensor([[2.0]]))
    assert acc.pixels.tolist() == [128]


def test_prototypes_weigh_pixels_not_windows():
    """Windows of a raster are not shots: a window with a sliver of a class must not weigh as much as one
    holding most of its pixels."""
    # Window A: class 1 on three blocks (192 px) of feature (2, 0); class 2 on one block of (4, 6).
    # Window B: class 1 on one block (64 px) of feature (10, 8).
    window_a, labels_a = constant(2.0, 0.0), [[1, 1], [1, 0]]
    window_b, labels_b = constant(10.0, 8.0), [[1, 0], [0, 0]]
    window_c, labels_c = constant(4.0, 6.0), [[0, 0], [0, 2]]
    # class 1: (192 * (2, 0) + 64 * (10, 8)) / 256 = (4, 2); a mean of window means would give (6, 4).
    expected = torch.tensor([[4.0, 2.0], [4.0, 6.0]])
    one_batch = PrototypeAccumulator(2, 2)
    one_batch.add(torch.cat([window_a, window_b, window_c]), blocks(labels_a, labels_b, labels_c))
    torch.testing.assert_close(one_batch.prototypes(), expected)
    assert one_batch.pixels.tolist() == [256, 64]
    separate = PrototypeAccumulator(2, 2)
    for features, labels in ((window_a, labels_a), (window_b, labels_b), (window_c, labels_c)):
        separate.add(features, blocks(labels))
    torch.testing.assert_close(separate.prototypes(), expected)


def test_class_without_pixels_has_zero_prototype_and_zero_counts():
    acc = PrototypeAccumulator(3, 2)
    acc.add(constant(1.0, 2.0), blocks([[1, 1], [3, 3]]))
    torch.testing.assert_close(acc.prototypes()[1], torch.zeros(2))
    assert acc.pixels.tolist() == [128, 0, 128]


def test_labels_outside_1_to_k_are_ignored_and_uint8_labels_work():
    labels = blocks([[1, 7], [255, 1]]).to(torch.uint8)
    acc = PrototypeAccumulator(1, 1)
    acc.add(constant(2.5), labels)
    torch.testing.assert_close(acc.prototypes(), torch.tensor([[2.5]]))
    assert acc.pixels.tolist() == [128]


def test_upsampling_matrix_by_hand():
    """Linear upsampling by exactly 8 (align_corners=False): pixel p samples cell coordinate
    (p + 0.5) / 8 - 0.5, so pixels 0-3 take cell 0 alone and pixel 4 is 1/16 of the way to cell 1."""
    from geoproto.fewshot import _upsampling_matrix

    matrix = _upsampling_matrix(14, 2, torch.zeros(1))
    assert matrix.shape == (14, 2)
    torch.testing.assert_close(matrix[:4], torch.tensor([[1.0, 0.0]] * 4))
    torch.testing.assert_close(matrix[4], torch.tensor([15 / 16, 1 / 16]))
    torch.testing.assert_close(matrix[8], torch.tensor([7 / 16, 9 / 16]))
    torch.testing.assert_close(matrix[12:], torch.tensor([[0.0, 1.0]] * 2))


def test_upsampled_cell_lands_on_its_block_centre():
    """The registration matching relies on: a cell's upsampled score is centred on its 8 x 8 block."""
    scores = torch.zeros(1, 1, 6, 7)
    scores[0, 0, 2, 3] = 1.0
    up = upsample_scores(scores, (45, 53))[0, 0].double()
    rows, cols = torch.arange(45).double() + 0.5, torch.arange(53).double() + 0.5
    assert float((up.sum(1) * rows).sum() / up.sum()) == pytest.approx(8 * 2 + 4)
    assert float((up.sum(0) * cols).sum() / up.sum()) == pytest.approx(8 * 3 + 4)


def test_prototypes_match_the_plain_upsample_then_average_reference():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 7, 9)
    labels = torch.randint(0, 3, (2, 53, 70))  # not a multiple of 8: the last cells are cropped
    acc = PrototypeAccumulator(2, 3)
    acc.add(features, labels)
    torch.testing.assert_close(acc.prototypes(), plain_prototypes(features, labels, 2), rtol=1e-5, atol=1e-6)
    assert acc.pixels.tolist() == [int((labels == 1).sum()), int((labels == 2).sum())]


def test_episode_prototypes_average_the_shots():
    """Training keeps the paper's eq. 1 for episodes: the mean over the K shots of each shot's class mean."""
    shots = torch.cat([constant(2.0), constant(10.0)])
    labels = blocks([[1, 1], [1, 1]], [[1, 0], [0, 0]])
    torch.testing.assert_close(masked_average_prototypes(shots, labels, 1), torch.tensor([[6.0]]))


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

def test_class_probabilities_by_hand_where_upsampling_copies_a_cell():
    features = feature_map([[1, 0, 1]],
                           [[0, 1, 1]])
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    probs = class_probabilities(features, prototypes, (8, 24), alpha=2.0)
    p = 1 / (1 + math.exp(-2.0))  # softmax([2, 0])[0]
    # Pixels 0-3 of the first cell and 20-23 of the last take their cell's score alone.
    torch.testing.assert_close(probs[0, :, :, 0], torch.tensor([[p] * 8, [1 - p] * 8]))
    torch.testing.assert_close(probs[0, :, :, 23], torch.tensor([[0.5] * 8, [0.5] * 8]))


def test_class_probabilities_sum_to_one_and_argmax_is_nearest_prototype():
    torch.manual_seed(1)
    features = torch.randn(2, 8, 5, 6)
    prototypes = torch.randn(4, 8)
    probs = class_probabilities(features, prototypes, (40, 48))
    assert probs.shape == (2, 4, 40, 48)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 40, 48))
    assert bool((probs >= 0).all())
    cos = torch.einsum("bchw,kc->bkhw", F.normalize(features, dim=1), F.normalize(prototypes, dim=1))
    # Pixels 0-3 of the first cell copy it; elsewhere the scores blend neighbouring cells.
    assert torch.equal(probs[:, :, :4, :4].argmax(1), cos[:, :, :1, :1].argmax(1).expand(2, 4, 4))


def test_class_probabilities_upsample_class_scores_to_requested_size():
    torch.manual_seed(2)
    features = torch.randn(1, 6, 3, 3)
    prototypes = torch.randn(3, 6)
    probs = class_probabilities(features, prototypes, (24, 20), alpha=10.0)
    assert probs.shape == (1, 3, 24, 20)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 24, 20))
    logits = match_logits(features, prototypes, alpha=10.0)
    expected = F.interpolate(logits, scale_factor=8, mode="bilinear", align_corners=False)[..., :24, :20].softmax(1)
    torch.testing.assert_close(probs, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_float_dtypes_are_accepted(dtype):
    features = constant(1.5).to(dtype)
    acc = PrototypeAccumulator(1, 1)
    acc.add(features, blocks([[1, 1], [0, 0]]))
    torch.testing.assert_close(acc.prototypes(), torch.tensor([[1.5]]))
    logits = match_logits(features, acc.prototypes().to(dtype))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, torch.full((1, 1, 2, 2), DEFAULT_ALPHA))
