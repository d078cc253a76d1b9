"""``geoproto segment``: orthophoto + a few support polygons -> georeferenced class raster."""

from __future__ import annotations

import click

from ..crf import CRF_RANGES, MIN_BILATERAL_PX, RULE_BILATERAL_M, CRFParams
from ..batch import SIDECARS
from ..segment import SEGMENT_RANGES, SegmentOptions, check_images, segment, segment_many
from .options import (ORIENTATIONS_IN_FILES, alpha_option, command_line, crf_backend_option, encoding_options,
                      handle_errors, integer, json_option, not_stdio, number, orientations_option, overwrite_option,
                      parse_pairs, print_json, printable, quiet_option, scoring_option, show_progress, stretch_option,
                      support_options, window_options, workers_option)

_CRF_DEFAULTS = CRFParams()


@click.command("segment")
@click.argument("image", nargs=-1, required=True, callback=not_stdio)
@click.option("--support", "-s", type=click.Path(dir_okay=False), callback=not_stdio,
              help="Labelled polygons (any OGR vector) or a label raster (0 = unlabelled).")
@click.option("--prototypes", type=click.Path(dir_okay=False), callback=not_stdio,
              help="A prototype file from `geoproto prototypes`, instead of --support.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), callback=not_stdio,
              help="Class raster (GeoTIFF, *.tif), with its legend in OUTPUT.aux.xml (one input).")
@click.option("--output-dir", type=click.Path(file_okay=False), callback=not_stdio,
              help="Folder for one class raster per input, named from the input (DIR/<stem>.tif); needed with "
                   "several inputs. Sidecars given alone (--vector, --probabilities...) go there too.")
@support_options
@encoding_options
@workers_option
@window_options
@alpha_option
@stretch_option
@orientations_option(ORIENTATIONS_IN_FILES, none_unless_given=True)
@scoring_option("How windows are scored: prototypes (the paper's eq. 2), multiscale (features at 1x and 2x), "
                "linear (a head fitted on the support) or both; auto cross-validates them on the support "
                "polygons and takes the best unless it wins under half the bootstrap resamples.")
@click.option("--crf/--no-crf", default=True, show_default=True, help="DenseCRF refinement of each window.")
@crf_backend_option
@click.option("--crf-iterations", type=integer(*CRF_RANGES["iterations"]),
              help=f"Mean-field iterations [default: {_CRF_DEFAULTS.iterations}].")
@click.option("--crf-bilateral-m", type=number(*SEGMENT_RANGES["crf_bilateral_m"]),
              help=f"Bilateral kernel width in metres (projected rasters) [default: the wider of "
                   f"{RULE_BILATERAL_M:g} m and {MIN_BILATERAL_PX:g} px].")
@click.option("--crf-bilateral-px", type=number(*CRF_RANGES["bilateral_sxy"]),
              help=f"Bilateral kernel width in pixels, overriding --crf-bilateral-m [default: {MIN_BILATERAL_PX:g} "
                   f"without a metric CRS].")
@click.option("--crf-bilateral-srgb", type=number(*CRF_RANGES["bilateral_srgb"]),
              help=f"Bilateral colour range (0-255 units) [default: {_CRF_DEFAULTS.bilateral_srgb:g}].")
@click.option("--crf-gaussian-sxy", type=number(*CRF_RANGES["gaussian_sxy"]),
              help=f"Smoothness kernel width in pixels [default: {_CRF_DEFAULTS.gaussian_sxy:g}].")
@click.option("--aoi", type=click.Path(dir_okay=False), callback=not_stdio,
              help="Segment only inside these polygons (any OGR vector, any CRS); outside is nodata and "
                   "windows outside are never read.")
@click.option("--bbox", help="Segment only inside XMIN,YMIN,XMAX,YMAX (the raster's CRS unless --bbox-crs).")
@click.option("--bbox-crs", help="CRS of --bbox, e.g. EPSG:4326.")
@click.option("--min-area", type=number(*SEGMENT_RANGES["min_area"]),
              help="Minimum mapping unit in m²: smaller regions take their largest neighbour's class, in "
                   "the raster and so in the polygons.")
@click.option("--driver", "-f", type=click.Choice(["GTiff", "COG"], case_sensitive=False),
              help="Format of --output [default: GTiff].")
@click.option("--co", "creation_options", multiple=True, callback=parse_pairs, metavar="NAME=VALUE",
              help="GDAL creation option of the rasters, e.g. --co COMPRESS=ZSTD (repeatable).")
@click.option("--cog", is_flag=True, help="Write a Cloud Optimized GeoTIFF (the same as -f COG).")
@click.option("--overviews/--no-overviews", default=True, show_default=True,
              help="Build overviews of the class raster (mode resampling).")
@click.option("--probabilities", is_flag=False, flag_value="", type=click.Path(dir_okay=False), callback=not_stdio,
              help="Also write per-class scores (float32 GeoTIFF, NaN where the class raster is nodata).")
@click.option("--vector", is_flag=False, flag_value="", type=click.Path(dir_okay=False), callback=not_stdio,
              help="Also write class polygons with their area (e.g. out.gpkg, out.fgb, out.shp).")
@click.option("--vector-driver", help="OGR format of --vector [default: from its extension].")
@click.option("--simplify", type=number(*SEGMENT_RANGES["simplify"]),
              help="Simplify --vector polygons by this tolerance (CRS units); shared edges stay shared.")
@click.option("--preview", is_flag=False, flag_value="", type=click.Path(dir_okay=False), callback=not_stdio,
              help="Also write a colour PNG preview.")
@click.option("--report", is_flag=False, flag_value="", type=click.Path(dir_okay=False), callback=not_stdio,
              help="Also write the area per class (pixels, m², ha) as CSV.")
@click.option("--check-support", is_flag=True,
              help="Add the support polygons' cross-validation report to the summary (run anyway for "
                   "--scoring auto and --encoder auto).")
@click.option("--dask-scheduler", metavar="ADDRESS",
              help="Run the windows on the Dask cluster of this scheduler (e.g. tcp://10.0.0.5:8786); every "
                   "worker reads the raster at the same path (shared storage). Needs geoproto[dask].")
@click.option("--dask-local", type=integer(*SEGMENT_RANGES["dask_local"][:2]), metavar="N",
              help="Run the windows on a local Dask cluster of N worker processes. Needs geoproto[dask].")
@overwrite_option
@click.option("--resume", is_flag=True,
              help="Keep finished windows in a journal beside the output and, if an earlier run of the same job "
                   "was interrupted, continue it (the result equals an uninterrupted run's).")
@quiet_option
@json_option
@handle_errors
def segment_command(image, support, output, output_dir, crf, crf_iterations, crf_bilateral_m, crf_bilateral_px,
                    crf_bilateral_srgb, crf_gaussian_sxy, quiet, as_json, **options):
    """Segment IMAGE into the classes drawn in --support (or learnt in --prototypes) and write a class
    raster to --output.

    Several images (files, folders of rasters, glob patterns) are segmented with one set of prototypes,
    built from the support wherever it lies, into --output-dir. A VRT mosaic is one image.

    \b
    Examples: geoproto segment ortho.tif --support labels.gpkg -o classes.tif
              geoproto segment flight/ --support labels.gpkg --output-dir classes/ --vector
    """
    overrides = {"iterations": crf_iterations, "gaussian_sxy": crf_gaussian_sxy, "bilateral_sxy": crf_bilateral_px,
                 "bilateral_srgb": crf_bilateral_srgb}
    settings = SegmentOptions(crf=crf, crf_overrides={k: v for k, v in overrides.items() if v is not None},
                              crf_bilateral_m=crf_bilateral_m,
                              progress=show_progress(quiet), command=command_line(click.get_current_context()),
                              **options)
    if output_dir is None:
        images = check_images(list(image))  # segment_many expands its own
        if len(images) > 1:
            raise click.UsageError(f"{len(images)} inputs: give --output-dir DIR (one output per input), not -o")
        if output is None:
            raise click.UsageError("give -o/--output (or --output-dir DIR)")
        bare = [f"--{name}" for name in SIDECARS if getattr(settings, name) == ""]
        if bare:
            raise click.UsageError(f"{bare[0]} needs a file name (given alone, it is for --output-dir)")
        summaries = [segment(images[0], support, output, settings)]
        summary = summaries[0]
    else:
        if output is not None:
            raise click.UsageError("give -o/--output (one input) or --output-dir, not both")
        summary = segment_many(list(image), support, output_dir, settings)
        summaries = summary["inputs"]
    if not quiet:
        for warning in summary.get("support_check", {}).get("warnings", []):
            click.echo(f"Warning: support check: {printable(warning)}", err=True)
    if as_json:
        print_json(summary)
    elif not quiet:
        outputs = [output] if output_dir is None else [result["output"] for result in summaries]
        for path, result in zip(outputs, summaries):
            classes = ", ".join(f"{printable(c['name'])} {c['pixels']} px"
                                + (f" {c['area_ha']} ha" if c["area_ha"] is not None else "")
                                for c in result["classes"])
            click.echo(f"Wrote {printable(path)}: {result['tiles']} tiles in {result['seconds']:.1f} s ({classes})",
                       err=True)
