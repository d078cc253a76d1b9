"""Prototype files (``.gpp``): what a support teaches, saved once and reused on other rasters.

A prototype file is a NumPy ``.npz`` archive (a zip of ``.npy`` arrays) read with ``allow_pickle=False``,
so loading one never runs code. Its members:

- ``header``: UTF-8 JSON (as uint8): format and version, the classes (id, name, colour), the encoder's
  identity (name, description and ``encoder_fingerprint``), and one provenance record per support
  (image, support file and its sha256, bands and input scaling, ground resolution, pixels per class),
  the scoring the file was made for (``scoring``: the ``heads.VARIANTS`` name, its input scales and
  head, and why it was chosen; a file without it holds plain prototypes), and the softmax scale ``alpha``
  it was made at (a linear head's weight holds it; a file without it was made at the default, 20), and the
  ``orientations`` of each window its features were averaged over (``heads.ORIENTATIONS``; without it, 1);
- ``feature_sum`` (K x C float64) and ``pixels`` (K int64): eq. 1's per-class feature sums and labelled
  pixel counts, of the features the scoring uses (1x, or 1x and 2x concatenated: C doubles). Prototypes are
  their ratio; keeping the sums, not the means, lets files pool exactly, pixel-weighted, as if every support
  had been read in one run;
- ``head.NAME`` (float32, optional): the arrays of a head fitted on the support: ``head.weight`` (K x C,
  ``heads.LinearHead``'s) for a linear head.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .classes import MAX_CLASS_ID, ClassInfo, hex_to_rgb, warn_case_twins
from .errors import GeoprotoError, no_such_file, renamed_params
from .validation import DEFAULT_ALPHA, check_alpha

FORMAT = "geoproto-prototypes"
VERSION = 1
HEAD_PREFIX = "head."
SUFFIXES = (".gpp", ".npz")  # what a prototype file may be named: it is an .npz, conventionally .gpp
ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip: anything else is not a prototype file at all
# Prototypes are K x C numbers and a head a few matrices: anything near this size is not a prototype
# file, and a zip declaring more is refused before anything is inflated.
MAX_BYTES = 256 << 20
# Prototypes learnt at one ground resolution describe objects at the scale the encoder saw them; on a
# raster this many times finer or coarser they are matched against objects of another apparent size.
RESOLUTION_TOLERANCE = 2.0


@dataclass
class PrototypeFile:
    """Per-class feature sums and pixel counts with everything needed to trust them on another raster.

    ``encoder`` holds ``name`` (a label), ``fingerprint`` (``encoder_fingerprint``), ``channels`` and
    ``description`` (what the encoder reports of itself); ``sources`` one provenance record per support.
    ``numbered_by_name`` says the class ids were assigned from the sorted class names (vector support
    without a classes file), so a merge may renumber them.
    """

    classes: ClassInfo
    feature_sum: np.ndarray  # K x C float64
    pixels: np.ndarray  # K int64
    encoder: dict
    sources: list[dict]
    numbered_by_name: bool = False
    head: dict[str, np.ndarray] = field(default_factory=dict)
    created: str = ""
    geoproto_version: str = __version__
    path: str | None = None  # where it was loaded from, for messages
    # How windows are scored with it (``scoring_record``); its head's arrays are ``head``.
    scoring: dict = field(default_factory=lambda: scoring_record("prototypes", "plain prototypes (eq. 2)"))
    # The softmax scale it was made at: a linear head's weight is scaled by it (``heads.LinearHead``).
    alpha: float = DEFAULT_ALPHA
    # The orientations of each window its features were averaged over (``heads.OrientedExtractor``): the
    # features it is matched with must be averaged alike.
    orientations: int = 1

    def prototypes(self):
        """K x C float32 prototypes (torch), exactly as ``fewshot.PrototypeAccumulator.prototypes``."""
        import torch

        return (torch.from_numpy(self.feature_sum) / torch.from_numpy(self.pixels).clamp(min=1)[:, None]).float()

    @property
    def pixel_counts(self) -> dict[str, int]:
        return {name: int(p) for name, p in zip(self.classes.names, self.pixels.tolist())}

    @property
    def name(self) -> str:
        return self.path or "prototype file"

    @property
    def variant(self) -> str:
        """The scoring variant (``heads.VARIANTS``) the file was made for."""
        return self.scoring["name"]

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(self.scoring["scales"])

    def header(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "geoproto_version": self.geoproto_version,
            "created": self.created or _now(),
            "classes": [{"id": i, "name": n, "color": _rgb_to_hex(c)}
                        for i, n, c in zip(self.classes.ids, self.classes.names, self.classes.colors)],
            "numbered_by_name": self.numbered_by_name, "encoder": self.encoder, "sources": self.sources,
            "head": sorted(self.head), "scoring": self.scoring, "alpha": self.alpha,
            "orientations": self.orientations,
        }

    def save(self, path: str) -> None:
        """Write the file (callers stage ``path``: see ``output.StagedOutputs``)."""
        header = json.dumps(self.header(), ensure_ascii=False, sort_keys=True, default=str).encode("utf-8")
        arrays = {"header": np.frombuffer(header, np.uint8), "feature_sum": self.feature_sum.astype(np.float64),
                  "pixels": self.pixels.astype(np.int64),
                  **{HEAD_PREFIX + name: value.astype(np.float32) for name, value in self.head.items()}}
        with open(path, "wb") as handle:  # a file object: savez would append .npz to a name
            np.savez(handle, **arrays)

    def classifier(self, extract, description: dict, alpha: float | None = None):
        """The ``classifier.Classifier`` these prototypes make with ``extract`` (a FeatureExtractor whose
        encoder ``description`` says what it is), refused for another encoder, and what to report of it
        (``warnings``: for the callers' ``check_raster`` of each raster it labels). It scores as
        ``classifier.fit_support`` with the file's scoring and alpha would: multi-scale features when the
        file's are, its linear head when it holds one.

        ``extract`` must average the orientations the file's features were (``heads.oriented``; ``segment``
        builds it so from the file).

        ``alpha`` (None: the file's) replaces the file's softmax scale. Plain prototypes score cosines times
        alpha; a linear head's weight, fitted at the file's alpha, is scaled by alpha / the file's alpha. Both
        are exact softmax temperature changes: the logits are those at the file's alpha times that ratio, so
        the labels stay the same and the probabilities are exactly those of the new temperature (a head
        fitted afresh at the new alpha could differ: the fit is not scale-equivariant)."""
        import torch

        from .classifier import Classifier
        from .heads import LINEAR, LinearHead, at_scales, orientations_of

        alpha = self.alpha if alpha is None else alpha
        self.check_encoder(encoder_fingerprint(extract.encoder), description)
        if orientations_of(extract) != self.orientations:
            raise GeoprotoError(f"{self.name}: made with features averaged over {self.orientations} orientation(s), "
                                f"but given features of {orientations_of(extract)}", param="orientations")
        stats = {"prototypes": self.path, "alpha": alpha, "pixels": self.pixel_counts,
                 "sources": [source["image"] for source in self.sources], "warnings": []}
        extract = at_scales(extract, self.scales)
        head = LinearHead(torch.from_numpy(self.head["weight"]) * (alpha / self.alpha)) \
            if self.scoring["head"] == LINEAR else None
        return Classifier(self.prototypes(), self.classes, alpha, extract, self.pixel_counts, head), stats

    def encoder_choice(self, encoder: str | None, explicit: bool = False) -> str | None:
        """The shipped encoder to segment with: ``encoder`` if named, else (None, or ``auto``, which chooses by
        cross-validating support polygons, and a prototype file has none) the file's own. ``explicit``: the run
        gives a checkpoint, weights or another backbone, which name the encoder instead (``encoder`` is kept as
        given)."""
        from .models import shipped_names

        if explicit or encoder not in (None, "auto"):
            return encoder
        if self.encoder["name"] not in shipped_names():
            raise GeoprotoError(f"{self.name}: made with encoder {self.encoder['name']}, not a shipped one; give "
                                f"the checkpoint or init_weights it was made with", param="prototypes",
                                mentions=("checkpoint", "init_weights"))
        return self.encoder["name"]

    def check_encoder(self, fingerprint: str, description: dict) -> None:
        """Refuse to be used with another encoder than the one the prototypes come from: its features
        live in another space, and cosine matching against them gives confident nonsense."""
        if fingerprint != self.encoder["fingerprint"]:
            from .models import shipped_names

            theirs = encoder_label(self.encoder["description"], self.encoder["name"])
            ours = encoder_label(description)
            same = f"encoder {theirs}" if theirs in shipped_names() else "its checkpoint or init_weights"
            raise GeoprotoError(
                f"{self.name}: made with {theirs} (weights sha256 {self.encoder['fingerprint'][:12]}), "
                f"but this run uses {ours} (weights sha256 {fingerprint[:12]}); use {same} or rebuild the "
                f"prototypes with this run's", param="prototypes",
                mentions=("encoder", "checkpoint", "init_weights"))

    def stretch(self, dtype: str, bands: int) -> list[tuple[float, float]] | None:
        """The stretch its supports were read with, for a raster of ``bands`` bands of ``dtype`` to be scaled
        as they were (the same ground, the same model input); None when the supports were read with
        different stretches (files merged from separate runs) or the raster's bands are of another kind."""
        scalings = {json.dumps(source.get("scaling")) for source in self.sources}
        if len(scalings) != 1 or any(source.get("dtype") != dtype or len(source.get("bands", ())) != bands
                                     for source in self.sources):
            return None
        try:
            scale = [(float(low), float(high)) for low, high in self.sources[0]["scaling"]]
        except (TypeError, ValueError):
            return None
        return scale if len(scale) == bands and all(low < high for low, high in scale) else None

    def check_raster(self, image: str, bands: int, pixel_size_m: float | None) -> list[str]:
        """Warnings (also issued) when ``image`` differs from the supports in what the encoder is sensitive
        to: ground resolution (beyond ``RESOLUTION_TOLERANCE``) and single band vs colour."""
        found = []
        sizes = [s["pixel_size_m"] for s in self.sources if s.get("pixel_size_m")]
        if pixel_size_m and sizes:
            low, high = min(sizes), max(sizes)
            if pixel_size_m > high * RESOLUTION_TOLERANCE or pixel_size_m < low / RESOLUTION_TOLERANCE:
                learnt = f"{low:g} m" if low == high else f"{low:g}-{high:g} m"
                found.append(f"{image}: {pixel_size_m:g} m per pixel, but the prototypes of {self.name} were learnt "
                             f"at {learnt}; objects appear at another scale to the encoder (label this raster, or "
                             f"resample it)")
        source_bands = {len(s["bands"]) for s in self.sources}
        if source_bands and bands not in source_bands:
            kinds = {1: "single-band", 3: "3-band"}
            found.append(f"{image}: {kinds.get(bands, bands)} imagery, but the prototypes of {self.name} come from "
                         f"{' and '.join(kinds.get(b, str(b)) for b in sorted(source_bands))} imagery")
        for message in found:
            warnings.warn(message)
        return found


def scoring_record(name: str, reason: str) -> dict:
    """A file's ``scoring``: the ``heads.VARIANTS`` variant ``name``, its input scales and head, and why."""
    from .heads import VARIANTS

    scales, head = VARIANTS[name]
    return {"name": name, "scales": list(scales), "head": head, "reason": reason}


def encoder_fingerprint(module) -> str:
    """sha256 of a torch module's state_dict: every tensor's name, dtype, shape and bytes, in sorted key
    order, on the CPU; independent of the device and memory format the module was moved to."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encoder_label(description: dict, name: str | None = None) -> str:
    """An encoder in a word or two: its shipped name, else its backbone and weights or checkpoint file."""
    if name or description.get("name"):
        return str(name or description["name"])
    config = description.get("config") if isinstance(description.get("config"), dict) else {}  # a checkpoint's
    backbone = description.get("backbone") or config.get("backbone")
    weights = description.get("checkpoint") or description.get("weights") or ("a checkpoint" if config else None)
    return " ".join(str(part) for part in (backbone, weights) if part) or "unnamed encoder"


def file_sha256(path: str) -> str | None:
    """sha256 of a file's bytes (None for what is not a plain file: a /vsi path, a FileGDB folder)."""
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _rgb_to_hex(color) -> str | None:
    return None if color is None else "#{:02x}{:02x}{:02x}".format(*color)


# Loading: every member checked, one-line messages naming the file.

def load_prototypes(path: str, param: str | None = "prototypes") -> PrototypeFile:
    """Read and check a prototype file; any problem is a GeoprotoError naming ``path`` (and ``param``, the
    caller's parameter that gave it)."""
    with renamed_params({None: param}):
        return _load(path)


def _load(path: str) -> PrototypeFile:
    if not os.path.exists(path):
        raise no_such_file(path)
    if os.path.isdir(path):
        raise GeoprotoError(f"{path}: is a directory, not a prototype file")
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != ZIP_MAGIC:
                raise GeoprotoError(f"{path}: not a geoproto prototype file (write one with `geoproto prototypes`)")
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
            if any(name.endswith("/data.pkl") for name in archive.namelist()):  # torch.save's layout
                raise GeoprotoError(f"{path}: is PyTorch weights, not a prototype file (a trained checkpoint is "
                                    f"segment's --checkpoint)")
        if declared > MAX_BYTES:
            raise _invalid(path, f"declares {declared} bytes of arrays (limit {MAX_BYTES})")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except GeoprotoError:
        raise
    except ValueError as exc:  # what allow_pickle=False raises for an object array
        raise _invalid(path, f"holds data that is not plain numbers ({_first_line(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError, NotImplementedError) as exc:
        raise _invalid(path, f"corrupt or truncated ({_first_line(exc)})") from None
    raw = next((name for name, value in arrays.items() if not isinstance(value, np.ndarray)), None)
    if raw is not None:  # np.load hands a zip member that is not an .npy over as bytes
        raise _invalid(path, f"member {raw!r} is not a NumPy array")
    return _from_arrays(path, arrays)


def _invalid(path: str, reason: str) -> GeoprotoError:
    return GeoprotoError(f"{path}: not a valid prototype file: {reason}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _from_arrays(path: str, arrays: dict[str, np.ndarray]) -> PrototypeFile:
    header = _read_header(path, arrays.get("header"))
    heads = {name[len(HEAD_PREFIX):] for name in arrays if name.startswith(HEAD_PREFIX)}
    unexpected = sorted(set(arrays) - {"header", "feature_sum", "pixels"} - {HEAD_PREFIX + n for n in heads})
    if unexpected:
        raise _invalid(path, f"unexpected member {unexpected[0]!r}")
    classes = _read_classes(path, header.get("classes"))
    encoder = header.get("encoder")
    if not (isinstance(encoder, dict) and isinstance(encoder.get("name"), str)
            and isinstance(encoder.get("fingerprint"), str) and re.fullmatch(r"[0-9a-f]{64}", encoder["fingerprint"])
            and isinstance(encoder.get("channels"), int) and encoder["channels"] > 0
            and isinstance(encoder.get("description"), dict)):
        raise _invalid(path, "its encoder identity (name, sha256 fingerprint, channels) is missing or malformed")
    feature_sum, pixels = arrays.get("feature_sum"), arrays.get("pixels")
    k, channels = len(classes.ids), encoder["channels"]
    if feature_sum is None or feature_sum.dtype != np.float64 or feature_sum.shape != (k, channels):
        raise _invalid(path, f"feature_sum must be {k} x {channels} float64 ({k} classes, {channels} channels); "
                             f"found {_describe(feature_sum)}")
    if pixels is None or pixels.dtype != np.int64 or pixels.shape != (k,):
        raise _invalid(path, f"pixels must be {k} int64 counts; found {_describe(pixels)}")
    if not np.isfinite(feature_sum).all():
        raise _invalid(path, "feature_sum holds NaN or infinite values")
    if (pixels <= 0).any():
        raise _invalid(path, f"class {classes.names[int(np.argmax(pixels <= 0))]!r} has no labelled pixel")
    listed = header.get("head", [])
    if not isinstance(listed, list) or set(map(str, listed)) != heads:
        raise _invalid(path, "the head arrays do not match the header's list")
    head = {}
    for name in sorted(heads):
        value = arrays[HEAD_PREFIX + name]
        if value.dtype != np.float32 or not np.isfinite(value).all():
            raise _invalid(path, f"head array {name!r} must be finite float32; found {_describe(value)}")
        head[name] = value
    sources = header.get("sources")
    if not (isinstance(sources, list) and sources and all(_valid_source(s) for s in sources)):
        raise _invalid(path, "its support provenance (sources) is missing or malformed")
    scoring = _read_scoring(path, header.get("scoring"), head, k, channels)
    return PrototypeFile(classes, feature_sum, pixels, encoder, sources, bool(header.get("numbered_by_name")),
                         head, str(header.get("created", "")), str(header.get("geoproto_version", "")), path,
                         scoring, _read_alpha(path, header.get("alpha", DEFAULT_ALPHA)),
                         _read_orientations(path, header.get("orientations", 1)))


def _read_orientations(path: str, orientations) -> int:
    """The orientations its features were averaged over (a file from before they were recorded: 1)."""
    from .heads import ORIENTATIONS, check_orientations

    try:
        return check_orientations(orientations)
    except GeoprotoError:
        raise _invalid(path, f"its orientations must be one of {', '.join(map(str, ORIENTATIONS))}; found "
                             f"{orientations!r}") from None


def _read_alpha(path: str, alpha) -> float:
    """The file's softmax scale: a number in SegmentOptions' range (a file from before it was recorded was
    made at the default)."""
    try:
        return float(check_alpha(alpha))
    except GeoprotoError as exc:
        raise _invalid(path, f"its alpha {exc.message}") from None


def _read_scoring(path: str, scoring, head: dict[str, np.ndarray], k: int, channels: int) -> dict:
    """The file's scoring, checked against its head arrays; a file from before it was recorded holds plain
    prototypes."""
    from .heads import LINEAR, VARIANTS

    if scoring is None:
        return scoring_record("prototypes", "the file records no scoring: plain prototypes")
    name = scoring.get("name") if isinstance(scoring, dict) else None
    if name not in VARIANTS or scoring != {**scoring_record(name, ""), "reason": scoring.get("reason")} \
            or not isinstance(scoring["reason"], str):
        raise _invalid(path, "its scoring (name, scales, head, reason) is missing or malformed")
    if scoring["head"] == LINEAR:
        weight = head.get("weight")
        if weight is None or weight.shape != (k, channels):
            raise _invalid(path, f"its linear head needs a {k} x {channels} weight; found {_describe(weight)}")
    elif head:
        raise _invalid(path, f"holds head arrays, but its scoring {name} uses no head")
    return scoring


def _read_header(path: str, raw: np.ndarray | None) -> dict:
    if raw is None:
        raise GeoprotoError(f"{path}: not a geoproto prototype file (no header)")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _invalid(path, "its header is not UTF-8 bytes")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _invalid(path, f"its header is not JSON ({_first_line(exc)})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise GeoprotoError(f"{path}: not a geoproto prototype file (write one with `geoproto prototypes`)")
    version = header.get("version")
    if not isinstance(version, int) or version < 1:
        raise _invalid(path, f"format version {version!r}")
    if version > VERSION:
        raise GeoprotoError(f"{path}: prototype file format version {version}, newer than this geoproto reads "
                            f"({VERSION}); upgrade geoproto")
    return header


def _read_classes(path: str, entries) -> ClassInfo:
    try:
        ids = [entry["id"] for entry in entries]
        names = [entry["name"] for entry in entries]
        colors = [hex_to_rgb(entry["color"]) if entry["color"] is not None else None for entry in entries]
    except (TypeError, KeyError, ValueError, AttributeError, IndexError):
        raise _invalid(path, "its classes are not a list of {id, name, color}") from None
    if len(ids) < 2:
        raise _invalid(path, f"{len(ids)} class(es); prototypes need at least two")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= MAX_CLASS_ID for i in ids):
        raise _invalid(path, f"class ids must be whole numbers 1..{MAX_CLASS_ID}")
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise _invalid(path, "every class needs a non-empty name")
    if len(set(ids)) < len(ids) or len(set(names)) < len(names):
        raise _invalid(path, "a class id or name is listed twice")
    return ClassInfo(ids, names, colors)


def _valid_source(source) -> bool:
    """What ``check_raster`` and the summaries read of a provenance record has the right types."""
    if not isinstance(source, dict):
        return False
    pixel_size = source.get("pixel_size_m")
    return (isinstance(source.get("image"), str) and isinstance(source.get("pixels"), dict)
            and isinstance(source.get("bands"), list) and all(isinstance(b, int) for b in source["bands"])
            and (pixel_size is None or (isinstance(pixel_size, (int, float)) and math.isfinite(pixel_size)
                                        and pixel_size > 0)))


def _describe(array: np.ndarray | None) -> str:
    return "nothing" if array is None else f"{' x '.join(map(str, array.shape)) or 'a scalar'} {array.dtype}"


# Pooling several files.

def check_output_name(path: str) -> None:
    """A prototype file named like a raster or a vector (``-o classes.tif``, segment's output) would pass
    for one, and with overwrite replace one: only .gpp (or .npz) names are written."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in SUFFIXES:
        raise GeoprotoError(f"{path}: a prototype file is named *.gpp (or *.npz), not *{ext or '(none)'}",
                            param="output")


def merge(files: list[PrototypeFile]) -> PrototypeFile:
    """One file pooling several, pixel-weighted: per class (matched by name) the feature sums and pixel
    counts add up, so the prototypes are those of all the supports read in one run.

    Every file must come from the same encoder. Class ids are kept when the files agree on them; when
    they do not and every file numbered its classes from their names (vector support without a classes
    file), the pooled classes are numbered the same way, 1..K in name order; otherwise the merge is
    refused (give every support the same classes file). A class's colour is the first file's that has
    one. Heads are dropped: a head fitted on one support does not fit the pooled one; the pooled file
    scores with its features' scales alone (``multiscale`` or ``prototypes``). Files of different scales
    have features of different channels and are refused; so are files made at different alphas (the
    pooled file would score at one of them, silently not at the other's) and files whose features were
    averaged over different orientations (their prototypes describe differently made features).
    """
    from .heads import PROTOTYPES, VARIANTS

    if not files:
        raise GeoprotoError("nothing to merge: give at least one prototype file")
    first = files[0]
    for other in files[1:]:
        if other.scales != first.scales:
            raise GeoprotoError(
                f"{other.name}: made with scoring {other.variant} (features at {_scales_label(other.scales)}), but "
                f"{first.name} with {first.variant} (features at {_scales_label(first.scales)}); only features of "
                f"the same scales can be pooled (rebuild one with `geoproto prototypes --scoring`)")
        if other.encoder["fingerprint"] != first.encoder["fingerprint"]:
            raise GeoprotoError(
                f"{other.name}: made with encoder {encoder_label(other.encoder['description'], other.encoder['name'])} "
                f"(weights sha256 {other.encoder['fingerprint'][:12]}), but {first.name} with "
                f"{encoder_label(first.encoder['description'], first.encoder['name'])} (weights sha256 "
                f"{first.encoder['fingerprint'][:12]}); only prototypes of one encoder can be pooled")
        if other.alpha != first.alpha:
            raise GeoprotoError(
                f"{other.name}: made at alpha {other.alpha:g}, but {first.name} at alpha {first.alpha:g}; only "
                f"prototypes of one softmax scale can be pooled (rebuild one with `geoproto prototypes --alpha`)")
        if other.orientations != first.orientations:
            raise GeoprotoError(
                f"{other.name}: made with features averaged over {other.orientations} orientation(s), but "
                f"{first.name} over {first.orientations}; only prototypes of alike features can be pooled (rebuild "
                f"one with `geoproto prototypes --orientations`)")
    _refuse_pooling_twice(files)
    names: list[str] = []
    ids: dict[str, set[tuple[int, str]]] = {}
    colors: dict[str, tuple[int, int, int] | None] = {}
    for item in files:
        for class_id, name, color in zip(item.classes.ids, item.classes.names, item.classes.colors):
            if name not in ids:
                names.append(name)
                ids[name] = set()
            ids[name].add((class_id, item.name))
            if colors.get(name) is None:
                colors[name] = color
            elif color is not None and color != colors[name]:
                warnings.warn(f"{item.name}: class {name!r} has another colour than in an earlier file; kept the first")
    if len(files) > 1:
        warn_case_twins(names, "the pooled prototypes")
    numbered_by_name = all(item.numbered_by_name for item in files)
    merged_ids = _reconcile_ids(names, ids, numbered_by_name)
    order = sorted(range(len(names)), key=lambda i: merged_ids[names[i]]) if numbered_by_name else range(len(names))
    names = [names[i] for i in order]
    classes = ClassInfo([merged_ids[n] for n in names], names, [colors[n] for n in names])
    feature_sum = np.zeros((len(names), first.feature_sum.shape[1]), np.float64)
    pixels = np.zeros(len(names), np.int64)
    for item in files:
        rows = [names.index(name) for name in item.classes.names]
        feature_sum[rows] += item.feature_sum
        pixels[rows] += item.pixels
    if any(item.head for item in files) and len(files) > 1:
        warnings.warn("the merged prototypes have no head: a head fitted on one support does not fit the pooled one")
    if len(files) == 1:
        head, scoring = first.head, first.scoring
    else:
        variant = next(name for name, (scales, head) in VARIANTS.items()
                       if tuple(scales) == first.scales and head == PROTOTYPES)
        dropped = [item.variant for item in files if item.head]
        why = f"; heads dropped (of {', '.join(sorted(set(dropped)))})" if dropped else ""
        head, scoring = {}, scoring_record(variant, f"merged from {len(files)} prototype files{why}")
    return PrototypeFile(classes, feature_sum, pixels, first.encoder, [s for item in files for s in item.sources],
                         numbered_by_name, head, _now(), scoring=scoring, alpha=first.alpha,
                         orientations=first.orientations)


def _refuse_pooling_twice(files: list[PrototypeFile]) -> None:
    """A support found in two files (one file given twice, or a merged file with one of its parts) would
    count its pixels twice and outweigh the others: refused, naming both files and the support."""
    holders: dict[tuple, PrototypeFile] = {}
    for item in files:
        held = {(source.get("image"), source.get("support_sha256") or source.get("support"),
                 tuple(source.get("bands") or ())): source for source in item.sources}
        for key, source in held.items():
            earlier = holders.get(key)
            if earlier is None:
                continue
            support = f"support {source.get('support')} on {source.get('image')}"
            if earlier.name == item.name:
                raise GeoprotoError(f"{item.name}: given twice; pooled, the pixels of its {support} would count "
                                    f"twice (give each file once)")
            raise GeoprotoError(f"{item.name} and {earlier.name} both hold the prototypes of {support}; pooled, "
                                f"its pixels would count twice (merge each support once)")
        holders.update(dict.fromkeys(held, item))


def _scales_label(scales: tuple[int, ...]) -> str:
    return "+".join(f"{scale}x" for scale in scales)


def _reconcile_ids(names: list[str], ids: dict[str, set[tuple[int, str]]], numbered_by_name: bool) -> dict[str, int]:
    owners: dict[int, set[str]] = {}
    for name in names:
        for class_id, _ in ids[name]:
            owners.setdefault(class_id, set()).add(name)
    conflict = next((name for name in names if len({i for i, _ in ids[name]}) > 1), None)
    shared = next((i for i, owner in owners.items() if len(owner) > 1), None)
    if conflict is None and shared is None:
        return {name: next(iter(ids[name]))[0] for name in names}
    if numbered_by_name:
        if len(names) > MAX_CLASS_ID:
            raise GeoprotoError(f"the merged supports hold {len(names)} classes; at most {MAX_CLASS_ID}")
        return {name: i for i, name in enumerate(sorted(names), 1)}
    if conflict is not None:
        where = ", ".join(f"{i} in {file}" for i, file in sorted(ids[conflict]))
        raise GeoprotoError(f"class {conflict!r} has different ids ({where}); build every file with the same "
                            f"classes file", mentions=("classes",))
    raise GeoprotoError(f"class id {shared} stands for {' and '.join(repr(n) for n in sorted(owners[shared]))} in "
                        f"different files; build every file with the same classes file", mentions=("classes",))
