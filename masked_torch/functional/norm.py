"""Normalization over the valid positions: batch, group and layer norm, and the moments they share."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import _mask_dtype, _zero_masked, check_broadcast_mask, check_mask

__all__ = ["masked_batch_norm", "masked_moments", "masked_group_norm", "masked_layer_norm"]


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
) -> tuple[Tensor, Optional[Tensor]]:
    """Batch norm whose statistics run over the valid positions (``mask > 0``) only.

    In training (or without running stats) the per-channel mean and biased variance over the valid
    positions normalise the input, and the running stats are updated in place as
    :func:`torch.nn.functional.batch_norm` updates them (``running = (1 - momentum) * running +
    momentum * stat`` with the unbiased variance); channels with no valid position leave them as they
    are. Otherwise the running stats normalise (``F.batch_norm`` itself, on the input with the masked
    positions zeroed: ``zeroed=True`` promises they already are). Returns ``(output, mask)``: the output is
    0 under the mask, which passes on. ``mask=None`` is :func:`torch.nn.functional.batch_norm` (mask ``None``).
    """
    nd = input.dim() - 2
    if mask is None:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps), None
    if not zeroed:  # a converted model (zeroed=True) has checked its input mask once
        check_mask(input, mask, nd, name)
    if not training and running_mean is not None and running_var is not None:  # eval: per-channel affine
        y = F.batch_norm(input if zeroed else _zero_masked(input, mask), running_mean, running_var, weight, bias,
                         False, 0.0, eps)
        keep = (mask != 0).to(y.dtype)
        return (y * keep if y.requires_grad else y.mul_(keep)), mask
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
    return torch.where(valid, y, zero).to(input.dtype), mask


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
) -> tuple[Tensor, Optional[Tensor]]:
    """Group norm whose statistics, per sample and group, run over the valid positions only (instance norm
    is ``num_groups = C``). Returns ``(output, mask)``: the output is 0 under the mask, which passes on.
    ``mask=None`` is ``F.group_norm``."""
    if mask is None:
        return F.group_norm(input, num_groups, weight, bias, eps), None
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
    return torch.where(mask != 0, y, torch.zeros((), dtype=y.dtype, device=y.device)).to(input.dtype), mask


def masked_layer_norm(
    input: Tensor,
    mask: Optional[Tensor],
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    *,
    name: str = "masked_layer_norm",
) -> tuple[Tensor, Optional[Tensor]]:
    """Layer norm over the last ``len(normalized_shape)`` dims; the mask broadcasts against ``input``.

    Where the mask has size 1 over the normalised dims (a LayerNorm over channels, channels-last), every
    position is normalised on its own, exactly as ``F.layer_norm``; otherwise the statistics run over the
    valid entries. Returns ``(output, mask)``: the output is 0 under the mask, which passes on. ``mask=None``
    is ``F.layer_norm``."""
    normalized_shape = tuple(normalized_shape)
    if mask is None:
        return F.layer_norm(input, normalized_shape, weight, bias, eps), None
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
    return torch.where(mask != 0, y, torch.zeros((), dtype=y.dtype, device=y.device)).to(input.dtype), mask
