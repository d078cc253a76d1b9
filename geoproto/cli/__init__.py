"""The ``geoproto`` command: one module per subcommand, each a thin wrapper over the library."""

import click

from .. import __version__
from .check_support import check_support_command
from .evaluate import evaluate_command
from .score import score_command
from .segment import segment_command
from .train import train_command


@click.group()
@click.version_option(__version__, prog_name="geoproto")
def main():
    """Few-shot land-cover segmentation of orthophotos from a few labelled polygons."""


main.add_command(segment_command)
main.add_command(train_command)
main.add_command(evaluate_command)
main.add_command(score_command)
main.add_command(check_support_command)
