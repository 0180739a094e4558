"""Seeded free-form holes inside each image: the inpainting masks partial convolution was made for.

``--mask padding`` marks only the padding of a batch invalid; ``--mask holes`` also punches holes into each
image, in the style of the irregular masks of Liu et al. 2018 ("Image inpainting for irregular holes using
partial convolutions") and the free-form masks of Yu et al. 2019 ("Free-form image inpainting with gated
convolution"): a few thick brush strokes, each a random walk of line segments with a random width and round
joints, and now and then an ellipse.

A mask is drawn in the image's own coordinates from a random stream seeded by ``(seed, index, h, w)`` alone, so
an image has the same holes whether it sits in a padded batch (at the top-left corner of its canvas) or alone.
Shapes are drawn until the covered fraction reaches a target drawn from ``coverage``; the shape that crosses the
range's upper end is cut short (its pixels taken in order along its own axis), so the hole fraction lies in
``coverage`` and at least one pixel stays valid.

When no whole number of pixels ``k`` has ``low * h * w <= k <= high * h * w`` and ``k <= h * w - 1`` (a range
narrower than a pixel, or a tiny image), the image gets exactly ``min(floor(h * w * (low + high) / 2 + 1/2),
h * w - 1)`` hole pixels, the count nearest the range's middle: within one pixel of the range, never the whole
image. Too small to hold a hole: when that count is 0 (a 1x1 or 1x2 image with the default ``(0.1, 0.3)``), the
mask is all valid. A 1x3 image gets one hole pixel (1/3), a 1x4 image one (1/4).

Pure numpy (the drawing) and torch (the result); a 512x512 mask takes a few milliseconds.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_COVERAGE = (0.1, 0.3)
_MAX_SHAPES = 400  # strokes and ellipses before the rest is filled around the last point (never reached in practice)
_ELLIPSE_P = 0.15  # chance that a shape is an ellipse rather than a brush stroke


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_coverage(coverage) -> tuple[float, float]:
    try:
        low, high = (float(c) for c in coverage)
    except (TypeError, ValueError):
        raise ValueError(f"coverage must be a pair (low, high) of fractions, got {coverage!r}") from None
    if not (0.0 <= low <= high < 1.0):
        raise ValueError(f"coverage must satisfy 0 <= low <= high < 1, got {coverage!r}")
    return low, high


def hole_counts(h: int, w: int, coverage: tuple[float, float] = DEFAULT_COVERAGE) -> tuple[int, int]:
    """The range ``(k_min, k_max)`` of hole pixel counts an ``h x w`` image may get for ``coverage``: the whole
    numbers in ``[low * h * w, high * h * w]`` that leave a pixel valid or, if there are none, the one count
    nearest the range's middle (at most ``h * w - 1``; ``(0, 0)``: no holes)."""
    h = _check_int("h", h, 1)
    w = _check_int("w", w, 1)
    low, high = _check_coverage(coverage)
    total = h * w
    k_min = math.ceil(low * total - 1e-9)
    k_max = min(math.floor(high * total + 1e-9), total - 1)
    if k_min > k_max:
        k_min = k_max = min(math.floor(total * (low + high) / 2 + 0.5 + 1e-9), total - 1)  # halves round up
    return k_min, k_max


def hole_mask(h: int, w: int, *, seed: int, index: int,
              coverage: tuple[float, float] = DEFAULT_COVERAGE) -> torch.Tensor:
    """Free-form holes for one ``h x w`` image: bool ``(h, w)``, True = valid, False = hole.

    Deterministic in ``(seed, index, h, w)`` (``index`` is the image's place in the collection, so that every
    image gets its own holes). The hole fraction lies in ``coverage = (low, high)``, ``0 <= low <= high < 1``,
    and at least one pixel stays valid; where no whole number of pixels does that, the count nearest the range's
    middle (see :func:`hole_counts`; 0 for a 1x1 image: no holes).

    Raises:
        ValueError: ``h`` or ``w`` not a positive integer, ``seed`` or ``index`` not a non-negative integer, or a
            ``coverage`` that is not ``0 <= low <= high < 1``.
    """
    h = _check_int("h", h, 1)
    w = _check_int("w", w, 1)
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    k_min, k_max = hole_counts(h, w, coverage)
    if k_max == 0:
        return torch.ones(h, w, dtype=torch.bool)
    low, high = _check_coverage(coverage)
    rng = np.random.default_rng([seed, index, h, w])
    target = min(max(round(rng.uniform(low, high) * h * w), k_min), k_max)
    return torch.from_numpy(~_draw(rng, h, w, target, k_max))


def _draw(rng: np.random.Generator, h: int, w: int, target: int, k_max: int) -> np.ndarray:
    """Holes (True) covering between ``target`` and ``k_max`` pixels of an ``h x w`` grid."""
    hole = np.zeros((h, w), dtype=bool)
    covered = 0
    size = max(h, w)
    point = np.array([rng.uniform(0, h - 1), rng.uniform(0, w - 1)])
    shapes = 0
    while covered < target and shapes < _MAX_SHAPES:
        shapes += 1
        if rng.random() < _ELLIPSE_P:
            shapes_pixels = [_ellipse(rng, h, w, size)]
        else:
            shapes_pixels, point = _stroke(rng, h, w, size)
        for (r0, c0), inside, order in shapes_pixels:
            window = hole[r0:r0 + inside.shape[0], c0:c0 + inside.shape[1]]
            new = inside & ~window
            n_new = int(new.sum())
            if covered + n_new > k_max:  # cut the shape short: its first pixels along its axis, up to target
                rows, cols = np.nonzero(new)
                keep = np.argsort(order[rows, cols], kind="stable")[:target - covered]
                window[rows[keep], cols[keep]] = True
                return hole
            window |= new
            covered += n_new
            if covered >= target:
                return hole
    if covered < target:  # fall-back (no shape drawing would get here in hundreds of shapes): grow a blob
        rows, cols = np.nonzero(~hole)
        dist = (rows - point[0]) ** 2 + (cols - point[1]) ** 2
        keep = np.argsort(dist, kind="stable")[:target - covered]
        hole[rows[keep], cols[keep]] = True
    return hole


def _window(lo_r: float, hi_r: float, lo_c: float, hi_c: float, h: int, w: int):
    """The pixel grid of a bounding box clipped to the image: ``(r0, c0)``, rows ``(n, 1)``, cols ``(1, m)``."""
    r0, r1 = max(0, math.floor(lo_r)), min(h - 1, math.ceil(hi_r))
    c0, c1 = max(0, math.floor(lo_c)), min(w - 1, math.ceil(hi_c))
    rows = np.arange(r0, max(r0, r1) + 1, dtype=np.float64)[:, None]
    cols = np.arange(c0, max(c0, c1) + 1, dtype=np.float64)[None, :]
    return (r0, c0), rows, cols


def _stroke(rng: np.random.Generator, h: int, w: int, size: int):
    """A brush stroke: a random walk of 2-8 segments of one random width. Returns one ``(origin, inside, order)``
    per segment (a capsule: the points within ``width / 2`` of the segment; ``order`` = position along it) and
    the stroke's end point."""
    radius = max(1.0, rng.uniform(0.01, 0.05) * size)  # >= 1: the capsule always holds a pixel
    point = np.array([rng.uniform(0, h - 1), rng.uniform(0, w - 1)])
    angle = rng.uniform(0, 2 * math.pi)
    pieces = []
    for _ in range(int(rng.integers(2, 9))):
        angle += rng.normal(0.0, math.pi / 4)
        length = rng.uniform(0.05, 0.25) * size
        end = point + length * np.array([math.sin(angle), math.cos(angle)])
        end = np.clip(end, [0.0, 0.0], [h - 1.0, w - 1.0])
        pieces.append(_capsule(point, end, radius, h, w))
        point = end
    return pieces, point


def _capsule(a: np.ndarray, b: np.ndarray, radius: float, h: int, w: int):
    (r0, c0), rows, cols = _window(min(a[0], b[0]) - radius, max(a[0], b[0]) + radius,
                                   min(a[1], b[1]) - radius, max(a[1], b[1]) + radius, h, w)
    d = b - a
    dd = float(d @ d)
    t = ((rows - a[0]) * d[0] + (cols - a[1]) * d[1]) / dd if dd > 0 else np.zeros_like(rows + cols)
    tc = np.clip(t, 0.0, 1.0)
    dist2 = (rows - a[0] - tc * d[0]) ** 2 + (cols - a[1] - tc * d[1]) ** 2
    return (r0, c0), dist2 <= radius * radius, t + 0.0 * dist2  # order: along the segment, from a


def _ellipse(rng: np.random.Generator, h: int, w: int, size: int):
    """An ellipse with semi-axes of 2-12% of the longer side (>= 1 pixel), at a random angle."""
    centre = np.array([rng.uniform(0, h - 1), rng.uniform(0, w - 1)])
    a, b = (max(1.0, rng.uniform(0.02, 0.12) * size) for _ in range(2))
    theta = rng.uniform(0, math.pi)
    reach = max(a, b)
    (r0, c0), rows, cols = _window(centre[0] - reach, centre[0] + reach, centre[1] - reach, centre[1] + reach, h, w)
    dr, dc = rows - centre[0], cols - centre[1]
    u = dr * math.sin(theta) + dc * math.cos(theta)  # along the first axis
    v = dr * math.cos(theta) - dc * math.sin(theta)
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if not inside.any():  # a centre between pixels on a thin image: its nearest pixel
        inside = np.zeros(inside.shape, dtype=bool)
        inside[np.unravel_index(np.argmin(dr ** 2 + dc ** 2), inside.shape)] = True
    return (r0, c0), inside, u + 0.0 * v


def apply_holes(mask: torch.Tensor, sizes: Sequence[tuple[int, int]], index: Sequence[int], *, seed: int,
                coverage: tuple[float, float] = DEFAULT_COVERAGE) -> torch.Tensor:
    """The padding mask of a batch times each image's :func:`hole_mask`, placed at the image's top-left corner.

    Args:
        mask: ``(N, C, H, W)`` validity mask of a padded batch (``C`` is 1 for the suite's masks; with more
            channels every channel gets the same holes), any dtype (bool too).
        sizes: ``N`` pairs ``(h, w)``, each image's own size, ``h <= H`` and ``w <= W``.
        index: ``N`` non-negative integers, each image's place in the collection (seeds its holes).
        seed: the run's seed.
        coverage: the hole fraction range of :func:`hole_mask`.

    Returns:
        A new mask, same shape, dtype and device as ``mask``: 0 (False) in each image's holes, ``mask`` elsewhere.
        The padding is never touched by a hole.

    Raises:
        ValueError: a mask that is not 4-d, ``sizes`` or ``index`` not of length ``N``, an image larger than the
            canvas, or bad values for :func:`hole_mask`.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise ValueError(f"mask must be a tensor (N, C, H, W), got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    n, _, H, W = mask.shape
    sizes, index = list(sizes), list(index)
    if len(sizes) != n or len(index) != n:
        raise ValueError(f"sizes and index must have one entry per image (N = {n}), got {len(sizes)} sizes and "
                         f"{len(index)} indices")
    holes = torch.ones(n, 1, H, W, dtype=torch.bool)
    for i, (size, idx) in enumerate(zip(sizes, index)):
        try:
            h, w = size
        except (TypeError, ValueError):
            raise ValueError(f"sizes[{i}] must be a pair (h, w), got {size!r}") from None
        if not (isinstance(h, (int, np.integer)) and isinstance(w, (int, np.integer)) and 0 <= h <= H
                and 0 <= w <= W):
            raise ValueError(f"sizes[{i}] = {size!r} is not a size (h, w) that fits the canvas {H}x{W}")
        if h == 0 or w == 0:  # an empty image: nothing to punch
            continue
        holes[i, 0, :h, :w] = hole_mask(h, w, seed=seed, index=idx, coverage=coverage)
    holes = holes.to(mask.device)
    if mask.dtype == torch.bool:
        return mask & holes
    return mask * holes.to(mask.dtype)
