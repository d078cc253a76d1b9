"""Writing results: the georeferenced class raster, per-class probabilities, polygons and a preview.

Every file is written in a hidden staging folder beside its target and moved into place only when the
whole run succeeded, so a failed or interrupted run never leaves a half-written file at the target.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.windows import Window

from .errors import GeoprotoError
from .classes import NODATA, NODATA_NAME, ClassInfo
from .raster import apply_transform
from .tiling import Tile

PREVIEW_MAX_SIDE = 2048
PROBABILITY_NODATA = float("nan")
BLOCK_SIDE = 256  # of the tiled output rasters
# Creation options of ours beneath the user's (--co): float prediction for the probabilities, DEFLATE for a COG.
PROBABILITY_OPTIONS = {"predictor": 3}
COG_OPTIONS = {"compress": "deflate"}
POLYGON_EDGE_DEGREES = 0.01  # longest polygon edge when areas are measured on the ellipsoid
VECTOR_STRIP_ROWS = 2048
# Distinct colours for classes without one of their own (Okabe-Ito, then Tableau).
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (127, 127, 127), (188, 189, 34), (23, 190, 207), (148, 103, 189), (140, 86, 75)]


class _GDALErrors(logging.Handler):
    """Collects the errors GDAL signalled (rasterio logs the ones it does not raise at INFO level)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if record.levelno >= logging.ERROR or "GDAL signalled an error" in message:
            self.messages.append(message.split("msg=", 1)[-1].strip("'\""))


@contextlib.contextmanager
def gdal_write_errors(path: str):
    """Raise if GDAL reported an error while writing: libtiff's write failures (disk full) are only
    logged by rasterio, and the dataset still closes as if all was well."""
    handler = _GDALErrors()
    logger = logging.getLogger("rasterio")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    if handler.messages:
        folder = os.path.dirname(os.path.abspath(path))
        full = " (the disk is full)" if shutil.disk_usage(folder).free < 4 << 20 else ""
        raise GeoprotoError(f"{path}: writing failed{full}: {handler.messages[0].rstrip('.')}")


STAGING_PREFIX = ".geoproto-"
# Staging folders are ``.geoproto-<pid>-<random>`` (tempfile.mkdtemp); ``.<stem>.partial-<pid><ext>``
# are the temporary files older releases wrote beside the target, which a killed run of theirs may have
# left. Both are removed by a later run once their process is gone.
_STAGING_FOLDER = re.compile(r"^\.geoproto-(\d+)-[a-z0-9_]{8}$")


class StagedOutputs:
    """Temporary paths for a run's outputs, moved onto their targets together on ``commit``.

    Each output is written inside a hidden staging folder beside its target, under the target's own
    name, so formats that write sibling files (Shapefile's .shx/.dbf/.prj/.cpg, GDAL's .aux.xml) write
    them there too; ``commit`` moves every file of the folder into place. No output may be one of the
    run's inputs or another of its outputs, whatever the path spelling, symlink or hard link.
    """

    def __init__(self, overwrite: bool, inputs: dict[str, str | None] | None = None):
        self.overwrite = overwrite
        self.inputs = {name: path for name, path in (inputs or {}).items() if path}
        self.staged: dict[str, tuple[str, str]] = {}  # target -> (parameter, temporary path)
        self.folders: dict[str, str] = {}  # output folder -> its staging folder

    def stage(self, target: str, param: str = "output") -> str:
        """Check ``target`` can be written now (before any work) and return its temporary path; errors
        name ``param``, the parameter that chose ``target``."""
        target = os.path.abspath(target)
        folder = os.path.dirname(target)
        if os.path.isdir(target):
            raise GeoprotoError(f"{target}: is a directory", param=param)
        for name, path in self.inputs.items():
            if same_file(target, path):
                raise GeoprotoError(f"{target}: is the input {name} {path}; an output never replaces an input, "
                                    f"choose another path", param=param, mentions=(name,))
        for other, (other_param, _) in self.staged.items():
            if same_file(target, other):
                raise GeoprotoError(f"{target}: is also {other_param}; give each output its own path",
                                    param=param, mentions=(other_param,))
        if os.path.lexists(target) and not self.overwrite:
            raise GeoprotoError(f"{target}: exists; allow overwrite to replace it", param=param,
                                mentions=("overwrite",))
        if not os.path.isdir(folder):
            raise GeoprotoError(f"{folder}: output directory does not exist", param=param)
        if not os.access(folder, os.W_OK):
            raise GeoprotoError(f"{folder}: output directory is not writable", param=param)
        remove_stale_staging(target)
        if folder not in self.folders:
            self.folders[folder] = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder)
        temporary = os.path.join(self.folders[folder], os.path.basename(target))
        self.staged[target] = (param, temporary)
        return temporary

    def commit(self) -> None:
        moves = [(os.path.join(staging, name), os.path.join(folder, name))
                 for folder, staging in self.folders.items() for name in sorted(os.listdir(staging))]
        if not self.overwrite:
            # Only the named targets: a sibling without its main file (an .dbf whose .shp was deleted) is
            # the remains of a broken layer, replaced with the new one.
            for target, (param, _) in self.staged.items():
                if os.path.lexists(target):
                    raise GeoprotoError(f"{target}: appeared while running; allow overwrite to replace it",
                                        param=param, mentions=("overwrite",))
        # Sibling files (a Shapefile's .dbf, the class raster's .aux.xml legend) were not known at stage
        # time: they may not replace an input either.
        for _, destination in moves:
            for name, path in self.inputs.items():
                if same_file(destination, path):
                    raise GeoprotoError(f"{destination}: written beside an output, is the input {name} {path}; "
                                        f"an output never replaces an input, choose another path")
        for source, destination in moves:
            os.replace(source, destination)
        self.discard()

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, *exc_info) -> None:
        """Whatever happened, nothing staged is left behind (after ``commit`` there is nothing left)."""
        self.discard()

    def discard(self) -> None:
        for staging in self.folders.values():
            shutil.rmtree(staging, ignore_errors=True)
        self.folders.clear()
        self.staged.clear()


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same real path (symlinks resolved) or the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet), or is not a local file (/vsizip/, URLs)
        return False


def remove_stale_staging(target: str) -> list[str]:
    """Remove what runs killed outright (kill -9, the OOM killer) left beside ``target``: staging
    folders, and the target's own partial files of earlier versions; those of live processes are kept.
    Returns the names removed."""
    folder = os.path.dirname(os.path.abspath(target))
    stem, ext = os.path.splitext(os.path.basename(target))
    partial = re.compile(rf"^\.{re.escape(stem)}\.partial-(\d+){re.escape(ext)}$")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(folder, name)
        folder_entry = os.path.isdir(path) and not os.path.islink(path)
        found = (_STAGING_FOLDER if folder_entry else partial).match(name)
        if not found or _process_alive(int(found.group(1))):
            continue
        try:
            if folder_entry:
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(name)
        except OSError:
            continue  # another user's, or already gone
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or cannot tell: keep it
    return True


def class_colors(classes: ClassInfo) -> dict[int, tuple[int, int, int, int]]:
    colors = {NODATA: (0, 0, 0, 0)}
    for index, (class_id, color) in enumerate(zip(classes.ids, classes.colors)):
        colors[class_id] = (*(color or PALETTE[index % len(PALETTE)]), 255)
    return colors


def with_options(defaults: dict, creation_options: dict) -> dict:
    """``defaults`` overridden by the user's creation options (GDAL's names ignore case)."""
    overridden = {name.lower() for name in creation_options}
    return {**{k: v for k, v in defaults.items() if k.lower() not in overridden}, **creation_options}


# The COG driver's creation options that GDAL's GTiff driver takes under the same name with the same values;
# the COG's others either have a GTiff equivalent (``geotiff_options``) or shape only the COG's layout.
_SHARED_WITH_GTIFF = {"compress", "num_threads", "nbits", "bigtiff", "sparse_ok", "geotiff_version", "max_z_error",
                      "jxl_lossless", "jxl_effort", "jxl_distance", "jxl_alpha_distance"}
_COG_PREDICTORS = {"yes": None, "standard": "2", "floating_point": "3", "no": "1"}  # None: by data type
_LEVEL_NAMES = {"zstd": "zstd_level", "lerc_zstd": "zstd_level", "lzma": "lzma_preset"}  # else: zlevel (deflate)
_QUALITY_NAMES = {"jpeg": "jpeg_quality", "webp": "webp_level"}


def geotiff_options(options: dict, dtype: str, cog: bool) -> dict:
    """The creation options of a GeoTIFF of ``dtype`` a run writes: the user's own, or where the class raster
    is a ``cog``, the GeoTIFF equivalent of the COG's (for the class raster before its COG copy, and the
    probabilities): the COG names the predictor YES/STANDARD/FLOATING_POINT/NO, its blocks BLOCKSIZE, its
    compression LEVEL and QUALITY, where GTiff takes 1/2/3, BLOCKXSIZE/BLOCKYSIZE, ZLEVEL... Options that
    shape only the COG's layout (overviews, tiling scheme) are left to the copy; a value the COG driver does
    not know passes as given, for GDAL to refuse."""
    if not cog:
        return options
    return {geotiff_name: value for _, geotiff_name, value in _geotiff_equivalents(options, dtype)}


def _geotiff_equivalents(options: dict, dtype: str):
    """(the COG option's name, its GeoTIFF name, the GeoTIFF value) for each of ``options`` that has one;
    BLOCKSIZE has two (BLOCKXSIZE, BLOCKYSIZE)."""
    compress = next((str(v).lower() for k, v in options.items() if k.lower() == "compress"), "")
    for name, value in options.items():
        key = name.lower()
        if key in _SHARED_WITH_GTIFF:
            yield name, name, value
        elif key == "predictor":
            predictor = _COG_PREDICTORS.get(str(value).lower(), value)
            yield name, name, predictor or ("3" if np.issubdtype(np.dtype(dtype), np.floating) else "2")
        elif key == "blocksize":
            yield name, "blockxsize", value
            yield name, "blockysize", value
        elif key == "level":
            yield name, _LEVEL_NAMES.get(compress, "zlevel"), value
        elif key == "quality" and compress in _QUALITY_NAMES:
            yield name, _QUALITY_NAMES[compress], value


def _geotiff_profile(reference, crs, count: int, dtype: str, nodata, creation_options: dict) -> dict:
    return with_options({
        "driver": "GTiff", "width": reference.width, "height": reference.height, "count": count,
        "dtype": dtype, "crs": crs, "transform": reference.transform, "nodata": nodata,
        "tiled": True, "blockxsize": BLOCK_SIDE, "blockysize": BLOCK_SIDE, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }, creation_options)


class ResultWriter:
    """Writes tile cores of class ids (and optionally probabilities) into tiled, compressed GeoTIFFs.

    ``metadata`` (how the result was made) is written as dataset tags of both rasters. The palette,
    category names and attribute table go in the class raster's ``.aux.xml`` (``write_legend``): a TIFF
    palette always has 256 entries, and QGIS would list every one of them in the legend.
    """

    def __init__(self, reference, crs, classes: ClassInfo, class_path: str, probability_path: str | None,
                 metadata: dict[str, str] | None = None, creation_options: dict | None = None, cog: bool = False):
        """``cog``: the class raster becomes a COG (``convert_to_cog``), so ``creation_options`` are the COG
        driver's, given here as their GeoTIFF equivalent (``geotiff_options``)."""
        self.classes = classes
        options = creation_options or {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self.labels = rasterio.open(class_path, "w", **_geotiff_profile(
                reference, crs, 1, "uint8", NODATA, geotiff_options(options, "uint8", cog)))
            self.probabilities = None
            if probability_path:
                profile = _geotiff_profile(reference, crs, len(classes.ids), "float32", PROBABILITY_NODATA,
                                           with_options(PROBABILITY_OPTIONS, geotiff_options(options, "float32", cog)))
                self.probabilities = rasterio.open(probability_path, "w", **profile)
        self.labels.set_band_description(1, "class")
        tags = {f"CLASS_{i}": n for i, n in zip(classes.ids, classes.names)}
        self.labels.update_tags(GEOPROTO_CLASSES=json.dumps(dict(zip(classes.ids, classes.names))),
                                **tags, **(metadata or {}))
        if self.probabilities is not None:
            self.probabilities.update_tags(**(metadata or {}))
            for band, name in enumerate(classes.names, start=1):
                self.probabilities.set_band_description(band, name)

    def write(self, tile: Tile, labels: np.ndarray, probabilities: np.ndarray | None) -> None:
        """``labels``: the tile's class ids (0 where invalid); ``probabilities``: K x H x W or None."""
        rows, cols = tile.core_slices
        window = Window(tile.core_col0, tile.core_row0, tile.core_col1 - tile.core_col0,
                        tile.core_row1 - tile.core_row0)
        core = labels[rows, cols]
        self.labels.write(core, 1, window=window)
        if self.probabilities is not None and probabilities is not None:
            scores = probabilities[:, rows, cols].astype(np.float32)
            scores[:, core == NODATA] = PROBABILITY_NODATA  # scores of padding or nodata mean nothing
            self.probabilities.write(scores, window=window)

    def close(self) -> None:
        self.labels.close()
        if self.probabilities is not None:
            self.probabilities.close()


def build_overviews(path: str) -> list[int]:
    """Internal overviews (mode resampling: a class is never averaged into another), halving until the
    smallest level fits in about one block. Returns the factors built."""
    with rasterio.open(path, "r+") as dst:
        factors, factor = [], 2
        while max(dst.height, dst.width) / factor >= BLOCK_SIDE / 2:
            factors.append(factor)
            factor *= 2
        if factors:
            dst.build_overviews(factors, Resampling.mode)
            dst.update_tags(ns="rio_overview", resampling="mode")
    return factors


def convert_to_cog(path: str, creation_options: dict | None = None) -> None:
    """Rewrite a finished tiled GeoTIFF as a Cloud Optimized GeoTIFF (the COG driver cannot be written
    window by window)."""
    cog = f"{path}.cog"
    options = with_options(COG_OPTIONS, creation_options or {})
    try:
        rasterio.shutil.copy(path, cog, driver="COG", overview_resampling="mode", **options)
        os.replace(cog, path)
    finally:
        if os.path.exists(cog):
            os.remove(cog)


def check_creation_options(creation_options: dict, raster_format: str, probabilities: bool) -> None:
    """Write a small class raster (and probability raster, and the COG copy) in memory with the user's
    creation options: options GDAL cannot write with (blocks not a multiple of 16, JPEG for float32) are
    refused by name before any work, not once the support is encoded or, for a COG, the run is over; so
    are options GDAL would only warn about and ignore (a value it does not know, ``COMPRESS=BOGUS``, or an
    option the class raster's driver does not have), which would otherwise give a file without them."""
    if not creation_options:
        return
    from types import SimpleNamespace

    from affine import Affine

    grid = SimpleNamespace(width=2 * BLOCK_SIDE, height=2 * BLOCK_SIDE, transform=Affine(1, 0, 0, 0, -1, 0))
    rasters = [("the class raster", "uint8", NODATA, {})]
    if probabilities:
        rasters.append(("the probabilities", "float32", PROBABILITY_NODATA, PROBABILITY_OPTIONS))
    stated = ", ".join(f"{name}={value}" for name, value in creation_options.items())
    # GDAL names a COG option by its GeoTIFF equivalent (ZLEVEL for LEVEL), both in the GeoTIFF written
    # first and in the COG driver's own complaints: the user is told the option they gave.
    ignored = _IgnoredOptions("COG", {geotiff_name.lower(): f"{name}={creation_options[name]}"
                                      for name, geotiff_name, _ in _geotiff_equivalents(creation_options, "uint8")}) \
        if raster_format == "COG" else _IgnoredOptions()
    try:
        for what, dtype, nodata, defaults in rasters:
            try:
                geotiff = geotiff_options(creation_options, dtype, raster_format == "COG")
                profile = _geotiff_profile(grid, None, 1, dtype, nodata, with_options(defaults, geotiff))
                with warnings.catch_warnings(), MemoryFile() as memory, MemoryFile() as cog:
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    # The class raster's own driver judges the option names (a COG's options are passed
                    # to the GeoTIFF written first as their equivalent, and the probabilities stay GeoTIFFs).
                    ignored.judges_names = what == "the class raster" and raster_format != "COG"
                    with memory.open(**profile) as dst:
                        dst.write(np.zeros((1, grid.height, grid.width), dtype))
                    if raster_format == "COG" and dtype == "uint8":
                        ignored.judges_names = True
                        rasterio.shutil.copy(memory.name, cog.name, driver="COG",
                                             **with_options(COG_OPTIONS, creation_options))
            except Exception as exc:  # rasterio raises several types (RasterBlockError, RasterioIOError, CPLE_*)
                # GDAL's reason: the exception's own words, or the earlier error rasterio's "See previous
                # exception" points to (unlike a read error, its context may be a lesser, earlier complaint)
                cause = exc.__cause__ or exc.__context__
                detail = str(cause) if "previous exception" in str(exc) and cause is not None else str(exc)
                detail = _without_trial_names(detail.splitlines()[0] if detail else detail)
                raise GeoprotoError(f"GDAL cannot write {what} with {stated} ({detail.rstrip('.')})",
                                    param="creation_options") from None
    finally:
        ignored.close()
    if ignored.problems:
        raise GeoprotoError(ignored.problems[0], param="creation_options")


def _without_trial_names(detail: str) -> str:
    """GDAL's reason without the in-memory trial file it names (``/vsimem/<uuid>/<uuid>.tif: `` or, from
    the GeoTIFF driver, ``<uuid>.tif: ``): that file is not the user's and is gone."""
    return re.sub(r"(/vsimem/\S+?|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\.tif): ", "", detail)


class _IgnoredOptions(logging.Handler):
    """Collects GDAL's warnings that a creation option or its value is ignored (rasterio logs them on
    ``rasterio._env``), as one-line problems naming the option and the driver; they are kept from the
    user's log meanwhile (the real run repeats GDAL's warnings it still has). ``given``: the option as the
    user gave it, by the lower-case name GDAL uses for it (a COG's LEVEL=99 for ZLEVEL)."""

    UNKNOWN = re.compile(r"driver (\S+) does not support creation option (\S+)")
    BAD_VALUES = (re.compile(r"'(?P<value>.*)' is an unexpected value for (?P<name>\S+) creation option"),
                  re.compile(r"(?P<name>[^\s=]+)=(?P<value>.*?) value not recognised"))

    def __init__(self, driver: str = "GTiff", given: dict[str, str] | None = None):
        super().__init__(logging.WARNING)
        self.problems: list[str] = []
        self.driver, self.given, self.judges_names = driver, given or {}, True
        self.logger = logging.getLogger("rasterio._env")
        self.saved = self.logger.level, self.logger.propagate
        self.logger.setLevel(logging.WARNING)  # even under -q, which raises the root's level
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record):
        message = record.getMessage()
        unknown = self.UNKNOWN.search(message)
        if unknown and self.judges_names:
            self.problems.append(f"GDAL's {unknown[1]} driver has no creation option {unknown[2]}: it would be "
                                 f"ignored")
        for pattern in self.BAD_VALUES:
            bad = pattern.search(message)
            if bad:
                given = self.given.get(bad["name"].lower(), f"{bad['name']}={bad['value']}")
                self.problems.append(f"{given}: GDAL's {self.driver} driver does not know this value: it would be "
                                     f"ignored")
                break

    def close(self):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]
        super().close()


def _strips(path: str):
    """(first row, values) of each strip of a class raster's band 1, top to bottom."""
    with rasterio.open(path) as src:
        for row in range(0, src.height, VECTOR_STRIP_ROWS):
            yield row, src.read(1, window=Window(0, row, src.width, min(VECTOR_STRIP_ROWS, src.height - row)))


def class_histogram(path: str) -> np.ndarray:
    """Pixels per value (256 bins) of a class raster, read strip by strip."""
    histogram = np.zeros(256, np.int64)
    for _, values in _strips(path):
        histogram += np.bincount(values.ravel(), minlength=256)
    return histogram


def area_histogram(path: str, row_areas: np.ndarray | None) -> np.ndarray | None:
    """Square metres per value (256 bins) of a class raster whose pixels in row ``r`` cover
    ``row_areas[r]`` m² each (``raster.row_areas_m2``); None without them.

    Pixels are counted over each run of rows of one pixel area and the count multiplied once, so a
    projected raster (one run) gets exactly pixels x pixel area, and a geographic one each row's own."""
    if row_areas is None:
        return None
    areas = np.zeros(256)
    counts, run_area = np.zeros(256, np.int64), None
    for first, values in _strips(path):
        strip_areas = row_areas[first:first + len(values)]
        starts = [0, *(np.flatnonzero(np.diff(strip_areas)) + 1)]
        for start, stop in zip(starts, [*starts[1:], len(values)]):
            if strip_areas[start] != run_area:
                if run_area is not None:
                    areas += counts * run_area
                counts, run_area = np.zeros(256, np.int64), strip_areas[start]
            counts += np.bincount(values[start:stop].ravel(), minlength=256)
    if run_area is not None:
        areas += counts * run_area
    return areas


def sieve_classes(path: str, min_pixels: int) -> None:
    """Merge regions smaller than ``min_pixels`` (4-connected, as polygonising) into their largest
    neighbour, in place; nodata is never filled nor grows.

    GDAL sieves the whole raster from the file (a region may span any number of strips, so strips
    cannot be sieved apart); the result is held as one byte per pixel and written back strip by strip.
    GDAL merges a region only into one that reaches the size, so touching regions that are all smaller
    and touch no larger one (a small raster, an island among nodata) are merged by ``_merge_small_groups``.
    """
    from rasterio.features import sieve

    with rasterio.open(path) as src:
        band = rasterio.band(src, 1)
        # rasterio refuses a size not below the raster's; one below it already makes every region small
        # (a minimum area beyond a small raster: an edge tile among large ones).
        size = min(min_pixels, src.width * src.height - 1)
        sieved = sieve(band, size, mask=band, connectivity=4) if size > 1 else src.read(1)  # mask 0: no region
    _merge_small_groups(sieved, min_pixels)
    with rasterio.open(path, "r+") as dst:
        for row in range(0, dst.height, VECTOR_STRIP_ROWS):
            height = min(VECTOR_STRIP_ROWS, dst.height - row)
            dst.write(sieved[row:row + height], 1, window=Window(0, row, dst.width, height))


def _merge_small_groups(labels: np.ndarray, min_pixels: int) -> None:
    """In place: the regions of ``labels`` (after GDAL's sieve) still under ``min_pixels``, each merged,
    smallest first, into its largest neighbouring region (sharing an edge; nodata is no region) until none
    is under the size or a group has no neighbour left (an island of nodata smaller than the size)."""
    import heapq

    import shapely
    from rasterio.features import rasterize, shapes

    regions = list(shapes(labels, mask=labels != NODATA, connectivity=4))
    geometries = [shapely.geometry.shape(geometry) for geometry, _ in regions]
    size = [geometry.area for geometry in geometries]  # pixels: the polygons follow pixel edges
    queue = [(pixels, n) for n, pixels in enumerate(size) if pixels < min_pixels]
    if not queue:
        return
    tree = shapely.STRtree(geometries)
    value = [int(v) for _, v in regions]
    members = [[n] for n in range(len(regions))]
    neighbours = [set() for _ in regions]  # of the small regions (an edge shared, not a corner: 4-connected)
    for _, n in queue:
        neighbours[n] = {int(m) for m in tree.query(geometries[n])
                         if m != n and geometries[n].intersection(geometries[m]).length > 0}
    heapq.heapify(queue)
    while queue:
        pixels, group = heapq.heappop(queue)
        if pixels != size[group] or pixels >= min_pixels or not neighbours[group]:
            continue  # merged or grown since queued; large enough; nothing left to merge into
        target = max(neighbours[group], key=lambda n: (size[n], -n))
        size[target] += size[group]
        size[group] = 0
        members[target] += members[group]
        for other in neighbours[group] - {target}:
            neighbours[other].discard(group)
            neighbours[other].add(target)
        neighbours[target] |= neighbours[group] - {target}
        neighbours[target].discard(group)
        neighbours[group] = set()
        heapq.heappush(queue, (size[target], target))
    changed = [(geometries[m], value[group]) for group in range(len(regions)) for m in members[group]
               if value[m] != value[group] and size[group]]
    if changed:
        rasterize(changed, out=labels, transform=rasterio.Affine.identity())


# GDALRATFieldType and GDALRATFieldUsage codes, as GDAL's PAM .aux.xml stores them.
_RAT_INTEGER, _RAT_REAL, _RAT_STRING = 0, 1, 2
_RAT_GENERIC, _RAT_PIXEL_COUNT, _RAT_NAME, _RAT_MINMAX, _RAT_RED, _RAT_GREEN, _RAT_BLUE, _RAT_ALPHA = \
    0, 1, 2, 5, 6, 7, 8, 9
RAT_FIELDS = [("value", _RAT_INTEGER, _RAT_MINMAX), ("class_name", _RAT_STRING, _RAT_NAME),
              ("pixels", _RAT_INTEGER, _RAT_PIXEL_COUNT), ("area_m2", _RAT_REAL, _RAT_GENERIC),
              ("area_ha", _RAT_REAL, _RAT_GENERIC), ("red", _RAT_INTEGER, _RAT_RED),
              ("green", _RAT_INTEGER, _RAT_GREEN), ("blue", _RAT_INTEGER, _RAT_BLUE),
              ("alpha", _RAT_INTEGER, _RAT_ALPHA)]


def class_areas(classes: ClassInfo, histogram: np.ndarray, area_m2: np.ndarray | float | None) -> list[dict]:
    """Per class: id, name, pixels, area in m² and hectares. ``area_m2`` is the square metres per value
    (``area_histogram``'s), or one pixel's area for every pixel; None (no CRS, a rotated geographic grid):
    no areas."""
    if area_m2 is not None and np.ndim(area_m2) == 0:
        area_m2 = histogram * area_m2
    rows = []
    for class_id, name in zip(classes.ids, classes.names):
        pixels = int(histogram[class_id])
        area = None if area_m2 is None else round(float(area_m2[class_id]), 3)
        rows.append({"id": class_id, "name": name, "pixels": pixels, "area_m2": area,
                     "area_ha": None if area is None else round(area / 1e4, 4)})
    return rows


def write_legend(pam_path: str, classes: ClassInfo, areas: list[dict]) -> None:
    """The class raster's GDAL PAM sidecar (``<raster>.aux.xml``): a palette of max id + 1 entries,
    category names, and a thematic raster attribute table (value, name, pixels, area, colour), which
    GDAL and QGIS (legend labels, attribute table) read."""
    from xml.etree import ElementTree

    colors = class_colors(classes)
    dataset = ElementTree.Element("PAMDataset")
    band = ElementTree.SubElement(dataset, "PAMRasterBand", band="1")
    ElementTree.SubElement(band, "ColorInterp").text = "Palette"
    names = ElementTree.SubElement(band, "CategoryNames")
    table = ElementTree.SubElement(band, "ColorTable")
    for value in range(max(classes.ids) + 1):
        name = NODATA_NAME if value == NODATA else classes.name_of(value) if value in classes.ids else ""
        ElementTree.SubElement(names, "Category").text = name
        red, green, blue, alpha = colors.get(value, (0, 0, 0, 0))
        ElementTree.SubElement(table, "Entry", c1=str(red), c2=str(green), c3=str(blue), c4=str(alpha))
    rat = ElementTree.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for index, (name, kind, usage) in enumerate(RAT_FIELDS):
        field = ElementTree.SubElement(rat, "FieldDefn", index=str(index))
        ElementTree.SubElement(field, "Name").text = name
        ElementTree.SubElement(field, "Type").text = str(kind)
        ElementTree.SubElement(field, "Usage").text = str(usage)
    for index, area in enumerate(areas):
        values = [area["id"], area["name"], area["pixels"], area["area_m2"] or 0.0, area["area_ha"] or 0.0,
                  *colors[area["id"]]]
        row = ElementTree.SubElement(rat, "Row", index=str(index))
        for value in values:
            ElementTree.SubElement(row, "F").text = str(value)
    ElementTree.indent(dataset)
    ElementTree.ElementTree(dataset).write(pam_path, encoding="utf-8")


def write_area_report(path: str, areas: list[dict]) -> None:
    """Area per class as CSV (class id, name, pixels, m², hectares)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class_id", "class_name", "pixels", "area_m2", "area_ha"])
        for area in areas:
            writer.writerow([area["id"], area["name"], area["pixels"], area["area_m2"], area["area_ha"]])


# Output formats and the file name extensions they are known by (the first is the one to suggest).
RASTER_DRIVERS = {"GTiff": (".tif", ".tiff"), "COG": (".tif", ".tiff")}
VECTOR_DRIVERS = {"GPKG": (".gpkg",), "GeoJSON": (".geojson", ".json"), "ESRI Shapefile": (".shp",),
                  "FlatGeobuf": (".fgb",), "KML": (".kml",), "GML": (".gml",), "CSV": (".csv",),
                  "SQLite": (".sqlite",), "GeoJSONSeq": (".geojsonl", ".geojsons"), "Parquet": (".parquet",)}
# CSV has no geometry column unless asked for one: OGR refuses to write the polygons without it.
VECTOR_LAYER_OPTIONS = {"CSV": {"GEOMETRY": "AS_WKT"}}


def output_driver(path: str, driver: str | None, drivers: dict[str, tuple[str, ...]], what: str) -> str:
    """The format to write ``path`` in: ``driver`` if given, else the one its extension names; refuses
    an extension the format does not use, so that ``-o out.png`` never writes a GeoTIFF named .png."""
    ext = os.path.splitext(path)[1].lower()
    alone = os.path.basename(path).lower()
    if alone in {e for extensions in drivers.values() for e in extensions}:  # ".gpkg": splitext sees no extension
        raise GeoprotoError(f"{path}: is an extension alone; give a file name (e.g. classes{alone})")
    if driver is None:
        found = [name for name, extensions in drivers.items() if ext in extensions]
        if not found:
            known = ", ".join(sorted({e for extensions in drivers.values() for e in extensions}))
            raise GeoprotoError(f"{path}: cannot tell the {what} format from {ext or 'no extension'!r}; "
                                f"use one of {known}")
        return found[0]
    match = driver_name(driver, drivers, what)
    if ext not in drivers[match]:
        raise GeoprotoError(f"{path}: a {match} file is named *{drivers[match][0]}, not *{ext or '(none)'}")
    return match


def polygon_format(path: str, driver: str | None) -> str:
    """``output_driver`` of the polygons, refusing a format the GDAL that writes them (pyogrio's) lacks:
    Parquet needs a GDAL built with Arrow, and its absence is otherwise found only after the whole run."""
    import pyogrio

    found = output_driver(path, driver, VECTOR_DRIVERS, "vector")
    if "w" not in pyogrio.list_drivers(write=True).get(found, ""):
        raise GeoprotoError(f"{path}: this GDAL ({pyogrio.__gdal_version_string__}) cannot write {found}; "
                            f"choose another format (.gpkg, .fgb, .geojson, ...)", param="vector")
    return found


def driver_name(driver: str, drivers: dict[str, tuple[str, ...]], what: str, param: str | None = None) -> str:
    """``driver`` as ``drivers`` spell it (GDAL's names ignore case); refuses one not among them, naming
    ``param``, the option that gave it."""
    match = {name.lower(): name for name in drivers}.get(driver.lower())
    if match is None:
        raise GeoprotoError(f"{what} format {driver!r} is not supported; choose one of {', '.join(drivers)}",
                            param=param)
    return match


def write_preview(class_path: str, preview_path: str, classes: ClassInfo) -> None:
    """An RGBA PNG of the class raster, downsampled to at most ``PREVIEW_MAX_SIDE`` pixels a side; nodata
    (outside the image's data or the area of interest) is transparent, not black like a black class."""
    with rasterio.open(class_path) as src:
        factor = max(1, int(np.ceil(max(src.height, src.width) / PREVIEW_MAX_SIDE)))
        labels = src.read(1, out_shape=(max(1, src.height // factor), max(1, src.width // factor)))
    lookup = np.zeros((256, 4), np.uint8)
    for class_id, color in class_colors(classes).items():
        lookup[class_id] = color
    rgba = np.transpose(lookup[labels], (2, 0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(preview_path, "w", driver="PNG", width=rgba.shape[2], height=rgba.shape[1], count=4,
                           dtype="uint8") as dst:
            dst.write(rgba)


def write_polygons(class_path: str, vector_path: str, classes: ClassInfo, driver: str,
                   simplify: float | None = None) -> int:
    """Polygonise the class raster, one feature per connected class region, with class id, name and
    area in m²; ``simplify`` (CRS units) simplifies the polygons as one coverage, so edges shared by two
    regions stay shared (no gaps, no overlaps).

    Strips of rows are polygonised one at a time (memory bounded by one strip); regions cut by a strip
    boundary are merged back afterwards. Returns the number of polygons written.
    """
    import geopandas
    import shapely
    from rasterio.features import shapes

    pieces: dict[int, list] = {i: [] for i in classes.ids}
    whole: dict[int, list] = {i: [] for i in classes.ids}
    with rasterio.open(class_path) as src:
        for row in range(0, src.height, VECTOR_STRIP_ROWS):
            height = min(VECTOR_STRIP_ROWS, src.height - row)
            window = Window(0, row, src.width, height)
            labels = src.read(1, window=window)
            transform = src.window_transform(window)
            for geometry, value in shapes(labels, mask=labels != NODATA, transform=transform):
                polygon = shapely.geometry.shape(geometry)
                touches_cut = (row > 0 and _touches_row(polygon, src, row)) or \
                              (row + height < src.height and _touches_row(polygon, src, row + height))
                (pieces if touches_cut else whole)[int(value)].append(polygon)
        crs = src.crs
    records = []
    for class_id in classes.ids:
        polygons = list(whole[class_id])
        if pieces[class_id]:
            polygons += list(shapely.get_parts(shapely.union_all(pieces[class_id])))
        records += [(class_id, classes.name_of(class_id), p) for p in polygons]
    geometries = [r[2] for r in records]
    if simplify and geometries:
        geometries = list(shapely.coverage_simplify(geometries, simplify))
    frame = geopandas.GeoDataFrame({"class_id": [r[0] for r in records], "class_name": [r[1] for r in records]},
                                   geometry=geometries, crs=crs)
    frame["area_m2"] = polygon_areas_m2(frame)
    layer = None if driver in ("ESRI Shapefile", "GeoJSON", "GeoJSONSeq", "CSV", "FlatGeobuf") else "classes"
    frame.to_file(vector_path, layer=layer, driver=driver, layer_options=VECTOR_LAYER_OPTIONS.get(driver))
    return len(records)


def polygon_areas_m2(frame) -> list[float | None]:
    """Areas in m²: in the CRS's own unit when projected, on the CRS's ellipsoid when geographic (as the
    class table's, ``raster.row_areas_m2``), None without a CRS (pixel space)."""
    if frame.crs is None or frame.empty:
        return [None] * len(frame)
    factor = frame.crs.axis_info[0].unit_conversion_factor
    if frame.crs.is_geographic:
        import shapely

        geod, degrees = frame.crs.get_geod(), math.degrees(factor)  # Geod takes degrees
        # Edges cut to 0.01 degree: a pixel's top and bottom follow parallels, which a long geodesic edge
        # would bow away from (3e-5 of a 1 degree pixel's area).
        return [round(abs(geod.geometry_area_perimeter(shapely.segmentize(
            shapely.transform(g, lambda xy: xy * degrees), POLYGON_EDGE_DEGREES))[0]), 3) for g in frame.geometry]
    return [round(float(a), 3) for a in frame.geometry.area * factor ** 2]


def _touches_row(polygon, src, row: int) -> bool:
    """Whether ``polygon`` reaches the boundary between pixel rows ``row - 1`` and ``row``."""
    import shapely

    line = shapely.LineString([apply_transform(src.transform, 0, row), apply_transform(src.transform, src.width, row)])
    return polygon.distance(line) < 1e-6 * max(abs(src.transform.a), abs(src.transform.e), 1e-12)
