"""``classifier.fit_support``: a support raster smaller than a window is encoded in one window of its own size
(as ``segment`` reads queries), and a larger one in the tile grid of ``--tile-size``, as ever."""

import numpy as np
import pytest
import torch
from synthetic import two_halves, write_raster, write_support

from geoproto.classifier import fit_support
from geoproto.models import build_shipped
from geoproto.models.runtime import CONTEXT_MARGIN, GRID, FeatureExtractor
from geoproto.segment import SegmentOptions, options_inputs
from geoproto.tiling import tile_grid


@pytest.fixture(scope="module")
def extract():
    return FeatureExtractor(build_shipped("imagenet")[0], torch.device("cpu"))


class _WindowAware:
    """A stand-in encoder whose features see the whole window read, padding included: each 8 x 8 block's mean
    colour plus the window's mean colour (as a convolutional encoder's receptive field would)."""

    out_channels = 3

    def __call__(self, images, context):
        images = torch.as_tensor(images, dtype=torch.float32)
        window = images[..., context:images.shape[-2] - context, context:images.shape[-1] - context]
        return torch.nn.functional.avg_pool2d(window, 8, ceil_mode=True) + images.mean((2, 3), keepdim=True)


def _support(tmp_path, side):
    image = write_raster(tmp_path / f"chip-{side}.tif", two_halves(side=side))
    support = write_support(tmp_path / f"chip-{side}.gpkg", side=side)
    inputs = options_inputs(str(image), str(support), SegmentOptions())
    return [(inputs.support_source, inputs.labels)], inputs.classes


def test_a_support_raster_smaller_than_the_tile_is_encoded_in_one_window_of_its_size(tmp_path, spy):
    """A 100 px chip: windows of 112 px (its side rounded up to the encoder's grid) with their context,
    whether the tile is 417 or 4096 px, as its queries are read (``benchmarks/small_rasters.py --support-chip``)."""
    supports, classes = _support(tmp_path, 100)
    encoded = spy(_WindowAware, "__call__", lambda self, images, context: images.shape)
    for tile_size in (417, 4096):
        _, stats = fit_support(_WindowAware(), supports, classes, tile_size, 64, 4)
        assert stats["windows"] == 1 and stats["window_sizes"] == [112]
    assert encoded == [(1, 3, 112 + 2 * CONTEXT_MARGIN, 112 + 2 * CONTEXT_MARGIN)] * 2


def test_prototypes_of_a_small_support_raster_do_not_depend_on_the_tile_size(tmp_path, extract):
    """The real encoder on a 100 px chip: the same prototypes, bit for bit, for any tile at least its window
    (padded to the tile, the encoder saw different mirrored surroundings at each tile size)."""
    supports, classes = _support(tmp_path, 100)
    prototypes = {tile_size: fit_support(extract, supports, classes, tile_size, 64, 1)[0].prototypes
                  for tile_size in (112, 417, 1024, 4096)}
    for tile_size in (417, 1024, 4096):
        assert torch.equal(prototypes[tile_size], prototypes[112]), tile_size


def test_a_support_raster_larger_than_the_tile_keeps_its_tile_grid(tmp_path, spy):
    """A 300 px raster with 128 px tiles (overlap 32): its prototypes are exactly those of its labelled windows
    of the tile grid, encoded in the same batches and summed pixel by pixel, as before small rasters got their
    own window size; and a small chip alongside is encoded in batches of its own."""
    from geoproto.classifier import core_labels
    from geoproto.fewshot import PrototypeAccumulator

    supports, classes = _support(tmp_path, 300)
    extract = _WindowAware()
    encoded = spy(_WindowAware, "__call__", lambda self, images, context: images.shape)
    classifier, stats = fit_support(extract, supports, classes, 128, 32, 3)
    batches = [shape[0] for shape in encoded]
    source, labels = supports[0]
    expected = PrototypeAccumulator(len(classes.ids), 3)
    tiles = [tile for tile in tile_grid(300, 300, 128, 32, GRID)
             if core_labels(classes.positions()[labels.read(tile, 128)], tile).any()]
    for start in range(0, len(tiles), 3):
        chunk = tiles[start:start + 3]
        reads = [source.read(tile, 128, CONTEXT_MARGIN) for tile in chunk]
        expected.add(_WindowAware()(np.stack([image for image, _ in reads]), CONTEXT_MARGIN), torch.from_numpy(
            np.stack([core_labels(classes.positions()[labels.read(tile, 128)], tile) * valid
                      for tile, (_, valid) in zip(chunk, reads)])))
    assert stats["window_sizes"] == [128] and stats["windows"] == len(tiles) > 3
    assert torch.equal(classifier.prototypes, expected.prototypes())
    assert batches == [3] * (len(tiles) // 3) + [len(tiles) % 3] * bool(len(tiles) % 3)
    # With a 100 px chip too: the 300 px raster's batches, then the chip's, never mixed.
    chip, _ = _support(tmp_path, 100)
    encoded.clear()
    _, stats = fit_support(extract, supports + chip, classes, 128, 32, 3)
    assert stats["window_sizes"] == [112, 128] and stats["windows"] == len(tiles) + 1
    assert [shape[-1] - 2 * CONTEXT_MARGIN for shape in encoded] == [128] * -(-len(tiles) // 3) + [112]
