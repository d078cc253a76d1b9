"""The resume journal: records survive a torn write, refuse another job, and lock out a second run."""

import os

import numpy as np
import pytest
import torch

from geoproto import resume
from geoproto.errors import GeoprotoError
from geoproto.output import remove_stale_staging
from geoproto.resume import Journal, fingerprint, remove_journal, resume_folder
from geoproto.tiling import tile_grid

TILES = tile_grid(100, 90, 48, 8)
JOB = fingerprint(options={"tile_size": 48, "overlap": 8})


class Collect:
    """A stand-in for output.ResultWriter: keeps what it is given."""

    def __init__(self):
        self.written = []

    def write(self, tile, labels, probabilities):
        rows, cols = tile.core_slices
        self.written.append((tile, labels[rows, cols].copy(),
                             None if probabilities is None else probabilities[:, rows, cols].copy()))


def window_result(tile, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (tile.height, tile.width), dtype=np.uint8)
    probabilities = rng.random((3, tile.height, tile.width), dtype=np.float32)
    return labels, probabilities


def test_records_are_replayed_and_a_torn_tail_is_cut_off(tmp_path):
    output = str(tmp_path / "c.tif")
    journal = Journal(output, JOB, TILES, 3, probabilities=True)
    for i in range(3):
        journal.record(TILES[i], *window_result(TILES[i], i), crf_kept=i != 1)
    journal.close()
    windows = os.path.join(resume_folder(output), "windows.bin")
    with open(windows, "r+b") as file:  # the third record's payload cut short, as by kill -9 mid-write
        file.truncate(os.path.getsize(windows) - 5)

    journal = Journal(output, JOB, TILES, 3, probabilities=True)
    writer = Collect()
    counts, rejected = journal.replay(writer)
    assert [tile for tile, _, _ in writer.written] == TILES[:2]
    for i, (tile, labels, probabilities) in enumerate(writer.written):
        expected_labels, expected_probabilities = window_result(tile, i)
        rows, cols = tile.core_slices
        np.testing.assert_array_equal(labels, expected_labels[rows, cols])
        np.testing.assert_array_equal(probabilities, expected_probabilities[:, rows, cols])
    assert rejected == 1
    assert counts.sum() == sum(labels.size for _, labels, _ in writer.written)
    assert journal.pending() == TILES[2:]
    journal.record(TILES[2], *window_result(TILES[2], 2))  # appended where the torn record was
    journal.close()
    assert Journal(output, JOB, TILES, 3, probabilities=True).pending() == TILES[3:]


def test_another_job_is_refused_naming_what_changed(tmp_path):
    output = str(tmp_path / "c.tif")
    Journal(output, JOB, TILES, 3, probabilities=False).close()
    other = fingerprint(options={"tile_size": 64, "overlap": 8})
    with pytest.raises(GeoprotoError, match=r"cannot resume: .*\(options\.tile_size changed\).*delete .*"
                                            r"\.geoproto-resume-"):
        Journal(output, other, TILES, 3, probabilities=False)


def test_a_second_run_on_the_same_journal_is_refused(tmp_path):
    output = str(tmp_path / "c.tif")
    first = Journal(output, JOB, TILES, 3, probabilities=False)
    with pytest.raises(GeoprotoError, match="resume: .* another run is writing it with resume now"):
        Journal(output, JOB, TILES, 3, probabilities=False)
    remove_journal(output)  # what a run committing the same output does: the journal in use is kept
    assert os.path.isdir(resume_folder(output))
    first.close()
    Journal(output, JOB, TILES, 3, probabilities=False).close()  # released


def test_prototypes_of_the_interrupted_run_are_kept(tmp_path):
    output = str(tmp_path / "c.tif")
    first = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    journal = Journal(output, JOB, TILES, 2, probabilities=False)
    assert journal.keep_prototypes(first) is first
    journal.close()
    journal = Journal(output, JOB, TILES, 2, probabilities=False)
    assert torch.equal(journal.keep_prototypes(first + 1e-6), first)  # recomputed ones drifting: the stored win
    journal.close()


def test_stale_staging_clean_up_keeps_the_journal(tmp_path):
    output = str(tmp_path / "c.tif")
    Journal(output, JOB, TILES, 3, probabilities=False).close()
    assert remove_stale_staging(output) == []
    assert os.path.isdir(resume_folder(output))


def test_a_crash_in_the_second_of_two_rasters_resumes_to_the_uninterrupted_outputs(tmp_path, monkeypatch):
    """A run over two rasters that crashes midway commits nothing; rerun with resume, it encodes only the
    windows not yet journalled and writes what an uninterrupted run writes."""
    import rasterio
    from rasterio.transform import from_origin
    from synthetic import ORIGIN, PIXEL, SIDE, two_halves, write_raster, write_support

    from geoproto import resume
    from geoproto.segment import SegmentOptions, segment_many

    images = [str(write_raster(tmp_path / "in" / "one.tif", two_halves())),
              str(write_raster(tmp_path / "in" / "two.tif", two_halves(seed=1),
                               transform=from_origin(ORIGIN[0] + SIDE * PIXEL, ORIGIN[1], PIXEL, PIXEL)))]
    support = str(write_support(tmp_path / "support.gpkg"))
    options = SegmentOptions(scoring="prototypes", tile_size=64, overlap=8, crf=False, progress=False, resume=True, probabilities="")
    expected = segment_many(images, support, str(tmp_path / "expected"), options)

    record, recorded = resume.Journal.record, []

    def crash_after_five(journal, *args):
        record(journal, *args)
        recorded.append(1)
        if len(recorded) == 5:
            raise RuntimeError("the machine went away")

    monkeypatch.setattr(resume.Journal, "record", crash_after_five)
    with pytest.raises(RuntimeError, match="the machine went away"):
        segment_many(images, support, str(tmp_path / "out"), options)
    monkeypatch.setattr(resume.Journal, "record", record)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(  # journals only: nothing committed
        os.path.basename(resume_folder(str(tmp_path / "out" / name))) for name in ("one.tif", "two.tif"))

    summary = segment_many(images, support, str(tmp_path / "out"), options)
    assert [item["tiles_resumed"] for item in summary["inputs"]] == [4, 1]
    assert summary["totals"]["tiles"] == expected["totals"]["tiles"] == 8
    for name in ("one.tif", "one_probabilities.tif", "two.tif", "two_probabilities.tif"):
        with rasterio.open(tmp_path / "expected" / name) as first, rasterio.open(tmp_path / "out" / name) as second:
            assert repr(first.profile) == repr(second.profile) and first.tags() == second.tags()
            np.testing.assert_array_equal(first.read(), second.read())
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())  # journals removed


def test_a_journal_of_an_earlier_labels_revision_is_refused(tmp_path, monkeypatch):
    """A tree that labels the same job differently under the same version (its support windows, say) must
    not replay an older tree's windows: the revision is part of every fingerprint."""
    output = str(tmp_path / "c.tif")
    monkeypatch.setattr(resume, "LABELS_REVISION", resume.LABELS_REVISION - 1)
    Journal(output, fingerprint(options={"tile_size": 48, "overlap": 8}), TILES, 3, probabilities=False).close()
    monkeypatch.undo()
    with pytest.raises(GeoprotoError, match=r"cannot resume: .*\(labels_revision changed\)"):
        Journal(output, JOB, TILES, 3, probabilities=False)


def test_the_orientations_features_are_averaged_over_are_part_of_the_job():
    """Windows labelled from features of one window and of its four flips differ: a journal of one is not
    resumed by the other."""
    from geoproto.segment import SegmentOptions
    from geoproto.tiling import tile_grid

    tiles = tile_grid(100, 100, 64, 8)
    plain = resume.segment_job("a.tif", SegmentOptions(), "cpu", tiles)
    turned = resume.segment_job("a.tif", SegmentOptions(orientations=4), "cpu", tiles)
    assert plain["options"]["orientations"] == 1 and turned["options"]["orientations"] == 4
    assert resume._differences(plain, turned) == ["options.orientations"]
