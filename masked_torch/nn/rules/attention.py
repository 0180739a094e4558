"""Rules of the ops of attention: matrix products of masked tensors (``q @ k.transpose(-2, -1)``, ``attn @ v``).
The softmax along a dim where the mask varies is :func:`.elementwise.along_dim`."""
from __future__ import annotations

import operator

import torch
from torch import fx

from ... import functional as MF
from .aten import aten
from .table import Val, register

__all__ = ["matmul"]


def matmul(rw, node, env, args, kwargs) -> Val:
    """``a @ b``: each image's own product (:func:`~masked_torch.functional.masked_matmul`)."""
    operands = list(node.args[:2]) + [node.kwargs[k] for k in ("input", "other", "mat2") if k in node.kwargs]
    if len(operands) != 2 or (node.kwargs and set(node.kwargs) - {"input", "other", "mat2"}):
        rw.fail(node, "a matrix product takes two operands")
    vals = [env[o] if isinstance(o, fx.Node) else Val(o) for o in operands]
    values = [v.value for v in vals]  # masked_matmul selects the valid entries itself (dirty or not)
    masks = [v.mask if v.masked else None for v in vals]
    t = rw.call(MF.masked_matmul, values[0], masks[0], values[1], masks[1], name=rw.label(node))
    return rw.result(node, t, args, kwargs)


register(matmul, torch.matmul, torch.bmm, operator.matmul, "matmul", "bmm", "__matmul__",
         aten={aten.mm: lambda b: ("call_function", torch.matmul, (b["self"], b["mat2"]), {})})
