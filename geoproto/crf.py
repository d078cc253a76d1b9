"""DenseCRF settings, the guard shared by both backends, and the pydensecrf2 backend (one tile at a time).

Two backends compute the same CRF: ``torch`` (``crf_torch``: batched, on the model's device) and
``densecrf`` (pydensecrf2, the reference, an optional extra: ``pip install geoproto[crf]``; one core per
window, run in a process pool by the pipeline). ``auto``, the default, picks the faster one here (see
``resolve_backend``). This module imports neither torch nor pydensecrf at import time: the pool's
workers import it.

The paper's kernels are in pixels for 9 cm imagery (Gaussian sxy 3; bilateral sxy 80, srgb 13): 80 px
is about 7 m on the ground. Applied unchanged at coarser resolution the bilateral kernel spans tens of
metres and wipes out small classes (measured at 0.36 m: car F1 15 -> 7; on a 0.5 m chip the whole tile
became one class), while a width in metres alone vanishes on coarse imagery (3.6 m is 0.12 px at 30 m).
So ``params_for_resolution`` sets the width from the pixel size, with a floor in pixels, and a window
whose CRF result collapsed (``keeps_classes``) keeps its unrefined labels. The floor is narrow: a
16 px kernel at 0.5 m erased the buildings a support-fitted head had found only in part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GeoprotoError, GeoprotoWarning
from .validation import check_number

BACKENDS = ("auto", "torch", "densecrf")
DEFAULT_BACKEND = "auto"
PAPER_BILATERAL_SXY_PX = 80.0
# The resolution rule's bilateral width (``params_for_resolution``), chosen on validation data.
RULE_BILATERAL_M = 3.6
MIN_BILATERAL_PX = 8.0


@dataclass(frozen=True)
class CRFParams:
    """The CRF's parameters, kernel widths in pixels; ``params_for_resolution`` sets them for a raster."""

    iterations: int = 5
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = MIN_BILATERAL_PX  # the rule's width without a metric grid
    # The paper's srgb 13 and weight 10 let the appearance kernel pull small buildings into their
    # surroundings; a colour range of 5 with weight 5 keeps them (chosen on the Dubai validation area,
    # see the README's DenseCRF entry).
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 5.0
    # The guard (``keeps_classes``): a class covering at least ``guard_share`` of the window before the CRF
    # must keep at least ``guard_keep`` of its pixels, and a window the CRF leaves at least
    # ``collapse_share`` one class must not have lost classes that covered ``collapse_lost`` of it.
    guard_share: float = 0.1
    guard_keep: float = 0.2
    collapse_share: float = 0.97
    collapse_lost: float = 0.1

    def __post_init__(self):
        """DenseCRF's C++ trusts its parameters: a zero, tiny or NaN kernel width ends in a segfault."""
        for name, (low, high) in CRF_RANGES.items():
            value = check_number(f"CRF {name}", getattr(self, name), low, high, integer=name == "iterations")
            object.__setattr__(self, name, value)


# Inclusive bounds of every CRF parameter (kernel widths in pixels, colour width in 0..255 units).
CRF_RANGES = {
    "iterations": (1, 100),
    "gaussian_sxy": (0.01, 1e4),
    "gaussian_compat": (0.0, 1e3),
    "bilateral_sxy": (0.01, 1e4),
    "bilateral_srgb": (0.01, 1e4),
    "bilateral_compat": (0.0, 1e3),
    "guard_share": (0.0, 1.0),
    "guard_keep": (0.0, 1.0),
    "collapse_share": (0.0, 1.0),
    "collapse_lost": (0.0, 1.0),
}


def bilateral_sxy_pixels(metres: float, pixel_size_m: float) -> float:
    """The bilateral kernel width in pixels for a width in metres on pixels ``pixel_size_m`` wide."""
    return float(np.clip(metres / pixel_size_m, 3.0, PAPER_BILATERAL_SXY_PX))


def params_for_resolution(pixel_size_m: float | None, bilateral_m: float | None = None,
                          **overrides) -> CRFParams:
    """The CRF settings for a raster whose pixels are ``pixel_size_m`` metres wide (None: no metric grid).

    The rule: the bilateral kernel spans the wider of RULE_BILATERAL_M on the ground and MIN_BILATERAL_PX
    (one stride-8 feature cell), at most the paper's 80 px, and MIN_BILATERAL_PX without a metric grid;
    colour range 5, weight 5; Gaussian 3 px, weight 3. Chosen so that on every validation set the CRF
    raises OA and costs no class more than 2 F1 points, whichever scoring ``segment`` picks (figures:
    ``benchmarks/crf_settings.py``, the README's DenseCRF entry). ``bilateral_m``, a width the user asked
    for (honoured down to 3 px), replaces the rule's; it is refused without a metric grid, where it has no
    width in pixels (a width the user chose is not swapped for another silently). ``overrides`` are
    CRFParams fields (``bilateral_sxy`` in pixels wins over both).
    """
    if "bilateral_sxy" in overrides:
        sxy = overrides["bilateral_sxy"]
    elif bilateral_m is not None:
        if not pixel_size_m:
            raise GeoprotoError(f"{bilateral_m:g} m cannot be converted to pixels: the raster has no metric pixel "
                                f"size (no projected CRS, or a rotated grid); give the width in pixels "
                                f"(crf_bilateral_px)", param="crf_bilateral_m", mentions=("crf_bilateral_px",))
        sxy = bilateral_sxy_pixels(bilateral_m, pixel_size_m)
    elif kernel_at_floor(pixel_size_m, overrides):
        sxy = MIN_BILATERAL_PX
    else:
        sxy = float(np.clip(RULE_BILATERAL_M / pixel_size_m, MIN_BILATERAL_PX, PAPER_BILATERAL_SXY_PX))
    return CRFParams(**{**overrides, "bilateral_sxy": sxy})


def kernel_at_floor(pixel_size_m: float | None, overrides: dict) -> bool:
    """Whether ``params_for_resolution`` falls back to MIN_BILATERAL_PX: no pixel size in metres and no
    width in pixels given (a width in metres is refused there)."""
    return not pixel_size_m and "bilateral_sxy" not in overrides


def floor_warning(named: str, pixel_size_param: str | None = None) -> GeoprotoWarning:
    """Why the rule's kernel may not fit imagery without a pixel size in metres (``named``): its floor in
    pixels spans RULE_BILATERAL_M on the ground at one resolution only. ``pixel_size_param``: the
    caller's parameter that states a pixel size, if it has one."""
    remedy = "its width in pixels (crf_bilateral_px)" if pixel_size_param is None else \
        f"the pixel size ({pixel_size_param}) or the kernel's width in pixels (crf_bilateral_px)"
    return GeoprotoWarning(
        f"{named}: no pixel size in metres (no projected CRS, or a rotated grid), so the CRF's appearance kernel "
        f"is {MIN_BILATERAL_PX:g} px wide, the rule's {RULE_BILATERAL_M:g} m only on "
        f"{RULE_BILATERAL_M / MIN_BILATERAL_PX:g} m pixels; on other imagery give {remedy}",
        mentions=("crf_bilateral_px",) + ((pixel_size_param,) if pixel_size_param else ()))


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """A 3 x H x W image in [0, 1] as the C-contiguous H x W x 3 uint8 array DenseCRF's bilateral kernel
    reads (a quarter of the float image's bytes to send to a worker)."""
    return np.ascontiguousarray((np.transpose(image, (1, 2, 0)) * 255).round().astype(np.uint8))


def resolve_backend(backend: str) -> str:
    """The backend to run; fails early, before any model runs, when the one asked for cannot run here.

    ``auto`` is torch everywhere: on a GPU it refines the whole batch beside the model, and on a CPU its
    2 x 2 appearance blocks make it faster than pydensecrf2's process pool on the same cores
    (``benchmarks/segment_throughput.py``), at the labels' agreement the tests hold it to.
    """
    if backend not in BACKENDS:
        raise GeoprotoError(f"{backend!r}: choose {', '.join(BACKENDS)}", param="crf_backend")
    if backend == "auto":
        return "torch"
    if backend == "densecrf" and not _densecrf_installed():
        raise GeoprotoError("densecrf needs pydensecrf2, which is not installed: pip install 'geoproto[crf]' "
                            "(or use the torch backend)", param="crf_backend")
    return backend


def _densecrf_installed() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def refine(rgb: np.ndarray, probabilities: np.ndarray, params: CRFParams) -> tuple[np.ndarray, bool]:
    """pydensecrf2: refine ``probabilities`` (K x H x W) of a tile whose colours are ``rgb`` (H x W x 3 uint8).

    Returns the refined probabilities and whether they were kept (False: the guard rejected them and
    the input is returned).
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    classes, height, width = probabilities.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.clip(probabilities, 1e-6, 1.0))))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(rgb), compat=params.bilateral_compat)
    refined = np.array(crf.inference(params.iterations), dtype=np.float32).reshape(classes, height, width)
    before = np.bincount(probabilities.argmax(0).ravel(), minlength=classes)
    after = np.bincount(refined.argmax(0).ravel(), minlength=classes)
    if not keeps_classes(before, after, params):
        return probabilities, False
    return refined, True


def keeps_classes(before: np.ndarray, after: np.ndarray, params: CRFParams) -> bool:
    """The guard, shared by both backends: whether a window's refinement may be kept, from its pixels per
    class before (argmax of the model) and after the CRF.

    It rejects a collapse, not a clean-up: a large class (``guard_share`` of the window or more) that
    kept less than ``guard_keep`` of its pixels, or a window left essentially one class
    (``collapse_share``) where the classes it erased covered ``collapse_lost`` of it or more. A small class
    that vanishes is let go: on held-out ISPRS imagery the small classes the CRF erased were mostly
    false-positive cars, and a guard that protected every class of 2 % vetoed 12 windows of 12 there.
    """
    total = before.sum()
    if not total:
        return True
    large = before >= params.guard_share * total
    if np.any(large & (after < params.guard_keep * before)):
        return False
    top = int(after.argmax())
    return not (after[top] >= params.collapse_share * total
                and total - before[top] >= params.collapse_lost * total)
