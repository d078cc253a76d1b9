"""Classes: ids as written to the class raster, names and colours; torch- and GDAL-free.

Class ids are 1..254 in the outputs; ``NODATA`` (0) marks pixels without a class (unlabelled in
support, outside the raster's valid data or the area of interest in results).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import GeoprotoError, no_such_file

NODATA = 0
NODATA_NAME = "nodata"  # the legend's name for NODATA, which no class may take
MAX_CLASS_ID = 254
# A class file lists at most 254 classes: anything much larger is not one (and deep nesting in a
# large JSON file exhausts the parser's recursion).
MAX_CLASS_FILE_BYTES = 1 << 20
CLASS_ENTRY_KEYS = ("id", "name", "color")  # the keys of a class in a class file's list
CLASS_FILE_KEYS = ("classes", "ignore_color")  # what a class file holding its list under "classes" reads beside it


@dataclass
class ClassInfo:
    """Class ids (as written to the output), their names and optional RGB colours."""

    ids: list[int]
    names: list[str]
    colors: list[tuple[int, int, int] | None] = field(default_factory=list)
    # A colour-coded mask's colour that is no class (e.g. boundaries): unlabelled, without a warning.
    ignore_color: tuple[int, int, int] | None = None

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
        return ClassInfo([self.ids[i] for i in keep], [self.names[i] for i in keep], [self.colors[i] for i in keep],
                         self.ignore_color)


def refuse_reserved_names(names, where: str) -> None:
    """A class named like the legend's nodata entry (any case) would read as nodata in QGIS's legend and
    in ``score``: refused, naming the file it comes from."""
    taken = sorted({name for name in names if name.strip().lower() == NODATA_NAME})
    if taken:
        raise GeoprotoError(f"{where}: class name {taken[0]!r} is reserved for the pixels without a class in the "
                            f"results' legend; rename the class (areas to leave unclassified: leave them "
                            f"unlabelled, or outside segment's --aoi)")


def warn_case_twins(names, where: str) -> None:
    """Classes are matched by exact name, so "Tree" and "tree" (of two prototype files pooled) stay two classes
    that split one land cover between them: warned about, naming them, since a user who meant two classes so
    named is rarer than one who typed the same class twice."""
    spellings: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        spellings.setdefault(name.casefold(), []).append(name)
    twins = [group for group in spellings.values() if len(group) > 1]
    if twins:
        listed = "; ".join(" and ".join(repr(name) for name in group) for group in twins[:3])
        warnings.warn(f"{where}: class names {listed} differ only by case and stay separate classes; if each "
                      f"pair is one class, give it one spelling")


def refuse_one_class(names, where: str, param: str | None = None) -> None:
    """Refuse a support of fewer than two classes (``names``, repeats allowed): a single class has nothing to
    tell apart (it labels every pixel, and cross-validates perfectly)."""
    names = list(dict.fromkeys(names))
    if len(names) < 2:
        raise GeoprotoError(f"{where}: holds one class ({names[0]!r}); label at least two, e.g. the class you want "
                            f"and what surrounds it", param=param)


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    """``#RRGGBB`` (or ``RRGGBB``) as an RGB triple; ValueError for anything else (``int(.., 16)`` alone would
    take "-1-1-1" or " 1 2 3", and ignore a seventh digit)."""
    match = isinstance(value, str) and re.fullmatch(r"#?([0-9A-Fa-f]{6})", value)
    if not match:
        raise ValueError(f"colour {value!r} is not #RRGGBB")
    return tuple(bytes.fromhex(match[1]))


def first_repeat(values):
    """The first of ``values`` seen before (None values aside), or None."""
    seen = set()
    for value in values:
        if value is not None and value in seen:
            return value
        seen.add(value)
    return None


def read_class_file(path: str, param: str | None = None) -> ClassInfo:
    """Class names (and colours) from JSON: ``{"1": "building", ...}``, or a list of
    ``{"id": 1, "name": "building", "color": "#3C1098"}``, optionally under a ``"classes"`` key, beside which
    ``"ignore_color"`` names a colour-coded mask's colour that is no class.
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
    ignore_color = None
    if isinstance(data, dict) and "classes" in data:
        for key in data:  # other keys are the file's own metadata (a dataset's "name"), unless one is a typo
            typo = difflib.get_close_matches(key, CLASS_FILE_KEYS, 1, 0.8) if key not in CLASS_FILE_KEYS else []
            if typo:
                warnings.warn(f"{path}: class file key {json.dumps(key)} not known, ignored; did you mean "
                              f"{json.dumps(typo[0])}?")
        if data.get("ignore_color"):
            try:
                ignore_color = hex_to_rgb(data["ignore_color"])
            except ValueError as exc:
                raise GeoprotoError(f"{path}: ignore_color: {exc}") from None
        data = data["classes"]
    layout = 'expected {"1": "name", ...} or a list of {"id", "name"}'
    if isinstance(data, dict):
        entries = sorted(({"id": _class_id(path, key), "name": name} for key, name in data.items()),
                         key=lambda entry: entry["id"])
    elif isinstance(data, list) and all(isinstance(entry, dict) for entry in data):
        entries = data
        # a British "colour" or a typo would otherwise drop what it holds without a word
        unknown = list(dict.fromkeys(key for entry in entries for key in entry if key not in CLASS_ENTRY_KEYS))
        if unknown:
            warnings.warn(f"{path}: class key(s) {', '.join(json.dumps(key) for key in unknown[:5])} not known, "
                          f"ignored; a class has the keys {', '.join(json.dumps(key) for key in CLASS_ENTRY_KEYS)}")
        for number, entry in enumerate(entries, 1):
            missing = " and ".join(f'"{key}"' for key in ("id", "name") if key not in entry)
            if missing:
                raise GeoprotoError(f"{path}: class {number} of the list ({json.dumps(entry)[:80]}) has no {missing}; "
                                    f"{layout}")
    else:
        raise GeoprotoError(f"{path}: {layout}")
    if not entries:
        raise GeoprotoError(f"{path}: lists no class; {layout}")
    ids, names, colors = [], [], []
    for entry in entries:
        ids.append(_class_id(path, entry["id"]))
        # str() of null, a number or an object would make a class named "None", "5" or "{'name': ..}"
        name = entry["name"]
        if not isinstance(name, str):
            raise GeoprotoError(f"{path}: class {ids[-1]} has the name {json.dumps(name)}; name every class with text")
        if not name.strip():
            raise GeoprotoError(f"{path}: a class has an empty name (id {ids[-1]}); name every class")
        names.append(name.strip())  # as vector support's class values are
        try:
            colors.append(hex_to_rgb(entry["color"]) if entry.get("color") else None)
        except ValueError:
            raise GeoprotoError(f"{path}: class {names[-1]!r} has the colour {json.dumps(entry['color'])}; write "
                                f"colours as \"#RRGGBB\" (e.g. \"#3C1098\")") from None
    info = ClassInfo(ids, names, colors, ignore_color)
    refuse_reserved_names(info.names, path)
    duplicate = first_repeat(info.ids)
    if duplicate is not None:
        raise GeoprotoError(f"{path}: class id {duplicate} is listed twice")
    # two ids of one name would be one class to every step that pairs classes by name (support, score)
    repeated = first_repeat(info.names)
    if repeated is not None:
        raise GeoprotoError(f"{path}: class name {repeated!r} is given to ids "
                            f"{', '.join(str(i) for i, n in zip(info.ids, info.names) if n == repeated)}; "
                            f"name each class once")
    # a colour mask's pixels of a shared colour would all go to one of the classes, silently
    shared = first_repeat(info.colors)
    if shared is not None:
        owners = [repr(name) for name, color in zip(info.names, info.colors) if color == shared]
        raise GeoprotoError(f"{path}: classes {' and '.join(owners)} share the colour #{bytes(shared).hex().upper()}; "
                            f"give each class its own colour")
    return info


def _class_id(path: str, value) -> int:
    """A class file's id: a whole number (or its digits as text, as JSON object keys are) in 1..MAX_CLASS_ID;
    int() alone would make 1.7 and true class 1."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise GeoprotoError(f"{path}: class id {json.dumps(value)} is not a whole number 1..{MAX_CLASS_ID}")
    if not 1 <= value <= MAX_CLASS_ID:
        raise GeoprotoError(f"{path}: class id {value} outside 1..{MAX_CLASS_ID} (0 means unlabelled)")
    return value
