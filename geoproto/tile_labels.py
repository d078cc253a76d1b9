"""A tile's labels from its class probabilities: DenseCRF with pydensecrf2 (if asked), argmax, nodata.

This is what the DenseCRF worker processes (``--crf-backend densecrf``) run. It imports neither torch nor rasterio, so a spawned
worker starts in a fraction of a second (importing torch cost each worker 3 s of CPU, most of a
2-core machine's head start).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import crf as crf_module
from .classes import NODATA
from .tiling import Tile


@dataclass
class TileResult:
    tile: Tile
    labels: np.ndarray
    probabilities: np.ndarray | None
    crf_kept: bool
    seconds: float  # spent refining and labelling this tile


def finish_tile(tile: Tile, rgb: np.ndarray | None, scores: np.ndarray | None, valid: np.ndarray,
                ids: np.ndarray, crf_params: crf_module.CRFParams | None, keep_probabilities: bool,
                crf_kept: bool = True) -> TileResult:
    """pydensecrf2 CRF (if ``crf_params``) and argmax of one tile, cropped to its window.

    ``scores`` are the K x H x W class probabilities, or the H x W class indices when the model took
    the argmax itself (no CRF, no probabilities kept), or None when nothing in the tile is valid and
    the model did not run. ``rgb`` is the window as H x W x 3 uint8 (``crf.to_rgb8``), for the CRF.
    ``crf_kept`` says whether the torch backend's guard kept its refinement of ``scores``.
    """
    started = time.perf_counter()
    height, width = tile.height, tile.width
    valid = valid[:height, :width]
    if scores is None:
        return TileResult(tile, np.full((height, width), NODATA, np.uint8), None, True, 0.0)
    probabilities, kept = None, crf_kept
    if scores.ndim == 2:
        indices = scores[:height, :width]
    else:
        probabilities = scores[:, :height, :width]
        if crf_params is not None:
            probabilities, kept = crf_module.refine(rgb[:height, :width], probabilities, crf_params)
        indices = probabilities.argmax(0)
    labels = ids[indices]
    labels[~valid] = NODATA
    return TileResult(tile, labels, probabilities if keep_probabilities else None, kept,
                      time.perf_counter() - started)


PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def init_worker(parent_pid: int | None = None) -> None:
    """The parent handles Ctrl-C and shuts the pool down; workers must not die mid-task on their own.

    But they must die with the parent: a parent killed outright (kill -9, the OOM killer) runs no
    clean-up, and its workers (and multiprocessing's resource tracker, which waits for them) would
    otherwise live on. Linux kills them with the parent (PR_SET_PDEATHSIG); elsewhere, and as a
    fallback, a watchdog thread exits once the parent is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent_pid = parent_pid or os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the watchdog alone
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="geoproto-parent-watchdog",
                     daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)
