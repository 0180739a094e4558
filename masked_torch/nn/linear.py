"""Linear layers and flattening, for heads after global pooling and channels-last blocks."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import functional as MF
from .base import MaskedModule

__all__ = ["MaskedLinear", "MaskedFlatten"]


class MaskedLinear(MaskedModule, nn.Linear):
    """``nn.Linear`` over the last dim, whose mask must have size 1 there (pooled features, or channels-last
    features of each position); the output is 0 under the mask. Same parameters as ``nn.Linear``."""

    input_zeroed = False

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if mask is not None and not self.input_zeroed:
            MF.check_broadcast_mask(input, mask, type(self).__name__)
            input = MF.zero_masked(input, mask)
        return MF.masked_linear(input, mask, self.weight, self.bias, name=type(self).__name__)


class MaskedFlatten(MaskedModule, nn.Flatten):
    """``nn.Flatten`` of input and mask (the mask is flattened with its tensor; a per-sample mask
    ``(N, 1, 1, 1)`` becomes ``(N, 1)``)."""

    input_zeroed = False

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if mask is None:
            return super().forward(input), None
        MF.check_broadcast_mask(input, mask, type(self).__name__)
        out = super().forward(input if self.input_zeroed else MF.zero_masked(input, mask))
        return out, MF.reshape_mask(mask, input.shape, out.shape, name=type(self).__name__)
