"""Which plain modules act on each position alone, and which of those map 0 to 0."""
from __future__ import annotations

from torch import nn

__all__ = ["ELEMENTWISE", "ZERO_PRESERVING", "is_elementwise", "preserves_zero"]

#: Modules that act on each position on its own; ``convert`` wraps them in :class:`Masked`.
ELEMENTWISE: tuple[type, ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)

#: Elementwise modules with ``f(0) == 0`` (for every setting): an input that is 0 under the mask gives an
#: output that is 0 there, so no pass is needed to keep it so.
ZERO_PRESERVING: tuple[type, ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d,
)


def is_elementwise(module: nn.Module) -> bool:
    return isinstance(module, ELEMENTWISE)


def preserves_zero(module: nn.Module) -> bool:
    if isinstance(module, nn.Hardtanh):  # ReLU6 too: 0 lies in [min_val, max_val] unless it does not
        return module.min_val <= 0 <= module.max_val
    return isinstance(module, ZERO_PRESERVING)
