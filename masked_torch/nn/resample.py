"""Upsampling of input and mask: interpolation by a scale factor, and depth-to-space."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import functional as MF
from .base import MaskedModule

__all__ = ["MaskedUpsample", "MaskedPixelShuffle"]


class MaskedUpsample(MaskedModule, nn.Upsample):
    """``nn.Upsample`` by ``scale_factor`` that gives each image of a padded batch what it gets alone: see
    :func:`masked_torch.functional.masked_interpolate` (nearest modes read the same pixel; linear modes are
    normalised so that the image's edge is clamped as on the image alone; ``align_corners=True`` and the cubic and
    area modes interpolate each image's region alone). ``size=`` depends on the padded canvas and is refused at
    construction."""

    input_zeroed = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        MF.check_interpolate(self.size, self.scale_factor, self.mode, self.align_corners,
                             self.recompute_scale_factor, name=type(self).__name__)

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if mask is None:
            return super().forward(input), None
        return MF.masked_interpolate(input, mask, self.scale_factor, self.mode, self.align_corners,
                                     self.recompute_scale_factor, zeroed=self.input_zeroed, name=type(self).__name__)


class MaskedPixelShuffle(MaskedModule, nn.PixelShuffle):
    """``nn.PixelShuffle`` of input and mask (see :func:`masked_torch.functional.masked_pixel_shuffle`)."""

    input_zeroed = False

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        return MF.masked_pixel_shuffle(input, mask, self.upscale_factor, zeroed=self.input_zeroed,
                                       name=type(self).__name__)
