"""Masked copies of trained plain models: ``convert(model, kind, inplace=False)``."""
from __future__ import annotations

import inspect
from typing import Optional

from torch import Tensor, nn

from .. import functional as MF
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


class MaskValueCheck:
    """The forward pre-hook ``convert`` registers on what it returns: the mask (the second input) must be 0/1
    or bool, read as validity (:func:`masked_torch.functional.check_binary_mask`: one pass over the mask,
    skipped under ``torch.compile``/``torch.export``). ``param`` is the mask's keyword name."""

    def __init__(self, param: str = "mask") -> None:
        self.param = param

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = args[1] if len(args) > 1 else kwargs.get(self.param)
        MF.check_binary_mask(mask, module._get_name())


def _guard_mask_values(out: nn.Module) -> nn.Module:
    """One :class:`MaskValueCheck` on ``out`` (the model a user calls), none on its submodules (copies of
    modules converted before)."""
    for module in out.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, MaskValueCheck):
                del module._forward_pre_hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
    params = list(inspect.signature(out.forward).parameters)
    out.register_forward_pre_hook(MaskValueCheck(params[1] if len(params) > 1 else "mask"), with_kwargs=True)
    return out


def _refuse_masked_inside(model: nn.Module) -> None:
    """A plain model whose forward calls a masked module itself (``out, _ = self.block(x)``) handles the
    ``(output, mask)`` pair in its own code, which no mask rule follows: refused, naming the module."""
    for path, module in model.named_modules():
        if isinstance(module, MaskedModule):
            raise TypeError(
                f"convert: {path!r} ({module._get_name()}) is a masked module inside the plain model "
                f"{type(model).__name__}, whose forward handles the (output, mask) it returns in its own code; "
                f"build {type(model).__name__} with the plain layer there and convert that (converted.state_dict() "
                f"loads into it)")


_CAPTURES = ("auto", "fx", "export")


def convert(model: nn.Module, kind: str = "masked", *, inplace: bool = False, capture: str = "auto",
            example: Optional[Tensor] = None, check: bool = True, **options) -> nn.Module:
    """A masked model computed from a trained plain model; ``model``'s module tree is left as it is.

    **The result is a copy** (``inplace=False``, the default): it holds new ``Parameter`` and buffer tensors
    with the plain model's values, so ``masked.conv1.weight is model.conv1.weight`` is ``False``. An optimizer
    built on ``model.parameters()`` before converting does not train the converted model: build it on
    ``masked.parameters()``, or convert with ``inplace=True``. To bring trained weights back,
    ``model.load_state_dict(masked.state_dict())`` (the keys are the same; ``strict`` holds both ways).

    ``inplace=True``: the result holds **the plain model's own** ``Parameter`` and buffer objects under the
    same names (``masked.conv1.weight is model.conv1.weight``), so an optimizer built on ``model.parameters()``
    before converting trains the converted model, and either model sees every update of the other (optimizer
    steps, ``load_state_dict``, batch norm's running statistics updated in ``train()``). Unlike
    ``torch.ao.quantization.convert(inplace=True)``, ``model`` itself is not modified: its modules, its
    ``forward`` and its ``training`` flag stay as they are (``model(x)`` still runs the plain computation, with
    the shared weights); only the module objects are new, so ``train()``/``eval()``, hooks and attributes
    other than parameters and buffers are each model's own. Moving or casting one of the two afterwards
    (``.to()``, ``.half()``, ``.cuda()``) keeps the parameters shared (PyTorch changes ``param.data`` in
    place) but gives the moved model new buffer tensors, which ends the sharing of running statistics: move
    ``model`` first, then convert. ``copy.deepcopy(masked)`` is an independent copy;
    ``copy.deepcopy((model, masked))`` copies both and keeps them sharing with each other.

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

    **Converting a converted model** gives exactly what converting the plain model gives, or refuses: masked
    layers, ``Masked``/``Unmasked`` and ``MaskedSequential`` become the layers ``kind`` makes of their plain
    layers (a copy where they are that already; ``inplace=True``: sharing their tensors); a converted graph model
    is copied for the same kind and options and refused (``TypeError``) for others, as is a plain model whose
    forward calls a masked module itself.

    **The mask** of what ``convert`` returns is validity: ``bool`` or 0/1 of any dtype; any other value (a 0/255
    mask, a soft mask, NaN) raises ``ValueError`` when the model is called (a forward pre-hook running
    :func:`masked_torch.functional.check_binary_mask`: one pass over the mask; skipped under ``torch.compile``
    and ``torch.export``). Soft masks stay a feature of the masked layers a user builds.

    Raises ``TypeError`` for what has no rule or cannot be traced, ``ValueError`` for what depends on the
    padded canvas rather than each image (``interpolate(size=...)`` to a fixed size,
    ``align_corners=True``, reading a spatial size, ``padding_mode='reflect'``, ...), each naming the node, op
    and module path. Weights, buffers, training mode, dtype, device and frozen parameters carry over.
    """
    if kind not in _KINDS:
        raise ValueError(f"convert: kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if not isinstance(inplace, bool):
        raise TypeError(f"convert: inplace must be True or False, got {inplace!r}")
    if capture not in _CAPTURES:
        raise ValueError(f"convert: capture must be one of {list(_CAPTURES)}, got {capture!r}")
    if example is not None and not isinstance(example, Tensor):
        raise TypeError(f"convert: example must be an input tensor (N, C, *spatial), got {type(example).__name__}")
    if not isinstance(check, bool):
        raise TypeError(f"convert: check must be True or False, got {check!r}")
    kind = _KINDS[kind]
    if options and kind != "partial":
        raise ValueError(f"convert: options {sorted(options)} only apply to kind='partial'")
    if isinstance(model, MaskedModule) or has_rule(model) or _sequential_of_layers(model):
        out = convert_module(model, kind, options, share=inplace)
    else:
        _refuse_masked_inside(model)
        from .build import convert_graph

        out = convert_graph(model, kind, options, inplace, capture=capture, example=example, check=check)
        out._convert_kind = (kind, tuple(sorted(options.items())))  # what converting it again compares with
    if isinstance(out, MaskedSequential) and kind != "plain":
        # every layer after the first reads a masked layer's output, exactly 0 under its mask
        leaves = [m for m in out.modules() if not isinstance(m, MaskedSequential)]
        for layer in leaves[1:]:
            if hasattr(layer, "input_zeroed"):
                layer.input_zeroed = True
    return _guard_mask_values(out)
