"""The module map: which masked layer stands for each plain ``torch.nn`` layer, how its weights carry over,
and where the mask of a plain layer goes (for the ``"plain"`` baseline)."""
from __future__ import annotations

import copy
from typing import Optional

from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .. import functional as MF
from .base import MaskedModule
from .batchnorm import MaskedBatchNorm1d, MaskedBatchNorm2d, MaskedBatchNorm3d
from .container import Masked, Unmasked
from .conv import (
    MaskedConv1d, MaskedConv2d, MaskedConv3d, MaskedConvTranspose1d, MaskedConvTranspose2d, MaskedConvTranspose3d,
    PartialConv1d, PartialConv2d, PartialConv3d,
)
from .elementwise import is_elementwise
from .linear import MaskedFlatten, MaskedLinear
from .norm import MaskedGroupNorm, MaskedInstanceNorm1d, MaskedInstanceNorm2d, MaskedInstanceNorm3d, MaskedLayerNorm
from .pooling import (
    MaskedAdaptiveAvgPool1d, MaskedAdaptiveAvgPool2d, MaskedAdaptiveAvgPool3d,
    MaskedAdaptiveMaxPool1d, MaskedAdaptiveMaxPool2d, MaskedAdaptiveMaxPool3d,
    MaskedAvgPool1d, MaskedAvgPool2d, MaskedAvgPool3d, MaskedMaxPool1d, MaskedMaxPool2d, MaskedMaxPool3d,
)
from .resample import MaskedPixelShuffle, MaskedUpsample
from .shuffle import MaskedUnshuffle2d

__all__ = ["LAYERS", "masked_counterpart", "convert_module", "grid_mask", "has_rule"]

_CONVS = {
    "masked": {nn.Conv1d: MaskedConv1d, nn.Conv2d: MaskedConv2d, nn.Conv3d: MaskedConv3d},
    "partial": {nn.Conv1d: PartialConv1d, nn.Conv2d: PartialConv2d, nn.Conv3d: PartialConv3d},
}

#: plain layer type -> its masked layer (the same for ``"masked"`` and ``"partial"``, convolutions aside).
LAYERS: dict[type, type] = {
    nn.ConvTranspose1d: MaskedConvTranspose1d, nn.ConvTranspose2d: MaskedConvTranspose2d,
    nn.ConvTranspose3d: MaskedConvTranspose3d,
    nn.BatchNorm1d: MaskedBatchNorm1d, nn.BatchNorm2d: MaskedBatchNorm2d, nn.BatchNorm3d: MaskedBatchNorm3d,
    nn.GroupNorm: MaskedGroupNorm, nn.LayerNorm: MaskedLayerNorm,
    nn.InstanceNorm1d: MaskedInstanceNorm1d, nn.InstanceNorm2d: MaskedInstanceNorm2d,
    nn.InstanceNorm3d: MaskedInstanceNorm3d,
    nn.MaxPool1d: MaskedMaxPool1d, nn.MaxPool2d: MaskedMaxPool2d, nn.MaxPool3d: MaskedMaxPool3d,
    nn.AvgPool1d: MaskedAvgPool1d, nn.AvgPool2d: MaskedAvgPool2d, nn.AvgPool3d: MaskedAvgPool3d,
    nn.AdaptiveAvgPool1d: MaskedAdaptiveAvgPool1d, nn.AdaptiveAvgPool2d: MaskedAdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d: MaskedAdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d: MaskedAdaptiveMaxPool1d, nn.AdaptiveMaxPool2d: MaskedAdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d: MaskedAdaptiveMaxPool3d,
    nn.Upsample: MaskedUpsample, nn.PixelShuffle: MaskedPixelShuffle, nn.PixelUnshuffle: MaskedUnshuffle2d,
    nn.Linear: MaskedLinear, nn.Flatten: MaskedFlatten,
    **_CONVS["masked"],
}


def masked_counterpart(module: nn.Module) -> Optional[type]:
    """The masked layer for a plain layer (``None`` where there is none)."""
    return LAYERS.get(type(module))


def has_rule(module: nn.Module) -> bool:
    """Whether ``convert`` has a rule for this module as a whole (a leaf of the converted graph)."""
    return isinstance(module, MaskedModule) or type(module) in LAYERS or is_elementwise(module)


def _constructor_args(module: nn.Module) -> tuple[tuple, dict]:
    t = type(module)
    if isinstance(module, (_ConvNd,)):
        kw = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
                  bias=module.bias is not None, padding_mode=module.padding_mode)
        if isinstance(module, _ConvTransposeNd):
            kw["output_padding"] = module.output_padding
        return (module.in_channels, module.out_channels, module.kernel_size), kw
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return (module.num_features,), dict(eps=module.eps, momentum=module.momentum, affine=module.affine,
                                            track_running_stats=module.track_running_stats)
    if t is nn.GroupNorm:
        return (module.num_groups, module.num_channels), dict(eps=module.eps, affine=module.affine)
    if t is nn.LayerNorm:
        return (module.normalized_shape,), dict(eps=module.eps, elementwise_affine=module.elementwise_affine,
                                                bias=module.bias is not None)
    if t is nn.Linear:
        return (module.in_features, module.out_features), dict(bias=module.bias is not None)
    if isinstance(module, nn.modules.pooling._MaxPoolNd):
        return (module.kernel_size, module.stride, module.padding, module.dilation, module.return_indices,
                module.ceil_mode), {}
    if isinstance(module, nn.modules.pooling._AvgPoolNd):
        extra = {} if t is nn.AvgPool1d else {"divisor_override": module.divisor_override}
        return (module.kernel_size, module.stride, module.padding, module.ceil_mode, module.count_include_pad), extra
    if isinstance(module, nn.modules.pooling._AdaptiveMaxPoolNd):
        if module.return_indices:
            raise ValueError("return_indices=True is not supported")
        return (module.output_size,), {}
    if isinstance(module, nn.modules.pooling._AdaptiveAvgPoolNd):
        return (module.output_size,), {}
    if t is nn.Upsample:
        return (module.size, module.scale_factor, module.mode, module.align_corners), dict(
            recompute_scale_factor=module.recompute_scale_factor)
    if t is nn.PixelShuffle:
        return (module.upscale_factor,), {}
    if t is nn.PixelUnshuffle:
        return (module.downscale_factor,), {}
    if t is nn.Flatten:
        return (module.start_dim, module.end_dim), {}
    raise TypeError(f"no constructor arguments known for {t.__name__}")


def _factory(module: nn.Module) -> dict:
    like = next(iter(module.parameters(recurse=False)), None)
    if like is None:
        like = next(iter(module.buffers(recurse=False)), None)
    return {} if like is None else {"device": like.device, "dtype": like.dtype}


def _carry_over(old: nn.Module, new: nn.Module) -> nn.Module:
    """Weights, buffers, training mode and which parameters are frozen."""
    new.load_state_dict(old.state_dict(), strict=True)
    for name, param in old.named_parameters(recurse=False):
        getattr(new, name).requires_grad_(param.requires_grad)
    return new.train(old.training)


def convert_module(module: nn.Module, kind: str, options: dict, path: str = "") -> nn.Module:
    """The masked copy of one layer (weights carried over; ``module`` is left as it is).

    ``kind``: ``"masked"``, ``"partial"`` (``options`` go to the partial convolutions) or ``"plain"`` (the layer
    itself, wrapped in :class:`Unmasked`). Raises ``TypeError`` naming ``path`` for a layer without a rule.
    """
    where = f"{path!r} " if path else ""
    if isinstance(module, MaskedModule):
        return copy.deepcopy(module)
    if kind == "plain":
        if not (type(module) in LAYERS or is_elementwise(module)):
            raise TypeError(f"convert: no mask rule for layer {where}({type(module).__name__})")
        return Unmasked(copy.deepcopy(module))
    if is_elementwise(module):
        return Masked(copy.deepcopy(module))
    t = type(module)
    cls = _CONVS[kind].get(t) or LAYERS.get(t)
    if cls is None:
        raise TypeError(f"convert: no mask rule for layer {where}({t.__name__})")
    try:
        args, kwargs = _constructor_args(module)
        if t in _CONVS["masked"]:
            kwargs.update(anchor="end", **(options if kind == "partial" else {}))
        factory = _factory(module)  # empty for layers without tensors (pools; GroupNorm(affine=False))
        if factory:
            # built on the meta device (no initialisation drawn from the global random stream), then given real
            # storage that the carried-over weights fill
            new = cls(*args, **kwargs, **{**factory, "device": "meta"}).to_empty(device=factory["device"])
        else:
            new = cls(*args, **kwargs)
    except ValueError as exc:
        raise ValueError(f"convert: layer {where}({t.__name__}) has no exact masked form: {exc}") from None
    return _carry_over(module, new)


def grid_mask(module: nn.Module, input: Tensor, mask: Tensor, output: Tensor, *, name: str = "") -> Tensor:
    """Where the mask goes through a plain layer that ran on the padded batch as it is (the ``"plain"``
    baseline): the output mask its masked counterpart would give."""
    name = name or type(module).__name__
    nd = input.dim() - 2
    if isinstance(module, _ConvTransposeNd):
        return MF.conv_transpose_mask(mask, module.kernel_size, module.stride, module.padding, module.output_padding,
                                      module.dilation, output.shape[2:])
    if isinstance(module, _ConvNd):
        m = mask if mask.shape[1] == 1 else mask.amax(dim=1, keepdim=True)
        pad = MF.resolve_padding(module.padding, module.kernel_size, module.dilation, name)
        return MF.window_anchor(m, module.kernel_size, module.stride, pad, module.dilation, anchor="end",
                                out_shape=output.shape[2:])
    if isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        stride = module.stride if module.stride else module.kernel_size
        return MF.window_anchor(mask, MF._ntuple(module.kernel_size, nd), stride, module.padding,
                                getattr(module, "dilation", 1), anchor="end", ceil_mode=module.ceil_mode,
                                out_shape=output.shape[2:])
    if isinstance(module, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        if any(s != 1 for s in output.shape[2:]):
            raise ValueError(f"{name}: output size {tuple(output.shape[2:])} pools the padded canvas, not each image")
        return mask.amax(dim=tuple(range(2, mask.dim())), keepdim=True)
    if isinstance(module, nn.Upsample):
        MF.check_interpolate(module.size, module.scale_factor, module.mode, module.align_corners,
                             module.recompute_scale_factor, name=name)
        m = mask.amax(dim=1, keepdim=True) if module.mode not in ("nearest", "nearest-exact") else mask
        return MF.interpolate_mask(m, module.scale_factor, output.shape[2:])
    if isinstance(module, nn.PixelShuffle):
        return MF.masked_pixel_shuffle(input, mask, module.upscale_factor, name=name)[1]
    if isinstance(module, nn.PixelUnshuffle):
        return MF.masked_unshuffle(input, mask, module.downscale_factor, name=name)[1]
    if isinstance(module, nn.Flatten):
        return MF.reshape_mask(mask, input.shape, output.shape)
    if output.shape == input.shape or (output.dim() == input.dim() and output.shape[2:] == input.shape[2:]
                                        and output.shape[0] == input.shape[0]):
        return mask if mask.shape[1] in (1, output.shape[1]) else mask.amax(dim=1, keepdim=True)
    if isinstance(module, nn.Linear) and mask.shape[-1] == 1:
        return mask
    raise ValueError(f"{name}: no rule for where the mask goes from input {tuple(input.shape)} to output "
                     f"{tuple(output.shape)}")
