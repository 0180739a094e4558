"""Batching helpers: pad differently sized images into one batch with a validity mask, and back.

In the spirit of :mod:`torch.nn.utils.rnn` (``pad_sequence`` / ``unpad_sequence``), for images:

* :func:`pad_batch` puts tensors ``(C, *spatial)`` of different spatial sizes (1d, 2d or 3d) into one
  tensor ``(N, C, *S)``, each at the origin, and returns the mask ``(N, 1, *S)`` (1 = valid) that every
  masked module of :mod:`masked_torch.nn` takes;
* :func:`unpad` cuts a padded output back into one tensor per sample, using the output mask;
* :class:`PadCollate` (and its default instance :data:`collate`) is a ``collate_fn`` for
  :class:`torch.utils.data.DataLoader` that does the padding per batch.

Example::

    >>> import torch
    >>> from masked_torch.utils import pad_batch, unpad
    >>> images = [torch.randn(3, 20, 30), torch.randn(3, 17, 12)]
    >>> x, mask = pad_batch(images, multiple=16)
    >>> x.shape, mask.shape
    (torch.Size([2, 3, 32, 32]), torch.Size([2, 1, 32, 32]))
    >>> [t.shape for t in unpad(x, mask)]
    [torch.Size([3, 20, 30]), torch.Size([3, 17, 12])]
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import default_collate

from .functional import valid_extents

__all__ = ["pad_batch", "unpad", "PadCollate", "collate"]

_Multiple = Union[int, Sequence[int]]


def _shapes(tensors: Sequence[Any]) -> str:
    return ", ".join(str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__ for t in tensors)


def _multiples(multiple: _Multiple, nd: int) -> tuple[int, ...]:
    if isinstance(multiple, int) and not isinstance(multiple, bool):
        m = (multiple,) * nd
    elif (isinstance(multiple, Sequence) and len(multiple) == nd
          and all(isinstance(v, int) and not isinstance(v, bool) for v in multiple)):
        m = tuple(multiple)
    else:
        raise ValueError(f"pad_batch: multiple must be an int or a tuple of {nd} ints (one per spatial "
                         f"dimension), got {multiple!r}")
    if any(v < 1 for v in m):
        raise ValueError(f"pad_batch: multiple must be >= 1, got {multiple!r}")
    return m


def pad_batch(
    tensors: Iterable[Tensor],
    multiple: _Multiple = 1,
    *,
    value: float = 0.0,
    mask_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    r"""Pad tensors ``(C, *spatial)`` of different spatial sizes into one batch and its validity mask.

    Each tensor is placed at the origin (top-left in 2d, the start in 1d) of a canvas whose size along
    each spatial dimension is the largest size in the batch rounded up to a multiple of ``multiple``;
    the rest is filled with ``value``.

    Args:
        tensors: a non-empty sequence of ``N`` tensors ``(C, *s_i)`` with 1, 2 or 3 spatial dimensions,
            all with the same ``C``, number of dimensions, dtype and device. Spatial sizes may differ and
            may be zero (an empty image gives an all-zero mask).
        multiple: round each padded spatial size up to a multiple of this: an int, or a tuple with one
            int per spatial dimension; ``>= 1``. Use ``2**depth`` for a network that downsamples
            ``depth`` times by 2.
        value: fill value of the padding.
        mask_dtype: dtype of the mask (``torch.bool`` too).

    Returns:
        ``(x, mask)``: ``x`` of shape ``(N, C, *S)`` (dtype and device of the inputs) and ``mask`` of
        shape ``(N, 1, *S)`` and dtype ``mask_dtype``, 1 (``True``) inside each tensor, 0 elsewhere.
        ``x`` is differentiable with respect to the inputs.

    Raises:
        ValueError: for an empty sequence, a non-tensor, differing channel counts, ranks, dtypes or
            devices, a rank other than 2, 3 or 4, or a bad ``multiple``.

    Example::

        >>> x, mask = pad_batch([torch.ones(1, 2, 3), torch.ones(1, 3, 1)], multiple=(4, 2), value=-1.0)
        >>> x.shape, mask.shape
        (torch.Size([2, 1, 4, 4]), torch.Size([2, 1, 4, 4]))
        >>> mask[1, 0]
        tensor([[1., 0., 0., 0.],
                [1., 0., 0., 0.],
                [1., 0., 0., 0.],
                [0., 0., 0., 0.]])
    """
    if isinstance(tensors, Tensor):
        raise ValueError(f"pad_batch: expected a sequence of tensors (C, *spatial), got one tensor "
                         f"{tuple(tensors.shape)}; pass a list, e.g. [image]")
    try:
        tensors = list(tensors)
    except TypeError:
        raise ValueError(f"pad_batch: expected a sequence of tensors (C, *spatial), got "
                         f"{type(tensors).__name__}") from None
    if len(tensors) == 0:
        raise ValueError("pad_batch: expected at least one tensor, got an empty sequence")
    if not all(isinstance(t, Tensor) for t in tensors):
        raise ValueError(f"pad_batch: every element must be a tensor (C, *spatial), got [{_shapes(tensors)}]")
    first = tensors[0]
    if first.dim() not in (2, 3, 4):
        raise ValueError(f"pad_batch: tensors must be (C, *spatial) with 1, 2 or 3 spatial dimensions, "
                         f"got shapes [{_shapes(tensors)}]")
    if any(t.dim() != first.dim() or t.shape[0] != first.shape[0] for t in tensors):
        raise ValueError(f"pad_batch: every tensor must have the same number of dimensions and channels "
                         f"(C, *spatial), got shapes [{_shapes(tensors)}]")
    if any(t.dtype != first.dtype or t.device != first.device for t in tensors):
        raise ValueError(f"pad_batch: every tensor must have the same dtype and device, got "
                         f"{[(str(t.dtype), str(t.device)) for t in tensors]} for shapes [{_shapes(tensors)}]")
    if not isinstance(mask_dtype, torch.dtype):
        raise ValueError(f"pad_batch: mask_dtype must be a torch.dtype, got {mask_dtype!r}")
    nd = first.dim() - 1
    m = _multiples(multiple, nd)
    size = [max(t.shape[d + 1] for t in tensors) for d in range(nd)]
    size = [math.ceil(s / k) * k for s, k in zip(size, m)]

    x = first.new_full((len(tensors), first.shape[0], *size), value)
    mask = torch.zeros((len(tensors), 1, *size), dtype=mask_dtype, device=first.device)
    for i, t in enumerate(tensors):
        region = (i, slice(None), *(slice(0, s) for s in t.shape[1:]))
        x[region] = t
        mask[region] = 1
    return x, mask


def _unpad_tensor(output: Tensor, mask: Optional[Tensor], where: str) -> list[Tensor]:
    if not isinstance(output, Tensor) or not (mask is None or isinstance(mask, Tensor)):
        raise ValueError(f"unpad: {where}expected a tensor output and a tensor mask (or None), got "
                         f"{type(output).__name__} and {type(mask).__name__}")
    if mask is None:
        return list(output.unbind(0))
    if output.dim() == 0 or mask.dim() == 0 or mask.shape[0] != output.shape[0]:
        raise ValueError(f"unpad: {where}output {tuple(output.shape)} and mask {tuple(mask.shape)} must have "
                         f"the same batch size N as their first dimension")
    if mask.dim() == 1 or (mask.dim() == 2 and mask.shape[1] == 1):
        return list(output.unbind(0))  # no spatial dimensions: one row per sample
    if (mask.dim() < 3 or output.dim() != mask.dim() or mask.shape[1] not in (1, output.shape[1])
            or mask.shape[2:] != output.shape[2:]):
        raise ValueError(f"unpad: {where}mask {tuple(mask.shape)} does not fit output {tuple(output.shape)}: "
                         f"expected (N, 1, *S) or (N, C, *S) with the output's N, C and spatial size S, "
                         f"or (N, 1) / (N,) for an output without spatial dimensions")
    return [output[(i, slice(None), *(slice(0, e) for e in ext))] for i, ext in enumerate(valid_extents(mask))]


def _unpad(output: Any, mask: Any, where: str) -> list[Any]:
    if isinstance(output, Mapping):
        if isinstance(mask, Mapping):
            if set(mask) != set(output):
                raise ValueError(f"unpad: {where}the output and mask dicts must have the same keys, got "
                                 f"{sorted(map(str, output))} and {sorted(map(str, mask))}")
            masks = {k: mask[k] for k in output}
        else:
            masks = {k: mask for k in output}
        parts = {k: _unpad(v, masks[k], f"{where}[{k!r}]: ") for k, v in output.items()}
        return [dict(zip(parts, values)) for values in _transpose(list(parts.values()), where)]
    if isinstance(output, (tuple, list)):
        if isinstance(mask, (tuple, list)):
            if len(mask) != len(output):
                raise ValueError(f"unpad: {where}the output and mask sequences must have the same length, got "
                                 f"{len(output)} and {len(mask)}")
            masks = list(mask)
        else:
            masks = [mask] * len(output)
        parts = [_unpad(v, k, f"{where}[{j}]: ") for j, (v, k) in enumerate(zip(output, masks))]
        rebuild = (lambda values: type(output)(*values)) if hasattr(output, "_fields") else type(output)
        return [rebuild(values) for values in _transpose(parts, where)]
    return _unpad_tensor(output, mask, where)


def _transpose(parts: list[list[Any]], where: str) -> list[tuple[Any, ...]]:
    lengths = {len(p) for p in parts}
    if len(lengths) > 1:
        raise ValueError(f"unpad: {where}every entry of the output must have the same batch size N, "
                         f"got {sorted(lengths)}")
    return list(zip(*parts))


def unpad(output: Any, mask: Any) -> list[Any]:
    r"""Split a padded batch back into per-sample tensors: the inverse of :func:`pad_batch`.

    Sample ``i`` becomes ``output[i, :, :e_1, ..., :e_d]`` where ``e_k`` is the extent of its valid
    region along spatial dimension ``k`` measured from the origin (last index where ``mask[i] != 0``
    on any channel, plus 1). For a batch made by :func:`pad_batch` (and any layer that keeps the mask
    at the origin) this is the image's own size. Samples whose mask is all zero give empty tensors
    ``(C, 0, ..., 0)``. The results are views of ``output``.

    Args:
        output: a tensor ``(N, C, *S)``; or a tensor ``(N, ...)`` without spatial dimensions together with
            a mask ``(N, 1)`` or ``(N,)`` (such as the output of
            :class:`~masked_torch.nn.MaskedSpatialMean`): then every row is returned as it is, samples
            whose mask is 0 included; or a dict / tuple / list (nested too) of such tensors, as a model
            with several heads returns.
        mask: the mask of ``output``: ``(N, 1, *S)`` or ``(N, C, *S)``, float, integer or bool;
            ``(N, 1)`` or ``(N,)`` as above; ``None`` (everything valid: ``list(output)``); or, for a
            dict / tuple output, a dict with the same keys / a tuple of the same length, or one mask
            used for every entry.

    Returns:
        A list of ``N`` per-sample results: tensors ``(C, *s_i)``, or dicts / tuples of them with the
        structure of ``output``.

    Raises:
        ValueError: if the batch sizes, channel counts or spatial shapes of output and mask do not match,
            or the dict keys / tuple lengths differ.

    Example::

        >>> x, mask = pad_batch([torch.zeros(3, 5, 7), torch.zeros(3, 4, 9)], multiple=8)
        >>> [t.shape for t in unpad(x, mask)]
        [torch.Size([3, 5, 7]), torch.Size([3, 4, 9])]
        >>> out = unpad({"seg": x, "logits": x.mean((2, 3))}, {"seg": mask, "logits": mask[:, :, 0, 0]})
        >>> [(d["seg"].shape, d["logits"].shape) for d in out]
        [(torch.Size([3, 5, 7]), torch.Size([3])), (torch.Size([3, 4, 9]), torch.Size([3]))]
    """
    return _unpad(output, mask, "")


def _is_dense_target(targets: Sequence[Any], images: Sequence[Tensor]) -> bool:
    """Whether every target is a tensor ``(*s_i)`` or ``(K, *s_i)`` (same K) on its image's spatial size."""
    if not all(isinstance(t, Tensor) for t in targets):
        return False
    nd = images[0].dim() - 1
    dims = {t.dim() for t in targets}
    if len(dims) != 1 or dims.pop() not in (nd, nd + 1):
        return False
    if not all(t.shape[t.dim() - nd:] == im.shape[1:] for t, im in zip(targets, images)):
        return False
    return targets[0].dim() == nd or len({t.shape[0] for t in targets}) == 1


class PadCollate:
    r"""A ``collate_fn`` for :class:`torch.utils.data.DataLoader` that pads images with :func:`pad_batch`.

    A sample is either an image tensor ``(C, *spatial)`` or a tuple / list ``(image, field, ...)`` whose
    first element is the image. A batch of bare images gives ``(x, mask)``; a batch of tuples gives
    ``(x, mask, field_1, ...)``, each further field collated on its own:

    * dense targets, when ``target_value`` is not ``None``: if every sample's field is a tensor with its
      image's spatial size, ``(*s_i)`` or ``(K, *s_i)`` (a segmentation map), it is padded like the images
      (same ``multiple``, hence the same ``S``) with ``target_value``: ``(N, *S)`` or ``(N, K, *S)``;
    * otherwise with :func:`torch.utils.data.default_collate` (int labels become a ``LongTensor``, equal
      sized tensors are stacked, dicts are collated per key);
    * and if that fails (tensors of different sizes, e.g. boxes or unpadded segmentation maps, or
      unsupported types), the field is returned as a list of the samples' values.

    Instances hold only plain values, so they pickle (``DataLoader`` workers with ``spawn``).

    Args:
        multiple: passed to :func:`pad_batch`: pad each spatial size to a multiple of this.
        value: fill value of the padded images.
        mask_dtype: dtype of the mask (``torch.bool`` too).
        target_value: fill value of padded dense targets (e.g. ``-100``, the default ``ignore_index``
            of :func:`torch.nn.functional.cross_entropy`, or ``0`` for a background class); ``None``
            (default): never pad targets.

    Example::

        loader = DataLoader(dataset, batch_size=8, collate_fn=PadCollate(16))  # samples (image, label)
        for x, mask, labels in loader:
            logits, _ = model(x, mask)
    """

    def __init__(
        self,
        multiple: _Multiple = 1,
        value: float = 0.0,
        mask_dtype: torch.dtype = torch.float32,
        target_value: Optional[float] = None,
    ) -> None:
        if isinstance(multiple, Sequence):
            multiple = tuple(multiple)
        _multiples(multiple, len(multiple) if isinstance(multiple, tuple) else 1)  # fail early on a bad value
        if not isinstance(mask_dtype, torch.dtype):
            raise ValueError(f"PadCollate: mask_dtype must be a torch.dtype, got {mask_dtype!r}")
        self.multiple = multiple
        self.value = value
        self.mask_dtype = mask_dtype
        self.target_value = target_value

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(multiple={self.multiple!r}, value={self.value!r}, "
                f"mask_dtype={self.mask_dtype}, target_value={self.target_value!r})")

    def _pad(self, tensors: Sequence[Tensor], value: float) -> tuple[Tensor, Tensor]:
        return pad_batch(tensors, self.multiple, value=value, mask_dtype=self.mask_dtype)

    def __call__(self, batch: Sequence[Any]) -> tuple[Any, ...]:
        """Collate a list of samples: ``(x, mask)`` or ``(x, mask, field_1, ...)``."""
        if len(batch) == 0:
            raise ValueError("PadCollate: got an empty batch")
        if all(isinstance(s, Tensor) for s in batch):
            return self._pad(batch, self.value)
        if not all(isinstance(s, (tuple, list)) and len(s) > 0 and isinstance(s[0], Tensor) for s in batch):
            raise ValueError(f"PadCollate: every sample must be an image tensor (C, *spatial) or a tuple "
                             f"(image, ...) starting with one, got {[type(s).__name__ for s in batch]}")
        lengths = {len(s) for s in batch}
        if len(lengths) != 1:
            raise ValueError(f"PadCollate: every sample must have the same number of fields, "
                             f"got {sorted(lengths)}")
        images = [s[0] for s in batch]
        x, mask = self._pad(images, self.value)
        fields = []
        for j in range(1, len(batch[0])):
            values = [s[j] for s in batch]
            if self.target_value is not None and _is_dense_target(values, images):
                nd = images[0].dim() - 1
                if values[0].dim() == nd:  # (*s_i): pad as (1, *s_i), then drop the channel
                    fields.append(self._pad([v.unsqueeze(0) for v in values], self.target_value)[0].squeeze(1))
                else:
                    fields.append(self._pad(values, self.target_value)[0])
                continue
            try:
                fields.append(default_collate(values))
            except (RuntimeError, TypeError):
                fields.append(values)
        return (x, mask, *fields)


#: The default :class:`PadCollate`: no rounding, zero padding, float32 mask, targets never padded.
collate = PadCollate()
