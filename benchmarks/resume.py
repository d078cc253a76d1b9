"""What ``segment --resume`` costs and saves on the demo chip: the journal's overhead on an uninterrupted
run, its size on disk, and the time of a run resumed from a journal holding half of the windows.

The interruption is simulated by keeping the journal of a finished run and cutting it after half of
its records (what a kill halfway leaves); the resumed run must give the uninterrupted labels. Prints
one row per case (medians over ``--repeats``).

    .venv/bin/python benchmarks/resume.py [--tile-size 128] [--repeats 3] [--probabilities]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import struct
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import rasterio

import geoproto.segment
from geoproto.resume import resume_folder
from geoproto.segment import SegmentOptions, segment

REPO = Path(__file__).resolve().parents[1]
CHIP = REPO / "examples" / "spacenet" / "sample_geotiff.tif"
SUPPORT = REPO / "examples" / "spacenet" / "support.gpkg"
_HEADER = struct.Struct("<4sIQIB")  # resume._HEADER: magic, window, payload bytes, CRC-32, CRF kept


def cut_journal(path: str, keep: int) -> None:
    """Keep the first ``keep`` records of a journal."""
    offset = 0
    with open(path, "r+b") as file:
        for _ in range(keep):
            file.seek(offset)
            offset += _HEADER.size + _HEADER.unpack(file.read(_HEADER.size))[2]
        file.truncate(offset)


def run(folder: str, options: SegmentOptions, keep_journal: bool = False) -> tuple[float, dict]:
    output = os.path.join(folder, "classes.tif")
    probabilities = os.path.join(folder, "p.tif") if options.probabilities else None
    for path in (output, probabilities):
        if path and os.path.exists(path):
            os.remove(path)
    started = time.perf_counter()
    # A finished run removes its journal: kept here to stand for a run killed before it committed.
    with mock.patch.object(geoproto.segment, "remove_journal", lambda output: None) if keep_journal \
            else contextlib.nullcontext():
        summary = segment(str(CHIP), str(SUPPORT), output,
                          SegmentOptions(**{**vars(options), "probabilities": probabilities}))
    return time.perf_counter() - started, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probabilities", action="store_true", help="journal the probabilities too")
    args = parser.parse_args()
    base = dict(tile_size=args.tile_size, overlap=16, crf=False, progress=False, overwrite=True,
                probabilities="p.tif" if args.probabilities else None)
    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "classes.tif")
        journal = os.path.join(resume_folder(output), "windows.bin")
        plain, journalled, resumed, sizes = [], [], [], []
        for _ in range(args.repeats):
            plain.append(run(folder, SegmentOptions(**base))[0])
            with rasterio.open(output) as src:
                expected = src.read(1)
            seconds, summary = run(folder, SegmentOptions(**base, resume=True), keep_journal=True)
            journalled.append(seconds)
            sizes.append(os.path.getsize(journal))
            tiles = summary["tiles"]
            cut_journal(journal, tiles // 2)
            seconds, summary = run(folder, SegmentOptions(**base, resume=True))
            resumed.append(seconds)
            with rasterio.open(output) as src:
                assert np.array_equal(src.read(1), expected), "resumed labels differ"
            assert summary["tiles_resumed"] == tiles // 2
        with rasterio.open(CHIP) as src:
            pixels = src.width * src.height
    print(f"demo chip {pixels} px, {tiles} windows of {args.tile_size} px, CRF off"
          f"{', probabilities journalled' if args.probabilities else ''}")
    print("| case | seconds (median) |")
    print("|---|---|")
    print(f"| uninterrupted, no journal | {statistics.median(plain):.2f} |")
    print(f"| uninterrupted, --resume (journal written) | {statistics.median(journalled):.2f} |")
    print(f"| resumed from half the windows | {statistics.median(resumed):.2f} |")
    print(f"journal: {statistics.median(sizes)} bytes, {statistics.median(sizes) / pixels:.3f} bytes per pixel")


if __name__ == "__main__":
    main()
