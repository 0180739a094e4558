"""The ``torch.export`` front end: a model's forward captured as ATen ops, brought to the form the rewriter reads.

``torch.export`` (non-strict, batch and spatial dims ``Dim.AUTO``) runs the forward's real Python on symbolic
shapes, so shape checks, ``isinstance`` and config code behave as in eager mode. The captured ATen graph is then
brought back to the level of ``torch.fx``'s graphs, so that one set of mask rules serves both front ends:

- each call of a layer that has a masked counterpart (the ATen ops recorded under one entry of a node's
  ``nn_module_stack``) becomes one ``call_module`` node again (the layer is swapped as with fx);
- parameters and buffers become ``get_attr`` nodes under their own names (``state_dict`` keys stay the model's);
- every other ATen op becomes the torch function or Tensor method of its rule (:mod:`.rules`' ATen table);
- the output is flattened; its structure (tuples, dicts, dataclasses) is kept apart (:mod:`.outputs`).

A spatial size that the forward turns into a Python number (``int(h)``) makes ``torch.export`` fix it to the
example's value; such a capture holds only for that canvas size and is refused, naming the dims.
"""
from __future__ import annotations

import functools
import logging
import re
import operator

from typing import Any, Optional

import torch
from torch import Tensor, fx, nn

from .check import CaptureError
from .layers import has_rule
from .outputs import flatten_output
from .rules import VALUES_ONLY, aten_to_torch

__all__ = ["export_capture"]

_DROP = {torch.ops.aten._assert_scalar.default, torch.ops.aten.sym_constrain_range_for_size.default,
         torch.ops.aten._assert_tensor_metadata.default}


def _export(root: nn.Module, example: Tensor, name: str):
    from torch.export import Dim, export

    holder: dict = {}
    forward = root.forward

    @functools.wraps(forward)  # the model's own signature, which torch.export reads
    def flat_forward(*args, **kwargs):
        leaves, spec = flatten_output(forward(*args, **kwargs))
        holder["spec"] = spec
        return tuple(leaves)

    dims = {0: Dim.AUTO, **{d: Dim.AUTO for d in range(2, example.dim())}}
    root.forward = flat_forward
    shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = shapes_log.level
    shapes_log.setLevel(logging.ERROR)  # its warnings (sympy failing to simplify a size) are not the user's
    try:
        ep = export(root, (example,), dynamic_shapes=(dims,), strict=False)
    except Exception as exc:  # torch.export raises many types from user code and from its own checks
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CaptureError(f"convert: cannot capture {name} with torch.export ({type(exc).__name__}: {first})") from None
    finally:
        del root.forward
        shapes_log.setLevel(level)
    return ep, holder["spec"]


def _fixed_sizes(ep, example: Tensor) -> list[str]:
    """Where the capture holds for the example's canvas size only: a spatial dim fixed to its value, or a
    guard that pins an expression of a spatial size to a number (``int(h // 4)`` makes ``(h - 1) // 4 + 1 ==
    10`` a guard and ``10`` a constant of the graph)."""
    user = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in set(ep.graph_signature.user_inputs)]
    shape = user[0].meta["val"].shape
    fixed = [f"dim {d} = {example.shape[d]}" for d in range(2, example.dim()) if isinstance(shape[d], int)]
    for guard in getattr(ep, "_guards_code", None) or []:  # torch.export's guards, as Python source
        dims = {int(d) for d in re.findall(r"size\(\)\[(\d+)\]", guard)}
        if any(d >= 2 for d in dims) and re.search(r"==\s*-?\d+\s*$", guard) and "%" not in guard:
            fixed.append(re.sub(r"L\['\w+'\]\.", "", guard))
    return fixed


def _leaf_of(node: fx.Node, root: nn.Module) -> Optional[tuple[str, str]]:
    """``(call key, module path)`` of the outermost layer with a mask rule that this ATen op belongs to."""
    for key, (path, _cls) in (node.meta.get("nn_module_stack") or {}).items():
        if not path:
            continue
        try:
            module = root.get_submodule(path)
        except AttributeError:
            return None
        if has_rule(module):
            return key, path
    return None


def _groups(graph: fx.Graph, root: nn.Module, owned: dict) -> dict:
    """``{last node: (path, input node, nodes)}`` for each call of a rule layer that is one value in, one out."""
    runs: list = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target is torch.ops.aten.sym_size.int or node.target in _DROP:
            continue
        leaf = _leaf_of(node, root)
        if leaf is None:
            continue
        if runs and runs[-1][0] == leaf[0]:
            runs[-1][2].append(node)
        else:
            runs.append((leaf[0], leaf[1], [node]))
    calls: dict = {}
    for key, _, _ in runs:
        calls[key] = calls.get(key, 0) + 1
    groups = {}
    for key, path, nodes in runs:
        if calls[key] > 1:  # one call split by other ops: leave all of it to the op rules
            continue
        inside = set(nodes)
        inputs = {a for n in nodes for a in n.all_input_nodes if a not in inside
                  and not (a.op == "placeholder" and owned.get(a.name, "").startswith(path + "."))}
        outputs = [n for n in nodes if any(u not in inside for u in n.users)]
        tensor_inputs = [a for a in inputs if isinstance(a.meta.get("val"), Tensor)]
        if len(tensor_inputs) != 1 or len(inputs) != 1 or len(outputs) != 1 or outputs[0] is not nodes[-1]:
            continue
        groups[nodes[-1]] = (path, tensor_inputs[0], inside)
    return groups


def _values_only(node: fx.Node) -> bool:
    return (getattr(node.target, "overloadpacket", None) in VALUES_ONLY and bool(node.users) and all(
        u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0 for u in node.users))


def _export_in_mode(root: nn.Module, training: bool, example: Tensor, name: str):
    modes = {m: m.training for m in root.modules()}
    root.train(training)
    try:
        return _export(root, example, name)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _pins_one(guard: str) -> bool:
    """A guard that a size is 1: torch.export fixes sizes of 1 (a map 1 pixel wide at this canvas size)."""
    return re.search(r"==\s*1\s*$", guard) is not None and not guard.startswith("dim ")


def export_capture(root: nn.Module, training: bool, example: Tensor, name: str) -> tuple[fx.Graph, Any]:
    """The model's forward in ``training`` mode, captured on ``example``: ``(graph, output spec)``.

    Where a map is 1 pixel wide at the example's canvas (a pyramid branch pooled down to 1x1), torch.export
    fixes that size to 1; the capture is then taken on the example in a canvas twice as large each way (the
    padding zero; the same multiples of every stride), where the map is larger, and the caller checks the
    graph against the model on the real example, at its own canvas."""
    ep, spec = _export_in_mode(root, training, example, name)
    fixed = _fixed_sizes(ep, example)
    if fixed and all(_pins_one(f) for f in fixed):
        larger = torch.nn.functional.pad(example, [p for s in reversed(example.shape[2:]) for p in (0, s)])
        ep, spec = _export_in_mode(root, training, larger, name)
        fixed = _fixed_sizes(ep, larger)
    if fixed:
        sizes = "; ".join(fixed[:3])
        raise ValueError(
            f"convert: torch.export fixed a size computed from the spatial size of {name}'s input to its value "
            f"on the example ({sizes}): the capture would hold for this canvas size only. Python arithmetic on a "
            f"size (int(h), a size used as a Python number) does this. Pass sizes on as tensor shapes "
            f"(F.interpolate(y, size=x.shape[-2:]))")
    sig = ep.graph_signature
    owned = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    constants = sig.inputs_to_lifted_tensor_constants
    groups = _groups(ep.graph, root, owned)
    grouped = set().union(*(g[2] for g in groups.values())) if groups else set()

    g = fx.Graph()
    env: dict[fx.Node, Any] = {}
    attrs: dict[str, fx.Node] = {}

    def value(n: fx.Node) -> Any:
        """A node's value in the new graph; a parameter or buffer is read where first used (those of the
        swapped layers never are: the layer reads its own)."""
        if n.op == "placeholder" and n.name in owned:
            if n.name not in attrs:
                attrs[n.name] = g.get_attr(owned[n.name])
            return attrs[n.name]
        return env[n]

    sizes: dict = {}  # the expression of a spatial size -> (the latest tensor of the new graph with it, dim)

    def note_sizes(node: fx.Node, new: fx.Node) -> None:
        val = node.meta.get("val")
        if isinstance(val, Tensor):
            for d in range(2, val.dim()):
                if isinstance(val.shape[d], torch.SymInt):
                    sizes[val.shape[d].node.expr] = (new, d)

    def sized(n: fx.Node) -> Any:
        """:func:`value`, but a size that torch.export computed from the input's sizes (it writes the size of
        ``x`` in ``interpolate(y, size=x.shape[-2:])`` as arithmetic on the input's) is read off the latest
        tensor of that size, as the forward reads it (the same expression of the input's size: for each
        image alone, the same size too)."""
        val = n.meta.get("val")
        if isinstance(val, torch.SymInt) and val.node.expr in sizes:
            tensor, d = sizes[val.node.expr]
            return g.call_method("size", (tensor, d))
        return value(n)

    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in owned:
                continue
            elif node.name in constants:
                target = constants[node.name]
                constant = ep.constants[target]
                attr = "_export_constant_" + target.replace(".", "_")
                root.register_buffer(attr, constant.clone() if isinstance(constant, Tensor) else constant,
                                     persistent=False)
                env[node] = g.get_attr(attr)
            else:
                env[node] = g.placeholder(node.name)
                note_sizes(node, env[node])
        elif node.op == "output":
            g.output(tuple(fx.map_arg(node.args[0], value)))
        elif node in groups:
            path, source, _ = groups[node]
            env[node] = g.call_module(path, (value(source),))
            note_sizes(node, env[node])
        elif node in grouped or node.target in _DROP:
            continue
        elif node.op == "call_function" and _values_only(node):
            # F.adaptive_max_pool2d(x, 1): ATen returns (values, indices) and the model reads [0]
            packet = node.target.overloadpacket
            args = fx.map_arg(node.args, value)
            values = g.call_function(VALUES_ONLY[packet], tuple(args), dict(node.kwargs))
            for user in node.users:
                env[user] = values
        elif node in env:  # a [0] of a values-only op
            continue
        elif node.op == "call_function":
            tensor_op = hasattr(node.target, "overloadpacket") and node.target is not torch.ops.aten.sym_size.int
            args = fx.map_arg(node.args, sized if tensor_op else value)
            kwargs = fx.map_arg(node.kwargs, sized if tensor_op else value)
            op, target, args, kwargs = aten_to_torch(node.target, args, kwargs)
            new = g.create_node(op, target, args, kwargs, node.name)
            new.meta["nn_module_stack"] = node.meta.get("nn_module_stack")
            env[node] = new
            note_sizes(node, new)
        else:
            env[node] = g.node_copy(node, value)
    g.lint()
    return g, spec
