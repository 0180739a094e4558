"""Pooling over the valid positions: windowed max/average pools, adaptive pools (global, or per image), spatial mean."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import functional as MF
from .base import MaskedModule

__all__ = [
    "MaskedSpatialMean",
    "MaskedMaxPool1d", "MaskedMaxPool2d", "MaskedMaxPool3d",
    "MaskedAvgPool1d", "MaskedAvgPool2d", "MaskedAvgPool3d",
    "MaskedAdaptiveAvgPool1d", "MaskedAdaptiveAvgPool2d", "MaskedAdaptiveAvgPool3d",
    "MaskedAdaptiveMaxPool1d", "MaskedAdaptiveMaxPool2d", "MaskedAdaptiveMaxPool3d",
]


class MaskedSpatialMean(MaskedModule, nn.Module):
    """Mean over every spatial dimension, over the valid positions: ``(N, C, *S) -> (N, C)``.

    Returns the mask ``(N, 1)``: 1 for samples with any valid position. A sample whose mask is all zero
    gives exact zeros.
    """

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if input.dim() < 3:
            raise ValueError(f"MaskedSpatialMean: expected input (N, C, *spatial), got {tuple(input.shape)}")
        return MF.masked_spatial_mean(input, mask, name=type(self).__name__)


class _Zeroed:
    """``input_zeroed``: the caller promises the input is exactly 0 under the mask (set inside converted
    models)."""

    input_zeroed = False


class _MaskedMaxPoolNd(_Zeroed, MaskedModule):
    """Max pooling that reads masked positions as ``-inf``, as the plain layer reads its padding: see
    :func:`masked_torch.functional.masked_max_pool`. Same constructor as ``nn.MaxPoolNd``;
    ``return_indices=True`` is refused (indices into the padded canvas differ from each image's)."""

    _nd: int

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.return_indices:
            raise ValueError(f"{type(self).__name__}: return_indices=True is not supported (indices into the "
                             f"padded canvas are not each image's)")

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        return MF.masked_max_pool(input, mask, self.kernel_size, self.stride, self.padding, self.dilation,
                                  self.ceil_mode, nd=self._nd, name=type(self).__name__)


class _MaskedAvgPoolNd(_Zeroed, MaskedModule):
    """Average pooling whose divisor counts what the plain layer counts on each image alone: see
    :func:`masked_torch.functional.masked_avg_pool`. Same constructor as ``nn.AvgPoolNd``."""

    _nd: int

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        return MF.masked_avg_pool(
            input, mask, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
            getattr(self, "divisor_override", None), nd=self._nd, zeroed=self.input_zeroed,
            name=type(self).__name__,
        )


class _MaskedAdaptivePoolNd(_Zeroed, MaskedModule):
    """Adaptive pooling per image: each image gets exactly what the plain layer gives it alone (see
    :func:`masked_torch.functional.masked_adaptive_pool`). Global pooling (``output_size`` 1) pools the valid
    positions of any mask; any other ``output_size`` (pyramid pooling's 2, 3, 6 bins, ``(7, 7)``) pools each
    sample's valid region, which must be a box at the canvas origin (refused when it runs otherwise). Output
    mask ``(N, 1, 1, ...)`` (``(N, C, 1, ...)`` for a C-channel mask): 1 for samples (channels) with a valid
    position; a ``None`` dim keeps the mask's extent. ``return_indices=True`` is refused."""

    _nd: int
    _mode: str

    def __init__(self, output_size, *args, **kwargs) -> None:
        super().__init__(output_size, *args, **kwargs)
        MF.adaptive_sizes(output_size, self._nd, type(self).__name__)
        if getattr(self, "return_indices", False):
            raise ValueError(f"{type(self).__name__}: return_indices=True is not supported (indices into the "
                             f"padded canvas are not each image's)")

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        return MF.masked_adaptive_pool(input, mask, self.output_size, self._mode, nd=self._nd,
                                       zeroed=self.input_zeroed, name=type(self).__name__)


def _classes(base: type, plain: dict, extra: dict) -> list[type]:
    out = []
    for nd, cls in plain.items():
        name = f"Masked{cls.__name__}"
        out.append(type(name, (base, cls), {"_nd": nd, "__doc__": base.__doc__, "__module__": __name__, **extra}))
    return out


MaskedMaxPool1d, MaskedMaxPool2d, MaskedMaxPool3d = _classes(
    _MaskedMaxPoolNd, {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}, {})
MaskedAvgPool1d, MaskedAvgPool2d, MaskedAvgPool3d = _classes(
    _MaskedAvgPoolNd, {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}, {})
MaskedAdaptiveAvgPool1d, MaskedAdaptiveAvgPool2d, MaskedAdaptiveAvgPool3d = _classes(
    _MaskedAdaptivePoolNd, {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d},
    {"_mode": "mean"})
MaskedAdaptiveMaxPool1d, MaskedAdaptiveMaxPool2d, MaskedAdaptiveMaxPool3d = _classes(
    _MaskedAdaptivePoolNd, {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d},
    {"_mode": "amax"})
