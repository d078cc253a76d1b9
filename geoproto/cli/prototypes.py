"""``geoproto prototypes`` and ``geoproto merge-prototypes``: learn the classes of supports once, reuse
them with ``segment --prototypes``."""

from __future__ import annotations

import click

from ..segment import SegmentOptions
from .options import (ORIENTATIONS_IN_FILES, alpha_option, encoding_options, handle_errors, json_option, not_stdio,
                      orientations_option, overwrite_option, print_json, printable, quiet_option, scoring_option,
                      stretch_option, support_options, window_options)


@click.command("prototypes")
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True, type=click.Path(dir_okay=False),
                callback=not_stdio)
@click.option("--support", "-s", "supports", multiple=True, required=True, type=click.Path(dir_okay=False),
              callback=not_stdio,
              help="Labelled polygons or a label raster of an IMAGE; repeat it, one per IMAGE, in the same order.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), callback=not_stdio,
              help="Prototype file to write (e.g. classes.gpp).")
@support_options
@encoding_options
@window_options
@alpha_option
@stretch_option
@orientations_option(ORIENTATIONS_IN_FILES)
@scoring_option("How segment --prototypes will score windows, as segment --scoring: the file keeps the "
                "features of its scales (multiscale: 1x and 2x) and the linear head fitted on the support; "
                "auto cross-validates the support polygons and picks as segment would.")
@overwrite_option
@quiet_option
@json_option
@handle_errors
def prototypes_command(images, supports, output, quiet, as_json, **options):
    """Learn the classes drawn in --support on IMAGE and write them to a prototype file for
    `geoproto segment --prototypes`. Several IMAGE --support pairs pool into one file, pixel-weighted.

    Examples: geoproto prototypes ortho.tif --support labels.gpkg -o classes.gpp;
    geoproto prototypes a.tif b.tif -s a.gpkg -s b.gpkg -o flight.gpp
    """
    from ..prototypes import write_prototypes

    if len(images) != len(supports):
        raise click.UsageError(f"{len(images)} IMAGE(s) but {len(supports)} --support: give one --support per "
                               f"IMAGE, in the same order")
    summary = write_prototypes(list(zip(images, supports)), output, SegmentOptions(progress=False, **options))
    _report(summary, quiet, as_json)


@click.command("merge-prototypes")
@click.argument("inputs", metavar="FILE...", nargs=-1, required=True, type=click.Path(dir_okay=False),
                callback=not_stdio)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), callback=not_stdio,
              help="Prototype file to write.")
@overwrite_option
@quiet_option
@json_option
@handle_errors
def merge_prototypes_command(inputs, output, overwrite, quiet, as_json):
    """Pool prototype files made with the same encoder into one, pixel-weighted (classes matched by name).

    Example: geoproto merge-prototypes north.gpp south.gpp -o flight.gpp
    """
    from ..prototypes import merge_prototype_files

    _report(merge_prototype_files(list(inputs), output, overwrite), quiet, as_json)


def _report(summary: dict, quiet: bool, as_json: bool) -> None:
    if as_json:
        print_json(summary)
    elif not quiet:
        classes = ", ".join(f"{printable(c['name'])} {c['pixels']} px" for c in summary["classes"])
        click.echo(f"Wrote {printable(summary['output'])}: {summary['sources']} support(s), encoder "
                   f"{printable(summary['encoder_name'])}, scoring {summary['scoring']['name']} ({classes})",
                   err=True)
