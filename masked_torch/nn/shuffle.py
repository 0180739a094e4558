"""Space-to-depth of input and mask."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import functional as MF
from .base import MaskedModule

__all__ = ["MaskedUnshuffle1d", "MaskedUnshuffle2d", "MaskedUnshuffle3d"]


class _MaskedUnshuffleNd(MaskedModule, nn.Module):
    """Space-to-depth by ``downscale_factor`` of the input and of the mask.

    ``(N, C, *S) -> (N, C * r**d, *S / r)``; in 2d the input goes exactly as in ``nn.PixelUnshuffle``.
    The mask keeps each sub-position's validity: a 1-channel mask becomes a ``C * r**d``-channel mask.
    """

    _nd: int
    input_zeroed = False  # the caller promises the input is 0 under the mask (set inside converted models)

    def __init__(self, downscale_factor: int) -> None:
        super().__init__()
        if int(downscale_factor) < 1:
            raise ValueError(f"{type(self).__name__}: downscale_factor must be >= 1, got {downscale_factor}")
        self.downscale_factor = int(downscale_factor)

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        MF.check_input(input, mask, self._nd, type(self).__name__)
        return MF.masked_unshuffle(input, mask, self.downscale_factor, zeroed=self.input_zeroed,
                                   name=type(self).__name__)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"


class MaskedUnshuffle1d(_MaskedUnshuffleNd):
    __doc__ = _MaskedUnshuffleNd.__doc__
    _nd = 1


class MaskedUnshuffle2d(_MaskedUnshuffleNd):
    __doc__ = _MaskedUnshuffleNd.__doc__
    _nd = 2


class MaskedUnshuffle3d(_MaskedUnshuffleNd):
    __doc__ = _MaskedUnshuffleNd.__doc__
    _nd = 3
