"""Resampling per image: interpolation and pixel (un)shuffle with their masks."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import _evaluate, image_boxes, valid_extents
from .masks import _mask_as, _no_autocast, _zero_masked, check_input, check_mask
from .windows import _index_anchor

__all__ = [
    "interpolate_per_image",
    "masked_unshuffle", "check_interpolate", "masked_interpolate", "masked_pixel_shuffle", "interpolate_mask",
    "interpolate_to",
]


def masked_unshuffle(
    input: Tensor, mask: Optional[Tensor], factor: int, *, zeroed: bool = False, name: str = "masked_unshuffle"
) -> tuple[Tensor, Optional[Tensor]]:
    """Space-to-depth by ``factor`` in every spatial dimension, of the input and of the mask.

    ``(N, C, *S) -> (N, C * factor**nd, *S/factor)``; output channel ``c * factor**nd + offset``
    holds input channel ``c`` at the sub-position ``offset`` (row-major), as :class:`torch.nn.PixelUnshuffle`
    orders it in 2d. A 1-channel mask becomes a ``C * factor**nd``-channel mask: every sub-position keeps
    its own validity.
    """
    nd = input.dim() - 2
    if nd < 1:
        raise ValueError(f"{name}: input must be (N, C, *spatial), got shape {tuple(input.shape)}")
    check_mask(input, mask, nd, name)
    if int(factor) < 1:
        raise ValueError(f"{name}: the factor must be a positive integer, got {factor}")
    if any(s % factor for s in input.shape[2:]):
        raise ValueError(
            f"{name}: spatial size {tuple(input.shape[2:])} of input {tuple(input.shape)} is not divisible "
            f"by the factor {factor}"
        )

    def unshuffle(t: Tensor) -> Tensor:
        n, c = t.shape[:2]
        split = [c]
        for s in t.shape[2:]:
            split += [s // factor, factor]
        t = t.reshape(n, *split)
        # (N, C, s1, f, s2, f, ...) -> (N, C, f, f, ..., s1, s2, ...)
        order = [0, 1] + [3 + 2 * d for d in range(nd)] + [2 + 2 * d for d in range(nd)]
        t = t.permute(order)
        return t.reshape(n, c * factor**nd, *t.shape[2 + nd:])

    if mask is None:
        return unshuffle(input), None
    out = unshuffle(input if zeroed else _zero_masked(input, mask))
    out_mask = unshuffle(mask)
    if mask.shape[1] == 1 and input.shape[1] != 1:
        # channel c*f^nd + k reads sub-position k of every input channel: tile over channels
        out_mask = out_mask.repeat(1, input.shape[1], *([1] * nd))
    return out, out_mask


_LINEAR_MODES = {"linear", "bilinear", "trilinear"}


_NEAREST_MODES = {"nearest", "nearest-exact"}
_PER_IMAGE_MODES = {"bicubic", "area"}


def check_interpolate(size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                      recompute_scale_factor=None, antialias: bool = False, *, name: str = "interpolate") -> None:
    """Refuse what makes an interpolation depend on the padded canvas (``ValueError`` naming it): a size
    (the canvas's, or a fixed one) instead of a scale factor."""
    why = None
    if size is not None:
        why = "size= resizes the padded canvas, not each image; use scale_factor="
    elif scale_factor is None:
        why = "it needs scale_factor="
    elif mode not in _LINEAR_MODES | _NEAREST_MODES | _PER_IMAGE_MODES:
        why = f"mode={mode!r} is not an interpolation mode of torch"
    if why:
        raise ValueError(f"{name}: cannot be masked exactly: {why}")


def _integral(scale) -> bool:
    """An integer scale or the inverse of one, along every dim."""
    scales = scale if isinstance(scale, (tuple, list)) else (scale,)
    return all(float(f) > 0 and (float(f).is_integer() if f >= 1 else (1 / float(f)).is_integer()) for f in scales)


def _per_image(mode: str, align_corners, recompute_scale_factor, antialias, scale_factor=1) -> bool:
    """Whether no rule on the canvas gives each image what it gets alone, so that each image is interpolated
    alone (:func:`interpolate_per_image`): ``align_corners=True`` maps each image's own corners; cubic and area
    modes and antialiasing read across the image's edge; ``recompute_scale_factor`` derives the scale from each
    image's size; and for a scale that is not an integer or the inverse of one, torch takes shortcuts that
    depend on the size (it copies a dim whose output size equals its input size, 3 * 1.25 -> 3)."""
    return (bool(align_corners) or mode in _PER_IMAGE_MODES or bool(recompute_scale_factor) or bool(antialias)
            or not _integral(scale_factor))


def masked_interpolate(
    input: Tensor,
    mask: Optional[Tensor],
    scale_factor,
    mode: str = "nearest",
    align_corners: Optional[bool] = None,
    recompute_scale_factor: Optional[bool] = None,
    antialias: bool = False,
    *,
    zeroed: bool = False,
    name: str = "masked_interpolate",
) -> tuple[Tensor, Optional[Tensor]]:
    """Up- or downsampling by ``scale_factor`` of a padded batch, per image as on the image alone.

    ``align_corners=True``, the bicubic and area modes, ``recompute_scale_factor`` and ``antialias`` have no rule
    on the canvas: each image's region is interpolated alone (:func:`interpolate_per_image`). The rest:

    Nearest modes read the same source pixel as on the image alone. Linear modes are normalised,
    ``interp(X*M) / interp(M)``: at the image's edge the weights that fell on the padding go back to the
    edge pixel, which is exactly the edge clamping of the plain layer on the image alone. Output ``i`` is
    valid where the image alone has it (``i < floor(size * scale)``: the input index
    ``ceil((i + 1) / scale) - 1`` is valid). The mask of a linear mode is reduced to one channel.

    This canvas rule serves integer scale factors and their inverses. For other scales PyTorch takes shortcuts
    that depend on the size (it copies a dim whose output size equals its input size, e.g. 3 x 1.25 -> 3;
    nearest with an output exactly twice the input reads ``i // 2``), so they are interpolated per image too.
    """
    nd = input.dim() - 2
    check_interpolate(None, scale_factor, mode, align_corners, name=name)
    if _per_image(mode, align_corners, recompute_scale_factor, antialias, scale_factor):
        if mask is not None:
            check_input(input, mask, nd, name)
        return interpolate_per_image(input, mask, scale_factor, mode, align_corners, recompute_scale_factor,
                                     antialias, name=name)
    kwargs = {} if mode in _NEAREST_MODES else {"align_corners": False}
    y = F.interpolate(input if (zeroed or mask is None) else _zero_masked(input, mask), scale_factor=scale_factor,
                      mode=mode, **kwargs)
    if mask is None:
        return y, None
    check_input(input, mask, nd, name)
    m = _mask_as(mask, input)
    if mode in _LINEAR_MODES:
        with _no_autocast(input):
            valid = (m != 0).to(m.dtype).amax(dim=1, keepdim=True)
            weight = F.interpolate(valid, scale_factor=scale_factor, mode=mode, align_corners=False)
            inv = torch.where(weight > 0, 1.0 / weight, torch.zeros((), dtype=m.dtype, device=m.device))
        m = interpolate_mask(m.amax(dim=1, keepdim=True), scale_factor, y.shape[2:])
        return y * (inv * m).to(y.dtype), m
    m = interpolate_mask(m, scale_factor, y.shape[2:])
    return y * m.to(y.dtype), m


def interpolate_mask(mask: Tensor, scale_factor, out_shape) -> Tensor:
    """The output mask of :func:`masked_interpolate`: output ``i`` reads the input index
    ``ceil((i + 1) / scale) - 1``."""
    nd = mask.dim() - 2
    scales = scale_factor if isinstance(scale_factor, (tuple, list)) else [scale_factor] * nd
    for d in range(nd):
        s = float(scales[d])
        mask = _index_anchor(mask, 2 + d, out_shape[d], lambda i, s=s: torch.ceil((i + 1) / s) - 1)
    return mask


def masked_pixel_shuffle(input: Tensor, mask: Optional[Tensor], upscale_factor: int, *, zeroed: bool = False,
                         name: str = "masked_pixel_shuffle") -> tuple[Tensor, Optional[Tensor]]:
    """Depth-to-space (``F.pixel_shuffle``) of input and mask: a 1-channel mask is repeated over each
    ``r x r`` block, a C-channel mask is shuffled with the input."""
    if mask is None:
        return F.pixel_shuffle(input, upscale_factor), None
    check_mask(input, mask, input.dim() - 2, name)
    y = F.pixel_shuffle(input if zeroed else _zero_masked(input, mask), upscale_factor)
    if mask.shape[1] == 1:
        r = upscale_factor
        return y, mask.repeat_interleave(r, dim=-2).repeat_interleave(r, dim=-1)
    return y, F.pixel_shuffle(mask, upscale_factor)


def interpolate_to(input: Tensor, mask: Optional[Tensor], like_mask: Optional[Tensor], size, mode: str = "nearest",
                   align_corners: Optional[bool] = None, *, name: str = "interpolate") -> tuple[Tensor, Optional[Tensor]]:
    """``F.interpolate(input, size=t.shape[2:])`` per image: each sample's valid region of ``input`` is resized
    to the extent of the same sample's valid region of ``t`` (mask ``like_mask``), exactly as the plain model
    resizes the image alone to its own size; the output mask is ``t``'s (one channel).

    This runs one interpolation per sample with sizes read from the masks (a host sync): fine in eager mode;
    ``torch.compile`` breaks the graph there and ``torch.export`` cannot follow it."""
    kwargs = {} if mode in _NEAREST_MODES | {"area"} else {"align_corners": align_corners}
    if mask is None or like_mask is None:
        return F.interpolate(input, size=size, mode=mode, **kwargs), None
    size = tuple(int(s) for s in size)
    # a mask of size 1 along a dim (pooled features) holds for the whole dim
    mask = mask.expand(tuple(mask.shape[:2]) + tuple(input.shape[2:])) if mask.dim() == input.dim() else mask
    if like_mask.dim() == len(size) + 2 and all(a in (1, b) for a, b in zip(like_mask.shape[2:], size)):
        like_mask = like_mask.expand(tuple(like_mask.shape[:2]) + size)
    if tuple(like_mask.shape[2:]) != size:
        raise ValueError(f"{name}: size {size} is not the spatial size of the tensor it was read from "
                         f"(mask {tuple(like_mask.shape)})")
    out = input.new_zeros(input.shape[:2] + size)
    src, dst = ([e if all(v > 0 for v in e) else None for e in valid_extents(m)] for m in (mask, like_mask))
    for k, (a, b) in enumerate(zip(src, dst)):
        if a is None or b is None:
            continue
        crop = input[(slice(k, k + 1), slice(None)) + tuple(slice(0, e) for e in a)]
        out[(slice(k, k + 1), slice(None)) + tuple(slice(0, e) for e in b)] = F.interpolate(crop, size=b, mode=mode,
                                                                                          **kwargs)
    out_mask = _mask_as(like_mask, input)
    out_mask = out_mask if out_mask.shape[1] == 1 else out_mask.amax(dim=1, keepdim=True)
    seen = torch.tensor([a is not None for a in src], dtype=out_mask.dtype, device=out_mask.device)
    out_mask = out_mask * seen.view(-1, *([1] * (out_mask.dim() - 1)))
    return out * (out_mask != 0), out_mask


def interpolate_to_sizes(input: Tensor, mask: Optional[Tensor], size, image_size, mode: str = "nearest",
                         align_corners: Optional[bool] = None, *, name: str = "interpolate"
                         ) -> tuple[Tensor, Optional[Tensor]]:
    """``F.interpolate(input, size=...)`` where ``size`` is computed from spatial sizes of the canvas (``[d // 4
    for d in x.shape[2:]]``, as Segformer's head writes it): each sample's valid region (a box at the canvas
    origin) is resized alone to its own size, evaluated from ``image_size`` (the recipes of
    :func:`~masked_torch.functional.masked_reshape`: each image's own sizes through the same integer arithmetic),
    and placed at the origin of the ``size`` canvas. One interpolation per sample (a host sync)."""
    kwargs = {} if mode in _NEAREST_MODES | {"area"} else {"align_corners": align_corners}
    size = tuple(int(s) for s in size)
    if mask is None:
        return F.interpolate(input, size=size, mode=mode, **kwargs), None
    n = input.shape[0]
    targets = []
    for s, recipe in zip(size, image_size):
        own = _evaluate(recipe, input, mask)
        if own is None:
            raise ValueError(f"{name}: size {size} is computed from the padded canvas's size in a way each image's "
                             f"own size cannot follow (int()/float arithmetic)")
        targets.append(own.tolist() if isinstance(own, Tensor) else [int(own)] * n)
    spread = mask.expand(tuple(mask.shape[:2]) + tuple(input.shape[2:])) if mask.dim() == input.dim() else mask
    out = input.new_zeros(tuple(input.shape[:2]) + size)
    out_mask = torch.zeros((n, 1) + size, dtype=_mask_as(mask, input).dtype, device=mask.device)
    what = "interpolate(size=...) resizes"
    for k, extent in enumerate(image_boxes((spread != 0).any(dim=1, keepdim=True), name, what)):
        target = tuple(t[k] for t in targets)
        if not extent or any(e == 0 for e in extent) or any(t <= 0 for t in target):
            continue
        if any(t > s for t, s in zip(target, size)):
            raise ValueError(f"{name}: sample {k} alone is resized to {target}, larger than the canvas {size}")
        crop = input[(slice(k, k + 1), slice(None)) + tuple(slice(0, e) for e in extent)]
        region = (slice(k, k + 1), slice(None)) + tuple(slice(0, t) for t in target)
        out[region] = F.interpolate(crop, size=target, mode=mode, **kwargs)
        out_mask[region] = 1
    return out, out_mask


def interpolate_per_image(input: Tensor, mask: Optional[Tensor], scale_factor, mode: str = "nearest",
                          align_corners: Optional[bool] = None, recompute_scale_factor: Optional[bool] = None,
                          antialias: bool = False, *, name: str = "interpolate") -> tuple[Tensor, Optional[Tensor]]:
    """``F.interpolate(input, scale_factor=...)`` per image, for the modes whose canvas rule cannot be exact
    (``align_corners=True``, bicubic, area): each sample's valid region (the box at the canvas origin that its
    mask gives) is interpolated alone with the same arguments, so each image gets exactly what the plain op
    gives it alone, and lands at the origin of the output canvas (the plain op's output size on the canvas).
    The output mask is valid on each sample's own output box.

    One interpolation per sample, with sizes read from the mask (a host sync); ``torch.compile`` breaks the
    graph there. A mask whose valid region is not such a box (holes) raises ``ValueError``."""
    kwargs = {} if mode in _NEAREST_MODES | {"area"} else {"align_corners": align_corners}
    kwargs.update(recompute_scale_factor=recompute_scale_factor, antialias=antialias)
    if mask is None:
        return F.interpolate(input, scale_factor=scale_factor, mode=mode, **kwargs), None
    nd = input.dim() - 2
    scales = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * nd
    size = tuple(math.floor(float(s) * float(f)) for s, f in zip(input.shape[2:], scales))  # as torch sizes it
    out = input.new_zeros(tuple(input.shape[:2]) + size)
    out_mask = torch.zeros((mask.shape[0], 1) + size, dtype=_mask_as(mask, input).dtype, device=mask.device)
    spread = mask.expand(tuple(mask.shape[:2]) + tuple(input.shape[2:])) if mask.dim() == input.dim() else mask
    what = f"mode={mode!r} with align_corners={align_corners!r} interpolates"
    for k, extent in enumerate(image_boxes((spread != 0).any(dim=1, keepdim=True), name, what)):
        if not extent or any(e == 0 for e in extent):
            continue
        crop = input[(slice(k, k + 1), slice(None)) + tuple(slice(0, e) for e in extent)]
        got = F.interpolate(crop, scale_factor=scale_factor, mode=mode, **kwargs)
        region = (slice(k, k + 1), slice(None)) + tuple(slice(0, s) for s in got.shape[2:])
        out[region] = got
        out_mask[region] = 1
    return out, out_mask
