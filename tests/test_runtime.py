"""The encoder's runtime geometry (geoproto.models.runtime): TensorFlow SAME padding for the Lite0
weights, and feature cells registered on the 8 x 8 pixel blocks they describe."""

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from geoproto.models import build_encoder
from geoproto.models.efficientnet import Conv2dSame
from geoproto.models.runtime import CONTEXT_MARGIN, GRID, FeatureExtractor, padded_extent, window_features


@pytest.mark.parametrize("size, kernel, expected", [
    (8, 3, (0, 1)),   # even input, stride 2: TensorFlow puts the one padding pixel after the image
    (9, 3, (1, 1)),   # odd input: symmetric
    (8, 5, (1, 2)),
    (9, 5, (2, 2)),
])
def test_same_padding_is_tensorflows(size, kernel, expected):
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, kernel, 2, bias=False)
    x = torch.randn(1, 2, size, size)
    before, after = expected
    by_hand = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=2)
    assert conv(x).shape[-1] == -(-size // 2)
    torch.testing.assert_close(conv(x), by_hand)


@pytest.mark.parametrize("size", [32, 33, 255, 256, 417])
def test_window_features_cover_every_pixel_block_whatever_the_size(size):
    encoder = build_encoder()[0].eval()
    assert padded_extent(size) % GRID == 0 and padded_extent(size) >= size + 2 * CONTEXT_MARGIN
    with torch.no_grad():
        features = window_features(encoder, torch.rand(1, 3, size, size))
        with_context = window_features(encoder, torch.rand(1, 3, size + 2 * CONTEXT_MARGIN,
                                                           size + 2 * CONTEXT_MARGIN), CONTEXT_MARGIN)
    assert features.shape[-2:] == with_context.shape[-2:] == (-(-size // 8), -(-size // 8))


@pytest.mark.slow
@pytest.mark.parametrize("size", [417, 416])
def test_feature_cells_are_centred_on_their_pixel_blocks(paths, size):
    """Gradient centroid of each cell's receptive field, with the real ImageNet weights on real imagery:
    within 1 px of its 8 x 8 block's centre for odd and even windows (symmetric padding and upsampling
    to the window's size put them 7 px off)."""
    encoder = build_encoder()[0].eval()
    with rasterio.open(paths.dubai / "images" / "image_part_001t1.jpg") as src:
        image = src.read().astype(np.float32) / 255
    offsets = []
    for row, col in ((0, 0), (150, 300)):
        window = torch.from_numpy(image[None, :, row:row + size, col:col + size].copy()).requires_grad_(True)
        stride8 = window_features(encoder, window)[:, :encoder.trunk.out_channels[0]]
        for i, j in ((20, 20), (24, 27), (30, 22), (12, 35)):
            window.grad = None
            (stride8[0, :, i, j] ** 2).sum().backward(retain_graph=True)
            weight = window.grad.abs().sum((0, 1)).double()
            centres = torch.arange(size).double() + 0.5
            offsets.append((float((weight.sum(1) * centres).sum() / weight.sum()) - (8 * i + 4),
                            float((weight.sum(0) * centres).sum() / weight.sum()) - (8 * j + 4)))
    offsets = np.array(offsets)
    assert np.abs(offsets.mean(0)).max() < 1.0, offsets
    assert np.abs(offsets).max() < 2.5, offsets


def test_a_feature_extractor_takes_a_host_array_or_a_tensor_on_its_device_alike():
    """A batch encoded several times (``heads.OrientedExtractor``) is moved to the device once and passed
    as a tensor: its features are the array's."""
    extract = FeatureExtractor(build_encoder()[0], torch.device("cpu"))
    images = np.random.default_rng(0).random((1, 3, 40 + 2 * CONTEXT_MARGIN, 56 + 2 * CONTEXT_MARGIN),
                                             dtype=np.float32)
    batch = extract.to_device(images)
    assert batch.device == extract.device and extract.to_device(batch) is batch
    from_array, from_tensor = extract(images, CONTEXT_MARGIN), extract(batch, CONTEXT_MARGIN)
    assert from_array.shape == (1, extract.out_channels, 5, 7) and from_array.dtype == torch.float32
    assert torch.equal(from_array, from_tensor)
