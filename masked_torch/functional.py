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
    "check_broadcast_mask",
    "check_input",
    "window_centre",
    "window_mean",
    "partial_conv",
    "masked_conv",
    "masked_batch_norm",
    "masked_moments",
    "masked_unshuffle",
    "masked_spatial_mean",
    "window_anchor",
    "zero_masked",
    "intersect_masks",
    "masked_max_pool",
    "masked_avg_pool",
    "masked_reduce",
    "masked_group_norm",
    "masked_layer_norm",
    "masked_conv_transpose",
    "check_interpolate",
    "masked_interpolate",
    "masked_pixel_shuffle",
    "conv_transpose_mask",
    "interpolate_mask",
    "reshape_mask",
    "index_mask",
    "split_masks",
    "masked_cat",
    "masked_linear",
    "masked_pad",
    "interpolate_to",
    "masked_var",
    "masked_max_dim",
    "masked_stack",
    "valid_extents",
    "check_binary_mask",
    "adaptive_sizes",
    "masked_adaptive_pool",
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


def check_broadcast_mask(input: Tensor, mask: Optional[Tensor], name: str) -> Optional[Tensor]:
    """For layers that act on each entry (or along dims where the mask has size 1), in any layout: the mask
    has the input's rank, its batch size, and each other dim equal to the input's or 1."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name}: mask must be a tensor or None, got {type(mask).__name__}")
    if (mask.dim() != input.dim() or input.dim() < 1 or mask.shape[0] != input.shape[0]
            or any(m not in (1, s) for m, s in zip(mask.shape[1:], input.shape[1:]))):
        raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} does not broadcast against input of shape "
                         f"{tuple(input.shape)} (same rank and batch size; every other dim equal or 1)")
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
        and keep.dim() > 1 and keep.shape[1] == 1  # a small, broadcast bit mask (a C-channel mask: a full pass)
        and input.dtype in _BITS
        and not (input.requires_grad and torch.is_grad_enabled())
    )
    if fast:
        bits = _BITS[input.dtype]
        return (input.view(bits) & keep.to(bits).neg_()).view(input.dtype)
    return torch.where(keep, input, torch.zeros((), dtype=input.dtype, device=input.device))


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
    zeroed: bool = False,
    name: str = "masked_batch_norm",
) -> Tensor:
    """Batch norm whose statistics run over the valid positions (``mask > 0``) only.

    In training (or without running stats) the per-channel mean and biased variance over the valid
    positions normalise the input, and the running stats are updated in place as
    :func:`torch.nn.functional.batch_norm` updates them (``running = (1 - momentum) * running +
    momentum * stat`` with the unbiased variance); channels with no valid position leave them as they
    are. Otherwise the running stats normalise (``F.batch_norm`` itself, on the input with the masked
    positions zeroed: ``zeroed=True`` promises they already are). The output is 0 under the mask.
    ``mask=None`` is :func:`torch.nn.functional.batch_norm`.
    """
    nd = input.dim() - 2
    if mask is None:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if not zeroed:  # a converted model (zeroed=True) has checked its input mask once
        check_mask(input, mask, nd, name)
    if not training and running_mean is not None and running_var is not None:  # eval: per-channel affine
        y = F.batch_norm(input if zeroed else _zero_masked(input, mask), running_mean, running_var, weight, bias,
                         False, 0.0, eps)
        keep = (mask != 0).to(y.dtype)
        return y * keep if y.requires_grad else y.mul_(keep)
    dtype = _mask_dtype(input)
    valid = mask != 0
    c = input.shape[1]
    shape = (1, c) + (1,) * nd
    zero = torch.zeros((), dtype=dtype, device=input.device)
    x = torch.where(valid, input.to(dtype), zero)  # garbage under the mask: selected away, never 0 * x
    if training or running_mean is None:
        count, mean, _, var = masked_moments(x, valid, (0,) + tuple(range(2, x.dim())))
        count, mean, var = count.reshape(-1).expand(c), mean.reshape(c), var.reshape(c)
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


# -- masks of the other layers a CNN is made of ---------------------------------------------------------------
#
# Every function below takes ``input`` exactly 0 under the mask when ``zeroed=True`` (every masked layer's output
# is), selects it there otherwise, and returns an output that is exactly 0 wherever its output mask is 0. Where
# a layer's output grid differs from its input's, the output mask follows the "end" rule of
# :func:`window_anchor`: an image at the canvas origin keeps exactly the outputs the plain layer gives it alone.


def zero_masked(input: Tensor, mask: Optional[Tensor]) -> Tensor:
    """``input`` with every position where ``mask == 0`` set to exactly 0 (a select, NaN-safe); ``mask``
    broadcasts against ``input``. ``mask=None`` returns ``input``."""
    if mask is None:
        return input
    return _zero_masked(input, mask)


def intersect_masks(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    """The mask of an elementwise result of two masked tensors: valid where both are (``a * b``, broadcast).
    ``None`` means no constraint; the same tensor twice is returned as it is."""
    if a is None or a is b:
        return b
    if b is None:
        return a
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    return a * b


def check_input(input: Tensor, mask: Optional[Tensor], nd: int, name: str) -> None:
    """A batched input ``(N, C, *spatial)`` with ``nd`` spatial dims, and a mask that fits it (``ValueError``
    naming ``name`` and the shapes otherwise)."""
    if input.dim() != nd + 2:
        raise ValueError(f"{name}: expected input of {nd + 2} dimensions (N, C, *spatial), got "
                         f"{tuple(input.shape)}" + ("" if mask is None else f" with mask {tuple(mask.shape)}"))
    check_mask(input, mask, nd, name)


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


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


def _count(valid: Tensor, shape: Sequence[int], dims: tuple[int, ...], dtype: torch.dtype, keepdim: bool) -> Tensor:
    """How many valid entries each reduction over ``dims`` of a tensor of ``shape`` sees (``valid`` broadcasts:
    a dim where it has size 1 counts every entry)."""
    count = valid.sum(dim=dims, keepdim=keepdim, dtype=dtype)
    return count * math.prod(shape[d] for d in dims if valid.shape[d] == 1)


def masked_moments(x: Tensor, valid: Tensor, dims: tuple[int, ...], correction: float = 0
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The one masked mean and variance: ``(count, mean, centred, var)`` over the valid entries of ``dims``
    (kept as size-1 dims). ``x`` is already in the dtype to compute in and 0 where not ``valid`` (which
    broadcasts against it: a dim where it has size 1 counts every entry); ``centred`` is ``x - mean`` at the
    valid entries and 0 elsewhere; ``var`` is the sum of squared deviations over ``count - correction``
    (Bessel's correction as ``torch.var``; 0 where no entry is valid)."""
    count = _count(valid, x.shape, dims, x.dtype, True)
    mean = x.sum(dim=dims, keepdim=True) / count.clamp_min(1)
    centred = torch.where(valid, x - mean, torch.zeros((), dtype=x.dtype, device=x.device))
    var = (centred * centred).sum(dim=dims, keepdim=True) / (count - correction).clamp_min(1e-30)
    return count, mean, centred, var


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


def masked_stack(tensors: Sequence[Tensor], masks: Sequence[Optional[Tensor]], dim: int = 0, *, zero: bool = True,
                 name: str = "stack") -> tuple[Tensor, Optional[Tensor]]:
    """``torch.stack``: the masks stack along the new dim (one mask of size 1 there when they agree), as in
    :func:`masked_cat`."""
    d = dim % (tensors[0].dim() + 1)
    if d == 0 and any(m is not None for m in masks):
        raise ValueError(f"{name}: stacking masked tensors along dim 0 puts the new dim before the batch dim; "
                         f"stack along dim 1 or later (e.g. torch.stack(xs, 1).sum(1))")
    return masked_cat([t.unsqueeze(d) for t in tensors], [None if m is None else m.unsqueeze(d) for m in masks], d,
                      zero=zero, name=name)


def _normalize(x: Tensor, valid: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with the mean and biased variance over the valid entries of ``dims``
    (``valid`` broadcasts against ``x``); 0 where not valid. Computed in float32 at least."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    xs = torch.where(valid, x.to(dtype), torch.zeros((), dtype=dtype, device=x.device))
    _, _, centred, var = masked_moments(xs, valid, dims)
    return centred * torch.rsqrt(var + eps)


def masked_group_norm(
    input: Tensor,
    mask: Optional[Tensor],
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    *,
    name: str = "masked_group_norm",
) -> Tensor:
    """Group norm whose statistics, per sample and group, run over the valid positions only (instance norm
    is ``num_groups = C``); the output is 0 under the mask. ``mask=None`` is ``F.group_norm``."""
    if mask is None:
        return F.group_norm(input, num_groups, weight, bias, eps)
    nd = input.dim() - 2
    check_mask(input, mask, nd, name)
    n, c = input.shape[:2]
    if c % num_groups:
        raise ValueError(f"{name}: {c} channels do not split into {num_groups} groups")
    x = input.reshape(n, num_groups, c // num_groups, *input.shape[2:])
    valid = mask != 0
    valid = valid.reshape(n, 1, 1, *mask.shape[2:]) if mask.shape[1] == 1 else valid.reshape(x.shape)
    y = _normalize(x, valid, tuple(range(2, x.dim())), eps).reshape(input.shape)
    shape = (1, c) + (1,) * nd
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return torch.where(mask != 0, y, torch.zeros((), dtype=y.dtype, device=y.device)).to(input.dtype)


def masked_layer_norm(
    input: Tensor,
    mask: Optional[Tensor],
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    *,
    name: str = "masked_layer_norm",
) -> Tensor:
    """Layer norm over the last ``len(normalized_shape)`` dims; the mask broadcasts against ``input``.

    Where the mask has size 1 over the normalised dims (a LayerNorm over channels, channels-last), every
    position is normalised on its own, exactly as ``F.layer_norm``; otherwise the statistics run over the
    valid entries. The output is 0 under the mask. ``mask=None`` is ``F.layer_norm``."""
    normalized_shape = tuple(normalized_shape)
    if mask is None:
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    check_broadcast_mask(input, mask, name)
    dims = tuple(range(input.dim() - len(normalized_shape), input.dim()))
    if all(mask.shape[d] == 1 for d in dims):
        y = F.layer_norm(input, normalized_shape, weight, bias, eps)
    else:
        y = _normalize(input, mask != 0, dims, eps)
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
    return torch.where(mask != 0, y, torch.zeros((), dtype=y.dtype, device=y.device)).to(input.dtype)


def _index_anchor(mask: Tensor, dim: int, out_size: int, index_of) -> Tensor:
    """``mask`` along ``dim`` at the input index ``index_of(i)`` (clamped to the input) of each output ``i``."""
    i = torch.arange(out_size, device=mask.device, dtype=torch.float64)
    idx = index_of(i).clamp(0, mask.shape[dim] - 1).to(torch.long)
    return mask.index_select(dim, idx)


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


_LINEAR_MODES = {"linear", "bilinear", "trilinear"}
_NEAREST_MODES = {"nearest", "nearest-exact"}


def check_interpolate(size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                      recompute_scale_factor=None, antialias: bool = False, *, name: str = "interpolate") -> None:
    """Refuse what makes an interpolation depend on the padded canvas (``ValueError`` naming it)."""
    why = None
    if size is not None:
        why = "size= resizes the padded canvas, not each image; use scale_factor="
    elif scale_factor is None:
        why = "it needs scale_factor="
    elif mode not in _LINEAR_MODES | _NEAREST_MODES:
        why = f"mode={mode!r} has no per-image rule (supported: nearest, nearest-exact, linear, bilinear, trilinear)"
    elif align_corners:
        why = "align_corners=True maps the canvas corners, not each image's; use align_corners=False"
    elif recompute_scale_factor:
        why = "recompute_scale_factor=True derives the scale from the canvas size"
    elif antialias:
        why = "antialias=True is not supported"
    if why:
        raise ValueError(f"{name}: cannot be masked exactly: {why}")


def masked_interpolate(
    input: Tensor,
    mask: Optional[Tensor],
    scale_factor,
    mode: str = "nearest",
    align_corners: Optional[bool] = None,
    *,
    zeroed: bool = False,
    name: str = "masked_interpolate",
) -> tuple[Tensor, Optional[Tensor]]:
    """Up- or downsampling by ``scale_factor`` of a padded batch, per image as on the image alone.

    Nearest modes read the same source pixel as on the image alone. Linear modes are normalised,
    ``interp(X*M) / interp(M)``: at the image's edge the weights that fell on the padding go back to the
    edge pixel, which is exactly the edge clamping of the plain layer on the image alone. Output ``i`` is
    valid where the image alone has it (``i < floor(size * scale)``: the input index
    ``ceil((i + 1) / scale) - 1`` is valid). The mask of a linear mode is reduced to one channel.

    Exact for integer scale factors and their inverses. For other scales PyTorch takes shortcuts that depend on
    the size (it copies a dim whose output size equals its input size, e.g. 3 x 1.25 -> 3; nearest with an
    output exactly twice the input reads ``i // 2``), so an image whose own size hits one while the canvas
    does not gets other values than alone.
    """
    nd = input.dim() - 2
    check_interpolate(None, scale_factor, mode, align_corners, name=name)
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


# -- masks through tensor manipulation ---------------------------------------------------------------------
#
# A mask has the rank of its tensor and broadcasts against it (size 1 where it does not vary: the channels of
# a 1-channel mask, or every dim but the batch for a per-sample mask). These functions move a mask the way a
# tensor operation moves its tensor, so that layout changes (permute to channels-last, flatten after global
# pooling, channel split) keep each value's validity.


def _reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of dims of shape ``a`` with runs of shape ``b`` that hold the same elements."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj, pa, pb = [], [], 1, 1
        if i < len(a):
            gi.append(i)
            pa, i = pa * a[i], i + 1
        if j < len(b):
            gj.append(j)
            pb, j = pb * b[j], j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa, i = pa * a[i], i + 1
            elif pb < pa and j < len(b):
                gj.append(j)
                pb, j = pb * b[j], j + 1
            else:
                raise ValueError(f"cannot reshape {tuple(a)} to {tuple(b)}")
        groups.append((gi, gj))
    return groups


def reshape_mask(mask: Optional[Tensor], in_shape: Sequence[int], out_shape: Sequence[int]) -> Optional[Tensor]:
    """The mask of ``x.reshape(out_shape)`` for ``x`` of ``in_shape`` (view, flatten, unflatten, ...).

    Runs of dims where the mask has size 1 stay size 1; a run where it varies is expanded to the tensor's
    size there and reshaped with it (exact: every value keeps its own validity)."""
    if mask is None:
        return None
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    expand, target = list(mask.shape), []
    for gi, gj in _reshape_groups(in_shape, out_shape):
        if all(mask.shape[d] == 1 for d in gi):
            target += [1] * len(gj)
        else:
            for d in gi:
                expand[d] = in_shape[d]
            target += [out_shape[d] for d in gj]
    return mask.expand(expand).reshape(target)


def _is_canvas_slice(item) -> bool:
    if isinstance(item, slice):
        return any(v is not None and v < 0 for v in (item.start, item.stop))
    return isinstance(item, int) and item < 0


def index_mask(mask, value: Tensor, index, *, name: str = "getitem"):
    """The mask of ``value[index]``: the same index, with slices and ints applied as ``:`` and ``0`` where the
    mask has size 1. Indexing a dim where the mask varies from its end (negative indices) depends on the
    padded canvas and is refused; so are tensor (advanced) indices there."""
    if mask is None or isinstance(mask, (tuple, list)):
        return None if mask is None else mask[index]
    items = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in items):
        k = items.index(Ellipsis)
        used = sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:k] + (slice(None),) * (value.dim() - used) + items[k + 1:]
    out, d = [], 0
    for item in items:
        if item is None:
            out.append(None)
            continue
        if d == 0 and not isinstance(item, slice):
            raise ValueError(f"{name}: index {item!r} on the batch dim drops it (a masked tensor keeps its batch "
                             f"dim; slice it, e.g. x[:1])")
        if mask.shape[d] == 1 and value.shape[d] != 1:
            if isinstance(item, Tensor):
                raise ValueError(f"{name}: tensor indices are not supported on a masked tensor")
            out.append(0 if isinstance(item, int) else slice(None))
        else:
            if d >= 1 and (isinstance(item, Tensor) or _is_canvas_slice(item)):
                raise ValueError(
                    f"{name}: index {item!r} on dim {d} counts from the end of the padded canvas, not of each "
                    f"image (tensor {tuple(value.shape)}, mask {tuple(mask.shape)})")
            out.append(item)
        d += 1
    return mask[tuple(out)]


def split_masks(mask: Optional[Tensor], value: Tensor, split, dim: int = 0, *, chunks: bool = False) -> list:
    """Masks of ``value.split(split, dim)`` (or ``value.chunk(split, dim)`` with ``chunks=True``)."""
    n = len(value.chunk(split, dim) if chunks else value.split(split, dim))
    if mask is None:
        return [None] * n
    dim = dim % value.dim()
    if mask.shape[dim] == 1:
        return [mask] * n
    if dim >= 2:
        raise ValueError(f"split/chunk along dim {dim}, where the mask {tuple(mask.shape)} varies, cuts the padded "
                         f"canvas, not each image")
    return list(mask.chunk(split, dim) if chunks else mask.split(split, dim))


def masked_cat(tensors: Sequence[Tensor], masks: Sequence[Optional[Tensor]], dim: int = 0, *,
               zero: bool = True, name: str = "cat") -> tuple[Tensor, Optional[Tensor]]:
    """``torch.cat(tensors, dim)`` and its mask.

    Concatenating channels keeps one mask of size 1 along ``dim`` where every input's mask has size 1
    there: the same mask when they are the same tensor, else their intersection (valid where every input
    is; then, with ``zero=True``, the output is set to 0 where the intersection is 0). Otherwise the masks,
    expanded to their tensors along ``dim``, are concatenated. A dim past the channels along which a mask
    varies (a spatial dim) is refused: joining canvases is not joining images."""
    y = torch.cat(list(tensors), dim)
    present = [m for m in masks if m is not None]
    if not present:
        return y, None
    dim = dim % y.dim()
    if dim >= 2 and any(m.shape[dim] != 1 for m in present):
        raise ValueError(f"{name}: concatenating along dim {dim}, where the masks vary, joins padded canvases, not "
                         f"images (tensors {[tuple(t.shape) for t in tensors]})")
    if all(m is not None and m.shape[dim] == 1 for m in masks):
        first = masks[0]
        if all(m is first for m in masks):
            return y, first
        out = first
        for m in masks[1:]:
            out = intersect_masks(out, m)
        return (zero_masked(y, out) if zero else y), out
    parts = []
    for m, t in zip(masks, tensors):
        if m is None:
            m = torch.ones((1,) * t.dim(), dtype=present[0].dtype, device=t.device)
        shape = list(torch.broadcast_shapes(m.shape, (t.shape[0],) + tuple(present[0].shape[1:])))
        shape[dim] = t.shape[dim]
        parts.append(m.expand(shape))
    return y, torch.cat(parts, dim)


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


def masked_pad(input: Tensor, mask: Optional[Tensor], pad: Sequence[int], mode: str = "constant",
               value: Optional[float] = None, *, zeroed: bool = False,
               name: str = "pad") -> tuple[Tensor, Optional[Tensor]]:
    """``F.pad`` with constant padding of the spatial dims, per image as on the image alone.

    The image at the canvas origin alone gets ``left`` entries before it and ``right`` entries after its
    own end, not after the canvas's: the output mask is the input mask with ``left`` entries before it
    (valid where the image is not empty) and each image's valid run extended by ``right``; the entries after
    each image hold ``value`` as they do on the image alone. Other modes (reflect, replicate, circular)
    and negative (cropping) pads are refused: they read or cut the canvas's edge."""
    value = 0.0 if value is None else float(value)
    if mask is None:
        return F.pad(input, list(pad), mode=mode, value=value), None
    nd = input.dim() - 2
    check_input(input, mask, nd, name)
    if mode != "constant":
        raise ValueError(f"{name}: mode={mode!r} reads the padded canvas's edge, not each image's; only constant "
                         f"padding has a per-image rule")
    pad = list(pad)
    if len(pad) % 2 or len(pad) > 2 * nd or any(p < 0 for p in pad):
        raise ValueError(f"{name}: pad {tuple(pad)} must be non-negative (left, right) pairs of the spatial dims "
                         f"of input {tuple(input.shape)}")
    x = input if zeroed else _zero_masked(input, mask)
    y = F.pad(x, pad, value=value)
    m = _mask_as(mask, input)
    before = F.pad(m, pad)  # the input's own validity, moved
    m = _grow(m, pad)
    if value != 0.0:
        fresh = (m != 0) & (before == 0)
        fresh = fresh & ~_left_pad_region(fresh, pad)
        y = torch.where(fresh, torch.full((), value, dtype=y.dtype, device=y.device), y)
        y = torch.where(m != 0, y, torch.zeros((), dtype=y.dtype, device=y.device))
    return y, m


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


def _left_pad_region(t: Tensor, pad: Sequence[int]) -> Tensor:
    """True on the entries the left pads added (they already hold the pad value)."""
    region = torch.zeros_like(t)
    for i in range(len(pad) // 2):
        d = t.dim() - 1 - i
        if pad[2 * i]:
            region.narrow(d, 0, pad[2 * i]).fill_(True)
    return region


def valid_extents(mask: Tensor) -> list[tuple[int, ...]]:
    """Per sample of a mask ``(N, C, *S)``, the size of the bounding box of ``mask != 0`` (any channel) from
    the origin: last valid index + 1 along each spatial dim; 0 along every dim for a sample with no valid
    position (and along a dim of size 0)."""
    valid = (mask != 0).any(dim=1)  # (N, *S)
    n, spatial = valid.shape[0], valid.shape[1:]
    if n == 0:
        return []
    columns = []
    for d, s in enumerate(spatial):
        if s == 0 or valid.numel() == 0:
            columns.append(torch.zeros(n, dtype=torch.long, device=mask.device))
            continue
        others = [k + 1 for k in range(len(spatial)) if k != d]
        along = valid.any(dim=others) if others else valid  # (N, s)
        index = torch.arange(1, s + 1, device=mask.device)
        columns.append((along * index).amax(dim=1))
    if not columns:
        return [() for _ in range(n)]
    return [tuple(row) for row in torch.stack(columns, dim=1).tolist()]


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


# -- appended: mask values a converted model accepts; adaptive pooling per image -------------------------------


def _skip_data_checks() -> bool:
    """Inside ``torch.compile``, ``torch.export`` or ``torch.jit`` tracing a check that reads the mask's values
    (a host sync) cannot run: it is skipped there (eager calls check; ``torch.fx`` passes a ``Proxy``, not a
    tensor)."""
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.jit.is_scripting())


def check_binary_mask(mask: Optional[Tensor], name: str) -> Optional[Tensor]:
    """A mask a converted model reads as validity: ``bool``, or every value exactly 0 or 1 (integer or float).

    Any other value (255 of an 8-bit image mask, a soft 0.5, -1, NaN, Inf) raises ``ValueError`` naming
    ``name``, the mask's dtype and value range, and the fix (``mask > 0``). Soft masks are a feature of the
    masked layers a user builds; a converted model promises each image exactly what the plain model gives it
    alone, which a scaled mask would break silently.

    Cost: one elementwise pass over the mask and a reduction to one value, read on the host (a device sync on
    GPU). Skipped for ``bool`` masks and under ``torch.compile``/``torch.export``/tracing. Returns ``mask``."""
    if mask is None or not isinstance(mask, Tensor) or mask.dtype == torch.bool or _skip_data_checks():
        return mask
    if mask.is_complex():
        return mask  # refused by check_mask with its own message
    bad = ((mask != 0) & (mask != 1)).any()
    if bool(bad):
        if mask.is_floating_point() and bool(mask.isnan().any()):
            found = "NaN"
        else:
            finite = mask[(mask != 0) & (mask != 1)]
            found = f"values such as {finite.flatten()[0].item()!r}"
        raise ValueError(
            f"{name}: the mask must be 0/1 or bool (a converted model reads it as validity), got {mask.dtype} with "
            f"{found}; pass mask > 0 (or mask.bool()) for 'valid where non-zero'")
    return mask


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
    valid = mask != 0
    extents = valid_extents(mask)
    counts = valid.flatten(2).sum(-1).tolist()  # (N, C_mask) valid positions of each sample and mask channel
    out_shape = tuple(input.shape[:2]) + tuple(s if s is not None else input.shape[2 + i] for i, s in enumerate(sizes))
    out = input.new_zeros(out_shape)
    m_dtype = _mask_dtype(input)
    out_mask = torch.zeros(tuple(mask.shape[:2]) + tuple(1 if s is not None else input.shape[2 + i]
                                                           for i, s in enumerate(sizes)),
                           dtype=m_dtype, device=mask.device)
    for k, (extent, count) in enumerate(zip(extents, counts)):
        if set(count) != {math.prod(extent)}:
            raise ValueError(
                f"{name}: output_size={output_size!r} pools each image's own region, which must be a box at the "
                f"canvas origin (as pad_batch makes it); sample {k}'s mask {tuple(mask.shape)} has holes or differs "
                f"between channels")
        if math.prod(extent) == 0:
            continue  # no valid position: zeros, mask 0
        crop = input[(slice(k, k + 1), slice(None)) + tuple(slice(0, e) for e in extent)]
        y = pool(crop, output_size)
        out[(slice(k, k + 1), slice(None)) + tuple(slice(0, s) for s in y.shape[2:])] = y
        out_mask[(k, slice(None)) + tuple(slice(None) if s is not None else slice(0, e)
                                          for s, e in zip(sizes, extent))] = 1
    return out, out_mask
