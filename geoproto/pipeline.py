"""The tile pipeline of ``segment``: stages that overlap, with bounded queues between them.

    reader thread -> [read queue] -> model (main thread, batches)
                  -> torch DenseCRF: beside the model on its device (GPU), or in the writer thread (CPU)
                  -> [DenseCRF process pool, --crf-backend densecrf] -> [write queue] -> writer thread

Reading and writing hide behind the model. The torch CRF refines each batch right after the model on a
GPU; on a CPU it refines a batch on one core in the writer thread while the model encodes the next batch
on the other cores. pydensecrf2 (single-threaded C++) runs in ``workers`` processes. On a CPU without a
CRF the stages take turns in the main thread instead (see ``overlap`` below). Every queue is bounded, so
memory stays flat whatever the raster's size. Any stage's error stops all of them and is raised in the
caller; the process pool is shut down before returning, so no worker outlives the run. Labels do not
depend on ``workers`` or the batch size.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from . import crf as crf_module
from . import crf_torch
from .classifier import Classifier
from .models.runtime import CONTEXT_MARGIN
from .output import ResultWriter
from .raster import RasterSource
from .progress import progress_bar
from .tile_labels import TileResult, finish_tile, init_worker
from .tiling import Tile
from .validation import check_memory

_DONE = object()


class _Stage(threading.Thread):
    """A daemon thread whose exception is kept for the main thread to raise."""

    def __init__(self, target, name: str):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self):
        try:
            self._target_fn()
        except BaseException as exc:  # handed to the main thread
            self.error = exc


def _put(q: queue.Queue, item, stop: threading.Event, consumer: _Stage | None = None) -> bool:
    while not stop.is_set():
        if consumer is not None:
            _check(consumer)
            if not consumer.is_alive():
                return False
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


@dataclass
class Window:
    """A window read for the model: its tile, the image with CONTEXT_MARGIN pixels of context
    (3 x (size + 2 margin)^2, in [0, 1]) and its size x size validity mask."""

    tile: Tile
    image: np.ndarray
    valid: np.ndarray


@dataclass
class RefineSettings:
    """DenseCRF for the windows: its parameters (in pixels) and backend (``crf.BACKENDS``, resolved)."""

    params: crf_module.CRFParams
    backend: str = "torch"


def score_windows(classifier: Classifier, windows: list[Window], size: int, refine: RefineSettings | None,
                  keep_probabilities: bool) -> tuple[dict[int, np.ndarray], dict[int, bool], dict[str, float]]:
    """The model's (and the torch CRF's) part of a batch: for each window with valid pixels, its class
    probabilities (K x size x size) when they are kept or still to be refined by pydensecrf2, else its
    class indices (size x size uint8); whether the torch CRF's guard kept the refinement; and the seconds
    spent in the model and the CRF. Windows without valid pixels are not encoded."""
    valid_rows, images, scores, model_seconds = _model_scores(classifier, windows, size,
                                                              keep_probabilities or refine is not None)
    per_window, kept, crf_seconds = _refine_scored(windows, valid_rows, images, scores, size, refine,
                                                   keep_probabilities)
    return per_window, kept, {"model": model_seconds, "crf": crf_seconds}


def _model_scores(classifier: Classifier, windows: list[Window], size: int, probabilities: bool):
    """The windows with valid pixels (their positions), their images, and their class probabilities (or,
    unless ``probabilities``, class indices) as one tensor on the model's device; and the seconds taken."""
    valid_rows = [i for i, window in enumerate(windows) if window.valid.any()]
    if not valid_rows:
        return valid_rows, None, None, 0.0
    started = time.perf_counter()
    images = np.stack([windows[i].image for i in valid_rows])
    with torch.inference_mode():
        logits = classifier.score(images, size)
        # The argmax is cheap in torch and spares the writer thread (and the softmax).
        scores = logits.softmax(1) if probabilities else logits.argmax(1).to(torch.uint8)
    return valid_rows, images, scores, time.perf_counter() - started


def _refine_scored(windows: list[Window], valid_rows: list[int], images: np.ndarray | None,
                   scores: torch.Tensor | None, size: int, refine: RefineSettings | None, keep_probabilities: bool):
    """The torch CRF's part of a scored batch (``_model_scores``), if it is the backend asked for: each valid
    window's scores, the guard's verdict per window position, and the seconds taken. Shared by the pipeline's
    two orders of work: the CRF right after the model, or later in the writer thread."""
    kept, seconds = {}, 0.0
    if valid_rows and refine is not None and refine.backend == "torch":  # on the model's device, batch and all
        started = time.perf_counter()
        sizes = [(windows[i].tile.height, windows[i].tile.width) for i in valid_rows]
        with torch.inference_mode():
            scores, guard = crf_torch.refine_batch(torch.from_numpy(_windows(images, size)).to(scores.device),
                                                   scores, refine.params, sizes)
            if not keep_probabilities:
                scores = scores.argmax(1).to(torch.uint8)
        kept, seconds = dict(zip(valid_rows, guard)), time.perf_counter() - started
    per_window = dict(zip(valid_rows, scores.cpu().numpy())) if valid_rows else {}
    return per_window, kept, seconds


def label_windows(classifier: Classifier, windows: list[Window], size: int, refine: RefineSettings | None,
                  keep_probabilities: bool = False) -> list[TileResult]:
    """A batch of windows to finished tile results (class ids, nodata where invalid, CRF applied): the
    whole per-window work, in one call, for callers that run it away from the pipeline's stages."""
    scores, kept, _ = score_windows(classifier, windows, size, refine, keep_probabilities)
    return _finish_windows(windows, scores, kept, classifier.ids, size, refine, keep_probabilities)


def _finish_windows(windows: list[Window], scores: dict, kept: dict, ids: np.ndarray, size: int,
                    refine: RefineSettings | None, keep_probabilities: bool) -> list[TileResult]:
    """Every window of a scored batch finished in the calling thread (``finish_tile``: pydensecrf2 if it is
    the backend, argmax, nodata)."""
    pool_params = _densecrf_params(refine)
    return [finish_tile(*_finish_args(window, i, scores, kept, ids, size, pool_params, keep_probabilities))
            for i, window in enumerate(windows)]


def _densecrf_params(refine: RefineSettings | None) -> crf_module.CRFParams | None:
    """The CRF parameters ``finish_tile`` applies: pydensecrf2's (the torch CRF runs with the model)."""
    return refine.params if refine is not None and refine.backend == "densecrf" else None


def _finish_args(window: Window, i: int, scores: dict, kept: dict, ids: np.ndarray, size: int,
                 pool_params: crf_module.CRFParams | None, keep_probabilities: bool) -> tuple:
    """``finish_tile``'s arguments for window ``i`` of a scored batch."""
    rgb = crf_module.to_rgb8(_windows(window.image, size)) if pool_params is not None and i in scores else None
    return (window.tile, rgb, scores.get(i), window.valid, ids, pool_params, keep_probabilities, kept.get(i, True))


@dataclass
class PipelineResult:
    counts: np.ndarray  # pixels per class id (256 bins), over the windows' cores
    crf_rejected: int  # windows whose CRF result the guard refused
    stage_seconds: dict[str, float]  # reading, model, CRF and labelling (summed over workers), writing


def segment_bar(show: bool | None, windows: int) -> tqdm:
    """The progress bar of ``segment`` over ``windows`` windows: one for a run over several rasters, or a
    runner's own when it is given none, and both alike."""
    return progress_bar(show, windows, "tile", "segment")


class ResultRecorder:
    """Writes finished windows and tallies them: class pixels over their cores, windows whose CRF result
    the guard refused, seconds writing and finishing; advances the progress bar. The local pipeline and
    the cluster runner both record through it, so the same results leave the same outputs, ``--resume``
    journal and counts."""

    def __init__(self, writer: ResultWriter, journal, progress: bool | tqdm, windows: int):
        """``journal``: a ``resume.Journal`` or None; ``progress``: show a bar over ``windows``, or the bar
        to advance (one bar over several rasters, which outlives this run)."""
        self.writer, self.journal = writer, journal
        self._own_bar = not isinstance(progress, tqdm)
        self.bar = segment_bar(progress, windows) if self._own_bar else progress
        self.counts = np.zeros(256, np.int64)
        self.crf_rejected = 0
        self.write_seconds = 0.0
        self.finish_seconds = 0.0  # ``TileResult.seconds``: pydensecrf2 and argmax, where they ran

    def record(self, results: list[TileResult]) -> None:
        for result in results:
            started = time.perf_counter()
            self.writer.write(result.tile, result.labels, result.probabilities)
            if self.journal is not None:
                self.journal.record(result.tile, result.labels, result.probabilities, result.crf_kept)
            self.write_seconds += time.perf_counter() - started
            self.finish_seconds += result.seconds
            rows, cols = result.tile.core_slices
            self.counts += np.bincount(result.labels[rows, cols].ravel(), minlength=256)
            self.crf_rejected += not result.crf_kept
        self.bar.update(len(results))

    def close(self) -> None:
        """Close the bar if this run made it."""
        if self._own_bar:
            self.bar.close()


class WindowPipeline:
    """Segments windows of a raster and writes their cores: read -> score -> refine -> write.

    ``run`` drives the stages (threads and queues, see the module's docstring); each step is a method,
    so the flow reads in one place. Labels do not depend on ``workers`` or the batch size.
    """

    def __init__(self, source: RasterSource, classifier: Classifier, writer: ResultWriter, size: int,
                 refine: RefineSettings | None, batch_size: int, workers: int, progress: bool | tqdm,
                 journal=None):
        """``progress``: show a bar, or the bar to advance (one bar over several rasters); ``journal``
        (``resume.Journal``): where each written window is also recorded, for ``--resume``."""
        self.source, self.classifier, self.writer = source, classifier, writer
        self.size, self.refine, self.batch_size, self.workers = size, refine, batch_size, workers
        self.progress, self.journal = progress, journal
        self.keep_probabilities = writer.probabilities is not None
        self.pool_params = _densecrf_params(refine)
        # On a CPU with cores to spare, the torch CRF refines a batch in the writer thread, on one core,
        # while the model encodes the next batch on the others: neither scales well to every core, so
        # side by side they finish sooner than taking turns.
        self.crf_beside_model = (refine is not None and refine.backend == "torch"
                                 and classifier.extract.device.type == "cpu" and torch.get_num_threads() >= 2)
        self.timings = {"read": 0.0, "model": 0.0, "crf": 0.0, "write": 0.0}
        self.recorder: ResultRecorder | None = None  # the run's, while it runs

    def read(self, tile: Tile) -> Window:
        started = time.perf_counter()
        window = Window(tile, *self.source.read(tile, self.size, CONTEXT_MARGIN))
        self.timings["read"] += time.perf_counter() - started
        return window

    def score(self, windows: list[Window]) -> tuple[dict, dict]:
        """Model and torch CRF on a batch (``score_windows``)."""
        scores, kept, timings = score_windows(self.classifier, windows, self.size, self.refine,
                                              self.keep_probabilities)
        for stage, seconds in timings.items():
            self.timings[stage] += seconds
        return scores, kept

    def score_then_refine_later(self, windows: list[Window]):
        """The model on a batch now, and the torch CRF and labelling as one call the writer thread makes
        (``crf_beside_model``)."""
        valid_rows, images, scores, seconds = _model_scores(self.classifier, windows, self.size, True)
        self.timings["model"] += seconds

        def refine_and_label() -> list[TileResult]:
            per_window, kept, seconds = _refine_scored(windows, valid_rows, images, scores, self.size, self.refine,
                                                       self.keep_probabilities)
            self.timings["crf"] += seconds
            return _finish_windows(windows, per_window, kept, self.classifier.ids, self.size, self.refine,
                                   self.keep_probabilities)
        return refine_and_label

    def refine_later(self, windows: list[Window], scores: dict, kept: dict, pool) -> list:
        """The rest of each window's work (pydensecrf2 and argmax, ``finish_tile``), as a pool future
        or, without a pool, a call the writing step makes."""
        items = []
        for i, window in enumerate(windows):
            args = _finish_args(window, i, scores, kept, self.classifier.ids, self.size, self.pool_params,
                                self.keep_probabilities)
            items.append(pool.submit(finish_tile, *args) if pool is not None and i in scores
                         else functools.partial(finish_tile, *args))
        return items

    def write(self, item) -> None:
        """Write the result(s) of a pool future or of a deferred call."""
        results = item.result() if isinstance(item, Future) else item()
        self.recorder.record(results if isinstance(results, list) else [results])

    def run(self, tiles: list[Tile]) -> PipelineResult:
        """Segment ``tiles`` and write them."""
        batch_size, workers = self.batch_size, self.workers
        stop = threading.Event()
        read_queue: queue.Queue = queue.Queue(maxsize=read_queue_size(batch_size))
        # Items are windows, or whole batches when the CRF refines beside the model: one being refined and
        # one waiting keep both busy.
        write_queue: queue.Queue = queue.Queue(maxsize=2 if self.crf_beside_model else 2 * max(workers, 1) + batch_size)

        def read_tiles():
            for tile in tiles:
                yield self.read(tile)

        def read_all():
            for item in read_tiles():
                if not _put(read_queue, item, stop):
                    return
            _put(read_queue, _DONE, stop)

        def write_all():
            if self.crf_beside_model:
                torch.set_num_threads(1)  # this thread's own OpenMP team: the CRF's one core
            while not stop.is_set():
                try:
                    item = write_queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _DONE:
                    return
                self.write(item)

        pool = None
        threads = torch.get_num_threads()
        if self.pool_params is not None and workers > 0:
            # Workers are started by the first submit, from this (main) thread: PR_SET_PDEATHSIG ties them
            # to the thread that started them.
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=init_worker, initargs=(os.getpid(),))
            # The CRF workers need cores too: leave the model the cores they do not take (at least one).
            torch.set_num_threads(max(1, threads - workers) if threads > workers else max(1, threads // 2))
        elif self.crf_beside_model:
            torch.set_num_threads(threads - 1)
        reader, writer_thread = _Stage(read_all, "geoproto-reader"), _Stage(write_all, "geoproto-writer")
        inline = read_tiles()
        # Overlap needs something to overlap with: a GPU, or CRF workers. On a CPU without them the model
        # already uses every core, and reader and writer threads beside it only make it wait for the GIL,
        # so the stages take turns.
        overlap = pool is not None or self.crf_beside_model or self.classifier.extract.device.type != "cpu"
        next_item = (lambda: _get(read_queue, reader)) if overlap else (lambda: next(inline, _DONE))
        emit = (lambda item: _put(write_queue, item, stop, writer_thread)) if overlap else \
            (lambda item: self.write(item) or True)
        self.recorder = ResultRecorder(self.writer, self.journal, self.progress, len(tiles))
        try:
            if overlap:
                _start(reader, writer_thread)
            finished = False
            while not finished:
                batch = []
                while len(batch) < batch_size:
                    item = next_item()
                    if item is _DONE:
                        finished = True
                        break
                    batch.append(item)
                if not batch:
                    break
                items = [self.score_then_refine_later(batch)] if self.crf_beside_model else \
                    self.refine_later(batch, *self.score(batch), pool)
                for item in items:
                    if not emit(item):
                        break
            if overlap:
                _put(write_queue, _DONE, stop, writer_thread)
                while writer_thread.is_alive():
                    writer_thread.join(0.1)
                _check(writer_thread)
                _check(reader)
        except BaseException:
            stop.set()
            _drain(write_queue)
            raise
        finally:
            stop.set()
            inline.close()
            self.recorder.close()
            torch.set_num_threads(threads)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            for stage in (reader, writer_thread):  # both notice ``stop`` within 0.1 s of their current step
                if stage.ident is not None:
                    stage.join(60)
        self.timings["write"] = self.recorder.write_seconds
        self.timings["crf"] += self.recorder.finish_seconds
        return PipelineResult(self.recorder.counts, self.recorder.crf_rejected,
                              {k: round(v, 3) for k, v in self.timings.items()})


def read_queue_size(batch_size: int) -> int:
    """Windows waiting for the model at most (two batches ahead)."""
    return 2 * batch_size + 2


# Rough bytes per window pixel, to refuse up front a plan that cannot fit: a window being encoded holds
# the encoder's largest activations (lite0's 96-channel expansion at half resolution is ~100 B/px, with
# its input), plus 12 bytes per class for scores, their upsampling and softmax; a queued window holds
# its float input and mask; each DenseCRF worker holds its lattice and three float buffers per class.
MODEL_BYTES_PER_PIXEL = 160
QUEUED_BYTES_PER_PIXEL = 13
CRF_BYTES_PER_PIXEL = 64
CLASS_BYTES_PER_PIXEL = 12


def window_pixels(size: int) -> int:
    """Pixels of a window read with its context (what the model encodes)."""
    return (size + 2 * CONTEXT_MARGIN) ** 2


def model_memory_bytes(size: int, batch_size: int, classes: int) -> int:
    """One batch of windows in the model, its activations and class scores: the part of every runner's
    memory bound that the model takes (the local pipeline's, a Dask worker's)."""
    return batch_size * window_pixels(size) * (MODEL_BYTES_PER_PIXEL + CLASS_BYTES_PER_PIXEL * classes)


def check_window_memory(size: int, batch_size: int, classes: int, crf_workers: int = 0) -> None:
    """Refuse, with the figure, windows of ``size`` (the tile size, or a smaller raster's own) and a batch
    that would not fit in memory (a tile size of 100000 asks for thousands of GiB per window)."""
    pixels = window_pixels(size)
    queued = read_queue_size(batch_size) * pixels * QUEUED_BYTES_PER_PIXEL
    crf = crf_workers * pixels * (CRF_BYTES_PER_PIXEL + CLASS_BYTES_PER_PIXEL * classes)
    check_memory(model_memory_bytes(size, batch_size, classes) + queued + crf,
                 f"windows of {size} px with batch_size {batch_size}"
                 + (f" and {crf_workers} CRF worker(s)" if crf_workers else ""),
                 "choose a smaller tile_size or batch_size", param="tile_size", mentions=("tile_size", "batch_size"))


def _windows(images: np.ndarray, size: int) -> np.ndarray:
    """The windows of images read with CONTEXT_MARGIN pixels of context around them (the CRF's input)."""
    inside = slice(CONTEXT_MARGIN, CONTEXT_MARGIN + size)
    return np.ascontiguousarray(images[..., inside, inside])


def _start(*stages: _Stage) -> None:
    """Start threads with SIGINT and SIGTERM held back until they run: the CLI's handler raises in the
    main thread, and raised inside ``Thread.start`` it leaves a half-started thread that dies printing a
    traceback. Held-back signals arrive as soon as the mask is restored."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if hasattr(signal, "pthread_sigmask") else None
    try:
        for stage in stages:
            stage.start()
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _get(q: queue.Queue, producer: _Stage):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            _check(producer)
            if not producer.is_alive() and q.empty():
                return _DONE


def _check(stage: _Stage) -> None:
    if stage.error is not None:
        raise stage.error


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, Future):
            item.cancel()
