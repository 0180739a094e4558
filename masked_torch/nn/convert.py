"""Masked copies of trained plain models: ``convert(model, kind)``."""
from __future__ import annotations

import copy

from torch import nn

from .base import MaskedModule
from .container import MaskedSequential
from .elementwise import ELEMENTWISE
from .registry import convert_module, has_rule

__all__ = ["convert", "ELEMENTWISE"]

_KINDS = {"masked": "masked", "mconv": "masked", "partial": "partial", "pconv": "partial",
          "plain": "plain", "conv": "plain"}


def _sequential_of_layers(module: nn.Module) -> bool:
    """An ``nn.Sequential`` (nested too) of layers that each have a rule of their own."""
    return type(module) is nn.Sequential and all(
        _sequential_of_layers(child) or has_rule(child) for child in module.children())


def convert(model: nn.Module, kind: str = "masked", **options) -> nn.Module:
    """A masked copy of a trained plain model; ``model`` itself is left as it is.

    ``kind``: ``"masked"`` (alias ``"mconv"``): every ``nn.ConvNd`` becomes :class:`MaskedConvNd`;
    ``"partial"`` (``"pconv"``): :class:`PartialConvNd`, with ``options`` passed on (``update_mask=False`` for
    padding use, ``multichannel=True``); ``"plain"`` (``"conv"``): every layer runs as it is on the padded batch,
    wrapped in :class:`Unmasked` so that the mask rides along (the baseline). Convolutions read their output
    mask at the window's end (``anchor="end"``): the same as the centre for centred windows, and for others
    exactly the outputs the plain layer gives each image alone.

    Any ``nn.Module`` whose forward ``torch.fx`` can trace is converted: layers with a masked counterpart
    (convolutions and transposed convolutions, batch/group/instance/layer norm, max/average/global pooling,
    upsampling, pixel (un)shuffle, linear, flatten, elementwise activations and dropout) are swapped for it
    under the same name, and every function or method applied to a masked value (add, mul, cat, mean,
    permute, flatten, interpolate, ...) gets its mask rule. The result's ``forward(input, mask=None,
    **other_inputs)`` returns ``(output, out_mask)``, ``out_mask`` in the structure of ``output``; its
    ``state_dict`` keys are the plain model's. An ``nn.Sequential`` (nested too) of such layers becomes a
    :class:`MaskedSequential` with the same child names; a single layer, its masked layer.

    Raises ``TypeError`` for what has no rule or cannot be traced, ``ValueError`` for what depends on the
    padded canvas rather than each image (``AdaptiveAvgPool2d((7, 7))``, ``interpolate(size=...)``,
    ``align_corners=True``, reading a spatial size, ``padding_mode='reflect'``, ...), each naming the node, op
    and module path. Weights, buffers, training mode, dtype, device and frozen parameters carry over.
    """
    if kind not in _KINDS:
        raise ValueError(f"convert: kind must be one of {sorted(_KINDS)}, got {kind!r}")
    kind = _KINDS[kind]
    if options and kind != "partial":
        raise ValueError(f"convert: options {sorted(options)} only apply to kind='partial'")
    if isinstance(model, MaskedModule):
        return copy.deepcopy(model)
    if has_rule(model):
        return convert_module(model, kind, options)
    if _sequential_of_layers(model):
        out = _convert_sequential(model, kind, options, "")
        if kind != "plain":
            # every layer after the first reads a masked layer's output, exactly 0 under its mask
            leaves = [m for m in out.modules() if not isinstance(m, MaskedSequential)]
            for layer in leaves[1:]:
                if hasattr(layer, "input_zeroed"):
                    layer.input_zeroed = True
        return out
    from .graph import convert_graph

    return convert_graph(model, kind, options)


def _convert_sequential(module: nn.Sequential, kind: str, options: dict, path: str) -> MaskedSequential:
    out = MaskedSequential()
    for name, child in module.named_children():
        where = f"{path}.{name}" if path else name
        if type(child) is nn.Sequential:
            new = _convert_sequential(child, kind, options, where)
        else:
            new = convert_module(child, kind, options, where)
        out.add_module(name, new)
    return out.train(module.training)
