"""The shared CLI plumbing: a library error's parameter is shown as the flag the user typed."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from geoproto.cli import main
from geoproto.cli.options import handle_errors, orientations_option
from geoproto.errors import GeoprotoError


def _failing(param):
    @click.command()
    @click.argument("image")
    @click.option("--classes", "classes_file")
    @click.option("--class-field")
    @click.option("--overwrite", "-w", is_flag=True)
    @handle_errors
    def command(**options):
        raise GeoprotoError("what is wrong and what to do", param=param)
    return command


@pytest.mark.parametrize("param, shown", [
    ("overwrite", "--overwrite"),          # the option's own name
    ("class_field", "--class-field"),      # underscores become the flag's dashes
    ("classes_file", "--classes"),         # an option whose flag differs from its name
    ("classes", "--classes"),              # a library parameter spelled like the flag
    ("image", "IMAGE"),                    # an argument
    ("tile_size", "tile_size"),            # no such option: the library's name
    (None, None),
])
def test_parameter_errors_show_the_flag(param, shown):
    result = CliRunner().invoke(_failing(param), ["a.tif"])
    assert result.exit_code == 1
    prefix = f"{shown}: " if shown else ""
    assert result.output == f"Error: {prefix}what is wrong and what to do\n"


def test_a_range_error_shows_the_flag_with_the_library_wording(tmp_path):
    """check_number's refusal (param=name) reaches the user under the option's flag."""
    result = CliRunner().invoke(main, ["segment", str(tmp_path / "a.tif"), "-s", str(tmp_path / "s.gpkg"), "-o",
                                       str(tmp_path / "c.tif"), "--tile-size", "8"])
    assert result.exit_code == 2
    assert "Invalid value for '--tile-size': must be >= " in result.output and "got 8" in result.output


@pytest.mark.parametrize("command", ["segment", "check-support", "evaluate", "train", "prototypes"])
def test_shared_options_are_declared_once(command):
    """Each shared option comes from one decorator: no flag twice on a command, --device everywhere."""
    ctx = click.Context(main)
    params = main.get_command(ctx, command).params
    flags = [flag for p in params for flag in p.opts]
    assert len(flags) == len(set(flags))
    device = next(p for p in params if p.name == "device")
    assert device.default == "auto" and list(device.type.choices) == ["auto", "cpu", "cuda"]


def test_mentioned_parameters_become_flags_but_paths_stay_as_written():
    @click.command()
    @click.argument("image")
    @click.option("--output", "-o")
    @handle_errors
    def command(**options):
        raise GeoprotoError("/data/image.tif: is the input image /data/image.tif", param="output", mentions=("image",))

    result = CliRunner().invoke(command, ["a.tif", "-o", "b.tif"])
    assert result.output == "Error: --output: /data/image.tif: is the input IMAGE /data/image.tif\n"


def test_a_dataset_error_names_the_option_that_sets_the_parameter(tmp_path):
    """``load_isprs(bands=...)`` is set by train's ``--isprs-bands`` (its parameter name is ``bands``)."""
    result = CliRunner().invoke(main, ["train", "--dataset", "isprs", "--root", str(tmp_path), "--isprs-bands", "RGB",
                                       "-o", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output == "Error: --isprs-bands: Vaihingen is distributed as IRRG only\n"
    assert not (tmp_path / "run").exists()


def test_a_reader_closing_stdout_ends_the_command_quietly_with_sigpipes_exit_code(tmp_path):
    """`geoproto score ... | head -1` printed 'Error: unexpected BrokenPipeError' and exited 1."""
    import os
    import signal
    import subprocess
    import sys

    script = ("import click\nfrom geoproto.cli.options import handle_errors\n"
              "@click.command()\n@handle_errors\ndef command():\n"
              "    for _ in range(100000):\n        click.echo('a line of a long report')\ncommand()\n")
    import geoproto

    root = os.path.dirname(os.path.dirname(geoproto.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env)
    process.stdout.close()  # the reader is gone before the report is written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 128 + signal.SIGPIPE
    assert stderr == ""


def test_a_broken_pipe_that_is_not_stdout_s_is_an_error(tmp_path):
    """A pipe to a worker or a socket breaking is a failure: it must not pass for the reader of stdout leaving
    (a quiet exit 141)."""
    import os
    import subprocess
    import sys

    import geoproto

    script = ("import click\nfrom geoproto.cli.options import handle_errors\n"
              "@click.command()\n@handle_errors\ndef command():\n"
              "    click.echo('a line')\n    raise BrokenPipeError(32, 'Broken pipe')\ncommand()\n")
    root = os.path.dirname(os.path.dirname(geoproto.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=120)
    assert done.returncode == 1 and done.stdout == b"a line\n"
    assert done.stderr.decode() == ("Error: unexpected BrokenPipeError: [Errno 32] Broken pipe (rerun with --debug "
                                    "for details)\n")


def test_ctrl_c_while_a_command_loads_exits_130(monkeypatch):
    """Interrupted during the seconds torch takes to import, a command said "Aborted!" and exited 1."""
    import geoproto.cli

    def interrupted(name, *args):
        raise KeyboardInterrupt
    monkeypatch.setattr(geoproto.cli.importlib, "import_module", interrupted)
    result = CliRunner().invoke(main, ["score", "p.tif", "--truth", "t.tif"])
    assert result.exit_code == 130 and result.output == "Interrupted.\n"


@pytest.mark.parametrize("arguments, shown", [
    (["segment", "", "-s", "s.gpkg", "-o", "c.tif"], "'IMAGE...'"),
    (["segment", "i.tif", "--support", "", "-o", "c.tif"], "'--support' / '-s'"),
    (["segment", "i.tif", "-s", "s.gpkg", "-o", ""], "'--output' / '-o'"),
    (["check-support", "i.tif", "-s", "s.gpkg", "--checkpoint", ""], "'--checkpoint'"),
    (["prototypes", "i.tif", "-s", "s.gpkg", "-s", "", "-o", "p.gpp"], "'--support' / '-s'"),
    (["score", "p.tif", "--truth", "t.gpkg", "--classes", ""], "'--classes'"),
    (["train", "--dataset", "folder", "--root", "", "-o", "run"], "'--root'"),
])
def test_an_empty_path_is_refused_as_such(tmp_path, monkeypatch, arguments, shown):
    """Not ": no such file" (a file called "") nor the current folder taken for an output."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2
    assert result.output.endswith(f"Error: Invalid value for {shown}: empty path; give a file name\n")


def test_an_option_whose_bare_flag_means_the_default_name_keeps_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["segment", "i.tif", "-s", "s.gpkg", "-o", "c.tif", "--vector"])
    assert result.output.endswith("Error: --vector needs a file name (given alone, it is for --output-dir)\n")


@pytest.mark.parametrize("none_unless_given, default", [(False, 1), (True, None)])
def test_orientations_are_a_number_and_none_only_where_a_prototype_file_may_give_them(none_unless_given, default):
    """``--orientations``: 1 unless given; ``segment`` alone gets None, to take a prototype file's own."""
    @click.command()
    @orientations_option(none_unless_given=none_unless_given)
    def command(orientations):
        click.echo(repr(orientations))

    assert CliRunner().invoke(command, []).output == f"{default!r}\n"
    assert CliRunner().invoke(command, ["--orientations", "4"]).output == "4\n"
