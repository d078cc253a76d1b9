"""``segment`` on a Dask cluster: blocks of windows are tasks, one writer on the client commits them.

Each task names a block of consecutive windows; the worker reads them from the raster itself (so the
raster must be readable at the same path on every worker: shared storage), labels them with the same
function as the local pipeline (``pipeline.label_windows``: model, CRF, nodata) and returns the labels.
A worker builds the encoder and loads the prototypes once (``_worker_classifier``) and keeps them for
every later task of the run. The client writes results in window order through the one
``ResultWriter`` of the run, submitting at most ``in_flight`` blocks ahead of the next one to write, so
its memory stays flat whatever the raster's size, and the output is bit-identical to the local run's
with as many torch threads per window (float sums in the encoder are ordered by the thread count).
Tasks of a worker that dies are run again elsewhere by the scheduler (up to its ``allowed-failures``).

Dask is an optional extra (``geoproto[dask]``): it is imported here, inside functions, and only when a
cluster is asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import __version__
from .classes import ClassInfo
from .classifier import Classifier
from .errors import GeoprotoError
from .models.runtime import CONTEXT_MARGIN, FeatureExtractor, resolve_device
from .pipeline import (QUEUED_BYTES_PER_PIXEL, PipelineResult, RefineSettings, ResultRecorder, Window, label_windows,
                       model_memory_bytes, window_pixels)
from .raster import RasterSource, absolute_path
from .tile_labels import TileResult
from .tiling import Tile

INSTALL_HINT = "pip install 'geoproto[dask]'"
CONNECT_TIMEOUT_S = 30
# How long ``segment`` waits, before any support work, for the scheduler's port to accept a connection (an
# address nobody listens at is refused at once; one that drops packets takes this long).
PROBE_TIMEOUT_S = 5
# Dask address schemes of a host and a port (inproc and ucx name their endpoints otherwise).
PORTED_SCHEMES = ("tcp", "tls", "ws", "wss")
# A worker process with torch, the encoder and Dask's own machinery, before any window (measured
# ~0.5 GB on CPU with the default encoder: benchmarks/many_rasters.py prints each worker's peak).
WORKER_RUNTIME_BYTES = 1 << 30
MIN_BLOCK_WINDOWS = 4


def import_distributed():
    """Dask's ``distributed``, or a GeoprotoError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise GeoprotoError(f"running on a Dask cluster needs Dask distributed: {INSTALL_HINT}") from None
    return distributed


def check_scheduler_address(address: str) -> None:
    """Refuses ``address`` unless Dask can connect to it as written (``SegmentOptions`` checks it before any
    work): a malformed one ("localhost", no port; "http://...") otherwise surfaced after the support was
    encoded, as an unexpected ValueError, with the half-made Client's complaints at exit."""
    import_distributed()
    from distributed.comm import get_address_host_port, parse_address
    from distributed.comm.registry import get_backend

    try:
        scheme, _ = parse_address(address)
        get_backend(scheme)
        if scheme in PORTED_SCHEMES:
            get_address_host_port(address)
    except (ValueError, TypeError) as exc:
        raise GeoprotoError(f"{address!r} is not a Dask scheduler address ({exc}); give tcp://HOST:PORT "
                            f"(Dask's scheduler listens on port 8786 by default)", param="dask_scheduler") from None


def probe_scheduler(address: str) -> None:
    """Refuses ``address`` (checked by ``check_scheduler_address``) unless something listens there: a run is
    told within PROBE_TIMEOUT_S, before its support is read and encoded, rather than after them by the
    Client's CONNECT_TIMEOUT_S of retries. Only the port is tried; ``connect`` then greets the scheduler."""
    from distributed.comm import get_address_host_port, parse_address

    if parse_address(address)[0] not in PORTED_SCHEMES:  # no port to try
        return
    try:
        socket.create_connection(get_address_host_port(address), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:  # refused, unreachable, timed out, a host name that does not resolve
        raise _unanswered(address, PROBE_TIMEOUT_S if isinstance(exc, TimeoutError) else None, exc) from None


def _unanswered(address: str, waited: float | None, exc: Exception) -> GeoprotoError:
    """The error for a scheduler that did not answer, and how long it was waited for (None: refused at once)."""
    within = f" within {waited:g} s" if waited is not None else ""
    return GeoprotoError(f"no Dask scheduler answered at {address}{within} ({exc})", param="dask_scheduler")


@dataclass(frozen=True)
class EncoderRecipe:
    """How a worker builds the run's encoder from the shipped weights or a checkpoint file, rather than
    receiving the module (``models.select_encoder``'s arguments)."""

    name: str | None  # a shipped encoder; None or auto beside a checkpoint or weights
    backbone: str
    checkpoint: str | None = None
    init_weights: str | None = None

    @classmethod
    def of(cls, options, info: dict) -> "EncoderRecipe":
        """The recipe of the encoder ``segment`` chose: ``options`` (SegmentOptions) and its description
        (the shipped encoder ``--encoder auto`` picked is in ``info["name"]``)."""
        from .models.shipped import is_explicit

        name = options.encoder if is_explicit(options.backbone, options.checkpoint, options.init_weights) \
            else info["name"]
        return cls(name, options.backbone, *(absolute_path(path) if path else None
                                              for path in (options.checkpoint, options.init_weights)))

    def build(self, device: torch.device) -> FeatureExtractor:
        from .models import select_encoder

        encoder, _ = select_encoder(self.name, self.backbone, self.checkpoint, self.init_weights)
        return FeatureExtractor(encoder, device)

    def files(self) -> list[str]:
        return [path for path in (self.checkpoint, self.init_weights) if path]


@dataclass(frozen=True)
class ClassifierRecipe:
    """What a worker needs to rebuild the run's classifier: prototypes, classes, alpha, the encoder, and
    how features are scored (a fitted head's weights, 1x or 1x + 2x features, the orientations averaged)."""

    prototypes: np.ndarray
    classes: ClassInfo
    alpha: float
    encoder: EncoderRecipe
    device: str  # "auto" picks CUDA on a GPU worker
    head_weight: np.ndarray | None = None  # heads.LinearHead's, or None for eq. 2
    scales: tuple[int, ...] = (1,)
    orientations: int = 1

    @classmethod
    def of(cls, classifier: Classifier, encoder: EncoderRecipe, device: str) -> "ClassifierRecipe":
        """The recipe of ``classifier``, whose features come from the encoder of ``encoder``."""
        head = None if classifier.head is None else classifier.head.weight.cpu().numpy()
        return cls(classifier.prototypes.cpu().numpy(), classifier.classes, classifier.alpha, encoder, device, head,
                   classifier.scales, classifier.orientations)

    @property
    def token(self) -> str:
        """Names this classifier, so a worker's cached one is reused only for the same run's model."""
        digest = hashlib.sha256(np.ascontiguousarray(self.prototypes, np.float32).tobytes())
        if self.head_weight is not None:
            digest.update(np.ascontiguousarray(self.head_weight, np.float32).tobytes())
        digest.update(repr((self.classes.ids, self.alpha, self.encoder, self.device, self.scales,
                            self.orientations)).encode())
        return digest.hexdigest()

    def build(self) -> Classifier:
        from .heads import LinearHead, feature_extractor

        extract = feature_extractor(self.encoder.build(resolve_device(self.device)), self.orientations, self.scales)
        head = None if self.head_weight is None else LinearHead(torch.from_numpy(self.head_weight))
        return Classifier(torch.from_numpy(self.prototypes).to(extract.device), self.classes, self.alpha, extract,
                          head=head)


@dataclass(frozen=True)
class BlockJob:
    """Everything a task needs besides its tiles (the same for every task of a run)."""

    source: object  # RasterSource or aoi.ClippedSource, with an absolute path
    classifier: ClassifierRecipe
    size: int
    refine: RefineSettings | None
    keep_probabilities: bool
    batch_size: int
    torch_threads: dict[str, int]  # host name -> torch threads per task of a worker there


@dataclass
class BlockResult:
    results: list[TileResult]
    seconds: dict[str, float]  # build (the encoder, first task of a worker only), read, label


_cache: dict[str, Classifier] = {}
_cache_lock = threading.Lock()


def _worker_classifier(recipe: ClassifierRecipe) -> tuple[Classifier, float]:
    """The worker's classifier for ``recipe``, built on its first task; (classifier, seconds building it).

    Only the current run's classifier is kept: a long-lived worker serving many runs holds one encoder.
    """
    with _cache_lock:
        token = recipe.token
        if token in _cache:
            return _cache[token], 0.0
        started = time.perf_counter()
        classifier = recipe.build()
        _cache.clear()
        _cache[token] = classifier
        return classifier, time.perf_counter() - started


def segment_block(job: BlockJob, tiles: list[Tile]) -> BlockResult:
    """A task: read ``tiles`` on the worker, label them (``pipeline.label_windows``), return the results."""
    from distributed import get_worker

    worker = get_worker()
    host = socket.gethostname()
    torch.set_num_threads(job.torch_threads.get(host, torch.get_num_threads()))
    classifier, build_seconds = _worker_classifier(job.classifier)
    started = time.perf_counter()
    raster = _raster(job.source)
    try:
        raster.dataset  # opened here, so that a missing file is said as such
    except GeoprotoError as exc:
        raise GeoprotoError(f"worker {worker.address} on {host}: {exc}; every worker reads the "
                            f"raster itself, so it must be on storage they share, at the same path") from None
    with raster:  # this task's copy of the source: its handle is closed with the task
        windows = [Window(tile, *job.source.read(tile, job.size, CONTEXT_MARGIN)) for tile in tiles]
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    results = []
    for start in range(0, len(windows), job.batch_size):
        results += label_windows(classifier, windows[start:start + job.batch_size], job.size, job.refine,
                                 job.keep_probabilities)
    return BlockResult(results, {"build": build_seconds, "read": read_seconds,
                                 "label": time.perf_counter() - started})


def windows_per_task(batch_size: int) -> int:
    """Windows per task: enough that the scheduler's few milliseconds per task stay small next to the
    model's time (``MIN_BLOCK_WINDOWS``), and at least a batch, so that a GPU worker encodes full batches."""
    return max(MIN_BLOCK_WINDOWS, batch_size)


def worker_memory_bytes(size: int, batch_size: int, classes: int, keep_probabilities: bool) -> int:
    """The memory a worker needs, bounded as the local pipeline's: its runtime, one batch in the model,
    and one task's windows read and results held."""
    result_bytes = 1 + (4 * classes if keep_probabilities else 0)
    held = windows_per_task(batch_size) * window_pixels(size) * (QUEUED_BYTES_PER_PIXEL + result_bytes)
    return WORKER_RUNTIME_BYTES + model_memory_bytes(size, batch_size, classes) + held


def _worker_facts(raster: str, files: list[str]) -> dict:
    """Run on every worker before any task: its host, cores, geoproto version, and the inputs it cannot
    read (a worker reads the raster and the encoder's weight files itself)."""
    from .raster import open_raster

    unreadable = {path: "no such file or not readable" for path in files if not os.access(path, os.R_OK)}
    try:
        open_raster(raster).close()
    except GeoprotoError as exc:
        unreadable[raster] = str(exc)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"host": socket.gethostname(), "cores": cores, "version": __version__, "unreadable": unreadable}


def check_workers(client, raster: str, files: list[str] = ()) -> dict[str, int]:
    """Refuse workers that cannot run the job (another geoproto version, inputs they cannot read);
    returns the torch threads per task on each host: its cores shared among the task threads of all
    workers there (a worker restarted after a crash has a new address, but the same host)."""
    try:
        facts = client.run(_worker_facts, raster, list(files))
    except (ImportError, AttributeError) as exc:  # geoproto missing (or too old) on a worker
        raise GeoprotoError(f"the Dask workers cannot run geoproto ({exc}); install geoproto {__version__} on "
                            f"every worker") from None
    versions = {address: fact["version"] for address, fact in facts.items() if fact["version"] != __version__}
    if versions:
        address, version = next(iter(versions.items()))
        raise GeoprotoError(f"worker {address} runs geoproto {version}, this client {__version__}; install the "
                            f"same version on every worker")
    for address, fact in facts.items():
        for path, reason in fact["unreadable"].items():
            raise GeoprotoError(f"{path}: worker {address} on {fact['host']} cannot read it ({reason}); every "
                                f"worker reads its inputs itself, so they must be on storage all workers share, "
                                f"at the same path")
    nthreads = {address: info["nthreads"] for address, info in client.scheduler_info()["workers"].items()}
    per_host: dict[str, int] = {}
    for address, fact in facts.items():
        per_host[fact["host"]] = per_host.get(fact["host"], 0) + nthreads.get(address, 1)
    return {fact["host"]: max(1, fact["cores"] // per_host[fact["host"]]) for fact in facts.values()}


@contextlib.contextmanager
def connect(scheduler: str | None = None, local_workers: int | None = None, memory_limit: int | None = None):
    """A Dask client of the scheduler at ``scheduler``, or of a LocalCluster of ``local_workers``
    single-threaded worker processes (torch gives each its share of the cores) holding at most
    ``memory_limit`` bytes each. A LocalCluster is shut down on leaving, error or interrupt included."""
    distributed = import_distributed()
    import dask

    if (scheduler is None) == (local_workers is None):
        raise GeoprotoError("give either a Dask scheduler address or a number of local workers")
    with contextlib.ExitStack() as stack:
        # Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers, which turns off glibc's adaptive mmap
        # threshold: every large tensor is then mapped and unmapped afresh, and the encoder ran 3x slower
        # (None unsets it).
        stack.enter_context(dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}))
        if scheduler is not None:
            try:
                client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise _unanswered(scheduler, CONNECT_TIMEOUT_S, exc) from None
        else:
            try:
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=local_workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                    dashboard_address=None))
            except RuntimeError as exc:  # Dask's "Nanny failed to start.", the cause three tracebacks down
                raise GeoprotoError(
                    f"the {local_workers} local Dask worker process(es) failed to start ({exc}); from a Python "
                    f"script, keep its top-level code under `if __name__ == \"__main__\":`: each worker starts "
                    f"by importing the script again (multiprocessing's spawn)", param="dask_local") from exc
            client = distributed.Client(cluster, set_as_default=False)
        stack.enter_context(client)
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise GeoprotoError(f"the Dask scheduler at {scheduler} has no workers (none joined within "
                                f"{CONNECT_TIMEOUT_S} s)", param="dask_scheduler") from None
        yield client


@contextlib.contextmanager
def cluster(scheduler: str | None, local_workers: int | None, size: int, batch_size: int, classes: int,
            keep_probabilities: bool):
    """The client of a ``segment`` run, for all its inputs (a LocalCluster takes seconds to start): the
    Dask scheduler at ``scheduler``, or a LocalCluster of ``local_workers`` processes, each bounded to the
    memory its tasks need."""
    memory = worker_memory_bytes(size, batch_size, classes, keep_probabilities)
    with connect(scheduler, local_workers, memory if local_workers else None) as client:
        yield client


def run_on_cluster(client, source, recipe: ClassifierRecipe, tiles: list[Tile], writer, size: int,
                   refine: RefineSettings | None, batch_size: int, progress, journal=None) -> PipelineResult:
    """Segment ``tiles`` on the cluster of ``client`` and write them with ``writer`` (in window order).
    ``progress`` and ``journal`` as ``pipeline.WindowPipeline``'s (a shared bar; ``--resume``'s record)."""
    distributed = import_distributed()
    keep_probabilities = writer.probabilities is not None
    block_windows = windows_per_task(batch_size)
    workers = client.scheduler_info()["workers"]
    needed = worker_memory_bytes(size, batch_size, len(recipe.classes.ids), keep_probabilities)
    short = {address: info["memory_limit"] for address, info in workers.items()
             if info.get("memory_limit") and info["memory_limit"] < needed}
    if short:
        address, limit = next(iter(short.items()))
        raise GeoprotoError(f"worker {address} may hold {limit / 2**30:.2f} GiB; a task of {block_windows} "
                            f"windows of {size} px needs about {needed / 2**30:.2f} GiB: start workers with "
                            f"more memory or choose a smaller tile size or batch size")
    job_source = _with_absolute_path(source)
    threads = check_workers(client, _raster(job_source).path, recipe.encoder.files())
    job = BlockJob(job_source, recipe, size, refine, keep_probabilities, batch_size, threads)
    blocks = [tiles[start:start + block_windows] for start in range(0, len(tiles), block_windows)]
    # Two tasks per worker thread keep every worker busy while its last result travels back.
    threads_total = sum(info["nthreads"] for info in workers.values())
    in_flight = max(2, 2 * threads_total)
    timings = {"build": 0.0, "read": 0.0, "label": 0.0, "write": 0.0}
    pending: dict[int, object] = {}  # block index -> future, submitted and not yet written
    done: dict[int, BlockResult] = {}
    queue = distributed.as_completed(loop=client.loop)
    recorder = ResultRecorder(writer, journal, progress, len(tiles))
    next_submit = next_write = 0
    run = uuid.uuid4().hex[:12]

    def submit_ahead():
        nonlocal next_submit
        # Never further than ``in_flight`` blocks past the next one to write: results waiting for an
        # earlier, slower block are bounded too.
        while next_submit < len(blocks) and next_submit < next_write + in_flight:
            future = client.submit(segment_block, job, blocks[next_submit], key=f"geoproto-{run}-{next_submit}")
            pending[next_submit] = future
            queue.add(future)
            next_submit += 1

    started = time.perf_counter()
    try:
        submit_ahead()
        for future in queue:
            index = int(future.key.rsplit("-", 1)[1])
            try:
                done[index] = future.result()
            except distributed.KilledWorker as exc:
                raise GeoprotoError(f"block {index} of {len(blocks)} killed Dask workers repeatedly ({exc}); "
                                    f"out of memory? each worker needs about {needed / 2**30:.2f} GiB") from None
            del pending[index]
            future.release()
            while next_write in done:
                result = done.pop(next_write)
                recorder.record(result.results)
                for stage, seconds in result.seconds.items():
                    timings[stage] += seconds
                next_write += 1
            submit_ahead()
    finally:
        recorder.close()
        if pending:
            client.cancel(list(pending.values()))
    # Read, label (model and CRF) and encoder building are summed over the workers; their idle time
    # during the run (wall) is the cluster's overhead: scheduling, transfers and the run's tail.
    busy = timings["build"] + timings["read"] + timings["label"]
    timings["write"] = recorder.write_seconds
    timings["wall"] = time.perf_counter() - started
    timings["worker_idle"] = max(0.0, timings["wall"] * threads_total - busy)
    return PipelineResult(recorder.counts, recorder.crf_rejected, {k: round(v, 3) for k, v in timings.items()})


def _with_absolute_path(source):
    if hasattr(source, "source"):  # aoi.ClippedSource
        return replace(source, source=_with_absolute_path(source.source))
    return replace(source, path=absolute_path(source.path))


def _raster(source) -> RasterSource:
    """The RasterSource of ``source`` (itself, or the one an ``aoi.ClippedSource`` clips)."""
    return _raster(source.source) if hasattr(source, "source") else source
