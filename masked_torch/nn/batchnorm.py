"""Batch norm over the valid positions only, 1d/2d/3d from one base."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import functional as MF
from .base import MaskedModule

__all__ = ["MaskedBatchNorm1d", "MaskedBatchNorm2d", "MaskedBatchNorm3d"]


class _MaskedBatchNorm(MaskedModule):
    """Batch norm whose statistics run over the valid positions only.

    Same constructor, parameters and buffers as ``nn.BatchNormNd`` (a trained state_dict loads with
    ``strict=True``). In training, per-channel mean and biased variance over the positions where the
    mask is non-zero normalise the input and update the running stats exactly as ``nn.BatchNormNd``
    does (momentum, or a cumulative average when ``momentum=None``; unbiased running variance). In eval
    the running stats normalise. The output is 0 under the mask, the mask passes through unchanged.
    ``mask=None`` is ``nn.BatchNormNd``.
    """

    _nd: int
    input_zeroed = False  # the caller promises the input is 0 under the mask (set inside converted models)

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if mask is None:
            return super().forward(input), None
        if input.dim() != self._nd + 2:  # the mask itself is checked by masked_batch_norm
            raise ValueError(f"{type(self).__name__}: a mask needs a batched input of {self._nd + 2} dimensions "
                             f"(N, C, *spatial), got input of shape {tuple(input.shape)} and mask of shape "
                             f"{tuple(mask.shape)}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        running = self.training and self.track_running_stats
        return MF.masked_batch_norm(
            input, mask,
            self.running_mean if (running or not use_batch_stats) else None,
            self.running_var if (running or not use_batch_stats) else None,
            self.weight, self.bias, use_batch_stats, factor, self.eps, zeroed=self.input_zeroed,
            name=type(self).__name__,
        )


class MaskedBatchNorm1d(_MaskedBatchNorm, nn.BatchNorm1d):
    __doc__ = _MaskedBatchNorm.__doc__
    _nd = 1


class MaskedBatchNorm2d(_MaskedBatchNorm, nn.BatchNorm2d):
    __doc__ = _MaskedBatchNorm.__doc__
    _nd = 2


class MaskedBatchNorm3d(_MaskedBatchNorm, nn.BatchNorm3d):
    __doc__ = _MaskedBatchNorm.__doc__
    _nd = 3
