"""Render a geoproto class raster as QGIS shows it with its legend (palette colours, class names and
areas from the raster's attribute table), for the README. Needs pillow (the ``test`` extra).

    .venv/bin/python docs/render_classes.py out/spacenet-classes.tif docs/qgis-classes.png
"""

from __future__ import annotations

import sys

import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont

from geoproto.evaluation import prediction_classes

SIDE = 450  # of the rendered map, in pixels
LEGEND_WIDTH = 230


def render(class_path: str, png_path: str) -> None:
    classes = prediction_classes(class_path)
    with rasterio.open(class_path) as src:
        labels = src.read(1, out_shape=(SIDE, SIDE))  # from the mode overviews
        palette = src.colormap(1)  # the K + 1 entries of the legend sidecar, read by GDAL
        counts = np.bincount(src.read(1).ravel(), minlength=256)
        pixel_area = abs(src.transform.determinant)
    lookup = np.full((256, 3), 255, np.uint8)
    for value, color in palette.items():
        lookup[value] = color[:3] if color[3] else (255, 255, 255)
    canvas = Image.new("RGB", (SIDE + LEGEND_WIDTH, SIDE), "white")
    canvas.paste(Image.fromarray(lookup[labels]), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((SIDE + 16, 16), "classes", fill="black", font=font)
    for row, (class_id, name) in enumerate(zip(classes.ids, classes.names)):
        top = 44 + 28 * row
        draw.rectangle((SIDE + 16, top, SIDE + 36, top + 18), fill=tuple(palette[class_id][:3]), outline="black")
        draw.text((SIDE + 46, top + 3), f"{class_id} {name}  {counts[class_id] * pixel_area / 1e4:.2f} ha",
                  fill="black", font=font)
    canvas.quantize(colors=32).save(png_path, optimize=True)


if __name__ == "__main__":
    render(sys.argv[1], sys.argv[2])
