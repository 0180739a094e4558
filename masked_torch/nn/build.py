"""Conversion of a whole model: capture (``torch.fx`` first, ``torch.export`` where fx fails or parts from the
model), the check of a capture against the model, the swap of layers and the rewrite into a
:class:`~masked_torch.nn.graph_module.MaskedGraphModule`.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, fx, nn

from .capture_export import export_capture
from .capture_fx import _drop_unused_shape_reads, _trace
from .check import CaptureError, CaptureMismatch, check_capture
from .graph_module import MaskedGraphModule
from .registry import convert_module, shared_copy
from .rewrite import Rewriter

__all__ = ["convert_graph"]


def _swap_layers(root: nn.Module, graphs: list[fx.Graph], kind: str, options: dict, share: bool) -> None:
    """Replace every layer the graphs call with its masked counterpart, in place, under the same name."""
    done = set()
    for graph in graphs:
        for node in graph.nodes:
            if node.op != "call_module" or node.target in done:
                continue
            done.add(node.target)
            module = root.get_submodule(node.target)
            new = convert_module(module, kind, options, node.target, share)
            if kind != "plain" and hasattr(new, "input_zeroed"):
                new.input_zeroed = True
            parent, _, child = node.target.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, child, new)


def _plain_graphs(pre: nn.Module, front: str, example: Optional[Tensor], name: str) -> tuple[dict, Any]:
    """The model's graphs in eval and train mode, ``{training: graph}`` (one graph where they agree), and the
    output structure (``None``: the graph returns it as it is)."""
    if front == "fx":
        graphs, spec = {False: _trace(pre, False), True: _trace(pre, True)}, None
        for g in graphs.values():
            _drop_unused_shape_reads(g)
    else:
        graphs, spec = {}, None
        for training in (False, True):
            graphs[training], spec = export_capture(pre, training, example, name)
    if graphs[False].python_code("self").src == graphs[True].python_code("self").src:
        graphs[True] = graphs[False]
    return graphs, spec


def _rewrite(pre: nn.Module, graphs: dict, spec, kind: str, options: dict, name: str,
             front: str) -> MaskedGraphModule:
    root = shared_copy(pre, True)
    _swap_layers(root, list(dict.fromkeys(graphs.values())), kind, options, True)
    rewritten = {}
    for training, graph in graphs.items():
        if training and graph is graphs[False]:
            rewritten[True] = rewritten[False]
            continue
        rewritten[training] = Rewriter(root, kind, options, f"Masked{name}").run(graph)
    return MaskedGraphModule(root, rewritten, f"Masked{name}", spec, front).train(pre.training)


def _mismatch(front: str, name: str, exc: CaptureMismatch) -> ValueError:
    other = "export" if front == "fx" else "fx"
    why = str(exc).splitlines()[0]  # fx's interpreter adds notes on the lines after
    return ValueError(f"convert: the torch.{front} capture of {name} {why}: its graph does not compute what "
                      f"{name}.forward computes; try capture={other!r}")


def _build(pre: nn.Module, how: dict, example: Optional[Tensor], others: Optional[dict] = None,
           ) -> Optional[MaskedGraphModule]:
    """Capture (fx first where ``capture="auto"``), check on ``example``, rewrite. ``None``: built already,
    the check passed."""
    name, kind, options, capture, check = how["name"], how["kind"], how["options"], how["capture"], how["check"]
    if "graph" in how:  # built by fx at conversion; its check waited for a batch
        try:
            check_capture(pre, how["graph"], example, how["spec"], how["front"], name, others)
            return None
        except CaptureMismatch as exc:
            if capture != "auto":
                raise _mismatch(how["front"], name, exc) from None
            fx_error = _mismatch("fx", name, exc)
        fronts = ["export"]
    else:
        fx_error = how.get("fx_error")
        fronts = how.get("fronts") or (["fx", "export"] if capture == "auto" else [capture])
    for front in fronts:
        if front == "export" and example is None:
            return None  # captured on the first call
        try:
            graphs, spec = _plain_graphs(pre, front, example, name)
            if check and example is not None:
                check_capture(pre, graphs[False], example, spec, front, name, others)
            return _rewrite(pre, graphs, spec, kind, options, name, front)
        except CaptureMismatch as exc:
            error = _mismatch(front, name, exc)
        except (TypeError, ValueError) as exc:
            if front == "export" or capture != "auto" or not isinstance(exc, CaptureError):
                if fx_error is not None:  # both front ends failed: say why each did
                    fx_why = str(fx_error).removeprefix("convert: ").split(". Masks follow")[0]
                    raise type(exc)(f"{exc} (and torch.fx: {fx_why})") from None
                raise
            error = exc
        if front == "fx":
            fx_error = error
    raise error


def convert_graph(model: nn.Module, kind: str, options: dict, share: bool = False, *, capture: str = "auto",
                  example: Optional[Tensor] = None, check: bool = True) -> MaskedGraphModule:
    """The masked copy of a model captured by ``torch.fx`` or ``torch.export`` (see
    :func:`masked_torch.nn.convert`; ``share``: its ``inplace=True``)."""
    pre = shared_copy(model, share)
    name = type(model).__name__
    how = dict(pre=pre, name=name, kind=kind, options=options, capture=capture, check=check, build=_build)
    if example is not None:
        return _build(pre, how, example)
    if capture == "export":
        out = MaskedGraphModule(pre, None, f"Masked{name}")
        out._pending = how
        return out
    try:
        graphs, spec = _plain_graphs(pre, "fx", None, name)
        out = _rewrite(pre, graphs, spec, kind, options, name, "fx")
    except CaptureError as exc:  # fx cannot trace it (an op without a rule, or one that depends on the canvas,
        if capture == "fx":      # is refused at conversion, whatever captures it)
            raise
        out = MaskedGraphModule(pre, None, f"Masked{name}")  # torch.export captures it on the first call
        out._pending = dict(how, fronts=["export"], fx_error=exc)
        return out
    if check:
        out._pending = dict(how, graph=graphs[False], spec=spec, front="fx")
    return out
