"""The converted model: :class:`MaskedGraphModule` runs the rewritten graph over the plain model's own modules.

It holds the model's module tree (so ``state_dict`` keys are the plain model's) and runs ``forward(input,
mask=None, **other_inputs) -> (output, out_mask)``; its graphs are stored flat when pickled or deep-copied (an
``fx.Graph`` pickles node by node, recursively, which overflows the stack on a deep model).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, fx, nn

from .. import functional as MF
from .base import MaskedModule
from .outputs import unflatten_output

__all__ = ["MaskedGraphModule"]


class MaskedGraphModule(MaskedModule, nn.Module):
    """A converted model: the plain model's modules, parameters and buffers (the same names: a checkpoint
    loads with ``strict=True`` both ways) and ``forward(input, mask=None, **other_inputs) -> (output,
    out_mask)``, where ``out_mask`` has the structure of ``output`` (a tensor, tuple or dict; ``(N, 1)``
    sample validity for outputs without spatial dims). ``mask=None`` runs the plain model's computation.

    ``.graph`` is the rewritten ``torch.fx`` graph of eval mode, ``.graph_train`` that of train mode (the same
    object where training runs the same code), ``.code`` the Python source of the current mode's graph.

    A model captured by ``torch.export`` captures its train-mode graph when it first runs in train mode, as
    ``torch.compile`` does (many converted models only ever run in eval mode, and an export capture of a large model
    takes seconds: 12 of the 30 CPU seconds of DenseNet-121's first call): on the plain model, on an input of the
    eval capture's shape (its dtype and device those of that call's input). Reading ``.graph_train`` (or ``.code``
    in train mode) before then captures it then. Deep copies and saved models keep what the capture needs. A model
    traced by ``torch.fx`` has both graphs from conversion on (tracing takes milliseconds).
    """

    def __init__(self, root: nn.Module, graphs: Optional[dict[bool, fx.Graph]], class_name: str, spec=None,
                 capture: str = "fx") -> None:
        super().__init__()
        self._adopt(root)
        self.training = root.training
        self._class_name = class_name
        self._graphs = graphs or {}
        self._spec = spec
        #: the front end that captured the graph: ``"fx"`` or ``"export"`` (``None`` until the first call)
        self.capture = capture if graphs else None
        self._pending: Optional[dict] = None
        #: what the train-mode capture needs (:func:`masked_torch.nn.build.train_graph`); ``None`` once captured
        self._lazy: Optional[dict] = None
        self._compile()

    def _adopt(self, root: nn.Module) -> None:
        self._parameters = root._parameters
        self._buffers = root._buffers
        self._non_persistent_buffers_set = root._non_persistent_buffers_set
        self._modules = root._modules

    def _compile_graph(self, training: bool) -> None:
        code = self._graphs[training].python_code(root_module="self")
        scope = dict(code.globals)
        exec(compile(code.src, f"<masked {self._class_name} {'train' if training else 'eval'}>", "exec"), scope)
        self._fns[training] = scope["forward"]
        self._sources[training] = code.src

    def _compile(self) -> None:
        object.__setattr__(self, "_fns", {})
        self._sources = {}
        for training in self._graphs:
            self._compile_graph(training)
        # forward with the model's own signature (input, mask=None, *, other inputs), so that
        # inspect.signature, torch.export and ONNX see named inputs; it runs the train or eval graph
        if self._graphs:
            placeholders = [n for n in self._graphs[False].nodes if n.op == "placeholder"]
            names = [n.target for n in placeholders]
        else:
            placeholders, names = [], ["input", "mask"]
        params = [names[0], f"{names[1]}=None"]
        if len(names) > 2:
            params += ["*"] + [n for n in names[2:]]
        call = ", ".join(f"{n}={n}" for n in names)
        body = f"self._fns[self.training](self, {call})"
        if self._spec is not None:
            body = f"self._structure({body})"
        src = (f"def forward(self, {', '.join(params)}):\n"
               f"    if self._pending is not None and _eager(self._first_call)({names[0]}, {names[1]}, "
               f"{{{', '.join(f'{n!r}: {n}' for n in names[2:])}}}):\n"
               f"        return self.forward({', '.join(names[:2] + [f'{n}={n}' for n in names[2:]])})\n"
               f"    if self.training and self._lazy is not None:\n"
               f"        _eager(self._capture_train)({names[0]})\n"
               f"    return {body}\n")
        scope: dict = {"_eager": _eager}
        exec(compile(src, f"<masked {self._class_name} forward>", "exec"), scope)
        forward = scope["forward"]
        defaults = {n.target: n.args[0] for n in placeholders[2:] if n.args}
        forward.__kwdefaults__ = defaults or None
        object.__setattr__(self, "forward", forward.__get__(self))

    def _structure(self, result):
        """The flat outputs of an export capture and their masks, in the model's own output structure."""
        out, masks = result
        return unflatten_output(list(out), self._spec), unflatten_output(list(masks), self._spec)

    def _first_call(self, input, mask, others: dict) -> bool:
        """Capture on the first batch (no example was given), or check the capture against the model on it.
        ``True``: the forward changed (call it again)."""
        if torch.compiler.is_compiling():
            if not self._graphs:
                raise RuntimeError(f"{self._class_name}: captured on its first call, which must run eagerly: call "
                                   f"it once before torch.compile, or convert with example=")
            return False
        pending, self._pending = self._pending, None
        _take_tensors(pending["pre"], self)  # .to(), .double(), load_state_dict since conversion: as self has them
        example = input
        if mask is not None and isinstance(input, Tensor) and isinstance(mask, Tensor):
            try:
                example = input.masked_fill(MF._mask_as(mask, input) == 0, 0)
            except RuntimeError:  # a mask of the wrong shape: the converted forward says so, in its own words
                pass
        try:
            built = pending["build"](pending["pre"], pending, example, others)
        except BaseException:
            self._pending = pending  # the next call tries again
            raise
        if built is None:
            return False
        self._adopt(built)
        self._graphs, self._spec, self.capture = built._graphs, built._spec, built.capture
        self._lazy = built._lazy
        self._compile()
        return True

    def _capture_train(self, input=None) -> None:
        """Capture, rewrite and compile the train-mode graph (``input``: the batch of the first call in train
        mode, whose dtype and device the capture's example takes)."""
        if torch.compiler.is_exporting():
            raise RuntimeError(f"{self._class_name}: its train-mode graph is captured on its first call in train "
                               f"mode, which must run eagerly: call it once in train mode before torch.export")
        lazy = self._lazy
        _take_tensors(lazy["pre"], self)  # .to(), .double(), load_state_dict since conversion: as self has them
        example = None
        if lazy["like"] is not None:
            shape, dtype = lazy["like"]
            if isinstance(input, Tensor):
                dtype, device = input.dtype, input.device
            else:
                tensors = [t for t in (*self.parameters(), *self.buffers()) if t.is_floating_point()]
                dtype, device = (tensors[0].dtype, tensors[0].device) if tensors else (dtype, None)
            example = torch.zeros(shape, dtype=dtype, device=device)
        self._graphs[True] = lazy["capture"](self, lazy, example)
        self._compile_graph(True)
        self._lazy = None

    @property
    def graph(self) -> fx.Graph:
        return self._graphs[False]

    @property
    def graph_train(self) -> fx.Graph:
        if self._lazy is not None:
            self._capture_train()
        return self._graphs[True]

    @property
    def code(self) -> str:
        if self.training and self._lazy is not None:
            self._capture_train()
        return self._sources[self.training]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_fns", None)
        state.pop("forward", None)
        if state.get("_pending") is not None and self._graphs:
            state["_pending"] = None  # a copy or a saved model is not checked on its first call
        # an fx.Graph pickles recursively, node by node (a deep model overflows the stack): store it flat
        flat = {id(g): _flatten(g) for g in self._graphs.values()}
        state["_graphs"] = {training: flat[id(g)] for training, g in self._graphs.items()}
        return state

    def __setstate__(self, state) -> None:
        graphs, built = state["_graphs"], {}
        state["_graphs"] = {}
        for training, g in graphs.items():
            if isinstance(g, fx.Graph):
                state["_graphs"][training] = g
                continue
            if id(g) not in built:
                built[id(g)] = _unflatten(g)
            state["_graphs"][training] = built[id(g)]
        self.__dict__.update(state)
        self._compile()

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = copy.deepcopy(self.__getstate__(), memo)
        new.__setstate__(state)
        return new

    def _get_name(self) -> str:
        return self._class_name


def _eager(fn):
    """``fn``, run eagerly where ``torch.compile`` traces the caller (a graph break): a capture on the first call
    or the first call in train mode is Python work that dynamo need not trace (``torch._dynamo`` is loaded
    then already; it is not imported otherwise)."""
    return torch.compiler.disable(fn, recursive=True) if torch.compiler.is_compiling() else fn


def _take_tensors(plain: nn.Module, converted: nn.Module) -> None:
    """``plain`` (the module tree the capture and its check run on) holds ``converted``'s current parameter
    and buffer tensors under the same names."""
    tensors = [*converted.named_parameters(remove_duplicate=False), *converted.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        path, _, attr = name.rpartition(".")
        try:
            module = plain.get_submodule(path)
        except AttributeError:
            continue
        for table in (module._parameters, module._buffers):
            if attr in table:
                table[attr] = tensor


@dataclass(frozen=True)
class _Ref:
    name: str


def _flatten(graph: fx.Graph) -> list:
    """The nodes of ``graph`` as a list of ``(op, target, args, kwargs, name)``, node arguments by name."""
    ref = lambda n: _Ref(n.name)  # noqa: E731
    return [(n.op, n.target, fx.map_arg(n.args, ref), fx.map_arg(n.kwargs, ref), n.name) for n in graph.nodes]


def _unflatten(flat: list) -> fx.Graph:
    graph, nodes = fx.Graph(), {}

    def resolve(a):
        if isinstance(a, _Ref):
            return nodes[a.name]
        if isinstance(a, (tuple, list)):
            return type(a)(resolve(b) for b in a) if not hasattr(a, "_fields") else type(a)(*map(resolve, a))
        if isinstance(a, dict):
            return {k: resolve(v) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(resolve(a.start), resolve(a.stop), resolve(a.step))
        return a

    for op, target, args, kwargs, name in flat:
        nodes[name] = graph.create_node(op, target, resolve(args), resolve(kwargs), name)
    return graph
