"""The one exception type the CLI turns into a one-line message and a non-zero exit code."""

from __future__ import annotations

import contextlib
import os


class GeoprotoError(Exception):
    """A problem with the user's input or environment, stated so they can fix it.

    ``param`` names the library parameter at fault (``"tile_size"``, ``"overwrite"``), when there is
    one: Python callers read ``tile_size: must be ...``, while the CLI names the option that sets it
    (``--tile-size: must be ...``), as rio does with click's ``param_hint``. ``mentions`` lists other
    parameter names the message uses, which the CLI renames to their options too.
    """

    def __init__(self, message: str, param: str | None = None, mentions: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.param = param
        self.mentions = mentions  # other parameters the message names (as words), for the CLI to rename

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message


class GeoprotoWarning(UserWarning):
    """A warning that names library parameters (``mentions``), which the CLI renames to their options as
    it does for ``GeoprotoError``."""

    def __init__(self, message: str, mentions: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.mentions = mentions


EMPTY_PATH = "empty path; give a file name"


def no_such_file(path, param: str | None = None) -> GeoprotoError:
    """The error for a path that names no file, whatever test found it missing (each reader tests as its
    opener would: GDAL's virtual paths, a directory where a file is due). An empty path says so, naming
    ``param`` (the parameter that gave it), rather than reading ``: no such file`` about a file called "";
    a missing file is named by its path."""
    if os.fspath(path) == "":
        return GeoprotoError(EMPTY_PATH, param=param)
    return GeoprotoError(f"{path}: no such file")


@contextlib.contextmanager
def renamed_params(names: dict[str | None, str | None]):
    """Errors raised inside name the caller's parameters: ``names`` maps a parameter (None: an error naming
    none, e.g. a file's problem) to the caller's one that set it (``score``'s ``truth`` for ``support``)."""
    try:
        yield
    except GeoprotoError as exc:
        raise GeoprotoError(exc.message, param=names.get(exc.param, exc.param),
                            mentions=tuple(names.get(m, m) for m in exc.mentions)) from None
