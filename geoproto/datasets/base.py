"""A labelled image set as the training and evaluation code sees it, whatever its layout on disk.

Every reader (ISPRS, PASCAL-5i, folder) produces a ``LabelledDataset``: image/label file pairs, class
names, a label decoder (to ids 1..K, 0 = ignored) and a train/test split. Windows are read from the
files on demand (never a whole large tile per sample), optionally downsampled.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..errors import GeoprotoError
from ..classes import ClassInfo
from .. import raster
from ..raster import all_valid, band_scaling, model_input, open_raster
from ..support import palette_colors

# Share of label pixels whose colour or value matches no class (nor an ignored one) tolerated before a
# dataset is refused: JPEG-like noise on edges is accepted, a wrong colour table or class list is not.
UNKNOWN_LABEL_TOLERANCE = 0.01
WHOLE_FILE_DRIVERS = ("JPEG", "PNG")
WHOLE_FILE_MAX_PIXELS = 16_000_000


@dataclass
class Sample:
    name: str
    image: str
    label: str


@dataclass
class LabelDecoder:
    """Label file values to class ids (0 = ignored): by RGB colour, or by a value lookup table."""

    colors: dict[tuple[int, int, int], int] | None = None
    values: np.ndarray | None = None  # lookup table indexed by the label value
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    ignore_values: tuple[int, ...] = ()  # label values that are no class, ignored (e.g. 0, or PASCAL's 255)
    source: str = ""
    hint: str = ""  # what to do about values of no class, after "check the dataset's class ids"

    def __call__(self, data: np.ndarray, path: str | None = None, check: bool = True) -> np.ndarray:
        """``data``: bands x H x W as read from the label file ``path`` (named in errors). ``check``: refuse
        more than UNKNOWN_LABEL_TOLERANCE of values of no class; a whole mask's share, not a crop's."""
        where = path or self.source
        if self.colors is None:
            values = data[0].astype(np.int64)
            if values.min() < 0 or values.max() >= len(self.values):
                raise GeoprotoError(f"{where}: label value {values.max()} has no class")
            labels = self.values[values].astype(np.uint8)
            if check:
                unknown = (labels == 0) & ~np.isin(values, self.ignore_values)
                if unknown.mean() > UNKNOWN_LABEL_TOLERANCE:
                    found = ", ".join(map(str, np.unique(values[unknown])[:5].tolist()))
                    raise GeoprotoError(f"{where}: {unknown.mean():.1%} of label pixels hold values of no class "
                                        f"({found}); check the dataset's class ids{self.hint}")
            return labels
        if data.shape[0] < 3:
            raise GeoprotoError(f"{where}: expected an RGB colour-coded label file")
        code = (data[0].astype(np.int64) << 16) | (data[1].astype(np.int64) << 8) | data[2].astype(np.int64)
        keys = np.array([(r << 16) | (g << 8) | b for r, g, b in self.colors], np.int64)
        ids = np.array(list(self.colors.values()), np.uint8)
        order = np.argsort(keys)
        position = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
        hit = keys[order][position] == code
        labels = np.where(hit, ids[order][position], 0).astype(np.uint8)
        if check:
            ignored = np.isin(code, [(r << 16) | (g << 8) | b for r, g, b in self.ignore_colors])
            unknown = float((~hit & ~ignored).mean())
            if unknown > UNKNOWN_LABEL_TOLERANCE:
                raise GeoprotoError(f"{where}: {unknown:.1%} of label pixels have colours of no class; "
                                    f"check the dataset's colour table")
        return labels


@dataclass
class LabelledDataset:
    """Image/label pairs with their classes and split."""

    name: str
    classes: ClassInfo
    samples: list[Sample]
    decoder: LabelDecoder
    splits: dict[str, list[str]] = field(default_factory=dict)  # split name -> sample names
    bands: list[int] | None = None  # image bands to read (1-based); None: the first three
    downsample: int = 1
    source_pixel_m: float | None = None  # ground size of a file pixel; None: read from the first image
    # Label files whose share of values of no class was checked, whole (``_read_labels``): once each.
    checked_labels: set[str] = field(default_factory=set, repr=False, compare=False)

    @functools.cached_property
    def pixel_size_m(self) -> float | None:
        """Ground size in metres of a pixel as read (after downsampling), for the CRF's kernels as
        ``segment`` sets them: the reader's figure, else the first image's georeferencing (None without)."""
        size = self.source_pixel_m
        if size is None and self.samples:
            with open_raster(self.samples[0].image) as src:
                size = raster.pixel_size_m(src, src.crs)
        return None if size is None else size * self.downsample

    def subset(self, split: str) -> list[Sample]:
        if split not in self.splits:
            raise GeoprotoError(f"{self.name}: no split {split!r} (have: {', '.join(self.splits)})")
        names = set(self.splits[split])
        return [s for s in self.samples if s.name in names]

    def size(self, sample: Sample) -> tuple[int, int]:
        """(height, width) of the sample after downsampling."""
        with open_raster(sample.image) as src:
            return src.height // self.downsample, src.width // self.downsample

    def read(self, sample: Sample, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """A window in downsampled pixel coordinates: (bands x h x w float32 image in [0, 1], h x w ids)."""
        d = self.downsample
        window = Window(col * d, row * d, width * d, height * d)
        with open_raster(sample.image) as src:
            bands = self.bands or list(src.indexes[:3])
            data = _read(src, bands, window, (height, width), Resampling.bilinear)
            masks = None if all_valid(src, bands) else _read(src, bands, window, (height, width),
                                                                 Resampling.nearest, masks=True)
        # Scaled and filled as ``segment`` reads a raster (raster.band_scaling: once per image, not per
        # window; raster.model_input), so the encoder sees the same input in training, evaluation and inference.
        image, _ = model_input(data, _image_scaling(sample.image, tuple(bands)), masks)
        return image, self._read_labels(sample, height, width, window)

    def class_cells(self, sample: Sample, cell: int) -> np.ndarray:
        """Pixel counts per class in cells of ``cell`` px (classes x rows x cols), from a reduced read."""
        height, width = self.size(sample)
        rows, cols = max(1, height // cell), max(1, width // cell)
        step = 4  # sample every 4th pixel of each cell's rows and columns: plenty for presence
        labels = self.read_labels(sample, rows * cell // step, cols * cell // step)
        per = cell // step
        ids = self.classes.ids
        blocks = labels[: rows * per, : cols * per].reshape(rows, per, cols, per)
        return np.stack([(blocks == i).sum((1, 3)) for i in ids]) * step * step

    def read_labels(self, sample: Sample, height: int, width: int) -> np.ndarray:
        """The whole label file resampled (nearest) to ``height`` x ``width`` ids."""
        return self._read_labels(sample, height, width, None)

    def _read_labels(self, sample: Sample, height: int, width: int, window: Window | None) -> np.ndarray:
        """Ids of the label file, whole or a window. The tolerance of values of no class applies to a whole
        mask (edges of 255 crowd into some crops): a window's first read checks its mask at a quarter size."""
        if window is not None and sample.label not in self.checked_labels:
            full_height, full_width = self.size(sample)
            self.read_labels(sample, max(1, full_height // 4), max(1, full_width // 4))
        with open_raster(sample.label) as src:
            data = _read(src, list(src.indexes), window, (height, width), Resampling.nearest)
            palette = palette_colors(src) if self.decoder.colors is not None and src.count == 1 else None
            if palette is not None:
                data = np.transpose(palette[data[0]], (2, 0, 1))
        labels = self.decoder(data, sample.label, check=window is None)
        if window is None:  # only a whole mask's read checks its share of values of no class
            self.checked_labels.add(sample.label)
        return labels


def _read(src, bands: list[int], window: Window | None, shape: tuple[int, int], resampling,
          masks: bool = False) -> np.ndarray:
    """A windowed read of the bands' values, or with ``masks`` of GDAL's masks (nodata, alpha); files
    that cannot be read by window (JPEG, PNG) are decoded once per process and sliced, so episode crops
    do not decode a whole image each."""
    extent = (src.height, src.width) if window is None else (int(window.height), int(window.width))
    if src.driver in WHOLE_FILE_DRIVERS and extent == tuple(shape) and src.width * src.height <= WHOLE_FILE_MAX_PIXELS:
        data = _decoded(src.name, masks)[[b - 1 for b in bands]]
        if window is None:
            return data
        return data[:, int(window.row_off):int(window.row_off + window.height),
                    int(window.col_off):int(window.col_off + window.width)]
    read = src.read_masks if masks else src.read
    return read(bands, window=window, out_shape=(len(bands), *shape), resampling=resampling)


@functools.lru_cache(maxsize=128)
def _decoded(path: str, masks: bool = False) -> np.ndarray:
    with open_raster(path) as src:
        return src.read_masks() if masks else src.read()


@functools.lru_cache(maxsize=1024)
def _image_scaling(path: str, bands: tuple[int, ...]) -> list[tuple[float, float]]:
    with open_raster(path) as src:
        return band_scaling(src, list(bands))
