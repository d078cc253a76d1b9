"""Full-size overlapping windows over a raster and the seam-free crop each one contributes.

Features of a narrow remainder strip have no context around them and classify far worse, so every
window is full size and (nearly) inside the raster: the last row and column of windows are shifted back
to end at the raster's edge, or, with ``align`` (``segment``'s windows start on the encoder's GRID),
within ``align - 1`` pixels past it; a raster smaller than a window is padded (``segment`` reads such a
raster, query or support, in one window of its own size first: ``window_geometry``). Overlaps are split at
their middle, so every pixel is written exactly once, by the window in which it lies furthest from an edge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    """A window to read (``row``, ``col``, ``height``, ``width``) and the part of it to keep (``core_*``)."""

    row: int
    col: int
    height: int
    width: int
    core_row0: int
    core_row1: int
    core_col0: int
    core_col1: int

    @property
    def core_slices(self) -> tuple[slice, slice]:
        """The kept part, in the window's own pixel coordinates."""
        return (slice(self.core_row0 - self.row, self.core_row1 - self.row),
                slice(self.core_col0 - self.col, self.core_col1 - self.col))


def window_starts(length: int, size: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets (multiples of ``align``) of windows covering ``length`` pixels with at least
    ``overlap`` overlap."""
    if size <= 0:
        raise ValueError("tile size must be positive")
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and smaller than the tile size")
    if size - overlap < align:
        raise ValueError(f"tile size minus overlap must be at least the alignment ({align})")
    if length <= size:
        return [0]
    step = (size - overlap) // align * align
    last = -(-(length - size) // align) * align
    return [*range(0, last, step), last]


def _cores(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    extent = min(size, length)
    cuts = [0] + [(nxt + prev + extent) // 2 for prev, nxt in zip(starts, starts[1:])] + [length]
    return list(zip(cuts, cuts[1:]))


def tile_grid(height: int, width: int, size: int, overlap: int, align: int = 1) -> list[Tile]:
    """Windows covering a ``height`` x ``width`` raster, row by row; ``height``/``width`` of each tile
    is its part inside the raster."""
    rows = window_starts(height, size, overlap, align)
    cols = window_starts(width, size, overlap, align)
    row_cores = _cores(rows, size, height)
    col_cores = _cores(cols, size, width)
    return [
        Tile(r, c, min(size, height - r), min(size, width - c), r0, r1, c0, c1)
        for r, (r0, r1) in zip(rows, row_cores)
        for c, (c0, c1) in zip(cols, col_cores)
    ]


def window_size(height: int, width: int, size: int, align: int = 1) -> int:
    """``size``, or the raster's larger side rounded up to ``align`` where that is smaller: padding a small
    raster (an ML chip) to a full window costs the encoder the whole window for a few real pixels."""
    return min(size, -(-max(height, width) // align) * align)


def window_geometry(height: int, width: int, size: int, overlap: int, align: int = 1) -> tuple[int, int]:
    """The window side and overlap a ``height`` x ``width`` raster is read with: ``size`` and ``overlap``, or one
    window of ``window_size`` (no neighbour, so no overlap) for a raster smaller than ``size``. Queries and
    supports alike, so a support chip is encoded in the window geometry its own labels will be."""
    side = window_size(height, width, size, align)
    return side, overlap if side == size else 0


def raster_windows(height: int, width: int, size: int, overlap: int, align: int = 1) -> tuple[int, list[Tile]]:
    """The window side a raster is read with (``window_geometry``) and its windows' tiles."""
    side, side_overlap = window_geometry(height, width, size, overlap, align)
    return side, tile_grid(height, width, side, side_overlap, align)
