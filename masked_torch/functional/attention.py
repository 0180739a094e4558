"""Masks through attention: a softmax along a dim where the mask varies, and matrix products of masked
tensors (``q @ k.transpose(-2, -1)``, ``attn @ v``), exact per image.

Each image alone attends over its own positions only. On the padded batch the padded positions get no weight
(a softmax reads them as ``-inf``) and add nothing to a contraction (both operands are 0 there, selected, not
multiplied, so NaN in the padding cannot leak)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .masks import _mask_as

__all__ = ["masked_softmax", "matmul_mask", "masked_matmul"]


def masked_softmax(input: Tensor, mask: Optional[Tensor], dim: int, *, log: bool = False,
                   dtype: Optional[torch.dtype] = None) -> tuple[Tensor, Optional[Tensor]]:
    """``softmax(input, dim)`` (``log=True``: ``log_softmax``) over the valid entries of each slice along
    ``dim``: what each image alone gives. Entries under the mask are 0 in the output; a slice with no valid
    entry is 0 throughout (never NaN). Where the mask has size 1 along ``dim`` it is the plain op, zeroed under
    the mask. Returns ``(output, mask)``."""
    fn = torch.log_softmax if log else torch.softmax
    if mask is None:
        return fn(input, dim, dtype=dtype), None
    valid = _mask_as(mask, input) != 0
    if valid.dim() != input.dim():
        raise ValueError(f"softmax: mask {tuple(mask.shape)} and input {tuple(input.shape)} differ in rank")
    zero = torch.zeros((), dtype=dtype or input.dtype, device=input.device)
    if valid.shape[dim % input.dim()] == 1:
        return torch.where(valid, fn(input, dim, dtype=dtype), zero), mask
    filled = torch.where(valid, input, torch.full((), float("-inf"), dtype=input.dtype, device=input.device))
    out = fn(filled, dim, dtype=dtype)
    return torch.where(valid & valid.any(dim, keepdim=True), out, zero), mask


def matmul_mask(mask_a: Optional[Tensor], mask_b: Optional[Tensor], a: Tensor, b: Tensor) -> Optional[Tensor]:
    """The mask of ``a @ b`` (both at least 2-D; ``None``: unmasked): an entry ``(..., i, j)`` is valid where
    row ``i`` of ``a`` and column ``j`` of ``b`` hold a valid entry (the image alone has that row and that
    column), over the broadcast batch dims."""
    if mask_a is None and mask_b is None:
        return None
    rows = None if mask_a is None else mask_a.amax(-1, keepdim=True)  # (..., i, 1)
    cols = None if mask_b is None else mask_b.amax(-2, keepdim=True)  # (..., 1, j)
    if rows is None:
        return cols
    if cols is None:
        return rows
    return rows * cols.to(rows.dtype)


def masked_matmul(a: Tensor, mask_a: Optional[Tensor], b: Tensor, mask_b: Optional[Tensor], *,
                  name: str = "matmul") -> tuple[Tensor, Optional[Tensor]]:
    """``a @ b`` of masked tensors (``torch.matmul`` broadcasting; both at least 2-D), each image's own product.

    Entries under a mask are selected away (0) before the product, so a contraction sums only the valid terms:
    the image's own. Contracting a dim along which a mask varies needs both operands masked along it (a fixed
    matrix over the canvas's positions has no per-image meaning: refused). The output mask is
    :func:`matmul_mask`; the output is 0 under it. Returns ``(output, mask)``."""
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"{name}: a matrix product of masked tensors needs both operands at least 2-D, got "
                         f"{tuple(a.shape)} @ {tuple(b.shape)}")
    for m, t, side in ((mask_a, a, "left"), (mask_b, b, "right")):
        if m is not None and m.dim() != t.dim():
            raise ValueError(f"{name}: the {side} mask {tuple(m.shape)} and its tensor {tuple(t.shape)} differ in rank")
    varies_a = mask_a is not None and mask_a.shape[-1] != 1
    varies_b = mask_b is not None and mask_b.shape[-2] != 1
    if (varies_a and mask_b is None) or (varies_b and mask_a is None):
        raise ValueError(f"{name}: {tuple(a.shape)} @ {tuple(b.shape)} contracts a dim along which the mask of "
                         f"one operand varies (the padded canvas's positions) with an unmasked operand: a fixed "
                         f"matrix over the canvas has no per-image meaning")
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    if mask_a is not None:
        a = torch.where(_mask_as(mask_a, a) != 0, a, zero)
    if mask_b is not None:
        b = torch.where(_mask_as(mask_b, b) != 0, b, zero.to(b.dtype))
    # an invalid row of a (column of b) is 0 throughout, so the product is 0 under its mask
    return torch.matmul(a, b), matmul_mask(mask_a, mask_b, a, b)
