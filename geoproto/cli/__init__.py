"""The ``geoproto`` command: one module per subcommand, each a thin wrapper over the library.

Subcommand modules (and so torch) are imported only when their command runs or help lists them:
the DenseCRF worker processes re-import the main script, and ``geoproto`` must not cost them torch.
"""

import importlib

import click

from .. import __version__

SUBCOMMANDS = {
    "segment": "segment:segment_command",
    "train": "train:train_command",
    "evaluate": "evaluate:evaluate_command",
    "score": "score:score_command",
    "check-support": "check_support:check_support_command",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module, attribute = SUBCOMMANDS[name].split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="geoproto")
def main():
    """Few-shot land-cover segmentation of orthophotos from a few labelled polygons."""
