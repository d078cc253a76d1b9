"""``geoproto train``: episodic training on ISPRS, PASCAL-5i or any labelled folder."""

from __future__ import annotations

import click

from ..training import TrainConfig, build_samplers, check_dataset_settings, check_run_folder, load_dataset, train
from ..training.trainer import TRAIN_RANGES
from .options import (backbone_option, command_line, dataset_options, device_option, handle_errors, init_weights_option,
                      integer, integer_list, json_option, not_stdio, number, print_json, printable,
                      quiet_option, show_progress)

_DEFAULTS = TrainConfig()


@click.command("train")
@dataset_options
@click.option("--train-classes", help="Class names episodes are drawn from (comma-separated) [default: all "
                                      "but --test-classes].")
@click.option("--test-classes", help="Class names held out of training (their pixels are ignored), used for "
                                     "validation episodes.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), callback=not_stdio,
              help="Run folder.")
@backbone_option
@init_weights_option
@click.option("--head/--no-head", default=_DEFAULTS.head, show_default=True,
              help="Train the paper's 3x3 conv head to 256 channels (else the L2-normalised stages).")
@click.option("--ways", type=integer(*TRAIN_RANGES["ways"][:2]), default=_DEFAULTS.ways, show_default=True)
@click.option("--shots", type=integer(*TRAIN_RANGES["shots"][:2]), default=_DEFAULTS.shots, show_default=True)
@click.option("--queries", type=integer(*TRAIN_RANGES["queries"][:2]), default=_DEFAULTS.queries, show_default=True)
@click.option("--crop", type=integer(*TRAIN_RANGES["crop"][:2]), default=_DEFAULTS.crop, show_default=True)
@click.option("--iterations", type=integer(*TRAIN_RANGES["iterations"][:2]),
              default=_DEFAULTS.iterations, show_default=True)
@click.option("--lr", type=number(*TRAIN_RANGES["lr"]), default=_DEFAULTS.lr, show_default=True)
@click.option("--lr-milestones", callback=integer_list(1),
              help="Iterations at which the learning rate is multiplied by --lr-gamma [default: 1/3 and 2/3 of the "
                   "run].")
@click.option("--lr-gamma", type=number(*TRAIN_RANGES["lr_gamma"]), default=_DEFAULTS.lr_gamma, show_default=True)
@click.option("--align/--no-align", default=_DEFAULTS.align, show_default=True,
              help="Add PANet's prototype alignment loss.")
@click.option("--alpha", type=number(*TRAIN_RANGES["alpha"]), default=_DEFAULTS.alpha, show_default=True)
@click.option("--seed", type=integer(*TRAIN_RANGES["seed"][:2]), default=_DEFAULTS.seed, show_default=True)
@click.option("--checkpoint-every", type=integer(*TRAIN_RANGES["checkpoint_every"][:2]),
              default=_DEFAULTS.checkpoint_every, show_default=True)
@click.option("--val-every", type=integer(*TRAIN_RANGES["val_every"][:2]),
              default=_DEFAULTS.val_every, show_default=True)
@click.option("--val-episodes", type=integer(*TRAIN_RANGES["val_episodes"][:2]),
              default=_DEFAULTS.val_episodes, show_default=True)
@click.option("--val-split", default="test", show_default=True,
              help="Split validation episodes come from (none: no validation).")
@click.option("--workers", type=integer(*TRAIN_RANGES["workers"][:2]), default=_DEFAULTS.workers, show_default=True,
              help="Processes preparing episodes.")
@device_option
@click.option("--resume", is_flag=True, help="Continue the run in --output where it stopped.")
@click.option("--overwrite", is_flag=True, help="Start again in an --output that holds a run, removing its files.")
@quiet_option
@json_option
@handle_errors
def train_command(dataset, root, city, bands, eroded, downsample, fold, split, holdout, train_classes,
                  test_classes, output, val_split, resume, overwrite, quiet, as_json, lr_milestones, **settings):
    """Train the encoder on C-way K-shot episodes and write checkpoints for `segment --checkpoint`."""
    check_dataset_settings(dataset, fold=fold)
    config = TrainConfig(lr_milestones=lr_milestones or [], **settings)
    check_run_folder(config, output, resume, overwrite)  # before the dataset is read: minutes on PASCAL
    data = load_dataset(dataset, root, city=city, bands=bands, eroded=eroded, downsample=downsample,
                        split=split, holdout=holdout)
    train_sampler, val_sampler = build_samplers(data, config, train_classes, test_classes, fold, val_split)
    metadata = {"command": command_line(click.get_current_context()),
                "dataset": {"kind": dataset, "root": root, "name": data.name, "city": city, "fold": fold,
                            "train_images": [s.name for s in train_sampler.samples]}}
    summary = train(train_sampler, val_sampler, config, output, resume=resume, metadata=metadata,
                    progress=show_progress(quiet), overwrite=overwrite)
    if as_json:
        print_json(summary)
    elif not quiet:
        click.echo(f"Trained {summary['iterations']} episodes in {summary['seconds']:.0f} s; "
                   f"checkpoints in {printable(output)}", err=True)
