"""Reading orthophoto windows as model input: band choice, consistent scaling, nodata and alpha.

Non-uint8 data is stretched with one per-band (2nd, 98th) percentile pair computed once from a
decimated read of the whole raster, never per tile, so the same ground reflectance gets the same
input value in every tile; rasters processed together share one pair pooled over all of them
(``shared_scaling``, ``--stretch shared``, the default) or each have their own (``--stretch per-input``).
Memory stays bounded: statistics come from at most ~1 Mpx.

NaN and infinite values are nodata whether or not the raster declares them: they are masked like
declared nodata, left out of the stretch, and replaced before encoding (a single NaN reaching the
encoder spreads through its convolutions and the prototypes and turns the whole map into one class).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from .errors import GeoprotoError, no_such_file
from .tiling import Tile

STATS_MAX_SIDE = 1024
BLOCK_CACHE_MIN_BYTES = 64 << 20
STRETCH_PERCENTILES = (2.0, 98.0)


def open_raster(path: str) -> rasterio.io.DatasetReader:
    """Open a raster or fail with a one-line message naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except RasterioIOError as exc:
        if "No such file" in str(exc):
            raise no_such_file(path) from None
        raise GeoprotoError(f"{path}: not a readable raster ({exc})") from None
    complex_types = [dtype for dtype in dataset.dtypes if np.issubdtype(np.dtype(dtype), np.complexfloating)]
    if complex_types:
        dataset.close()
        raise GeoprotoError(f"{path}: holds complex numbers ({complex_types[0]}); geoproto reads real-valued bands "
                            f"(convert, e.g. take the amplitude, first)")
    return dataset


def component_files(path: str) -> list[str]:
    """The files GDAL reads for the raster ``path`` besides ``path`` itself (a VRT's sources, sidecars),
    so that no output replaces one; none if it cannot be opened (opening it later says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                files = dataset.files
    except RasterioIOError:
        return []
    return [file for file in files if os.path.abspath(file) != os.path.abspath(path)]


def absolute_path(path: str) -> str:
    """A path as recorded for another process or a later run: absolute, unless GDAL's (/vsizip/, /vsicurl/)."""
    return path if path.startswith("/vsi") else os.path.abspath(path)


def path_exists(path: str) -> bool:
    """Whether a path names an existing file; GDAL's virtual paths (/vsizip/, /vsicurl/) are left for
    GDAL to open, and to name in its own error if they do not exist."""
    return path.startswith("/vsi") or os.path.exists(path)


def read_error(path: str, exc: Exception, where: str = "") -> GeoprotoError:
    """A read failure stated with GDAL's cause (a VRT's missing source file, a truncated block), which
    rasterio keeps in the exception's cause behind "Read failed. See previous exception"."""
    cause = exc.__cause__ or exc.__context__
    detail = str(cause) if cause is not None and str(cause) else str(exc)
    return GeoprotoError(f"{path}: read error{where} ({detail})")


@dataclass
class RasterSource:
    """An orthophoto opened for windowed reads of 3 bands scaled to [0, 1].

    It owns its dataset handles: one per thread that reads (a GDAL handle must not be shared between
    threads), opened on first use and closed by ``close``; a copy sent to another process (pickled)
    opens its own. The scaling is set before any window is read (at open, from the raster's pixels; or
    pooled over the rasters of a run by ``inputs.stretch_inputs``, or a prototype file's), so every window,
    thread and process scales alike.
    """

    path: str
    bands: list[int] = field(default_factory=list)
    scale: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self):
        self._handles: dict[int, rasterio.io.DatasetReader] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str, bands: list[int] | None = None, measure: bool = True) -> "RasterSource":
        """``measure``: compute its own stretch now (a raster without a valid pixel is refused here); a
        caller that will pool the stretch over several rasters (``inputs.stretch_inputs``) passes False and
        calls ``measure`` on what it did not pool, so no raster's statistics are read twice."""
        source = cls(path)
        try:
            source.bands = _choose_bands(source.dataset, bands)
            if measure:
                source.measure()
        except BaseException:
            source.close()
            raise
        return source

    @property
    def dtype(self) -> str:
        """The data type of its (first) band: what a prototype file records of the rasters it was read from."""
        return self.dataset.dtypes[self.bands[0] - 1]

    def measure(self) -> None:
        """Its own stretch (``band_scaling``), unless one was set."""
        if not self.scale:
            self.scale = band_scaling(self.dataset, self.bands)

    @property
    def dataset(self) -> rasterio.io.DatasetReader:
        """This thread's handle on the raster."""
        thread = threading.get_ident()
        handle = self._handles.get(thread)
        if handle is None or handle.closed:
            handle = open_raster(self.path)
            with self._lock:
                self._handles[thread] = handle
        return handle

    def close(self) -> None:
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for handle in handles:
            handle.close()

    def __enter__(self) -> "RasterSource":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getstate__(self) -> dict:
        self.measure()  # a copy in another process scales as this one does
        return {"path": self.path, "bands": self.bands, "scale": self.scale}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def read(self, tile: Tile, size: int, context: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The tile as a 3 x (size + 2 context)^2 float32 image in [0, 1] and its size x size validity mask.

        ``context`` pixels around the window are read from the raster too (the encoder's features near
        a window's edge then equal those of whole-raster processing); beyond the raster's edges, and
        for windows of rasters smaller than ``size``, the image is reflected. Padding is marked invalid.
        """
        src = self.dataset
        row0, col0 = max(tile.row - context, 0), max(tile.col - context, 0)
        row1 = min(tile.row + size + context, src.height)
        col1 = min(tile.col + size + context, src.width)
        window = Window(col0, row0, col1 - col0, row1 - row0)
        try:
            data = src.read(self.bands, window=window)
            masks = None if all_valid(src, self.bands) else src.read_masks(self.bands, window=window)
        except RasterioIOError as exc:
            raise read_error(self.path, exc, f" at window {window}") from None
        if not self.scale:
            with self._lock:
                self.measure()
        image, valid = model_input(data, self.scale, masks)  # over the window and its context
        pad = ((row0 - (tile.row - context), tile.row + size + context - row1),
               (col0 - (tile.col - context), tile.col + size + context - col1))
        if any(p for side in pad for p in side):
            image = np.stack([_pad(band, pad) for band in image])
        window_valid = np.zeros((size, size), bool)
        window_valid[:tile.height, :tile.width] = valid[tile.row - row0:tile.row - row0 + tile.height,
                                                        tile.col - col0:tile.col - col0 + tile.width]
        return image, window_valid


def block_cache(src: rasterio.io.DatasetReader, window: int, output_bytes_per_pixel: int, output_block: int):
    """A GDAL block cache sized for the blocks under one row of windows, input and output.

    GDAL's default cache is 5% of RAM and keeps every block read or written until it is full: on a
    large orthophoto that is a gigabyte of resident memory held for nothing, and memory that grows with
    the raster. Windows advance row by row, so only the block rows under the current row of windows are
    reused (each window straddles at most one block boundary more than it spans). A GDAL_CACHEMAX set by
    the user wins.
    """
    if "GDAL_CACHEMAX" in os.environ:
        return contextlib.nullcontext()
    input_block = max(1, src.block_shapes[0][0])
    input_rows = (-(-window // input_block) + 1) * input_block
    output_rows = (-(-window // output_block) + 1) * output_block
    input_bytes = sum(np.dtype(dtype).itemsize for dtype in src.dtypes)
    needed = src.width * (input_rows * input_bytes + output_rows * output_bytes_per_pixel)
    return rasterio.Env(GDAL_CACHEMAX=max(BLOCK_CACHE_MIN_BYTES, int(1.5 * needed)))


def _valid_values(data: np.ma.MaskedArray) -> np.ndarray:
    """Bands x pixels: the values of the pixels valid in every band (unmasked and finite)."""
    valid = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(np.asarray(data)).all(axis=0)
    return np.asarray(data)[:, valid]


def _pad(array: np.ndarray, pad: tuple) -> np.ndarray:
    mode = "reflect" if min(array.shape) > 1 else "edge"
    return np.pad(array, pad, mode=mode)


def _choose_bands(src: rasterio.io.DatasetReader, bands: list[int] | None) -> list[int]:
    chosen = _band_choice(src, bands)
    paletted = [b for b in chosen if src.colorinterp[b - 1] == ColorInterp.palette]
    if paletted:
        # Palette indices are in no order of brightness: read as grey levels they are not the image shown.
        raise GeoprotoError(f"{src.name}: band {paletted[0]} holds palette indices, not colours; expand it to RGB "
                            f"first (gdal_translate -expand rgb {src.name} rgb.tif)")
    return chosen


def _band_choice(src: rasterio.io.DatasetReader, bands: list[int] | None) -> list[int]:
    if bands:
        if len(bands) not in (1, 3):
            raise GeoprotoError(f"takes 1 or 3 band numbers, got {len(bands)}", param="bands")
        bad = [b for b in bands if not 1 <= b <= src.count]
        if bad:
            raise GeoprotoError(f"{src.name}: has {src.count} band(s); no band {bad[0]}", param="bands")
        # An RGBA raster's band 4 taken for near-infrared (--bands 4,3,2) would feed transparency as imagery.
        # Some RGBN files tag their near-infrared band as alpha: retagging it is the way round.
        alpha = [b for b in bands if src.colorinterp[b - 1] == ColorInterp.alpha]
        if alpha:
            raise GeoprotoError(f"{src.name}: band {alpha[0]} is its alpha (transparency) band, not imagery; it "
                                f"masks the others already (if it holds imagery, such as near-infrared, retag it: "
                                f"gdal_edit.py -colorinterp_{alpha[0]} undefined {src.name})", param="bands")
        return list(bands)
    data_bands = [i for i, ci in zip(src.indexes, src.colorinterp) if ci != ColorInterp.alpha]
    if len(data_bands) >= 3:
        return data_bands[:3]
    if len(data_bands) == 1:
        return data_bands
    raise GeoprotoError(f"{src.name}: {len(data_bands)} data bands; choose 1 or 3 of them", param="bands")


def model_input(data: np.ndarray, scale: list[tuple[float, float]], masks: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Raster values (bands x H x W, as read) as the encoder's input, the 3 x H x W float32 image in [0, 1],
    and which pixels are valid (H x W): finite in every band and, with GDAL's ``masks`` (nodata, alpha),
    unmasked in every band. Shared by everything that feeds the encoder (``RasterSource.read``, the
    datasets' windows), so it sees the same values in training, evaluation and inference."""
    data = data.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    valid = np.all(finite, axis=0)
    if masks is not None:
        valid &= np.all(masks > 0, axis=0)
    image = stretch(data, scale, finite)
    if valid.any() and not valid.all():
        # Invalid pixels get the window's mean colour: a fill value (black for 0 or -9999) is an edge
        # the encoder sees, and labels a band of valid pixels beside the nodata as a dark class.
        image[:, ~valid] = image[:, valid].mean(axis=1, keepdims=True)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    return image, valid


def stretch(data: np.ndarray, scale: list[tuple[float, float]], finite: np.ndarray) -> np.ndarray:
    """Bands x H x W raster values as float32 in [0, 1], by each band's (low, high) from ``band_scaling``.
    Values not ``finite`` become ``low``: no NaN in the arithmetic (callers mask them as invalid)."""
    image = np.empty(data.shape, np.float32)
    for i, (low, high) in enumerate(scale):
        band = np.where(finite[i], data[i], low)
        image[i] = np.clip((band - low) / max(high - low, 1e-6), 0.0, 1.0)
    return image


def all_valid(src: rasterio.io.DatasetReader, bands: list[int]) -> bool:
    """Whether GDAL masks no pixel of ``bands`` (no nodata, alpha or mask band): their masks need no read."""
    return all(MaskFlags.all_valid in src.mask_flag_enums[b - 1] for b in bands)


def band_scaling(src: rasterio.io.DatasetReader, bands: list[int]) -> list[tuple[float, float]]:
    """Per band (low, high): 0 and 255 for byte bands, else the valid pixels' (2nd, 98th) percentiles
    over the whole raster (a decimated read)."""
    byte_bands = all(src.dtypes[b - 1] == "uint8" for b in bands)
    if byte_bands and all_valid(src, bands):
        return [(0.0, 255.0)] * len(bands)  # no nodata, no alpha, no NaN: nothing to read
    values = _valid_sample(src, bands, _statistics_factor(src))
    return [(0.0, 255.0)] * len(bands) if byte_bands else _percentile_scaling(values)


def check_valid(source: RasterSource) -> None:
    """Refuse a raster without a valid pixel, as measuring its stretch does, where its stretch is given
    (a prototype file's) rather than measured."""
    if not all_valid(source.dataset, source.bands):
        _valid_sample(source.dataset, source.bands, _statistics_factor(source.dataset))


def _statistics_factor(src: rasterio.io.DatasetReader) -> int:
    """The decimation that reads at most STATS_MAX_SIDE pixels a side of ``src``."""
    return max(1, int(np.ceil(max(src.height, src.width) / STATS_MAX_SIDE)))


def shared_scaling(sources: list[RasterSource]) -> list[tuple[float, float]] | None:
    """One stretch for rasters processed together (the tiles of one orthophoto, say): the percentiles of
    their valid pixels pooled, each raster sampled in proportion to its pixels, so that the same ground
    gets the same input values in every raster, as it does in every window of one. None where the rasters
    cannot share one (bands of different data types or counts) or need none (byte bands)."""
    types = {tuple(source.dataset.dtypes[b - 1] for b in source.bands) for source in sources}
    if len(types) != 1 or all(dtype == "uint8" for dtype in next(iter(types))):
        return None
    total = sum(source.dataset.height * source.dataset.width for source in sources)
    factor = max(1, int(np.ceil(np.sqrt(total) / STATS_MAX_SIDE)))
    return _percentile_scaling(np.concatenate([_valid_sample(source.dataset, source.bands, factor)
                                               for source in sources], axis=1))


def _valid_sample(src: rasterio.io.DatasetReader, bands: list[int], factor: int) -> np.ndarray:
    """Bands x pixels: the valid pixels of a read decimated by ``factor`` (the raster's blocks if none of
    the decimated samples is valid); refuses a raster without any."""
    shape = (len(bands), max(1, src.height // factor), max(1, src.width // factor))
    try:
        values = _valid_values(src.read(bands, out_shape=shape, masked=True))
        if values.shape[1] == 0 and factor > 1:  # a small valid area can fall between the decimated samples
            values = np.concatenate([_valid_values(src.read(bands, window=window, masked=True))
                                     for _, window in src.block_windows(1)], axis=1)
    except RasterioIOError as exc:
        raise read_error(src.name, exc) from None
    if values.shape[1] == 0:
        # Declared nodata, NaN and a transparent alpha band all count: none of them can be segmented.
        raise GeoprotoError(f"{src.name}: no valid pixels (all nodata, NaN or transparent)")
    return values


def _percentile_scaling(values: np.ndarray) -> list[tuple[float, float]]:
    """Per band of ``values`` (bands x pixels) its (2nd, 98th) percentiles (a constant band: its range)."""
    scale = []
    for band in values:
        low, high = np.percentile(band, STRETCH_PERCENTILES)
        if high <= low:
            low, high = float(band.min()), float(band.max()) + 1e-6
        scale.append((float(low), float(high)))
    return scale


def apply_transform(transform, cols, rows) -> tuple:
    """``transform`` (an ``affine.Affine``) applied to pixel coordinates, scalars or arrays: what
    ``transform * (cols, rows)`` gives, without the operator newer affine releases deprecate (its warning
    would reach the command line)."""
    return (transform.a * cols + transform.b * rows + transform.c,
            transform.d * cols + transform.e * rows + transform.f)


def finite_geometries(geometries) -> np.ndarray:
    """Which of ``geometries`` (an array of shapely geometries) have only finite coordinates, in one pass
    over all of them: one reprojected beyond where its projection holds (a world-wide file into a UTM
    zone) gets infinite ones, which GEOS cannot handle. An empty geometry counts as finite."""
    import shapely

    coords, index = shapely.get_coordinates(geometries, return_index=True)
    finite = np.ones(len(geometries), bool)
    finite[index[~np.isfinite(coords).all(axis=1)]] = False
    return finite


# Gauss-Legendre nodes per row of a geographic raster: the ellipsoid's area density is smooth enough for
# these to be exact to double precision on rows up to 10 degrees tall.
ZONE_QUADRATURE_NODES = 5


def metres_per_unit(crs) -> float | None:
    """Metres per unit of a projected CRS; None without a CRS or for geographic degrees."""
    if crs is None or not crs.is_projected:
        return None
    return float(crs.linear_units_factor[1])


def pixel_area_m2(src: rasterio.io.DatasetReader, crs) -> float | None:
    """The area of one pixel in square metres (None without a metric CRS)."""
    unit = metres_per_unit(crs)
    return None if unit is None else float(abs(src.transform.determinant) * unit ** 2)


def row_areas_m2(src: rasterio.io.DatasetReader, crs) -> np.ndarray | None:
    """The area in square metres of one pixel in each row: one value repeated on a projected raster; on the
    CRS's ellipsoid for a north-up geographic raster, where a pixel's area depends only on its row's
    latitude. None on a rotated geographic grid or without a CRS.

    A geographic row's pixel is the ellipsoidal zone between its two parallels, integrated over latitude
    (Gauss-Legendre, exact to 1e-14 even on 10 degree rows), not a geodesic quadrilateral
    (``Geod.polygon_area_perimeter``), whose top and bottom edges bow poleward off the parallels (3e-5
    relative on a 1 degree pixel), nor a closed-form difference of two authalic terms, which cancels
    digits on centimetre pixels."""
    area = pixel_area_m2(src, crs)
    if area is not None:
        return np.full(src.height, area)
    transform = src.transform
    if crs is None or not crs.is_geographic or transform.b != 0 or transform.d != 0:
        return None
    from pyproj import CRS

    geographic = CRS.from_user_input(crs.to_wkt())
    radians = geographic.axis_info[0].unit_conversion_factor  # per unit of the CRS's angles (degree, grad)
    geod = geographic.get_geod()
    flattening = geod.f
    squared_e = flattening * (2 - flattening)
    minor = geod.a * (1 - flattening)
    edges = np.clip((transform.f + transform.e * np.arange(src.height + 1)) * radians, -np.pi / 2, np.pi / 2)
    south, north = np.minimum(edges[:-1], edges[1:]), np.maximum(edges[:-1], edges[1:])
    nodes, weights = np.polynomial.legendre.leggauss(ZONE_QUADRATURE_NODES)
    half = (north - south)[:, None] / 2
    latitude = (north + south)[:, None] / 2 + half * nodes
    # dA = b² cos φ / (1 - e² sin² φ)² dφ dλ on the ellipsoid of semi-minor axis b
    density = minor ** 2 * np.cos(latitude) / (1 - squared_e * np.sin(latitude) ** 2) ** 2
    return (half[:, 0] * (density * weights).sum(1)) * abs(transform.a) * radians


def pixel_size_m(src: rasterio.io.DatasetReader, crs) -> float | None:
    """The pixel width in metres of a north-up raster (None if rotated or without a metric CRS)."""
    unit = metres_per_unit(crs)
    return None if unit is None or src.transform.b != 0 else float(abs(src.transform.a) * unit)
