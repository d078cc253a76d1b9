"""Progress bars on stderr, shown by default only to a person watching: a log file, a pipe or a notebook's
captured stream would fill with their carriage-return frames."""

from __future__ import annotations

import sys

from tqdm import tqdm


def stderr_is_terminal() -> bool:
    """Whether a person may be watching stderr."""
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def progress_bar(show: bool | None, total: int, unit: str, desc: str, initial: int = 0) -> tqdm:
    """A bar over ``total`` ``unit``s on stderr; ``show`` None: only when stderr is a terminal."""
    show = stderr_is_terminal() if show is None else show
    return tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, disable=not show, desc=desc)
