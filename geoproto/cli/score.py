"""``geoproto score``: accuracy of any class raster against ground truth."""

from __future__ import annotations

import click

from ..evaluation import score
from ..metrics import format_metric
from .options import handle_errors, not_stdio, parse_pairs, print_json, printable


@click.command("score")
@click.argument("prediction", type=click.Path(dir_okay=False), callback=not_stdio)
@click.option("--truth", required=True, type=click.Path(dir_okay=False), callback=not_stdio,
              help="Ground truth: a label raster, or polygons with a class column (any OGR format, any CRS).")
@click.option("--class-field", help="Class column of vector truth [default: detected].")
@click.option("--layer", help="Layer of vector truth, for files with several.")
@click.option("--truth-crs", help="CRS of vector truth, overriding what it declares.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), callback=not_stdio,
              help="JSON file naming the truth raster's class ids (or colours) [default: the names a "
                   "geoproto raster or GDAL category names carry].")
@click.option("--map", "mapping", multiple=True, callback=parse_pairs,
              help="Rename a class of the truth or the prediction: NAME=NEW (repeatable; several names may "
                   "map to one).")
@click.option("--background", help="With vector truth: the class of pixels outside every polygon "
                                   "[default: ignored].")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@handle_errors
def score_command(prediction, truth, class_field, layer, truth_crs, classes_file, mapping, background, as_json):
    """Compare the class raster PREDICTION with ground truth: overall accuracy, kappa, per-class F1 and
    IoU, and the confusion matrix, from one confusion matrix over all pixels."""
    report = score(prediction, truth, class_field, background, mapping, truth_crs, classes_file, layer)
    if as_json:
        print_json(report)
        return
    names = report["class_names"]
    click.echo("  ".join(f"{label} {format_metric(report[key])}" for label, key in (
        ("overall accuracy", "overall_accuracy"), ("kappa", "kappa"), ("mean IoU", "mean_iou"),
        ("mean F1", "mean_f1"))))
    if report["unpredicted_pixels"]:
        click.echo(f"Warning: the prediction is nodata on {report['unpredicted_pixels']} truth pixels "
                   f"({100 * report['unpredicted_share']:.2f} %), left out of these scores", err=True)
    width = max(16, *(len(printable(name)) for name in names))  # a long class name would shift its row
    click.echo(f"{'class':>{width}} {'F1':>8} {'IoU':>8} {'pixels':>10}")
    for name in names:
        c = report["classes"][name]
        click.echo(f"{printable(name):>{width}} {format_metric(c['f1'], 8)} {format_metric(c['iou'], 8)} "
                   f"{c['pixels']:>10}")
    click.echo("confusion (rows: truth, columns: predicted):")
    for name, row in zip(names, report["confusion"]):
        click.echo(f"{printable(name):>{width}} " + " ".join(f"{v:>10}" for v in row))
