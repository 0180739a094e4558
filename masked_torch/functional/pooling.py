"""Pooling and reductions over the valid positions: max/average/adaptive pooling, mean, var, max along a dim."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import image_boxes
from .masks import (
    _Size, _mask_as, _mask_dtype, _no_autocast, _ntuple, _zero_masked, check_broadcast_mask, check_input,
    check_mask, zero_masked,
)
from .norm import _count, masked_moments
from .windows import _MAX_POOL, _avg_pool, _grow, _window_sum, window_anchor

__all__ = [
    "masked_spatial_mean", "masked_max_pool", "masked_avg_pool", "masked_reduce", "masked_var", "masked_max_dim",
    "adaptive_sizes", "masked_adaptive_pool",
]


def masked_spatial_mean(
    input: Tensor, mask: Optional[Tensor], *, name: str = "masked_spatial_mean"
) -> tuple[Tensor, Optional[Tensor]]:
    """Mean over the spatial dimensions, weighted by the mask: ``sum(X*M) / sum(M)`` per channel.

    Returns ``(N, C)`` and a ``(N, 1)`` mask (1 where the sample had any valid position); a sample
    with an all-zero mask gives exact zeros.
    """
    nd = input.dim() - 2
    dims = tuple(range(2, input.dim()))
    if mask is None:
        return input.mean(dim=dims), None
    check_mask(input, mask, nd, name)
    m = _mask_as(mask, input)
    x = torch.where(m != 0, input.to(m.dtype), torch.zeros((), dtype=m.dtype, device=m.device)) * m
    total = m.sum(dim=dims)  # (N, 1) or (N, C)
    has = total > 0
    mean = x.sum(dim=dims) / total.clamp_min(1e-12) * has
    sample_valid = has.any(dim=1, keepdim=True).to(m.dtype)
    return mean.to(input.dtype), sample_valid


def masked_max_pool(
    input: Tensor,
    mask: Optional[Tensor],
    kernel_size: _Size,
    stride: Optional[_Size] = None,
    padding: _Size = 0,
    dilation: _Size = 1,
    ceil_mode: bool = False,
    *,
    nd: Optional[int] = None,
    zeroed: bool = False,
    name: str = "masked_max_pool",
) -> tuple[Tensor, Optional[Tensor]]:
    """Max pooling that reads masked positions as ``-inf`` (as the plain layer reads its padding): each
    image of a padded batch gets what it gets alone. Output mask: the "end" rule of :func:`window_anchor`
    (``ceil_mode`` too); the output is 0 where it is 0. ``mask=None`` is ``F.max_poolNd``."""
    nd = input.dim() - 2 if nd is None else nd
    stride = kernel_size if stride is None or stride == [] or stride == () else stride
    if mask is None:
        return _MAX_POOL[nd](input, kernel_size, stride, padding, dilation, ceil_mode), None
    check_input(input, mask, nd, name)
    valid = mask != 0
    low = torch.full((), float("-inf"), dtype=input.dtype, device=input.device)
    y = _MAX_POOL[nd](torch.where(valid, input, low), kernel_size, stride, padding, dilation, ceil_mode)
    out_mask = window_anchor(_mask_as(mask, input), _ntuple(kernel_size, nd), stride, padding, dilation,
                             anchor="end", ceil_mode=ceil_mode, out_shape=y.shape[2:])
    return torch.where(out_mask != 0, y, torch.zeros((), dtype=y.dtype, device=y.device)), out_mask


def masked_avg_pool(
    input: Tensor,
    mask: Optional[Tensor],
    kernel_size: _Size,
    stride: Optional[_Size] = None,
    padding: _Size = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
    *,
    nd: Optional[int] = None,
    zeroed: bool = False,
    name: str = "masked_avg_pool",
) -> tuple[Tensor, Optional[Tensor]]:
    """Average pooling whose divisor counts what the plain layer counts on each image alone.

    ``count_include_pad=False``: the valid positions of the window; ``True``: the window less what lies
    beyond the image's own padding (for ``ceil_mode`` windows that reach past it; otherwise the whole
    window). Output mask: the "end" rule of :func:`window_anchor`. ``mask=None`` is ``F.avg_poolNd``."""
    nd = input.dim() - 2 if nd is None else nd
    stride = kernel_size if stride is None or stride == [] or stride == () else stride
    if mask is None:
        return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override), None
    check_input(input, mask, nd, name)
    kernel_size, stride, padding = (_ntuple(v, nd) for v in (kernel_size, stride, padding))
    x = input if zeroed else _zero_masked(input, mask)
    m = _mask_as(mask, input)
    out_mask = None
    if divisor_override is not None or (count_include_pad and not ceil_mode):
        y = _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    else:
        total = _avg_pool(x, kernel_size, stride, padding, ceil_mode, True, 1)
        with _no_autocast(input):
            valid = (m != 0).to(m.dtype)
            if count_include_pad:  # the image alone counts its own padding, not what lies past it
                ext = _grow(valid, [q for p in reversed(padding) for q in (p, p)])
                count = _window_sum(ext, kernel_size, stride, 0, ceil_mode, total.shape[2:])
            else:
                count = _window_sum(valid, kernel_size, stride, padding, ceil_mode, total.shape[2:])
            out_mask = window_anchor(m, kernel_size, stride, padding, 1, anchor="end", ceil_mode=ceil_mode,
                                     out_shape=total.shape[2:])
            scale = torch.where(count > 0, 1.0 / count.clamp_min(1), torch.zeros((), dtype=m.dtype, device=m.device))
        y = total * (scale * (out_mask != 0)).to(total.dtype)
        return y, out_mask
    out_mask = window_anchor(m, kernel_size, stride, padding, 1, anchor="end", ceil_mode=ceil_mode,
                             out_shape=y.shape[2:])
    return torch.where(out_mask != 0, y, torch.zeros((), dtype=y.dtype, device=y.device)), out_mask


def _no_batch(dims: tuple[int, ...], name: str) -> None:
    if 0 in dims:
        raise ValueError(f"{name}: a reduction over the batch dim mixes the samples of a padded batch")


def _dims(dim, rank: int) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(rank))
    if isinstance(dim, int):
        dim = (dim,)
    return tuple(sorted(d % rank for d in dim))


def masked_reduce(
    input: Tensor,
    mask: Optional[Tensor],
    dim=None,
    keepdim: bool = False,
    mode: str = "mean",
    *,
    zeroed: bool = False,
    name: str = "masked_reduce",
) -> tuple[Tensor, Optional[Tensor]]:
    """``mean``, ``sum``, ``amax`` or ``amin`` over ``dim``, over the valid positions only.

    The mask broadcasts against ``input`` (same rank). Over a dim where the mask has size 1 the reduction is
    the plain one; over the others it counts valid entries only (a global average pool of a padded image is
    the image's own mean). The output mask is the mask reduced with ``amax`` (valid where any reduced entry
    was: for a global pool, 1 for every sample with a valid position); the output is 0 where it is 0.
    """
    dims = _dims(dim, input.dim())
    if mask is None:
        if mode == "mean":
            return input.mean(dim=dims, keepdim=keepdim), None
        return getattr(input, mode)(dim=dims, keepdim=keepdim), None
    check_broadcast_mask(input, mask, name)
    _no_batch(dims, name)
    masked_dims = tuple(d for d in dims if mask.shape[d] != 1)
    out_mask = mask.amax(dim=dims, keepdim=keepdim) if dims else mask
    if not masked_dims:
        if mode == "mean":
            y = input.mean(dim=dims, keepdim=keepdim)
        else:
            y = getattr(input, mode)(dim=dims, keepdim=keepdim)
        return zero_masked(y, out_mask), out_mask
    valid = mask != 0
    if mode in ("mean", "sum"):
        x = input if zeroed else _zero_masked(input, mask)
        y = x.sum(dim=dims, keepdim=keepdim)
        if mode == "mean":
            with _no_autocast(input):
                count = _count(valid, input.shape, dims, _mask_dtype(input), keepdim)
            y = y / count.clamp_min(1).to(y.dtype)
    elif mode in ("amax", "amin"):
        fill = float("-inf") if mode == "amax" else float("inf")
        x = torch.where(valid, input, torch.full((), fill, dtype=input.dtype, device=input.device))
        y = getattr(x, mode)(dim=dims, keepdim=keepdim)
    else:
        raise ValueError(f"{name}: mode must be mean, sum, amax or amin, got {mode!r}")
    return torch.where(out_mask != 0, y, torch.zeros((), dtype=y.dtype, device=y.device)), out_mask


def masked_var(input: Tensor, mask: Optional[Tensor], dim=None, correction: float = 1, keepdim: bool = False,
               std: bool = False, *, name: str = "masked_var") -> tuple[Tensor, Optional[Tensor]]:
    """Variance (``std=True``: standard deviation) over ``dim``, over the valid entries only, with Bessel's
    ``correction`` as ``torch.var``; the mask reduces as in :func:`masked_reduce`."""
    dims = _dims(dim, input.dim())
    fn = torch.std if std else torch.var
    if mask is None:
        return fn(input, dim=dims, correction=correction, keepdim=keepdim), None
    check_broadcast_mask(input, mask, name)
    _no_batch(dims, name)
    out_mask = mask.amax(dim=dims, keepdim=keepdim)
    if all(mask.shape[d] == 1 for d in dims):
        y = fn(input, dim=dims, correction=correction, keepdim=keepdim)
    else:
        valid = mask != 0
        dtype = torch.promote_types(input.dtype, torch.float32)
        x = torch.where(valid, input.to(dtype), torch.zeros((), dtype=dtype, device=input.device))
        y = masked_moments(x, valid, dims, correction)[3]
        y = (y.sqrt() if std else y).to(input.dtype)
        if not keepdim:
            y = y.squeeze(dims)
    return torch.where(out_mask != 0, y, torch.zeros((), dtype=y.dtype, device=y.device)), out_mask


def masked_max_dim(input: Tensor, mask: Optional[Tensor], dim: int, keepdim: bool = False, mode: str = "max", *,
                   name: str = "masked_max"):
    """``torch.max(input, dim)`` (or ``min``) over the valid entries: ``(values, indices)`` and their masks.
    Along a dim where the mask has size 1 (CBAM's max over channels) it is the plain op."""
    fn = torch.max if mode == "max" else torch.min
    result = torch.return_types.max if mode == "max" else torch.return_types.min
    if mask is None:
        return fn(input, dim, keepdim), None
    check_broadcast_mask(input, mask, name)
    dim = dim % input.dim()
    _no_batch((dim,), name)
    if mask.shape[dim] == 1:
        out_mask = mask if keepdim else mask.squeeze(dim)
        return fn(input, dim, keepdim), result((out_mask, out_mask))
    fill = float("-inf") if mode == "max" else float("inf")
    values, indices = fn(torch.where(mask != 0, input, torch.full((), fill, dtype=input.dtype, device=input.device)),
                         dim, keepdim)
    out_mask = mask.amax(dim=dim, keepdim=keepdim)
    values = torch.where(out_mask != 0, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return result((values, indices)), result((out_mask, out_mask))


_ADAPTIVE = {
    "mean": {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d},
    "amax": {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d},
}


def adaptive_sizes(output_size, nd: int, name: str = "adaptive_pool") -> tuple[Optional[int], ...]:
    """``output_size`` of an adaptive pool as ``nd`` entries, each a positive int or ``None`` (that dim kept);
    ``ValueError`` naming ``name`` otherwise."""
    sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * nd
    if len(sizes) == 1 and nd > 1:
        sizes = sizes * nd
    if len(sizes) != nd or not all(s is None or (isinstance(s, int) and not isinstance(s, bool) and s > 0)
                                    for s in sizes):
        raise ValueError(f"{name}: output_size must be a positive int, None, or a tuple of {nd} of them, got "
                         f"{output_size!r}")
    return sizes


def masked_adaptive_pool(
    input: Tensor,
    mask: Optional[Tensor],
    output_size,
    mode: str = "mean",
    *,
    nd: int,
    zeroed: bool = False,
    name: str = "adaptive_pool",
) -> tuple[Tensor, Optional[Tensor]]:
    """``F.adaptive_{avg,max}_pool{nd}d(input, output_size)`` per image: each image gets exactly what the plain
    pool gives it alone (``mode`` ``"mean"`` or ``"amax"``).

    * Output size 1 (or ``None``) along every dim (global pooling, ``(1, None)``): over the valid positions,
      any mask (:func:`masked_reduce`, vectorised).
    * Any other size (pyramid pooling, ``AdaptiveAvgPool2d((7, 7))``): each sample's valid region is the box
      at the canvas origin whose extent the mask gives (as :func:`interpolate_to` reads it); the pool runs
      on that box, so its bins are the image's own, also for an image smaller than the bin count. A mask
      whose valid region is not such a box (holes; channels of a C-channel mask that differ) is refused with
      ``ValueError``. One pool call per sample with sizes read from the mask (a host sync): eager mode;
      ``torch.compile`` breaks the graph there.

    The output mask is the mask reduced over the pooled dims (size 1 there: every bin of a sample with a
    valid position is valid; a ``None`` dim keeps the mask's extent), as for global pooling; the output is 0
    where it is 0.
    """
    sizes = adaptive_sizes(output_size, nd, name)
    if mode not in _ADAPTIVE:
        raise ValueError(f"{name}: mode must be 'mean' or 'amax', got {mode!r}")
    pool = _ADAPTIVE[mode][nd]
    if mask is None:
        return pool(input, output_size), None
    check_input(input, mask, nd, name)
    pooled = tuple(2 + i for i, s in enumerate(sizes) if s is not None)
    if not pooled:  # (None, None): the identity
        return (input if zeroed else _zero_masked(input, mask)), mask
    if all(s in (1, None) for s in sizes):
        return masked_reduce(input, mask, pooled, True, mode, zeroed=zeroed, name=name)
    extents = image_boxes(mask, name, f"output_size={output_size!r} pools")
    out_shape = tuple(input.shape[:2]) + tuple(s if s is not None else input.shape[2 + i] for i, s in enumerate(sizes))
    out = input.new_zeros(out_shape)
    m_dtype = _mask_dtype(input)
    out_mask = torch.zeros(tuple(mask.shape[:2]) + tuple(1 if s is not None else input.shape[2 + i]
                                                           for i, s in enumerate(sizes)),
                           dtype=m_dtype, device=mask.device)
    for k, extent in enumerate(extents):
        if math.prod(extent) == 0:
            continue  # no valid position: zeros, mask 0
        crop = input[(slice(k, k + 1), slice(None)) + tuple(slice(0, e) for e in extent)]
        y = pool(crop, output_size)
        out[(slice(k, k + 1), slice(None)) + tuple(slice(0, s) for s in y.shape[2:])] = y
        out_mask[(k, slice(None)) + tuple(slice(None) if s is not None else slice(0, e)
                                          for s, e in zip(sizes, extent))] = 1
    return out, out_mask
