"""Options shared by several subcommands, and the error handling every command goes through."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import signal
import sys
import warnings

import click
from rasterio.errors import NotGeoreferencedWarning

from ..crf import BACKENDS, DEFAULT_BACKEND
from ..crossval import SWITCH_CONFIDENCE
from ..errors import EMPTY_PATH, GeoprotoError, GeoprotoWarning
from ..heads import DEFAULT_ORIENTATIONS, ORIENTATIONS
from ..validation import DEFAULT_ALPHA, MAX_WORKERS, check_number
from ..models import BACKBONES, DEFAULT_BACKBONE, DEFAULT_ENCODER, shipped_names
from ..progress import stderr_is_terminal
from ..segment import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, SCORING_CHOICES, SEGMENT_RANGES, STRETCH_CHOICES
from ..training import DATASETS


class Interrupted(Exception):
    """Raised from a signal handler so that clean-up code runs before the process exits."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def printable(text) -> str:
    """``text`` with control and formatting characters escaped: class names and paths come from user
    files, and a raw escape code printed to a terminal can rewrite what the user sees."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in str(text))


def handle_errors(command):
    """One-line errors and exit codes instead of tracebacks (unless ``--debug``); SIGTERM cleans up too."""

    @functools.wraps(command)
    def wrapper(*args, debug: bool = False, **kwargs):
        signal.signal(signal.SIGTERM, _raise_interrupted)
        warnings.showwarning = _show_warning
        # Rasters without a CRS are handled explicitly (pixel space, or --assume-crs).
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            return command(*args, **kwargs)
        except GeoprotoError as exc:
            if debug:
                raise
            raise click.ClickException(printable(cli_message(exc))) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except Interrupted as exc:
            click.echo(f"Interrupted ({exc}).", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.ClickException:
            raise
        except BrokenPipeError as exc:
            if debug:
                raise
            if not _stdout_reader_gone():  # another pipe (a worker's, a socket): unexpected
                raise click.ClickException(_unexpected(exc)) from None
            _stop_writing_stdout()
            sys.exit(128 + signal.SIGPIPE)
        except MemoryError:
            if debug:
                raise
            raise click.ClickException("out of memory; try a smaller --tile-size or --batch-size (or --crop, "
                                       "--shots in train), or fewer --workers") from None
        except Exception as exc:  # unexpected: still one line, with the way to see more
            if debug:
                raise
            raise click.ClickException(_unexpected(exc)) from None

    return click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")(wrapper)


def _unexpected(exc: Exception) -> str:
    return f"unexpected {type(exc).__name__}: {printable(exc)} (rerun with --debug for details)"


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (the kernel flags its write end with POLLERR); a
    stdout without a descriptor (click's test runner) has no reader to lose."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _stop_writing_stdout() -> None:
    """The reader of stdout left (``geoproto score ... | head``): the command ends quietly with SIGPIPE's
    exit code, as ``cat`` would, and Python's final flush of stdout must not report the closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a descriptor (click's test runner)
        pass


def cli_message(exc: GeoprotoError) -> str:
    """The error as the command line says it: the option that sets the parameter at fault, not the
    library's parameter name (``--tile-size: ...`` rather than ``tile_size: ...``), and likewise for the
    other parameters the message mentions."""
    message = _named_options(exc.message, exc.mentions)
    return f"{option_hint(exc.param)}: {message}" if exc.param else message


def _named_options(message: str, mentions: tuple[str, ...]) -> str:
    """``message`` with each parameter name of ``mentions`` replaced by the option that sets it."""
    for name in mentions:
        # As a word, not inside a path (/data/image.tif) or another name (support_image).
        message = re.sub(rf"(?<![\w./\\-]){re.escape(name)}(?![\w./\\-])", option_hint(name), message)
    return message


def _show_warning(message, *rest, **kwargs) -> None:
    """Warnings on stderr as one line (none with --quiet), parameters named as options."""
    if verbosity() >= 0:
        text = _named_options(message.message, message.mentions) if isinstance(message, GeoprotoWarning) \
            else str(message)
        click.echo(f"Warning: {printable(text)}", err=True)


def option_hint(param: str) -> str:
    """How the running command spells the library parameter ``param``: the flag of the option whose
    name it is (``overwrite`` -> ``--overwrite``, ``classes_file`` -> ``--classes``) or the option
    spelled after it (``classes`` -> ``--classes``), the metavar of such an argument, else ``param``."""
    ctx = click.get_current_context(silent=True)
    params = ctx.command.params if ctx is not None else []
    flag = "--" + param.replace("_", "-")
    for match in ([p for p in params if p.name == param], [p for p in params if flag in getattr(p, "opts", ())]):
        if match:
            option = match[0]
            if isinstance(option, click.Option):
                return max(option.opts, key=len)
            return option.human_readable_name
    return param


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user set the parameter ``name`` (on the command line or through the environment)."""
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def command_line(ctx: click.Context) -> str:
    """The invocation, rebuilt from the arguments and the options the user set, to record how a result
    was made."""
    words = ["geoproto", ctx.info_name]
    for param in ctx.command.params:
        if isinstance(param, click.Argument):
            value = ctx.params[param.name]
            words += [shlex.quote(str(v)) for v in (value if isinstance(value, (list, tuple)) else [value])]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("debug", "quiet", "as_json"):
            continue
        if not _given(ctx, param.name):
            continue
        value = ctx.params[param.name]
        if param.is_flag:
            names = param.opts if value else param.secondary_opts
            words += names[:1]
        elif isinstance(value, dict):
            for name, setting in value.items():
                words += [param.opts[0], shlex.quote(f"{name}={setting}")]
        elif isinstance(value, (list, tuple)):
            words += [param.opts[0], ",".join(map(str, value))]
        elif value is not None:
            words += [param.opts[0], shlex.quote(str(value))]
    return " ".join(words)


def verbosity() -> int:
    """-v/-q counted on the ``geoproto`` group: 0 by default, below 0 when asked to be quiet."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return (root.obj or {}).get("verbosity", 0) if root is not None else 0


def show_progress(quiet: bool) -> bool:
    """A progress bar only for a person watching: not with -q, nor when stderr is a file or a pipe (its
    carriage-return frames would fill a log)."""
    return not quiet and verbosity() >= 0 and stderr_is_terminal()


def not_stdio(ctx, param, value):
    """Refuse ``-`` and an empty path (alone or among the values of a repeated option or argument): every
    input and output here is a file GDAL opens or writes by name, and an empty one would otherwise be
    reported as a file called "" (``: no such file``) or as the current folder. An option whose bare flag
    means "the default name" (``--vector``) receives "" for it, and keeps it."""
    values = value if isinstance(value, (tuple, list)) else (value,)
    if "-" in values:
        raise click.BadParameter("'-' (standard input/output) is not supported here; give a file name")
    if "" in values and getattr(param, "flag_value", None) != "":
        raise click.BadParameter(EMPTY_PATH)
    return value


def parse_pairs(ctx, param, values) -> dict[str, str]:
    """Repeated NAME=VALUE options as a dict; a NAME given twice is refused (``--co COMPRESS=ZSTD --co
    COMPRESS=LZW``, ``--map tree=a --map tree=b``), not the last kept silently."""
    pairs = {}
    for value in values:
        if "=" not in value:
            raise click.BadParameter(f"{value!r}: write NAME=VALUE")
        name, setting = value.split("=", 1)
        if name in pairs:
            raise click.BadParameter(f"{name!r} is given twice ({name}={pairs[name]}, {value}); give it once")
        pairs[name] = setting
    return pairs


def print_json(summary: dict) -> None:
    click.echo(json.dumps(summary, indent=2))


class Number(click.ParamType):
    """A number option that must be finite and within bounds (click's FloatRange lets NaN and infinity
    through). The bounds are checked by ``validation.check_number``, as the library checks them."""

    def __init__(self, minimum: float | None = None, maximum: float | None = None, min_open: bool = False,
                 integer: bool = False):
        self.bounds = dict(minimum=minimum, maximum=maximum, min_open=min_open, integer=integer)
        self.name = "integer" if integer else "float"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(value, 10) if self.bounds["integer"] else float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not {'a whole number' if self.bounds['integer'] else 'a number'}.",
                          param, ctx)
        try:
            return check_number("value", number, **self.bounds)
        except GeoprotoError as exc:
            self.fail(f"{exc.message}.", param, ctx)

    def get_metavar(self, param, ctx=None):
        return "INTEGER" if self.bounds["integer"] else "FLOAT"


def integer(minimum: int | None = None, maximum: int | None = None) -> Number:
    return Number(minimum, maximum, integer=True)


def number(minimum: float | None = None, maximum: float | None = None, min_open: bool = False) -> Number:
    return Number(minimum, maximum, min_open)


def parse_bands(ctx, param, value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter("give band numbers separated by commas, e.g. 4,3,2") from None


def integer_list(minimum: int, maximum: int | None = None):
    """A callback parsing a comma-separated list of distinct whole numbers within bounds (e.g. --seeds
    0,1,2): a repeated seed would count one run twice in the mean and shrink the spread."""
    def parse(ctx, param, value: str | None) -> list[int] | None:
        if value is None:
            return None
        if not value.strip():  # --seeds "$SEEDS" with SEEDS unset: not "no seeds"
            raise click.BadParameter("empty; give whole numbers separated by commas, e.g. 1,2,3")
        try:
            numbers = [check_number("value", int(v, 10), minimum, maximum, integer=True) for v in value.split(",")]
        except ValueError:
            raise click.BadParameter(f"{value!r}: give whole numbers separated by commas, e.g. 1,2,3") from None
        except GeoprotoError as exc:
            raise click.BadParameter(f"each {exc.message}") from None
        repeated = sorted({n for n in numbers if numbers.count(n) > 1})
        if repeated:
            raise click.BadParameter(f"{value!r}: {repeated[0]} is given twice; give each once")
        return numbers
    return parse


# Each option several commands share is declared once, as one named decorator; groups of options that
# always travel together are one decorator too (rio's ``options.py`` layout).

def _chain(*decorators):
    """One decorator applying ``decorators`` so that their options are listed in the order given."""
    def decorate(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return decorate


def _given_or_none(ctx, param, value):
    """The option's value if the user gave it, else None (the library then picks: ``SegmentOptions.alpha``,
    ``encoder``)."""
    return value if _given(ctx, param.name) else None


def _encoder_option(auto: bool):
    """``--encoder``: a shipped encoder by name, and ``auto`` where there are support polygons to choose on."""
    return click.option(
        "--encoder", type=click.Choice(["auto", *shipped_names()] if auto else shipped_names()),
        default=DEFAULT_ENCODER, show_default=True, callback=_given_or_none,
        help="Shipped encoder" + (f"; auto cross-validates each on the support polygons and leaves the default "
                                  f"only for one that beats it in {SWITCH_CONFIDENCE:.0%} of the bootstrap "
                                  f"resamples. segment --prototypes uses the file's own unless --encoder is given."
                                  if auto else "."))


backbone_option = click.option("--backbone", type=click.Choice(list(BACKBONES)), default=DEFAULT_BACKBONE,
                               show_default=True, help="Encoder architecture.")
checkpoint_option = click.option("--checkpoint", type=click.Path(dir_okay=False), callback=not_stdio,
                                 help="A trained geoproto checkpoint (it names its own backbone: --backbone is "
                                      "ignored).")
init_weights_option = click.option("--init-weights", type=click.Path(dir_okay=False), callback=not_stdio,
                                   help="ImageNet trunk weights in torchvision's layout (resnet50, vgg16).")
bands_option = click.option("--bands", callback=parse_bands,
                            help="1 or 3 band numbers, e.g. 4,3,2 [default: first three].")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True)
batch_size_option = click.option("--batch-size", type=Number(1, integer=True),
                                 help="Windows per batch [default: 1 on CPU, 16 on CUDA].")
encoder_options = _chain(_encoder_option(auto=True), backbone_option, checkpoint_option, init_weights_option)
"""Which encoder: a shipped one by name (or auto, chosen on the support polygons), or an architecture with
a checkpoint or ImageNet weights."""
evaluated_encoder_options = _chain(_encoder_option(auto=False), backbone_option, checkpoint_option,
                                   init_weights_option)
"""``encoder_options`` without auto, which needs support polygons (evaluate has labelled patches)."""
encoding_options = _chain(encoder_options, bands_option, device_option, batch_size_option)
"""The encoder, the image bands it reads, and where and in what batches it runs (segment, check-support)."""

tile_size_option = click.option("--tile-size", type=integer(*SEGMENT_RANGES["tile_size"][:2]),
                                default=DEFAULT_TILE_SIZE, show_default=True)
overlap_option = click.option("--overlap", type=integer(*SEGMENT_RANGES["overlap"][:2]), default=DEFAULT_OVERLAP,
                              show_default=True,
                              help="Pixels shared by neighbouring windows; the overlap is cropped when stitching.")
window_options = _chain(tile_size_option, overlap_option)
"""The window grid features are computed on (segment, prototypes)."""
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace existing output files.")

workers_option = click.option("--workers", type=Number(0, MAX_WORKERS, integer=True),
                              help="DenseCRF worker processes for --crf-backend densecrf [default: one per core; "
                                   "0: none].")
crf_backend_option = click.option(
    "--crf-backend", type=click.Choice(list(BACKENDS)), default=DEFAULT_BACKEND, show_default=True,
    help="DenseCRF implementation, the same CRF either way: torch (batched on the model's device) or "
         "densecrf (pydensecrf2, pip install 'geoproto[crf]'; one process per core); auto: torch, the faster "
         "on a CPU too.")


alpha_option = click.option(
    "--alpha", type=Number(*SEGMENT_RANGES["alpha"]), default=DEFAULT_ALPHA, show_default=True,
    callback=_given_or_none,
    help="Softmax scale of the cosine similarities. A prototype file records the one it was made at; segment "
         "--prototypes uses it unless --alpha is given (a linear head's weights are then rescaled by the ratio).")
"""``--alpha`` of ``segment`` and ``prototypes``; None when not given, so that a prototype file's own applies."""


stretch_option = click.option(
    "--stretch", type=click.Choice(STRETCH_CHOICES), default="shared", show_default=True,
    help="16-bit or float bands: shared stretches several rasters with one 2-98 % stretch pooled over them "
         "(tiles of one orthophoto scale as the whole would), and rasters scored with a prototype file as its "
         "supports were; per-input gives each raster its own (unrelated scenes).")
"""``--stretch`` of ``segment``, ``prototypes`` and ``check-support``."""


def scoring_option(help_text: str):
    """``--scoring`` (``segment``'s variants, default auto), with the command's own help."""
    return click.option("--scoring", type=click.Choice(SCORING_CHOICES), default="auto", show_default=True,
                        help=help_text)


ORIENTATIONS_IN_FILES = " A prototype file records its own, which segment --prototypes uses."


def orientations_option(more_help: str = "", none_unless_given: bool = False):
    """``--orientations`` (``heads.ORIENTATIONS``), with the command's own words after the shared help.
    ``none_unless_given``: None when not given (``segment``: a prototype file's own, and a clash with it noticed
    only when asked for)."""
    def as_number(ctx, param, value):
        value = _given_or_none(ctx, param, value) if none_unless_given else value
        return None if value is None else int(value)

    return click.option(
        "--orientations", type=click.Choice([str(n) for n in ORIENTATIONS]), default=str(DEFAULT_ORIENTATIONS),
        show_default=True, callback=as_number,
        help="Average each window's features over this many orientations of it, support and queries alike (aerial "
             "imagery has no up nor down): 2 adds its mirror image, 4 every flip, 8 every flip of it and of its "
             "transpose. The encoder runs that many times per window." + more_help)


dataset_options = _chain(
    click.option("--dataset", type=click.Choice(DATASETS), required=True,
                 help="Layout of --root: ISPRS downloads, VOC2012 + SegmentationClassAug, or images/ + masks/."),
    click.option("--root", required=True, type=click.Path(file_okay=False), callback=not_stdio,
                 help="The dataset's folder."),
    click.option("--city", type=click.Choice(["vaihingen", "potsdam"]), default="vaihingen", show_default=True,
                 help="ISPRS city."),
    click.option("--isprs-bands", "bands", type=click.Choice(["IRRG", "RGB"], case_sensitive=False), default="IRRG",
                 show_default=True, help="ISPRS image bands (Potsdam has both)."),
    click.option("--eroded", is_flag=True, help="ISPRS: use the eroded-boundary ground truth."),
    click.option("--downsample", type=Number(1, 64, integer=True), help="ISPRS: read at 1/N resolution [Potsdam: 2]."),
    click.option("--fold", type=Number(0, 3, integer=True), help="PASCAL-5i fold (its 5 classes are unseen)."),
    click.option("--split", type=click.Path(dir_okay=False), callback=not_stdio,
                 help="JSON of split name -> image names."),
    click.option("--holdout", help="folder: regular expression of image names forming the test split."),
)
"""The labelled dataset ``train`` and ``evaluate`` read (``training.load_dataset``'s arguments)."""

support_options = _chain(
    click.option("--class-field", help="Vector field holding the class [default: detected]."),
    click.option("--layer", help="Vector layer, for files with several."),
    click.option("--support-crs", help="CRS of the support vector, overriding what it declares (e.g. EPSG:32616)."),
    click.option("--assume-crs", help="CRS of a raster that has none."),
    click.option("--classes", "classes_file", type=click.Path(dir_okay=False), callback=not_stdio,
                 help="JSON file of class ids, names and colours (for label rasters and numeric codes)."),
    click.option("--buffer", type=Number(0), default=0.0,
                 help="Buffer point and line support by this distance (raster CRS units, e.g. metres)."),
    click.option("--support-image", type=click.Path(dir_okay=False), callback=not_stdio,
                 help="Raster the support labels belong to, when it is not IMAGE (prototypes from other imagery)."),
)
"""How the support labels are read and placed on the raster."""

quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar nor closing message.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")

