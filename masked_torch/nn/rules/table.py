"""The rule table: one mask rule per op, registered for every way the op appears in a captured graph.

A rule is a function ``rule(rw, node, env, args, kwargs, **options) -> Val``: ``rw`` is the rewriter (its
helpers: ``rw.call(fn, *args)`` adds a call to the new graph, ``rw.clean(v)`` the value zeroed under its mask,
``rw.result(node, t, args, kwargs)`` the value of a ``(value, mask)`` pair, ``rw.fail(node, why)`` refuses, naming
the node), ``node`` the captured node, ``env`` the :class:`Val` of every earlier node, ``args``/``kwargs`` the
node's arguments in the new graph, ``options`` those given at registration (``nd=2``, ``keeps_zero=True``).

:func:`register` files one rule under its targets, like the patterns of ``torch.ao.quantization``'s
``BackendConfig``: a torch function (``F.conv2d``, ``operator.add``), a Tensor method name (``"add_"``), a
function kept whole by ``torch.fx.wrap`` by its dotted name (``"torchvision.ops.stochastic_depth.
stochastic_depth"``), or an ATen op (``torch.ops.mylib.op``, an overload or its packet), which then keeps its
own ATen call in a ``torch.export`` capture; ``aten={packet: adapter}`` instead turns an ATen call into the
torch function the rule reads (:mod:`.aten`); and an ``nn.Module`` type (``nn.Conv2d``), with ``layer=`` the
masked layer that stands for it (``{"masked": ..., "partial": ...}`` where the kinds differ): a captured call of
that layer is swapped for it (its rule is the layer's ``forward``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import fx, nn

from .aten import DIRECT, register_aten

__all__ = ["Val", "Rule", "register", "rule_for", "layer_for", "sig"]


@dataclass
class Val:
    """A value of the rewritten graph: its node (or constant), its mask node (``None``: statically
    unmasked), and whether it is exactly 0 under the mask."""

    value: Any
    mask: Optional[fx.Node] = None
    masked: bool = False
    clean: bool = True
    shape_of: Optional["Val"] = None  # this is ``t.shape`` (or ``t.size()``) of the masked value ``t``
    canvas: Optional[tuple] = None  # a spatial size of a masked value: (source Val, reading node, exact)
    lead: bool = False  # dim 0 is a dim stacked in front of the batch dim (torch.stack(maps).sum(0))


@dataclass(frozen=True)
class Rule:
    """``fn(rw, node, env, args, kwargs, **options)``; ``canvas``: the same call where an argument is a spatial
    size of a masked tensor (``None``: refused; it returns a :class:`Val`, ``None`` to go on to ``fn``, or
    ``NotImplemented`` for the usual refusal)."""

    fn: Callable
    options: dict = field(default_factory=dict)
    canvas: Optional[Callable] = None


FUNCTIONS: dict[Any, Rule] = {}  # torch function, operator, ATen packet
METHODS: dict[str, Rule] = {}  # Tensor method name
NAMED: dict[str, Rule] = {}  # "module.name" of a function that torch.fx.wrap keeps whole
LAYERS: dict[type, dict[str, type]] = {}  # plain nn.Module type -> {"masked": masked layer, "partial": ...}


def _is_aten(target) -> bool:
    return hasattr(target, "_schema") or hasattr(target, "overloads")  # an OpOverload or an OpOverloadPacket


def register(rule: Optional[Callable], *targets, canvas: Optional[Callable] = None, aten: Optional[dict] = None,
             layer: Any = None, **options) -> Optional[Callable]:
    """File ``rule`` (with ``options``) under every target; ``aten``: ``{ATen packet: adapter}`` that turn an
    ATen call into the torch function of the rule; ``layer``: the masked layer of the ``nn.Module`` types among
    the targets (one class, or ``{"masked": cls, "partial": cls}``). Returns ``rule``."""
    entry = Rule(rule, dict(options), canvas)
    for target in targets:
        if isinstance(target, type) and issubclass(target, nn.Module):
            if layer is None:
                raise TypeError(f"register: the layer type {target.__name__} needs layer=, the masked layer that "
                                f"stands for it")
            kinds = dict(layer) if isinstance(layer, dict) else {"masked": layer}
            LAYERS[target] = {"partial": kinds["masked"], **kinds}
        elif rule is None:
            raise TypeError(f"register: {target!r} needs a rule")
        elif isinstance(target, str):
            (NAMED if "." in target else METHODS)[target] = entry
        elif _is_aten(target):
            packet = getattr(target, "overloadpacket", target)
            FUNCTIONS[packet] = entry
            DIRECT.add(packet)
        elif callable(target):
            FUNCTIONS[target] = entry
        else:
            raise TypeError(f"register: a target is a torch function, a Tensor method name, an ATen op or an "
                            f"nn.Module type, got {target!r}")
    for packet, adapt in (aten or {}).items():
        register_aten(packet, adapt)
    return rule


def layer_for(plain: type, kind: str = "masked") -> Optional[type]:
    """The masked layer filed for the plain layer type ``plain`` and ``kind`` (``None`` where there is none)."""
    return LAYERS.get(plain, {}).get(kind)


def rule_for(node: fx.Node) -> Optional[Rule]:
    """The rule filed for what ``node`` calls, or ``None``."""
    if node.op == "call_method":
        return METHODS.get(node.target)
    if node.op != "call_function":
        return None
    target = node.target
    try:
        found = FUNCTIONS.get(target)
    except TypeError:  # an unhashable callable
        return None
    if found is None and _is_aten(target):
        found = FUNCTIONS.get(getattr(target, "overloadpacket", target))
    if found is None:
        found = NAMED.get(f"{getattr(target, '__module__', None)}.{getattr(target, '__name__', None)}")
    return found


def sig(*names_defaults) -> inspect.Signature:
    """The signature a rule binds its node's arguments with: names, ``(name, default)`` pairs."""
    params = []
    for item in names_defaults:
        name, default = item if isinstance(item, tuple) else (item, inspect.Parameter.empty)
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(params)
