"""Rules of the functional forms of layers: convolution, linear, normalization, resampling."""
from __future__ import annotations

import torch.nn.functional as F
from torch import fx, nn

from ... import functional as MF
from .. import batchnorm as _bn, conv as _conv_layers, linear as _linear, norm as _norm, resample as _resample
from .aten import aten, call, resize
from .table import Val, register, sig

__all__ = ["conv", "conv_transpose", "linear", "layer_norm", "group_norm", "batch_norm", "interpolate",
           "interpolate_to"]

CONV = sig("input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))
CONV_T = sig("input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("output_padding", 0), ("groups", 1),
             ("dilation", 1))
LINEAR = sig("input", "weight", ("bias", None))
LAYER_NORM = sig("input", "normalized_shape", ("weight", None), ("bias", None), ("eps", 1e-5))
GROUP_NORM = sig("input", "num_groups", ("weight", None), ("bias", None), ("eps", 1e-5))
BATCH_NORM = sig("input", "running_mean", "running_var", ("weight", None), ("bias", None), ("training", False),
                 ("momentum", 0.1), ("eps", 1e-5))
INTERPOLATE = sig("input", ("size", None), ("scale_factor", None), ("mode", "nearest"), ("align_corners", None),
                  ("recompute_scale_factor", None), ("antialias", False))


def conv(rw, node, env, args, kwargs, nd: int) -> Val:
    b = rw.bind(node, CONV, args, kwargs)
    x = env[node.args[0]]
    conv_args = (b["weight"], b.get("bias"), b.get("stride", 1), b.get("padding", 0), b.get("dilation", 1),
                 b.get("groups", 1))
    if rw.kind == "partial":
        t = rw.call(MF.partial_conv, rw.clean(x), x.mask, *conv_args, anchor="end", zeroed=True,
                    name=rw.label(node), **rw.options)
    else:
        t = rw.call(MF.masked_conv, rw.clean(x), x.mask, *conv_args, anchor="end", zeroed=True, name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def conv_transpose(rw, node, env, args, kwargs, nd: int) -> Val:
    b = rw.bind(node, CONV_T, args, kwargs)
    x = env[node.args[0]]
    t = rw.call(MF.masked_conv_transpose, rw.clean(x), x.mask, b["weight"], b.get("bias"), b.get("stride", 1),
                b.get("padding", 0), b.get("output_padding", 0), b.get("groups", 1), b.get("dilation", 1),
                zeroed=True, name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def linear(rw, node, env, args, kwargs) -> Val:
    b = rw.bind(node, LINEAR, args, kwargs)
    x = env[node.args[0]]
    t = rw.call(MF.masked_linear, rw.clean(x), x.mask, b["weight"], b.get("bias"), name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def layer_norm(rw, node, env, args, kwargs) -> Val:
    b = rw.bind(node, LAYER_NORM, args, kwargs)
    x = env[node.args[0]]
    value = rw.copy_node(node, args, kwargs) if rw.plain else rw.get(0, rw.call(
        MF.masked_layer_norm, x.value, x.mask, b["normalized_shape"], b.get("weight"), b.get("bias"),
        b.get("eps", 1e-5), name=rw.label(node)))
    return Val(value, x.mask, True, True)


def group_norm(rw, node, env, args, kwargs) -> Val:
    b = rw.bind(node, GROUP_NORM, args, kwargs)
    x = env[node.args[0]]
    value = rw.copy_node(node, args, kwargs) if rw.plain else rw.get(0, rw.call(
        MF.masked_group_norm, x.value, x.mask, b["num_groups"], b.get("weight"), b.get("bias"), b.get("eps", 1e-5),
        name=rw.label(node)))
    return Val(value, x.mask, True, True)


def batch_norm(rw, node, env, args, kwargs) -> Val:
    b = rw.bind(node, BATCH_NORM, args, kwargs)
    x = env[node.args[0]]
    value = rw.copy_node(node, args, kwargs) if rw.plain else rw.get(0, rw.call(
        MF.masked_batch_norm, x.value, x.mask, b["running_mean"], b["running_var"], b.get("weight"),
        b.get("bias"), b.get("training", False), b.get("momentum", 0.1), b.get("eps", 1e-5), name=rw.label(node)))
    return Val(value, x.mask, True, True)


def interpolate(rw, node, env, args, kwargs) -> Val:
    b = rw.bind(node, INTERPOLATE, args, kwargs)
    try:
        MF.check_interpolate(b.get("size"), b.get("scale_factor"), b.get("mode", "nearest"), b.get("align_corners"),
                             b.get("recompute_scale_factor"), b.get("antialias", False), name="interpolate")
    except ValueError as exc:
        rw.fail(node, str(exc).split(": ", 1)[1], ValueError)
    x = env[node.args[0]]
    t = rw.call(MF.masked_interpolate, rw.clean(x), x.mask, b["scale_factor"], b.get("mode", "nearest"),
                b.get("align_corners"), b.get("recompute_scale_factor"), b.get("antialias", False), zeroed=True,
                name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def interpolate_to(rw, node, env, args, kwargs) -> Val:
    """``interpolate(x, size=t.shape[-2:])``: resized per image to the size of each image of ``t``."""
    b = rw.bind(node, INTERPOLATE, args, kwargs)
    size_arg = node.kwargs.get("size", node.args[1] if len(node.args) > 1 else None)
    parts = list(size_arg) if isinstance(size_arg, (tuple, list)) else [size_arg]
    taints = [env[p].canvas if isinstance(p, fx.Node) else None for p in parts]
    sources = {id(t[0]) for t in taints if t is not None}
    x = env[node.args[0]]
    if x.masked and (None in taints or len(sources) != 1 or not all(t[2] for t in taints)):
        # a size computed from spatial sizes ([d // 4 for d in x.shape[2:]]): each image's own, through the same
        # arithmetic on its own sizes (refused when it runs where a recipe cannot follow)
        recipes = tuple(rw.recipe(p, env) for p in parts)
        if all(r is not None for r in recipes):
            t = rw.call(MF.interpolate_to_sizes, rw.clean(x), x.mask, b["size"], recipes, b.get("mode", "nearest"),
                        b.get("align_corners"), name=rw.label(node))
            return rw.result(node, t, args, kwargs)
    if None in taints or len(sources) != 1 or not all(t[2] for t in taints) or not x.masked:
        rw.fail(node, "interpolate(size=...) resizes to the padded canvas's size: only a size read as it is "
                      "from a masked tensor (size=t.shape[-2:]) is resized per image", ValueError)
    like = taints[0][0]
    t = rw.call(MF.interpolate_to, rw.clean(x), x.mask, like.mask, b["size"], b.get("mode", "nearest"),
                b.get("align_corners"), name=rw.label(node))
    return rw.result(node, t, args, kwargs)


# -- the table --

for _n in (1, 2, 3):
    _conv, _conv_t = getattr(F, f"conv{_n}d"), getattr(F, f"conv_transpose{_n}d")
    register(conv, _conv, getattr(nn, f"Conv{_n}d"), nd=_n, layer={
        "masked": getattr(_conv_layers, f"MaskedConv{_n}d"), "partial": getattr(_conv_layers, f"PartialConv{_n}d")},
        aten={getattr(aten, f"conv{_n}d"): call(_conv, "input", "weight", "bias", "stride", "padding", "dilation",
                                                  "groups")})
    register(conv_transpose, _conv_t, getattr(nn, f"ConvTranspose{_n}d"), nd=_n,
             layer=getattr(_conv_layers, f"MaskedConvTranspose{_n}d"), aten={getattr(aten, f"conv_transpose{_n}d"): call(
                 _conv_t, "input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")})
    register(batch_norm, getattr(nn, f"BatchNorm{_n}d"), layer=getattr(_bn, f"MaskedBatchNorm{_n}d"))
    register(None, getattr(nn, f"InstanceNorm{_n}d"), layer=getattr(_norm, f"MaskedInstanceNorm{_n}d"))
register(linear, F.linear, nn.Linear, layer=_linear.MaskedLinear,
         aten={aten.linear: call(F.linear, "input", "weight", "bias")})
register(layer_norm, F.layer_norm, nn.LayerNorm, layer=_norm.MaskedLayerNorm, aten={aten.layer_norm: call(
    F.layer_norm, "input", "normalized_shape", "weight", "bias", "eps")})
register(group_norm, F.group_norm, nn.GroupNorm, layer=_norm.MaskedGroupNorm, aten={aten.group_norm: call(
    F.group_norm, "input", "num_groups", "weight", "bias", "eps")})
register(batch_norm, F.batch_norm, aten={aten.batch_norm: call(
    F.batch_norm, "input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")})
register(interpolate, F.interpolate, F.upsample, nn.Upsample, layer=_resample.MaskedUpsample, canvas=interpolate_to, aten={
    **{getattr(aten, f"upsample_nearest{n}d"): resize("nearest") for n in (1, 2, 3)},
    **{getattr(aten, f"_upsample_nearest_exact{n}d"): resize("nearest-exact") for n in (1, 2, 3)},
    aten.upsample_linear1d: resize("linear", True), aten.upsample_bilinear2d: resize("bilinear", True),
    aten.upsample_trilinear3d: resize("trilinear", True), aten.upsample_bicubic2d: resize("bicubic", True)})
