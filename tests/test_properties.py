"""Property tests of support rasterisation: labels land inside their polygons, and inside only."""

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from geoproto.support import ClassInfo, VectorLabels
from geoproto.tiling import tile_grid

SIZE = 64


@st.composite
def polygons(draw):
    """1-4 random triangles or boxes (pixel space) with classes 1..3, inside a 150 x 170 raster."""
    shapes = []
    for _ in range(draw(st.integers(1, 4))):
        points = [(draw(st.floats(-10, 180)), draw(st.floats(-10, 160))) for _ in range(3)]
        polygon = Polygon(points)
        if polygon.area < 1:
            polygon = shapely.box(points[0][0], points[0][1], points[0][0] + 3, points[0][1] + 2)
        shapes.append((polygon, draw(st.integers(1, 3))))
    return shapes


@settings(max_examples=60, deadline=None)
@given(polygons())
def test_labels_land_inside_their_polygons(shapes):
    height, width = 150, 170
    geometries = np.array([s for s, _ in shapes])
    labels = VectorLabels(geometries, np.array([c for _, c in shapes]), ClassInfo([1, 2, 3], ["a", "b", "c"]))
    mosaic = np.zeros((height, width), np.uint8)
    for tile in tile_grid(height, width, SIZE, 8):
        window = labels.read(tile, SIZE)
        rows, cols = tile.core_slices
        mosaic[tile.core_row0:tile.core_row1, tile.core_col0:tile.core_col1] = window[rows, cols]
    rows, cols = np.mgrid[0:height, 0:width]
    centres = shapely.points(cols.ravel() + 0.5, rows.ravel() + 0.5).reshape(height, width)
    for class_id in (1, 2, 3):
        mine = geometries[[c == class_id for _, c in shapes]]
        others = geometries[[c != class_id for _, c in shapes]]
        labelled = mosaic == class_id
        if not len(mine):
            assert not labelled.any()
            continue
        union = shapely.union_all(mine)
        # every labelled pixel touches a polygon of its class (tiny polygons burn touched pixels) ...
        cells = shapely.box(cols[labelled], rows[labelled], cols[labelled] + 1, rows[labelled] + 1)
        assert shapely.intersects(cells, union).all()
        # ... and every pixel centre strictly inside one of them, and in no other class's, is labelled
        inside = shapely.contains_properly(union, centres)
        if len(others):
            inside &= ~shapely.intersects(shapely.union_all(others), centres)
        assert labelled[inside].all()
