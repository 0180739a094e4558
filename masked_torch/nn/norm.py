"""Group, instance and layer norm whose statistics run over the valid positions of each sample."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import functional as MF
from .base import MaskedModule

__all__ = ["MaskedGroupNorm", "MaskedInstanceNorm1d", "MaskedInstanceNorm2d", "MaskedInstanceNorm3d",
           "MaskedLayerNorm"]


class MaskedGroupNorm(MaskedModule, nn.GroupNorm):
    """``nn.GroupNorm`` whose per-sample, per-group statistics run over the valid positions only (see
    :func:`masked_torch.functional.masked_group_norm`); the output is 0 under the mask, the mask passes on.
    Same constructor, parameters and state_dict as ``nn.GroupNorm``."""

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        return MF.masked_group_norm(input, mask, self.num_groups, self.weight, self.bias, self.eps,
                                    name=type(self).__name__)


class _MaskedInstanceNormNd(MaskedModule):
    """``nn.InstanceNormNd`` whose per-sample, per-channel statistics run over the valid positions only;
    the output is 0 under the mask. ``track_running_stats=True`` is refused (use batch norm for running
    statistics)."""

    _nd: int

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.track_running_stats:
            raise ValueError(f"{type(self).__name__}: track_running_stats=True is not supported")

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        MF.check_input(input, mask, self._nd, type(self).__name__)
        return MF.masked_group_norm(input, mask, input.shape[1], self.weight, self.bias, self.eps,
                                    name=type(self).__name__)


class MaskedInstanceNorm1d(_MaskedInstanceNormNd, nn.InstanceNorm1d):
    __doc__ = _MaskedInstanceNormNd.__doc__
    _nd = 1


class MaskedInstanceNorm2d(_MaskedInstanceNormNd, nn.InstanceNorm2d):
    __doc__ = _MaskedInstanceNormNd.__doc__
    _nd = 2


class MaskedInstanceNorm3d(_MaskedInstanceNormNd, nn.InstanceNorm3d):
    __doc__ = _MaskedInstanceNormNd.__doc__
    _nd = 3


class MaskedLayerNorm(MaskedModule, nn.LayerNorm):
    """``nn.LayerNorm`` over the last dims; the mask broadcasts against the input (same rank). Over
    channels, channels-last (the mask has size 1 there), it is ``nn.LayerNorm`` at every position; where the
    mask varies over the normalised dims, the statistics run over the valid entries. The output is 0 under
    the mask, the mask passes on."""

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        return MF.masked_layer_norm(input, mask, self.normalized_shape, self.weight, self.bias, self.eps,
                                    name=type(self).__name__)
