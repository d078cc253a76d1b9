"""Readers for the labelled data sets ``train`` and ``evaluate`` use, all returning a LabelledDataset."""

from .base import LabelledDataset, Sample
from .folder import load_folder
from .isprs import load_isprs
from .pascal import fold_classes, load_pascal5i

__all__ = ["LabelledDataset", "Sample", "fold_classes", "load_folder", "load_isprs", "load_pascal5i"]
