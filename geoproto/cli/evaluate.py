"""``geoproto evaluate``: the paper's evaluation protocol on a labelled dataset."""

from __future__ import annotations

import json

import click

from ..crf import CRFParams
from ..evaluation import evaluate, format_table
from ..models import select_encoder
from ..segment import resolve_device
from ..training import load_dataset
from .options import apply, crf_backend_option, dataset_options, encoder_options, handle_errors, quiet_option


@click.command("evaluate")
@apply(dataset_options)
@apply(encoder_options[:4])
@click.option("--shots", type=click.IntRange(1), default=5, show_default=True, help="Support patches per run.")
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Comma-separated seeds (one run each).")
@click.option("--classes", "class_names", help="Evaluate only these classes (comma-separated names).")
@click.option("--crf/--no-crf", default=True, show_default=True)
@crf_backend_option
@click.option("--crf-bilateral-px", type=float, default=CRFParams.bilateral_sxy, show_default=True,
              help="Bilateral kernel width in pixels (the paper's 80 for 9 cm imagery).")
@click.option("--train-split", default="train", show_default=True, help="Split the supports come from.")
@click.option("--test-split", default="test", show_default=True, help="Split the queries come from.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
@quiet_option
@handle_errors
def evaluate_command(dataset, root, city, bands, eroded, dsm, downsample, fold, split, holdout, encoder, backbone,
                     checkpoint, init_weights, shots, seeds, class_names, crf, crf_backend, crf_bilateral_px, train_split,
                     test_split, device, json_path, quiet):
    """Score an encoder with the paper's protocol: 417x417 test patches as queries, K random training
    patches covering the classes as supports, repeated over seeds (mean ± std)."""
    data = load_dataset(dataset, root, city=city, bands=bands, eroded=eroded, dsm=dsm, downsample=downsample,
                        split=split, holdout=holdout)
    model, info = select_encoder(encoder, backbone, checkpoint, init_weights)
    try:
        seed_list = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise click.BadParameter("comma-separated integers", param_hint="--seeds") from None
    report = evaluate(data, model, shots, seed_list, class_names.split(",") if class_names else None, crf,
                      resolve_device(device), train_split, test_split,
                      crf_params=CRFParams(bilateral_sxy=crf_bilateral_px), progress=not quiet,
                      crf_backend=crf_backend)
    report["encoder"] = info
    click.echo(format_table(report))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
