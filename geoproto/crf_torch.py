"""DenseCRF in PyTorch: mean-field inference over a batch of windows on the model's device.

The energy and the inference are pydensecrf2's ``DenseCRF2D`` as ``crf.refine`` sets it up: unary -log p
(p clipped to [1e-5, 1], as ``unary_from_softmax``); a Gaussian kernel on (x, y) / sxy and a bilateral
kernel on (x, y) / sxy, (r, g, b) / srgb, each with Potts compatibility and symmetric normalisation
(pydensecrf's default NORMALIZE_SYMMETRIC: the filtered value is n * K (n * Q) with n = 1 / sqrt(K 1));
the same number of iterations of ``Q <- softmax(-U + sum_k w_k n_k K_k(n_k Q))`` starting from
``softmax(-U)``.

Each Gaussian filter K is the permutohedral-lattice approximation of Adams et al. (2010) that pydensecrf
itself uses, reproduced step by step (the same lattice scale, rounding, barycentric weights, [1/2, 1, 1/2]
blur along the d + 1 lattice axes and slice factor), not an exact Gaussian: an exact one would be a
different, if better, approximation of the paper's kernel than the one the CRF's parameters were tuned
with, and the lattice is what makes the 5-D bilateral kernel affordable at all (its cost is linear in the
points, whatever the kernel width). Left to floating point are the order of summation and float32
throughout, as in pydensecrf.

What is approximated, and why: the appearance (bilateral) kernel is computed on blocks of
``appearance_stride`` pixels a side (2 by default): each block is one lattice point at its pixels' mean
position and mean colour, weighted by its pixel count (in the normalisation and in the message, which
carries the block's summed Q), and every pixel of a block receives the block's message. The lattice is as
large as the points (the fine colour range makes nearly every pixel a simplex of its own), so its
construction and its filters are the CRF's cost, pydensecrf's and ours; blocks of 2 x 2 divide both by
four. The spatial range is a few blocks wide (the resolution rule's width, ``crf.params_for_resolution``,
is at least 8 px: four blocks), so what changes is confined to blocks that straddle a colour edge, where
the unary and the full-resolution smoothness kernel still separate the pixels. Splitting those blocks
(one point per side of the edge) was tried: the labels' agreement with pydensecrf rose by about a point
for a quarter more lattice points, the accuracy against the truth not at all, and the speed fell below
2.5 x pydensecrf2's pool (``benchmarks/crf_agreement.py``); at the rule's narrower kernels a one-off
trial splitting them into single pixels narrowed the worst class F1 gap by a third at 1.5 x the pool
instead of 2.2 x (the README's DenseCRF entry).
``appearance_stride=1`` is pydensecrf's CRF exactly (labels agreed on every pixel of the Dubai and
SpaceNet windows compared); the default keeps the issue's bar against it (tests in tests/test_crf.py:
>= 97 % of labels agreeing, overall accuracy within 0.5 points, per-class F1 within 1).

Cost: the lattice is built once per batch (windows share one: the window index is a digit of the vertex
key, so windows never mix) and reused by every iteration and class; the spatial-only Gaussian lattice
depends only on the window's shape and is cached. Vertices are numbered by one sort of their keys, blur
neighbours found in a vectorised hash table (pydensecrf's, as whole-tensor operations), splat and slice
are sparse matrices, the blur gathers. Memory is bounded by the CRF batch, whatever the raster's size.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from . import crf as crf_module
from .errors import GeoprotoError

UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's default clip


class Lattice:
    """A permutohedral lattice over N points of d-dimensional features, as pydensecrf's ``Permutohedral``.

    ``filter(values)`` approximates sum_j exp(-|f_i - f_j|^2 / 2) values_j for every point i (self
    included) for values of shape (N, C): splat each point onto the d + 1 vertices of its simplex,
    blur along each lattice axis, slice back with the same weights. Splat and slice are sparse matrices
    (the splat's entries grouped by vertex, which the sort that numbers the vertices gives for free), the
    blur two gathers per axis.
    """

    def __init__(self, features: torch.Tensor, segments: torch.Tensor | None = None,
                 sorted_columns: bool | None = None):
        points, d = features.shape
        device = features.device
        # MKL's sparse products take a row's columns in any order, CUDA's want them sorted.
        sorted_columns = device.type != "cpu" if sorted_columns is None else sorted_columns
        self.dimensions = d
        rem0, moving, weights = _simplex(features.float())
        # A vertex's key (its first d coordinates) as one integer, in mixed radix: each digit spans the
        # coordinate's range padded by 2 (d + 1), so that simplex vertices (rem0 - (d + 1) .. rem0 + d)
        # and their blur neighbours (+-1, +-d) stay in range (and keys >= 0). The segment (window
        # index) is the top digit, so vertices of different windows never meet.
        rem0 = rem0[:d].long()
        low = rem0.amin(1) - 2 * (d + 1)
        span = rem0.amax(1) + 2 * (d + 1) - low + 1
        strides = [1]
        for size in span.tolist():
            strides.append(strides[-1] * int(size))
        segment_count = int(segments.max()) + 1 if segments is not None else 1
        if strides[-1] * segment_count >= 2 ** 62:
            raise GeoprotoError("DenseCRF kernel widths too small for the torch backend's lattice (e.g. "
                                "crf_bilateral_srgb); widen them or use the densecrf backend", param="crf_backend",
                                mentions=("crf_bilateral_srgb",))
        stride = torch.tensor(strides[:-1], dtype=torch.int64, device=device)
        base = ((rem0 - low[:, None]) * stride[:, None]).sum(0)
        if segments is not None:
            base += segments * strides[-1]
        # Vertex r: + r on every coordinate, - (d + 1) on those whose position d - rank_i < r: from vertex
        # r to r + 1 every coordinate moves up, the one at position r down by d (its stride is 0 for the
        # implied coordinate d).
        moving = moving[:d]
        moved = torch.cat([stride, stride.new_zeros(1)]).index_select(0, moving.reshape(-1)).view(d, points)
        steps = torch.cat([base[None], sum(strides[:d]) - (d + 1) * moved])
        codes = steps.T.cumsum(1)
        codes = codes.reshape(-1)  # point-major: entry n (d + 1) + r is vertex r of point n
        # Number the distinct keys in sorted order; a stable sort keeps each vertex's entries by point.
        sorted_codes, order = torch.sort(codes, stable=True)
        new_vertex = torch.ones_like(sorted_codes, dtype=torch.bool)
        torch.ne(sorted_codes[1:], sorted_codes[:-1], out=new_vertex[1:])
        vertex_of_sorted = torch.cumsum(new_vertex, 0) - 1
        starts = new_vertex.nonzero().squeeze(1)  # where each vertex's run of entries starts
        vertices = sorted_codes.index_select(0, starts)
        self.vertices = len(vertices)
        entry_vertex = torch.empty_like(vertex_of_sorted).scatter_(0, order, vertex_of_sorted)
        # Neighbours along lattice axis j: every coordinate -1 except coordinate j, +d (n1), and the
        # opposite (n2); for the last axis all d stored coordinates move (the (d+1)th is implied). A
        # missing neighbour is the extra vertex M, which always holds zero (its own neighbours are M).
        step = torch.full((d + 1, d), -1, dtype=torch.int64, device=device)
        diagonal = torch.arange(d, device=device)
        step[diagonal, diagonal] = d
        deltas = (step * stride).sum(-1)  # (d + 1,)
        n1 = torch.full((d + 1, self.vertices + 1), self.vertices, dtype=torch.int64, device=device)
        n1[:, :-1] = _KeyTable(vertices).find(vertices[None] + deltas[:, None], self.vertices)
        # n2 is n1's inverse (n1 of u is v exactly when n2 of v is u).
        n2 = torch.full_like(n1, self.vertices)
        n2.scatter_(1, n1[:, :-1], torch.arange(self.vertices, device=device).expand(d + 1, -1))
        n2[:, -1] = self.vertices
        # (d + 1, 2, M + 1), int32 where it fits: half the bytes to read at every blur.
        self._neighbours = torch.stack([n1, n2], 1).to(torch.int32 if self.vertices < 2 ** 31 else torch.int64)
        # The splat's ((M + 1) x N) entries by vertex, the slice's weights by point; both weights kept to
        # fold the normalisation in later.
        self._points = points
        self._splat_counts = torch.cat([starts[1:], starts.new_tensor([len(codes)])]) - starts
        self._splat_points = torch.div(order, d + 1, rounding_mode="floor")
        weights = weights.T.reshape(-1)  # point-major, as codes
        self._splat_weights = weights.index_select(0, order)
        self._set_splat(self._splat_weights)
        # The slice (N x (M + 1)): a point's d + 1 vertices, weighted.
        self._slice_columns = entry_vertex
        self._slice_weights = weights / (1.0 + 2.0 ** -d)
        if sorted_columns:
            columns, permutation = self._slice_columns.view(points, d + 1).sort(1)
            self._slice_columns = columns.view(-1)
            self._slice_weights = self._slice_weights.view(points, d + 1).gather(1, permutation).view(-1)
        self._set_slice(self._slice_weights)

    def _set_splat(self, weights: torch.Tensor) -> None:
        self._splat = _csr(self._splat_counts, self._splat_points, weights, (self.vertices + 1, self._points))

    def _set_slice(self, weights: torch.Tensor) -> None:
        self._slice = _csr(torch.full((self._points,), self.dimensions + 1, device=weights.device),
                           self._slice_columns, weights, (self._points, self.vertices + 1))

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        blurred = self._splat @ values
        scratch = torch.empty((2,) + blurred.shape, dtype=blurred.dtype, device=blurred.device)
        for neighbours in self._neighbours:  # new = old + (n1 + n2) / 2, the zero vertex staying zero
            torch.index_select(blurred, 0, neighbours.view(-1), out=scratch.view(-1, blurred.shape[1]))
            blurred = torch.add(blurred, scratch.sum(0), alpha=0.5)
        return self._slice @ blurred

    def normalise(self, compat: float, mass: torch.Tensor | None = None) -> "Lattice":
        """Make ``filter`` compute compat * n * K(n * values), n = 1 / sqrt(K mass) (pydensecrf's
        NORMALIZE_SYMMETRIC, with Potts weight ``compat``; ``mass`` (N, 1): how many pixels each point
        stands for, 1 by default): n and the weight go into the splat's columns and the slice's rows, so
        an iteration needs no extra pass over the pixels."""
        if mass is None:
            mass = torch.ones(self._points, 1, device=self._slice_weights.device)
        norm = (1.0 / torch.sqrt(self.filter(mass) + 1e-20)).squeeze(1)
        self._set_splat(self._splat_weights * norm.index_select(0, self._splat_points))
        self._set_slice(self._slice_weights * (compat * norm).repeat_interleave(self.dimensions + 1))
        return self


# Odd 64-bit multipliers (as signed int64) for multiplicative hashing, one per level of ``_KeyTable``.
_HASH_MULTIPLIERS = (-7046029254386353131, 2685821657736338717, -4658895280553007687, 1181783497276652981,
                     -3372029247567499371, 6364136223846793005, -2039914414893375259, 3935559000370003845)


class _KeyTable:
    """A hash table of distinct int64 keys -> their index, built and queried with whole-tensor operations
    (pydensecrf's hash table, vectorised). Each level is a table of key indices; at level 0 one of the
    keys hashed to a slot wins it, those that lost go to level 1 with another hash, and so on. A key
    that lost at a level found its slot there taken, so a query whose slot is empty at some level is
    absent and looks no further. Tables are kept at most a quarter full: few keys lose, and a table of
    int32 indices stays small enough for the cache."""

    def __init__(self, keys: torch.Tensor):
        self.keys = keys
        self.levels = []
        index_type = torch.int32 if len(keys) < 2 ** 31 else torch.int64
        index = torch.arange(len(keys), device=keys.device, dtype=index_type)
        while len(index):
            bits = max(4, (4 * len(index) - 1).bit_length())
            multiplier = _HASH_MULTIPLIERS[len(self.levels) % len(_HASH_MULTIPLIERS)] + 2 * (
                len(self.levels) // len(_HASH_MULTIPLIERS))
            slots = _hash(keys.index_select(0, index) if self.levels else keys, multiplier, bits)
            table = torch.full((1 << bits,), -1, dtype=index_type, device=keys.device)
            table.index_put_((slots,), index)
            self.levels.append((multiplier, bits, table))
            index = index[table.index_select(0, slots) != index]

    def find(self, queries: torch.Tensor, missing: int) -> torch.Tensor:
        """The index of each query's key (int64, as ``queries``), ``missing`` where it is not in the table."""
        found = torch.empty_like(queries)
        flat = found.view(-1)
        pending, where = queries.reshape(-1), None
        for multiplier, bits, table in self.levels:
            candidates = table.index_select(0, _hash(pending, multiplier, bits)).long()
            held = candidates >= 0
            hit = held & (self.keys.index_select(0, candidates.clamp(min=0)) == pending)
            result = torch.where(hit, candidates, missing)
            if where is None:
                flat.copy_(result)
            else:
                flat.index_put_((where,), result)
            collided = (held & ~hit).nonzero().squeeze(1)
            if not len(collided):
                break
            pending = pending.index_select(0, collided)
            where = collided if where is None else where.index_select(0, collided)
        return found


def _hash(keys: torch.Tensor, multiplier: int, bits: int) -> torch.Tensor:
    """The top ``bits`` bits of keys * multiplier (mod 2^64): Fibonacci hashing."""
    return torch.bitwise_right_shift(keys * multiplier, 64 - bits) & ((1 << bits) - 1)


def _csr(counts: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A CSR matrix from its entries in row order, ``counts`` per row (rows beyond them are empty).
    Indices are int32 where they fit (as MKL's sparse products take them: int64 ones are converted at
    every product)."""
    index = torch.int32 if len(columns) < 2 ** 31 else torch.int64
    rows = torch.zeros(shape[0] + 1, dtype=index, device=columns.device)
    rows[1:len(counts) + 1] = torch.cumsum(counts, 0)
    rows[len(counts) + 1:] = rows[len(counts)]
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are not
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(rows, columns.to(index), values, shape, check_invariants=False)


def _simplex(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pydensecrf's ``Permutohedral::init`` vectorised, for features (N, d): each point's remainder-0
    vertex (d + 1, N), which coordinate sits at each position d - rank (d + 1, N), and its barycentric
    weights (d + 1, N). Vertex r of a point's simplex is rem0_i + r, less d + 1 where d - rank_i < r."""
    points, d = features.shape
    device = features.device
    features = features.T.contiguous()  # one contiguous row per coordinate
    inv_std_dev = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))
    scale = [float(np.float32(1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev)) for i in range(d)]
    # Elevate onto the plane sum = 0 of R^(d+1) (y = E f), in pydensecrf's order of operations.
    elevated = torch.empty(d + 1, points, device=device)
    running = torch.zeros(points, device=device)
    for j in range(d, 0, -1):
        scaled = features[j - 1] * scale[j - 1]
        torch.sub(running, scaled, alpha=j, out=elevated[j])
        running += scaled
    elevated[0] = running
    # The nearest remainder-0 point, then the simplex: the rank of each coordinate's residual.
    down = float(np.float32(1.0 / (d + 1)))
    rounded = torch.round(elevated * down)
    rem0 = rounded * (d + 1)
    residual = elevated - rem0
    # rank_i = #{j > i: r_i < r_j} + #{j < i: not r_j < r_i} (pydensecrf's pairwise comparisons)
    #        = #{j: r_j > r_i} + #{j < i: r_j == r_i}, in bytes (small counts: fewer bytes to move).
    rank = torch.zeros(d + 1, points, dtype=torch.int8, device=device)
    for j in range(d + 1):
        rank += residual[j] > residual
        rank[j + 1:] += residual[j] == residual[j + 1:]
    rank += rounded.sum(0).to(torch.int8)  # off the plane by this many: bring it back
    wrap = (rank < 0).to(torch.int8) - (rank > d).to(torch.int8)
    rank += (d + 1) * wrap
    rem0 += (d + 1) * wrap
    # Barycentric weights: pydensecrf adds each coordinate's share at its position and subtracts it at
    # the next, so the weight at position k is the share there less the one at k - 1 (wrapping round).
    position = d - rank.long()
    moving = torch.empty_like(position).scatter_(0, position, torch.arange(d + 1, device=device)[:, None]
                                                 .expand(-1, points))
    share = ((elevated - rem0) * down).gather(0, moving)
    barycentric = torch.empty(d + 1, points, device=device)
    torch.sub(share[1:], share[:-1], out=barycentric[1:])
    barycentric[0] = share[0] + (1.0 - share[d])
    return rem0, moving, barycentric


def _pixel_grid(height: int, width: int, sxy: float, device) -> torch.Tensor:
    """(x / sxy, y / sxy) of every pixel, row-major, in float32 as DenseCRF2D computes them."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                                torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    sxy = torch.tensor(sxy, dtype=torch.float32)
    return torch.stack([cols.reshape(-1) / sxy, rows.reshape(-1) / sxy], 1)


@functools.lru_cache(maxsize=8)
def _gaussian_lattice(height: int, width: int, sxy: float, compat: float, device: torch.device) -> Lattice:
    """The spatial kernel's lattice depends only on the window's shape: built once per shape."""
    return Lattice(_pixel_grid(height, width, sxy, device)).normalise(compat)


APPEARANCE_STRIDE = 2  # the appearance kernel's message is computed on blocks of this many pixels a side


def refine_batch(images: torch.Tensor, probabilities: torch.Tensor, params: crf_module.CRFParams,
                 sizes: list[tuple[int, int]] | None = None,
                 appearance_stride: int = APPEARANCE_STRIDE) -> tuple[torch.Tensor, list[bool]]:
    """Refine a batch: ``images`` B x 3 x H x W in [0, 1], ``probabilities`` B x K x H x W, on one device.

    ``sizes`` are the (height, width) of each window's valid top-left part (edge windows of a small
    raster), the part refined, as ``crf.refine`` refines the cropped window [default: all of it].
    ``appearance_stride`` 1 computes pydensecrf's CRF exactly; above 1, the appearance (bilateral)
    kernel sees blocks of that many pixels a side (see the module's docstring).
    Returns the probabilities (refined where the guard kept them, the input elsewhere) and, per window,
    whether the refinement was kept.
    """
    batch, classes, height, width = probabilities.shape
    sizes = sizes or [(height, width)] * batch
    device = probabilities.device
    with torch.inference_mode():
        # The bilateral kernel reads 8-bit colours (crf.to_rgb8), so the two backends see the same ones.
        rgb = (images.float() * 255).round().clamp(0, 255)
        srgb = torch.tensor(params.bilateral_srgb, dtype=torch.float32)
        blocks = _Blocks(sizes, appearance_stride, device)
        appearance = torch.cat([torch.cat([_pixel_grid(h, w, params.bilateral_sxy, device),
                                           rgb[b, :, :h, :w].reshape(3, -1).T / srgb], 1)
                                for b, (h, w) in enumerate(sizes)])
        bilateral = Lattice(blocks.mean(appearance), blocks.window).normalise(params.bilateral_compat, blocks.pixels)
        gaussian = _Stacked([(_gaussian_lattice(h, w, float(params.gaussian_sxy), float(params.gaussian_compat),
                                                device), h * w) for h, w in sizes])
        probs = torch.cat([probabilities[b, :, :h, :w].reshape(classes, -1).T for b, (h, w) in enumerate(sizes)])
        unary = -torch.log(probs.float().clamp(UNARY_CLIP, 1.0))
        q = _softmax(-unary)
        for _ in range(params.iterations):
            energy = gaussian.filter(q).add_(blocks.spread(bilateral.filter(blocks.total(q)))).sub_(unary)
            q = _softmax(energy)

        # The guard, on every window's pixels per class before and after (one transfer for the batch).
        before, after = (torch.bincount(blocks.window_of_pixel * classes + _argmax(scores.T),
                                        minlength=batch * classes)
                         .view(batch, classes).cpu().numpy() for scores in (probs, q))
        kept = [crf_module.keeps_classes(before[b], after[b], params) for b in range(batch)]
        refined = probabilities.clone()
        start = 0
        for b, (h, w) in enumerate(sizes):
            if kept[b]:
                refined[b, :, :h, :w] = q[start:start + h * w].T.reshape(classes, h, w).to(refined.dtype)
            start += h * w
    return refined, kept


class _Blocks:
    """The windows' pixels (row-major, window after window) grouped into square blocks of ``stride``
    pixels a side (fewer at a window's right and bottom edges), block after block: what the appearance
    kernel sees. With stride 1 every pixel is its own block and nothing is computed."""

    def __init__(self, sizes: list[tuple[int, int]], stride: int, device):
        self.stride = stride
        self.window_of_pixel = torch.cat([torch.full((h * w,), b, dtype=torch.int64, device=device)
                                          for b, (h, w) in enumerate(sizes)])
        if stride == 1:
            self.window = self.window_of_pixel  # the window of each block
            self.pixels = None
            return
        of_pixel, window, start = [], [], 0
        for b, (h, w) in enumerate(sizes):
            rows, cols = -(-h // stride), -(-w // stride)
            row = torch.arange(h, device=device) // stride
            col = torch.arange(w, device=device) // stride
            of_pixel.append((start + row[:, None] * cols + col[None]).reshape(-1))
            window.append(torch.full((rows * cols,), b, dtype=torch.int64, device=device))
            start += rows * cols
        self.of_pixel = torch.cat(of_pixel)
        self.window = torch.cat(window)
        counts = torch.bincount(self.of_pixel, minlength=start)
        self.pixels = counts.float()[:, None]
        # Summing a block's pixels as a sparse (blocks x N) product: an index_add is serial on the CPU.
        members = torch.sort(self.of_pixel, stable=True).indices
        self._sum = _csr(counts, members, torch.ones(len(members), device=device), (start, len(self.of_pixel)))

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """Per block, the sum of its pixels' values (N, C) -> (blocks, C)."""
        return values if self.stride == 1 else self._sum @ values

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.stride == 1 else self.total(values) / self.pixels

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """Each pixel gets its block's value: (blocks, C) -> (N, C)."""
        return values if self.stride == 1 else values.index_select(0, self.of_pixel)


def _softmax(energy: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes of (N, K): over the contiguous dimension of the transpose, several
    times faster on the CPU for a handful of classes."""
    return torch.softmax(energy.T, 0).T.contiguous()


def _argmax(scores: torch.Tensor) -> torch.Tensor:
    """argmax over the first (class) dimension, first maximum winning as in numpy: class by class,
    several times faster on the CPU than a reduction across a strided dimension."""
    best, index = scores[0].clone(), torch.zeros(scores.shape[1:], dtype=torch.int64, device=scores.device)
    for k in range(1, len(scores)):
        better = scores[k] > best
        best = torch.where(better, scores[k], best)
        index.masked_fill_(better, k)
    return index


class _Stacked:
    """Block-diagonal lattices: each window's own lattice applied to its consecutive pixels."""

    def __init__(self, parts: list[tuple[Lattice, int]]):
        self.parts = parts

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        lattice, points = self.parts[0]
        if all(part is lattice for part, _ in self.parts):  # windows of one shape: one pass, classes side by side
            windows, classes = len(self.parts), values.shape[1]
            side_by_side = values.view(windows, points, classes).transpose(0, 1).reshape(points, -1)
            return lattice.filter(side_by_side).view(points, windows, classes).transpose(0, 1).reshape(-1, classes)
        out, start = [], 0
        for lattice, points in self.parts:
            out.append(lattice.filter(values[start:start + points]))
            start += points
        return torch.cat(out)
