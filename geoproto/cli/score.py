"""``geoproto score``: accuracy of any class raster against ground truth."""

from __future__ import annotations

import click

from ..evaluation import score
from .options import handle_errors, print_json, printable


def _mapping(ctx, param, values):
    pairs = {}
    for value in values:
        if "=" not in value:
            raise click.BadParameter(f"{value!r}: write NAME=NEW")
        name, new = value.split("=", 1)
        pairs[name] = new
    return pairs


@click.command("score")
@click.argument("prediction", type=click.Path(dir_okay=False))
@click.option("--truth", required=True, type=click.Path(dir_okay=False),
              help="Ground truth: a label raster, or polygons with a class column (any OGR format, any CRS).")
@click.option("--class-field", help="Class column of vector truth [default: detected].")
@click.option("--truth-crs", help="CRS of vector truth, overriding what it declares.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False),
              help="JSON naming the truth raster's class ids (or colours).")
@click.option("--map", "mapping", multiple=True, callback=_mapping,
              help="Rename a class of the truth or the prediction: NAME=NEW (repeatable; several names may "
                   "map to one).")
@click.option("--background", help="With vector truth: the class of pixels outside every polygon "
                                   "[default: ignored].")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@handle_errors
def score_command(prediction, truth, class_field, truth_crs, classes_file, mapping, background, as_json):
    """Compare the class raster PREDICTION with ground truth: overall accuracy, kappa, per-class F1 and
    IoU, and the confusion matrix, from one confusion matrix over all pixels."""
    report = score(prediction, truth, class_field, background, mapping, truth_crs, classes_file)
    if as_json:
        print_json(report)
        return
    names = report["class_names"]
    click.echo(f"overall accuracy {report['overall_accuracy']}  kappa {report['kappa']}  "
               f"mean IoU {report['mean_iou']}  mean F1 {report['mean_f1']}")
    click.echo(f"{'class':>16} {'F1':>8} {'IoU':>8} {'pixels':>10}")
    for name in names:
        c = report["classes"][name]
        click.echo(f"{printable(name):>16} {_fmt(c['f1'])} {_fmt(c['iou'])} {c['pixels']:>10}")
    click.echo("confusion (rows: truth, columns: predicted):")
    for name, row in zip(names, report["confusion"]):
        click.echo(f"{printable(name):>16} " + " ".join(f"{v:>10}" for v in row))


def _fmt(value) -> str:
    return f"{value:8.4f}" if value is not None else f"{'n/a':>8}"
