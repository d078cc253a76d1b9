"""Alternatives to plain prototype matching (eq. 2), for the classifier to score windows with.

- Multi-scale features: the window's features at its own scale and at twice its input scale (finer detail,
  small objects), pooled back onto the same registered grid and concatenated.
- Features averaged over orientations of the window (test-time augmentation): aerial imagery has no up
  nor down, so the window flipped (and transposed) describes the same ground; each orientation's features,
  turned back onto the window's grid, are averaged (``OrientedExtractor``), for support and queries alike.
- A linear head fitted on the support's labelled pixels: prototypes treat every feature channel alike;
  a few hundred steps of softmax regression, started at the prototypes' cosine classifier, learn which
  channels separate the user's classes.

Both are options: ``crossval.choose_scoring`` decides on the user's own polygons whether either beats plain
prototypes (``crossval.SCORING_CONFIDENCE``). Every head maps features (B x C x h x w on the registered grid) to
logits at feature resolution (B x K x h x w), like ``fewshot.match_logits``, so ``fewshot.upsample_scores``
brings them to pixel resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import GeoprotoError
from .fewshot import DEFAULT_ALPHA, FEATURE_STRIDE, PrototypeAccumulator, match_logits
from .models.runtime import CONTEXT_MARGIN, GRID, reflect

PROTOTYPES = "prototypes"
LINEAR = "linear"
HEADS = (PROTOTYPES, LINEAR)
SCALES = (1, 2)  # the multi-scale option: the window at 1x and 2x input scale
# Ways of scoring a window, from its features and the support: (input scales, head).
VARIANTS = {"prototypes": ((1,), PROTOTYPES), "multiscale": (SCALES, PROTOTYPES),
            "linear": ((1,), LINEAR), "multiscale+linear": (SCALES, LINEAR)}
DEFAULT_VARIANT = "prototypes"
HEAD_STEPS = 300
HEAD_LEARNING_RATE = 0.05
# Pull towards the prototypes' classifier: with a few hundred labelled cells a free linear head would fit
# the support's quirks; anchored, it moves only where the support clearly asks it to.
HEAD_DECAY = 1e-3
MAX_CELLS_PER_CLASS = 4000  # cells of each class the head is fitted on at most (chosen at random beyond)
# The orientations a window's features can be averaged over: each is a transpose (or not) then flips of the
# given image axes. 1: the window as it is; 2: and its mirror image; 4: every flip; 8: every flip of the
# window and of its transpose (the square's eight symmetries).
_FLIPS = ((), (-1,), (-2,), (-2, -1))
ORIENTATIONS = {1: ((False, ()),), 2: ((False, ()), (False, (-1,))), 4: tuple((False, dims) for dims in _FLIPS),
                8: tuple((transpose, dims) for transpose in (False, True) for dims in _FLIPS)}
DEFAULT_ORIENTATIONS = 1


def second_scale_features(extract, images: np.ndarray | torch.Tensor, context: int = 0) -> torch.Tensor:
    """Features of windows encoded at twice their input scale, on the windows' own registered grid:
    cell (i, j) describes the pixel block [8i, 8i + 8) x [8j, 8j + 8), as at 1x (B x C x ceil(H/8) x ceil(W/8)).

    ``extract`` is a ``FeatureExtractor``-like callable (images, context) -> features and ``images`` what it
    takes (B x 3 x (H + 2 context) x (W + 2 context), in [0, 1]; a tensor is passed on as tensors, so
    gradients flow through). At 2x a cell covers a 4 x 4 block, so 2 x 2 cells are averaged back onto
    each 8 x 8 block. The 2x window holds 4x the pixels: it is encoded in up to 2 x 2 pieces about the
    window's own size, each with up to CONTEXT_MARGIN pixels of the upsampled image around it, so the
    encoder needs about the memory of a 1x window (the pieces join like windows of a raster do).
    """
    height, width = images.shape[-2] - 2 * context, images.shape[-1] - 2 * context
    as_array = isinstance(images, np.ndarray)
    # Pixel x of the window becomes 2x pixels 2x and 2x + 1: block [8i, 8i + 8) is 2x cells 2i and 2i + 1.
    upsampled = F.interpolate(torch.from_numpy(images) if as_array else images, scale_factor=2,
                              mode="bilinear", align_corners=False)
    piece_context = min(2 * context, CONTEXT_MARGIN)
    trim = 2 * context - piece_context
    upsampled = upsampled[..., trim:upsampled.shape[-2] - trim, trim:upsampled.shape[-1] - trim]
    row_cuts, col_cuts = _piece_cuts(2 * height), _piece_cuts(2 * width)
    rows = []
    for top, bottom in zip(row_cuts, row_cuts[1:]):
        row = []
        for left, right in zip(col_cuts, col_cuts[1:]):
            piece = upsampled[..., top:bottom + 2 * piece_context, left:right + 2 * piece_context]
            piece = np.ascontiguousarray(piece.numpy()) if as_array else piece
            row.append(extract(piece, piece_context).float())
        rows.append(torch.cat(row, -1))
    fine = torch.cat(rows, -2)  # B x C x ceil(2H/8) x ceil(2W/8): 4 x 4 blocks
    # ceil_mode: a last odd cell (a window edge) is averaged alone, not with padding.
    return F.avg_pool2d(fine, 2, ceil_mode=True)


def _piece_cuts(extent: int) -> list[int]:
    """Where a 2x extent is cut in two, about half-way: at a multiple of GRID (the coarsest stride), so
    every stage of every piece sees the grid phase the whole window would."""
    middle = -(-extent // (2 * GRID)) * GRID
    return [0, middle, extent] if middle < extent else [0, extent]


def concat_scales(*features: torch.Tensor) -> torch.Tensor:
    """Features of several scales as one (B x sum(C) x h x w): each L2-normalised per cell first, so every
    scale counts equally in a cosine, whatever its features' magnitude."""
    return torch.cat([F.normalize(f.float(), dim=1) for f in features], 1)


def at_scales(extract, scales: tuple[int, ...]):
    """``extract`` giving the features of ``scales``: itself for (1,), a ``MultiScaleExtractor`` for SCALES."""
    if tuple(scales) not in ((1,), SCALES):
        raise GeoprotoError(f"must be (1,) or {SCALES}, got {tuple(scales)}", param="scales")
    return MultiScaleExtractor(extract) if len(scales) > 1 else extract


class MultiScaleExtractor:
    """A ``FeatureExtractor`` giving the multi-scale features (1x and 2x, ``concat_scales``): a drop-in
    wherever windows are encoded."""

    def __init__(self, extract):
        self.extract = extract

    @property
    def out_channels(self) -> int:
        return 2 * self.extract.out_channels

    @property
    def device(self) -> torch.device:
        return self.extract.device

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor, context: int = 0) -> torch.Tensor:
        # Up to the device once: the 2x window is upsampled and cut into its pieces there.
        batch = self.extract.to_device(images)
        return concat_scales(self.extract(batch, context), second_scale_features(self.extract, batch, context))


def feature_extractor(base, orientations: int = DEFAULT_ORIENTATIONS, scales: tuple[int, ...] = (1,)):
    """The features windows are encoded to: those of ``base`` (a ``FeatureExtractor``) averaged over
    ``orientations``, at ``scales``. Always in this order, scales over orientations (each scale's window, its
    2x pieces too, averaged over the orientations), so that support and queries, a prototype file's and a
    worker's features are made alike and ``orientations_of``, ``scales_of`` read them back."""
    return at_scales(oriented(base, orientations), scales)


def oriented(extract, orientations: int):
    """``extract`` giving features averaged over ``orientations`` (``ORIENTATIONS``): itself for 1, else an
    ``OrientedExtractor``. Scales go over orientations (``feature_extractor``), never under them."""
    if isinstance(extract, MultiScaleExtractor):
        raise TypeError("orient each scale's features: oriented() goes inside at_scales() (feature_extractor)")
    orientations = check_orientations(orientations)
    return OrientedExtractor(extract, orientations) if orientations > 1 else extract


def check_orientations(orientations) -> int:
    """``orientations`` if it is one of ``ORIENTATIONS``: an int, not 4.0 nor True (recorded in files and
    job records, compared as given)."""
    if type(orientations) is not int or orientations not in ORIENTATIONS:
        raise GeoprotoError(f"must be one of {', '.join(map(str, ORIENTATIONS))}, got {orientations!r}",
                            param="orientations")
    return orientations


def scales_of(extract) -> tuple[int, ...]:
    """The input scales the features of ``extract`` come from: (1,), or SCALES (``feature_extractor``)."""
    return SCALES if isinstance(extract, MultiScaleExtractor) else (1,)


def orientations_of(extract) -> int:
    """How many orientations the features of ``extract`` (possibly multi-scale: ``feature_extractor``) are
    averaged over."""
    extract = extract.extract if isinstance(extract, MultiScaleExtractor) else extract
    return extract.orientations if isinstance(extract, OrientedExtractor) else 1


class OrientedExtractor:
    """A ``FeatureExtractor`` whose features are the mean over ``orientations`` of the window's
    (``ORIENTATIONS``): the window flipped (or transposed), encoded, its features turned back. A drop-in
    wherever windows are encoded; its features have the encoder's channels and grid.

    Averaged over a group of symmetries, the features are exactly equivariant to them where the window's
    sides are multiples of 8: those of a flipped window are the window's, flipped. Other sides (``segment``'s
    default 417 px tile) are registered exactly too (``turned_features``), but a flipped window is then
    framed a few pixels differently, so the equality holds only approximately.
    """

    def __init__(self, extract, orientations: int):
        self.extract, self.orientations = extract, orientations

    @property
    def encoder(self):
        return self.extract.encoder

    @property
    def out_channels(self) -> int:
        return self.extract.out_channels

    @property
    def device(self) -> torch.device:
        return self.extract.device

    def to_device(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.extract.to_device(images)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor, context: int = 0) -> torch.Tensor:
        # Up to the device once: every orientation is turned there, not copied and uploaded again.
        batch = self.extract.to_device(images)
        total = None
        for transpose, dims in ORIENTATIONS[self.orientations]:
            features = turned_features(self.extract, batch, context, transpose, dims)
            total = features if total is None else total.add_(features)
        return total / self.orientations


def turned_features(extract, images: np.ndarray | torch.Tensor, context: int, transpose: bool,
                    dims: tuple[int, ...]) -> torch.Tensor:
    """Features of windows transposed (if ``transpose``) then flipped along ``dims``, turned back onto the
    windows' own registered grid (B x C x ceil(H/8) x ceil(W/8), as ``extract(images, context)``). A tensor
    is turned where it lies (on the encoder's device, ``OrientedExtractor``).

    Cell i covers pixels [8i, 8i + 8): flipped, a side that is not a multiple of 8 would put the cells'
    edges elsewhere, so the flipped window is encoded with the few pixels before it (its context, or the
    reflection ``extract`` would add) that make its side a multiple of 8, and every cell turns back onto a
    block of the window's grid.
    """
    images = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    if transpose:
        swapped = images.transpose(-1, -2).contiguous()
        return turned_features(extract, swapped, context, False, dims).transpose(-1, -2)
    if not dims:
        return extract(images, context)
    flipped = images.flip(dims)
    sides = {axis: flipped.shape[axis] - 2 * context for axis in (-2, -1)}
    short = {axis: (-sides[axis]) % FEATURE_STRIDE if axis in dims else 0 for axis in (-2, -1)}
    most = max(short.values())
    if context < most:  # as window_features would reflect the window: the same pixels, there sooner
        flipped = reflect(flipped, [most - context] * 4)
        context = most
    kept = context - most  # the context left on every side once the shorter sides are lengthened
    for axis in (-2, -1):
        flipped = flipped.narrow(axis, most - short[axis], sides[axis] + short[axis] + 2 * kept)
    return extract(flipped.contiguous(), kept).flip(dims)


class PrototypeHead:
    """Eq. 2: cosine similarity to the prototypes, times alpha."""

    def __init__(self, prototypes: torch.Tensor, alpha: float = DEFAULT_ALPHA):
        self.prototypes, self.alpha = prototypes, alpha

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return match_logits(features, self.prototypes, self.alpha)


class LinearHead:
    """A linear classifier on L2-normalised features, without bias: logits = weight . f / |f|
    (B x K x h x w). With weight = alpha x the normalised prototypes it is eq. 2 exactly.

    ``fit_linear_head`` trains a bias alongside the weights and leaves it out here: fitted class-balanced,
    the bias learns the shift that makes the support's classes equally frequent, which says nothing about
    the imagery (a user draws a few boxes per class whatever each class covers). Kept, it pushed pixels
    unlike any support towards the classes the support found hard (measured on the SpaceNet chip, default
    encoder: OA 87 with it, 96 without, 91 for prototypes); trained without one, the weights absorb that
    shift instead (88). Dubai validation tiles gain about as much either way.
    """

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    @classmethod
    def from_prototypes(cls, prototypes: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> "LinearHead":
        return cls(alpha * F.normalize(prototypes.float(), dim=1))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        features = F.normalize(features.float(), dim=1)
        return torch.einsum("bchw,kc->bkhw", features, self.weight.to(features.device))


class SupportCells:
    """The support's labelled pixels at feature resolution: every cell any labelled pixel pulls on, its
    normalised features, and how many pixels of each class pull on it (their labels pulled back through
    the upsampling that scores go through, ``fewshot.pull_back_labels``)."""

    def __init__(self):
        self.features: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []

    def add(self, features: torch.Tensor, pulled_back: torch.Tensor) -> None:
        """``features``: B x C x h x w floats; ``pulled_back``: their labels, B x K x h x w
        (``fewshot.pull_back_labels``)."""
        weights = pulled_back.permute(0, 2, 3, 1)  # B x h x w x K
        pulled = weights.sum(-1) > 0
        self.features.append(F.normalize(features, dim=1).permute(0, 2, 3, 1)[pulled].cpu())
        self.weights.append(weights[pulled].cpu())

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cells x C features, cells x K class weights)."""
        return torch.cat(self.features), torch.cat(self.weights)


def fit_linear_head(features: torch.Tensor, weights: torch.Tensor, prototypes: torch.Tensor,
                    alpha: float = DEFAULT_ALPHA, steps: int = HEAD_STEPS, seed: int = 0,
                    max_cells_per_class: int = MAX_CELLS_PER_CLASS) -> LinearHead:
    """A linear head fitted on support cells (``SupportCells.arrays``), starting from eq. 2's classifier.

    Class-balanced: each class's cells weigh 1 in total, so a class drawn with one small polygon counts as
    much as one drawn with many; a bias is fitted too and left out of the head (``LinearHead``). Full-batch
    Adam, ``steps`` steps, with an L2 pull towards the start
    (``HEAD_DECAY``). Deterministic: the only randomness is which cells are kept beyond
    ``max_cells_per_class`` (by ``seed``).
    """
    features, weights = _subsample(features.float(), weights.float(), max_cells_per_class, seed)
    start = LinearHead.from_prototypes(prototypes, alpha)
    # Callers encode under inference mode; its tensors cannot enter autograd, clones made outside it can.
    with torch.inference_mode(False), torch.enable_grad():
        features, weights, anchor = features.clone(), weights.clone(), start.weight.clone()
        weight = anchor.clone().requires_grad_(True)
        bias = torch.zeros(len(anchor), requires_grad=True)  # absorbs the class balance; dropped (LinearHead)
        class_pixels = weights.sum(0)
        balance = weights / class_pixels.clamp(min=1e-9)  # each class's cells sum to 1 (0 if absent)
        present = int((class_pixels > 0).sum())
        optimizer = torch.optim.Adam([weight, bias], lr=HEAD_LEARNING_RATE)
        for _ in range(steps):
            optimizer.zero_grad()
            log_probabilities = (features @ weight.T + bias).log_softmax(1)
            loss = -(balance * log_probabilities).sum() / max(present, 1)
            loss = loss + HEAD_DECAY * ((weight - anchor) ** 2).sum()
            loss.backward()
            optimizer.step()
    return LinearHead(weight.detach())


def _subsample(features: torch.Tensor, weights: torch.Tensor, per_class: int, seed: int):
    """At most ``per_class`` cells of each class (by the class pulling hardest on each cell)."""
    generator = torch.Generator().manual_seed(seed)
    dominant = weights.argmax(1)
    keep = []
    for k in range(weights.shape[1]):
        members = torch.nonzero(dominant == k).flatten()
        if len(members) > per_class:
            members = members[torch.randperm(len(members), generator=generator)[:per_class]]
        keep.append(members)
    keep = torch.sort(torch.cat(keep)).values
    return features[keep], weights[keep]


class SupportFit(PrototypeAccumulator):
    """Eq. 1's accumulator (``fewshot.PrototypeAccumulator``: per-class feature sums and pixel counts)
    that also fits a head on the support: ``PROTOTYPES`` (eq. 2) or ``LINEAR`` (``fit_linear_head``, for
    which it keeps the labelled cells too)."""

    def __init__(self, num_classes: int, channels: int, head: str = PROTOTYPES):
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        super().__init__(num_classes, channels)
        self.head = head
        self.cells = SupportCells() if head == LINEAR else None

    def add_window(self, features: torch.Tensor, pulled_back: torch.Tensor, area: torch.Tensor) -> None:
        """Eq. 1's sums, and the cells for a linear head, from one pull-back of the window's labels."""
        super().add_window(features, pulled_back, area)
        if self.cells is not None:
            self.cells.add(features, pulled_back)

    def fit(self, alpha: float = DEFAULT_ALPHA, seed: int = 0):
        """The head: a callable features (B x C x h x w) -> logits (B x K x h x w)."""
        prototypes = self.prototypes()
        if self.head == PROTOTYPES:
            return PrototypeHead(prototypes, alpha)
        return fit_linear_head(*self.cells.arrays(), prototypes, alpha, seed=seed)
