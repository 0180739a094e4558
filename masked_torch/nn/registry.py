"""Converting one layer: the masked copy of a plain ``torch.nn`` layer with its weights carried over (the map
of which masked layer stands for which plain one is :mod:`~masked_torch.nn.layers`)."""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .base import MaskedModule
from .container import Masked, Unmasked
from .elementwise import is_elementwise
from .layers import CONVS, LAYERS, grid_mask, has_rule, masked_counterpart

__all__ = ["LAYERS", "masked_counterpart", "convert_module", "grid_mask", "has_rule"]


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


def shared_copy(module: nn.Module, share: bool) -> nn.Module:
    """``copy.deepcopy(module)``; with ``share``, a copy of the module tree that holds ``module``'s own
    ``Parameter`` and buffer objects (every other attribute copied)."""
    if not share:
        return copy.deepcopy(module)
    memo = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return copy.deepcopy(module, memo)


def _carry_over(old: nn.Module, new: nn.Module, share: bool = False) -> nn.Module:
    """Weights, buffers, training mode and which parameters are frozen; with ``share``, ``new`` then holds
    ``old``'s own ``Parameter`` and buffer objects under the same names."""
    new.load_state_dict(old.state_dict(), strict=True)
    for name, param in old.named_parameters(recurse=False):
        getattr(new, name).requires_grad_(param.requires_grad)
    if share:
        for name, tensor in [*old.named_parameters(), *old.named_buffers()]:
            path, _, leaf = name.rpartition(".")
            owner = new.get_submodule(path)
            slots = owner._parameters if isinstance(tensor, nn.Parameter) else owner._buffers
            if leaf not in slots:
                what = "parameter" if slots is owner._parameters else "buffer"
                raise TypeError(f"convert: {type(new).__name__} has no {what} {name!r} to share with "
                                f"{type(old).__name__}; use inplace=False")
            slots[leaf] = tensor
    return new.train(old.training)


def convert_module(module: nn.Module, kind: str, options: dict, path: str = "", share: bool = False) -> nn.Module:
    """The masked copy of one layer (weights carried over; ``module`` is left as it is; with ``share`` the copy
    holds ``module``'s own ``Parameter`` and buffer objects, see ``convert(inplace=True)``).

    ``kind``: ``"masked"``, ``"partial"`` (``options`` go to the partial convolutions) or ``"plain"`` (the layer
    itself, wrapped in :class:`Unmasked`). Raises ``TypeError`` naming ``path`` for a layer without a rule.
    """
    where = f"{path!r} " if path else ""
    if isinstance(module, MaskedModule):
        return shared_copy(module, share)
    if kind == "plain":
        if not (type(module) in LAYERS or is_elementwise(module)):
            raise TypeError(f"convert: no mask rule for layer {where}({type(module).__name__})")
        return Unmasked(shared_copy(module, share))
    if is_elementwise(module):
        return Masked(shared_copy(module, share))
    t = type(module)
    cls = CONVS[kind].get(t) or LAYERS.get(t)
    if cls is None:
        raise TypeError(f"convert: no mask rule for layer {where}({t.__name__})")
    try:
        args, kwargs = _constructor_args(module)
        if t in CONVS["masked"]:
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
    return _carry_over(module, new, share)
