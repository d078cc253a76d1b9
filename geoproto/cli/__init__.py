"""The ``geoproto`` command: one module per subcommand, each a thin wrapper over the library.

Subcommand modules (and so torch) are imported only when their command runs or help lists them:
the DenseCRF worker processes re-import the main script, and ``geoproto`` must not cost them torch.
"""

import importlib
import logging
import sys

import click

from .. import __version__

SUBCOMMANDS = {
    "segment": "segment:segment_command",
    "train": "train:train_command",
    "evaluate": "evaluate:evaluate_command",
    "score": "score:score_command",
    "check-support": "check_support:check_support_command",
    "prototypes": "prototypes:prototypes_command",
    "merge-prototypes": "prototypes:merge_prototypes_command",
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

    def invoke(self, ctx):
        """Ctrl-C while a subcommand's module loads (torch takes seconds), before the command's own
        ``handle_errors`` runs, exits 130 as later on, not with click's "Aborted!" and 1."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (click's test runner swaps it)."""

    geoproto = True

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level_offset: int) -> None:
    """Log level from -v/-q (as rio does): WARNING by default, INFO with -v, DEBUG with -vv, ERROR with -q.
    The level is the handler's, so a library raising its own logger's level does not flood stderr."""
    level = max(logging.DEBUG, min(logging.CRITICAL, logging.WARNING - 10 * level_offset))
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "geoproto", False)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="geoproto")
@click.option("--verbose", "-v", count=True, help="More log messages (-vv: debug), for every subcommand.")
@click.option("--quiet", "-q", count=True, help="Fewer messages: no warnings nor progress (-qq: errors only).")
@click.pass_context
def main(ctx, verbose, quiet):
    """Few-shot land-cover segmentation of orthophotos from a few labelled polygons.

    Shell completion (bash): eval "$(_GEOPROTO_COMPLETE=bash_source geoproto)"; zsh: zsh_source, fish:
    fish_source.
    """
    ctx.obj = {"verbosity": verbose - quiet}
    configure_logging(verbose - quiet)
