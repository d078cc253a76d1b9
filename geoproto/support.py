"""Support labels: the user's polygons (any OGR vector, any CRS) or a label raster, as per-window masks.

Labels are class ids 1..254; 0 means unlabelled (ignored, never background). Vector support is
reprojected to the raster's CRS and then mapped into its pixel space, so rotated or south-up grids
work the same as north-up ones. Windows are the segmentation grid's windows that the support touches:
full-size context around every polygon, and polygons larger than a window are covered by several.
"""

from __future__ import annotations

import warnings

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .classes import MAX_CLASS_ID, ClassInfo, read_class_file, refuse_reserved_names, warn_case_twins
from .errors import GeoprotoError, no_such_file
from .raster import absolute_path, apply_transform, finite_geometries, open_raster, path_exists, read_error
from .tiling import Tile

# Field names taken as the class column, in this order; anything else must be named (``class_field``)
# (unless it is the file's only field): generic names like "name" or "id" rarely hold land-cover classes.
CLASS_FIELD_CANDIDATES = ("class", "class_name", "classname", "class_id", "label", "landcover", "land_cover",
                          "category")
TINY_POLYGON_PIXELS = 4.0


class VectorLabels:
    """Support polygons in the raster's pixel space, rasterised window by window."""

    # Every class comes from a polygon, so a class left without pixels is an error, not an omission.
    classes_from_catalogue = False

    def __init__(self, geometries: np.ndarray, class_ids: np.ndarray, classes: ClassInfo,
                 features: np.ndarray | None = None, numbered_by_name: bool = False):
        from shapely import STRtree

        self.geometries = geometries
        self.class_ids = class_ids
        self.classes = classes
        # The ids were assigned 1..K from the sorted text class names (no classes file), so pooling with
        # another support may renumber them (``prototype_file.merge``).
        self.numbered_by_name = numbered_by_name
        # The support file's row of each polygon: the same polygon read for several rasters (its pieces)
        # keeps one number, so cross-validation can keep its pieces together.
        self.features = np.arange(len(geometries)) if features is None else features
        self.tree = STRtree(geometries)

    def found_classes(self) -> ClassInfo:
        """The classes of the polygons (every one is used by at least one polygon)."""
        return self.classes

    def close(self) -> None:
        """Nothing to close: the polygons are in memory (``inputs.SupportLabels``)."""

    def candidate_tiles(self, tiles: list[Tile]) -> list[Tile]:
        from shapely import box

        return [t for t in tiles if len(self.tree.query(box(t.col, t.row, t.col + t.width, t.row + t.height),
                                                        predicate="intersects"))]

    def read(self, tile: Tile, size: int) -> np.ndarray:
        from shapely import box

        hits = self.tree.query(box(tile.col, tile.row, tile.col + tile.width, tile.row + tile.height),
                               predicate="intersects")
        labels = np.zeros((size, size), np.uint8)
        claimed = np.zeros((size, size), np.uint8)
        transform = Affine.translation(tile.col, tile.row)
        for class_id in np.unique(self.class_ids[hits]):
            geoms = self.geometries[hits][self.class_ids[hits] == class_id]
            burned = _burn(geoms, np.ones(len(geoms)), tile, transform, "uint8")
            labels[: tile.height, : tile.width][burned > 0] = class_id
            claimed[: tile.height, : tile.width] += burned
        labels[claimed > 1] = 0  # pixels claimed by two classes are ambiguous: leave them unlabelled
        return labels

    def read_polygons(self, tile: Tile, size: int) -> np.ndarray:
        """Which polygon (index + 1, 0 for none) each pixel of the window belongs to."""
        from shapely import box

        hits = self.tree.query(box(tile.col, tile.row, tile.col + tile.width, tile.row + tile.height),
                               predicate="intersects")
        numbers = np.zeros((size, size), np.int32)
        numbers[: tile.height, : tile.width] = _burn(self.geometries[hits], hits + 1, tile,
                                                     Affine.translation(tile.col, tile.row), "int32")
        return numbers


def _burn(geometries, values, tile: Tile, transform, dtype: str) -> np.ndarray:
    """Rasterise geometries with their values; polygons smaller than a few pixels may cover no pixel
    centre, so every pixel they touch is burned instead."""
    out = np.zeros((tile.height, tile.width), dtype)
    for touched in (False, True):
        chosen = [(g, v) for g, v in zip(geometries, values) if (g.area < TINY_POLYGON_PIXELS) == touched]
        if chosen:
            burned = rasterize(chosen, out_shape=out.shape, transform=transform, dtype=dtype, all_touched=touched)
            out[burned > 0] = burned[burned > 0]
    return out


class RasterLabels:
    """A label raster (0 or nodata = unlabelled) read in the orthophoto's grid, warped there if needed.

    It owns its file handle, as ``raster.RasterSource`` does: opened on use, closed by ``close`` (with the
    inputs: ``inputs.Inputs.close``), opened again by the next read; a run over many rasters keeps a
    bounded number of files open. Read it from one thread.
    """

    def __init__(self, path: str, reference: rasterio.io.DatasetReader, classes: ClassInfo | None):
        self.path = path
        self._dataset = self._warped = None
        # The orthophoto's grid, for the WarpedVRT onto it (the reference's handle may be closed by then).
        self._grid = {"crs": reference.crs, "transform": reference.transform, "width": reference.width,
                      "height": reference.height}
        try:
            dataset = self.dataset
            if (dataset.crs is None) != (reference.crs is None):
                raise GeoprotoError(f"{path}: label raster and orthophoto must both have a CRS or both lack one")
            has_colors = bool(classes) and all(c is not None for c in classes.colors)
            self.colors = classes.colors if has_colors and dataset.count >= 3 else None
            table = palette_colors(dataset) if has_colors and dataset.count == 1 else None  # its colours, read once
            self.palette = palette_lookup(table, classes) if table is not None else None
            if self.colors is None and dataset.count != 1:
                raise GeoprotoError(f"{path}: a label raster has one band of class ids (or RGB colours, with "
                                    f"classes that each have a colour); it has {dataset.count}",
                                    # three bands or more: a colour mask, whose colours a classes file gives
                                    param="classes_file" if dataset.count >= 3 else "support")
            if self.colors is not None or self.palette is not None:  # for _warn_unlisted
                self._listed = _color_codes(np.array([*classes.colors, *filter(None, [classes.ignore_color])]).T)
                self._unlisted_warned = False
                self._palette_codes = _color_codes(table.T) if table is not None else None
            self.same_grid = (dataset.shape == reference.shape and dataset.transform == reference.transform
                              and dataset.crs == reference.crs)
            if not self.same_grid and not _overlaps(dataset, reference):
                # not "holds no labelled pixel": it holds them elsewhere (a wrong file, a wrong CRS)
                raise GeoprotoError(f"{path}: does not overlap the raster {reference.name}")
        except BaseException:
            self.close()
            raise
        self.classes = classes
        # A class file may list more classes than this raster labels: those are left out.
        self.classes_from_catalogue = classes is not None

    @property
    def dataset(self) -> rasterio.io.DatasetReader:
        """The label raster's handle (opened on use)."""
        if self._dataset is None or self._dataset.closed:
            self._dataset = open_raster(self.path)
        return self._dataset

    @property
    def source(self):
        """What windows are read from: ``dataset`` on the orthophoto's grid, else a nearest-neighbour
        WarpedVRT of it onto that grid."""
        if self.same_grid:
            return self.dataset
        if self._warped is None or self._warped.closed:
            self._warped = WarpedVRT(self.dataset, resampling=Resampling.nearest, **self._grid)
        return self._warped

    def close(self) -> None:
        """Close the file (the WarpedVRT first); the next read opens it again."""
        for handle in (self._warped, self._dataset):
            if handle is not None:
                handle.close()
        self._warped = self._dataset = None

    def candidate_tiles(self, tiles: list[Tile]) -> list[Tile]:
        return tiles

    def _warn_unlisted(self, codes: np.ndarray, window: Window) -> None:
        """Warn, once per file, of the unlabelled pixels of a colour mask (``codes``: their 0xRRGGBB colours in
        one window read) whose colour no class has and that is not the classes file's ``ignore_color``: a
        colour typed wrong there would drop a class's pixels unseen. Said of the first window read that holds
        some, rather than after a pass over the whole file only for it."""
        unknown = codes[~np.isin(codes, self._listed)]
        if not len(unknown):
            return
        self._unlisted_warned = True
        colors, counts = np.unique(unknown, return_counts=True)
        common = np.argsort(-counts, kind="stable")
        listed = ", ".join(f"#{colors[i]:06X} ({counts[i]:,} px)" for i in common[:3])
        warnings.warn(f"{self.path}: pixels of a colour no class of the classes file has, {len(unknown):,} in the "
                      f"window read at row {window.row_off}, column {window.col_off} ({listed}"
                      f"{', ...' if len(common) > 3 else ''}): left unlabelled; give their class that colour, or "
                      f"declare it the file's \"ignore_color\"")

    def found_classes(self) -> ClassInfo:
        """The class file's classes, else the ids found in the raster (block by block), named ``class_N``."""
        from .tiling import tile_grid

        if self.classes is not None:
            return self.classes
        found: set[int] = set()
        for tile in tile_grid(self.source.height, self.source.width, 1024, 0):
            found |= {int(v) for v in np.unique(self.read(tile, 1024)) if v}
        if not found:
            raise GeoprotoError(f"{self.path}: holds no labelled pixel (0 and nodata are unlabelled)")
        return ClassInfo(sorted(found), [f"class_{i}" for i in sorted(found)])

    def read(self, tile: Tile, size: int) -> np.ndarray:
        window = Window(tile.col, tile.row, tile.width, tile.height)
        labels = np.zeros((size, size), np.uint8)
        if self.colors is not None:
            try:
                rgb = self.source.read([1, 2, 3], window=window)
            except RasterioIOError as exc:
                raise read_error(self.path, exc, f" at window {window}") from None
            for class_id, color in zip(self.classes.ids, self.colors):
                hit = np.all(rgb == np.array(color, rgb.dtype)[:, None, None], axis=0)
                labels[: tile.height, : tile.width][hit] = class_id
            if not self._unlisted_warned:
                unlabelled = labels[: tile.height, : tile.width] == 0
                if self.source.nodata is not None:
                    unlabelled &= ~np.all(rgb == self.source.nodata, axis=0)
                self._warn_unlisted(_color_codes(rgb)[unlabelled], window)
            return labels
        try:
            values = self.source.read(1, window=window, masked=True)
        except RasterioIOError as exc:
            raise read_error(self.path, exc, f" at window {window}") from None
        ids = np.where(np.ma.getmaskarray(values), 0, np.asarray(values))
        if not np.issubdtype(ids.dtype, np.integer):
            # NaN is unlabelled like nodata; 1.5 is no class id (a cast would silently make it 1).
            ids = np.where(np.isnan(ids), 0, ids)
            if not np.all(np.isfinite(ids) & (ids == np.round(ids))):
                raise GeoprotoError(f"{self.path}: label values must be whole class ids 0..{MAX_CLASS_ID}; found "
                                    f"{ids[~(np.isfinite(ids) & (ids == np.round(ids)))][0]}")
            ids = ids.astype(np.int64)
        if self.palette is not None:
            if not self._unlisted_warned:
                # index 0 is unlabelled, as in any label raster, whatever its colour
                self._warn_unlisted(self._palette_codes[ids[(ids > 0) & (self.palette[ids] == 0)]], window)
            ids = self.palette[ids]
        if ids.min() < 0 or ids.max() > MAX_CLASS_ID:
            # 255 is the usual nodata of uint8 masks whose file does not declare it
            hint = (f"; 255 is usually nodata: declare it with gdal_edit.py -a_nodata 255 {self.path}"
                    if (ids == MAX_CLASS_ID + 1).any() else "")
            raise GeoprotoError(f"{self.path}: label values must be 0..{MAX_CLASS_ID}, found {ids.min()}..{ids.max()}"
                                f"{hint}")
        labels[: tile.height, : tile.width] = ids
        return labels


def _color_codes(rgb: np.ndarray) -> np.ndarray:
    """RGB colours (3 x ...) as one integer each, 0xRRGGBB."""
    rgb = rgb.astype(np.int64)
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


def _overlaps(dataset, reference) -> bool:
    """Whether two rasters' extents meet (``dataset``'s in ``reference``'s CRS; pixel space without CRSs),
    whatever their orientation; True where the extent cannot be reprojected (the warp decides then)."""
    from rasterio.warp import transform_bounds

    def extent(src):
        xs, ys = apply_transform(src.transform, np.array([0, src.width, 0, src.width]),
                                 np.array([0, 0, src.height, src.height]))
        return xs.min(), ys.min(), xs.max(), ys.max()

    bounds = extent(dataset)
    if dataset.crs is not None:
        try:
            bounds = transform_bounds(dataset.crs, reference.crs, *bounds)
        except Exception:  # outside the reference CRS's domain, say
            return True
    other = extent(reference)
    return bounds[0] < other[2] and other[0] < bounds[2] and bounds[1] < other[3] and other[1] < bounds[3]


def palette_colors(dataset) -> np.ndarray | None:
    """A paletted uint8 band's colour table (256 x 3, palette index -> RGB), or None for other bands."""
    from rasterio.enums import ColorInterp

    if dataset.colorinterp[0] != ColorInterp.palette or dataset.dtypes[0] != "uint8":
        return None
    table = np.zeros((256, 3), np.uint8)
    for index, rgba in dataset.colormap(1).items():
        table[index] = rgba[:3]
    return table


def palette_lookup(table: np.ndarray, classes: ClassInfo) -> np.ndarray:
    """For a paletted label raster's colour table (``palette_colors``) and classes with colours: palette
    index -> class id (0 if no class)."""
    lookup = np.zeros(256, np.uint8)
    for class_id, color in zip(classes.ids, classes.colors):
        lookup[np.all(table == np.array(color, np.uint8), axis=1)] = class_id
    return lookup


POLYGONAL = {"Polygon", "MultiPolygon"}


class NotPolygonal(GeoprotoError):
    """Support of points or lines (``kinds``, e.g. "LineString, Point") without a buffer distance to make them
    polygons: a caller whose polygons have no buffer option (``score``'s truth) says so in its own words."""

    def __init__(self, path: str, kinds: str):
        super().__init__(f"{path}: support must be polygons; found {kinds} (a buffer distance turns points and "
                         f"lines into polygons)", param="buffer")
        self.kinds = kinds


class NoRasterCRS(GeoprotoError):
    """Polygons in a CRS (``vector_crs``, its name) on a raster without one."""

    def __init__(self, path: str, vector_crs: str):
        super().__init__(f"{path}: is in {vector_crs} but the raster has no CRS; state the raster's CRS, or drop the "
                         f"vector's", param="assume_crs")
        self.vector_crs = vector_crs


def _polygonal(geometry):
    """The polygonal part of a repaired geometry (make_valid can return collections with lines)."""
    import shapely

    if geometry.geom_type in POLYGONAL:
        return geometry
    parts = [p for p in shapely.get_parts(geometry) if p.geom_type in POLYGONAL]
    return shapely.MultiPolygon(parts) if parts else shapely.Polygon()


def _class_column(frame, class_field: str | None, path: str) -> str:
    columns = [c for c in frame.columns if c != frame.geometry.name]
    if not columns:  # naming a field cannot help: the file has none
        raise GeoprotoError(f"{path}: has no attribute field to hold a class; add a class field to its polygons "
                            f"in your GIS (one class name per polygon, e.g. 'building'), then run again",
                            param="support")
    if class_field:
        if class_field not in columns:
            raise GeoprotoError(f"{path}: no field {class_field!r} (fields: {', '.join(columns)})",
                                param="class_field")
        return class_field
    lower = {c.lower(): c for c in columns}
    for candidate in CLASS_FIELD_CANDIDATES:
        if candidate in lower:
            return lower[candidate]
    if len(columns) == 1:
        return columns[0]
    raise GeoprotoError(f"{path}: cannot tell which field holds the class; name it (fields: {', '.join(columns)})",
                        param="class_field")


def _class_ids(values, column: str, path: str, classes: ClassInfo | None) -> tuple[np.ndarray, ClassInfo, bool]:
    """The class id of each value, the classes, and whether the ids were numbered from the sorted class
    names (text classes without ``classes``)."""
    import pandas

    if pandas.api.types.is_numeric_dtype(values.dtype):
        ids = values.to_numpy()
        if not np.all(ids == np.round(ids)) or ids.min() < 1 or ids.max() > MAX_CLASS_ID:
            raise GeoprotoError(f"{path}: numeric class codes in {column!r} must be whole numbers 1..{MAX_CLASS_ID}")
        ids = ids.astype(np.int64)
        unique = sorted(set(ids.tolist()))
        if classes:
            missing = [i for i in unique if i not in classes.ids]
            if missing:
                raise GeoprotoError(f"{path}: class code {missing[0]} is not one of the classes given",
                                    param="classes")
            return ids, classes.subset(unique), False
        return ids, ClassInfo(unique, [f"class_{i}" for i in unique]), False
    typed = values.astype(str)
    names, typed = typed.str.strip().to_numpy(), typed.to_numpy()
    if (names == "").any():
        raise GeoprotoError(f"{path}: {int((names == '').sum())} polygon(s) have an empty class name in "
                            f"{column!r}; name their class or remove them")
    padded = sorted({f"{t!r} as {n!r}" for t, n in zip(typed, names) if t != n})
    if padded:  # a stray space typed in an attribute table must not make a second class
        warnings.warn(f"{path}: class name(s) in {column!r} read without their leading or trailing spaces: "
                      f"{', '.join(padded[:3])}{', ...' if len(padded) > 3 else ''}")
    unique = sorted(set(names.tolist()))
    refuse_reserved_names(unique, f"{path}: {column!r}")
    warn_case_twins(unique, f"{path}: {column!r}")
    if classes:
        missing = [n for n in unique if n not in classes.names]
        if missing:
            spelled = [n for n in classes.names if n.casefold() == missing[0].casefold()]
            hint = f" (did you mean {spelled[0]!r}? names are case-sensitive)" if spelled else ""
            raise GeoprotoError(f"{path}: class {missing[0]!r} is not one of the classes given{hint}",
                                param="classes")
        ids = np.array([classes.ids[classes.names.index(n)] for n in names])
        return ids, classes.subset(set(ids.tolist())), False
    if len(unique) > MAX_CLASS_ID:
        raise GeoprotoError(f"{path}: {len(unique)} classes in {column!r}; at most {MAX_CLASS_ID}")
    lookup = {n: i + 1 for i, n in enumerate(unique)}
    return np.array([lookup[n] for n in names]), ClassInfo(list(range(1, len(unique) + 1)), unique), True


def _check_declared_crs(frame, crs, path: str) -> None:
    """A geographic CRS with coordinates far outside degrees means the file's CRS is wrong."""
    if crs is None or not crs.is_geographic:
        return
    minx, miny, maxx, maxy = frame.total_bounds
    if min(minx, miny) < -360 or max(maxx, maxy) > 360:
        raise GeoprotoError(
            f"{path}: declares {crs.to_string()} (degrees) but holds coordinates like ({minx:.0f}, {miny:.0f}), "
            f"which look projected; state the vector's real CRS (e.g. the raster's)", param="support_crs")


def _repaired(geometries: np.ndarray) -> tuple[np.ndarray, int]:
    """The geometries with the invalid ones repaired (their polygonal part, possibly empty), and how
    many were invalid."""
    import shapely

    invalid = ~shapely.is_valid(geometries)
    if not invalid.any():
        return geometries, 0
    geometries = geometries.copy()
    geometries[invalid] = [_polygonal(g) for g in shapely.make_valid(geometries[invalid])]
    return geometries, int(invalid.sum())


class VectorSupport:
    """A support vector file read and checked once (``read_vector_support``): its polygons in their own
    CRS, their classes and file rows. ``place`` maps them onto each raster the file serves, so a run over
    many tiles reads, checks and warns about the file once, and reprojects it once per CRS met."""

    def __init__(self, path: str, geometries: np.ndarray, crs, class_ids: np.ndarray, classes: ClassInfo,
                 features: np.ndarray, numbered_by_name: bool, buffer: float):
        self.path = path
        self.geometries = geometries  # in ``crs`` (None: the file and its rasters have none)
        self.crs = crs
        self.class_ids = class_ids
        self.classes = classes
        self.features = features
        self.numbered_by_name = numbered_by_name
        self.buffer = buffer
        self._in_crs: dict = {}  # raster CRS (WKT) -> the geometries reprojected there and their STRtree

    def _reprojected(self, raster_crs) -> tuple[np.ndarray, object]:
        """The geometries in ``raster_crs`` and a spatial index of them, computed once per CRS."""
        import geopandas
        import shapely
        from pyproj import CRS

        key = None if self.crs is None else raster_crs.to_wkt()
        if key not in self._in_crs:
            geometries = self.geometries
            if key is not None:
                geometries = geopandas.GeoSeries(geometries, crs=self.crs).to_crs(CRS.from_user_input(key)).to_numpy()
                # A polygon beyond where the raster's projection holds (a world-wide label file on a UTM
                # tile) gets infinite coordinates: it lies on no raster in that CRS, so it is left empty
                # rather than handed to GEOS (a stray "invalid value" warning, or worse).
                geometries[~finite_geometries(geometries)] = shapely.Polygon()
                # The file's invalid polygons were repaired when read; a valid ring whose edges nearly touch
                # can cross itself once reprojected (vertices move, edges stay straight), and GEOS refuses it.
                geometries, _ = _repaired(geometries)
            self._in_crs[key] = geometries, shapely.STRtree(geometries)
        return self._in_crs[key]

    def place(self, reference: rasterio.io.DatasetReader, assume_crs=None, shared: bool = False
              ) -> VectorLabels | None:
        """The polygons reaching ``reference``, in its pixel space (``load_vector_support``)."""
        import shapely

        path, info = self.path, self.classes
        raster_crs = assume_crs or reference.crs
        if raster_crs is not None and self.crs is None:
            raise GeoprotoError(f"{path}: has no CRS while the raster has one; state the vector's CRS",
                                param="support_crs")
        if raster_crs is None and self.crs is not None:
            raise NoRasterCRS(path, self.crs.name)
        transform = reference.transform
        pixels = 0.0
        if self.buffer:
            # The distance is in the raster's CRS units; in pixel space that is distance / pixel size.
            pixels = self.buffer / abs(transform.a)
            if pixels > max(reference.width, reference.height):
                raise GeoprotoError(f"{self.buffer:g} is {pixels:.3g} pixels, wider than the raster "
                                    f"({reference.width} x {reference.height} pixels); give a distance in the "
                                    f"raster CRS's units", param="buffer")
        projected, tree = self._reprojected(raster_crs)
        # Only the polygons whose box reaches the raster's (widened by the buffer and a pixel, whatever the
        # grid's rotation) are mapped to pixels: a large support over many tiles maps each polygon a few times.
        cols, rows = np.array([0, reference.width, 0, reference.width]), np.array([0, 0, reference.height,
                                                                                   reference.height])
        xs, ys = apply_transform(transform, cols, rows)
        margin = (pixels + 1) * float(np.hypot(np.hypot(transform.a, transform.b), np.hypot(transform.d, transform.e)))
        near = np.sort(tree.query(shapely.box(xs.min() - margin, ys.min() - margin, xs.max() + margin,
                                              ys.max() + margin)))
        inverse = ~transform
        matrix = [inverse.a, inverse.b, inverse.d, inverse.e, inverse.xoff, inverse.yoff]
        geometries = np.array([shapely.affinity.affine_transform(g, matrix) for g in projected[near]], dtype=object)
        if pixels:
            geometries = shapely.buffer(geometries, pixels)
        inside = shapely.intersects(geometries, shapely.box(0, 0, reference.width, reference.height))
        ids, features = self.class_ids[near][inside], self.features[near][inside]
        if shared:
            return (VectorLabels(geometries[inside], ids, info, features, self.numbered_by_name)
                    if inside.any() else None)
        if not inside.any():
            raise GeoprotoError(f"{path}: no support polygon overlaps the raster {reference.name}")
        # One label file may serve many tiles: a class drawn only elsewhere is left out of this raster's run.
        present = set(ids.tolist())
        outside = [name for class_id, name in zip(info.ids, info.names) if class_id not in present]
        if outside:
            warnings.warn(f"{path}: no polygon of class(es) {', '.join(outside)} overlaps the raster "
                          f"{reference.name}: left out")
            info = info.subset(present)
        return VectorLabels(geometries[inside], ids, info, features, self.numbered_by_name)


def read_vector_support(path: str, class_field: str | None = None, layer: str | None = None,
                        support_crs: str | None = None, classes: ClassInfo | None = None,
                        buffer: float = 0.0) -> VectorSupport:
    """Read the polygons and check what does not depend on a raster: the CRS, the kinds of geometry
    (repairing invalid polygons), the class field and the class ids; warnings about the file are given here."""
    import geopandas
    import pyogrio
    import shapely
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    if not path_exists(path):
        raise no_such_file(path, param="support")
    try:
        layers = pyogrio.list_layers(path)
        if layer is None and len(layers) > 1:
            raise GeoprotoError(f"{path}: has {len(layers)} layers ({', '.join(str(n) for n in layers[:, 0])}); "
                                f"choose one", param="layer")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = geopandas.read_file(path, layer=layer)
    except GeoprotoError:
        raise
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise GeoprotoError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    missing = frame.geometry.isna() | frame.geometry.is_empty
    if missing.all():
        raise GeoprotoError(f"{path}: holds no geometries")
    if missing.any():
        warnings.warn(f"{path}: skipped {int(missing.sum())} feature(s) without geometry")
        frame = frame[~missing]

    try:
        declared = CRS.from_user_input(support_crs) if support_crs else frame.crs
    except CRSError as exc:
        raise GeoprotoError(f"{support_crs!r} is not a CRS ({exc})", param="support_crs") from None
    if support_crs is None:
        _check_declared_crs(frame, declared, path)

    kinds = set(frame.geometry.geom_type)
    if not kinds <= POLYGONAL and not buffer:
        raise NotPolygonal(path, ", ".join(sorted(kinds - POLYGONAL)))
    repaired, count = _repaired(frame.geometry.to_numpy())
    if count:  # kept repaired: ``place`` then repairs only what a reprojection breaks
        frame = frame.set_geometry(geopandas.GeoSeries(repaired, index=frame.index, crs=frame.crs,
                                                       name=frame.geometry.name))
        frame = frame[~shapely.is_empty(repaired)]  # nothing polygonal left: not a polygon to label with
        warnings.warn(f"{path}: repaired {count} invalid polygon(s)")

    column = _class_column(frame, class_field, path)
    nulls = frame[column].isna()
    if nulls.all():
        raise GeoprotoError(f"{path}: field {column!r} is empty")
    if nulls.any():
        warnings.warn(f"{path}: skipped {int(nulls.sum())} polygon(s) with no value in {column!r}")
        frame = frame[~nulls]
    ids, info, numbered_by_name = _class_ids(frame[column], column, path, classes)
    # The file's rows: the filters above keep the index.
    return VectorSupport(path, frame.geometry.to_numpy(), declared, ids, info, frame.index.to_numpy(),
                         numbered_by_name, buffer)


def load_vector_support(path: str, reference: rasterio.io.DatasetReader, class_field: str | None = None,
                        layer: str | None = None, support_crs: str | None = None,
                        classes: ClassInfo | None = None, assume_crs=None, buffer: float = 0.0,
                        shared: bool = False) -> VectorLabels | None:
    """Read polygons, pick the class field, reproject to the raster's CRS and map into its pixel space.

    ``assume_crs`` overrides the raster's own CRS (for rasters that lack one);
    ``buffer`` (in the raster's CRS units) turns points and lines into polygons. ``shared``: the support
    serves several rasters, so it may miss this one (None) and keeps every class of the file.
    """
    return read_vector_support(path, class_field, layer, support_crs, classes, buffer).place(
        reference, assume_crs, shared)


def load_support(path: str, reference: rasterio.io.DatasetReader, class_field: str | None = None,
                 layer: str | None = None, support_crs: str | None = None,
                 classes_file: str | None = None, assume_crs=None, buffer: float = 0.0, shared: bool = False,
                 read_files: dict | None = None):
    """Vector or raster support, told apart by whether GDAL opens the file as a raster; ``shared``: see
    ``load_vector_support`` (a label raster labels one grid: it cannot be shared). ``read_files``: the
    vector files a run has read so far (``VectorSupport`` by file and reading options, filled here), so
    that the rasters sharing one file read and check it once."""
    key = (absolute_path(path), layer, class_field, support_crs, classes_file, buffer)
    if read_files is not None and key in read_files:
        return read_files[key].place(reference, assume_crs, shared)
    classes = read_class_file(classes_file, param="classes_file") if classes_file is not None else None
    if not path_exists(path):
        raise no_such_file(path, param="support")
    if is_raster(path):
        if shared:
            raise GeoprotoError(f"{path}: a label raster labels one raster; with several inputs give support "
                                f"polygons (or a support_image)", param="support", mentions=("support_image",))
        return RasterLabels(path, reference, classes)
    vector = read_vector_support(path, class_field, layer, support_crs, classes, buffer)
    if read_files is not None:
        read_files[key] = vector
    return vector.place(reference, assume_crs, shared)


def is_raster(path: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as dataset:
                return dataset.count > 0
    except RasterioIOError:
        return False
