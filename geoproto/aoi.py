"""The part of the orthophoto to segment: ``--aoi`` polygons or a ``--bbox``, in any CRS.

Windows whose core (the part a window writes, its overlap cropped) holds no pixel of the area are dropped
before anything is read, so a small area of a large orthophoto costs only the windows under it; inside those
windows, pixels outside the area become nodata.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
from affine import Affine

from .errors import GeoprotoError, no_such_file
from .raster import RasterSource, finite_geometries
from .tiling import Tile
from .validation import check_number


@dataclass
class AreaOfInterest:
    """The area as one (multi)polygon in the raster's pixel space (column, row)."""

    geometry: object  # shapely geometry

    def __post_init__(self):
        import shapely

        shapely.prepare(self.geometry)  # tested against every window of the raster

    def reaches(self, tile: Tile) -> bool:
        """Whether the window's core (the part it writes) holds a pixel centre inside the area: a window
        reaching the area only in its overlap, which a neighbour writes, would be labelled all nodata."""
        core = (tile.core_col0, tile.core_row0, tile.core_col1, tile.core_row1)
        whole = self._covers(*core)
        return _covers_a_pixel(self.geometry, *core) if whole is None else whole

    def mask(self, tile: Tile, size: int) -> np.ndarray:
        """``size`` x ``size``: True where the window's pixel centre lies inside the area (as GDAL
        rasterises it)."""
        from rasterio.features import geometry_mask

        inside = np.zeros((size, size), bool)
        whole = self._covers(tile.col, tile.row, tile.col + tile.width, tile.row + tile.height)
        inside[: tile.height, : tile.width] = whole if whole is not None else geometry_mask(
            [self.geometry], (tile.height, tile.width), Affine.translation(tile.col, tile.row), invert=True)
        return inside

    def _covers(self, col0: int, row0: int, col1: int, row1: int) -> bool | None:
        """True where the area holds every pixel centre of the box, False where it holds none, None where
        its edge crosses the box: only such windows are rasterised, since rasterising an area of many
        vertices for every window can cost more than encoding it. A pixel centre lies half a pixel inside
        the box, so a box inside the area, or missing it, decides every centre alike."""
        import shapely

        box = shapely.box(col0, row0, col1, row1)
        if not shapely.intersects(self.geometry, box):
            return False
        return True if shapely.contains(self.geometry, box) else None



@dataclass
class ClippedSource:
    """A RasterSource whose pixels outside the area of interest read as invalid (nodata)."""

    source: RasterSource
    area: AreaOfInterest

    @property
    def dataset(self):
        return self.source.dataset

    def read(self, tile: Tile, size: int, context: int = 0) -> tuple[np.ndarray, np.ndarray]:
        image, valid = self.source.read(tile, size, context)
        return image, valid & self.area.mask(tile, size)


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(check_number("bbox", float(v)) for v in text.replace(" ", ",").split(",") if v)
    except ValueError:
        values = ()
    if len(values) != 4 or values[0] >= values[2] or values[1] >= values[3]:
        raise GeoprotoError(f"{text!r}: give XMIN,YMIN,XMAX,YMAX with XMIN < XMAX and YMIN < YMAX", param="bbox")
    return values


def load_area(reference, raster_crs, aoi: str | None = None, bbox: str | None = None,
              bbox_crs: str | None = None, shared: bool = False) -> AreaOfInterest | None:
    """The ``--aoi`` file's polygons or the ``--bbox`` (in the raster's CRS unless ``bbox_crs``), in the
    raster's pixel space; None when neither is given. ``shared``: the area serves several rasters, so it
    may miss this one (no window reaches it)."""
    if aoi is None and bbox is None:
        if bbox_crs:
            raise GeoprotoError("applies to a bounding box; give one too", param="bbox_crs")
        return None
    import geopandas  # only once an area is given: segment without one needs neither of these nor pyproj
    import shapely
    from pyproj import CRS

    if aoi is not None and bbox is not None:
        raise GeoprotoError("give an area of interest or a bounding box, not both", param="bbox")
    target = CRS.from_user_input(raster_crs.to_wkt()) if raster_crs is not None else None
    if bbox is not None:
        if bbox_crs and target is None:
            raise GeoprotoError(f"{bbox_crs!r} given, but the raster {reference.name} has no CRS; give the box in its "
                                f"own coordinates, without bbox_crs", param="bbox_crs", mentions=("bbox_crs",))
        try:
            crs = CRS.from_user_input(bbox_crs) if bbox_crs else target
        except Exception as exc:
            raise GeoprotoError(f"{bbox_crs!r} is not a CRS ({exc})", param="bbox_crs") from None
        # Densified, so that a box in another CRS keeps its curved edges once reprojected.
        bounds = parse_bbox(bbox)
        box = shapely.segmentize(shapely.box(*bounds), (bounds[2] - bounds[0]) / 64)
        frame = geopandas.GeoDataFrame(geometry=[box], crs=crs)
        where, param = "", "bbox"
    else:
        if not os.path.exists(aoi):
            raise no_such_file(aoi, param="aoi")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame = geopandas.read_file(aoi)
        except Exception as exc:  # pyogrio raises several types for unreadable files
            raise GeoprotoError(f"{aoi}: not a readable vector file ({str(exc).splitlines()[0]})") from None
        frame = frame[~(frame.geometry.isna() | frame.geometry.is_empty)]
        frame = frame[frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
        if frame.empty:
            raise GeoprotoError(f"{aoi}: holds no polygon")
        where, param = f"{aoi}: ", "aoi"
    if (frame.crs is None) != (target is None):
        raise GeoprotoError(f"{where}has {'no CRS' if frame.crs is None else 'a CRS'} while the raster "
                            f"{reference.name} has {'one' if target is not None else 'none'}", param=param)
    geometries = shapely.make_valid(frame.geometry.values)  # valid for the cut to the raster's surroundings
    if target is not None and not target.equals(frame.crs):
        # Repaired again once reprojected: a valid ring whose edges nearly touch can cross itself in
        # another CRS (straight edges stay straight, vertices move), and GEOS refuses it.
        geometries = shapely.make_valid(_near_raster(geometries, frame.crs, reference, target))
    inverse = ~reference.transform
    matrix = [inverse.a, inverse.b, inverse.d, inverse.e, inverse.xoff, inverse.yoff]
    geometry = shapely.affinity.affine_transform(shapely.union_all(geometries), matrix)
    if _covers_a_pixel(geometry, 0, 0, reference.width, reference.height):
        return AreaOfInterest(geometry)
    if shared:  # one of several rasters: skipped as one outside the area is
        return AreaOfInterest(shapely.Polygon())
    touches = geometry.intersects(shapely.box(0, 0, reference.width, reference.height))
    raise GeoprotoError(f"{where}does not overlap the raster {reference.name}"
                        + (" (it covers no pixel centre of it)" if touches else ""), param=param)


# The margin, in raster widths, kept around the raster when an area in another CRS is cut to it.
_FOOTPRINT_MARGIN = 0.25


def _near_raster(geometries, crs, reference, target):
    """``geometries`` (in ``crs``) reprojected into the raster's CRS ``target``, once cut to the raster's
    footprint (with a margin) in their own CRS: a projection holds only near its zone, so a part far beyond
    it (a continent-wide box, a box on another continent, in a UTM raster's CRS) would get infinite
    coordinates, which GEOS cannot handle. Empty where nothing lies near the raster."""
    import geopandas
    import shapely

    grid = reference.transform
    margin = _FOOTPRINT_MARGIN * max(reference.width, reference.height)
    frame = shapely.box(-margin, -margin, reference.width + margin, reference.height + margin)
    frame = shapely.affinity.affine_transform(frame, [grid.a, grid.b, grid.d, grid.e, grid.xoff, grid.yoff])
    # Densified (64 pieces a side, whatever the grid's rotation), so that it keeps its curved edges once reprojected.
    step = (max(reference.width, reference.height) + 2 * margin) * float(np.hypot(grid.a, grid.d)) / 64
    footprint = geopandas.GeoSeries([shapely.segmentize(frame, step)], crs=target).to_crs(crs).values[0]
    near = np.asarray(geometries)
    # A footprint partly beyond the area CRS's own reach (a world raster, an area in UTM): the area is
    # reprojected whole, and what cannot be reprojected is left out below.
    if np.isfinite(shapely.get_coordinates(footprint)).all():
        near = shapely.intersection(near, shapely.make_valid(footprint))
    near = geopandas.GeoSeries(near[~shapely.is_empty(near)], crs=crs).to_crs(target).values
    finite = finite_geometries(near)
    return near[finite] if finite.any() else [shapely.Polygon()]


def _covers_a_pixel(geometry, col0: int, row0: int, col1: int, row1: int) -> bool:
    """Whether the area (in pixel space) holds the centre of a pixel of the box [col0, col1) x [row0, row1)
    (a raster, a window's core): an area that only touches its edge, or lies within one pixel, would leave
    it all nodata. Only the area's part in the box is rasterised."""
    import shapely
    from rasterio.features import geometry_mask
    from rasterio.windows import Window

    inside = shapely.intersection(geometry, shapely.box(col0, row0, col1, row1))
    if inside.is_empty or inside.area == 0:
        return False
    left, top, right, bottom = inside.bounds
    window = Window.from_slices((int(top), min(int(np.ceil(bottom)), row1)),
                                (int(left), min(int(np.ceil(right)), col1)))
    if window.width * window.height > 1_000_000:  # an area this wide covers pixel centres
        return True
    return bool(geometry_mask([inside], (int(window.height), int(window.width)),
                              Affine.translation(window.col_off, window.row_off), invert=True).any())
