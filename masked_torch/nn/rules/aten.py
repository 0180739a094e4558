"""Where each ATen op of a ``torch.export`` capture meets its mask rule: the torch function or Tensor method
that has the rule (so a rule is written once, for the function, and serves every way the op appears).

An ATen op whose name is a Tensor method (``add``, ``mean``, ``permute``, ``relu_``, ``size`` ...) becomes that
method call with the same arguments; the others are listed in :data:`ATEN`, each with an adapter (built with
:func:`call`, :func:`pool`, :func:`resize`, ...) that maps its arguments to the function of its rule; each rule
files its ATen ops beside its functions and methods (``register(rule, F.conv2d, aten={aten.conv2d: ...})``).
:func:`register_aten` adds one (a custom op: ``torch.ops.mylib.op.default``); an ATen op registered with a rule
of its own (``register(rule, torch.ops.mylib.op)``) stays as it is.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F

__all__ = ["ATEN", "DIRECT", "VALUES_ONLY", "aten", "aten_to_torch", "register_aten", "call", "pool", "resize",
           "inplace", "method", "slice_index", "select_index", "rsub", "to_method"]

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


def call(fn: Callable, *names: str, **fixed) -> Callable:
    """The adapter that calls ``fn`` with the ATen arguments ``names`` in order (positionally) and ``fixed``
    keywords."""
    def adapt(b: dict):
        return "call_function", fn, tuple(b.get(n) for n in names), dict(fixed)
    return adapt


def _stride(b: dict) -> dict:
    if b.get("stride") == []:  # ATen's "same as kernel_size"
        b["stride"] = None
    return b


def pool(fn: Callable, *names: str) -> Callable:
    """:func:`call` for a pooling op: ATen's empty ``stride`` is the function's ``None``."""
    inner = call(fn, *names)
    return lambda b: inner(_stride(b))


def resize(mode: str, corners: bool = False) -> Callable:
    """An ``upsample_*`` op as ``F.interpolate(input, size, scale_factor, mode[, align_corners])``."""
    def adapt(b: dict):
        kwargs = {"size": b.get("output_size"), "scale_factor": b.get("scale_factors"), "mode": mode}
        if corners:
            kwargs["align_corners"] = b.get("align_corners")
        return "call_function", F.interpolate, (b["input"],), kwargs
    return adapt


def inplace(fn: Callable) -> Callable:
    """``aten.silu_(x)`` as ``F.silu(x, inplace=True)``."""
    return lambda b: ("call_function", fn, (b["self"],), {"inplace": True})


def method(name: str, *names: str) -> Callable:
    """The adapter that calls the Tensor method ``name`` with the ATen arguments ``names``."""
    return lambda b: ("call_method", name, tuple(b[n] for n in names), {})


def _at(dim: int, index) -> tuple:
    """An indexing tuple that applies ``index`` along ``dim``."""
    if dim >= 0:
        return (slice(None),) * dim + (index,)
    return (Ellipsis, index) + (slice(None),) * (-dim - 1)


def slice_index(b: dict):
    """``aten.slice(x, dim, start, end, step)`` as ``x[..., start:end:step]``."""
    return "call_function", operator.getitem, (b["self"], _at(b["dim"], slice(b.get("start"), b.get("end"),
                                                                              b.get("step", 1)))), {}


def select_index(b: dict):
    """``aten.select(x, dim, index)`` as ``x[..., index]``."""
    return "call_function", operator.getitem, (b["self"], _at(b["dim"], b["index"])), {}


def rsub(b: dict):
    """``aten.rsub(x, other)`` as ``other - x``."""
    if b.get("alpha", 1) != 1:
        return "call_function", torch.rsub, (b["self"], b["other"]), {"alpha": b["alpha"]}
    return "call_function", operator.sub, (b["other"], b["self"]), {}


def to_method(b: dict):
    """``aten._to_copy`` / ``aten.to`` as ``x.to(dtype=..., device=...)``."""
    return "call_method", "to", (b["self"],), {k: b[k] for k in ("dtype", "device") if b.get(k) is not None}


def _instance_norm(b: dict):
    return "call_function", F.instance_norm, (b["input"], b["running_mean"], b["running_var"], b["weight"],
                                              b["bias"], b["use_input_stats"], b["momentum"], b["eps"]), {}


#: ATen op packet -> how its call becomes the torch function that has the rule; filled by the rules'
#: ``register(..., aten={packet: adapter})`` (:mod:`.table`); an op without a rule of its own is listed here
ATEN: dict[Any, Callable] = {
    aten.instance_norm: _instance_norm,  # no rule: instance norm is captured as its layer
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
