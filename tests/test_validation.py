"""Numbers checked once, in the library: the CLI's options and Python callers get the same refusals."""

from __future__ import annotations

import math

import pytest

from geoproto.crf import CRFParams
from geoproto.errors import GeoprotoError
from geoproto.pipeline import check_window_memory
from geoproto.segment import SegmentOptions
from geoproto.training import TrainConfig
from geoproto.validation import check_memory, check_number, physical_memory


@pytest.mark.parametrize("value, bounds, message", [
    (math.nan, {}, "x: must be a finite number, got nan"),
    (math.inf, {"minimum": 0}, "x: must be a finite number, got inf"),
    (-math.inf, {}, "x: must be a finite number, got -inf"),
    (0, {"minimum": 0, "min_open": True}, "x: must be > 0, got 0"),
    (5, {"minimum": 1, "maximum": 3}, "x: must be >= 1 and <= 3, got 5"),
    (2.5, {"integer": True}, "x: must be a whole number, got 2.5"),
    ("3", {}, "x: must be a finite number, got '3'"),
    (True, {}, "x: must be a finite number, got True"),
])
def test_check_number_refuses(value, bounds, message):
    with pytest.raises(GeoprotoError, match=f"^{message}$"):
        check_number("x", value, **bounds)


def test_check_number_accepts_and_normalises():
    import numpy as np

    assert check_number("x", 3.0, 1, 3, integer=True) == 3 and isinstance(check_number("x", 3.0, integer=True), int)
    assert check_number("x", np.float32(0.5), 0, 1) == 0.5


@pytest.mark.parametrize("field, value", [("alpha", math.nan), ("alpha", math.inf), ("alpha", 0.0),
                                          ("tile_size", 8), ("overlap", -1), ("batch_size", 0), ("workers", -2),
                                          ("buffer", math.nan), ("crf_bilateral_m", 0.0)])
def test_segment_options_refuse_bad_numbers(field, value):
    with pytest.raises(GeoprotoError, match=f"^{field}: must be"):
        SegmentOptions(**{field: value})


@pytest.mark.parametrize("field, value, choices", [("scoring", "best", "auto, prototypes, multiscale, linear, "
                                                   "multiscale\\+linear"), ("stretch", "global", "shared, per-input")])
def test_segment_options_refuse_unknown_choices(field, value, choices):
    with pytest.raises(GeoprotoError, match=f"^{field}: '{value}': choose {choices}$"):
        SegmentOptions(**{field: value})


@pytest.mark.parametrize("field, value", [("bilateral_srgb", 0.0), ("gaussian_sxy", math.nan),
                                          ("bilateral_sxy", math.inf), ("iterations", 0), ("guard_keep", 2.0),
                                          ("bilateral_compat", -1.0)])
def test_crf_params_refuse_what_would_crash_densecrf(field, value):
    with pytest.raises(GeoprotoError, match=f"^CRF {field}: must be"):
        CRFParams(**{field: value})


@pytest.mark.parametrize("field, value", [("lr", math.nan), ("lr", 0.0), ("lr_gamma", math.inf), ("alpha", -1.0),
                                          ("momentum", 1.5), ("seed", -1), ("crop", 16), ("ways", 0),
                                          ("lr_milestones", [10, 0])])
def test_train_config_refuses_bad_numbers(field, value):
    with pytest.raises(GeoprotoError, match=f"^{field}: must be"):
        TrainConfig(**{field: value})


def test_memory_guard_states_the_figure():
    total = physical_memory()
    assert total and total > 1 << 28
    check_memory(total // 4, "a plan", "hint")
    with pytest.raises(GeoprotoError, match=r"a plan would need about [\d.]+ GiB of memory, more than 50% of this "
                                            r"machine's [\d.]+ GiB; hint"):
        check_memory(total, "a plan", "hint")
    check_window_memory(417, 16, 5, 16)  # the defaults on a CUDA machine with 16 cores fit
    with pytest.raises(GeoprotoError, match="tile_size: windows of 100000 px with batch_size 1 would need about"):
        check_window_memory(100000, 1, 2)


def test_paths_are_str_or_path_like_and_a_lone_path_is_one_path():
    from pathlib import Path

    from geoproto.validation import check_path, check_paths

    assert check_path("image", Path("a/b.tif")) == "a/b.tif" and check_path("image", "c.tif") == "c.tif"
    assert check_paths("images", "u8.tif") == ["u8.tif"]  # not ["u", "8", ...]
    assert check_paths("images", (Path("a.tif"), "b.tif")) == ["a.tif", "b.tif"]
    with pytest.raises(GeoprotoError, match=r"^image: must be a file path \(a str or pathlib.Path\), got list "
                                            r"\['a.tif'\]$"):
        check_path("image", ["a.tif"])
    with pytest.raises(GeoprotoError, match="^images: must be a list of file paths, got int 3$"):
        check_paths("images", 3)


@pytest.mark.parametrize("field, value, message", [
    ("bands", "3,2,1", r"bands: must be a list of band numbers, as \[3, 2, 1\], got str '3,2,1'"),
    ("bands", 1, r"bands: must be a list of band numbers, as \[3, 2, 1\], got int 1"),
    ("bands", [1, 0, 2], "bands: must be >= 1, got 0"),
    ("crf_overrides", {"bilateral_width": 30}, "crf_overrides: bilateral_width: not a CRF setting; choose among "
                                               "iterations, gaussian_sxy, "),
    ("creation_options", ["COMPRESS=ZSTD"], r"creation_options: must be a dict such as \{'COMPRESS': 'ZSTD'\}, "
                                            r"got list$"),
    ("crf_overrides", [("iterations", 10)], r"crf_overrides: must be a dict such as \{'iterations': 10\}, got list$"),
    ("probabilities", 3, "probabilities: must be a file path"),
])
def test_segment_options_refuse_values_of_the_wrong_type(field, value, message):
    """Refused by name at construction, not as a TypeError or a wrong band count deep in the run."""
    with pytest.raises(GeoprotoError, match=f"^{message}"):
        SegmentOptions(**{field: value})


def test_segment_options_normalise_bands_and_paths():
    from pathlib import Path

    options = SegmentOptions(bands=(3.0, 2, 1), probabilities=Path("p.tif"), aoi=Path("area.gpkg"),
                             crf_overrides=None, creation_options=None)
    assert (options.bands, options.probabilities, options.aoi) == ([3, 2, 1], "p.tif", "area.gpkg")
    assert options.crf_overrides == {} and options.creation_options == {}  # None: none, as the default
