"""Where a window lands on the mask: the output mask of a window op (anchor, centre, mean) and padding rules."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import _Size, _ntuple

__all__ = ["window_centre", "window_mean", "window_anchor"]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_dims(weight: Tensor) -> int:
    nd = weight.dim() - 2
    if nd not in _CONV:
        raise ValueError(f"weight must have 3, 4 or 5 dimensions (1d/2d/3d), got shape {tuple(weight.shape)}")
    return nd


def resolve_padding(
    padding: Union[str, _Size], kernel_size: Sequence[int], dilation: Sequence[int], name: str = "conv"
) -> tuple[int, ...]:
    """Numeric symmetric padding for ``'valid'``, ``'same'`` or ints; ``'same'`` needs an odd kernel."""
    nd = len(kernel_size)
    if padding == "valid":
        return (0,) * nd
    if padding == "same":
        if any(k % 2 == 0 for k in kernel_size):
            raise ValueError(
                f"{name}: padding='same' with the even kernel {tuple(kernel_size)} pads unevenly, so the "
                f"window centre is undefined; use an odd kernel or numeric padding"
            )
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))
    if isinstance(padding, str):
        raise ValueError(f"{name}: padding must be 'valid', 'same', an int or a tuple, got {padding!r}")
    return _ntuple(padding, nd, "padding")


def _take_grid(mask: Tensor, dim: int, start: int, step: int, count, *, clamp: bool, right: int) -> Tensor:
    """Entries ``start + i*step`` (``i < count``) of ``mask`` along ``dim``. An index before the first entry
    reads the first entry (``clamp=True``) or 0; one past the last (at most ``right`` past, a bound the caller
    knows statically) reads 0. Eager: a strided view where every index lies inside. Traced (compile, export):
    gathered by index, so that nothing compares sizes and dynamic shapes stay dynamic."""
    if start >= 0 and right == 0 and not torch.compiler.is_compiling():
        out = mask.narrow(dim, start, step * (count - 1) + 1)
        return out if step == 1 else out[(slice(None),) * dim + (slice(None, None, step),)]
    idx = torch.arange(count, device=mask.device) * step + start
    out = mask.index_select(dim, idx.clamp(0, mask.shape[dim] - 1))
    if (start < 0 and not clamp) or right > 0:
        inside = ((idx >= 0) & (idx < mask.shape[dim])).view([-1 if d == dim else 1 for d in range(mask.dim())])
        out = out & inside if out.dtype == torch.bool else out * inside.to(out.dtype)
    return out


def window_anchor(
    mask: Tensor,
    kernel_size: Sequence[int],
    stride: _Size = 1,
    padding: _Size = 0,
    dilation: _Size = 1,
    *,
    anchor: str = "centre",
    ceil_mode: bool = False,
    out_shape: Optional[Sequence[int]] = None,
) -> Tensor:
    """The mask value that decides whether each output window of a convolution or pooling is valid.

    ``anchor="centre"``: the window's centre, input index ``i*stride - padding + dilation*(k//2)`` (0 where
    that falls in the zero padding): the masked-convolution rule.

    ``anchor="end"``: the input index ``i*stride + dilation*(k-1) - 2*padding`` (clamped at 0; with
    ``ceil_mode``, ``i*stride + max(dilation*(k-1) - 2*padding - stride + 1, -padding)``): for an image at
    the origin of the canvas (a padded batch), the output is valid exactly where the same layer run on the
    image alone, at its own size, has an output. It equals the centre for a centred window (odd kernel,
    ``padding = dilation*(k-1)/2``) and differs for windows such as a 4x4 stride-4 patchify or an
    unpadded 3x3, where the plain layer drops the last, partly covered window.

    ``out_shape`` (the spatial output size) defaults to the floor-mode convolution size. When the output
    equals the input grid, the mask itself is returned (not a copy).
    """
    nd = mask.dim() - 2
    kernel_size = _ntuple(kernel_size, nd)
    stride, padding, dilation = (_ntuple(v, nd) for v in (stride, padding, dilation))
    if anchor not in ("centre", "end"):
        raise ValueError(f"window_anchor: anchor must be 'centre' or 'end', got {anchor!r}")
    if out_shape is None:
        out_shape = [(s + 2 * p - d * (k - 1) - 1) // st + 1
                     for s, p, d, k, st in zip(mask.shape[2:], padding, dilation, kernel_size, stride)]
    for d in range(nd):
        k, s, p, dil = kernel_size[d], stride[d], padding[d], dilation[d]
        if s == 1 and 2 * p == dil * (k - 1) and (anchor == "end" or k % 2 == 1):
            continue  # the output grid is the input grid, and each output reads its own position
        if anchor == "centre":
            # the last centre lies at most p - dil*((k-1) - k//2) past the input (even kernels, large padding)
            start, right = dil * (k // 2) - p, max(0, p - dil * ((k - 1) - k // 2))
        elif ceil_mode:
            start, right = max(dil * (k - 1) - 2 * p - s + 1, -p), 0
        else:
            start, right = dil * (k - 1) - 2 * p, 0
        mask = _take_grid(mask, 2 + d, start, s, out_shape[d], clamp=anchor == "end", right=right)
    return mask


def window_centre(
    mask: Tensor,
    kernel_size: Sequence[int],
    stride: _Size = 1,
    padding: _Size = 0,
    dilation: _Size = 1,
) -> Tensor:
    """The mask value under each output window's centre.

    Output index ``i`` reads input index ``i*stride - padding + dilation*(k//2)`` in every spatial
    dimension, and 0 where that falls outside the input (in the zero padding).
    """
    return window_anchor(mask, kernel_size, stride, padding, dilation, anchor="centre")


_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def window_mean(
    valid: Tensor,
    kernel_size: Sequence[int],
    stride: _Size = 1,
    padding: Union[str, _Size] = 0,
    dilation: _Size = 1,
) -> Tensor:
    """Mean of ``valid`` over each convolution window, per channel (padding counts as 0): the window sum
    divided by ``prod(kernel_size)``.

    ``valid`` is ``(N, G, *spatial)``, one channel per group (already summed over the group's channels for a
    C-channel mask): a box filter per channel, never a full ``C_out x C_in`` convolution of ones. An average
    pool where pooling can express the window (no dilation, padding at most half the kernel), else a
    depthwise convolution; positive exactly where the window holds a valid entry.
    """
    nd = valid.dim() - 2
    kernel_size = tuple(kernel_size)
    stride, dilation = _ntuple(stride, nd), _ntuple(dilation, nd)
    pad = None
    if not (padding == "same" and any(k % 2 == 0 for k in kernel_size)):
        pad = resolve_padding(padding, kernel_size, dilation)
    poolable = pad is not None and all(d == 1 for d in dilation) and all(
        2 * p <= k <= size for p, k, size in zip(pad, kernel_size, valid.shape[2:]))
    if poolable:
        return _AVG_POOL[nd](valid, kernel_size, stride, pad, count_include_pad=True)
    g = valid.shape[1]
    weight = torch.full((g, 1, *kernel_size), 1.0 / math.prod(kernel_size), dtype=valid.dtype, device=valid.device)
    return _CONV[nd](valid, weight, None, stride, padding, dilation, g)


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _avg_pool(t: Tensor, kernel_size, stride, padding, ceil_mode: bool, count_include_pad: bool,
              divisor_override: Optional[int]) -> Tensor:
    """``F.avg_poolNd``; 1d has no ``divisor_override``: there it goes through the 2d pool."""
    nd = t.dim() - 2
    if nd == 1 and divisor_override is not None:
        one = lambda v: (1, _ntuple(v, 1)[0])  # noqa: E731
        return F.avg_pool2d(t.unsqueeze(2), one(kernel_size), one(stride), (0, _ntuple(padding, 1)[0]), ceil_mode,
                            count_include_pad, divisor_override).squeeze(2)
    if nd == 1:
        return F.avg_pool1d(t, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return _AVG_POOL[nd](t, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _window_sum(t: Tensor, kernel_size, stride, padding, ceil_mode: bool, out_shape) -> Tensor:
    """Sum of ``t`` over each pooling window (zero padding), cut to ``out_shape``."""
    s = _avg_pool(t, kernel_size, stride, padding, ceil_mode, True, 1)
    return s[(slice(None), slice(None)) + tuple(slice(0, o) for o in out_shape)]


def _index_anchor(mask: Tensor, dim: int, out_size: int, index_of) -> Tensor:
    """``mask`` along ``dim`` at the input index ``index_of(i)`` (clamped to the input) of each output ``i``."""
    i = torch.arange(out_size, device=mask.device, dtype=torch.float64)
    idx = index_of(i).clamp(0, mask.shape[dim] - 1).to(torch.long)
    return mask.index_select(dim, idx)


def _grow(mask: Tensor, pad: Sequence[int]) -> Tensor:
    """The validity of an image padded on its own: for each ``(left, right)`` pair of ``pad`` (``F.pad`` order,
    last dim first) ``left`` entries before the mask (valid where the image covers that line: its first entry)
    and each image's valid run extended by ``right`` entries past its own end. Dim by dim, so that for an
    image at the origin the corners of the padding are valid exactly where the image alone has them."""
    nd = mask.dim() - 2
    m = mask
    for i in range(len(pad) // 2):
        d = mask.dim() - 1 - i
        left, right = pad[2 * i], pad[2 * i + 1]
        shape = list(m.shape)
        parts = []
        if left:
            shape[d] = left
            parts.append(m.narrow(d, 0, 1).expand(shape))
        parts.append(m)
        if right:
            shape = list(m.shape)
            shape[d] = right
            parts.append(m.new_zeros(shape))
        m = torch.cat(parts, d) if len(parts) > 1 else m
        if right:
            kernel = [1] * nd
            kernel[d - 2] = right + 1
            shift = [0] * (2 * nd)
            shift[2 * i] = right  # zeros before: entry j becomes the max of entries j - right .. j
            m = _MAX_POOL[nd](F.pad(m, shift), kernel, 1)
    return m
