"""Rules of reductions and pooling: over each image's valid positions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from ... import functional as MF
from .. import pooling as _pools
from .elementwise import binary
from .aten import aten, call, pool
from .table import Val, register, sig

__all__ = ["reduce", "var", "max_dim", "max_pool", "avg_pool", "adaptive_pool", "pool_whole"]

REDUCE = sig("input", ("dim", None), ("keepdim", False), ("dtype", None))
VAR = sig("input", ("dim", None), ("unbiased", None), ("keepdim", False), ("correction", None))
MAX_DIM = sig("input", ("dim", None), ("keepdim", False))
MAX_POOL = sig("input", "kernel_size", ("stride", None), ("padding", 0), ("dilation", 1), ("ceil_mode", False),
               ("return_indices", False))
AVG_POOL = sig("input", "kernel_size", ("stride", None), ("padding", 0), ("ceil_mode", False),
               ("count_include_pad", True), ("divisor_override", None))
ADAPTIVE = sig("input", "output_size", ("return_indices", False))


def reduce(rw, node, env, args, kwargs, mode: str) -> Val:
    """mean, sum, amax, amin over dims that leave the batch."""
    bound = REDUCE.bind(*args, **kwargs).arguments
    if bound.get("dtype") is not None:
        rw.fail(node, "dtype= is not supported")
    (x,) = rw.masked_args(node, env)
    if bound.get("dim") is None:
        rw.fail(node, "a reduction over every dim, batch included, mixes the samples", ValueError)
    t = rw.call(MF.masked_reduce, rw.clean(x), x.mask, bound["dim"], bound.get("keepdim", False), mode,
                zeroed=True, name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def var(rw, node, env, args, kwargs, std: bool) -> Val:
    b = rw.bind(node, VAR, args, kwargs)
    if b.get("dim") is None:
        rw.fail(node, "a reduction over every dim, batch included, mixes the samples", ValueError)
    correction = b.get("correction")
    if correction is None:
        correction = 1 if b.get("unbiased", True) in (True, None) else 0
    x = env[node.args[0]]
    t = rw.call(MF.masked_var, rw.clean(x), x.mask, b["dim"], correction, b.get("keepdim", False), std,
                name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def max_dim(rw, node, env, args, kwargs, mode: str) -> Val:
    """``torch.max(x, dim)`` over valid positions; ``torch.max(a, b)`` elementwise."""
    masked = rw.masked_args(node, env)
    other = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("dim"))
    if len(masked) == 2 or isinstance(other, fx.Node):  # torch.max(a, b): elementwise
        return binary(rw, node, env, args, kwargs, "add")
    b = rw.bind(node, MAX_DIM, args, kwargs)
    if b.get("dim") is None:
        rw.fail(node, "a max over every dim, batch included, mixes the samples", ValueError)
    x = env[node.args[0]]
    t = rw.call(MF.masked_max_dim, rw.clean(x), x.mask, b["dim"], b.get("keepdim", False), mode,
                name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def max_pool(rw, node, env, args, kwargs, nd: int) -> Val:
    b = rw.bind(node, MAX_POOL, args, kwargs)
    if b.get("return_indices"):
        rw.fail(node, "return_indices=True: indices into the padded canvas are not each image's", ValueError)
    x = env[node.args[0]]
    t = rw.call(MF.masked_max_pool, x.value, x.mask, b["kernel_size"], b.get("stride"), b.get("padding", 0),
                b.get("dilation", 1), b.get("ceil_mode", False), nd=nd, name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def max_pool_indices(rw, node, env, args, kwargs, nd: int) -> Val:
    rw.fail(node, "return_indices=True: indices into the padded canvas are not each image's", ValueError)


def avg_pool(rw, node, env, args, kwargs, nd: int) -> Val:
    b = rw.bind(node, AVG_POOL, args, kwargs)
    x = env[node.args[0]]
    t = rw.call(MF.masked_avg_pool, rw.clean(x), x.mask, b["kernel_size"], b.get("stride"), b.get("padding", 0),
                b.get("ceil_mode", False), b.get("count_include_pad", True), b.get("divisor_override"), nd=nd,
                zeroed=True, name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def adaptive_pool(rw, node, env, args, kwargs, nd: int, mode: str) -> Val:
    """Global pooling over the valid positions, other sizes over each image's box."""
    b = rw.bind(node, ADAPTIVE, args, kwargs)
    if b.get("return_indices"):
        rw.fail(node, "return_indices=True is not supported", ValueError)
    x = env[node.args[0]]
    t = rw.call(MF.masked_adaptive_pool, rw.clean(x), x.mask, b["output_size"], mode, nd=nd, zeroed=True,
                name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def pool_whole(rw, node, env, args, kwargs, nd: int, signature, mode: str) -> Val:
    """``F.avg_pool2d(x, x.shape[2:])`` (or ``(x.size(2), x.size(3))``): global pooling of ``x``."""
    b = rw.bind(node, signature, args, kwargs)
    kernel = node.kwargs.get("kernel_size", node.args[1] if len(node.args) > 1 else None)
    parts = list(kernel) if isinstance(kernel, (tuple, list)) else [kernel]
    taints = [env[p].canvas if isinstance(p, fx.Node) else None for p in parts]
    x = env[node.args[0]]
    rest = {k: v for k, v in b.items() if k not in ("input", "kernel_size")}
    if (None in taints or not all(t[2] and t[0] is x for t in taints) or rest.get("stride") not in (None, [], ())
            or any(rest.get(k) for k in ("padding", "ceil_mode", "return_indices", "divisor_override"))):
        rw.fail(node, "pools with a window sized by the padded canvas: only a window of the whole map "
                      "(kernel_size=x.shape[2:], no stride or padding) has a per-image rule", ValueError)
    t = rw.call(MF.masked_reduce, rw.clean(x), x.mask, tuple(range(2, 2 + nd)), True, mode, zeroed=True,
                name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def _max_pool_whole(rw, node, env, args, kwargs, nd: int) -> Val:
    return pool_whole(rw, node, env, args, kwargs, nd, MAX_POOL, "amax")


def _avg_pool_whole(rw, node, env, args, kwargs, nd: int) -> Val:
    return pool_whole(rw, node, env, args, kwargs, nd, AVG_POOL, "mean")


# -- the table --

for _mode, _targets in {"mean": (torch.mean, "mean"), "sum": (torch.sum, "sum"), "amax": (torch.amax, "amax"),
                        "amin": (torch.amin, "amin")}.items():
    register(reduce, *_targets, mode=_mode)
register(var, torch.var, "var", std=False)
register(var, torch.std, "std", std=True)
register(max_dim, torch.max, "max", mode="max")
register(max_dim, torch.min, "min", mode="min")
_AVG = ("self", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
for _n in (1, 2, 3):
    _max, _avg = getattr(F, f"max_pool{_n}d"), getattr(F, f"avg_pool{_n}d")
    register(max_pool, _max, getattr(nn, f"MaxPool{_n}d"), layer=getattr(_pools, f"MaskedMaxPool{_n}d"),
             canvas=_max_pool_whole, nd=_n, aten={
        getattr(aten, f"max_pool{_n}d"): pool(_max, "self", "kernel_size", "stride", "padding", "dilation",
                                               "ceil_mode")})
    _indices = {getattr(aten, f"adaptive_max_pool{_n}d"): call(getattr(F, f"adaptive_max_pool{_n}d_with_indices"),
                                                                "self", "output_size")}
    if _n > 1:
        _indices[getattr(aten, f"max_pool{_n}d_with_indices")] = pool(
            getattr(F, f"max_pool{_n}d_with_indices"), "self", "kernel_size", "stride", "padding", "dilation",
            "ceil_mode")
    register(max_pool_indices, getattr(F, f"max_pool{_n}d_with_indices"),
             getattr(F, f"adaptive_max_pool{_n}d_with_indices"), nd=_n, aten=_indices)
    register(avg_pool, _avg, getattr(nn, f"AvgPool{_n}d"), layer=getattr(_pools, f"MaskedAvgPool{_n}d"),
             canvas=_avg_pool_whole, nd=_n, aten={
        getattr(aten, f"avg_pool{_n}d"): pool(_avg, *_AVG, *(("divisor_override",) if _n > 1 else ()))})
    _adaptive = getattr(F, f"adaptive_avg_pool{_n}d")
    register(adaptive_pool, _adaptive, getattr(nn, f"AdaptiveAvgPool{_n}d"),
             layer=getattr(_pools, f"MaskedAdaptiveAvgPool{_n}d"), nd=_n, mode="mean", aten={
        getattr(aten, f"adaptive_avg_pool{_n}d"): call(_adaptive, "self", "output_size"),
        **({aten._adaptive_avg_pool2d: call(_adaptive, "self", "output_size")} if _n == 2 else {})})
    register(adaptive_pool, getattr(F, f"adaptive_max_pool{_n}d"), getattr(nn, f"AdaptiveMaxPool{_n}d"),
             layer=getattr(_pools, f"MaskedAdaptiveMaxPool{_n}d"), nd=_n, mode="amax")
