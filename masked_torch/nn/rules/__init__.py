"""The mask rules of the converter, one per op, for both front ends (``torch.fx`` and ``torch.export``).

Each rule is written once and filed (:func:`register`) under every way its op appears: torch functions,
Tensor method names, ATen ops, and the ``nn.Module`` types of the op's layers (with the masked layer that stands
for each). The built-in rules live in :mod:`.elementwise`, :mod:`.reduce`, :mod:`.layers`, :mod:`.layout` and
:mod:`.attention`;
:mod:`.aten` turns the ATen calls of a ``torch.export`` capture into the torch function or Tensor method whose
rule they take. Users add rules with :func:`register_elementwise` and :func:`register_rule`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from . import attention, elementwise, layers, layout, reduce  # noqa: F401  (they fill the table)
from .aten import ATEN, VALUES_ONLY, aten_to_torch, register_aten
from .elementwise import unary
from .table import FUNCTIONS, METHODS, NAMED, Rule, Val, register, rule_for, sig

__all__ = ["ATEN", "VALUES_ONLY", "Rule", "Val", "aten_to_torch", "register", "register_aten",
           "register_elementwise", "register_rule", "rule_for", "sig"]


def register_elementwise(fn: Any, *, preserves_zero: bool) -> Any:
    """Declare an op as acting on each entry alone, so that :func:`~masked_torch.nn.convert` passes its
    input's mask on. ``fn``: a torch function (typically one kept whole by ``torch.fx.wrap``), a Tensor method
    name (``"my_method"``), or an ATen op (``torch.ops.mylib.op``, as a ``torch.export`` capture records a custom
    op); its masked operand is its first argument. ``preserves_zero``: ``fn(0) == 0`` (else its result is
    zeroed under the mask where a layer or the output needs it). Returns ``fn``."""
    register(unary, fn, keeps_zero=bool(preserves_zero))
    return fn


def _rule_of(op: Any) -> Rule:
    key = op if isinstance(op, str) else getattr(op, "overloadpacket", op)
    found = (METHODS if isinstance(op, str) and "." not in op else NAMED if isinstance(op, str) else FUNCTIONS).get(key)
    if found is None:
        raise ValueError(f"register_rule: {op!r} has no mask rule to share")
    return found


def register_rule(*targets: Any, rule: Optional[Callable] = None, like: Any = None, aten: Optional[dict] = None,
                  layer: Optional[type] = None, **options) -> Callable:
    """File a mask rule under ``targets`` (torch functions, Tensor method names, ATen ops such as
    ``torch.ops.mylib.op``, layer types), as the built-in rules are filed.

    ``layer=MaskedMyLayer`` with a layer type ``MyLayer`` among the targets: ``convert`` swaps each captured
    call of a ``MyLayer`` for ``MaskedMyLayer.from_plain(module)`` (weights then loaded strictly from the
    plain layer), a module whose ``forward(input, mask=None) -> (output, mask)`` is the rule. A layer type
    alone needs no ``rule``/``like``.

    ``like=op``: the rule of ``op`` (a function with the same arguments). ``rule=fn``: a rule of one's own,
    ``fn(rw, node, env, args, kwargs, **options) -> Val`` (see :mod:`masked_torch.nn.rules.table`); without
    ``rule`` or ``like``, ``register_rule`` is a decorator. ``aten``: ``{ATen packet: adapter}`` turning an ATen
    call into one of ``targets`` (:func:`register_aten`). Returns the rule (the decorated function).

    Example: a function that ``torch.fx.wrap`` keeps whole and that resizes like ``F.interpolate``::

        @torch.fx.wrap
        def resize(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
            return F.interpolate(x, size, scale_factor, mode, align_corners)

        mnn.register_rule(resize, like=F.interpolate)

    and a rule of one's own (a per-sample gate ``x * g`` where ``g`` is ``(N, C, 1, 1)``, unmasked)::

        @mnn.register_rule(gate)
        def gate_rule(rw, node, env, args, kwargs):
            x = env[node.args[0]]  # the masked operand's Val: value, mask, clean
            return Val(rw.copy_node(node, args, kwargs), x.mask, True, x.clean)
    """
    if rule is not None and like is not None:
        raise TypeError("register_rule: give rule= or like=, not both")
    layers = [t for t in targets if isinstance(t, type) and issubclass(t, torch.nn.Module)]
    if layers:
        if layer is None or not hasattr(layer, "from_plain"):
            raise TypeError(f"register_rule: the layer type {layers[0].__name__} needs layer=, a masked layer class "
                            f"with a from_plain(module) classmethod")
        register(None, *layers, layer=layer)
        targets = tuple(t for t in targets if t not in layers)
        if not targets:
            return layer
    if like is not None:
        found = _rule_of(like)
        register(found.fn, *targets, canvas=found.canvas, aten=aten, **{**found.options, **options})
        return found.fn
    if rule is not None:
        return register(rule, *targets, aten=aten, **options)
    return lambda fn: register(fn, *targets, aten=aten, **options)
