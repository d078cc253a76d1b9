"""Options shared by several subcommands, and the error handling every command goes through."""

from __future__ import annotations

import functools
import json
import shlex
import signal
import sys
import warnings

import click
from rasterio.errors import NotGeoreferencedWarning

from ..crf import BACKENDS, DEFAULT_BACKEND
from ..errors import GeoprotoError
from ..models import BACKBONES, DEFAULT_BACKBONE, DEFAULT_ENCODER, shipped_names


class Interrupted(Exception):
    """Raised from a signal handler so that clean-up code runs before the process exits."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def handle_errors(command):
    """One-line errors and exit codes instead of tracebacks (unless ``--debug``); SIGTERM cleans up too."""

    @functools.wraps(command)
    def wrapper(*args, debug: bool = False, **kwargs):
        signal.signal(signal.SIGTERM, _raise_interrupted)
        warnings.showwarning = lambda message, *rest, **kw: click.echo(f"Warning: {message}", err=True)
        # Rasters without a CRS are handled explicitly (pixel space, or --assume-crs).
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            return command(*args, **kwargs)
        except GeoprotoError as exc:
            if debug:
                raise
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except Interrupted as exc:
            click.echo(f"Interrupted ({exc}).", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.ClickException:
            raise
        except Exception as exc:  # unexpected: still one line, with the way to see more
            if debug:
                raise
            raise click.ClickException(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)")

    return click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")(wrapper)


def command_line(ctx: click.Context) -> str:
    """The invocation, rebuilt from the options the user set, to record how a result was made."""
    from click.core import ParameterSource

    words = ["geoproto", ctx.info_name]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("debug", "quiet", "as_json"):
            continue
        if ctx.get_parameter_source(param.name) in (ParameterSource.DEFAULT, None):
            continue
        value = ctx.params[param.name]
        if param.is_flag:
            names = param.opts if value else param.secondary_opts
            words += names[:1]
        elif isinstance(value, (list, tuple)):
            words += [param.opts[0], ",".join(map(str, value))]
        elif value is not None:
            words += [param.opts[0], shlex.quote(str(value))]
    return " ".join(words)


def print_json(summary: dict) -> None:
    click.echo(json.dumps(summary, indent=2))


def parse_bands(ctx, param, value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter("give band numbers separated by commas, e.g. 4,3,2") from None


encoder_options = [
    click.option("--encoder", type=click.Choice(["auto", *shipped_names()]), default=DEFAULT_ENCODER, show_default=True,
                 help="Shipped encoder; auto cross-validates each on the support polygons and keeps the best."),
    click.option("--backbone", type=click.Choice(list(BACKBONES)), default=DEFAULT_BACKBONE, show_default=True,
                 help="Encoder architecture (ignored with --checkpoint, which names its own)."),
    click.option("--checkpoint", type=click.Path(dir_okay=False), help="A trained geoproto checkpoint."),
    click.option("--init-weights", type=click.Path(dir_okay=False),
                 help="ImageNet trunk weights in torchvision's layout (resnet50, vgg16)."),
    click.option("--bands", callback=parse_bands, help="1 or 3 band numbers, e.g. 4,3,2 [default: first three]."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    click.option("--batch-size", type=click.IntRange(1), help="Windows per batch [default: 1 on CPU, 16 on CUDA]."),
]
workers_option = click.option("--workers", type=click.IntRange(0),
                              help="DenseCRF worker processes for --crf-backend densecrf [default: one per core; "
                                   "0: none].")
crf_backend_option = click.option(
    "--crf-backend", type=click.Choice(list(BACKENDS)), default=DEFAULT_BACKEND, show_default=True,
    help="DenseCRF implementation, the same CRF either way: torch (batched on the model's device) or "
         "densecrf (pydensecrf2, pip install 'geoproto[crf]'; one process per core); auto: torch on a GPU, "
         "densecrf on a CPU where it is installed.")

dataset_options = [
    click.option("--dataset", type=click.Choice(["isprs", "pascal5i", "folder"]), required=True,
                 help="Layout of --root: ISPRS downloads, VOC2012 + SegmentationClassAug, or images/ + masks/."),
    click.option("--root", required=True, type=click.Path(file_okay=False), help="The dataset's folder."),
    click.option("--city", type=click.Choice(["vaihingen", "potsdam"]), default="vaihingen", show_default=True,
                 help="ISPRS city."),
    click.option("--bands", type=click.Choice(["IRRG", "RGB"], case_sensitive=False), default="IRRG",
                 show_default=True, help="ISPRS image bands (Potsdam has both)."),
    click.option("--eroded", is_flag=True, help="ISPRS: use the eroded-boundary ground truth."),
    click.option("--dsm", is_flag=True, help="ISPRS: add the DSM as a channel (backbones with a 4-band stem)."),
    click.option("--downsample", type=click.IntRange(1), help="ISPRS: read at 1/N resolution [Potsdam: 2]."),
    click.option("--fold", type=click.IntRange(0, 3), help="PASCAL-5i fold (its 5 classes are unseen)."),
    click.option("--split", type=click.Path(dir_okay=False), help="JSON of split name -> image names."),
    click.option("--holdout", help="folder: regular expression of image names forming the test split."),
]

support_options = [
    click.option("--class-field", help="Vector field holding the class [default: detected]."),
    click.option("--layer", help="Vector layer, for files with several."),
    click.option("--support-crs", help="CRS of the support vector, overriding what it declares (e.g. EPSG:32616)."),
    click.option("--assume-crs", help="CRS of a raster that has none."),
    click.option("--classes", "classes_file", type=click.Path(dir_okay=False),
                 help="JSON of class ids, names and colours (for label rasters and numeric codes)."),
    click.option("--buffer", type=click.FloatRange(min=0), default=0.0,
                 help="Buffer point and line support by this distance (raster CRS units, e.g. metres)."),
    click.option("--support-image", type=click.Path(dir_okay=False),
                 help="Raster the support labels belong to, when it is not IMAGE (prototypes from other imagery)."),
]

quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")


def apply(options):
    """Decorate a command with a list of options, in order."""
    def decorator(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorator
