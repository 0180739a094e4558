"""Partial and masked convolutions, 1d/2d/3d, from one base each (like ``torch.nn``'s ``_ConvNd``).

Each layer *is* an ``nn.ConvNd`` (same constructor, parameters, initialisation and state_dict), with a
``forward(input, mask=None)`` that returns ``(output, out_mask)``. With ``mask=None`` the output is the
plain ``nn.ConvNd`` output, bit for bit.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch.nn.modules.conv import _LazyConvXdMixin
from torch.nn.parameter import UninitializedParameter

from .. import functional as MF
from .base import MaskedModule

__all__ = [
    "PartialConv1d", "PartialConv2d", "PartialConv3d",
    "MaskedConv1d", "MaskedConv2d", "MaskedConv3d",
    "LazyPartialConv1d", "LazyPartialConv2d", "LazyPartialConv3d",
    "LazyMaskedConv1d", "LazyMaskedConv2d", "LazyMaskedConv3d",
    "MaskedConvTranspose1d", "MaskedConvTranspose2d", "MaskedConvTranspose3d",
]


def _check_padding_mode(conv: nn.Module) -> None:
    if conv.padding_mode != "zeros":
        raise ValueError(f"{type(conv).__name__}: only padding_mode='zeros' is supported (the others read the "
                         f"padded canvas's edge), got {conv.padding_mode!r}")


class _MaskedConvBase(MaskedModule):
    """Shared options and checks for both masked convolution rules (mixed into an ``nn.ConvNd`` subclass).

    * ``anchor`` -- where the output mask is read: ``"centre"`` (the window centre, the default) or
      ``"end"`` (valid exactly where the plain layer on an image at the canvas origin alone has an output;
      the same as the centre for centred windows). See :func:`masked_torch.functional.window_anchor`.
    * ``input_zeroed`` -- the caller promises that the input is exactly 0 under the mask (every masked
      layer's output is): the select pass over the input is skipped. :func:`convert` sets it inside
      converted models, whose input is zeroed once.
    """

    def _set_options(self, anchor: str, input_zeroed: bool) -> None:
        if anchor not in ("centre", "end"):
            raise ValueError(f"{type(self).__name__}: anchor must be 'centre' or 'end', got {anchor!r}")
        self.anchor = anchor
        self.input_zeroed = bool(input_zeroed)
        _check_padding_mode(self)

    def _options_repr(self) -> str:
        out = f", anchor={self.anchor!r}" if self.anchor != "centre" else ""
        return out + (", input_zeroed=True" if self.input_zeroed else "")

    def _masked_args(self):
        return self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups


class _PartialConvNd(_MaskedConvBase):
    """Partial convolution (Liu et al. 2018): see :func:`masked_torch.functional.partial_conv`.

    Keyword-only options on top of the ``nn.ConvNd`` arguments:

    * ``multichannel`` -- the mask has C channels with per-channel validity; each output channel counts
      the valid inputs of its own group. Without it, a C-channel mask counts a position valid where any
      channel is.
    * ``update_mask`` -- ``True`` (the paper's rule): the output mask is 1 wherever the window saw a valid
      input, so holes shrink layer by layer. ``False`` (padding use): the output mask is the input mask at
      the window centre, so the valid region stays where the image is.
    """

    def __init__(self, *args, multichannel: bool = False, update_mask: bool = True, anchor: str = "centre",
                 input_zeroed: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.multichannel = bool(multichannel)
        self.update_mask = bool(update_mask)
        self._set_options(anchor, input_zeroed)
        if not self.update_mask:
            # the window centre must be defined
            MF.resolve_padding(self.padding, self.kernel_size, self.dilation, type(self).__name__)

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if mask is None:
            return super().forward(input), None
        return MF.partial_conv(
            input, mask, *self._masked_args(),
            multichannel=self.multichannel, update_mask=self.update_mask, anchor=self.anchor,
            zeroed=self.input_zeroed, name=type(self).__name__,
        )

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, multichannel={self.multichannel}, update_mask={self.update_mask}"
                f"{self._options_repr()}")


class _MaskedConvNd(_MaskedConvBase):
    """Masked convolution: see :func:`masked_torch.functional.masked_conv`.

    ``y = (conv(X, W) + b) * m'`` with ``m'`` the mask at each window's centre, mixed over input channels
    with the weights ``sum_kernel |W|`` for a C-channel mask. A drop-in for a trained ``nn.ConvNd``.
    """

    def __init__(self, *args, anchor: str = "centre", input_zeroed: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._set_options(anchor, input_zeroed)
        MF.resolve_padding(self.padding, self.kernel_size, self.dilation, type(self).__name__)

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if mask is None:
            return super().forward(input), None
        return MF.masked_conv(input, mask, *self._masked_args(), anchor=self.anchor, zeroed=self.input_zeroed,
                              name=type(self).__name__)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._options_repr()


class PartialConv1d(_PartialConvNd, nn.Conv1d):
    __doc__ = _PartialConvNd.__doc__


class PartialConv2d(_PartialConvNd, nn.Conv2d):
    __doc__ = _PartialConvNd.__doc__


class PartialConv3d(_PartialConvNd, nn.Conv3d):
    __doc__ = _PartialConvNd.__doc__


class MaskedConv1d(_MaskedConvNd, nn.Conv1d):
    __doc__ = _MaskedConvNd.__doc__


class MaskedConv2d(_MaskedConvNd, nn.Conv2d):
    __doc__ = _MaskedConvNd.__doc__


class MaskedConv3d(_MaskedConvNd, nn.Conv3d):
    __doc__ = _MaskedConvNd.__doc__


class _MaskedConvTransposeNd(MaskedModule):
    """Transposed convolution of the input taken as 0 under the mask: see
    :func:`masked_torch.functional.masked_conv_transpose`. Same constructor, parameters and state_dict as
    ``nn.ConvTransposeNd``; ``forward(input, mask=None)``; ``output_size`` is not taken (it sizes the
    padded canvas, not each image). Used for both ``"masked"`` and ``"partial"`` conversions."""

    def __init__(self, *args, input_zeroed: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.input_zeroed = bool(input_zeroed)
        _check_padding_mode(self)

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        return MF.masked_conv_transpose(
            input, mask, self.weight, self.bias, self.stride, self.padding, self.output_padding, self.groups,
            self.dilation, zeroed=self.input_zeroed, name=type(self).__name__,
        )


class MaskedConvTranspose1d(_MaskedConvTransposeNd, nn.ConvTranspose1d):
    __doc__ = _MaskedConvTransposeNd.__doc__


class MaskedConvTranspose2d(_MaskedConvTransposeNd, nn.ConvTranspose2d):
    __doc__ = _MaskedConvTransposeNd.__doc__


class MaskedConvTranspose3d(_MaskedConvTransposeNd, nn.ConvTranspose3d):
    __doc__ = _MaskedConvTransposeNd.__doc__


class _LazyMaskedConvMixin(_LazyConvXdMixin):
    """``in_channels`` inferred from the first input, as :class:`torch.nn.LazyConv2d` does.

    After the first call the module becomes its eager class (``cls_to_become``).
    """

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, **options) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(0, 0, kernel_size, stride, padding, dilation, groups, False, padding_mode,
                         **factory_kwargs, **options)
        self.weight = UninitializedParameter(**factory_kwargs)
        self.out_channels = out_channels
        if bias:
            self.bias = UninitializedParameter(**factory_kwargs)

    def _get_num_spatial_dims(self) -> int:
        return len(self.kernel_size)


def _lazy(eager: type) -> type:
    name = f"Lazy{eager.__name__}"
    doc = f"A :class:`{eager.__name__}` with lazy initialisation of ``in_channels`` (from ``input.size(1)``)."
    return type(name, (_LazyMaskedConvMixin, eager), {"cls_to_become": eager, "__doc__": doc,
                                                       "__module__": __name__})


LazyPartialConv1d = _lazy(PartialConv1d)
LazyPartialConv2d = _lazy(PartialConv2d)
LazyPartialConv3d = _lazy(PartialConv3d)
LazyMaskedConv1d = _lazy(MaskedConv1d)
LazyMaskedConv2d = _lazy(MaskedConv2d)
LazyMaskedConv3d = _lazy(MaskedConv3d)
