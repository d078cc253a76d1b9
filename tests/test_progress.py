"""Progress bars (geoproto.progress): shown by default only on a terminal, for every command's library call."""

import sys

import pytest

from geoproto.progress import progress_bar


@pytest.mark.parametrize("terminal", [False, True])
def test_a_bar_by_default_only_on_a_terminal_and_as_forced(fake_stderr, terminal):
    for show, shown in ((None, terminal), (not terminal, not terminal)):
        stream = fake_stderr(terminal)
        with progress_bar(show, 3, "patch", "evaluate", initial=1) as bar:
            bar.update(2)
        assert ("evaluate: 100%" in stream.getvalue() and "3/3" in stream.getvalue()) is shown


def test_no_stderr_at_all_draws_no_bar(monkeypatch):
    monkeypatch.setattr(sys, "stderr", None)  # pythonw
    with progress_bar(None, 2, "tile", "segment") as bar:
        assert bar.disable
