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


def _swap_layers(root: nn.Module, graphs: list[fx.Graph], kind: str, options: dict, share: bool,
                 done: Optional[set] = None) -> set:
    """Replace every layer the graphs call with its masked counterpart, in place, under the same name (but
    those in ``done``, swapped already). The paths swapped, ``done`` included."""
    done = set() if done is None else set(done)
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
    return done


def _plain_graph(pre: nn.Module, front: str, example: Optional[Tensor], name: str, training: bool,
                 ) -> tuple[fx.Graph, Any]:
    """The model's graph in eval or train mode and the output structure (``None``: the graph returns it as
    it is)."""
    if front == "fx":
        graph = _trace(pre, training)
        _drop_unused_shape_reads(graph)
        return graph, None
    return export_capture(pre, training, example, name)


def _rewrite(pre: nn.Module, graph: fx.Graph, spec, kind: str, options: dict, name: str, front: str,
             example: Optional[Tensor]) -> MaskedGraphModule:
    """The converted module of the eval-mode ``graph``. Its train-mode graph (:func:`train_graph`): a
    ``torch.export`` capture's when it first runs in train mode (a capture takes seconds), an fx capture's now."""
    root = shared_copy(pre, True)
    swapped = _swap_layers(root, [graph], kind, options, True)
    eval_src = graph.python_code("self").src
    rewritten = Rewriter(root, kind, options, f"Masked{name}").run(graph)
    out = MaskedGraphModule(root, {False: rewritten}, f"Masked{name}", spec, front)
    like = None if example is None else (tuple(example.shape), example.dtype)  # the train capture's example
    out._lazy = dict(pre=pre, front=front, kind=kind, options=options, name=name, spec=spec, swapped=swapped,
                     eval_src=eval_src, like=like, capture=train_graph)
    if front == "fx":  # tracing takes milliseconds, and a forward fx cannot trace in train mode is captured by
        out._capture_train()  # torch.export instead (capture="auto"), at conversion as in eval mode
    return out.train(pre.training)


def train_graph(out: MaskedGraphModule, lazy: dict, example: Optional[Tensor]) -> fx.Graph:
    """The rewritten train-mode graph of ``out`` (converted by :func:`_rewrite`), captured from the plain
    model ``lazy["pre"]`` as the eval-mode graph was (``example``: the input torch.export captures on); the
    eval-mode graph itself where the two captures are the same code. Layers only train mode calls are swapped
    in ``out``."""
    front, name, kind, options = lazy["front"], lazy["name"], lazy["kind"], lazy["options"]
    graph, spec = _plain_graph(lazy["pre"], front, example, name, True)
    if graph.python_code("self").src == lazy["eval_src"]:
        return out._graphs[False]
    if front == "export" and not _same_spec(spec, lazy["spec"]):
        raise ValueError(f"convert: {name}.forward returns another output structure in train mode than in eval "
                         f"mode; masks follow one structure")
    lazy["swapped"] = _swap_layers(out, [graph], kind, options, True, lazy["swapped"])
    return Rewriter(out, kind, options, f"Masked{name}").run(graph)


def _same_spec(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a constant in the output that does not compare
        return True


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
            graph, spec = _plain_graph(pre, front, example, name, False)
            if check and example is not None:
                check_capture(pre, graph, example, spec, front, name, others)
            return _rewrite(pre, graph, spec, kind, options, name, front, example)
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
        graph, spec = _plain_graph(pre, "fx", None, name, False)
        out = _rewrite(pre, graph, spec, kind, options, name, "fx", None)
    except CaptureError as exc:  # fx cannot trace it (an op without a rule, or one that depends on the canvas,
        if capture == "fx":      # is refused at conversion, whatever captures it)
            raise
        out = MaskedGraphModule(pre, None, f"Masked{name}")  # torch.export captures it on the first call
        out._pending = dict(how, fronts=["export"], fx_error=exc)
        return out
    if check:
        out._pending = dict(how, graph=graph, spec=spec, front="fx")
    return out
