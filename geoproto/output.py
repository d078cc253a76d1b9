"""Writing results: the georeferenced class raster, per-class probabilities, polygons and a preview.

Every file is written in a hidden staging folder beside its target and moved into place only when the
whole run succeeded, so a failed or interrupted run never leaves a half-written file at the target.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from .errors import GeoprotoError
from .support import ClassInfo
from .tile_labels import NODATA
from .tiling import Tile

PREVIEW_MAX_SIDE = 2048
BLOCK_SIDE = 256  # of the tiled output rasters
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
# are the temporary files of earlier versions. Both are removed by a later run once their process is gone.
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
        self.staged: dict[str, tuple[str, str]] = {}  # target -> (option, temporary path)
        self.folders: dict[str, str] = {}  # output folder -> its staging folder

    def stage(self, target: str, option: str = "output") -> str:
        """Check ``target`` can be written now (before any work) and return its temporary path."""
        target = os.path.abspath(target)
        folder = os.path.dirname(target)
        if os.path.isdir(target):
            raise GeoprotoError(f"{target}: is a directory")
        for name, path in self.inputs.items():
            if same_file(target, path):
                raise GeoprotoError(f"{option} {target}: is the input {name} {path}; an output never replaces an "
                                    f"input, choose another path")
        for other, (other_option, _) in self.staged.items():
            if same_file(target, other):
                raise GeoprotoError(f"{option} {target}: is also {other_option}; give each output its own path")
        if os.path.lexists(target) and not self.overwrite:
            raise GeoprotoError(f"{target}: exists; pass --overwrite to replace it")
        if not os.path.isdir(folder):
            raise GeoprotoError(f"{folder}: output directory does not exist")
        if not os.access(folder, os.W_OK):
            raise GeoprotoError(f"{folder}: output directory is not writable")
        remove_stale_staging(target)
        if folder not in self.folders:
            self.folders[folder] = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder)
        temporary = os.path.join(self.folders[folder], os.path.basename(target))
        self.staged[target] = (option, temporary)
        return temporary

    def commit(self) -> None:
        moves = [(os.path.join(staging, name), os.path.join(folder, name))
                 for folder, staging in self.folders.items() for name in sorted(os.listdir(staging))]
        if not self.overwrite:
            # Only the named targets: a sibling without its main file (an .dbf whose .shp was deleted) is
            # the remains of a broken layer, replaced with the new one.
            for target in self.staged:
                if os.path.lexists(target):
                    raise GeoprotoError(f"{target}: appeared while running; pass --overwrite to replace it")
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


def _geotiff_profile(reference, crs, count: int, dtype: str, nodata) -> dict:
    return {
        "driver": "GTiff", "width": reference.width, "height": reference.height, "count": count,
        "dtype": dtype, "crs": crs, "transform": reference.transform, "nodata": nodata,
        "tiled": True, "blockxsize": BLOCK_SIDE, "blockysize": BLOCK_SIDE, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }


class ResultWriter:
    """Writes tile cores of class ids (and optionally probabilities) into tiled, compressed GeoTIFFs."""

    def __init__(self, reference, crs, classes: ClassInfo, class_path: str, probability_path: str | None):
        self.classes = classes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self.labels = rasterio.open(class_path, "w", **_geotiff_profile(reference, crs, 1, "uint8", NODATA))
            self.probabilities = None
            if probability_path:
                profile = _geotiff_profile(reference, crs, len(classes.ids), "float32", None)
                self.probabilities = rasterio.open(probability_path, "w", predictor=3, **profile)
        self.labels.write_colormap(1, class_colors(classes))
        self.labels.set_band_description(1, "class")
        tags = {f"CLASS_{i}": n for i, n in zip(classes.ids, classes.names)}
        self.labels.update_tags(GEOPROTO_CLASSES=json.dumps(dict(zip(classes.ids, classes.names))), **tags)
        if self.probabilities is not None:
            for band, name in enumerate(classes.names, start=1):
                self.probabilities.set_band_description(band, name)

    def write(self, tile: Tile, labels: np.ndarray, probabilities: np.ndarray | None) -> None:
        """``labels``: the tile's class ids (0 where invalid); ``probabilities``: K x H x W or None."""
        rows, cols = tile.core_slices
        window = Window(tile.core_col0, tile.core_row0, tile.core_col1 - tile.core_col0,
                        tile.core_row1 - tile.core_row0)
        self.labels.write(labels[rows, cols], 1, window=window)
        if self.probabilities is not None and probabilities is not None:
            self.probabilities.write(probabilities[:, rows, cols].astype(np.float32), window=window)

    def close(self) -> None:
        self.labels.close()
        if self.probabilities is not None:
            self.probabilities.close()


def convert_to_cog(path: str) -> None:
    """Rewrite a finished tiled GeoTIFF as a Cloud Optimized GeoTIFF (the COG driver cannot be written
    window by window)."""
    cog = f"{path}.cog"
    try:
        rasterio.shutil.copy(path, cog, driver="COG", compress="deflate", overview_resampling="nearest")
        os.replace(cog, path)
    finally:
        if os.path.exists(cog):
            os.remove(cog)


def write_preview(class_path: str, preview_path: str, classes: ClassInfo) -> None:
    """An RGB PNG of the class raster, downsampled to at most ``PREVIEW_MAX_SIDE`` pixels a side."""
    with rasterio.open(class_path) as src:
        factor = max(1, int(np.ceil(max(src.height, src.width) / PREVIEW_MAX_SIDE)))
        labels = src.read(1, out_shape=(max(1, src.height // factor), max(1, src.width // factor)))
    lookup = np.zeros((256, 3), np.uint8)
    for class_id, color in class_colors(classes).items():
        lookup[class_id] = color[:3]
    rgb = np.transpose(lookup[labels], (2, 0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(preview_path, "w", driver="PNG", width=rgb.shape[2], height=rgb.shape[1], count=3,
                           dtype="uint8") as dst:
            dst.write(rgb)


def write_polygons(class_path: str, vector_path: str, classes: ClassInfo) -> int:
    """Polygonise the class raster, one feature per connected class region, with class id and name.

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
    frame = geopandas.GeoDataFrame({"class_id": [r[0] for r in records], "class_name": [r[1] for r in records]},
                                   geometry=[r[2] for r in records], crs=crs)
    frame.to_file(vector_path, layer="classes", driver="GPKG" if vector_path.endswith(".gpkg") else None)
    return len(records)


def _touches_row(polygon, src, row: int) -> bool:
    """Whether ``polygon`` reaches the boundary between pixel rows ``row - 1`` and ``row``."""
    import shapely

    line = shapely.LineString([src.transform * (0, row), src.transform * (src.width, row)])
    return polygon.distance(line) < 1e-6 * max(abs(src.transform.a), abs(src.transform.e), 1e-12)
