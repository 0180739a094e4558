"""The helpers that the code of a converted graph calls at run time (besides ``masked_torch.functional``)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .. import functional as MF

__all__ = ["enter", "zero_unless_same", "fit_mask", "refit_mask", "reshape_like", "reshape_per_image",
           "check_unmasked_dim", "field_mask", "mask_method"]


def enter(input: Tensor, mask: Optional[Tensor], zero: bool, name: str):
    """Check the mask, bring it to the mask dtype, and (masked kinds) zero the input under it."""
    if mask is None:
        return input, None
    if not isinstance(input, Tensor):
        raise ValueError(f"{name}: the first input must be a tensor to take a mask, got {type(input).__name__}")
    MF.check_mask(input, mask, input.dim() - 2, name)
    mask = MF._mask_as(mask, input)
    return (MF.zero_masked(input, mask) if zero else input), mask


def zero_unless_same(value: Tensor, mask: Optional[Tensor], a: Optional[Tensor], b: Optional[Tensor]) -> Tensor:
    """After ``a + b`` of values 0 under their masks ``a``/``b``: zero where the intersection ``mask`` is 0,
    unless both had the same mask (then the sum is already 0 there)."""
    if a is b or mask is None:
        return value
    return MF.zero_masked(value, mask)
def fit_mask(mask: Optional[Tensor], value: Tensor) -> Optional[Tensor]:
    """A mask of size 1 along a spatial dim (a per-sample mask viewed as a sequence, as ECA does before its
    Conv1d) expanded to the layer input's size there: it is constant along it."""
    if mask is None or mask.dim() != value.dim() or mask.shape[2:] == value.shape[2:]:
        return mask
    return mask.expand(tuple(mask.shape[:2]) + tuple(value.shape[2:]))


def refit_mask(out_mask: Optional[Tensor], mask: Optional[Tensor], value: Tensor) -> Optional[Tensor]:
    """After a layer that got a mask expanded by :func:`fit_mask`: the output mask is constant along those
    dims too (windows read it at their clamped end), so it goes back to size 1 there."""
    if mask is None or out_mask is None or mask.dim() != value.dim() or mask.shape[2:] == value.shape[2:]:
        return out_mask
    dims = tuple(d for d in range(2, mask.dim()) if mask.shape[d] == 1 and value.shape[d] != 1)
    return out_mask.amax(dim=dims, keepdim=True) if dims and out_mask.dim() == mask.dim() else out_mask


def reshape_like(mask: Optional[Tensor], before: Tensor, after: Tensor, name: str = "reshape", base: int = 0,
                 sizes=(), like: Optional[Tensor] = None) -> Optional[Tensor]:
    """The mask of a view/reshape (:func:`~masked_torch.functional.reshape_mask`). ``sizes``: its new sizes
    that are spatial sizes of a masked tensor, ``(index counted from base, that tensor's mask, its dim)``;
    ``like``: the mask of the tensor whose spatial sizes it takes whole (``view_as(y)``, ``view(y.shape)``)."""
    if like is not None:
        sizes = tuple((j, like, j) for j in range(2, after.dim()))
    elif sizes:
        base = base % before.dim()  # unflatten(-1, ...)
        sizes = tuple((base + j, m, d) for j, m, d in sizes)
    return MF.reshape_mask(mask, before.shape, after.shape, name=name, sizes=sizes)


def reshape_per_image(input: Tensor, mask: Optional[Tensor], output: Tensor, image_shape, name: str = "reshape",
                      base: int = 0, sizes=(), like: Optional[Tensor] = None):
    """``(output, mask)`` of a view/reshape, each image reshaped alone where the canvas reshape would move its
    values (:func:`~masked_torch.functional.masked_reshape`; ``image_shape``: the recipes of each image's new
    sizes). ``base``, ``sizes``, ``like`` as in :func:`reshape_like`."""
    if like is not None:
        sizes = tuple((j, like, j) for j in range(2, output.dim()))
    elif sizes:
        base = base % input.dim()
        sizes = tuple((base + j, m, d) for j, m, d in sizes)
    return MF.masked_reshape(input, mask, output, image_shape, name=name, sizes=sizes)


def check_unmasked_dim(value: Tensor, mask: Optional[Tensor], dim: int, name: str) -> Tensor:
    """For an op along ``dim`` of each position (softmax, normalize): the mask must not vary along it."""
    if mask is not None and mask.shape[dim % value.dim()] != 1:
        raise ValueError(f"{name}: works along dim {dim}, where the mask {tuple(mask.shape)} varies: it would mix "
                         f"image and padding")
    return value


def field_mask(mask, value, field: str, name: str):
    """The mask of ``value.field``: a field of a namedtuple of outputs. A tensor attribute (``.T``, ``.mT``,
    ``.real``) has no rule."""
    if isinstance(value, tuple) and hasattr(value, field):  # a namedtuple, or torch.max's (values, indices)
        return None if mask is None else getattr(mask, field)
    raise ValueError(f"{name}: no mask rule for the attribute {field!r} of a masked {type(value).__name__}")


def mask_method(mask: Optional[Tensor], method: str, *args, **kwargs) -> Optional[Tensor]:
    """Move the mask as a layout method (``permute``, ``transpose``, ``unsqueeze``, ...) moves its tensor."""
    return None if mask is None else getattr(mask, method)(*args, **kwargs)
