"""``geoproto segment``: orthophoto + a few support polygons -> georeferenced class raster."""

from __future__ import annotations

import click

from ..crf import CRFParams
from ..segment import DEFAULT_CRF_BILATERAL_M, DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, SegmentOptions, segment
from .options import (apply, crf_backend_option, encoder_options, handle_errors, json_option, print_json,
                      quiet_option, support_options, workers_option)

_CRF_DEFAULTS = CRFParams()


@click.command("segment")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--support", "-s", required=True, type=click.Path(dir_okay=False),
              help="Labelled polygons (any OGR vector) or a label raster (0 = unlabelled).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Class raster (GeoTIFF).")
@apply(support_options)
@apply(encoder_options)
@workers_option
@click.option("--tile-size", type=click.IntRange(32), default=DEFAULT_TILE_SIZE, show_default=True)
@click.option("--overlap", type=click.IntRange(0), default=DEFAULT_OVERLAP, show_default=True,
              help="Pixels shared by neighbouring windows; the overlap is cropped when stitching.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Softmax scale of the cosine similarities.")
@click.option("--crf/--no-crf", default=True, show_default=True, help="DenseCRF refinement of each window.")
@crf_backend_option
@click.option("--crf-iterations", type=click.IntRange(1), default=_CRF_DEFAULTS.iterations, show_default=True)
@click.option("--crf-bilateral-m", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_CRF_BILATERAL_M,
              show_default=True, help="Bilateral kernel width in metres (projected rasters).")
@click.option("--crf-bilateral-px", type=click.FloatRange(min=0, min_open=True),
              help="Bilateral kernel width in pixels, overriding --crf-bilateral-m [default: 80 without a metric CRS].")
@click.option("--crf-bilateral-srgb", type=float, default=_CRF_DEFAULTS.bilateral_srgb, show_default=True)
@click.option("--crf-gaussian-sxy", type=float, default=_CRF_DEFAULTS.gaussian_sxy, show_default=True)
@click.option("--probabilities", type=click.Path(dir_okay=False), help="Also write per-class scores (float32).")
@click.option("--vector", type=click.Path(dir_okay=False), help="Also write class polygons (e.g. out.gpkg).")
@click.option("--preview", type=click.Path(dir_okay=False), help="Also write a colour PNG preview.")
@click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@quiet_option
@json_option
@handle_errors
def segment_command(image, support, output, crf, crf_iterations, crf_bilateral_m, crf_bilateral_px,
                    crf_bilateral_srgb, crf_gaussian_sxy, quiet, as_json, **options):
    """Segment IMAGE into the classes drawn in --support and write a class raster to --output.

    Example: geoproto segment ortho.tif --support labels.gpkg -o classes.tif
    """
    crf_params = CRFParams(iterations=crf_iterations, gaussian_sxy=crf_gaussian_sxy,
                           bilateral_sxy=crf_bilateral_px or CRFParams.bilateral_sxy,
                           bilateral_srgb=crf_bilateral_srgb)
    settings = SegmentOptions(crf=crf, crf_params=crf_params,
                              crf_bilateral_m=None if crf_bilateral_px else crf_bilateral_m,
                              progress=not quiet, check_support=as_json, **options)
    summary = segment(image, support, output, settings)
    if not quiet:
        for warning in summary.get("support_check", {}).get("warnings", []):
            click.echo(f"Warning: support check: {warning}", err=True)
    if as_json:
        print_json(summary)
    elif not quiet:
        classes = ", ".join(f"{c['name']} {c['pixels']}" for c in summary["classes"])
        click.echo(f"Wrote {output}: {summary['tiles']} tiles in {summary['seconds']:.1f} s ({classes} px)", err=True)
