"""Scoring alternatives to plain prototypes (geoproto.heads): multi-scale features registered on the same
grid, and a linear head fitted on the support."""

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from geoproto.fewshot import PrototypeAccumulator, match_logits
from geoproto.heads import (LINEAR, PROTOTYPES, LinearHead, MultiScaleExtractor, SupportFit, concat_scales,
                            fit_linear_head, second_scale_features)
from geoproto.models import build_encoder
from geoproto.models.runtime import CONTEXT_MARGIN, FeatureExtractor, window_features


@pytest.fixture(scope="module")
def encoder():
    return build_encoder()[0].eval()


@pytest.fixture(scope="module")
def dubai_image(paths):
    with rasterio.open(paths.dubai / "images" / "image_part_001t1.jpg") as src:
        return src.read().astype(np.float32) / 255


@pytest.mark.slow
def test_second_scale_cells_are_centred_on_their_pixel_blocks(encoder, dubai_image):
    """Gradient centroid of each 2x cell's receptive field (real ImageNet weights, real imagery), in the
    window's own pixels: within 1 px of its 8 x 8 block's centre on average, for an odd window with and
    without context (pooling the wrong pairs of 2x cells, or upsampling with corners aligned, moves them
    2-4 px)."""
    size = 209

    def stride8(images, context):
        return window_features(encoder, images, context)[:, :encoder.trunk.out_channels[0]]

    offsets = []
    for row, col, context in ((0, 0, 0), (150, 300, CONTEXT_MARGIN)):
        crop = dubai_image[None, :, row:row + size + 2 * context, col:col + size + 2 * context]
        window = torch.from_numpy(crop.copy()).requires_grad_(True)
        features = second_scale_features(stride8, window, context)
        assert features.shape[-2:] == (27, 27)
        for i, j in ((10, 10), (12, 14), (14, 11), (6, 17), (13, 13)):
            window.grad = None
            (features[0, :, i, j] ** 2).sum().backward(retain_graph=True)
            weight = window.grad.abs().sum((0, 1)).double()
            centres = torch.arange(weight.shape[0]).double() + 0.5 - context
            offsets.append((float((weight.sum(1) * centres).sum() / weight.sum()) - (8 * i + 4),
                            float((weight.sum(0) * centres).sum() / weight.sum()) - (8 * j + 4)))
    offsets = np.array(offsets)
    assert np.abs(offsets.mean(0)).max() < 1.0, offsets  # measured: under 0.2
    assert np.abs(offsets).max() < 2.5, offsets


def test_second_scale_pieces_join_like_one_window(encoder, dubai_image):
    """The 2x window is encoded in pieces to bound memory: its features match encoding the whole 2x window
    at once about as closely as 1x windows match whole-raster processing (cutting at a multiple of 8 that
    is not one of 16 shifted the stride-16 grid of the second piece: mean cosine 0.97)."""
    size, context = 100, CONTEXT_MARGIN
    crop = torch.from_numpy(dubai_image[None, :, 200:200 + size + 2 * context, 200:200 + size + 2 * context].copy())
    with torch.no_grad():
        pieces = second_scale_features(lambda x, c: window_features(encoder, x, c), crop, context)
        upsampled = F.interpolate(crop, scale_factor=2, mode="bilinear", align_corners=False)
        trimmed = upsampled[..., context:-context, context:-context]  # CONTEXT_MARGIN of 2x context
        whole = F.avg_pool2d(window_features(encoder, trimmed, CONTEXT_MARGIN), 2, ceil_mode=True)
    assert pieces.shape == whole.shape == (1, encoder.out_channels, 13, 13)
    cosine = F.cosine_similarity(pieces, whole, dim=1)[0]
    # The cut is at 2x pixel 112 (window pixel 56): cells 5-8 see it within their nearest 16 px.
    away = torch.ones(13, 13, dtype=torch.bool)
    away[5:9] = away[:, 5:9] = False
    assert cosine[away].min() > 0.99 and cosine.mean() > 0.98 and cosine.min() > 0.9, cosine


def test_multiscale_extractor_concatenates_unit_scales(encoder, dubai_image):
    extract = FeatureExtractor(encoder, torch.device("cpu"))
    multiscale = MultiScaleExtractor(extract)
    images = dubai_image[None, :, :64 + 2 * CONTEXT_MARGIN, :72 + 2 * CONTEXT_MARGIN].copy()
    features = multiscale(images, CONTEXT_MARGIN)
    channels = encoder.out_channels
    assert multiscale.out_channels == 2 * channels and features.shape == (1, 2 * channels, 8, 9)
    torch.testing.assert_close(features[:, :channels].norm(dim=1), torch.ones(1, 8, 9))
    torch.testing.assert_close(features[:, channels:].norm(dim=1), torch.ones(1, 8, 9))
    torch.testing.assert_close(features[:, :channels], F.normalize(extract(images, CONTEXT_MARGIN), dim=1))


def test_linear_head_starts_at_the_prototypes_classifier():
    """Before training the head is eq. 2: the same logits, so the same argmax."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, 6, 7, generator=generator) + 0.5
    labels = torch.randint(0, 4, (2, 48, 56), generator=generator)
    accumulator = PrototypeAccumulator(3, 16)
    accumulator.add(features, labels)
    prototypes = accumulator.prototypes()
    expected = match_logits(features, prototypes, 20.0)
    torch.testing.assert_close(LinearHead.from_prototypes(prototypes, 20.0)(features), expected)
    fit = SupportFit(3, 16, LINEAR)
    fit.add(features, labels)
    torch.testing.assert_close(fit.prototypes(), prototypes)
    untrained = fit_linear_head(*fit.cells.arrays(), prototypes, 20.0, steps=0)
    assert torch.equal(untrained(features).argmax(1), expected.argmax(1))


def _skewed_windows(count: int, generator: torch.Generator):
    """Windows of one class each whose cells lie along a shared direction (1, 1): the classes differ by a
    homogeneous linear boundary (x - y > 0 for class 1), but their means differ mostly along (1, 1), so
    nearest prototype misreads the cells where the two classes' spreads overlap."""
    windows, labels = [], []
    for n in range(count):
        cls = n % 2
        spread = (torch.rand(4, 4, generator=generator) * 5 - 1) * (1 if cls == 0 else -1)
        shift = 0.3 if cls == 0 else -0.3
        noise = 0.05 * torch.randn(5, 4, 4, generator=generator)
        windows.append(torch.cat([torch.stack([spread + shift, spread - shift, torch.ones(4, 4)]), noise]))
        labels.append(torch.full((32, 32), cls + 1))
    return torch.stack(windows), torch.stack(labels)


def test_linear_head_learns_a_boundary_the_prototypes_miss():
    generator = torch.Generator().manual_seed(0)
    support, support_labels = _skewed_windows(40, generator)
    query, query_labels = _skewed_windows(40, generator)
    truth = query_labels[:, ::8, ::8] - 1
    accuracy = {}
    for head in (PROTOTYPES, LINEAR):
        fit = SupportFit(2, 8, head)
        fit.add(support, support_labels)
        accuracy[head] = float((fit.fit(20.0)(query).argmax(1) == truth).float().mean())
    assert accuracy[PROTOTYPES] < 0.85 and accuracy[LINEAR] > accuracy[PROTOTYPES] + 0.1, accuracy  # 0.83, 0.95
    # Deterministic: the same support gives the same head.
    fit = SupportFit(2, 8, LINEAR)
    fit.add(support, support_labels)
    assert torch.equal(fit.fit(20.0).weight, fit.fit(20.0).weight)


def test_concat_scales_weighs_each_scale_equally():
    coarse = torch.tensor([100.0, 0.0])[None, :, None, None]
    fine = torch.tensor([0.0, 0.01])[None, :, None, None]
    torch.testing.assert_close(concat_scales(coarse, fine)[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0, 1.0]))


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="head must be one of prototypes, linear, got 'mlp'"):
        SupportFit(3, 16, "mlp")
