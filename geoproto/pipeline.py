"""The tile pipeline of ``segment``: stages that overlap, with bounded queues between them.

    reader thread -> [read queue] -> model + torch DenseCRF (main thread, batches)
                  -> [DenseCRF process pool, --crf-backend densecrf] -> [write queue] -> writer thread

Reading and writing hide behind the model. The torch CRF (the default) refines each batch right after
the model, on its device, with torch's threads on a CPU; pydensecrf2 (single-threaded C++) runs in
``workers`` processes. On a CPU without CRF workers the stages take turns in the main thread instead
(see ``overlap`` below). Every queue is bounded, so memory stays flat whatever the raster's size. Any
stage's error stops all of them and is raised in the caller; the process pool is shut down before
returning, so no worker outlives the run. Labels do not depend on ``workers`` or the batch size.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from . import crf as crf_module
from . import crf_torch
from .fewshot import class_scores
from .models.runtime import CONTEXT_MARGIN
from .output import ResultWriter
from .raster import RasterSource
from .tile_labels import TileResult, finish_tile, init_worker
from .tiling import Tile

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


def run_tiles(source: RasterSource, tiles: list[Tile], extract, prototypes: torch.Tensor, ids: np.ndarray,
              writer: ResultWriter, size: int, alpha: float, crf_params: crf_module.CRFParams | None,
              batch_size: int, workers: int, progress: bool,
              crf_backend: str = "torch", journal=None) -> tuple[np.ndarray, int, dict]:
    """Segment ``tiles`` and write them; returns (pixels per class id, 256 bins, CRF-rejected tiles, seconds
    spent in each stage: reading, model, CRF and labelling (summed over workers), writing). ``progress``: show
    a bar, or the tqdm bar to advance (one bar over several rasters). ``journal`` (resume.Journal) records
    each written window, for ``--resume``."""
    torch_crf = crf_params is not None and crf_backend == "torch"
    pool_crf = crf_params if crf_params is not None and crf_backend == "densecrf" else None
    stop = threading.Event()
    read_queue: queue.Queue = queue.Queue(maxsize=2 * batch_size + 2)
    write_queue: queue.Queue = queue.Queue(maxsize=2 * max(workers, 1) + batch_size)
    counts = np.zeros(256, np.int64)
    state = {"crf_rejected": 0}
    timings = {"read": 0.0, "model": 0.0, "crf": 0.0, "write": 0.0}
    keep_probabilities = writer.probabilities is not None
    need_probabilities = keep_probabilities or crf_params is not None

    def read_tiles():
        with source.dataset() as src:
            for tile in tiles:
                started = time.perf_counter()
                item = (tile, *source.read(src, tile, size, CONTEXT_MARGIN))
                timings["read"] += time.perf_counter() - started
                yield item

    def read_all():
        for item in read_tiles():
            if not _put(read_queue, item, stop):
                return
        _put(read_queue, _DONE, stop)

    def write_one(item) -> bool:
        result: TileResult = item.result() if isinstance(item, Future) else item()
        started = time.perf_counter()
        writer.write(result.tile, result.labels, result.probabilities)
        if journal is not None:
            journal.record(result.tile, result.labels, result.probabilities, result.crf_kept)
        timings["write"] += time.perf_counter() - started
        timings["crf"] += result.seconds
        rows, cols = result.tile.core_slices
        counts[:] += np.bincount(result.labels[rows, cols].ravel(), minlength=256)
        state["crf_rejected"] += not result.crf_kept
        bar.update(1)
        return True

    def write_all():
        while not stop.is_set():
            try:
                item = write_queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            write_one(item)

    pool = None
    threads = torch.get_num_threads()
    if pool_crf is not None and workers > 0:
        # Workers are started by the first submit, from this (main) thread: PR_SET_PDEATHSIG ties them
        # to the thread that started them.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(os.getpid(),))
        # The CRF workers need cores too: leave the model the cores they do not take (at least one).
        torch.set_num_threads(max(1, threads - workers) if threads > workers else max(1, threads // 2))
    reader, writer_thread = _Stage(read_all, "geoproto-reader"), _Stage(write_all, "geoproto-writer")
    inline = read_tiles()
    # Overlap needs something to overlap with: a GPU, or CRF workers. On a CPU without them the model
    # already uses every core, and reader and writer threads beside it only make it wait for the GIL
    # (measured on 2 cores: a reader thread slowed the model by 18% to hide ~6 ms of reading per
    # window), so the stages take turns.
    overlap = pool is not None or extract.device.type != "cpu"
    next_item = (lambda: _get(read_queue, reader)) if overlap else (lambda: next(inline, _DONE))
    emit = (lambda item: _put(write_queue, item, stop, writer_thread)) if overlap else write_one
    own_bar = not isinstance(progress, tqdm)
    bar = tqdm(total=len(tiles), unit="tile", file=sys.stderr, disable=not progress, desc="segment") \
        if own_bar else progress
    try:
        if overlap:
            reader.start()
            writer_thread.start()
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
            valid_rows = [i for i, (_, _, valid) in enumerate(batch) if valid.any()]
            scores, crf_kept = {}, {}
            if valid_rows:
                started = time.perf_counter()
                images = np.stack([batch[i][1] for i in valid_rows])
                features = extract(images, CONTEXT_MARGIN)
                with torch.inference_mode():
                    logits = class_scores(features, prototypes, (size, size), alpha).float()
                    # The argmax is cheap in torch and spares the writer thread (and the softmax).
                    probabilities = logits.softmax(1) if need_probabilities else logits.argmax(1).to(torch.uint8)
                stage = "model"
                if torch_crf:  # refined on the model's device, batch and all
                    stage, crf_started = "crf", time.perf_counter()
                    timings["model"] += crf_started - started
                    started = crf_started
                    sizes = [(batch[i][0].height, batch[i][0].width) for i in valid_rows]
                    probabilities, kept = crf_torch.refine_batch(
                        torch.from_numpy(_windows(images, size)).to(probabilities.device), probabilities, crf_params,
                        sizes)
                    if not keep_probabilities:
                        probabilities = probabilities.argmax(1).to(torch.uint8)
                    crf_kept = dict(zip(valid_rows, kept))
                scores = dict(zip(valid_rows, probabilities.cpu().numpy()))
                timings[stage] += time.perf_counter() - started
            for i, (tile, image, valid) in enumerate(batch):
                rgb = crf_module.to_rgb8(_windows(image, size)) if pool_crf is not None and i in scores else None
                args = (tile, rgb, scores.get(i), valid, ids, pool_crf, keep_probabilities, crf_kept.get(i, True))
                # Without a pool the labelling runs where the writing does (writer thread, or in turn).
                item = pool.submit(finish_tile, *args) if pool is not None and i in scores \
                    else functools.partial(finish_tile, *args)
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
        if own_bar:
            bar.close()
        torch.set_num_threads(threads)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for stage in (reader, writer_thread):  # both notice ``stop`` within 0.1 s of their current step
            if stage.ident is not None:
                stage.join(60)
    return counts, state["crf_rejected"], {k: round(v, 3) for k, v in timings.items()}


def _windows(images: np.ndarray, size: int) -> np.ndarray:
    """The windows of images read with CONTEXT_MARGIN pixels of context around them (the CRF's input)."""
    inside = slice(CONTEXT_MARGIN, CONTEXT_MARGIN + size)
    return np.ascontiguousarray(images[..., inside, inside])


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
