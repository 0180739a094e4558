"""Converting one layer: the masked copy of a plain ``torch.nn`` layer with its weights carried over (the map
of which masked layer stands for which plain one is :mod:`~masked_torch.nn.layers`)."""
from __future__ import annotations

import copy
from typing import Optional

from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .base import MaskedModule
from .container import Masked, MaskedSequential, Unmasked
from .conv import _MaskedConvNd as MaskedConv, _PartialConvNd as PartialConv
from .elementwise import is_elementwise
from .layers import LAYERS, grid_mask, has_rule, masked_counterpart
from .rules.table import layer_for

__all__ = ["LAYERS", "plain_type", "masked_counterpart", "convert_module", "convert_sequential", "plain_layer", "grid_mask",
           "has_rule"]

def plain_type(masked: type) -> Optional[type]:
    """The plain ``torch.nn`` layer type a masked layer type stands for (either kind of convolution)."""
    for plain, kinds in LAYERS.items():
        if masked in kinds.values():
            return plain
    return None


def _constructor_args(module: nn.Module, t: Optional[type] = None) -> tuple[tuple, dict]:
    """The constructor arguments of the plain layer type ``t`` (``type(module)`` by default) that ``module``
    (that layer, or its masked layer) was built with."""
    t = t or type(module)
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


def _build(cls: type, args: tuple, kwargs: dict, like: nn.Module) -> nn.Module:
    factory = _factory(like)  # empty for layers without tensors (pools; GroupNorm(affine=False))
    if not factory:
        return cls(*args, **kwargs)
    # built on the meta device (no initialisation drawn from the global random stream), then given real storage
    # that the carried-over weights fill
    return cls(*args, **kwargs, **{**factory, "device": "meta"}).to_empty(device=factory["device"])


def plain_layer(module: nn.Module, share: bool = False) -> Optional[nn.Module]:
    """The plain ``torch.nn`` layer a masked layer stands for, with its weights, buffers and training mode
    (with ``share``, its own ``Parameter`` and buffer objects): the layer ``convert`` would have made it from;
    the wrapped module of :class:`Masked` / :class:`Unmasked`. ``None`` for other modules."""
    if isinstance(module, (Masked, Unmasked)):
        return module.module
    t = plain_type(type(module))
    if t is None:
        return None
    args, kwargs = _constructor_args(module, t)
    return _carry_over(module, _build(t, args, kwargs, module), share)


#: the mask options of the masked convolutions, at their constructors' defaults
_MASK_OPTIONS = {"anchor": "centre", "multichannel": False, "update_mask": True}


def _target(plain: Optional[type], kind: str) -> Optional[type]:
    return (layer_for(plain, kind) or layer_for(plain)) if plain is not None else None


def _built_as(module: nn.Module, kind: str, options: dict) -> bool:
    """Whether ``module`` (a masked layer) is the layer ``convert(..., kind, **options)`` makes of its plain
    layer: the same class and the same mask options."""
    if type(module) is not _target(plain_type(type(module)), kind) or any(k not in _MASK_OPTIONS for k in options):
        return False
    want = {**_MASK_OPTIONS, "anchor": "end", **(options if kind == "partial" else {})}
    return all(getattr(module, k) == want[k] for k in _MASK_OPTIONS if hasattr(module, k))


def _conv_kind(module: nn.Module) -> Optional[str]:
    """``"masked"`` or ``"partial"`` for a masked convolution of any class (``None`` for other modules)."""
    return "masked" if isinstance(module, MaskedConv) else "partial" if isinstance(module, PartialConv) else None


def _refuse(module: nn.Module, path: str, kind: str, options: dict, why: str) -> None:
    where = f"{path!r} ({module._get_name()})" if path else module._get_name()
    target = f"kind {kind!r}" + (f" with options {options}" if options else "")
    call = f"convert(model, {kind!r}" + "".join(f", {k}={v!r}" for k, v in options.items()) + ")"
    raise TypeError(
        f"convert: {where} {why}, so it cannot become {target} exactly; convert the plain model instead ({call}); "
        f"model.load_state_dict(converted.state_dict()) brings trained weights back into the plain model")


def _convert_masked(module: nn.Module, kind: str, options: dict, path: str, share: bool) -> nn.Module:
    """A masked module converted again: the module ``convert`` makes of its plain layers for ``kind``
    (a copy where it is that already), or ``TypeError`` where that cannot be done exactly."""
    if isinstance(module, MaskedSequential):
        return convert_sequential(module, kind, options, path, share)
    if isinstance(module, Unmasked):
        if kind == "plain":
            return shared_copy(module, share)
        return convert_module(module.module, kind, options, path, share)
    if isinstance(module, Masked):
        return Unmasked(shared_copy(module.module, share)) if kind == "plain" else _fresh(shared_copy(module, share))
    if plain_type(type(module)) is not None:
        if kind != "plain" and _built_as(module, kind, options):
            return _fresh(shared_copy(module, share))
        return convert_module(plain_layer(module, share), kind, options, path, share)
    tag = getattr(module, "_convert_kind", None)  # a converted graph model: convert tags it (kind, options)
    if tag is not None:
        if tag == (kind, tuple(sorted(options.items()))):
            return shared_copy(module, share)
        made = f"was converted as kind {tag[0]!r}" + (f" with options {dict(tag[1])}" if tag[0] == kind else "")
        _refuse(module, path, kind, options, made + " and its forward is rewritten for that")
    made = _conv_kind(module)
    if made is not None and made != kind:  # a subclass of a masked convolution (a lazy one, or the user's)
        _refuse(module, path, kind, options, f"is a {made!r} layer of its own class")
    if kind == "plain":
        _refuse(module, path, kind, options, "is a masked layer without a plain layer")
    return _fresh(shared_copy(module, share))  # a masked module of the user's own (or MaskedSpatialMean): its own rule


def _fresh(module: nn.Module) -> nn.Module:
    """A copied masked layer promises nothing about its input (``convert`` sets ``input_zeroed`` where the
    input is 0 under the mask)."""
    if hasattr(module, "input_zeroed"):
        module.input_zeroed = False
    return module


def convert_sequential(module: nn.Sequential, kind: str, options: dict, path: str = "", share: bool = False
                       ) -> MaskedSequential:
    """An ``nn.Sequential`` (or :class:`MaskedSequential`) of layers, each converted, under the same names."""
    out = MaskedSequential()
    for name, child in module.named_children():
        where = f"{path}.{name}" if path else name
        if type(child) is nn.Sequential:
            new = convert_sequential(child, kind, options, where, share)
        else:
            new = convert_module(child, kind, options, where, share)
        out.add_module(name, new)
    return out.train(module.training)


def convert_module(module: nn.Module, kind: str, options: dict, path: str = "", share: bool = False) -> nn.Module:
    """The masked copy of one layer (weights carried over; ``module`` is left as it is; with ``share`` the copy
    holds ``module``'s own ``Parameter`` and buffer objects, see ``convert(inplace=True)``).

    ``kind``: ``"masked"``, ``"partial"`` (``options`` go to the partial convolutions) or ``"plain"`` (the layer
    itself, wrapped in :class:`Unmasked`). A masked layer (or :class:`MaskedSequential`) gives the layer
    ``kind`` makes of its plain layer; a converted model of another kind is refused. Raises ``TypeError``
    naming ``path`` for a layer without a rule.
    """
    where = f"{path!r} " if path else ""
    if isinstance(module, MaskedModule):
        return _convert_masked(module, kind, options, path, share)
    if type(module) is nn.Sequential:
        return convert_sequential(module, kind, options, path, share)
    if kind == "plain":
        if not (type(module) in LAYERS or is_elementwise(module)):
            raise TypeError(f"convert: no mask rule for layer {where}({type(module).__name__})")
        return Unmasked(shared_copy(module, share))
    if is_elementwise(module):
        return Masked(shared_copy(module, share))
    t = type(module)
    cls = _target(t, kind)
    if cls is None:
        raise TypeError(f"convert: no mask rule for layer {where}({t.__name__})")
    if hasattr(cls, "from_plain"):  # a layer of one's own, filed with register_rule(MyLayer, layer=MaskedMyLayer)
        return _carry_over(module, cls.from_plain(module), share)
    try:
        args, kwargs = _constructor_args(module)
        if issubclass(cls, (MaskedConv, PartialConv)):
            kwargs.update(anchor="end", **(options if kind == "partial" else {}))
        new = _build(cls, args, kwargs, module)
    except ValueError as exc:
        raise ValueError(f"convert: layer {where}({t.__name__}) has no exact masked form: {exc}") from None
    return _carry_over(module, new, share)
