"""``geoproto check-support``: are the support polygons enough to tell the classes apart?"""

from __future__ import annotations

import click

from ..metrics import format_metric
from ..segment import SegmentOptions
from ..support_check import DEFAULT_FOLDS, MAX_FOLDS, check_support
from .options import (encoding_options, handle_errors, integer, not_stdio, number, orientations_option, print_json,
                      printable, stretch_option, support_options)


@click.command("check-support")
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True, callback=not_stdio)
@click.option("--support", "-s", required=True, type=click.Path(dir_okay=False), callback=not_stdio,
              help="Labelled polygons.")
@support_options
@encoding_options
@stretch_option
@orientations_option()
@click.option("--folds", type=integer(2, MAX_FOLDS), default=DEFAULT_FOLDS, show_default=True)
@click.option("--group-distance", type=number(0),
              help="Polygons closer than this many pixels share a fold [default: 32].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@handle_errors
def check_support_command(images, support, folds, group_distance, as_json, **options):
    """Cross-validate the support polygons on IMAGES (rasters, folders or glob patterns, pooled as
    `segment` pools them): per-class F1 when each group of polygons is predicted from the others, the
    confusions between classes, and what to add. Exit code 0 whatever the result."""
    report = check_support(list(images), support, SegmentOptions(progress=False, **options), folds,
                           group_distance)
    if as_json:
        print_json(report)
        return
    used = report["cross_validated"]
    rasters = f" on {used['rasters']} rasters" if used["rasters"] > 1 else ""
    sides = "/".join(map(str, used["window_sizes"]))
    click.echo(f"cross-validated {used['polygons']} polygon(s) in {used['windows']} window(s) of {sides} px"
               f"{rasters} over {report['folds']} spatial folds: overall accuracy "
               f"{format_metric(report['overall_accuracy'], decimals=2)}, mean class F1 "
               f"{format_metric(report['mean_f1'], decimals=2)}")
    click.echo(f"scoring: {report['scoring']['reason']}")
    click.echo(f"{'class':>16} {'F1':>6} {'polygons':>9} {'held-out px':>12}")
    for name, c in report["classes"].items():
        click.echo(f"{printable(name):>16} {format_metric(c['f1'], 6, 2)} {c['polygons']:>9} "
                   f"{c['held_out_pixels']:>12}")
    for warning in report["warnings"]:
        click.echo(f"Warning: {printable(warning)}")
