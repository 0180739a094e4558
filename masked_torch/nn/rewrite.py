"""The walk over a captured plain graph that carries a mask beside every value: the shape/canvas analysis
here, the mask rule of each op in :mod:`.rules`.

Values under the mask: the converted model zeroes its input there once; every masked layer keeps its output
exactly 0 there, and an elementwise op that does not map 0 to 0 (a sigmoid, ``x + 1``, a division) marks its
result *dirty*: it is zeroed only where a layer or the output needs it, not after every op.

Shapes: the batch size and channel count (dims 0 and 1) of a masked tensor are each image's too. A spatial size
is the padded canvas's: it may flow, through integer arithmetic, into the shape arguments of a view or reshape
of a masked tensor, or into an op whose rule takes it (``interpolate(size=...)``, resized per image; a pooling
window of the whole map); any other use is refused at conversion.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import operator
from typing import Any, Callable, Optional

import torch
from torch import fx, nn

from .. import functional as MF
from .base import MaskedModule
from .capture_fx import _describe, _is_metadata_read, _is_shape_read
from .container import Masked, Unmasked
from .elementwise import is_elementwise
from .rules import Val, rule_for
from .rules.layout import lead
from .runtime import enter, fit_mask, refit_mask

__all__ = ["Rewriter"]


def _broadcasts_mask(module: nn.Module) -> bool:
    """Layers that act on each position (in any layout) and take a mask that merely broadcasts."""
    from .linear import MaskedFlatten, MaskedLinear
    from .norm import MaskedLayerNorm

    inner = module.module if isinstance(module, Unmasked) else module
    return isinstance(module, (Masked, MaskedLinear, MaskedLayerNorm, MaskedFlatten)) or isinstance(
        inner, (nn.Linear, nn.LayerNorm, nn.Flatten)) or (isinstance(module, Unmasked) and is_elementwise(inner))


def _pure(node: fx.Node) -> bool:
    """An ATen op that mutates nothing, or a torch tensor factory: without users, it can be left out."""
    schema = getattr(node.target, "_schema", None)
    if schema is not None:
        return not schema.is_mutable
    return node.op == "call_function" and node.target in (torch.empty, torch.zeros, torch.ones, torch.full,
                                                           torch.rand, torch.randn)


class Rewriter:
    """Rewrites a captured plain graph into the masked one: ``Rewriter(root, kind, options, name).run(graph)``.
    Rules (:mod:`.rules`) call its helpers (``call``, ``get``, ``clean``, ``copy_node``, ``result``, ``bind``,
    ``label``, ``fail``)."""

    def __init__(self, root: nn.Module, kind: str, options: dict, name: str) -> None:
        self.root, self.kind, self.options, self.name = root, kind, options, name
        self.model = type(root).__name__
        self.plain = kind == "plain"
        self.recipes: dict = {}  # size node of the new graph -> how each image's own size is computed

    _UNKNOWN = ("unknown",)

    # -- helpers --
    def call(self, fn: Callable, *args, **kwargs) -> fx.Node:
        return self.g.call_function(fn, args, kwargs)

    def get(self, i: int, t: fx.Node) -> fx.Node:
        return self.g.call_function(operator.getitem, (t, i))

    def clean(self, v: Val) -> Any:
        """The value, zeroed under its mask if it is dirty (masked kinds)."""
        if self.plain or not v.masked or v.clean:
            return v.value
        return self.call(MF.zero_masked, v.value, v.mask)

    def label(self, node: fx.Node) -> str:
        """How errors raised while the converted model runs name the op: ``convert(Model): node ... in ...``."""
        return f"{self.name}: {_describe(node, self.model)}"

    def fail(self, node: fx.Node, why: str, exc=TypeError):
        raise exc(f"convert: {_describe(node, self.model)}: {why}")

    # -- the walk --
    def run(self, graph: fx.Graph) -> fx.Graph:
        self.g = fx.Graph()
        env: dict[fx.Node, Val] = {}
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if not placeholders:
            raise TypeError(f"convert: {self.name}.forward takes no input")
        taken = {n.target for n in placeholders}
        mask_name = "mask" if "mask" not in taken else "input_mask"
        for node in graph.nodes:
            if node.op == "placeholder":
                default = node.args[0] if node.args else inspect.Parameter.empty
                ph = self.g.placeholder(node.target, default_value=default)
                if node is placeholders[0]:
                    mask_ph = self.g.placeholder(mask_name)  # forward() gives it its default
                    t = self.call(enter, ph, mask_ph, not self.plain, self.name)
                    env[node] = Val(self.get(0, t), self.get(1, t), True, True)
                else:
                    env[node] = Val(ph)
            elif node.op == "get_attr":
                env[node] = Val(self.g.get_attr(node.target))
            elif node.op == "output":
                self.output(node, env)
            else:
                env[node] = self.node(node, env)
        self.g.lint()
        return self.g

    def output(self, node: fx.Node, env: dict) -> None:
        out = fx.map_arg(node.args[0], lambda n: self.clean(env[n]))
        masks = fx.map_arg(node.args[0], lambda n: env[n].mask if env[n].masked else None)
        self.g.output((out, masks))

    def node(self, node: fx.Node, env: dict) -> Val:
        out = self._node(node, env)
        if node.op == "call_function" and node.target in self._INT_OPS:
            self._recipe_op(node, env, out)
        return out

    def _node(self, node: fx.Node, env: dict) -> Val:
        vals = []
        fx.map_arg((node.args, node.kwargs), lambda n: vals.append(env[n]))
        masked = any(v.masked for v in vals)
        args = fx.map_arg(node.args, lambda n: env[n].value)
        kwargs = fx.map_arg(node.kwargs, lambda n: env[n].value)
        if node.op == "call_function" and node.target is operator.getitem and vals and vals[0].shape_of is not None:
            return self.shape_index(node, vals[0], args, kwargs)
        tainted = [v.canvas for v in vals if v.canvas is not None]
        if tainted:
            use = self.canvas_use(node, env, args, kwargs, tainted)
            if use is not None:
                return use
        if not masked:  # constants, parameters, random tensors: as they are
            if node.op == "call_module" and isinstance(self.root.get_submodule(node.target), MaskedModule):
                return Val(self.get(0, self.g.call_module(node.target, args, kwargs)))
            return Val(self.g.create_node(node.op, node.target, args, kwargs, node.name))
        if any(v.lead for v in vals) and not _is_metadata_read(node):
            return lead(self, node, env, args, kwargs, rule_for(node))
        if _is_shape_read(node):
            return self.shape_read(node, env, args, kwargs)
        if _is_metadata_read(node):
            return Val(self.copy_node(node, args, kwargs))
        if isinstance(node.target, type) and (issubclass(node.target, tuple) and hasattr(node.target, "_fields")
                                              or dataclasses.is_dataclass(node.target)):
            return self.namedtuple(node, env, args, kwargs)
        if node.op == "call_module":
            return self.module(node, env, args, kwargs)
        rule = rule_for(node)
        if rule is None:
            self.fail(node, "no mask rule for this op on a masked tensor; supported are the layers and functions "
                            "a CNN is made of (see masked_torch.nn.convert; add one with "
                            "masked_torch.nn.register_rule)")
        return rule.fn(self, node, env, args, kwargs, **rule.options)

    # -- shapes --
    #
    # The batch size and channel count (dims 0 and 1) of a masked tensor are each image's too. A spatial size
    # is the padded canvas's: it may flow, through integer arithmetic, into the shape arguments of a view or
    # reshape of a masked tensor (where it only names the tensor's own dims), or, unchanged, into
    # ``interpolate(size=...)`` (resized per image); any other use is refused at conversion.

    def shape_read(self, node, env, args, kwargs) -> Val:
        source = env[node.args[0]]
        value = self.g.create_node(node.op, node.target, args, kwargs, node.name)
        if node.op == "call_method" and node.target == "size" and (len(args) > 1 or kwargs):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if isinstance(dim, int):
                self.recipes[value] = ("size", source.mask if source.masked else None, dim, value)
            if isinstance(dim, int) and dim in (0, 1):
                return Val(value)
            return Val(value, canvas=(source, node, True))
        if (node.op == "call_function" and node.target is getattr and node.args[1] == "shape") or (
                node.op == "call_method" and node.target == "size"):
            return Val(value, shape_of=source)
        return Val(value)  # dim(), ndim: the rank

    def shape_index(self, node, shape: Val, args, kwargs) -> Val:
        value = self.copy_node(node, args, kwargs)
        index = node.args[1]
        if isinstance(index, int):
            source = shape.shape_of
            self.recipes[value] = ("size", source.mask if source.masked else None, index, value)
        if isinstance(index, slice):
            batch_or_channels = ((index.start or 0) >= 0 and index.stop is not None and 0 <= index.stop <= 2
                                 and index.step in (None, 1))
        else:
            batch_or_channels = isinstance(index, int) and index in (0, 1)
        return Val(value) if batch_or_channels else Val(value, canvas=(shape.shape_of, node, True))

    _INT_OPS = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
                operator.neg, operator.pow, operator.getitem, math.floor, math.ceil, int}

    # Each image's own sizes: beside a size read from a masked tensor (the canvas's), a recipe of each image's own
    # (``("size", mask, dim, canvas size)``), carried through integer arithmetic, that a reshape evaluates where it
    # reshapes each image alone (:func:`~masked_torch.functional.masked_reshape`); nothing is computed elsewhere.
    _RECIPE_OPS = {operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.floordiv: "floordiv",
                   operator.mod: "mod", operator.neg: "neg"}

    def recipe(self, item, env: dict):
        """How each image's own value of the size ``item`` (a captured node's argument) is computed: its recipe,
        the value itself where it is the same for every image, ``None`` where it is a canvas size that the
        recipes cannot follow."""
        if not isinstance(item, fx.Node):
            return item
        v = env[item]
        found = self.recipes.get(v.value) if isinstance(v.value, fx.Node) else None
        if found is self._UNKNOWN:
            return None
        if found is not None:
            return found
        return None if v.canvas is not None else v.value

    def _recipe_op(self, node, env, out: Val) -> None:
        if not isinstance(out.value, fx.Node) or not any(
                isinstance(env[n].value, fx.Node) and env[n].value in self.recipes for n in node.all_input_nodes):
            return
        op = self._RECIPE_OPS.get(node.target)
        parts = [self.recipe(a, env) for a in node.args]
        if node.target is int and len(parts) == 1 and not node.kwargs and parts[0] is not None:
            self.recipes[out.value] = parts[0]  # int() of a size: the same size
            return
        if op is None or node.kwargs or any(p is None for p in parts) or any(
                not isinstance(p, (int, tuple, fx.Node)) for p in parts):
            self.recipes[out.value] = self._UNKNOWN
        else:
            self.recipes[out.value] = (op, *parts)

    def canvas_use(self, node, env, args, kwargs, tainted) -> Optional[Val]:
        """A node that uses a spatial size: arithmetic on it (tainted in turn), a reshape of a masked tensor
        (allowed: ``None`` goes on to the usual rule), ``interpolate(size=...)`` (per image), or a refusal."""
        source, read, _ = tainted[0]
        if node.op == "call_function" and node.target in self._INT_OPS and not any(
                env[n].masked for n in node.all_input_nodes):
            exact = node.target in (operator.getitem, int) and len(node.args) <= 2 and tainted[0][2]
            return Val(self.copy_node(node, args, kwargs), canvas=(source, read, exact))
        rule = rule_for(node)
        if rule is not None and rule.canvas is not None:
            use = rule.canvas(self, node, env, args, kwargs, **rule.options)
            if use is not NotImplemented:
                return use
        if not node.users and _pure(node):  # a tensor nobody reads (smp's empty placeholder feature): dropped
            return Val(None)
        self.fail(node, f"uses a spatial size of a masked tensor (read at node {read.name!r}): that is the padded "
                        f"canvas's size, not each image's. Only dims 0 and 1 (batch, channels) may be read; a "
                        f"spatial size may only shape a view/reshape of a masked tensor or be an "
                        f"interpolate(size=...) target", ValueError)

    def namedtuple(self, node, env, args, kwargs) -> Val:
        """A namedtuple or dataclass of outputs (Inception's ``InceptionOutputs``, a ``ModelOutput``): the same
        structure of their masks."""
        mask_of = lambda n: env[n].mask if env[n].masked else None  # noqa: E731
        masks = self.g.create_node(node.op, node.target, fx.map_arg(node.args, mask_of),
                                   fx.map_arg(node.kwargs, mask_of))
        value_of = lambda n: self.clean(env[n])  # noqa: E731  (its fields are zeroed as they go in)
        value = self.g.create_node(node.op, node.target, fx.map_arg(node.args, value_of),
                                   fx.map_arg(node.kwargs, value_of), node.name)
        return Val(value, masks, True, True)

    # -- layers --
    def module(self, node, env, args, kwargs) -> Val:
        module = self.root.get_submodule(node.target)
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            self.fail(node, "a masked layer takes one input")
        x = env[node.args[0]]
        value = self.clean(x)
        if not _broadcasts_mask(module):  # a layer over (N, C, *spatial) that needs the mask's full extent
            t = self.g.call_module(node.target, (value, self.call(fit_mask, x.mask, value)))
            return Val(self.get(0, t), self.call(refit_mask, self.get(1, t), x.mask, value), True, True)
        t = self.g.call_module(node.target, (value, x.mask))
        return Val(self.get(0, t), self.get(1, t), True, True)

    # -- what rules call --
    def copy_node(self, node, args, kwargs) -> fx.Node:
        return self.g.create_node(node.op, node.target, args, kwargs, node.name)

    def masked_args(self, node, env) -> list[Val]:
        out = []
        fx.map_arg((node.args, node.kwargs), lambda n: out.append(env[n]) if env[n].masked else None)
        return out

    def result(self, node, t: fx.Node, args, kwargs, clean: bool = True) -> Val:
        """``t = (value, mask)`` from a mask rule; the plain kind keeps the plain op's value."""
        value = self.copy_node(node, args, kwargs) if self.plain else self.get(0, t)
        return Val(value, self.get(1, t), True, clean)

    def bind(self, node, signature, args, kwargs) -> dict:
        """The node's arguments bound to ``signature`` (refused, naming the node, where they do not fit)."""
        try:
            return signature.bind(*args, **kwargs).arguments
        except TypeError as exc:
            self.fail(node, f"unexpected arguments ({exc})")
