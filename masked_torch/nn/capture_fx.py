"""The ``torch.fx`` front end: the model's forward traced symbolically, layers with a mask rule kept whole.

Also what both front ends' graphs are read with: which nodes read a shape or metadata, and how a node is named in
an error (:func:`_describe`).
"""
from __future__ import annotations

import operator

from torch import fx, nn
from torch.fx import _symbolic_trace

from .check import CaptureError
from .registry import has_rule


class _Tracer(fx.Tracer):
    """Layers with a mask rule are leaves; everything else (the model's own blocks, and plain ``torch.nn``
    modules without a rule) is traced through, down to functions that need a rule of their own.

    ``int(x.size(2))`` in a forward is recorded as a call of ``int`` (a size passed on as a Python number, as
    model code does before resizing onto a skip), as ``torch.fx.wrap("int")`` at the top of each forward's
    module would: fx cannot make a Proxy a number."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return has_rule(m)

    def trace(self, root, concrete_args=None):
        table = getattr(_symbolic_trace, "_wrapped_fns_to_patch", None)
        added = []
        if isinstance(table, dict) and isinstance(root, nn.Module):
            for m in root.modules():
                scope = getattr(type(m).forward, "__globals__", None)
                if isinstance(scope, dict) and "int" not in scope and (id(scope), "int") not in table:
                    table[(id(scope), "int")] = scope
                    added.append((id(scope), "int"))
        try:
            return super().trace(root, concrete_args)
        finally:
            for key in added:
                table.pop(key, None)


def _trace(root: nn.Module, training: bool) -> fx.Graph:
    modes = {m: m.training for m in root.modules()}
    root.train(training)
    tracer = _Tracer()
    try:
        return tracer.trace(root)
    except Exception as exc:  # fx raises TraceError, TypeError, AttributeError, ... from user code
        stack = list(getattr(tracer, "module_stack", {}).values())
        where = ""
        if stack and isinstance(stack[-1], tuple) and stack[-1][0]:
            where = f" in module {stack[-1][0]!r} ({getattr(stack[-1][1], '__name__', stack[-1][1])})"
        raise CaptureError(
            f"convert: cannot trace {type(root).__name__} with torch.fx{where} ({type(exc).__name__}: {exc}). Masks follow "
            f"the model's graph, so forward must be traceable: no Python control flow on tensor values or "
            f"spatial sizes. Move such code out of forward, or convert the traceable submodules one by one "
            f"with masked_torch.nn.convert"
        ) from None
    finally:
        for m, mode in modes.items():
            m.training = mode


def _describe(node: fx.Node, model: str) -> str:
    """``node 'add_3' (call_function add) in module 'layer1.0' (BasicBlock)``"""
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if node.op == "call_module":
        where = f"module {node.target!r}"
    elif stack and isinstance(stack[-1], tuple) and stack[-1][0]:
        path, cls = stack[-1][0], stack[-1][1]
        where = f"module {path!r} ({getattr(cls, '__name__', cls)})"
    else:
        where = f"{model}.forward"
    return f"node {node.name!r} ({node.op} {target}) in {where}"


_SHAPE_READS = {"size", "dim", "ndimension"}


_METADATA = {"device", "dtype", "ndim", "is_cuda", "layout", "requires_grad", "is_floating_point", "is_complex",
             "element_size", "get_device", "is_contiguous"}


def _is_metadata_read(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target is getattr and node.args[1] in _METADATA)
            or (node.op == "call_method" and node.target in _METADATA))


def _is_shape_read(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim"))
            or (node.op == "call_method" and node.target in _SHAPE_READS))


def _drop_unused_shape_reads(graph: fx.Graph) -> None:
    """``b, c, h, w = x.shape`` with ``h, w`` unused: drop the unused reads (and nothing else)."""
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph.nodes)):
            if node.users:
                continue
            pure = _is_shape_read(node) or (
                node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node)
                and _is_shape_read(node.args[0]))
            if pure:
                graph.erase_node(node)
                changed = True
