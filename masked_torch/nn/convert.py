"""Masked copies of trained plain models."""
from __future__ import annotations

import copy

from torch import nn

from .base import MaskedModule
from .batchnorm import MaskedBatchNorm1d, MaskedBatchNorm2d, MaskedBatchNorm3d
from .container import Masked, MaskedSequential
from .conv import MaskedConv1d, MaskedConv2d, MaskedConv3d, PartialConv1d, PartialConv2d, PartialConv3d
from .shuffle import MaskedUnshuffle2d

__all__ = ["convert", "ELEMENTWISE"]

_CONVS = {
    "masked": {nn.Conv1d: MaskedConv1d, nn.Conv2d: MaskedConv2d, nn.Conv3d: MaskedConv3d},
    "partial": {nn.Conv1d: PartialConv1d, nn.Conv2d: PartialConv2d, nn.Conv3d: PartialConv3d},
}
_NORMS = {nn.BatchNorm1d: MaskedBatchNorm1d, nn.BatchNorm2d: MaskedBatchNorm2d, nn.BatchNorm3d: MaskedBatchNorm3d}
_KINDS = {"masked": "masked", "mconv": "masked", "partial": "partial", "pconv": "partial",
          "plain": "plain", "conv": "plain"}

#: Modules that act on each position on its own; ``convert`` wraps them in :class:`Masked`.
ELEMENTWISE: tuple[type, ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)


def _clone_conv(conv: nn.Module, cls: type, **options) -> nn.Module:
    new = cls(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype, **options,
    )
    return _carry_over(conv, new)


def _carry_over(old: nn.Module, new: nn.Module) -> nn.Module:
    """Weights, buffers, training mode and which parameters are frozen."""
    new.load_state_dict(old.state_dict(), strict=True)
    for name, param in old.named_parameters(recurse=False):
        getattr(new, name).requires_grad_(param.requires_grad)
    return new.train(old.training)


def _clone_norm(norm: nn.Module, cls: type) -> nn.Module:
    like = next((t for t in (norm.weight, norm.running_mean) if t is not None), None)
    factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
    new = cls(norm.num_features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
              track_running_stats=norm.track_running_stats, **factory)
    return _carry_over(norm, new)


def convert(model: nn.Module, kind: str = "masked", **options) -> nn.Module:
    """A masked copy of a trained plain model; ``model`` itself is left as it is.

    ``kind``: ``"masked"`` (alias ``"mconv"``): ``nn.ConvNd`` -> :class:`MaskedConvNd`;
    ``"partial"`` (``"pconv"``): ``nn.ConvNd`` -> :class:`PartialConvNd`, with ``options`` passed on
    (``update_mask=False`` for padding use, ``multichannel=True``); ``"plain"`` (``"conv"``): convolutions
    and norms stay plain and run unmasked, wrapped in :class:`Masked` so the mask rides alongside (the
    baseline). In every kind ``nn.BatchNormNd`` -> :class:`MaskedBatchNormNd` (plain in ``"plain"``),
    ``nn.PixelUnshuffle`` -> :class:`MaskedUnshuffle2d`, elementwise modules (:data:`ELEMENTWISE`) ->
    ``Masked(module)``, ``nn.Sequential`` (nested too) -> :class:`MaskedSequential` with the same child
    names; weights are carried over. Anything else raises ``TypeError`` naming the module.
    """
    if kind not in _KINDS:
        raise ValueError(f"convert: kind must be one of {sorted(_KINDS)}, got {kind!r}")
    kind = _KINDS[kind]
    if options and kind != "partial":
        raise ValueError(f"convert: options {sorted(options)} only apply to kind='partial'")
    return _convert(model, kind, options, path="")


def _convert(module: nn.Module, kind: str, options: dict, path: str) -> nn.Module:
    where = f"{path!r} " if path else ""
    if isinstance(module, MaskedModule):
        return copy.deepcopy(module)
    cls = type(module)
    if cls is nn.Sequential:
        children = {name: _convert(child, kind, options, f"{path}.{name}" if path else name)
                    for name, child in module.named_children()}
        out = MaskedSequential()
        for name, child in children.items():
            out.add_module(name, child)
        return out.train(module.training)
    if cls in _CONVS["masked"]:
        if kind == "plain":
            return Masked(copy.deepcopy(module))
        return _clone_conv(module, _CONVS[kind][cls], **options)
    if cls in _NORMS:
        if kind == "plain":
            return Masked(copy.deepcopy(module))
        return _clone_norm(module, _NORMS[cls])
    if cls is nn.PixelUnshuffle:
        return MaskedUnshuffle2d(module.downscale_factor)
    if cls in ELEMENTWISE:
        return Masked(copy.deepcopy(module))
    raise TypeError(
        f"convert: cannot convert layer {where}({cls.__name__}): supported are nn.Sequential, nn.Conv1d/2d/3d, "
        f"nn.BatchNorm1d/2d/3d, nn.PixelUnshuffle, elementwise activations and dropout"
    )
