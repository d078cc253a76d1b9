"""tile_grid: full-size windows inside the raster, and cores that cover every pixel exactly once."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoproto.tiling import Tile, tile_grid, window_geometry, window_size, window_starts


def interval_counts(intervals, length):
    """How many of the half-open ``(start, stop)`` intervals hold each of ``length`` positions."""
    delta = np.zeros(length + 1, np.int64)
    for start, stop in intervals:
        assert 0 <= start <= stop <= length, (start, stop, length)
        delta[start] += 1
        delta[stop] -= 1
    return np.cumsum(delta)[:length]


def axis_parts(tiles, axis):
    """The distinct (window start, window extent, core start, core stop) along one axis, in order."""
    if axis == 0:
        parts = [(t.row, t.height, t.core_row0, t.core_row1) for t in tiles]
    else:
        parts = [(t.col, t.width, t.core_col0, t.core_col1) for t in tiles]
    return sorted(set(parts))


def check_grid(height, width, size, overlap, full_2d=False, align=1):
    tiles = tile_grid(height, width, size, overlap, align)
    assert tiles and all(isinstance(t, Tile) for t in tiles)
    rows, cols = axis_parts(tiles, 0), axis_parts(tiles, 1)
    # The grid is separable: every (row part, column part) pair occurs exactly once, row by row.
    assert len(tiles) == len(rows) * len(cols)
    assert [(t.row, t.col) for t in tiles] == [(r[0], c[0]) for r in rows for c in cols]

    for parts, length in ((rows, height), (cols, width)):
        starts = [p[0] for p in parts]
        assert starts == window_starts(length, size, overlap, align)
        assert len(set(starts)) == len(starts)
        assert all(start % align == 0 for start in starts)
        for start, window, core0, core1 in parts:
            # Full-size windows (a raster smaller than a tile: one window, the raster); aligned windows
            # end less than ``align`` pixels past the raster's edge.
            assert window == min(size, length - start)
            assert 0 <= start and start + window <= length
            assert length <= size or start + size < length + align
            # The core lies inside its window and is not empty.
            assert start <= core0 < core1 <= start + window
        # Consecutive windows overlap by at least ``overlap`` (no gaps, no narrow remainder strips).
        for (s0, *_), (s1, *_) in zip(parts, parts[1:]):
            assert 0 < s1 - s0 <= size - overlap
        # Every position is in exactly one core along this axis.
        counts = interval_counts([(p[2], p[3]) for p in parts], length)
        assert (counts == 1).all(), np.flatnonzero(counts != 1)[:10]
        # Cores are split in the middle of each overlap.
        for (s0, w0, _, cut), (s1, _, cut1, _) in zip(parts, parts[1:]):
            assert cut == cut1
            assert abs((cut - s1) - (s0 + w0 - cut)) <= 1

    if full_2d:
        written = np.zeros((height, width), np.int32)
        for tile in tiles:
            written[tile.core_row0:tile.core_row1, tile.core_col0:tile.core_col1] += 1
            # core_slices index the same pixels inside the window.
            rs, cs = tile.core_slices
            assert (rs.start + tile.row, rs.stop + tile.row) == (tile.core_row0, tile.core_row1)
            assert (cs.start + tile.col, cs.stop + tile.col) == (tile.core_col0, tile.core_col1)
            assert 0 <= rs.start < rs.stop <= tile.height and 0 <= cs.start < cs.stop <= tile.width
        assert (written == 1).all()
    return tiles


CASES = [
    # (height, width, size, overlap)
    (1, 1, 32, 0),
    (10, 400, 417, 64),      # smaller than a tile in both directions
    (416, 416, 417, 64),
    (417, 417, 417, 64),     # exactly a tile
    (418, 418, 417, 64),     # a tile plus one pixel
    (418, 417, 417, 0),
    (417, 1000, 417, 64),
    (834, 834, 417, 0),      # exactly two tiles without overlap
    (835, 833, 417, 0),
    (1000, 1000, 417, 64),
    (1000, 1000, 417, 207),
    (1000, 37, 417, 100),
    (700, 900, 256, 127),
    (100, 101, 32, 0),
    (100, 101, 32, 15),
    (97, 97, 32, 31),        # overlap up to size - 1 is allowed by window_starts
    (33, 64, 32, 31),
    (5000, 300, 512, 64),
]


@pytest.mark.parametrize("height, width, size, overlap", CASES)
def test_tile_grid_cases(height, width, size, overlap):
    check_grid(height, width, size, overlap, full_2d=height * width <= 2_000_000)


@pytest.mark.parametrize("height, width, size, overlap", [c for c in CASES if c[2] - c[3] >= 16])
def test_tile_grid_cases_aligned_to_the_encoder_grid(height, width, size, overlap):
    check_grid(height, width, size, overlap, full_2d=height * width <= 2_000_000, align=16)


def test_aligned_windows_start_on_the_grid_and_the_last_one_passes_the_edge():
    assert window_starts(1000, 417, 64, 16) == [0, 352, 592]  # 592 + 417 = 1009: 9 px past the edge
    tiles = tile_grid(1000, 900, 417, 64, 16)
    assert sorted({(t.row, t.height) for t in tiles}) == [(0, 417), (352, 417), (592, 408)]
    assert sorted({(t.col, t.width) for t in tiles}) == [(0, 417), (352, 417), (496, 404)]
    with pytest.raises(ValueError, match="at least the alignment"):
        window_starts(1000, 40, 30, 16)


def test_raster_smaller_than_tile_is_one_window_of_raster_size():
    (tile,) = tile_grid(100, 250, 417, 64)
    assert (tile.row, tile.col, tile.height, tile.width) == (0, 0, 100, 250)
    assert (tile.core_row0, tile.core_row1, tile.core_col0, tile.core_col1) == (0, 100, 0, 250)
    assert tile.core_slices == (slice(0, 100), slice(0, 250))


@pytest.mark.parametrize("height, width, expected", [
    (100, 60, 112),  # the larger side, rounded up to the grid
    (60, 100, 112),
    (96, 96, 96),  # already on the grid
    (10, 5, 16),
    (410, 300, 416),  # 416 < 417: still shrunk
    (417, 417, 417),  # 432 > 417: the tile size
    (4000, 50, 417),  # larger than the tile in one dimension
])
def test_window_size_is_the_tile_size_or_the_small_raster_on_the_grid(height, width, expected):
    assert window_size(height, width, 417, 16) == expected


def test_exact_tile_is_one_window():
    (tile,) = tile_grid(417, 417, 417, 64)
    assert (tile.row, tile.col, tile.height, tile.width) == (0, 0, 417, 417)
    assert tile.core_slices == (slice(0, 417), slice(0, 417))


def test_tile_plus_one_gives_two_full_windows_split_in_the_middle():
    tiles = tile_grid(418, 417, 417, 64)
    assert [(t.row, t.col, t.height, t.width) for t in tiles] == [(0, 0, 417, 417), (1, 0, 417, 417)]
    # The windows overlap on rows 1..416; the cut is at (1 + 417) // 2 = 209.
    assert [(t.core_row0, t.core_row1) for t in tiles] == [(0, 209), (209, 418)]
    assert tiles[1].core_slices == (slice(208, 417), slice(0, 417))


def test_last_window_shifted_back_to_the_edge():
    assert window_starts(1000, 417, 64) == [0, 353, 583]
    tiles = tile_grid(1000, 1000, 417, 64)
    assert sorted({t.row for t in tiles}) == [0, 353, 583]
    assert all(t.row + t.height <= 1000 and t.height == 417 for t in tiles)


def test_window_starts_without_overlap():
    assert window_starts(834, 417, 0) == [0, 417]
    assert window_starts(100, 417, 0) == [0]
    assert window_starts(417, 417, 0) == [0]


@pytest.mark.parametrize("size, overlap", [(32, 32), (32, 33), (32, -1), (417, 417), (417, 1000),
                                           (0, 0), (-5, 0), (1, 1)])
def test_window_starts_rejects_bad_size_or_overlap(size, overlap):
    with pytest.raises(ValueError, match="tile size must be positive|overlap must be at least 0"):
        window_starts(1000, size, overlap)
    with pytest.raises(ValueError, match="tile size must be positive|overlap must be at least 0"):
        tile_grid(1000, 1000, size, overlap)


@pytest.mark.parametrize("length", [1, 10, 32])
def test_window_starts_rejects_bad_overlap_even_when_one_window_suffices(length):
    with pytest.raises(ValueError, match="overlap must be at least 0 and smaller"):
        window_starts(length, 32, 32)


@st.composite
def grids(draw):
    size = draw(st.integers(32, 600))
    overlap = draw(st.integers(0, size // 2 - 1))
    height = draw(st.integers(1, 3000))
    width = draw(st.integers(1, 3000))
    return height, width, size, overlap


@settings(max_examples=200, deadline=None, derandomize=True)
@given(grids(), st.sampled_from([1, 16]))
def test_every_pixel_written_exactly_once(grid, align):
    height, width, size, overlap = grid
    check_grid(height, width, size, overlap, full_2d=height * width <= 250_000, align=align)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(4, 100), st.data())
def test_every_pixel_written_exactly_once_small_full_2d(height, width, size, data):
    overlap = data.draw(st.integers(0, size - 1))
    check_grid(height, width, size, overlap, full_2d=True)


def test_window_geometry_reads_a_raster_within_a_tile_in_one_window_without_overlap():
    """Queries and supports take their windows from it: a small raster gets its side rounded up to the grid
    and no overlap (it has no neighbour window)."""
    assert window_geometry(60, 100, 417, 64, 16) == (112, 0)
    assert window_geometry(60, 100, 4096, 64, 16) == (112, 0)
    assert window_geometry(900, 100, 417, 64, 16) == (417, 64)
