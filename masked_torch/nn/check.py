"""A capture checked against the model: the captured plain graph and the eager forward on the same input.

Both run in eval mode without gradients, on the same modules and weights. Each layer call of the graph is
compared with the same call (same module, same call count) of the eager forward, in graph order, so that a
capture that parts from the model is named at the first layer where it does; then the outputs. Values agree
within ``sqrt(eps)`` of their dtype relative to the largest magnitude (the same ops in another order differ by a
few ``eps``; a capture that computes something else differs by far more, or fails to run). The first two
samples of the example are enough: what a graph computes does not depend on the batch size.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

import torch
from torch import Tensor, fx, nn

from .outputs import flatten_output, unflatten_output

__all__ = ["CaptureError", "CaptureMismatch", "check_capture"]


class CaptureError(TypeError):
    """A front end cannot capture the model's forward (``torch.fx`` cannot trace it, ``torch.export`` fails)."""


class CaptureMismatch(Exception):
    """The captured graph does not compute what the model's forward computes (the message names where)."""


def _close(a: Any, b: Any) -> bool:
    la, _ = flatten_output(a)
    lb, _ = flatten_output(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return False
            continue
        if not torch.equal(x.isnan(), y.isnan()):
            return False
        diff = (x.detach() - y.detach()).nan_to_num(0.0).abs()
        scale = y.detach().nan_to_num(0.0).abs()
        if diff.numel() and float(diff.amax()) > torch.finfo(x.dtype).eps ** 0.5 * max(1.0, float(scale.amax())):
            return False
    return True


def _same_structure(a: Any, b: Any) -> bool:
    try:
        return bool(flatten_output(a)[1] == flatten_output(b)[1])
    except Exception:  # a constant in the output that does not compare: the tensors were compared already
        return True


def _copy(out: Any) -> Any:
    """A layer's output as it was when the layer returned (a later in-place op would change it)."""
    leaves, spec = flatten_output(out)
    return unflatten_output([t.clone() for t in leaves], spec)


_DEFAULT = fx.interpreter.Interpreter  # stands for "not given": the placeholder's default applies


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, eager: dict) -> None:
        super().__init__(gm)
        self.eager, self.count = eager, defaultdict(int)
        self.node: Optional[fx.Node] = None

    def placeholder(self, target, args, kwargs):
        value = super().placeholder(target, args, kwargs)
        return args[0] if value is _DEFAULT and args else value

    def run_node(self, n: fx.Node) -> Any:
        self.node = n
        out = super().run_node(n)
        if n.op == "call_module":
            i = self.count[n.target]
            self.count[n.target] += 1
            calls = self.eager.get(n.target, [])
            if i >= len(calls) or not _close(out, calls[i]):
                raise CaptureMismatch(f"differs from the model's forward at node {n.name!r} (call of module "
                                      f"{n.target!r})")
        return out


def check_capture(root: nn.Module, graph: fx.Graph, example: Tensor, spec, front: str, name: str,
                  others: Optional[dict] = None) -> None:
    """Raise :class:`CaptureMismatch` where the plain ``graph`` (over ``root``'s modules) does not compute what
    ``root``'s forward computes on ``example``."""
    if not others and example.dim() > 0 and example.shape[0] > 2:
        example = example[:2]  # what a capture computes does not depend on the batch size; two samples, not one,
        # so that code that treats a batch of one apart runs as it does on batches
    calls: dict = defaultdict(list)
    paths = {n.target for n in graph.nodes if n.op == "call_module"}
    hooks = [root.get_submodule(p).register_forward_hook(
        lambda m, a, out, p=p: calls[p].append(_copy(out))) for p in paths]
    modes = {m: m.training for m in root.modules()}
    root.eval()
    try:
        with torch.no_grad():
            try:
                expected = root(example, **(others or {}))
            except Exception as exc:  # the model's own forward on the check input: nothing to compare with
                raise CaptureMismatch(f"the model itself fails on the check input ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
            for h in hooks:
                h.remove()
            hooks = []
            gm = fx.GraphModule(root, graph)
            rec = _Recorder(gm, calls)
            try:
                names = [n.target for n in graph.nodes if n.op == "placeholder"][1:]
                out = rec.run(example, *[(others or {}).get(n, _DEFAULT) for n in names])
            except CaptureMismatch:
                raise
            except Exception as exc:
                where = f"at node {rec.node.name!r}" if rec.node is not None else ""
                raise CaptureMismatch(f"fails {where} where the model's forward runs ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
            if spec is not None:
                out = unflatten_output(list(out), spec)
            if not _close(out, expected):
                raise CaptureMismatch("differs from the model's forward in its output")
            if not _same_structure(out, expected):
                raise CaptureMismatch(f"returns a {type(out).__name__} where the model's forward returns a "
                                      f"{type(expected).__name__}")
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
