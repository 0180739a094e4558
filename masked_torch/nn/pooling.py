"""Global average over the valid positions."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import functional as MF
from .base import MaskedModule

__all__ = ["MaskedSpatialMean"]


class MaskedSpatialMean(MaskedModule, nn.Module):
    """Mean over every spatial dimension, over the valid positions: ``(N, C, *S) -> (N, C)``.

    Returns the mask ``(N, 1)``: 1 for samples with any valid position. A sample whose mask is all zero
    gives exact zeros.
    """

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if input.dim() < 3:
            raise ValueError(f"MaskedSpatialMean: expected input (N, C, *spatial), got {tuple(input.shape)}")
        return MF.masked_spatial_mean(input, mask, name=type(self).__name__)
