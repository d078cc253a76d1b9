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
