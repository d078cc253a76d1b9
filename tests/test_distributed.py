"""``segment`` on a Dask cluster: the same labels as the local run, also when a worker dies mid-run;
clear errors for a missing Dask, an unreachable scheduler and a raster the workers cannot read."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from distributed.diagnostics.plugin import SchedulerPlugin

from geoproto import distributed
from geoproto.cli import main
from geoproto.errors import GeoprotoError
from geoproto.segment import SegmentOptions, segment, segment_many

# 64 windows of 128 px over the 900 px chip: 16 tasks of 4 windows, several per worker.
TILE_SIZE = 128


def _options(**changes) -> SegmentOptions:
    return SegmentOptions(scoring="prototypes", tile_size=TILE_SIZE, overlap=16, crf=False, device="cpu", overviews=False,
                          progress=False, **changes)


@contextlib.contextmanager
def worker_threads():
    """Torch in this process on as many threads as each of 2 local workers (``distributed.check_workers``):
    the encoder's float sums are ordered by the thread count (on the demo chip, prototypes made on 2
    threads and windows labelled on 1 moved 1 pixel in 810,000), so runs compare on equal threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_reference(spacenet, tmp_path_factory):
    """The local run's class raster, class scores and summary."""
    folder = tmp_path_factory.mktemp("local")
    with worker_threads():
        summary = segment(str(spacenet / "sample_geotiff.tif"), str(spacenet / "support.gpkg"),
                          str(folder / "classes.tif"), _options(probabilities=str(folder / "scores.tif")))
    with rasterio.open(folder / "scores.tif") as src:
        return _read(folder / "classes.tif"), src.read(), summary


@pytest.fixture(scope="module")
def cluster_client():
    """A LocalCluster of 2 single-threaded workers, for runs given its scheduler's address."""
    memory = distributed.worker_memory_bytes(TILE_SIZE, 1, 3, False)
    with distributed.connect(local_workers=2, memory_limit=memory) as client:
        yield client


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.mark.slow
def test_local_cluster_labels_equal_the_local_run(spacenet, tmp_path, local_reference):
    reference, reference_scores, local_summary = local_reference
    output = tmp_path / "classes.tif"
    with worker_threads():
        summary = segment(str(spacenet / "sample_geotiff.tif"), str(spacenet / "support.gpkg"), str(output),
                          _options(dask_local=2, probabilities=str(tmp_path / "scores.tif")))
    assert summary["tiles"] == local_summary["tiles"] == 64
    np.testing.assert_array_equal(_read(output), reference)
    with rasterio.open(tmp_path / "scores.tif") as src:
        np.testing.assert_array_equal(src.read(), reference_scores)  # NaN (nodata) included
    assert summary["classes"] == local_summary["classes"]
    assert summary["stage_seconds"]["label"] > 0  # the windows were labelled on the workers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "classes.tif.aux.xml", "scores.tif"]


@pytest.mark.slow
def test_several_inputs_share_one_local_cluster(spacenet, tmp_path, local_reference, monkeypatch):
    """A LocalCluster takes seconds to start: a run over several rasters starts one, and each raster's labels
    are the local run's."""
    import shutil

    import distributed as dask_distributed

    started = []

    class CountedCluster(dask_distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            started.append(kwargs["n_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(dask_distributed, "LocalCluster", CountedCluster)
    for name in ("a.tif", "b.tif"):
        shutil.copy(spacenet / "sample_geotiff.tif", tmp_path / name)
    with worker_threads():
        summary = segment_many([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")], str(spacenet / "support.gpkg"),
                               str(tmp_path / "out"), _options(dask_local=2))
    assert started == [2]
    assert [run["tiles"] for run in summary["inputs"]] == [64, 64]
    for name in ("a.tif", "b.tif"):
        np.testing.assert_array_equal(_read(tmp_path / "out" / name), local_reference[0])


class KillAfterFirstResult(SchedulerPlugin):
    """A scheduler plugin (the LocalCluster's scheduler runs in this process): once the first block is
    done, SIGKILL a worker process that is running another block."""

    def __init__(self, cluster):
        self.cluster, self.killed, self.lost = cluster, None, []

    def transition(self, key, start, finish, *args, **kwargs):
        if self.killed or finish != "memory" or not str(key).startswith("geoproto-"):
            return
        for state in self.cluster.scheduler.workers.values():
            busy = [task.key for task in state.processing if str(task.key).startswith("geoproto-")]
            if busy:
                nanny = next(n for n in self.cluster.workers.values() if n.worker_address == state.address)
                os.kill(nanny.process.pid, signal.SIGKILL)
                self.killed, self.lost = state.address, busy
                return


@pytest.mark.slow
def test_a_worker_killed_mid_run_changes_nothing(spacenet, tmp_path, local_reference, cluster_client):
    plugin = KillAfterFirstResult(cluster_client.cluster)
    cluster_client.cluster.scheduler.add_plugin(plugin, name="kill-after-first-result")
    output = tmp_path / "classes.tif"
    try:
        with worker_threads():
            summary = segment(str(spacenet / "sample_geotiff.tif"), str(spacenet / "support.gpkg"), str(output),
                              _options(dask_scheduler=cluster_client.scheduler.address))
    finally:
        cluster_client.cluster.scheduler.remove_plugin("kill-after-first-result")
    assert plugin.killed is not None and plugin.lost  # a worker died with a block in hand
    assert plugin.killed not in cluster_client.scheduler_info()["workers"]
    np.testing.assert_array_equal(_read(output), local_reference[0])
    assert summary["tiles"] == 64


@pytest.mark.slow
def test_workers_that_cannot_read_the_raster_are_named(cluster_client, tmp_path):
    missing = str(tmp_path / "only-on-my-laptop.tif")
    with pytest.raises(GeoprotoError, match=r"only-on-my-laptop\.tif: worker tcp://\S+ on \S+ cannot read it "
                                            r"\(.*no such file\); .*storage all workers share, at the same path"):
        distributed.check_workers(cluster_client, missing)


@pytest.mark.slow
def test_workers_with_too_little_memory_are_refused(spacenet, tmp_path, cluster_client):
    with pytest.raises(GeoprotoError, match=r"worker tcp://\S+ may hold [\d.]+ GiB; a task of 64 windows of "
                                            r"128 px needs about [\d.]+ GiB"):
        segment(str(spacenet / "sample_geotiff.tif"), str(spacenet / "support.gpkg"), str(tmp_path / "c.tif"),
                _options(batch_size=64, dask_scheduler=cluster_client.scheduler.address))
    assert not list(tmp_path.iterdir())


def test_dask_missing_says_how_to_install_it(spacenet, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # ``import distributed`` raises ImportError
    with pytest.raises(GeoprotoError, match=r"needs Dask distributed: pip install 'geoproto\[dask\]'"):
        segment(str(spacenet / "sample_geotiff.tif"), str(spacenet / "support.gpkg"), str(tmp_path / "c.tif"),
                _options(dask_local=2))
    assert not list(tmp_path.iterdir())


def _unused_address() -> str:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def test_an_unreachable_scheduler_is_named(monkeypatch):
    address = _unused_address()
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(GeoprotoError, match=rf"dask_scheduler: no Dask scheduler answered at {address} within 1 s"):
        with distributed.connect(scheduler=address):
            pass


def test_an_unreachable_scheduler_is_refused_before_the_support_is_read(spacenet, tmp_path, monkeypatch,
                                                                         support_reads):
    """In seconds, naming the address, rather than after the support is encoded and Dask's 30 s of retries."""
    address = _unused_address()
    monkeypatch.setattr(distributed, "PROBE_TIMEOUT_S", 2)
    started = time.perf_counter()
    with pytest.raises(GeoprotoError, match=rf"^dask_scheduler: no Dask scheduler answered at {address} "
                                            rf"\(.*Connection refused\)$") as caught:
        segment(str(spacenet / "sample_geotiff.tif"), str(spacenet / "support.gpkg"), str(tmp_path / "c.tif"),
                _options(dask_scheduler=address))
    assert time.perf_counter() - started < 10
    assert caught.value.param == "dask_scheduler" and support_reads == []
    assert not list(tmp_path.iterdir())
    result = CliRunner().invoke(main, ["segment", str(spacenet / "sample_geotiff.tif"), "-s",
                                       str(spacenet / "support.gpkg"), "-o", str(tmp_path / "c.tif"),
                                       "--dask-scheduler", address])
    assert result.exit_code == 1
    assert f"Error: --dask-scheduler: no Dask scheduler answered at {address} (" in result.stderr


def test_a_scheduler_that_does_not_answer_is_waited_for_briefly(monkeypatch):
    """A host that drops the connection attempt (a firewall, a machine gone) is given PROBE_TIMEOUT_S."""
    waited = []

    def silent(address, timeout):
        waited.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(distributed.socket, "create_connection", silent)
    with pytest.raises(GeoprotoError, match=r"^dask_scheduler: no Dask scheduler answered at tcp://10.0.0.5:8786 "
                                            r"within 5 s \(timed out\)$"):
        distributed.probe_scheduler("tcp://10.0.0.5:8786")
    assert waited == [distributed.PROBE_TIMEOUT_S] == [5]


@pytest.mark.parametrize("address, reason", [
    ("localhost", "missing port number in address 'localhost'"),
    ("tcp://10.0.0.5", "missing port number in address '10.0.0.5'"),
    ("tcp://10.0.0.5:abc", "invalid literal for int"),
    ("http://10.0.0.5:8786", "unknown address scheme 'http'"),
])
def test_a_malformed_scheduler_address_is_refused_before_any_work(address, reason):
    """Said at once, naming the option, not as an unexpected ValueError once the support was encoded."""
    with pytest.raises(GeoprotoError, match=rf"^dask_scheduler: '{address}' is not a Dask scheduler address "
                                            rf"\({reason}.*\); give tcp://HOST:PORT \(Dask's scheduler listens on "
                                            rf"port 8786 by default\)$"):
        SegmentOptions(dask_scheduler=address)
    assert SegmentOptions(dask_scheduler="tcp://10.0.0.5:8786").dask_scheduler == "tcp://10.0.0.5:8786"


def test_dask_is_imported_only_for_a_cluster():
    code = ("import sys, geoproto.cli, geoproto.segment, geoproto.distributed; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_an_interrupted_cluster_run_resumes_to_the_local_labels(spacenet, tmp_path, local_reference, cluster_client,
                                                               monkeypatch):
    """--resume on a cluster: the client journals each window it writes; a run that stops after 20
    windows is continued with only the 44 others sent to the workers."""
    from geoproto import resume

    record, recorded = resume.Journal.record, []

    def stop_after_twenty(journal, *args):
        record(journal, *args)
        recorded.append(1)
        if len(recorded) == 20:
            raise KeyboardInterrupt

    output = tmp_path / "classes.tif"
    options = _options(dask_scheduler=cluster_client.scheduler.address, resume=True)
    monkeypatch.setattr(resume.Journal, "record", stop_after_twenty)
    with worker_threads(), pytest.raises(KeyboardInterrupt):
        segment(str(spacenet / "sample_geotiff.tif"), str(spacenet / "support.gpkg"), str(output), options)
    monkeypatch.setattr(resume.Journal, "record", record)
    assert not output.exists()
    with worker_threads():
        summary = segment(str(spacenet / "sample_geotiff.tif"), str(spacenet / "support.gpkg"), str(output), options)
    assert (summary["tiles"], summary["tiles_resumed"]) == (64, 20)
    np.testing.assert_array_equal(_read(output), local_reference[0])


@pytest.mark.slow
def test_local_workers_of_a_script_without_a_main_guard_say_why_they_failed(tmp_path):
    """Each local worker process imports the calling script again (spawn): a script without
    ``if __name__ == "__main__":`` re-runs its segment call there, and the workers never start. Said with
    the fix, not as Dask's bare "Nanny failed to start."."""
    import synthetic

    image, support = synthetic.scene(tmp_path)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from geoproto.segment import SegmentOptions, segment\n"
        f"segment({str(image)!r}, {str(support)!r}, {str(tmp_path / 'c.tif')!r}, SegmentOptions(\n"
        "    encoder='imagenet', scoring='prototypes', crf=False, progress=False, dask_local=1))\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith(
        "geoproto.errors.GeoprotoError: dask_local: the 1 local Dask worker process(es) failed to start ("), \
        result.stderr[-3000:]
    assert last.endswith('keep its top-level code under `if __name__ == "__main__":`: each worker starts by '
                         "importing the script again (multiprocessing's spawn)")
    assert not (tmp_path / "c.tif").exists()


def test_a_classifier_recipe_rebuilds_its_orientations():
    """A worker's classifier averages its features over the run's orientations (and under its scales), and its
    token tells it from the same prototypes matched with plain features."""
    from geoproto.classes import ClassInfo
    from geoproto.classifier import Classifier
    from geoproto.heads import at_scales, oriented

    encoder = distributed.EncoderRecipe("imagenet", "efficientnet-lite0")
    extract = encoder.build(torch.device("cpu"))
    prototypes = torch.randn(2, extract.out_channels)
    recipes = {n: distributed.ClassifierRecipe.of(
        Classifier(prototypes, ClassInfo([1, 2], ["a", "b"]), 20.0, at_scales(oriented(extract, n), (1, 2))),
        encoder, "cpu") for n in (1, 8)}
    assert recipes[8].orientations == 8 and recipes[1].orientations == 1 and recipes[8].scales == (1, 2)
    assert recipes[8].token != recipes[1].token
    rebuilt = recipes[8].build()
    assert rebuilt.orientations == 8 and rebuilt.scales == (1, 2)
