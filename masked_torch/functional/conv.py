"""Partial and masked convolution, transposed convolution and linear layers over a masked input."""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import (
    _Size, _mask_as, _mask_dtype, _no_autocast, _ntuple, _zero_masked, check_broadcast_mask, check_input,
    check_mask, zero_masked,
)
from .windows import _CONV, _conv_dims, _index_anchor, resolve_padding, window_anchor, window_mean

__all__ = ["partial_conv", "masked_conv", "masked_conv_transpose", "conv_transpose_mask", "masked_linear"]


def partial_conv(
    input: Tensor,
    mask: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: _Size = 1,
    padding: Union[str, _Size] = 0,
    dilation: _Size = 1,
    groups: int = 1,
    *,
    multichannel: bool = False,
    update_mask: bool = True,
    anchor: str = "centre",
    zeroed: bool = False,
    name: str = "partial_conv",
) -> tuple[Tensor, Optional[Tensor]]:
    """Partial convolution (Liu et al. 2018).

    ``y = conv(X*M, W) * winsize / sum(M) + b`` where ``sum(M) > 0`` and ``0`` where ``sum(M) == 0``;
    ``M`` is the validity ``mask != 0`` (partial convolution counts valid inputs: a float mask is read as
    valid where it is non-zero), ``sum(M)`` runs over each window (and over the group's input channels
    for a C-channel mask with ``multichannel=True``), ``winsize`` is the number of entries summed. With
    ``multichannel=False`` a C-channel mask counts a position valid where any channel is.

    Output mask (0/1): ``update_mask=True`` (the paper's rule) is 1 where ``sum(M) > 0``;
    ``update_mask=False`` (padding use) is the validity at the window centre (any channel), and 0 where
    ``sum(M) == 0`` (``anchor="end"``: at the window's end, see :func:`window_anchor`). It is 1-channel
    unless ``multichannel`` and ``groups > 1`` (then ``C_out`` channels). The output is 0 wherever the
    output mask is 0. ``zeroed=True`` promises that ``input`` is already exactly 0 under the mask (as every
    masked layer's output is) and that the mask fits it (a converted model checks it once), which skips the
    select pass over the input and the mask check.
    ``mask=None`` is the plain convolution and returns ``None`` as mask.
    """
    nd = _conv_dims(weight)
    conv = _CONV[nd]
    if mask is None:
        return conv(input, weight, bias, stride, padding, dilation, groups), None
    if not zeroed:  # a converted model (zeroed=True) has checked its input mask once
        check_mask(input, mask, nd, name)
    kernel_size = tuple(weight.shape[2:])
    dtype = _mask_dtype(input)
    valid_in = mask != 0
    if valid_in.shape[1] != 1 and not multichannel:
        valid_in = valid_in.any(dim=1, keepdim=True)
    # X*M for a 0/1 mask, with garbage under the mask replaced by exact zeros
    raw = conv(input if zeroed else _zero_masked(input, valid_in), weight, None, stride, padding, dilation,
               groups)

    n, c_out = raw.shape[:2]
    grouped = valid_in.shape[1] != 1 and groups > 1
    with _no_autocast(input):
        if valid_in.shape[1] == 1:
            counts, per_position = valid_in.to(dtype), 1
        else:
            per_position = valid_in.shape[1] // groups  # entries per position: the group's input channels
            counts = valid_in.unflatten(1, (groups, -1)).sum(dim=2, dtype=dtype)  # (N, G, *S)
        # winsize / sum(M) = per_position / mean(counts over the window)
        mean = window_mean(counts, kernel_size, stride, padding, dilation)  # (N, 1 or G, *out)
        seen = mean > 0
        if not update_mask:  # valid: seen, and valid at the window's centre (or end)
            centre_valid = valid_in if valid_in.shape[1] == 1 else valid_in.any(dim=1, keepdim=True)
            pad = resolve_padding(padding, kernel_size, _ntuple(dilation, nd), name)
            seen = seen & window_anchor(centre_valid, kernel_size, stride, pad, dilation, anchor=anchor,
                                        out_shape=raw.shape[2:])
        ratio = torch.where(seen, per_position / mean, torch.zeros((), dtype=dtype, device=mean.device))
        valid = seen.to(dtype)
        if grouped:  # (N, G, 1, *out): broadcast over each group's output channels
            y = raw.unflatten(1, (groups, c_out // groups))
            ratio, valid_b = ratio.unsqueeze(2), valid.unsqueeze(2)
        else:
            y, valid_b = raw, valid
        # in place on the fresh convolution output (its backward does not need it)
        y = y.mul_(ratio)
        if bias is not None:
            y = y.addcmul_(bias.view(y.shape[1:-nd] + (1,) * nd), valid_b)
        y = raw  # the (N, C_out, *out) tensor the views above wrote into
        out_mask = valid
        if grouped:
            out_mask = out_mask.unsqueeze(2).expand(n, groups, c_out // groups, *out_mask.shape[2:]).flatten(1, 2)
    return y, out_mask


def mixing_weights(weight: Tensor, groups: int, dtype: torch.dtype) -> Tensor:
    """``A[o, c] = sum over the kernel of |W[o, c]|``, normalised to sum 1 over each group's inputs.

    Returned as a 1x1 convolution weight ``(C_out, C_in/groups, 1, ...)``. An output channel whose
    weights are all zero mixes its inputs uniformly.
    """
    nd = weight.dim() - 2
    a = weight.to(dtype).abs().sum(dim=tuple(range(2, weight.dim())))  # (C_out, C_in/G)
    total = a.sum(dim=1, keepdim=True)
    a = torch.where(total > 0, a / total.clamp_min(1e-30), torch.full_like(a, 1.0 / a.shape[1]))
    return a.view(*a.shape, *([1] * nd))


def masked_conv(
    input: Tensor,
    mask: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: _Size = 1,
    padding: Union[str, _Size] = 0,
    dilation: _Size = 1,
    groups: int = 1,
    *,
    anchor: str = "centre",
    zeroed: bool = False,
    name: str = "masked_conv",
) -> tuple[Tensor, Optional[Tensor]]:
    """Masked convolution: ``y = (conv(X, W) + b) * m'`` with ``X`` taken as 0 under the mask.

    ``m'`` is the mask at each window's centre (input index ``i*stride - padding + dilation*(k//2)``;
    ``anchor="end"``: the window's end, so that an image at the canvas origin keeps exactly the outputs the
    plain layer gives it alone; see :func:`window_anchor`). ``zeroed=True`` promises that ``input`` is
    already exactly 0 under the mask and that the mask fits it, which skips the select pass and the check.
    For a C-channel mask it is mixed over each group's input channels with the weights
    ``A[o, c] = sum_kernel |W[o, c]|``: ``m' = conv1x1(centre(M), A) / sum_c A``. The output mask is
    ``m'``: 1-channel for a 1-channel mask, ``C_out`` channels otherwise.
    ``mask=None`` is the plain convolution and returns ``None`` as mask.
    """
    nd = _conv_dims(weight)
    conv = _CONV[nd]
    if mask is None:
        return conv(input, weight, bias, stride, padding, dilation, groups), None
    if not zeroed:  # a converted model (zeroed=True) has checked its input mask once
        check_mask(input, mask, nd, name)
    kernel_size = tuple(weight.shape[2:])
    pad = resolve_padding(padding, kernel_size, _ntuple(dilation, nd), name)
    m = _mask_as(mask, input)
    y = conv(input if zeroed else _zero_masked(input, m), weight, bias, stride, padding, dilation, groups)
    centre = window_anchor(m, kernel_size, stride, pad, dilation, anchor=anchor, out_shape=y.shape[2:])
    if m.shape[1] != 1:
        # the mixing weights are a function of W: gradients flow through |W| too (the formula's derivative)
        with _no_autocast(input):
            centre = conv(centre, mixing_weights(weight, groups, m.dtype), None, 1, 0, 1, groups)
    # in place on the fresh convolution output (its backward does not need it)
    return y.mul_(centre), centre


_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def masked_conv_transpose(
    input: Tensor,
    mask: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: _Size = 1,
    padding: _Size = 0,
    output_padding: _Size = 0,
    groups: int = 1,
    dilation: _Size = 1,
    *,
    zeroed: bool = False,
    name: str = "masked_conv_transpose",
) -> tuple[Tensor, Optional[Tensor]]:
    """Transposed convolution of the input taken as 0 under the mask, times the output mask: output ``o`` is
    valid where the plain layer run on an image at the canvas origin alone has it (the input index
    ``floor((o - c) / stride) + 1`` is valid, ``c = dilation*(k-1) - 2*padding + output_padding + 1``).
    A C-channel mask is first reduced to one channel (valid where any channel is).
    ``mask=None`` is ``F.conv_transposeNd``."""
    nd = _conv_dims(weight)
    if mask is None:
        return _CONV_T[nd](input, weight, bias, stride, padding, output_padding, groups, dilation), None
    check_input(input, mask, nd, name)
    stride, padding, output_padding, dilation = (_ntuple(v, nd) for v in (stride, padding, output_padding, dilation))
    x = input if zeroed else _zero_masked(input, mask)
    y = _CONV_T[nd](x, weight, bias, stride, padding, output_padding, groups, dilation)
    m = conv_transpose_mask(_mask_as(mask, input), weight.shape[2:], stride, padding, output_padding, dilation,
                            y.shape[2:])
    return y * m.to(y.dtype), m


def conv_transpose_mask(mask: Tensor, kernel_size, stride, padding, output_padding, dilation, out_shape) -> Tensor:
    """The output mask of a transposed convolution (see :func:`masked_conv_transpose`), one channel."""
    nd = mask.dim() - 2
    stride, padding, output_padding, dilation = (_ntuple(v, nd) for v in (stride, padding, output_padding, dilation))
    m = mask if mask.shape[1] == 1 else mask.amax(dim=1, keepdim=True)
    for d in range(nd):
        c = dilation[d] * (kernel_size[d] - 1) - 2 * padding[d] + output_padding[d] + 1
        s = stride[d]
        m = _index_anchor(m, 2 + d, out_shape[d], lambda i, c=c, s=s: torch.floor((i - c) / s) + 1)
    return m


def masked_linear(input: Tensor, mask: Optional[Tensor], weight: Tensor, bias: Optional[Tensor] = None, *,
                  name: str = "linear") -> tuple[Tensor, Optional[Tensor]]:
    """``F.linear`` over the last dim; the mask must have size 1 there (features of a position, or pooled
    features), else the output would mix valid and padded entries and is refused. The output is 0 under
    the mask."""
    y = F.linear(input, weight, bias)
    if mask is None:
        return y, None
    check_broadcast_mask(input, mask, name)
    if mask.shape[-1] != 1:
        raise ValueError(
            f"{name}: the last dim of input {tuple(input.shape)} is masked (mask {tuple(mask.shape)}): a linear "
            f"layer over it mixes image and padding; pool over the valid positions first")
    return (y if bias is None else zero_masked(y, mask)), mask
