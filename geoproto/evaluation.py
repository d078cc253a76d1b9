"""Measuring results: ``score`` (any class raster against ground truth) and ``evaluate`` (the paper's protocol).

Both accumulate one confusion matrix over all pixels and derive every metric from it, as the ISPRS
benchmark does (not averaged per patch).

The protocol (paper, Sec. III): test images are cut into 417x417 patches, each a query; K support
patches are drawn at random from the training split so that together they hold every evaluated class;
prototypes from the supports classify every query; repeated over several seeds (mean and standard
deviation reported).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable

import numpy as np
import torch

from . import crf as crf_module
from . import crf_torch
from .datasets import LabelledDataset, fold_classes
from .classes import NODATA, NODATA_NAME, ClassInfo
from .errors import GeoprotoError, GeoprotoWarning, renamed_params
from .classifier import Classifier
from .fewshot import DEFAULT_ALPHA, masked_average_prototypes, pull_back_labels
from .heads import DEFAULT_ORIENTATIONS, LINEAR, VARIANTS, SupportCells, feature_extractor, fit_linear_head
from .progress import progress_bar
from .metrics import confusion_matrix, json_number, scores
from .models import Encoder
from .models.runtime import FeatureExtractor
from .raster import open_raster, path_exists
from .support import RasterLabels
from .tiling import tile_grid
from .validation import check_alpha, check_number

PATCH = 417
SAMPLING_TRIES = 1000
FEATURE_CACHE_BYTES = 2 << 30
# Support draws differ more than settings do: over the first 5 draws alone, 10 shots scored below 5 on the
# held-out Dubai area, and above them over 20 (README, "Shipped encoders").
DEFAULT_SEEDS = tuple(range(20))


def summarise(matrix: np.ndarray, names: list[str]) -> dict:
    """Metrics of one confusion matrix as plain JSON-able numbers."""
    result = scores(matrix)
    per_class = {name: {"f1": json_number(result["f1"][i]), "iou": json_number(result["iou"][i]),
                        "precision": json_number(result["precision"][i]), "recall": json_number(result["recall"][i]),
                        "pixels": int(matrix[i].sum())} for i, name in enumerate(names)}
    return {"overall_accuracy": json_number(result["overall_accuracy"]), "kappa": json_number(result["kappa"]),
            "mean_iou": json_number(result["mean_iou"]), "mean_f1": json_number(result["mean_f1"]),
            "classes": per_class}


# --- score ---------------------------------------------------------------------------------------------

def named_classes(path: str, src=None) -> ClassInfo | None:
    """The class names a class raster carries: geoproto's GEOPROTO_CLASSES tag, else the GDAL category
    names of its PAM sidecar (what QGIS shows in its legend); None if it names none. ``src``: ``path``
    already open."""
    from xml.etree import ElementTree

    if src is None:
        with open_raster(path) as opened:
            return named_classes(path, opened)
    tag = src.tags().get("GEOPROTO_CLASSES")
    if tag:
        return _tagged_classes(path, tag)
    try:
        band = ElementTree.parse(f"{path}.aux.xml").getroot().find("PAMRasterBand[@band='1']")
    except (OSError, ElementTree.ParseError):
        return None
    categories = band.findall("CategoryNames/Category") if band is not None else []
    named = [(i, c.text) for i, c in enumerate(categories) if c.text and 1 <= i <= 254 and c.text != NODATA_NAME]
    return ClassInfo([i for i, _ in named], [n for _, n in named]) if named else None


def prediction_classes(path: str) -> ClassInfo:
    """Class ids and names of a class raster (``named_classes``), else the ids it holds as ``class_<id>``."""
    with open_raster(path) as src:
        if src.count != 1:
            raise GeoprotoError(f"{path}: has {src.count} bands; a class raster has one band of class ids "
                                f"(is this the image rather than a classification?)")
        if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
            raise GeoprotoError(f"{path}: holds {src.dtypes[0]} values; a class raster holds whole class ids "
                                f"0..255 (is this the image rather than a classification?)")
        named = named_classes(path, src)
        if named is not None:
            return named
        values = set()
        for _, window in src.block_windows(1):
            values |= {int(v) for v in np.unique(src.read(1, window=window)) if v != (src.nodata or 0)}
    outside = sorted(v for v in values if not 0 <= v <= 255)
    if outside:
        raise GeoprotoError(f"{path}: holds value {outside[0]}; a class raster holds class ids 0..255 "
                            f"(is this the image rather than a classification?)")
    return ClassInfo(sorted(values), [f"class_{v}" for v in sorted(values)])


def _tagged_classes(path: str, tag: str) -> ClassInfo:
    """The classes a GEOPROTO_CLASSES tag names (a JSON object of class id -> name)."""
    try:
        names = {int(k): str(v) for k, v in json.loads(tag).items()}
        if not all(0 <= k <= 255 for k in names):
            raise ValueError("class ids outside 0..255")
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise GeoprotoError(f"{path}: its GEOPROTO_CLASSES tag is corrupt ({str(exc).splitlines()[0][:80]}); "
                            f"remove the tag to score class ids as class_<id>") from None
    return ClassInfo(sorted(names), [names[k] for k in sorted(names)])


def score(prediction: str, truth: str, class_field: str | None = None, background: str | None = None,
          mapping: dict[str, str] | None = None, truth_crs: str | None = None,
          classes_file: str | None = None, layer: str | None = None) -> dict:
    """Compare a class raster with ground truth (a label raster or polygons with a class column).

    Truth classes are matched to predicted ones by name; ``mapping`` renames classes on either side
    first (e.g. ``{"tree": "other", "ground": "other"}`` merges two predicted classes into the truth's one).
    With vector truth, pixels outside every polygon are ignored unless ``background`` names the class
    they belong to; ``layer`` names the truth's layer in a file of several. A truth raster's class names
    come from ``classes_file``, else from the raster itself (a geoproto result, or GDAL category names).
    Nodata in either raster is left out of the metrics; ``unpredicted_share`` says how much of the truth
    the prediction left as nodata.
    """
    from .support import is_raster

    predicted_classes = prediction_classes(prediction)
    mapping = mapping or {}
    raster_truth = path_exists(truth) and is_raster(truth)
    vector_only = {"class_field": class_field, "truth_crs": truth_crs, "background": background, "layer": layer}
    for param, value in vector_only.items():
        if raster_truth and value is not None:
            raise GeoprotoError(f"applies to polygon truth; {truth} is a raster (its unlabelled pixels, 0 or "
                                f"nodata, are left out)", param=param)
    truth_named = named_classes(truth) if not classes_file and raster_truth else None
    with open_raster(prediction) as src, contextlib.closing(  # a truth raster's handle, failing or not
            RasterLabels(truth, src, truth_named) if truth_named is not None else
            _truth_labels(truth, src, class_field, truth_crs, classes_file, layer)) as labels:
        truth_classes = labels.found_classes()
        _check_class_names(prediction, predicted_classes, truth, truth_classes, mapping, background,
                           unnamed_raster=raster_truth and truth_named is None and not classes_file)
        truth_names = [mapping.get(n, n) for n in truth_classes.names]
        predicted_names = [mapping.get(n, n) for n in predicted_classes.names]
        background = mapping.get(background, background) if background else None
        names = list(dict.fromkeys(truth_names + ([background] if background else []) + predicted_names))
        index = {name: i + 1 for i, name in enumerate(names)}
        truth_lookup = np.zeros(256, np.int64)
        for class_id, name in zip(truth_classes.ids, truth_names):
            truth_lookup[class_id] = index[name]
        predicted_lookup = np.zeros(256, np.int64)
        for class_id, name in zip(predicted_classes.ids, predicted_names):
            predicted_lookup[class_id] = index[name]
        matrix = np.zeros((len(names), len(names)), np.int64)
        truth_pixels = unpredicted = 0
        # truth pixels per id, labelled truth pixels per predicted id: those no class name covers are warned of
        truth_ids, predicted_ids = np.zeros(256, np.int64), np.zeros(256, np.int64)
        vector = not isinstance(labels, RasterLabels)
        for tile in tile_grid(src.height, src.width, 1024, 0):
            rows, cols = tile.core_slices
            predicted = src.read(1, window=((tile.row, tile.row + tile.height), (tile.col, tile.col + tile.width)))
            valid = predicted != (src.nodata if src.nodata is not None else NODATA)
            if valid.any() and not 0 <= predicted[valid].min() <= predicted[valid].max() <= 255:
                raise GeoprotoError(f"{prediction}: holds values outside the class ids 0..255")
            # nodata may lie outside 0..255 (65535, -9999): only valid pixels index the lookup
            positions = np.zeros(predicted.shape, np.int64)
            positions[valid] = predicted_lookup[predicted[valid]]
            ids = labels.read(tile, 1024)[: tile.height, : tile.width]
            expected = truth_lookup[ids]
            truth_ids += np.bincount(ids[rows, cols].ravel(), minlength=256)
            if vector and background:
                expected[expected == 0] = index[background]
            labelled = (expected > 0)[rows, cols]
            truth_pixels += int(labelled.sum())
            unpredicted += int((labelled & ~valid[rows, cols]).sum())
            predicted_ids += np.bincount(predicted[rows, cols][labelled & valid[rows, cols]].astype(np.int64),
                                         minlength=256)
            expected[~valid] = 0
            matrix += confusion_matrix(expected[rows, cols], positions[rows, cols], len(names))
    unnamed_truth = np.where(truth_lookup == 0, truth_ids, 0)
    unnamed_truth[NODATA] = 0
    # a classes file (or a raster's own names) naming fewer classes than the raster holds: no class's pixels
    _warn_unnamed(truth, "truth pixels hold", unnamed_truth,
                  "the classes of classes_file" if classes_file else "its class names")
    _warn_unnamed(prediction, "truth pixels are predicted as", np.where(predicted_lookup == 0, predicted_ids, 0),
                  "its class names")
    return {"prediction": prediction, "truth": truth, "class_names": names, "confusion": matrix.tolist(),
            "truth_pixels": truth_pixels, "unpredicted_pixels": unpredicted,
            "unpredicted_share": round(unpredicted / truth_pixels, 6) if truth_pixels else None,
            **summarise(matrix, names)}


def _warn_unnamed(path: str, what: str, pixels: np.ndarray, namer: str) -> None:
    """Warn of ``pixels`` (per class id) of ``path`` that ``namer`` names no class of, left out of the scores."""
    found = np.flatnonzero(pixels)
    if len(found):
        warnings.warn(GeoprotoWarning(
            f"{path}: {int(pixels.sum())} {what} class id(s) {_listed(found, str)}, not among {namer}; left out "
            f"of these scores",
            mentions=("classes_file",)))



def _listed(values, show=repr) -> str:
    """The first 8 of ``values`` for a message, and ", ..." when there are more."""
    return ", ".join(map(show, values[:8])) + (", ..." if len(values) > 8 else "")

# The parameters of load_support that score calls otherwise, for errors to name score's own.
_TRUTH_PARAMS = {"support": "truth", "support_crs": "truth_crs"}


def _truth_labels(truth: str, src, class_field: str | None, truth_crs: str | None, classes_file: str | None,
                  layer: str | None):
    """The truth read as a support is (``support.load_support``), its errors naming score's parameters
    (``truth_crs: ...``, not ``support_crs``, which score does not have)."""
    from .support import NoRasterCRS, NotPolygonal, load_support

    with renamed_params(_TRUTH_PARAMS):
        try:
            return load_support(truth, src, class_field, layer, truth_crs, classes_file)
        except NotPolygonal as exc:  # score has no buffer distance to make points or lines polygons
            raise GeoprotoError(f"{truth}: polygon truth is rasterised onto the prediction's pixels; found "
                                f"{exc.kinds} (buffer them into polygons first)", param="truth") from None
        except NoRasterCRS as exc:  # score has no assume_crs: the prediction itself needs its CRS
            raise GeoprotoError(f"{truth}: is in {exc.vector_crs} but the prediction {src.name} has no CRS; give it "
                                f"its CRS (gdal_edit.py -a_srs EPSG:...)", param="prediction") from None


def _check_class_names(prediction: str, predicted: ClassInfo, truth: str, truth_classes: ClassInfo,
                       mapping: dict[str, str], background: str | None, unnamed_raster: bool) -> None:
    """Classes pair by name: a ``mapping`` entry naming no class (a typo) would silently pair nothing, and
    sides sharing no name after it would score 0 everywhere (a truth raster of bare ids against a geoproto
    result): both refused, naming the classes of each side."""
    of_truth = f"the truth {truth} ({_listed(truth_classes.names)})"
    of_prediction = f"the prediction {prediction} ({_listed(predicted.names)})"
    blank = [name for name, new in mapping.items() if not str(new).strip()]
    if blank:  # it scored a class named "" (a --map tree= missing its new name)
        raise GeoprotoError(f"{blank[0]}={mapping[blank[0]]}: gives {blank[0]!r} an empty name; write NAME=NEW",
                            param="mapping")
    unknown = [name for name in mapping if name not in {*truth_classes.names, *predicted.names, background}]
    if unknown:
        raise GeoprotoError(f"{unknown[0]}={mapping[unknown[0]]}: {unknown[0]!r} is no class of {of_truth} nor "
                            f"of {of_prediction}", param="mapping")
    truth_names = {mapping.get(n, n) for n in [*truth_classes.names, *([background] if background else [])]}
    # a prediction without a class (all nodata) is scored as such: its unpredicted share says so
    if predicted.names and not truth_names & {mapping.get(n, n) for n in predicted.names}:
        hint = "name the truth raster's classes (classes_file) or " if unnamed_raster else ""
        raise GeoprotoError(f"no class of {of_truth} is named as one of {of_prediction}, so every score would "
                            f"be 0: {hint}pair them with mapping (e.g. {truth_classes.names[0]}="
                            f"{predicted.names[0]})", mentions=("mapping", "classes_file"))


# --- evaluate ------------------------------------------------------------------------------------------

def patch_index(data: LabelledDataset, samples, size: int = PATCH):
    """Every full-size patch of ``samples`` (grid without overlap, the last row/column shifted back) with
    the set of class ids it holds."""
    patches = []
    for sample_index, sample in enumerate(samples):
        height, width = data.size(sample)
        for tile in tile_grid(height, width, size, 0):
            _, labels = data.read(sample, tile.row, tile.col, tile.height, tile.width)
            patches.append((sample_index, tile, frozenset(int(v) for v in np.unique(labels) if v)))
    return patches


def sample_supports(patches: list, shots: int, classes: list[int], rng: np.random.Generator):
    """``shots`` random patches that together hold every class in ``classes``; returns (indices, covered).

    Random draws are tried first (so the supports are as random as the paper's); if none of them covers
    all classes, a greedy cover seeded at random is used; classes no patch holds are left uncovered.
    """
    wanted = set(classes)
    available = set().union(*(p[2] for p in patches)) & wanted if patches else set()
    if shots > len(patches):
        raise GeoprotoError(f"{shots} requested but the training split has only {len(patches)} patches",
                            param="shots")
    for _ in range(SAMPLING_TRIES):
        chosen = rng.choice(len(patches), shots, replace=False)
        covered = set().union(*(patches[i][2] for i in chosen)) & wanted
        if covered == available:
            return [int(i) for i in chosen], covered
    chosen, covered = [], set()
    for i in rng.permutation(len(patches)):
        if len(chosen) < shots and patches[i][2] & (available - covered):
            chosen.append(int(i))
            covered |= patches[i][2] & wanted
    for i in rng.permutation(len(patches)):
        if len(chosen) == shots:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen, covered


def evaluated_classes(fold: int | None, class_names: list[str] | None) -> list[str] | None:
    """The class names an evaluation scores (``evaluate``'s ``class_names``): a PASCAL-5i fold's unseen
    classes, or ``class_names`` (None: every class)."""
    if fold is None:
        return class_names
    if class_names:
        raise GeoprotoError("evaluates the fold's unseen classes; give it or class_names", param="fold",
                            mentions=("class_names",))
    return fold_classes(fold)[1]


def evaluate(data: LabelledDataset, encoder: Encoder, shots: int, seeds: list[int], class_names: list[str] | None,
             crf: bool, device: torch.device, train_split: str = "train", test_split: str = "test",
             alpha: float = DEFAULT_ALPHA, crf_params: crf_module.CRFParams | None = None,
             progress: bool | None = None, crf_backend: str = crf_module.DEFAULT_BACKEND,
             on_patch: Callable[[int, int, np.ndarray], None] | None = None, scoring: str = "prototypes",
             orientations: int = DEFAULT_ORIENTATIONS) -> dict:
    """The paper's protocol on ``data``; returns per-seed results and their mean and standard deviation.

    ``scoring``: how queries are scored, one of ``heads.VARIANTS`` as ``segment --scoring`` names them
    (the paper's prototypes, or multi-scale features and/or a linear head fitted on the shots), so the
    protocol measures what ``segment`` does with each. ``orientations``: the features of every patch, support
    and query, averaged over that many orientations of it (``heads.ORIENTATIONS``), as ``segment --orientations``.

    ``on_patch(seed, patch_number, predicted)``, if given, receives each query patch's labels as scored
    (its core, as positions 1..K of the report's classes), e.g. to compare two CRF backends pixel by pixel.
    """
    check_alpha(alpha)
    check_number("shots", shots, 1, integer=True)
    if scoring not in VARIANTS:
        raise GeoprotoError(f"{scoring!r}: choose {', '.join(VARIANTS)}", param="scoring")
    scales, head = VARIANTS[scoring]
    crf_backend = crf_module.resolve_backend(crf_backend) if crf else None
    classes = data.classes if not class_names else data.classes.subset(
        [data.classes.ids[data.classes.names.index(n)] for n in _known(data, class_names)])
    lookup = classes.positions()
    train_samples, test_samples = data.subset(train_split), data.subset(test_split)
    if not test_samples:
        raise GeoprotoError(f"{data.name}: the {test_split!r} split is empty")
    support_patches = [p for p in patch_index(data, train_samples) if p[2] & set(classes.ids)]
    query_patches = patch_index(data, test_samples)
    extract = feature_extractor(FeatureExtractor(encoder, device), orientations, scales)
    crf_params = crf_params or crf_module.params_for_resolution(data.pixel_size_m)
    cache: dict[int, torch.Tensor] = {}
    cached_bytes = 0
    runs = []
    notes = []
    bar = progress_bar(progress, len(seeds) * len(query_patches), "patch", "evaluate")
    for seed in seeds:
        rng = np.random.default_rng(seed)
        chosen, covered = sample_supports(support_patches, shots, classes.ids, rng)
        missing = [classes.name_of(c) for c in classes.ids if c not in covered]
        if missing:
            notes.append(f"seed {seed}: no {shots}-shot support covers {', '.join(missing)}")
            warnings.warn(notes[-1])
        features, labels = shot_features(data, train_samples, [support_patches[i] for i in chosen], extract, classes)
        prototypes, present = _prototypes_and_presence(features, labels, len(classes.ids))
        classifier = Classifier(prototypes, classes, alpha, extract,
                                head=_shot_head(features, labels, prototypes, alpha) if head == LINEAR else None)
        matrix = np.zeros((len(classes.ids), len(classes.ids)), np.int64)
        for number, (sample_index, tile, _) in enumerate(query_patches):
            image, labels = _read_patch(data, test_samples[sample_index], tile)
            features = cache.get(number)
            if features is None:
                features = classifier.encode(image[None], 0).cpu()
                if cached_bytes + features.numel() * 4 <= FEATURE_CACHE_BYTES:
                    cache[number] = features
                    cached_bytes += features.numel() * 4
            with torch.inference_mode():
                probabilities = classifier.score_features(features, (PATCH, PATCH)).softmax(1)[0]
                probabilities[~present] = 0  # a class without support cannot be predicted
            if crf and crf_backend == "torch":
                probabilities = crf_torch.refine_batch(torch.from_numpy(image)[None], probabilities[None],
                                                       crf_params)[0][0]
            probabilities = probabilities.numpy()
            if crf and crf_backend == "densecrf":
                probabilities, _ = crf_module.refine(crf_module.to_rgb8(image), probabilities, crf_params)
            rows, cols = tile.core_slices
            predicted = (probabilities.argmax(0) + 1)[rows, cols]
            matrix += confusion_matrix(lookup[labels][rows, cols], predicted, len(classes.ids))
            if on_patch is not None:
                on_patch(seed, number, predicted)
            bar.update(1)
        runs.append({"seed": seed, "supports": [f"{train_samples[support_patches[i][0]].name}@"
                                                f"{support_patches[i][1].row},{support_patches[i][1].col}"
                                                for i in chosen], **summarise(matrix, classes.names)})
    bar.close()
    return {"dataset": data.name, "shots": shots, "scoring": scoring, "orientations": orientations, "crf": crf,
            "seeds": seeds,
            **({"crf_backend": crf_backend, "crf_bilateral_px": round(crf_params.bilateral_sxy, 2)} if crf else {}),
            "classes": classes.names,
            "query_patches": len(query_patches), "notes": notes, "mean": _aggregate(runs, np.mean),
            "std": _aggregate(runs, np.std), "runs": runs}


def shot_prototypes(data: LabelledDataset, samples, shots: list, extract: FeatureExtractor,
                    classes: ClassInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 as the paper evaluates it: each class's mean feature in each shot (a support patch of
    ``patch_index``), averaged over the shots that hold the class, so every shot weighs the same whatever
    its share of the class (``segment`` weighs pixels instead: its windows are not shots). Returns the
    K x C prototypes and which classes any shot holds."""
    return _prototypes_and_presence(*shot_features(data, samples, shots, extract, classes), len(classes.ids))


def shot_features(data: LabelledDataset, samples, shots: list, extract: FeatureExtractor,
                  classes: ClassInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """The shots' features (S x C x h x w, float32 on the CPU) and labels (S x H x W, positions 1..K)."""
    lookup = classes.positions()
    features, labels = [], []
    for sample_index, tile, _ in shots:
        image, label = _read_patch(data, samples[sample_index], tile)
        features.append(extract(image[None]).cpu().float())
        labels.append(torch.from_numpy(lookup[label]))
    return torch.cat(features), torch.stack(labels)


def _prototypes_and_presence(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    present = torch.bincount(labels.reshape(-1), minlength=num_classes + 1)[1:] > 0
    return masked_average_prototypes(features, labels, num_classes), present


def _shot_head(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, alpha: float):
    """The linear head ``segment`` fits on a support (``heads.fit_linear_head``), on the shots' labelled
    cells, started at the shots' prototypes."""
    cells = SupportCells()
    cells.add(features, pull_back_labels(labels, len(prototypes), features)[0])
    return fit_linear_head(*cells.arrays(), prototypes, alpha)


def _read_patch(data: LabelledDataset, sample, tile):
    """A full patch; images smaller than a patch are padded (reflected image, unlabelled padding)."""
    from .training.episodes import pad_crop

    return pad_crop(*data.read(sample, tile.row, tile.col, tile.height, tile.width), PATCH)


def _known(data: LabelledDataset, names: list[str]) -> list[str]:
    """``names``, each a class of ``data``, at least two (a single class is every pixel's: 100 %)."""
    unknown = [n for n in names if n not in data.classes.names]
    if unknown:
        raise GeoprotoError(f"{data.name}: no class {unknown[0]!r} (classes: {', '.join(data.classes.names)})",
                            param="class_names")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise GeoprotoError(f"{repeated[0]!r} is named twice; name each class once", param="class_names")
    if len(names) < 2:
        raise GeoprotoError(f"only {names[0]!r}: one class is every pixel's prediction, scored 100 %; name at "
                            f"least two classes", param="class_names")
    return names


def _aggregate(runs: list[dict], reduce) -> dict:
    def over(values):
        values = [v for v in values if v is not None]
        return json_number(reduce(values)) if values else None

    keys = ("overall_accuracy", "kappa", "mean_iou", "mean_f1")
    result = {k: over([r[k] for r in runs]) for k in keys}
    names = runs[0]["classes"].keys()
    result["f1"] = {n: over([r["classes"][n]["f1"] for r in runs]) for n in names}
    result["iou"] = {n: over([r["classes"][n]["iou"] for r in runs]) for n in names}
    return result


def format_table(report: dict) -> str:
    """The report as the paper's tables show it: per-class F1, OA, mean F1, kappa, mIoU (mean ± std, %)."""
    mean, std = report["mean"], report["std"]

    def cell(m, s):
        return "   n/a    " if m is None else f"{100 * m:5.1f}±{100 * (s or 0):4.1f}"

    names = list(mean["f1"])
    header = " | ".join([f"{'shots':>5}", f"{'CRF':>3}"] + [f"{n[:10]:>10}" for n in names]
                        + [f"{h:>10}" for h in ("OA", "mean F1", "kappa", "mIoU")])
    row = " | ".join([f"{report['shots']:>5}", f"{'on' if report['crf'] else 'off':>3}"]
                     + [cell(mean["f1"][n], std["f1"][n]) for n in names]
                     + [cell(mean[k], std[k]) for k in ("overall_accuracy", "mean_f1", "kappa", "mean_iou")])
    return f"{header}\n{row}"
