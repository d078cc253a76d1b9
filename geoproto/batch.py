"""Several rasters in one ``segment`` run: which files the arguments name, and where each one's outputs go.

A folder stands for the rasters directly inside it and a glob pattern for the files it matches, both in
name order, so that a run over a flight's folder always processes (and reports) its tiles in the same
order. A VRT mosaic is one raster (one output).
"""

from __future__ import annotations

import glob
import os

from .errors import GeoprotoError
from .raster import path_exists

# What a folder argument picks up: the raster formats orthophotos come in (GDAL opens more; name them).
RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg")
_GLOB_CHARACTERS = set("*?[")


def expand_images(arguments: list[str]) -> list[str]:
    """The rasters that ``arguments`` (files, folders, glob patterns) name, each once, in order."""
    images, seen = [], set()
    for argument in arguments:
        if not argument.startswith("/vsi") and os.path.isdir(argument):
            found = sorted(os.path.join(argument, name) for name in os.listdir(argument)
                           if not name.startswith(".") and name.lower().endswith(RASTER_EXTENSIONS)
                           and os.path.isfile(os.path.join(argument, name)))
            if not found:
                raise GeoprotoError(f"{argument}: folder holds no raster ({', '.join(RASTER_EXTENSIONS)})")
        elif _GLOB_CHARACTERS & set(argument) and not path_exists(argument):
            found = sorted(path for path in glob.glob(argument) if os.path.isfile(path))
            if not found:
                raise GeoprotoError(f"{argument}: matches no file")
        else:
            found = [argument]
        for path in found:
            key = path if path.startswith("/vsi") else os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                images.append(path)
    return images


def output_paths(images: list[str], output_dir: str, extension: str = ".tif") -> list[str]:
    """One output per input in ``output_dir``, named from the input's stem (``a/x.tif`` -> ``DIR/x.tif``)."""
    paths, owners = [], {}
    for image in images:
        stem = os.path.splitext(os.path.basename(image.rstrip("/")))[0]
        path = os.path.join(output_dir, stem + extension)
        if path in owners:
            raise GeoprotoError(f"{image}: its output {path} would also be that of {owners[path]}; inputs in "
                                f"one run need distinct file names")
        owners[path] = image
        paths.append(path)
    return paths


# The outputs beside each class raster that --output-dir names from the input (``DIR/<stem><suffix>``),
# asked for by the option alone or with a suffix of one's own (``--vector .fgb``).
SIDECARS = {"probabilities": "_probabilities.tif", "vector": ".gpkg", "preview": ".png", "report": ".csv"}


def sidecar_path(output: str, option: str, value: str, default_suffix: str | None = None) -> str:
    """``output``'s sidecar for ``option``: ``value`` is empty (the default suffix) or a suffix, never a path."""
    suffix = value or default_suffix or SIDECARS[option]
    # A suffix starts as one does (".fgb", "_areas.csv", "-polygons.gpkg"): "polygons.gpkg" is a file name,
    # which would be glued to each input's name (x.tif -> xpolygons.gpkg) rather than written once.
    is_path = os.sep in suffix or bool(os.altsep and os.altsep in suffix)
    if is_path or suffix[0].isalnum():
        what = "a path" if is_path else "a file name"
        raise GeoprotoError(f"{value}: with output_dir, give the option alone or a suffix such as "
                            f"{SIDECARS[option]!r}, not {what}", param=option, mentions=("output_dir",))
    return os.path.splitext(output)[0] + suffix
