"""Episode sampling (geoproto.training.episodes): C-way K-shot episodes from a labelled folder.

Each test writes two small images whose first band encodes the class, so the classes of every crop can
be read back from its pixels after the sampler's flips and rotations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geoproto.errors import GeoprotoError
from geoproto.datasets import load_folder
from geoproto.training import EpisodeSampler, EpisodeSpec
from synthetic import write_raster

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


EP_SIZE = 192


def _stripes() -> np.ndarray:
    """Class 1 left third, 2 middle third, right third 3 (top) / 4 (bottom); an unlabelled band on top."""
    ids = np.zeros((EP_SIZE, EP_SIZE), np.uint8)
    third = EP_SIZE // 3
    ids[:, :third], ids[:, third:2 * third] = 1, 2
    ids[:EP_SIZE // 2, 2 * third:], ids[EP_SIZE // 2:, 2 * third:] = 3, 4
    ids[:6, :] = 0
    return ids


def _episode_folder(root: Path, mask_suffix: str = "tif", class_ids=(1, 2, 3, 4, 5)) -> Path:
    """Two images whose first band encodes the class (40 x id), so a crop's true classes can be read back
    from its pixels after flips and rotations."""
    for index, ids in enumerate([_stripes(), np.rot90(_stripes()).copy()]):
        image = np.stack([ids * 40, np.full_like(ids, 100), np.full_like(ids, 7 * index)]).astype(np.uint8)
        write_raster(root / "images" / f"img{index}.png", image, transform=None, driver="PNG")
        mapped = np.array([0, *class_ids[:4]], np.uint8)[ids]
        write_raster(root / "masks" / f"img{index}.{mask_suffix}", mapped, transform=None,
                     driver="PNG" if mask_suffix == "png" else "GTiff")
    names = ["building", "land", "road", "water", "vegetation"]
    (root / "classes.json").write_text(json.dumps({str(i): n for i, n in zip(class_ids, names)}))
    return root


def _true_classes(images: np.ndarray) -> np.ndarray:
    return np.rint(images[:, 0] * 255 / 40).astype(np.int64)


def _check_episode(episode, spec: EpisodeSpec, ignored: tuple[int, ...], known: tuple[int, ...]):
    n = spec.ways * spec.shots
    s = spec.crop
    assert episode["support_images"].shape == (n, 3, s, s) and episode["support_images"].dtype == np.float32
    assert episode["support_labels"].shape == (n, s, s) and episode["support_labels"].dtype == np.int64
    assert episode["query_images"].shape == (spec.queries, 3, s, s)
    assert episode["query_labels"].shape == (spec.queries, s, s)
    classes = [int(c) for c in episode["classes"]]
    assert len(classes) == spec.ways == len(set(classes))
    for k in range(n):
        assert (episode["support_labels"][k] == 2 + k // spec.shots).any(), (k, classes)
    for images, labels in ((episode["support_images"], episode["support_labels"]),
                           (episode["query_images"], episode["query_labels"])):
        assert set(np.unique(labels)) <= set(range(spec.ways + 2))
        true = _true_classes(images)
        expected = np.where(np.isin(true, known), 1, 0)
        expected[np.isin(true, ignored)] = 0
        for position, class_id in enumerate(classes):
            expected[true == class_id] = 2 + position
        np.testing.assert_array_equal(labels, expected)  # also: image and labels turned together
    for q in range(spec.queries):
        assert (episode["query_labels"][q] >= 2).any()


def test_episode_sampler(tmp_path):
    data = load_folder(str(_episode_folder(tmp_path / "ep")))
    spec = EpisodeSpec(ways=2, shots=2, queries=2, crop=64)
    sampler = EpisodeSampler(data, data.samples, [1, 2, 3], spec, seed=5, ignored_classes=(4,))
    assert sorted(sampler.classes) == [1, 2, 3]
    first, again = sampler.episode(3), sampler.episode(3)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    # A second sampler (another worker) builds the same episode.
    other = EpisodeSampler(data, data.samples, [1, 2, 3], spec, seed=5, ignored_classes=(4,)).episode(3)
    np.testing.assert_array_equal(first["support_images"], other["support_images"])
    episodes = [sampler.episode(i) for i in range(6)]
    for i, episode in enumerate(episodes):
        _check_episode(episode, spec, ignored=(4,), known=(1, 2, 3, 4, 5))
        if i != 3:
            assert not np.array_equal(episode["support_images"], first["support_images"])
    assert len({tuple(e["classes"]) for e in episodes}) > 1
    assert any((e["support_labels"] == 1).any() or (e["query_labels"] == 1).any() for e in episodes)
    # Pixels of the reserved class 4 did occur in some crop, and were all ignored.
    assert any((_true_classes(e["support_images"]) == 4).any() for e in episodes)


def test_episode_sampler_crop_larger_than_image(tmp_path):
    data = load_folder(str(_episode_folder(tmp_path / "ep")))
    spec = EpisodeSpec(ways=1, shots=1, queries=1, crop=256)
    episode = EpisodeSampler(data, data.samples, [1, 2], spec, seed=0).episode(0)
    assert episode["support_images"].shape == (1, 3, 256, 256)
    labels = episode["support_labels"][0]
    assert (labels == 0).sum() >= 256 * 256 - EP_SIZE * EP_SIZE  # the padding is unlabelled


def test_episode_sampler_too_many_ways(tmp_path):
    data = load_folder(str(_episode_folder(tmp_path / "ep")))
    # every asked class occurs: no empty "( missing)" in the message, which names the classes and the option
    names = ", ".join(data.classes.name_of(c) for c in (1, 2, 3))
    with pytest.raises(GeoprotoError, match=f"^ep: 3 of the episode classes occur in these images \\({names}\\): too "
                                            f"few for 4-way episodes \\(lower ways\\)$") as info:
        EpisodeSampler(data, data.samples, [1, 2, 3], EpisodeSpec(ways=4, shots=1, queries=1, crop=64), 0)
    assert info.value.mentions == ("ways",)
    # Class 5 (vegetation) is in classes.json but in no image.
    with pytest.raises(GeoprotoError, match=r"4 of the episode classes .*; vegetation do\(es\) not: too few for 5-way"):
        EpisodeSampler(data, data.samples, [1, 2, 3, 4, 5], EpisodeSpec(ways=5, shots=1, queries=1, crop=64), 0)
    with pytest.raises(GeoprotoError, match="no images"):
        EpisodeSampler(data, [], [1], EpisodeSpec(ways=1, shots=1, queries=1, crop=64), 0)


def test_episode_sampler_png_masks(tmp_path):
    """The usual folder layout (PNG masks): every class present must be found by the cell index."""
    data = load_folder(str(_episode_folder(tmp_path / "ep", mask_suffix="png")))
    spec = EpisodeSpec(ways=4, shots=1, queries=1, crop=64)
    sampler = EpisodeSampler(data, data.samples, [1, 2, 3, 4], spec, seed=1)
    assert sorted(sampler.classes) == [1, 2, 3, 4]
    _check_episode(sampler.episode(0), spec, ignored=(), known=(1, 2, 3, 4, 5))


def test_episode_sampler_non_contiguous_class_ids(tmp_path):
    """classes.json ids need not be 1..K (e.g. 1, 2, 5, 7): every class present must be usable."""
    data = load_folder(str(_episode_folder(tmp_path / "ep", class_ids=(1, 2, 5, 7, 9))))
    assert data.classes.ids == [1, 2, 5, 7, 9]
    spec = EpisodeSpec(ways=4, shots=1, queries=1, crop=64)
    sampler = EpisodeSampler(data, data.samples, [1, 2, 5, 7], spec, seed=1)
    assert sorted(sampler.classes) == [1, 2, 5, 7]
