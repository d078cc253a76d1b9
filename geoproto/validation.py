"""Checks on values a user or a Python caller hands in: numbers that must be finite and in range, and
allocations that must fit in memory. The CLI's numeric option type (``cli.options.Number``) calls
``check_number`` too, so a range is stated once and the library refuses what the CLI refuses.
"""

from __future__ import annotations

import math
import os

from .errors import GeoprotoError

# Softmax scale of cosine similarities (eq. 3: the paper's 20); beyond ALPHA_MAX every softmax is one-hot
# already (and large values overflow to NaN in bfloat16).
DEFAULT_ALPHA = 20.0
ALPHA_MAX = 1000.0
ALPHA_RANGE = (0, ALPHA_MAX, True)  # (low, high, low excluded), as the settings' range tables write them
# Worker processes (DenseCRF, data loading) one run may start.
MAX_WORKERS = 256
# A run may plan to use at most this share of the machine's physical memory for one batch of windows.
MEMORY_SHARE = 0.5


def check_number(name: str, value, minimum: float | None = None, maximum: float | None = None,
                 min_open: bool = False, integer: bool = False):
    """``value`` if it is a finite number (a whole one when ``integer``) within the bounds, else a
    GeoprotoError whose ``param`` is ``name``. NaN passes every comparison, so it is refused before any."""
    kind = "a whole number" if integer else "a finite number"
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy and torch scalars
        value = value.item()
    number = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if isinstance(value, bool) or not number or (integer and isinstance(value, float) and not value.is_integer()):
        raise GeoprotoError(f"must be {kind}, got {value!r}", param=name)
    if (minimum is not None and (value <= minimum if min_open else value < minimum)) or \
            (maximum is not None and value > maximum):
        raise GeoprotoError(f"must be {describe_range(minimum, maximum, min_open)}, got {value!r}", param=name)
    return int(value) if integer else value


def check_path(name: str, value) -> str:
    """``value`` as a ``str`` path: a str or an ``os.PathLike`` (``pathlib.Path``), as ``open`` takes one.
    Anything else is refused naming ``name``, not left to fail deep inside GDAL or ``os.path``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise GeoprotoError(f"must be a file path (a str or pathlib.Path), got {type(value).__name__} "
                            f"{_shorten(repr(value))}", param=name)
    return value


def check_paths(name: str, values) -> list[str]:
    """One path or several (a list, tuple, ...) as a list of ``str`` paths (``check_path``): a lone
    string is one path, never the characters of one."""
    if isinstance(values, (str, os.PathLike)):
        return [check_path(name, values)]
    return [check_path(name, item) for item in check_sequence(name, values, "of file paths")]


def check_sequence(name: str, values, what: str) -> list:
    """``values`` (a list, tuple or other iterable, not a string) as a list; ``what`` completes "must be a
    list ..." in the error."""
    if isinstance(values, (str, bytes, os.PathLike)) or not hasattr(values, "__iter__"):
        raise GeoprotoError(f"must be a list {what}, got {type(values).__name__} {_shorten(repr(values))}", param=name)
    return list(values)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_range(minimum: float | None, maximum: float | None, min_open: bool = False) -> str:
    low = None if minimum is None else f"{'>' if min_open else '>='} {minimum:g}"
    high = None if maximum is None else f"<= {maximum:g}"
    return " and ".join(part for part in (low, high) if part) or "finite"


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, hint: str, param: str | None = None,
                 mentions: tuple[str, ...] = ()) -> None:
    """Refuse up front a plan whose working memory would exceed ``MEMORY_SHARE`` of the machine's RAM,
    rather than dying (or being killed) halfway with a MemoryError; ``param``: the parameter to lower."""
    total = physical_memory()
    if total and needed > MEMORY_SHARE * total:
        raise GeoprotoError(f"{what} would need about {_gib(needed)} of memory, more than "
                            f"{MEMORY_SHARE:.0%} of this machine's {_gib(total)}; {hint}", param, mentions)


def _gib(size: float) -> str:
    return f"{size / 2 ** 30:.1f} GiB"


def check_alpha(value) -> float:
    """A softmax scale in ALPHA_RANGE, wherever one comes from (options, a prototype file, evaluate)."""
    return check_number("alpha", value, *ALPHA_RANGE)
