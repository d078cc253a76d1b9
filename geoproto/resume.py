"""``segment --resume``: a journal of finished windows, so that an interrupted run continues where it stopped.

The journal lives in a folder beside the class raster, ``.geoproto-resume-<hash of the output path>``,
apart from the staging folder: staging is rebuilt by every run (a killed run's GeoTIFF is not readable),
the journal survives until the output is committed. It holds:

- ``job.json``: the job's fingerprint (input files by path, size and modification time, every option
  that changes labels, the window grid, the geoproto version); a run whose fingerprint differs refuses to
  resume and names what changed;
- ``prototypes.npy``: the first run's class prototypes, reused on resume so that labels cannot drift;
- ``windows.bin``: one record per finished window, appended in the order windows are written: a header
  (magic, window index, payload length, CRC-32 of the payload, whether the CRF refinement was kept) and
  the window's core labels (and probabilities, if asked) compressed. A record torn by a kill fails its
  CRC and is cut off, with everything after it; records are fsync'd at least every ``SYNC_SECONDS``.

On restart the records are replayed through the writer in the order they were written and only the
other windows are read and encoded. Window results do not depend on the order or batch they ran in, so
the final rasters equal an uninterrupted run's. A lock file keeps two runs off one journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
import zlib

import numpy as np

from . import __version__
from .classes import NODATA
from .errors import GeoprotoError
from .tiling import Tile

RESUME_PREFIX = ".geoproto-resume-"
SYNC_SECONDS = 1.0
_MAGIC = b"GPJ1"
_HEADER = struct.Struct("<4sIQIB")  # magic, window index, payload bytes, CRC-32 of the payload, CRF kept
_JOB, _PROTOTYPES, _WINDOWS, _LOCK = "job.json", "prototypes.npy", "windows.bin", "lock"
# Raised whenever a tree labels the same job differently (window geometry, prototypes): ``__version__`` changes
# only at releases, so without it a journal of an older tree would be replayed into a newer one's output.
# 2: support rasters smaller than the tile read in windows of their own size.
LABELS_REVISION = 2


def resume_folder(output: str) -> str:
    """The journal folder of ``output``: named from its absolute path, beside it."""
    target = os.path.abspath(output)
    digest = hashlib.sha256(target.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(os.path.dirname(target), f"{RESUME_PREFIX}{digest}")


def file_identity(path: str | None) -> dict | None:
    """A file as a fingerprint sees it: its absolute path, size and modification time (a rewritten input
    changes at least one of them); GDAL's virtual paths by name only."""
    if not path:
        return None
    if path.startswith("/vsi") or not os.path.exists(path):
        return {"path": path}
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def tiles_digest(tiles: list[Tile]) -> str:
    """The window grid in a few characters: window indices in the journal are positions in this list."""
    return hashlib.sha256(repr([tuple(vars(t).values()) for t in tiles]).encode()).hexdigest()[:16]


def fingerprint(**parts) -> dict:
    """The job's fingerprint: ``parts`` made JSON-plain, with the geoproto version and labels revision."""
    return json.loads(json.dumps({"geoproto": __version__, "labels_revision": LABELS_REVISION, **parts},
                                 sort_keys=True, default=_plain))


def _plain(value):
    if hasattr(value, "__dict__"):
        return vars(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


class Journal:
    """The finished windows of one output; see the module's docstring."""

    def __init__(self, output: str, job: dict, tiles: list[Tile], classes: int, probabilities: bool):
        self.output = output
        self.folder = resume_folder(output)
        self.tiles = tiles
        self.index = {tile: i for i, tile in enumerate(tiles)}
        self.classes = classes
        self.probabilities = probabilities
        self.records: dict[int, int] = {}  # window index -> offset of its record
        self._fd = self._lock = None
        self._synced = time.monotonic()
        os.makedirs(self.folder, exist_ok=True)
        try:
            self._take_lock()
            self._check_job(job)
            self._fd = os.open(os.path.join(self.folder, _WINDOWS), os.O_RDWR | os.O_CREAT, 0o644)
            self._scan()
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> None:
        self._lock = os.open(os.path.join(self.folder, _LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(self._lock):
            raise GeoprotoError(f"{self.output}: another run is writing it with resume now "
                                f"({self.folder} is locked)", param="resume")

    def _check_job(self, job: dict) -> None:
        path = os.path.join(self.folder, _JOB)
        if not os.path.exists(path):
            for name in os.listdir(self.folder):  # a journal without its job file cannot be trusted
                if name != _LOCK:
                    os.remove(os.path.join(self.folder, name))
            _write_durably(path, json.dumps({"output": os.path.abspath(self.output), **job}, indent=1).encode())
            return
        with open(path, encoding="utf-8") as file:
            recorded = json.load(file)
        recorded.pop("output", None)
        changed = _differences(recorded, job)
        if changed:
            raise GeoprotoError(f"{self.output}: cannot resume: the interrupted run was made with other inputs or "
                                f"options ({', '.join(changed)} changed); rerun it as it was, or delete "
                                f"{self.folder} to start over")

    def _scan(self) -> None:
        """Index the records; cut off a torn or corrupt tail (a kill mid-write) and what follows it."""
        offset, size = 0, os.fstat(self._fd).st_size
        while offset + _HEADER.size <= size:
            magic, index, length, crc, _ = _HEADER.unpack(os.pread(self._fd, _HEADER.size, offset))
            end = offset + _HEADER.size + length
            if magic != _MAGIC or index >= len(self.tiles) or end > size or \
                    zlib.crc32(os.pread(self._fd, length, offset + _HEADER.size)) != crc:
                break
            self.records[index] = offset
            offset = end
        if offset < size:
            os.ftruncate(self._fd, offset)
            os.fsync(self._fd)
        os.lseek(self._fd, offset, os.SEEK_SET)

    def keep_prototypes(self, prototypes):
        """The prototypes to segment with: those of the interrupted run if there is one, else ``prototypes``,
        kept for a later resume."""
        import torch

        path = os.path.join(self.folder, _PROTOTYPES)
        if os.path.exists(path):
            stored = torch.from_numpy(np.load(path, allow_pickle=False))
            if stored.shape != prototypes.shape:
                raise GeoprotoError(f"{self.output}: cannot resume: {path} holds prototypes of another shape; "
                                    f"delete {self.folder} to start over")
            return stored.to(prototypes.device, prototypes.dtype)
        array = prototypes.detach().cpu().numpy()
        temporary = f"{path}.tmp.npy"
        np.save(temporary, array, allow_pickle=False)
        _fsync_file(temporary)
        os.replace(temporary, path)
        return prototypes

    def pending(self) -> list[Tile]:
        """The windows still to do, in grid order."""
        return [tile for i, tile in enumerate(self.tiles) if i not in self.records]

    def replay(self, writer) -> tuple[np.ndarray, int]:
        """Write every finished window through ``writer`` again; returns (pixels per class id, windows
        whose CRF refinement had been rejected)."""
        counts = np.zeros(256, np.int64)
        rejected = 0
        for index, offset in sorted(self.records.items(), key=lambda item: item[1]):
            _, _, length, _, kept = _HEADER.unpack(os.pread(self._fd, _HEADER.size, offset))
            tile = self.tiles[index]
            labels, probabilities = self._decode(tile, os.pread(self._fd, length, offset + _HEADER.size))
            writer.write(tile, labels, probabilities)
            rows, cols = tile.core_slices
            counts += np.bincount(labels[rows, cols].ravel(), minlength=256)
            rejected += not kept
        return counts, rejected

    def record(self, tile: Tile, labels: np.ndarray, probabilities: np.ndarray | None, crf_kept: bool = True) -> None:
        """Append a finished window (its core only: the rest is never written)."""
        rows, cols = tile.core_slices
        payload = np.ascontiguousarray(labels[rows, cols], np.uint8).tobytes()
        if self.probabilities:
            payload += np.ascontiguousarray(probabilities[:, rows, cols], np.float32).tobytes()
        payload = zlib.compress(payload, 1)
        header = _HEADER.pack(_MAGIC, self.index[tile], len(payload), zlib.crc32(payload), bool(crf_kept))
        os.write(self._fd, header + payload)
        if time.monotonic() - self._synced >= SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            self._synced = time.monotonic()

    def _decode(self, tile: Tile, payload: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        """The record as window-sized arrays (outside the core: nodata, never written)."""
        rows, cols = tile.core_slices
        height, width = rows.stop - rows.start, cols.stop - cols.start
        data = zlib.decompress(payload)
        labels = np.full((tile.height, tile.width), NODATA, np.uint8)
        labels[rows, cols] = np.frombuffer(data, np.uint8, height * width).reshape(height, width)
        probabilities = None
        if self.probabilities:
            probabilities = np.zeros((self.classes, tile.height, tile.width), np.float32)
            probabilities[:, rows, cols] = np.frombuffer(data, np.float32, offset=height * width).reshape(
                self.classes, height, width)
        return labels, probabilities

    def close(self) -> None:
        """Flush the records to disk and release the folder (kept for the next ``--resume``)."""
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None


def remove_journal(output: str) -> None:
    """Remove ``output``'s journal, if any (a committed output makes it obsolete), unless a run holds it."""
    folder = resume_folder(output)
    try:
        lock = os.open(os.path.join(folder, _LOCK), os.O_RDWR)
    except OSError:  # no journal (or an unreadable one: left alone)
        return
    try:
        if _try_lock(lock):
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(lock)


def _try_lock(fd: int) -> bool:
    """Take the advisory lock on ``fd`` without waiting; False if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted names of the entries that differ (``options.tile_size``, ``image.mtime_ns``)."""
    names = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: str, data: bytes) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


# SegmentOptions fields that change no window's labels (outputs, post-processing, how the work is spread):
# every other field, a new one included, is part of the fingerprint.
UNRELATED_OPTIONS = {"workers", "batch_size", "check_support", "vector", "preview", "report", "cog", "driver",
                     "vector_driver", "creation_options", "overviews", "min_area", "simplify", "command", "overwrite",
                     "progress", "resume", "dask_scheduler", "dask_local"}
# SegmentOptions fields naming an input file: fingerprinted by the file, not the path.
FILE_OPTIONS = {"checkpoint", "init_weights", "classes_file", "support_image", "aoi", "prototypes"}


def segment_job(image: str, options, device: str, tiles: list[Tile], **inputs) -> dict:
    """The fingerprint of a ``segment`` job: what its windows' labels depend on (``inputs``: the files the
    prototypes come from, by ``file_identity``, and the stretch the raster is read with)."""
    settings = {}
    for name, value in vars(options).items():
        if name in UNRELATED_OPTIONS:
            continue
        if name == "probabilities":
            value = value is not None  # "" asks for them too (segment_many: a name made from the input)
        elif name in FILE_OPTIONS:
            value = file_identity(value)
        settings[name] = value
    return fingerprint(image=file_identity(image), **inputs, options=settings, device=device,
                       windows={"count": len(tiles), "digest": tiles_digest(tiles)})
