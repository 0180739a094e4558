"""Rules of ops that act on each entry alone (activations, casts, arithmetic) or along an unmasked dim."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from ... import functional as MF
from ..runtime import check_unmasked_dim, zero_unless_same
from .aten import aten, call, inplace, rsub, to_method
from .table import Val, register

__all__ = ["unary", "binary", "along_dim", "in_place"]


def in_place(node, x: Val, out: Val) -> None:
    """``x.sigmoid_()``, ``x += 1``, ``F.relu(x, inplace=True)``: ``x`` itself now holds the result."""
    if (node.op == "call_method" and node.target.endswith("_")) or node.kwargs.get("inplace") or (
            node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv)):
        x.clean = x.clean and out.clean


def unary(rw, node, env, args, kwargs, keeps_zero: bool) -> Val:
    """An op on each entry of its first argument; ``keeps_zero``: ``f(0) == 0``, so a clean input stays clean."""
    x = env[node.args[0]] if node.args and isinstance(node.args[0], fx.Node) else None
    if x is None or not x.masked or len(rw.masked_args(node, env)) != 1:
        rw.fail(node, "an elementwise op whose masked operand is not its first argument")
    out = Val(rw.copy_node(node, args, kwargs), x.mask, True, x.clean and keeps_zero)
    in_place(node, x, out)
    return out


def binary(rw, node, env, args, kwargs, op: str) -> Val:
    """``a op b`` entry by entry: the mask is the intersection; ``op`` (add, sub, mul, div, pow) says when the
    result stays 0 under it."""
    operands = list(node.args[:2]) + [node.kwargs.get(k) for k in ("other",) if k in node.kwargs]
    vals = [env[a] if isinstance(a, fx.Node) else None for a in operands[:2]]
    masked = [v for v in vals if v is not None and v.masked]
    value = rw.copy_node(node, args, kwargs)
    if len(masked) == 2:
        a, b = masked
        mask = rw.call(MF.intersect_masks, a.mask, b.mask)
    else:
        mask = masked[0].mask
    other = [o for o, v in zip(operands[:2], vals) if v is None or not v.masked]
    other = other[0] if other else None
    if op == "mul":
        clean = all(v.clean for v in masked)
    elif op in ("add", "sub"):
        if len(masked) == 2:
            clean = all(v.clean for v in masked)
            if clean and not rw.plain:
                value = rw.call(zero_unless_same, value, mask, masked[0].mask, masked[1].mask)
        else:
            clean = masked[0].clean and isinstance(other, (int, float)) and other == 0
    elif op == "div":
        first = vals[0]
        clean = (first is not None and first.masked and first.clean and isinstance(other, (int, float))
                 and other != 0 and len(masked) == 1)
    else:  # pow
        clean = (len(masked) == 1 and vals[0] is not None and vals[0].masked and vals[0].clean
                 and isinstance(operands[1], (int, float)) and operands[1] > 0)
    out = Val(value, mask, True, clean)
    if vals[0] is not None and vals[0].masked:
        in_place(node, vals[0], out)
    return out


def along_dim(rw, node, env, args, kwargs) -> Val:
    """softmax / log_softmax over each image's own entries (:func:`~masked_torch.functional.masked_softmax`:
    padded entries get no weight); normalize along a dim where the mask must not vary."""
    (x,) = rw.masked_args(node, env)
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if not isinstance(dim, int):
        rw.fail(node, "needs an explicit dim")
    if node.target is not F.normalize:
        dtype = kwargs.get("dtype", args[3] if len(args) > 3 and node.target in (F.softmax, F.log_softmax) else None)
        if node.target in (torch.softmax, torch.log_softmax, "softmax", "log_softmax") and len(args) > 2:
            dtype = args[2]
        log = node.target in (F.log_softmax, torch.log_softmax, "log_softmax")
        t = rw.call(MF.masked_softmax, args[0], x.mask, dim, log=log, dtype=dtype)
        return rw.result(node, t, args, kwargs)
    checked = rw.call(check_unmasked_dim, args[0], x.mask, dim, rw.label(node))
    value = rw.g.create_node(node.op, node.target, (checked,) + tuple(args[1:]), kwargs, node.name)
    return Val(value, x.mask, True, False)


# -- the table --

for _ops, _zero, _aten in [
    ((F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.mish, F.leaky_relu, F.elu, F.selu, F.celu, F.hardtanh,
      F.tanh, F.softsign, F.tanhshrink, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.relu, torch.tanh,
      torch.abs, torch.neg, torch.sqrt, torch.square, torch.erf, torch.sin, operator.neg, F.relu_, torch.relu_,
      F.hardtanh_, F.leaky_relu_, F.elu_, F.hardshrink, F.softshrink,
      # stochastic depth multiplies each sample by 0 or 1/(1-p); torch.fx.wrap keeps it whole
      "torchvision.ops.stochastic_depth.stochastic_depth",
      "relu", "relu_", "tanh", "tanh_", "abs", "neg", "sqrt", "square", "erf", "sin", "float", "double", "half",
      "bfloat16", "to", "type", "type_as", "contiguous", "clone", "detach", "requires_grad_", "hardswish"), True, {
        aten.gelu: lambda b: ("call_function", F.gelu, (b["self"],), {"approximate": b.get("approximate", "none")}),
        aten.silu: call(F.silu, "self"), aten.silu_: inplace(F.silu),
        aten.hardswish: call(F.hardswish, "self"), aten.hardswish_: inplace(F.hardswish),
        aten.mish: call(F.mish, "self"), aten.mish_: inplace(F.mish),
        aten.relu6: call(F.relu6, "self"),
        aten.hardtanh: call(F.hardtanh, "self", "min_val", "max_val"),
        aten.hardtanh_: call(F.hardtanh_, "self", "min_val", "max_val"),
        aten.leaky_relu: call(F.leaky_relu, "self", "negative_slope"),
        aten.leaky_relu_: call(F.leaky_relu_, "self", "negative_slope"),
        aten.elu: lambda b: (("call_function", F.elu, (b["self"], b["alpha"]), {})
                             if b.get("scale", 1) == 1 and b.get("input_scale", 1) == 1
                             else ("call_function", aten.elu.default, (b["self"], b["alpha"], b["scale"],
                                                                        b["input_scale"]), {})),
        aten.dropout: call(F.dropout, "input", "p", "train"),
        aten.dropout_: call(F.dropout, "input", "p", "train", inplace=True),
        aten.feature_dropout: call(F.dropout2d, "input", "p", "train"),
        aten._to_copy: to_method, aten.to: to_method}),
    ((F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid, torch.sigmoid, torch.exp, torch.rsqrt, torch.cos,
      torch.clamp, torch.clip,
      "sigmoid", "sigmoid_", "exp", "rsqrt", "cos", "clamp", "clamp_", "clip", "clamp_min", "clamp_max"), False, {
        aten.hardsigmoid: call(F.hardsigmoid, "self"), aten.hardsigmoid_: inplace(F.hardsigmoid),
        aten.softplus: call(F.softplus, "self", "beta", "threshold"),
        aten.log_sigmoid: call(F.logsigmoid, "self")}),
]:
    register(unary, *_ops, aten=_aten, keeps_zero=_zero)

for _op, _targets in {
    "add": (operator.add, operator.iadd, torch.add, torch.maximum, torch.minimum, "add", "add_", "maximum",
            "minimum"),
    "sub": (operator.sub, operator.isub, torch.sub, torch.subtract, "sub", "sub_"),
    "mul": (operator.mul, operator.imul, torch.mul, torch.multiply, "mul", "mul_"),
    "div": (operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_"),
    "pow": (operator.pow, torch.pow, "pow"),
}.items():
    register(binary, *_targets, aten={aten.rsub: rsub} if _op == "sub" else None, op=_op)

register(along_dim, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.normalize, "softmax",
         "log_softmax", aten={aten._softmax: call(torch.softmax, "self", "dim"),
                              aten._log_softmax: call(torch.log_softmax, "self", "dim")})
