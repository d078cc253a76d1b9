"""Metric values as reports store and print them."""

from __future__ import annotations

import math

import numpy as np

from geoproto.metrics import format_metric, json_number


def test_json_number_rounds_and_turns_undefined_into_none():
    assert json_number(np.float64(0.123456789)) == 0.123457
    assert json_number(0.123456789, 4) == 0.1235 and isinstance(json_number(np.float32(1.0)), float)
    assert json_number(math.nan) is None and json_number(None) is None and json_number(np.inf) is None


def test_format_metric_aligns_values_and_missing_ones():
    assert format_metric(0.5) == "0.5000" and format_metric(0.8765, 8) == "  0.8765"
    assert format_metric(0.876, 6, 2) == "  0.88" and format_metric(None, 6, 2) == "   n/a"
    assert format_metric(None) == "n/a"
