"""Pure functions behind the masked layers: partial and masked convolution, masked batch norm,
masked space-to-depth and masked spatial mean, for 1d, 2d and 3d inputs alike.

Conventions (shared by every function here and every module in :mod:`masked_torch.nn`):

* ``input`` is ``(N, C, *spatial)``; ``mask`` is ``(N, 1, *spatial)`` (one mask per sample, broadcast over
  channels) or ``(N, C, *spatial)``; float, integer or bool; ``1`` (or any non-zero value) = valid, zero =
  invalid. Partial convolution and batch norm count valid positions (``mask != 0``); masked convolution
  and the spatial mean use a float mask's values (a soft mask scales or weights).
* Values of ``input`` where the mask is zero are never read: they are selected away (``torch.where``, or
  a bit-exact bitwise AND on CPU) before any arithmetic, never multiplied by 0, so NaN or Inf under the
  mask cannot leak.
* Mask arithmetic (window sums, ratios, channel mixing) runs in float32 (float64 for float64 input) with
  autocast disabled: a window sum of 576 ones is not exact in bfloat16 and ``9 / 1e-8`` does not fit in
  float16. Returned masks are in that dtype.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "check_mask",
    "window_centre",
    "window_mean",
    "partial_conv",
    "masked_conv",
    "masked_batch_norm",
    "masked_unshuffle",
    "masked_spatial_mean",
]

_Size = Union[int, Sequence[int]]
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _ntuple(value: _Size, n: int, what: str = "argument") -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise ValueError(f"{what} must be an int or a tuple of {n} ints, got {value}")
    return value


def _mask_dtype(input: Tensor) -> torch.dtype:
    """The dtype mask arithmetic runs in: float32, or float64 for float64 input."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _no_autocast(input: Tensor):
    return torch.autocast(device_type=input.device.type, enabled=False)


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


def check_mask(input: Tensor, mask: Optional[Tensor], nd: int, name: str) -> Optional[Tensor]:
    """Validate ``mask`` against ``input`` (``(N, C, *spatial)`` with ``nd`` spatial dims).

    Raises ``ValueError`` naming ``name`` and both shapes; returns the mask unchanged.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name}: mask must be a tensor or None, got {type(mask).__name__}")
    expected = f"(N, 1 or C, *spatial) = ({input.shape[0] if input.dim() else '?'}, 1 or " \
        f"{input.shape[1] if input.dim() > 1 else '?'}, {', '.join(str(s) for s in input.shape[2:])})"
    if input.dim() != nd + 2:
        raise ValueError(
            f"{name}: a mask needs a batched input of {nd + 2} dimensions (N, C, *spatial), "
            f"got input of shape {tuple(input.shape)} and mask of shape {tuple(mask.shape)}"
        )
    if (
        mask.dim() != input.dim()
        or mask.shape[0] != input.shape[0]
        or mask.shape[2:] != input.shape[2:]
        or mask.shape[1] not in (1, input.shape[1])
    ):
        raise ValueError(
            f"{name}: mask of shape {tuple(mask.shape)} does not fit input of shape {tuple(input.shape)}; "
            f"expected {expected}"
        )
    if mask.is_complex():
        raise ValueError(f"{name}: mask must be bool, integer or floating point, got {mask.dtype}")
    if mask.device != input.device:
        raise ValueError(f"{name}: mask is on {mask.device} but input is on {input.device}")
    return mask


def _mask_as(mask: Tensor, input: Tensor) -> Tensor:
    """The mask in the dtype mask arithmetic runs in."""
    return mask.to(_mask_dtype(input))


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def _zero_masked(input: Tensor, mask: Tensor) -> Tensor:
    """``input`` with every position where ``mask == 0`` set to exactly 0 (NaN-safe: a select, not ``0 * x``).

    On CPU, for a 1-channel mask, outside autograd and tracing, the select is a bitwise AND of the IEEE bits
    with an all-ones / all-zeros mask (bit-exact: valid values, NaN included, pass unchanged; the rest become
    +0.0), which runs 1.5-3x faster than ``torch.where`` with a broadcast condition there; elsewhere (autograd, forward AD,
    functorch transforms, tracing, other devices) ``torch.where``.
    """
    keep = mask if mask.dtype == torch.bool else mask != 0
    fast = (
        not torch.compiler.is_compiling()  # first: nothing below needs to be traced
        and not torch.jit.is_tracing()
        and type(input) is Tensor  # not a subclass, functorch-wrapped or forward-AD dual tensor
        and not torch._C._functorch.is_functorch_wrapped_tensor(input)
        and torch.autograd.forward_ad.unpack_dual(input).tangent is None
        and input.device.type == "cpu"
        and keep.shape[1] == 1  # a small, broadcast bit mask (for a C-channel mask it would cost a full pass)
        and input.dtype in _BITS
        and not (input.requires_grad and torch.is_grad_enabled())
    )
    if fast:
        bits = _BITS[input.dtype]
        return (input.view(bits) & keep.to(bits).neg_()).view(input.dtype)
    return torch.where(keep, input, torch.zeros((), dtype=input.dtype, device=input.device))


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
    nd = mask.dim() - 2
    kernel_size = _ntuple(kernel_size, nd)
    stride, padding, dilation = (_ntuple(v, nd) for v in (stride, padding, dilation))
    offsets = [d * (k // 2) for k, d in zip(kernel_size, dilation)]
    # a centre falls in the padding on the left if p > d*(k//2), on the right if p > d*((k-1) - k//2)
    if any(p > d * ((k - 1) // 2) for p, k, d in zip(padding, kernel_size, dilation)):
        # Pad with zeros, then index from the padded origin.
        pad = []
        for p in reversed(padding):
            pad += [p, p]
        mask = F.pad(mask, pad)
        starts = offsets
        sizes = [s - 2 * p for s, p in zip(mask.shape[2:], padding)]
    else:
        starts = [o - p for o, p in zip(offsets, padding)]
        sizes = list(mask.shape[2:])
    index = [slice(None), slice(None)]
    for d in range(nd):
        out = (sizes[d] + 2 * padding[d] - dilation[d] * (kernel_size[d] - 1) - 1) // stride[d] + 1
        index.append(slice(starts[d], starts[d] + stride[d] * (out - 1) + 1, stride[d]))
    return mask[tuple(index)]


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
    ``sum(M) == 0``. It is 1-channel unless ``multichannel`` and ``groups > 1`` (then ``C_out`` channels).
    ``mask=None`` is the plain convolution and returns ``None`` as mask.
    """
    nd = _conv_dims(weight)
    conv = _CONV[nd]
    check_mask(input, mask, nd, name)
    if mask is None:
        return conv(input, weight, bias, stride, padding, dilation, groups), None
    kernel_size = tuple(weight.shape[2:])
    dtype = _mask_dtype(input)
    valid_in = mask != 0
    if valid_in.shape[1] != 1 and not multichannel:
        valid_in = valid_in.any(dim=1, keepdim=True)
    # X*M for a 0/1 mask, with garbage under the mask replaced by exact zeros
    raw = conv(_zero_masked(input, valid_in), weight, None, stride, padding, dilation, groups)

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

        if update_mask:
            out_mask = valid
        else:
            centre_valid = valid_in if valid_in.shape[1] == 1 else valid_in.any(dim=1, keepdim=True)
            pad = resolve_padding(padding, kernel_size, _ntuple(dilation, nd), name)
            out_mask = window_centre(centre_valid, kernel_size, stride, pad, dilation).to(dtype) * valid
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
    name: str = "masked_conv",
) -> tuple[Tensor, Optional[Tensor]]:
    """Masked convolution: ``y = (conv(X, W) + b) * m'`` with ``X`` taken as 0 under the mask.

    ``m'`` is the mask at each window's centre (input index ``i*stride - padding + dilation*(k//2)``).
    For a C-channel mask it is mixed over each group's input channels with the weights
    ``A[o, c] = sum_kernel |W[o, c]|``: ``m' = conv1x1(centre(M), A) / sum_c A``. The output mask is
    ``m'``: 1-channel for a 1-channel mask, ``C_out`` channels otherwise.
    ``mask=None`` is the plain convolution and returns ``None`` as mask.
    """
    nd = _conv_dims(weight)
    conv = _CONV[nd]
    check_mask(input, mask, nd, name)
    if mask is None:
        return conv(input, weight, bias, stride, padding, dilation, groups), None
    kernel_size = tuple(weight.shape[2:])
    pad = resolve_padding(padding, kernel_size, _ntuple(dilation, nd), name)
    m = _mask_as(mask, input)
    y = conv(_zero_masked(input, m), weight, bias, stride, padding, dilation, groups)
    centre = window_centre(m, kernel_size, stride, pad, dilation)
    if m.shape[1] != 1:
        # the mixing weights are a function of W: gradients flow through |W| too (the formula's derivative)
        with _no_autocast(input):
            centre = conv(centre, mixing_weights(weight, groups, m.dtype), None, 1, 0, 1, groups)
    else:
        centre = centre.clone()  # a slice of the caller's mask: the output mask must not alias it
    # in place on the fresh convolution output (its backward does not need it)
    return y.mul_(centre), centre


def masked_batch_norm(
    input: Tensor,
    mask: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    name: str = "masked_batch_norm",
) -> Tensor:
    """Batch norm whose statistics run over the valid positions (``mask > 0``) only.

    In training (or without running stats) the per-channel mean and biased variance over the valid
    positions normalise the input, and the running stats are updated in place as
    :func:`torch.nn.functional.batch_norm` updates them (``running = (1 - momentum) * running +
    momentum * stat`` with the unbiased variance); channels with no valid position leave them as they
    are. Otherwise the running stats normalise. The output is 0 under the mask.
    ``mask=None`` is :func:`torch.nn.functional.batch_norm`.
    """
    nd = input.dim() - 2
    if mask is None:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    check_mask(input, mask, nd, name)
    dtype = _mask_dtype(input)
    valid = mask != 0
    c = input.shape[1]
    shape = (1, c) + (1,) * nd
    zero = torch.zeros((), dtype=dtype, device=input.device)
    x = torch.where(valid, input.to(dtype), zero)  # garbage under the mask: selected away, never 0 * x
    if training or running_mean is None:
        dims = (0,) + tuple(range(2, x.dim()))
        xs = x
        count = valid.to(dtype).sum(dim=dims)
        if count.numel() == 1:
            count = count.expand(c)
        denom = count.clamp_min(1)
        mean = xs.sum(dim=dims) / denom
        centred = torch.where(valid, x - mean.view(shape), zero)
        var = (centred * centred).sum(dim=dims) / denom
        if training and running_mean is not None and running_var is not None:
            with torch.no_grad():
                # a channel with no valid position leaves both running stats as they are; with one, the
                # unbiased variance is undefined, so running_var is left as it is
                unbiased = var * count / (count - 1).clamp_min(1)
                new_mean = (1 - momentum) * running_mean + momentum * mean.to(running_mean.dtype)
                new_var = (1 - momentum) * running_var + momentum * unbiased.to(running_var.dtype)
                running_mean.copy_(torch.where(count > 0, new_mean, running_mean))
                running_var.copy_(torch.where(count > 1, new_var, running_var))
    else:
        mean, var = running_mean.to(dtype), running_var.to(dtype)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.to(dtype)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(dtype)
    y = x * scale.view(shape) + shift.view(shape)
    return torch.where(valid, y, zero).to(input.dtype)


def masked_unshuffle(
    input: Tensor, mask: Optional[Tensor], factor: int, *, name: str = "masked_unshuffle"
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

    out = unshuffle(input)
    if mask is None:
        return out, None
    out_mask = unshuffle(mask)
    if mask.shape[1] == 1 and input.shape[1] != 1:
        # channel c*f^nd + k reads sub-position k of every input channel: tile over channels
        out_mask = out_mask.repeat(1, input.shape[1], *([1] * nd))
    return out, out_mask


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
