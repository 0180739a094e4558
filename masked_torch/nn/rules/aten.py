"""Where each ATen op of a ``torch.export`` capture meets its mask rule: the torch function or Tensor method
that has the rule (so a rule is written once, for the function, and serves every way the op appears).

An ATen op whose name is a Tensor method (``add``, ``mean``, ``permute``, ``relu_``, ``size`` ...) becomes that
method call with the same arguments; the others are listed in :data:`ATEN`, each with the function of its rule
and how its arguments map. :func:`register_aten` adds one (a custom op: ``torch.ops.mylib.op.default``); an ATen
op registered with a rule of its own (:func:`masked_torch.nn.rules.register`) stays as it is.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F

__all__ = ["ATEN", "DIRECT", "VALUES_ONLY", "aten_to_torch", "register_aten"]

aten = torch.ops.aten


def _bind(op, args, kwargs) -> dict:
    """The op's arguments by their schema names, defaults filled in."""
    out = {}
    for i, a in enumerate(op._schema.arguments):
        if i < len(args) and not a.kwarg_only:
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def _fn(fn: Callable, *names: str, **fixed) -> Callable:
    """Call ``fn`` with the ATen arguments ``names`` in order (positionally) and ``fixed`` keywords."""
    def adapt(b: dict):
        return "call_function", fn, tuple(b.get(n) for n in names), dict(fixed)
    return adapt


def _stride(b: dict) -> dict:
    if b.get("stride") == []:  # ATen's "same as kernel_size"
        b["stride"] = None
    return b


def _pool(fn: Callable, *names: str) -> Callable:
    inner = _fn(fn, *names)
    return lambda b: inner(_stride(b))


def _interpolate(mode: str, corners: bool = False) -> Callable:
    def adapt(b: dict):
        kwargs = {"size": b.get("output_size"), "scale_factor": b.get("scale_factors"), "mode": mode}
        if corners:
            kwargs["align_corners"] = b.get("align_corners")
        return "call_function", F.interpolate, (b["input"],), kwargs
    return adapt


def _inplace(fn: Callable) -> Callable:
    return lambda b: ("call_function", fn, (b["self"],), {"inplace": True})


def _batch_norm(b: dict):
    return "call_function", F.batch_norm, (b["input"], b["running_mean"], b["running_var"], b["weight"], b["bias"],
                                           b["training"], b["momentum"], b["eps"]), {}


def _instance_norm(b: dict):
    return "call_function", F.instance_norm, (b["input"], b["running_mean"], b["running_var"], b["weight"],
                                              b["bias"], b["use_input_stats"], b["momentum"], b["eps"]), {}


def _at(dim: int, index) -> tuple:
    """An indexing tuple that applies ``index`` along ``dim``."""
    if dim >= 0:
        return (slice(None),) * dim + (index,)
    return (Ellipsis, index) + (slice(None),) * (-dim - 1)


def _slice(b: dict):
    return "call_function", operator.getitem, (b["self"], _at(b["dim"], slice(b.get("start"), b.get("end"),
                                                                              b.get("step", 1)))), {}


def _select(b: dict):
    return "call_function", operator.getitem, (b["self"], _at(b["dim"], b["index"])), {}


def _rsub(b: dict):
    if b.get("alpha", 1) != 1:
        return "call_function", torch.rsub, (b["self"], b["other"]), {"alpha": b["alpha"]}
    return "call_function", operator.sub, (b["other"], b["self"]), {}


#: ATen op packet -> how its call becomes the torch function that has the rule
ATEN: dict[Any, Callable] = {
    **{getattr(aten, f"conv{n}d"): _fn(getattr(F, f"conv{n}d"), "input", "weight", "bias", "stride", "padding",
                                        "dilation", "groups") for n in (1, 2, 3)},
    **{getattr(aten, f"conv_transpose{n}d"): _fn(getattr(F, f"conv_transpose{n}d"), "input", "weight", "bias",
                                                  "stride", "padding", "output_padding", "groups", "dilation")
       for n in (1, 2, 3)},
    **{getattr(aten, f"max_pool{n}d"): _pool(getattr(F, f"max_pool{n}d"), "self", "kernel_size", "stride",
                                              "padding", "dilation", "ceil_mode") for n in (1, 2, 3)},
    **{getattr(aten, f"max_pool{n}d_with_indices"): _pool(getattr(F, f"max_pool{n}d_with_indices"), "self",
                                                           "kernel_size", "stride", "padding", "dilation",
                                                           "ceil_mode") for n in (2, 3)},
    aten.avg_pool1d: _pool(F.avg_pool1d, "self", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    **{getattr(aten, f"avg_pool{n}d"): _pool(getattr(F, f"avg_pool{n}d"), "self", "kernel_size", "stride",
                                              "padding", "ceil_mode", "count_include_pad", "divisor_override")
       for n in (2, 3)},
    **{getattr(aten, f"adaptive_avg_pool{n}d"): _fn(getattr(F, f"adaptive_avg_pool{n}d"), "self", "output_size")
       for n in (1, 2, 3)},
    aten._adaptive_avg_pool2d: _fn(F.adaptive_avg_pool2d, "self", "output_size"),
    **{getattr(aten, f"adaptive_max_pool{n}d"): _fn(getattr(F, f"adaptive_max_pool{n}d_with_indices"), "self",
                                                     "output_size") for n in (1, 2, 3)},
    **{getattr(aten, f"upsample_nearest{n}d"): _interpolate("nearest") for n in (1, 2, 3)},
    **{getattr(aten, f"_upsample_nearest_exact{n}d"): _interpolate("nearest-exact") for n in (1, 2, 3)},
    aten.upsample_linear1d: _interpolate("linear", True),
    aten.upsample_bilinear2d: _interpolate("bilinear", True),
    aten.upsample_trilinear3d: _interpolate("trilinear", True),
    aten.upsample_bicubic2d: _interpolate("bicubic", True),
    aten.pad: _fn(F.pad, "self", "pad", "mode", "value"),
    aten.constant_pad_nd: lambda b: ("call_function", F.pad, (b["self"], b["pad"], "constant", b.get("value", 0)), {}),
    aten.linear: _fn(F.linear, "input", "weight", "bias"),
    aten.layer_norm: _fn(F.layer_norm, "input", "normalized_shape", "weight", "bias", "eps"),
    aten.group_norm: _fn(F.group_norm, "input", "num_groups", "weight", "bias", "eps"),
    aten.batch_norm: _batch_norm,
    aten.instance_norm: _instance_norm,
    aten.dropout: _fn(F.dropout, "input", "p", "train"),
    aten.dropout_: lambda b: ("call_function", F.dropout, (b["input"], b["p"], b["train"]), {"inplace": True}),
    aten.feature_dropout: _fn(F.dropout2d, "input", "p", "train"),
    aten.pixel_shuffle: _fn(F.pixel_shuffle, "self", "upscale_factor"),
    aten.pixel_unshuffle: _fn(F.pixel_unshuffle, "self", "downscale_factor"),
    aten.cat: _fn(torch.cat, "tensors", "dim"),
    aten.concat: _fn(torch.cat, "tensors", "dim"),
    aten.stack: _fn(torch.stack, "tensors", "dim"),
    aten.gelu: lambda b: ("call_function", F.gelu, (b["self"],), {"approximate": b.get("approximate", "none")}),
    aten.silu: _fn(F.silu, "self"), aten.silu_: _inplace(F.silu),
    aten.hardswish: _fn(F.hardswish, "self"), aten.hardswish_: _inplace(F.hardswish),
    aten.hardsigmoid: _fn(F.hardsigmoid, "self"), aten.hardsigmoid_: _inplace(F.hardsigmoid),
    aten.mish: _fn(F.mish, "self"), aten.mish_: _inplace(F.mish),
    aten.relu6: _fn(F.relu6, "self"),
    aten.hardtanh: _fn(F.hardtanh, "self", "min_val", "max_val"),
    aten.hardtanh_: lambda b: ("call_function", F.hardtanh_, (b["self"], b["min_val"], b["max_val"]), {}),
    aten.leaky_relu: _fn(F.leaky_relu, "self", "negative_slope"),
    aten.leaky_relu_: lambda b: ("call_function", F.leaky_relu_, (b["self"], b["negative_slope"]), {}),
    aten.elu: lambda b: (("call_function", F.elu, (b["self"], b["alpha"]), {})
                         if b.get("scale", 1) == 1 and b.get("input_scale", 1) == 1
                         else ("call_function", aten.elu.default, (b["self"], b["alpha"], b["scale"],
                                                                    b["input_scale"]), {})),
    aten.softplus: _fn(F.softplus, "self", "beta", "threshold"),
    aten.log_sigmoid: _fn(F.logsigmoid, "self"),
    aten.slice: _slice,
    aten.select: _select,
    aten.rsub: _rsub,
    aten.expand: lambda b: ("call_method", "expand", (b["self"], b["size"]), {}),
    aten.zeros_like: _fn(torch.zeros_like, "self"), aten.ones_like: _fn(torch.ones_like, "self"),
    aten.empty_like: _fn(torch.empty_like, "self"),
    aten.full_like: _fn(torch.full_like, "self", "fill_value"),
    aten._to_copy: lambda b: ("call_method", "to", (b["self"],),
                              {k: b[k] for k in ("dtype", "device") if b.get(k) is not None}),
    aten.to: lambda b: ("call_method", "to", (b["self"],),
                        {k: b[k] for k in ("dtype", "device") if b.get(k) is not None}),
    aten.alias: lambda b: ("call_method", "view_as", (b["self"], b["self"]), {}),
}


#: ops that return ``(values, indices)``, whose indices nobody reads: the function that returns the values
VALUES_ONLY = {
    **{getattr(aten, f"adaptive_max_pool{n}d"): getattr(F, f"adaptive_max_pool{n}d") for n in (1, 2, 3)},
    **{getattr(aten, f"max_pool{n}d_with_indices"): getattr(F, f"max_pool{n}d") for n in (2, 3)},
}


#: ATen op packets that have a mask rule of their own: their calls stay ATen calls
DIRECT: set = set()


def register_aten(op, adapt: Callable) -> None:
    """Let a ``torch.export`` capture's ATen ``op`` (a packet such as ``torch.ops.mylib.op``) take the rule of a
    torch function: ``adapt(arguments by schema name) -> ("call_function", fn, args, kwargs)``."""
    ATEN[getattr(op, "overloadpacket", op)] = adapt


def aten_to_torch(target, args: tuple, kwargs: dict) -> tuple[str, Any, tuple, dict]:
    """``(op, target, args, kwargs)`` of the torch function or Tensor method that stands for an ATen call."""
    packet = getattr(target, "overloadpacket", None)
    if packet is None:  # operator.mul on sizes, torch.sym_max, ...
        return "call_function", target, args, kwargs
    if packet in DIRECT:
        return "call_function", target, args, kwargs
    if packet is aten.sym_size:
        return "call_method", "size", tuple(args), dict(kwargs)
    if packet in ATEN:
        return ATEN[packet](_bind(target, args, kwargs))
    name = packet.__name__
    schema = target._schema.arguments
    if schema and schema[0].name == "self" and hasattr(torch.Tensor, name):
        return "call_method", name, tuple(args), dict(kwargs)
    return "call_function", target, args, kwargs
