"""The library's ``segment``: support prototypes and labels do not depend on how the raster is tiled."""

import pytest
import rasterio
import torch
import torch.nn.functional as F

from geoproto.models import build_shipped
from geoproto.models.runtime import FeatureExtractor
from geoproto.classifier import fit_support
from geoproto.segment import SegmentOptions, options_inputs, segment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def extract():
    return FeatureExtractor(build_shipped("imagenet")[0], torch.device("cpu"))


def prototypes(paths, extract, size, overlap):
    inputs = options_inputs(str(paths.chip), str(paths.support), SegmentOptions(tile_size=size, overlap=overlap))
    classifier, stats = fit_support(extract, [(inputs.support_source, inputs.labels)], inputs.classes, size, overlap,
                                    1)
    return classifier.prototypes, stats


def test_prototypes_do_not_depend_on_the_tiling(paths, extract):
    """Against the whole 900 px chip encoded as one window: each labelled pixel counts once, with
    features from windows on the encoder's grid and real surroundings, whatever the tile size and
    overlap (window-weighted means on an unaligned grid gave cosines down to 0.989)."""
    whole, whole_stats = prototypes(paths, extract, 900, 0)
    assert whole_stats["windows"] == 1
    for size, overlap in ((417, 64), (512, 200), (480, 96)):
        tiled, stats = prototypes(paths, extract, size, overlap)
        assert stats["windows"] > 1 and stats["pixels"] == whole_stats["pixels"]
        cosine = F.cosine_similarity(tiled, whole, dim=1)
        assert cosine.min() >= 0.999, (size, overlap, cosine)


def test_windowed_labels_equal_whole_raster_labels(paths, tmp_path):
    """A 544 x 510 Dubai tile in four 417 px windows, and as one window: the same map."""
    labels = {}
    for size in (417, 544):
        out = tmp_path / f"{size}.tif"
        options = SegmentOptions(scoring="prototypes", encoder="imagenet", tile_size=size, crf=False, progress=False,
                                 classes_file=str(paths.dubai / "classes.json"),
                                 support_image=str(paths.dubai / "images" / "image_part_003t3.jpg"))
        summary = segment(str(paths.dubai_query), str(paths.dubai / "masks" / "image_part_003t3.png"), str(out),
                          options)
        assert summary["tiles"] == (4 if size == 417 else 1)
        with rasterio.open(out) as src:
            labels[size] = src.read(1)
    agreement = (labels[417] == labels[544]).mean()
    assert agreement >= 0.99, agreement  # ambiguous pixels still see context beyond the 32 px margin
