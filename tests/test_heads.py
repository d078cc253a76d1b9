"""Scoring alternatives to plain prototypes (geoproto.heads): multi-scale features registered on the same
grid, and a linear head fitted on the support."""

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from geoproto.fewshot import PrototypeAccumulator, match_logits
from geoproto.errors import GeoprotoError
from geoproto.heads import (LINEAR, ORIENTATIONS, PROTOTYPES, LinearHead, MultiScaleExtractor, OrientedExtractor,
                            SupportFit, at_scales, check_orientations, concat_scales, feature_extractor,
                            fit_linear_head, oriented, orientations_of, scales_of, second_scale_features,
                            turned_features)
from geoproto.models import build_encoder
from geoproto.models.runtime import CONTEXT_MARGIN, FeatureExtractor, window_features
from geoproto.segment import SegmentOptions


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


def _window(image: np.ndarray, row: int, col: int, height: int, width: int, context: int) -> np.ndarray:
    """The window whose first pixel is (row, col), with ``context`` pixels around it (B x 3 x H x W)."""
    rows, cols = slice(row - context, row + height + context), slice(col - context, col + width + context)
    return np.ascontiguousarray(image[None, :, rows, cols])


def test_turned_features_land_on_the_window_grid(encoder, dubai_image):
    """Features of a flipped window, flipped back, describe the window's own 8 x 8 blocks: most alike the
    window's features where their blocks coincide, not a few pixels away (real weights, real imagery)."""
    extract = FeatureExtractor(encoder, torch.device("cpu"))
    context, side = CONTEXT_MARGIN, 96
    plain = extract(_window(dubai_image, 200, 200, side, side, context), context)[..., 2:-2, 2:-2]
    for dims in ((-1,), (-2,)):
        similarity = {}
        for shift in (-8, -4, 0, 4, 8):  # the flipped window moved by `shift` pixels along the flipped axis
            row, col = (200 + shift, 200) if dims == (-2,) else (200, 200 + shift)
            turned = turned_features(extract, _window(dubai_image, row, col, side, side, context), context, False, dims)
            similarity[shift] = F.cosine_similarity(plain, turned[..., 2:-2, 2:-2], dim=1).mean().item()
        # ImageNet features are not flip-invariant (mean cosine 0.57-0.8 at 0); 4 px away: 0.05 lower or more
        assert similarity[0] > 0.5 and similarity[0] > max(similarity[-4], similarity[4]) + 0.02, (dims, similarity)
        assert similarity[0] > max(similarity[-8], similarity[8]) + 0.08, (dims, similarity)


@pytest.mark.parametrize("side", [100, 93])
def test_turned_features_of_sides_not_multiples_of_8_keep_the_grid(encoder, dubai_image, side):
    """A flipped window whose side is not a multiple of 8 is encoded from the pixels before it that make it
    one: its cells turn back onto the same blocks as those of the window grown to a multiple of 8 (the same
    pixels but near its far edges), not onto blocks shifted by the remainder (flipped back as they come:
    mean cosine 0.74-0.85); with context and without (as ``evaluate`` reads its 417 px patches)."""
    extract = FeatureExtractor(encoder, torch.device("cpu"))
    grown = -(-side // 8) * 8
    for context in (CONTEXT_MARGIN, 0):
        for transpose, dims in ((False, (-1,)), (False, (-2, -1)), (True, (-2,))):
            images = _window(dubai_image, 150, 150, side, side, context)
            turned = turned_features(extract, images, context, transpose, dims)
            reference = turned_features(extract, _window(dubai_image, 150, 150, grown, grown, context), context,
                                        transpose, dims)
            assert turned.shape == reference.shape == extract(images, context).shape
            cosine = F.cosine_similarity(turned, reference, dim=1)[0, 1:-4, 1:-4]  # away from the differing edges
            assert cosine.mean() > 0.99 and cosine.min() > 0.95, (side, context, dims, cosine.mean(), cosine.min())


@pytest.mark.parametrize("orientations", [2, 4, 8])
def test_oriented_features_are_equivariant_to_their_orientations(encoder, dubai_image, orientations):
    """Averaged over a group of symmetries, the features of a flipped (or transposed) window are the window's,
    flipped (or transposed) to float precision; the mean keeps the encoder's channels and grid."""
    extract = OrientedExtractor(FeatureExtractor(encoder, torch.device("cpu")), orientations)
    images = _window(dubai_image, 100, 300, 96, 80, CONTEXT_MARGIN)
    features = extract(images, CONTEXT_MARGIN)
    assert features.shape == (1, encoder.out_channels, 12, 10) and extract.out_channels == encoder.out_channels
    symmetries = {2: [(-1,)], 4: [(-1,), (-2,), (-2, -1)], 8: [(-1,), (-2,), "transpose"]}[orientations]
    for symmetry in symmetries:
        if symmetry == "transpose":
            turned_image, expected = images.swapaxes(-1, -2), features.transpose(-1, -2)
        else:
            turned_image, expected = np.flip(images, symmetry), features.flip(symmetry)
        torch.testing.assert_close(extract(np.ascontiguousarray(turned_image), CONTEXT_MARGIN), expected,
                                   atol=1e-5, rtol=0)
    plain = FeatureExtractor(encoder, torch.device("cpu"))(images, CONTEXT_MARGIN)
    assert not torch.allclose(features, plain, atol=1e-3)  # an average, not the window's own features


def test_oriented_wraps_only_for_several_orientations_and_is_found_under_scales(encoder):
    extract = FeatureExtractor(encoder, torch.device("cpu"))
    assert oriented(extract, 1) is extract and orientations_of(extract) == 1
    turned = oriented(extract, 8)
    assert turned.encoder is encoder and turned.device == extract.device
    assert orientations_of(turned) == 8 and orientations_of(at_scales(turned, (1, 2))) == 8
    with pytest.raises(GeoprotoError, match=r"orientations: must be one of 1, 2, 4, 8, got 3"):
        oriented(extract, 3)


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


def _turned_features_on_the_host(extract, images: np.ndarray, context: int, transpose: bool, dims) -> torch.Tensor:
    """``turned_features`` as first written (numpy copies on the host for every orientation): the reference
    the device-side version must match exactly."""
    if transpose:
        swapped = np.ascontiguousarray(images.swapaxes(-1, -2))
        return _turned_features_on_the_host(extract, swapped, context, False, dims).transpose(-1, -2)
    if not dims:
        return extract(images, context)
    flipped = torch.from_numpy(images).flip(dims)
    sides = {axis: flipped.shape[axis] - 2 * context for axis in (-2, -1)}
    short = {axis: (-sides[axis]) % 8 if axis in dims else 0 for axis in (-2, -1)}
    most = max(short.values())
    if context < most:
        flipped = F.pad(flipped, [most - context] * 4, mode="reflect")
        context = most
    kept = context - most
    for axis in (-2, -1):
        flipped = flipped.narrow(axis, most - short[axis], sides[axis] + short[axis] + 2 * kept)
    return extract(np.ascontiguousarray(flipped.numpy()), kept).flip(dims)


@pytest.mark.slow
@pytest.mark.parametrize("side", [417, 96])
def test_oriented_features_are_those_of_each_orientation_encoded_on_the_host(encoder, dubai_image, side):
    """Every orientation count, on a real window of segment's side (417) and a multiple of 8 (96), with and
    without context: the averaged features are exactly the mean of each orientation's, turned on the host."""
    extract = FeatureExtractor(encoder, torch.device("cpu"))
    for context in (CONTEXT_MARGIN, 0):
        images = _window(dubai_image, 40, 40, side, side, context)
        turned = [_turned_features_on_the_host(extract, images, context, transpose, dims)
                  for transpose, dims in ORIENTATIONS[8]]
        for orientations in ORIENTATIONS:
            expected = turned[0]
            for features in turned[1:orientations]:
                expected = expected + features
            features = oriented(extract, orientations)(images, context)
            assert features.dtype == torch.float32
            torch.testing.assert_close(features, expected / orientations, atol=1e-6, rtol=0)



class _CountingUploads(FeatureExtractor):
    """A FeatureExtractor that counts the host arrays it takes up to its device."""

    uploads = 0

    def to_device(self, images):
        self.uploads += isinstance(images, np.ndarray)
        return super().to_device(images)


@pytest.mark.parametrize("orientations", [1, 2])
def test_multiscale_windows_go_up_to_the_device_once(encoder, dubai_image, orientations):
    """A batch of multi-scale features is uploaded once (its 2x window upsampled and cut on the device, not
    each piece uploaded on its own), with the features of the host-array path exactly."""
    extract = _CountingUploads(encoder, torch.device("cpu"))
    images = _window(dubai_image, 40, 40, 100, 100, CONTEXT_MARGIN)
    base = oriented(extract, orientations)
    expected = concat_scales(base(images, CONTEXT_MARGIN), second_scale_features(base, images, CONTEXT_MARGIN))
    extract.uploads = 0
    features = at_scales(base, (1, 2))(images, CONTEXT_MARGIN)
    assert extract.uploads == 1
    torch.testing.assert_close(features, expected, atol=0, rtol=0)

@pytest.mark.parametrize("value", [3, 4.0, True, "4", None])
def test_orientations_must_be_one_of_the_counts_as_an_int(value):
    """One check (``oriented``, ``SegmentOptions``, prototype files): 4.0 or True are not 4 or 1."""
    assert [check_orientations(n) for n in ORIENTATIONS] == list(ORIENTATIONS)
    with pytest.raises(GeoprotoError, match=rf"orientations: must be one of 1, 2, 4, 8, got {value!r}"):
        check_orientations(value)
    if value is not None:  # None: a prototype file's own
        with pytest.raises(GeoprotoError, match=rf"orientations: must be one of 1, 2, 4, 8, got {value!r}"):
            SegmentOptions(orientations=value)


def test_features_are_built_in_one_order_scales_over_orientations(encoder):
    """``feature_extractor``: each scale's window averaged over the orientations, read back by
    ``orientations_of`` and ``scales_of``; orienting multi-scale features instead is refused."""
    extract = FeatureExtractor(encoder, torch.device("cpu"))
    assert feature_extractor(extract) is extract and scales_of(extract) == (1,)
    built = feature_extractor(extract, 8, (1, 2))
    assert isinstance(built, MultiScaleExtractor) and isinstance(built.extract, OrientedExtractor)
    assert built.extract.extract is extract and orientations_of(built) == 8 and scales_of(built) == (1, 2)
    with pytest.raises(TypeError, match=r"oriented\(\) goes inside at_scales\(\)"):
        oriented(at_scales(extract, (1, 2)), 2)
