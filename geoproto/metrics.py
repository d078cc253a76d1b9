"""Accuracy from one confusion matrix accumulated over all pixels, the way the ISPRS benchmark scores."""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_classes: int,
                     ignore: np.ndarray | None = None) -> np.ndarray:
    """Counts [truth, predicted] over pixels whose truth is 1..num_classes (0 is ignored) and not ``ignore``."""
    keep = (truth > 0) & (truth <= num_classes) & (prediction > 0) & (prediction <= num_classes)
    if ignore is not None:
        keep &= ~ignore
    index = (truth[keep].astype(np.int64) - 1) * num_classes + (prediction[keep].astype(np.int64) - 1)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(matrix: np.ndarray) -> dict:
    """Overall accuracy, Cohen's kappa, and per-class precision, recall, F1 and IoU (NaN when undefined)."""
    matrix = matrix.astype(np.float64)
    total = matrix.sum()
    true_positive = np.diag(matrix)
    predicted = matrix.sum(0)
    actual = matrix.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        overall = true_positive.sum() / total if total else np.nan
        expected = (predicted * actual).sum() / total ** 2 if total else np.nan
        kappa = (overall - expected) / (1 - expected) if total and expected < 1 else np.nan
        precision = true_positive / predicted
        recall = true_positive / actual
        f1 = 2 * true_positive / (predicted + actual)
        iou = true_positive / (predicted + actual - true_positive)
    return {"overall_accuracy": overall, "kappa": kappa, "precision": precision, "recall": recall,
            "f1": f1, "iou": iou, "mean_f1": np.nanmean(f1) if np.isfinite(f1).any() else np.nan,
            "mean_iou": np.nanmean(iou) if np.isfinite(iou).any() else np.nan}


def json_number(value, digits: int = 6) -> float | None:
    """A metric as reports store it: rounded, and None where it is undefined (NaN: a class without
    pixels), since JSON has no NaN."""
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def format_metric(value: float | None, width: int = 0, decimals: int = 4) -> str:
    """A metric of a report for a printed table: fixed decimals, ``n/a`` where it is undefined."""
    return f"{'n/a':>{width}}" if value is None else f"{value:{width}.{decimals}f}"
