"""Classes: ids as written to the class raster, names and colours; torch- and GDAL-free.

Class ids are 1..254 in the outputs; ``NODATA`` (0) marks pixels without a class (unlabelled in
support, outside the raster's valid data or the area of interest in results).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import GeoprotoError, no_such_file

NODATA = 0
NODATA_NAME = "nodata"  # the legend's name for NODATA, which no class may take
MAX_CLASS_ID = 254
# A class file lists at most 254 classes: anything much larger is not one (and deep nesting in a
# large JSON file exhausts the parser's recursion).
MAX_CLASS_FILE_BYTES = 1 << 20


@dataclass
class ClassInfo:
    """Class ids (as written to the output), their names and optional RGB colours."""

    ids: list[int]
    names: list[str]
    colors: list[tuple[int, int, int] | None] = field(default_factory=list)

    def __post_init__(self):
        if not self.colors:
            self.colors = [None] * len(self.ids)

    def name_of(self, class_id: int) -> str:
        return self.names[self.ids.index(class_id)]

    def positions(self) -> np.ndarray:
        """A 256-entry lookup from class id to position 1..K (0 for every other value), the labels
        the few-shot maths works with."""
        lookup = np.zeros(256, np.int64)
        lookup[self.ids] = np.arange(1, len(self.ids) + 1)
        return lookup

    def subset(self, ids) -> "ClassInfo":
        keep = [i for i, class_id in enumerate(self.ids) if class_id in set(ids)]
        return ClassInfo([self.ids[i] for i in keep], [self.names[i] for i in keep], [self.colors[i] for i in keep])


def refuse_reserved_names(names, where: str) -> None:
    """A class named like the legend's nodata entry (any case) would read as nodata in QGIS's legend and
    in ``score``: refused, naming the file it comes from."""
    taken = sorted({name for name in names if name.strip().lower() == NODATA_NAME})
    if taken:
        raise GeoprotoError(f"{where}: class name {taken[0]!r} is reserved for the pixels without a class in the "
                            f"results' legend; rename the class (areas to leave unclassified: leave them "
                            f"unlabelled, or outside segment's --aoi)")


def refuse_one_class(names, where: str, param: str | None = None) -> None:
    """Refuse a support of fewer than two classes (``names``, repeats allowed): a single class has nothing to
    tell apart (it labels every pixel, and cross-validates perfectly)."""
    names = list(dict.fromkeys(names))
    if len(names) < 2:
        raise GeoprotoError(f"{where}: holds one class ({names[0]!r}); label at least two, e.g. the class you want "
                            f"and what surrounds it", param=param)


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    """``#RRGGBB`` (or ``RRGGBB``) as an RGB triple."""
    value = value.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def read_class_file(path: str, param: str | None = None) -> ClassInfo:
    """Class names (and colours) from JSON: ``{"1": "building", ...}``, or a list of
    ``{"id": 1, "name": "building", "color": "#3C1098"}``, optionally under a ``"classes"`` key.
    ``param``: the caller's parameter that gave ``path``, named if it is empty."""
    try:
        if os.path.getsize(path) > MAX_CLASS_FILE_BYTES:
            raise GeoprotoError(f"{path}: {os.path.getsize(path)} bytes; a class file is a small JSON list of at "
                                f"most {MAX_CLASS_ID} classes (limit {MAX_CLASS_FILE_BYTES} bytes)")
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise no_such_file(path, param) from None
    except IsADirectoryError:
        raise GeoprotoError(f"{path}: is a directory, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GeoprotoError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise GeoprotoError(f"{path}: JSON nested too deeply to be a class file") from None
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    try:
        if isinstance(data, dict):
            entries = sorted((int(k), str(v)) for k, v in data.items())
            info = ClassInfo([i for i, _ in entries], [n for _, n in entries])
        else:
            info = ClassInfo([int(e["id"]) for e in data], [str(e["name"]) for e in data],
                             [hex_to_rgb(e["color"]) if e.get("color") else None for e in data])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise GeoprotoError(f"{path}: expected {{\"1\": \"name\", ...}} or a list of {{\"id\", \"name\"}}") from None
    bad = [i for i in info.ids if not 1 <= i <= MAX_CLASS_ID]
    if bad:
        raise GeoprotoError(f"{path}: class id {bad[0]} outside 1..{MAX_CLASS_ID} (0 means unlabelled)")
    if any(not name.strip() for name in info.names):
        raise GeoprotoError(f"{path}: a class has an empty name; name every class")
    refuse_reserved_names(info.names, path)
    duplicates = sorted({i for i in info.ids if info.ids.count(i) > 1})
    if duplicates:
        raise GeoprotoError(f"{path}: class id {duplicates[0]} is listed twice")
    return info
