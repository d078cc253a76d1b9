"""Dataset readers (ISPRS Vaihingen/Potsdam, PASCAL-5i, labelled folder).

Every test writes a tiny dataset into ``tmp_path`` in the exact layout the official downloads (or a
user's labelled folder) have, then checks what the readers return: samples, splits, decoded class ids
pixel for pixel, and windows of image and labels.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

import synthetic
from geoproto.datasets import fold_classes, load_folder, load_isprs, load_pascal5i
from geoproto.errors import GeoprotoError
from geoproto.training import load_dataset

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


# The official ISPRS colour table, by class id 1..6.
ISPRS_COLOURS = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]
ISPRS_NAMES = ["impervious", "building", "low_vegetation", "tree", "car", "clutter"]
BLACK = (0, 0, 0)


# ----------------------------------------------------------------------------------------- helpers


def write_raster(path: Path, data: np.ndarray, driver: str = "GTiff", transform: Affine | None = None) -> Path:
    """A plain image or mask (not georeferenced unless ``transform`` is given) in a dataset's layout."""
    return synthetic.write_raster(path, data, crs="EPSG:32632", transform=transform, driver=driver)


def colour_code(ids: np.ndarray, colours: list[tuple[int, int, int]], zero=BLACK) -> np.ndarray:
    """ids (H x W, 0..K) -> 3 x H x W uint8 RGB; id k gets colours[k - 1], id 0 gets ``zero``."""
    table = np.array([zero] + list(colours), np.uint8)
    return np.transpose(table[ids], (2, 0, 1)).copy()


def random_ids(rng: np.random.Generator, height: int, width: int, k: int, block: int = 1) -> np.ndarray:
    """Random class ids 1..k, constant over ``block`` x ``block`` squares."""
    small = rng.integers(1, k + 1, (-(-height // block), -(-width // block)))
    return np.kron(small, np.ones((block, block), np.int64))[:height, :width].astype(np.uint8)


def quadrant_ids(height: int, width: int) -> np.ndarray:
    """Top-left impervious, top-right building, bottom-left low vegetation, bottom-right tree; a car
    block and a clutter block inside the bottom-right quadrant."""
    ids = np.empty((height, width), np.uint8)
    h2, w2 = height // 2, width // 2
    ids[:h2, :w2], ids[:h2, w2:], ids[h2:, :w2], ids[h2:, w2:] = 1, 2, 3, 4
    ids[h2 + 2:h2 + 6, w2 + 2:w2 + 8] = 5
    ids[h2 + 8:h2 + 12, w2 + 2:w2 + 8] = 6
    return ids


def eroded(ids: np.ndarray) -> np.ndarray:
    """The ``_noBoundary`` variant: every pixel next to a different class becomes 0 (black)."""
    out = ids.copy()
    edge = np.zeros(ids.shape, bool)
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    out[edge] = 0
    return out


# ------------------------------------------------------------------------------------ ISPRS Vaihingen

V_SHAPE = {"1": (40, 56), "2": (36, 44), "3": (48, 40), "5": (44, 52)}  # (height, width), never square
V_COMPLETE = "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE"
V_ERODED = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"


@pytest.fixture
def vaihingen(tmp_path):
    """Areas 1, 3 (train), 5 (test) with full and eroded ground truth; area 2 has no ground truth."""
    root = tmp_path / "Vaihingen"
    rng = np.random.default_rng(7)
    truth = {}
    for area, (h, w) in V_SHAPE.items():
        image = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
        write_raster(root / "top" / f"top_mosaic_09cm_area{area}.tif", image,
                     transform=Affine(0.09, 0, 496000 + 100 * int(area), 0, -0.09, 5420000))
        if area == "2":
            continue
        ids = quadrant_ids(h, w) if area == "1" else random_ids(rng, h, w, 6, block=3)
        write_raster(root / V_COMPLETE / f"top_mosaic_09cm_area{area}.tif", colour_code(ids, ISPRS_COLOURS))
        write_raster(root / V_ERODED / f"top_mosaic_09cm_area{area}_noBoundary.tif",
                     colour_code(eroded(ids), ISPRS_COLOURS))
        truth[area] = (image, ids)
    return root, truth


def test_vaihingen_samples_classes_and_split(vaihingen):
    root, _ = vaihingen
    data = load_isprs(str(root), "vaihingen")
    names = sorted(s.name for s in data.samples)
    assert names == ["1", "3", "5"]  # area 2 has no ground truth: skipped
    by_name = {s.name: s for s in data.samples}
    assert Path(by_name["3"].image) == root / "top" / "top_mosaic_09cm_area3.tif"
    assert Path(by_name["3"].label) == root / V_COMPLETE / "top_mosaic_09cm_area3.tif"
    assert data.classes.ids == [1, 2, 3, 4, 5, 6]
    assert data.classes.names == ISPRS_NAMES
    assert [tuple(c) for c in data.classes.colors] == ISPRS_COLOURS
    assert data.downsample == 1 and data.pixel_size_m == pytest.approx(0.09)
    assert sorted(s.name for s in data.subset("train")) == ["1", "3"]
    assert [s.name for s in data.subset("test")] == ["5"]
    with pytest.raises(GeoprotoError, match="no split 'val'"):
        data.subset("val")


def test_vaihingen_decodes_quadrants_exactly(vaihingen):
    root, truth = vaihingen
    data = load_isprs(str(root), "vaihingen")
    sample = next(s for s in data.samples if s.name == "1")
    h, w = V_SHAPE["1"]
    assert data.size(sample) == (h, w)
    labels = data.read_labels(sample, h, w)
    assert labels.dtype == np.uint8 and labels.shape == (h, w)
    np.testing.assert_array_equal(labels, truth["1"][1])
    # Spot checks of the pattern itself, so the expectation is not only the helper's word.
    assert labels[0, 0] == 1 and labels[0, w - 1] == 2 and labels[h - 1, 0] == 3 and labels[h - 1, w - 1] == 4
    assert labels[h // 2 + 3, w // 2 + 3] == 5 and labels[h // 2 + 9, w // 2 + 3] == 6
    assert np.bincount(labels.ravel(), minlength=7)[0] == 0


@pytest.mark.parametrize("area", ["3", "5"])
def test_vaihingen_read_returns_the_window(vaihingen, area):
    root, truth = vaihingen
    data = load_isprs(str(root), "vaihingen")
    sample = next(s for s in data.samples if s.name == area)
    image, ids = truth[area]
    full = data.read_labels(sample, *V_SHAPE[area])
    np.testing.assert_array_equal(full, ids)
    row, col, height, width = 5, 9, 17, 23
    window, labels = data.read(sample, row, col, height, width)
    assert window.shape == (3, height, width) and window.dtype == np.float32
    assert labels.shape == (height, width)
    np.testing.assert_allclose(window, image[:, row:row + height, col:col + width] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(labels, ids[row:row + height, col:col + width])
    assert 0.0 <= window.min() and window.max() <= 1.0


def test_vaihingen_eroded_uses_no_boundary_files(vaihingen):
    root, truth = vaihingen
    data = load_isprs(str(root), "vaihingen", eroded=True)
    assert sorted(s.name for s in data.samples) == ["1", "3", "5"]
    for sample in data.samples:
        assert Path(sample.label) == root / V_ERODED / f"top_mosaic_09cm_area{sample.name}_noBoundary.tif"
        labels = data.read_labels(sample, *V_SHAPE[sample.name])
        expected = eroded(truth[sample.name][1])
        np.testing.assert_array_equal(labels, expected)  # black boundaries -> 0 (ignored)
        assert (labels == 0).any() and (labels > 0).any()


def test_vaihingen_eroded_without_eroded_files_refuses(vaihingen):
    root, _ = vaihingen
    shutil.rmtree(root / V_ERODED)
    with pytest.raises(GeoprotoError, match="ground truth"):
        load_isprs(str(root), "vaihingen", eroded=True)


def test_vaihingen_is_irrg_only(vaihingen):
    root, _ = vaihingen
    with pytest.raises(GeoprotoError, match="^bands: Vaihingen is distributed as IRRG only"):
        load_isprs(str(root), "vaihingen", bands="RGB")


# -------------------------------------------------------------------------------------- ISPRS Potsdam

P_TILES = {"2_10": (60, 76), "4_10": (52, 64), "2_13": (40, 40)}  # 2_13 ships without labels


@pytest.fixture
def potsdam(tmp_path):
    root = tmp_path / "Potsdam"
    rng = np.random.default_rng(3)
    truth = {}
    for tile, (h, w) in P_TILES.items():
        # Distinct constant bands tell the RGB and IRRG files apart; a ramp in band 2 checks positions.
        ramp = np.tile((np.arange(w) * 3).astype(np.uint8), (h, 1))
        rgb = np.stack([np.full((h, w), 10, np.uint8), np.full((h, w), 20, np.uint8), ramp])
        irrg = np.stack([np.full((h, w), 200, np.uint8), np.full((h, w), 150, np.uint8), ramp])
        write_raster(root / "2_Ortho_RGB" / f"top_potsdam_{tile}_RGB.tif", rgb)
        write_raster(root / "3_Ortho_IRRG" / f"top_potsdam_{tile}_IRRG.tif", irrg)
        if tile == "2_13":
            continue
        # Labels constant over aligned 2 x 2 blocks: every nearest-neighbour convention for halving
        # them agrees, so the expectation is the block grid itself.
        ids = random_ids(rng, h, w, 6, block=2)
        write_raster(root / "5_Labels_all" / f"top_potsdam_{tile}_label.tif", colour_code(ids, ISPRS_COLOURS))
        truth[tile] = ids
    return root, truth


def test_potsdam_samples_split_and_default_downsample(potsdam):
    root, _ = potsdam
    data = load_isprs(str(root), "potsdam")
    assert sorted(s.name for s in data.samples) == ["2_10", "4_10"]
    assert [s.name for s in data.subset("train")] == ["2_10"]
    assert [s.name for s in data.subset("test")] == ["4_10"]
    assert data.downsample == 2 and data.pixel_size_m == pytest.approx(0.10)  # 5 cm, halved
    sample = next(s for s in data.samples if s.name == "2_10")
    assert Path(sample.image) == root / "3_Ortho_IRRG" / "top_potsdam_2_10_IRRG.tif"  # IRRG by default
    assert Path(sample.label) == root / "5_Labels_all" / "top_potsdam_2_10_label.tif"
    assert data.size(sample) == (30, 38)
    assert load_isprs(str(root), "potsdam", downsample=1).size(sample) == (60, 76)


@pytest.mark.parametrize("tile", ["2_10", "4_10"])
def test_potsdam_downsampled_read(potsdam, tile):
    root, truth = potsdam
    data = load_isprs(str(root), "potsdam")
    sample = next(s for s in data.samples if s.name == tile)
    ids = truth[tile]
    half = ids[::2, ::2]
    h, w = data.size(sample)
    np.testing.assert_array_equal(data.read_labels(sample, h, w), half)
    row, col, height, width = 3, 5, 11, 14
    image, labels = data.read(sample, row, col, height, width)
    assert image.shape == (3, height, width) and labels.shape == (height, width)
    np.testing.assert_array_equal(labels, half[row:row + height, col:col + width])
    np.testing.assert_allclose(image[0], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(image[1], 150 / 255, atol=1e-6)
    # Band 3 is a ramp of 3 per full-resolution column: a downsampled column c covers columns 2c, 2c+1.
    expected = (2 * np.arange(col, col + width) + 0.5) * 3 / 255
    np.testing.assert_allclose(image[2, :, 1:-1], np.tile(expected[1:-1], (height, 1)), atol=2 / 255)


def test_potsdam_bands_pick_the_folder(potsdam):
    root, truth = potsdam
    rgb = load_isprs(str(root), "potsdam", bands="RGB", downsample=1)
    sample = next(s for s in rgb.samples if s.name == "4_10")
    assert Path(sample.image) == root / "2_Ortho_RGB" / "top_potsdam_4_10_RGB.tif"
    image, labels = rgb.read(sample, 0, 0, 8, 8)
    np.testing.assert_allclose(image[0], 10 / 255, atol=1e-6)
    np.testing.assert_allclose(image[1], 20 / 255, atol=1e-6)
    np.testing.assert_array_equal(labels, truth["4_10"][:8, :8])
    irrg = load_isprs(str(root), "potsdam", bands="irrg", downsample=1)
    image, _ = irrg.read(next(s for s in irrg.samples if s.name == "4_10"), 0, 0, 8, 8)
    np.testing.assert_allclose(image[0], 200 / 255, atol=1e-6)
    with pytest.raises(GeoprotoError, match="RGB or IRRG"):
        load_isprs(str(root), "potsdam", bands="RGBIR")


# ------------------------------------------------------------------------------------------- errors


def test_isprs_wrong_root(tmp_path):
    with pytest.raises(GeoprotoError, match="no such directory"):
        load_isprs(str(tmp_path / "missing"), "vaihingen")
    afile = write_raster(tmp_path / "top_mosaic_09cm_area1.tif", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(GeoprotoError, match="no such directory"):
        load_isprs(str(afile), "vaihingen")


def test_isprs_folder_without_tiles(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(GeoprotoError, match=r"top/top_mosaic_09cm_area\*\.tif"):
        load_isprs(str(tmp_path), "vaihingen")
    with pytest.raises(GeoprotoError, match="3_Ortho_IRRG"):
        load_isprs(str(tmp_path), "potsdam")
    # (The reader looks the city up in the split file first, so the message is the split file's.)
    with pytest.raises(GeoprotoError, match="toronto"):
        load_isprs(str(tmp_path), "toronto")


def _vaihingen_with_unknown_colour(tmp_path, share_rows: int) -> tuple:
    """A 50 x 40 area 1 whose ground truth has ``share_rows`` x 4 pixels of (10, 20, 30)."""
    root = tmp_path / "V"
    ids = quadrant_ids(50, 40)
    write_raster(root / "top" / "top_mosaic_09cm_area1.tif", np.zeros((3, 50, 40), np.uint8))
    rgb = colour_code(ids, ISPRS_COLOURS)
    rgb[:, :share_rows, :4] = np.array([10, 20, 30], np.uint8)[:, None, None]
    write_raster(root / "gts_for_participants" / "top_mosaic_09cm_area1.tif", rgb)
    data = load_isprs(str(root), "vaihingen")
    return data, data.samples[0], ids


def test_unknown_colours_above_tolerance_refused(tmp_path):
    data, sample, _ = _vaihingen_with_unknown_colour(tmp_path, 50)  # 200 of 2000 px: 10%
    with pytest.raises(GeoprotoError, match=r"10\.0% of label pixels have colours of no class"):
        data.read_labels(sample, 50, 40)
    with pytest.raises(GeoprotoError, match="colour"):
        data.read(sample, 0, 0, 50, 40)


def test_unknown_colours_below_tolerance_accepted(tmp_path):
    data, sample, ids = _vaihingen_with_unknown_colour(tmp_path, 1)  # 4 of 2000 px: 0.2%
    labels = data.read_labels(sample, 50, 40)
    expected = ids.copy()
    expected[:1, :4] = 0
    np.testing.assert_array_equal(labels, expected)


def test_load_dataset_dispatch(vaihingen, tmp_path):
    root, _ = vaihingen
    assert load_dataset("isprs", str(root)).name == "isprs-vaihingen"
    with pytest.raises(GeoprotoError, match="unknown dataset 'coco'"):
        load_dataset("coco", str(root))
    with pytest.raises(GeoprotoError, match="JPEGImages"):
        load_dataset("pascal5i", str(tmp_path))


# ---------------------------------------------------------------------------------------- PASCAL-5i

PASCAL_NAMES = ["2007_000032", "2007_000039", "2008_000123", "2009_004567"]


@pytest.fixture
def pascal(tmp_path):
    root = tmp_path / "VOC2012"
    rng = np.random.default_rng(11)
    masks = {}
    for index, name in enumerate(PASCAL_NAMES):
        h, w = 30 + 2 * index, 44
        colour = np.array([30 * (index + 1), 60, 200 - 20 * index], np.uint8)
        write_raster(root / "JPEGImages" / f"{name}.jpg", np.broadcast_to(colour[:, None, None], (3, h, w)).copy(),
                     driver="JPEG")
        mask = rng.integers(0, 21, (h, w)).astype(np.uint8)
        mask[:3, :] = 255  # VOC's "void" boundary
        mask[-3:, :5] = 0
        write_raster(root / "SegmentationClassAug" / f"{name}.png", mask, driver="PNG")
        masks[name] = mask
    # A mask without its image is not a sample.
    write_raster(root / "SegmentationClassAug" / "2010_000001.png", np.zeros((8, 8), np.uint8), driver="PNG")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(PASCAL_NAMES[:3]) + "\n")
    (sets / "val.txt").write_text(PASCAL_NAMES[2] + "\n" + PASCAL_NAMES[3] + "\n")
    return root, masks


def test_pascal_samples_classes_and_splits(pascal):
    root, _ = pascal
    data = load_pascal5i(str(root))
    assert [s.name for s in data.samples] == PASCAL_NAMES
    assert data.classes.ids == list(range(1, 22))
    assert data.classes.names[:3] == ["background", "aeroplane", "bicycle"]
    assert data.classes.names[-1] == "tvmonitor"
    # val images are never trained on, even when train.txt lists them
    assert [s.name for s in data.subset("train")] == PASCAL_NAMES[:2]
    assert [s.name for s in data.subset("test")] == PASCAL_NAMES[2:]


def test_pascal_trainaug_preferred(pascal):
    root, _ = pascal
    sets = root / "ImageSets" / "Segmentation"
    (sets / "trainaug.txt").write_text(PASCAL_NAMES[1] + "\n")
    assert [s.name for s in load_pascal5i(str(root)).subset("train")] == [PASCAL_NAMES[1]]


def test_pascal_decodes_voc_values(pascal):
    root, masks = pascal
    data = load_pascal5i(str(root))
    for index, sample in enumerate(data.samples):
        mask = masks[sample.name]
        expected = np.where(mask == 255, 0, mask.astype(np.int64) + 1)
        h, w = data.size(sample)
        assert (h, w) == mask.shape
        labels = data.read_labels(sample, h, w)
        np.testing.assert_array_equal(labels, expected)
        assert labels[0, 0] == 0 and labels[-1, 0] == 1  # void -> ignored, VOC background -> 1
        image, window = data.read(sample, 4, 6, 20, 30)
        assert image.shape == (3, 20, 30) and image.dtype == np.float32
        np.testing.assert_array_equal(window, expected[4:24, 6:36])
        colour = np.array([30 * (index + 1), 60, 200 - 20 * index]) / 255
        np.testing.assert_allclose(image.mean((1, 2)), colour, atol=3 / 255)  # JPEG: nearly exact on flat colour


def test_pascal_fold_classes():
    seen, unseen = fold_classes(0)
    assert unseen == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    assert len(seen) == 15 and not set(seen) & set(unseen)
    assert fold_classes(3)[1] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    all_unseen = sum((fold_classes(f)[1] for f in range(4)), [])
    assert len(all_unseen) == len(set(all_unseen)) == 20
    for bad in (4, -1):
        with pytest.raises(GeoprotoError, match="^fold: PASCAL-5i folds are 0, 1, 2 and 3"):
            fold_classes(bad)


def test_pascal_missing_folders(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(GeoprotoError, match="SegmentationClassAug"):
        load_pascal5i(str(tmp_path))


# ------------------------------------------------------------------------------------- folder layout

FOLDER_CLASSES = [("building", "#3C1098", (60, 16, 152)), ("land", "#8429F6", (132, 41, 246)),
                  ("road", "#6EC1E4", (110, 193, 228)), ("water", "#E2A929", (226, 169, 41))]
IGNORE = (155, 155, 155)


def _class_file(root: Path, colours: bool = True, ignore: bool = True) -> None:
    if colours:
        body = {"name": "test", "classes": [{"id": i + 1, "name": n, "color": c}
                                            for i, (n, c, _) in enumerate(FOLDER_CLASSES)]}
        if ignore:
            body["ignore_color"] = "#9B9B9B"
    else:
        body = {str(i + 1): n for i, (n, _, _) in enumerate(FOLDER_CLASSES)}
    (root / "classes.json").write_text(json.dumps(body))


@pytest.fixture
def colour_folder(tmp_path):
    """(a) RGB colour-coded masks with an ignore colour; (b) a paletted mask; names t1..t3 per part."""
    root = tmp_path / "aerial"
    rng = np.random.default_rng(5)
    colours = [rgb for _, _, rgb in FOLDER_CLASSES]
    truth = {}
    for part in (1, 2):
        for t in (1, 2, 3):
            name = f"image_part_{part:03d}t{t}"
            h, w = 24 + 4 * t, 36
            ids = random_ids(rng, h, w, 4, block=2)
            ids[-2:, :] = 0  # ignore colour
            write_raster(root / "images" / f"{name}.jpg", rng.integers(0, 256, (3, h, w), dtype=np.uint8),
                         driver="JPEG")
            if t == 2:  # paletted single band, palette order unrelated to class ids
                order = [3, 0, 2, 1]  # palette index -> class index
                palette = [IGNORE] + [colours[i] for i in order]
                index_of_id = np.zeros(5, np.uint8)
                for index, class_index in enumerate(order):
                    index_of_id[class_index + 1] = index + 1
                flat = [v for rgb in palette for v in rgb] + [0] * (768 - 3 * len(palette))
                mask = Image.fromarray(index_of_id[ids], mode="P")
                mask.putpalette(flat)
                (root / "masks").mkdir(parents=True, exist_ok=True)
                mask.save(root / "masks" / f"{name}.png")
            else:
                write_raster(root / "masks" / f"{name}.png", colour_code(ids, colours, zero=IGNORE), driver="PNG")
            truth[name] = ids
    _class_file(root)
    return root, truth


def test_folder_colour_and_paletted_masks(colour_folder):
    root, truth = colour_folder
    data = load_folder(str(root))
    assert data.name == "aerial"
    assert data.classes.names == [n for n, _, _ in FOLDER_CLASSES]
    assert sorted(s.name for s in data.samples) == sorted(truth)
    with rasterio.open(root / "masks" / "image_part_001t2.png") as src:  # the fixture really is paletted
        assert src.count == 1 and src.colorinterp[0] == rasterio.enums.ColorInterp.palette
    for sample in data.samples:
        ids = truth[sample.name]
        assert data.size(sample) == ids.shape
        np.testing.assert_array_equal(data.read_labels(sample, *ids.shape), ids, err_msg=sample.name)
        image, labels = data.read(sample, 3, 5, 10, 20)
        assert image.shape == (3, 10, 20)
        np.testing.assert_array_equal(labels, ids[3:13, 5:25], err_msg=sample.name)
    assert data.splits == {"train": sorted(truth), "test": []}


@pytest.mark.parametrize("ignore", ["#9B9B9", "grey", 155])
def test_folder_refuses_an_ignore_colour_not_written_as_a_colour(colour_folder, ignore):
    """It failed with "unexpected ValueError: invalid literal for int()" (or an AttributeError for a number)."""
    root, _ = colour_folder
    body = json.loads((root / "classes.json").read_text())
    (root / "classes.json").write_text(json.dumps({**body, "ignore_color": ignore}))
    with pytest.raises(GeoprotoError, match=f"classes.json: ignore_color: colour {re.escape(repr(ignore))} is "
                                            f"not #RRGGBB"):
        load_folder(str(root))


def test_folder_colour_masks_without_ignore_colour_refused(colour_folder):
    root, _ = colour_folder
    _class_file(root, ignore=False)  # the grey rows (~7%) are now colours of no class
    data = load_folder(str(root))
    sample = next(s for s in data.samples if s.name == "image_part_001t1")
    with pytest.raises(GeoprotoError, match="colours of no class"):
        data.read_labels(sample, *data.size(sample))


def test_folder_holdout_and_split_file(colour_folder, tmp_path):
    root, truth = colour_folder
    data = load_folder(str(root), holdout="t3$")
    assert [s.name for s in data.subset("test")] == ["image_part_001t3", "image_part_002t3"]
    assert len(data.subset("train")) == 4 and all(not s.name.endswith("t3") for s in data.subset("train"))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["image_part_001t1", "image_part_002t2"], "val": ["image_part_001t3"]}))
    data = load_folder(str(root), split_file=str(split))
    assert [s.name for s in data.subset("train")] == ["image_part_001t1", "image_part_002t2"]
    assert [s.name for s in data.subset("val")] == ["image_part_001t3"]
    split.write_text("not json")
    with pytest.raises(GeoprotoError, match="not a split file"):
        load_folder(str(root), split_file=str(split))


def test_folder_window_fills_nodata_and_nan_as_segment_reads_them(tmp_path):
    """Nodata and NaN pixels of a dataset window get the window's mean colour, byte for byte as
    ``RasterSource.read`` gives ``segment`` the same window: the encoder sees the same input in
    evaluation, training and inference."""
    from geoproto.raster import RasterSource
    from geoproto.tiling import Tile

    root = tmp_path / "holes"
    rng = np.random.default_rng(3)
    image = rng.uniform(100, 4000, (3, 64, 64)).astype(np.float32)
    image[:, 10:20, 5:30] = -9999  # declared nodata
    image[:, 30:34, 20:60] = np.nan
    synthetic.write_raster(root / "images" / "a.tif", image, nodata=-9999)
    write_raster(root / "masks" / "a.tif", rng.integers(0, 5, (64, 64)).astype(np.uint8))
    _class_file(root, colours=False)
    data = load_folder(str(root))
    row, col, side = 6, 4, 40
    window, _ = data.read(data.samples[0], row, col, side, side)
    with RasterSource.open(str(root / "images" / "a.tif")) as source:
        expected, valid = source.read(Tile(row, col, side, side, row, row + side, col, col + side), side)
    invalid = ~valid
    assert invalid[4:14, 1:26].all() and invalid[24:28, 16:].all() and invalid.sum() == 10 * 25 + 4 * 24
    assert window.tobytes() == expected.tobytes()
    np.testing.assert_array_equal(window[:, invalid], np.repeat(window[:, valid].mean(1, keepdims=True),
                                                                invalid.sum(), axis=1))


def test_folder_integer_masks(tmp_path):
    root = tmp_path / "ints"
    rng = np.random.default_rng(9)
    ids = rng.integers(0, 5, (20, 30)).astype(np.uint8)
    write_raster(root / "images" / "a.png", rng.integers(0, 256, (3, 20, 30), dtype=np.uint8), driver="PNG")
    write_raster(root / "masks" / "a.png", ids, driver="PNG")
    _class_file(root, colours=False)
    data = load_folder(str(root))
    assert data.classes.ids == [1, 2, 3, 4] and data.decoder.colors is None
    np.testing.assert_array_equal(data.read_labels(data.samples[0], 20, 30), ids)
    image, labels = data.read(data.samples[0], 2, 3, 10, 12)
    np.testing.assert_array_equal(labels, ids[2:12, 3:15])
    assert image.shape == (3, 10, 12)


def test_values_of_no_class_are_judged_on_the_whole_mask_not_on_a_crop(tmp_path):
    """A mask with 0.6 % of a value of no class, all in one corner: a crop of that corner (36 % of it) is
    read, as an episode or patch would read it; 2.25 % over the whole mask is refused, naming the value."""
    root = tmp_path / "ints"
    rng = np.random.default_rng(9)
    ids = rng.integers(1, 5, (80, 80)).astype(np.uint8)
    ids[:6, :6] = 9  # 36 px of 6400
    write_raster(root / "images" / "a.tif", rng.integers(0, 256, (3, 80, 80), dtype=np.uint8))
    write_raster(root / "masks" / "a.tif", ids)
    _class_file(root, colours=False)
    data = load_folder(str(root))
    _, labels = data.read(data.samples[0], 0, 0, 10, 10)
    assert (labels[:6, :6] == 0).all() and (labels[6:, 6:] > 0).all()
    ids[:12, :12] = 9  # 144 px: 2.25 %
    write_raster(root / "masks" / "a.tif", ids)
    data = load_folder(str(root))
    with pytest.raises(GeoprotoError, match=r"a\.tif: 2\.2% of label pixels hold values of no class \(9\)"):
        data.read(data.samples[0], 40, 40, 10, 10)  # a crop with none of them: the mask is judged


def test_folder_pixel_size_comes_from_the_georeferencing(tmp_path):
    """What the CRF's kernels are set from, as ``segment`` sets them from the raster: 0.25 m pixels in
    a projected CRS, none for a plain image."""
    rng = np.random.default_rng(3)
    for name, transform in (("geo", Affine(0.25, 0, 500000, 0, -0.25, 4000000)), ("plain", None)):
        root = tmp_path / name
        write_raster(root / "images" / "a.tif", rng.integers(0, 256, (3, 20, 30), dtype=np.uint8), transform=transform)
        write_raster(root / "masks" / "a.tif", rng.integers(0, 5, (20, 30)).astype(np.uint8))
        _class_file(root, colours=False)
    assert load_folder(str(tmp_path / "geo")).pixel_size_m == pytest.approx(0.25)
    assert load_folder(str(tmp_path / "plain")).pixel_size_m is None


def test_folder_errors(tmp_path):
    root = tmp_path / "f"
    with pytest.raises(GeoprotoError, match="images/ and masks/"):
        load_folder(str(root))
    write_raster(root / "images" / "a.png", np.zeros((3, 8, 8), np.uint8), driver="PNG")
    write_raster(root / "masks" / "b.png", np.zeros((8, 8), np.uint8), driver="PNG")
    with pytest.raises(GeoprotoError, match="no classes.json"):
        load_folder(str(root))
    _class_file(root, colours=False)
    with pytest.raises(GeoprotoError, match="same name"):
        load_folder(str(root))
    write_raster(root / "images" / "b.png", np.zeros((3, 8, 8), np.uint8), driver="PNG")
    with pytest.warns(UserWarning, match=f"^{root}: 1 image\\(s\\) in images/ have no mask of the same name in "
                                         f"masks/ \\(first: a.png\\); left out$"):
        assert [s.name for s in load_folder(str(root)).samples] == ["b"]


def test_folder_read_labels_resamples_png(tmp_path):
    """``read_labels(sample, h, w)`` must return h x w ids for PNG masks too (class_cells relies on it)."""
    root = tmp_path / "f"
    ids = np.ones((64, 96), np.uint8)
    ids[:, 48:] = 2
    write_raster(root / "images" / "a.png", np.zeros((3, 64, 96), np.uint8), driver="PNG")
    write_raster(root / "masks" / "a.png", ids, driver="PNG")
    _class_file(root, colours=False)
    data = load_folder(str(root))
    labels = data.read_labels(data.samples[0], 16, 24)
    assert labels.shape == (16, 24)
    np.testing.assert_array_equal(labels, ids[::4, ::4])


def test_real_dubai_folder_reads_every_mask_colour(dubai):
    """The real tiles: each mask colour of classes.json becomes its class id, checked against a plain
    count of the mask's colours; the ignore colour is the only unlabelled pixel."""
    from PIL import Image

    data = load_folder(str(dubai), holdout="t6$")
    assert {s.name[-2:] for s in data.subset("train")} == {"t1", "t2", "t3"}
    assert len(data.subset("test")) == 3 and all(s.name.endswith("t6") for s in data.subset("test"))
    colours = json.loads((dubai / "classes.json").read_text())["classes"]
    for sample in data.samples:
        labels = data.read_labels(sample, *data.size(sample))
        rgb = np.asarray(Image.open(dubai / "masks" / f"{sample.name}.png").convert("RGB"))
        for entry in colours:
            colour = tuple(int(entry["color"][i:i + 2], 16) for i in (1, 3, 5))
            painted = (rgb == colour).all(-1)
            assert (labels[painted] == data.classes.ids[data.classes.names.index(entry["name"])]).all()
        assert (labels == 0).mean() < 0.02  # the ignore colour only


@pytest.mark.parametrize("content", ['{"train": 5}', "[" * 100000 + "]" * 100000, '["train"]', '"x"'])
def test_malformed_split_files_are_refused_by_name(colour_folder, vaihingen, tmp_path, content):
    root, _ = colour_folder
    split = tmp_path / "split.json"
    split.write_text(content)
    with pytest.raises(GeoprotoError, match="split.json: not a split file"):
        load_folder(str(root), split_file=str(split))
    with pytest.raises(GeoprotoError, match="split.json: no vaihingen split"):
        load_isprs(str(vaihingen[0]), split_file=str(split))


def test_holdout_that_is_not_a_regular_expression(colour_folder):
    root, _ = colour_folder
    with pytest.raises(GeoprotoError, match=r"holdout: '\(\[' is not a regular expression"):
        load_folder(str(root), holdout="([")


def test_non_byte_imagery_is_stretched_per_raster_as_segment_does(tmp_path):
    """A uint16 image: every window gets the whole raster's per-band stretch (RasterSource's), so a pixel
    has one value whichever window holds it, in training as in ``segment``."""
    from geoproto.raster import RasterSource
    from geoproto.tiling import Tile

    root = tmp_path / "u16"
    rng = np.random.default_rng(4)
    pixels = rng.integers(1000, 4000, (3, 40, 60)).astype(np.uint16)
    pixels[:, :20, :30] = rng.integers(100, 300, (3, 20, 30))  # dark: a per-window stretch spreads it to 0..1
    write_raster(root / "images" / "a.tif", pixels)
    write_raster(root / "masks" / "a.tif", np.ones((40, 60), np.uint8))
    _class_file(root, colours=False)
    data = load_folder(str(root))
    whole, _ = data.read(data.samples[0], 0, 0, 40, 60)
    dark, _ = data.read(data.samples[0], 0, 0, 20, 30)
    np.testing.assert_array_equal(dark, whole[:, :20, :30])
    assert dark.max() < 0.1  # a per-window stretch would reach 1
    with RasterSource.open(data.samples[0].image) as source:
        segment_view, _ = source.read(Tile(0, 0, 40, 60, 0, 40, 0, 60), 60)
    np.testing.assert_allclose(whole, segment_view[:, :40, :60], atol=1e-6)


def test_folder_mask_of_another_size_is_refused_naming_both(tmp_path):
    """It was read in the image's grid: a half-resolution mask labelled the wrong pixels, silently."""
    root = tmp_path / "f"
    write_raster(root / "images" / "a.tif", np.zeros((3, 64, 64), np.uint8))
    write_raster(root / "masks" / "a.tif", np.ones((32, 32), np.uint8))
    _class_file(root, colours=False)
    with pytest.raises(GeoprotoError, match=f"^{root / 'masks' / 'a.tif'}: 32x32 pixels, but its image "
                                            f"{root / 'images' / 'a.tif'} is 64x64; a mask labels its image pixel "
                                            f"for pixel$"):
        load_folder(str(root))


def test_folder_split_naming_a_missing_image_is_refused(colour_folder, tmp_path):
    """A typo in the split file silently left the image out of training or evaluation."""
    root, _ = colour_folder
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["image_part_001t1", "image_part_01t2"], "test": ["image_part_001t3"]}))
    with pytest.raises(GeoprotoError, match=f"^split: {split}: split 'train' names 'image_part_01t2', which is no "
                                            f"image of {root} with a mask of the same name \\(1 such name\\(s\\)\\)$"):
        load_folder(str(root), split_file=str(split))


def test_folder_integer_mask_values_of_no_class_are_refused_unless_ignored(tmp_path):
    """Values classes.json does not list were read as unlabelled, silently (a 0-based mask against a
    1-based class list lost a class); colour masks were already refused so."""
    root = tmp_path / "ints"
    ids = np.ones((20, 30), np.uint8)
    ids[:, 15:] = 2
    ids[:5] = 255  # a quarter "ignore" the class list does not mention
    write_raster(root / "images" / "a.png", np.zeros((3, 20, 30), np.uint8), driver="PNG")
    write_raster(root / "masks" / "a.png", ids, driver="PNG")
    _class_file(root, colours=False)
    data = load_folder(str(root))
    with pytest.raises(GeoprotoError, match=f"^{root / 'masks' / 'a.png'}: 25.0% of label pixels hold values of no "
                                            f"class \\(255\\); check the dataset's class ids in classes.json \\(its "
                                            f"\"ignore_value\" ignores one\\)$"):
        data.read_labels(data.samples[0], 20, 30)
    body = json.loads((root / "classes.json").read_text())
    (root / "classes.json").write_text(json.dumps({"classes": body, "ignore_value": 255}))
    expected = np.where(ids == 255, 0, ids)
    np.testing.assert_array_equal(load_folder(str(root)).read_labels(data.samples[0], 20, 30), expected)
