"""``geoproto evaluate``: the paper's evaluation protocol on a labelled dataset."""

from __future__ import annotations

import json
import warnings

import click

from ..crf import CRF_RANGES, MIN_BILATERAL_PX, floor_warning, kernel_at_floor, params_for_resolution
from ..evaluation import DEFAULT_SEEDS, evaluate, evaluated_classes, format_table
from ..heads import VARIANTS
from ..models import select_encoder
from ..models.runtime import resolve_device
from ..models.shipped import refuse_two_encoders
from ..output import StagedOutputs
from ..training import check_dataset_settings, load_dataset
from ..training.trainer import TRAIN_RANGES
from .options import (crf_backend_option, dataset_options, device_option, evaluated_encoder_options, handle_errors,
                      integer, integer_list, json_option, not_stdio, number, orientations_option, overwrite_option,
                      print_json, printable, quiet_option, show_progress)


@click.command("evaluate")
@dataset_options
@evaluated_encoder_options
@click.option("--shots", type=integer(1, 1000), default=5, show_default=True, help="Support patches per run.")
@click.option("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), callback=integer_list(*TRAIN_RANGES["seed"][:2]),
              show_default=f"{DEFAULT_SEEDS[0]},{DEFAULT_SEEDS[1]},...,{DEFAULT_SEEDS[-1]}",
              help=f"Comma-separated seeds (one run each, its own support draw). Draws can differ more than "
                   f"settings do: compare settings over {len(DEFAULT_SEEDS)} or more.")
@click.option("--class-names", help="Evaluate only these classes (comma-separated names).")
@click.option("--scoring", type=click.Choice(list(VARIANTS)), default="prototypes", show_default=True,
              help="How queries are scored, as segment --scoring names it: the paper's prototypes, multiscale "
                   "(features at 1x and 2x), linear (a head fitted on the shots) or both.")
@orientations_option()
@click.option("--crf/--no-crf", default=True, show_default=True)
@crf_backend_option
@click.option("--pixel-size", type=number(0, 1e4, min_open=True), metavar="METRES",
              help="Ground size of a pixel as read, for the CRF's kernels as segment sets them [default: the "
                   "dataset's (ISPRS: 9 cm Vaihingen, 10 cm Potsdam as halved) or its georeferencing; without "
                   f"either, the rule's floor of {MIN_BILATERAL_PX:g} px].")
@click.option("--crf-bilateral-px", type=number(*CRF_RANGES["bilateral_sxy"]),
              help="Bilateral kernel width in pixels [default: the resolution rule's, crf.params_for_resolution].")
@click.option("--train-split", default="train", show_default=True, help="Split the supports come from.")
@click.option("--test-split", default="test", show_default=True, help="Split the queries come from.")
@device_option
@click.option("--report", type=click.Path(dir_okay=False), callback=not_stdio,
              help="Also write the full report as JSON to this file.")
@overwrite_option
@quiet_option
@json_option
@handle_errors
def evaluate_command(dataset, root, city, bands, eroded, downsample, fold, split, holdout, encoder, backbone,
                     checkpoint, init_weights, shots, seeds, class_names, scoring, orientations, crf, crf_backend,
                     pixel_size, crf_bilateral_px, train_split, test_split, device, report, overwrite, quiet, as_json):
    """Score an encoder with the paper's protocol: 417x417 test patches as queries, K random training
    patches covering the classes as supports, repeated over seeds (mean ± std)."""
    # The report path is checked before the (long) evaluation, and never replaces one of its inputs.
    staged = StagedOutputs(overwrite, inputs={"checkpoint": checkpoint, "init_weights": init_weights,
                                              "split": split})
    with staged:
        report_tmp = staged.stage(report, "report") if report else None
        refuse_two_encoders(encoder, backbone, checkpoint, init_weights)
        check_dataset_settings(dataset, fold=fold)
        names = evaluated_classes(fold, class_names.split(",") if class_names else None)
        data = load_dataset(dataset, root, city=city, bands=bands, eroded=eroded, downsample=downsample,
                            split=split, holdout=holdout)
        model, info = select_encoder(encoder, backbone, checkpoint, init_weights)
        pixel_size = pixel_size or data.pixel_size_m
        overrides = {"bilateral_sxy": crf_bilateral_px} if crf_bilateral_px else {}
        if crf and kernel_at_floor(pixel_size, overrides):
            warnings.warn(floor_warning(root or dataset, pixel_size_param="pixel_size"))
        result = evaluate(data, model, shots, seeds, names, crf,
                          resolve_device(device), train_split, test_split,
                          crf_params=params_for_resolution(pixel_size, **overrides),
                          progress=show_progress(quiet), crf_backend=crf_backend, scoring=scoring,
                          orientations=orientations)
        result["encoder"] = info
        if report_tmp:
            with open(report_tmp, "w", encoding="utf-8") as handle:
                json.dump(result, handle, indent=2)
            staged.commit()
    if as_json:
        print_json(result)
    else:
        click.echo(printable(format_table(result)))
