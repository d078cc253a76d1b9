"""Staging of outputs: siblings moved together, aliases refused, stale staging of dead runs removed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from geoproto.errors import GeoprotoError
from geoproto.output import StagedOutputs, remove_stale_staging, same_file


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_commit_moves_the_target_and_every_sibling_file(tmp_path):
    staged = StagedOutputs(overwrite=False)
    shapefile = staged.stage(str(tmp_path / "out.shp"), "--vector")
    raster = staged.stage(str(tmp_path / "out.tif"), "--output")
    assert os.path.dirname(shapefile) == os.path.dirname(raster) != str(tmp_path)
    assert os.path.basename(os.path.dirname(shapefile)).startswith(f".geoproto-{os.getpid()}-")
    for name in ("out.shp", "out.shx", "out.dbf", "out.prj", "out.cpg", "out.tif", "out.tif.aux.xml"):
        with open(os.path.join(os.path.dirname(shapefile), name), "w") as handle:
            handle.write(name)
    staged.commit()
    assert sorted(os.listdir(tmp_path)) == ["out.cpg", "out.dbf", "out.prj", "out.shp", "out.shx", "out.tif",
                                            "out.tif.aux.xml"]
    assert (tmp_path / "out.dbf").read_text() == "out.dbf"


def test_discard_leaves_nothing(tmp_path):
    staged = StagedOutputs(overwrite=False)
    with open(staged.stage(str(tmp_path / "a.tif")), "w") as handle:
        handle.write("half")
    staged.discard()
    assert os.listdir(tmp_path) == []


def test_commit_refuses_a_target_that_appeared_meanwhile_and_replaces_orphan_siblings(tmp_path):
    staged = StagedOutputs(overwrite=False)
    path = staged.stage(str(tmp_path / "out.shp"))
    for ext in ("shp", "dbf"):
        with open(os.path.join(os.path.dirname(path), f"out.{ext}"), "w") as handle:
            handle.write("new")
    (tmp_path / "out.dbf").write_text("left from a layer whose .shp was deleted")
    (tmp_path / "out.shp").write_text("someone else's")
    with pytest.raises(GeoprotoError, match="out.shp: appeared while running"):
        staged.commit()
    (tmp_path / "out.shp").unlink()
    staged.commit()
    assert (tmp_path / "out.shp").read_text() == "new" and (tmp_path / "out.dbf").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out.dbf", "out.shp"]


@pytest.mark.parametrize("alias", ["same", "relative", "symlink", "hardlink", "symlinked-folder"])
def test_an_output_aliasing_an_input_is_refused(tmp_path, alias, monkeypatch):
    image = tmp_path / "image.tif"
    image.write_bytes(b"orthophoto")
    monkeypatch.chdir(tmp_path)
    target = {"same": str(image), "relative": "./image.tif"}.get(alias, str(tmp_path / "alias.tif"))
    if alias == "symlink":
        os.symlink(image, target)
    elif alias == "hardlink":
        os.link(image, target)
    elif alias == "symlinked-folder":
        os.symlink(tmp_path, tmp_path / "link")
        target = str(tmp_path / "link" / "image.tif")
    staged = StagedOutputs(overwrite=True, inputs={"image": str(image), "--classes": None})
    with pytest.raises(GeoprotoError, match="is the input image .*never replaces an input"):
        staged.stage(target, "--output")
    staged.discard()
    assert image.read_bytes() == b"orthophoto" and not list(tmp_path.glob(".geoproto-*"))


def test_two_outputs_on_one_file_are_refused(tmp_path):
    staged = StagedOutputs(overwrite=True)
    staged.stage(str(tmp_path / "c.tif"), "--output")
    os.symlink(tmp_path / "c.tif", tmp_path / "p.tif")
    with pytest.raises(GeoprotoError, match="--probabilities .*p.tif: is also --output"):
        staged.stage(str(tmp_path / "p.tif"), "--probabilities")
    staged.discard()
    assert os.listdir(tmp_path) == ["p.tif"]


def test_same_file_of_paths_that_do_not_exist_or_are_virtual(tmp_path):
    assert same_file(str(tmp_path / "x.tif"), str(tmp_path / "." / "x.tif"))
    assert not same_file(str(tmp_path / "x.tif"), str(tmp_path / "y.tif"))
    assert not same_file(str(tmp_path / "x.tif"), "/vsizip/a.zip/x.tif")


def test_stale_staging_of_dead_processes_is_removed_and_live_ones_and_other_files_kept(tmp_path):
    dead = _dead_pid()
    for name in (f".geoproto-{dead}-x1abcdef", f".geoproto-{os.getppid()}-x2abcdef",
                 f".geoproto-{os.getpid()}-x3abcdef"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "c.tif").write_bytes(b"half")
    kept = [f".geoproto-{os.getppid()}-x2abcdef", f".geoproto-{os.getpid()}-x3abcdef",
            ".c.partial-notapid.tif", ".geoproto-config", f".notes.partial-{dead}.txt", f".c.partial-{dead}.png"]
    for name in (f".c.partial-{dead}.tif", *kept[2:]):
        (tmp_path / name).write_text("?")
    removed = remove_stale_staging(str(tmp_path / "c.tif"))
    assert sorted(removed) == sorted([f".geoproto-{dead}-x1abcdef", f".c.partial-{dead}.tif"])
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
