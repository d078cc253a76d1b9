"""geoproto: few-shot land-cover segmentation of orthophotos from a few labelled polygons."""

__version__ = "0.1.0"
