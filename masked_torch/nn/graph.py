"""Any traceable CNN, masked: the model's ``torch.fx`` graph with a mask carried beside every value.

:func:`convert_graph` traces the model (``torch.fx.symbolic_trace``, in eval and in train mode), swaps every
layer that has a masked counterpart for it (same names, same parameters), and rewrites every function and
method that touches a masked value into its mask rule (``masked_torch.functional``). The result,
:class:`MaskedGraphModule`, holds the model's own module tree (so ``state_dict`` keys are the plain model's)
and runs ``forward(input, mask=None) -> (output, out_mask)``.

Values under the mask: the converted model zeroes its input there once; every masked layer keeps its output
exactly 0 there, and an elementwise op that does not map 0 to 0 (a sigmoid, ``x + 1``, a division) marks its
result *dirty*: it is zeroed only where a layer or the output needs it, not after every op.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .. import functional as MF
from .base import MaskedModule
from .check import CaptureError, CaptureMismatch, check_capture
from .outputs import unflatten_output
from .container import Masked, Unmasked
from .elementwise import is_elementwise
from .registry import convert_module, has_rule, shared_copy
from .rules import Val, rule_for
from .runtime import enter, fit_mask, refit_mask

__all__ = ["MaskedGraphModule", "convert_graph"]


def _broadcasts_mask(module: nn.Module) -> bool:
    """Layers that act on each position (in any layout) and take a mask that merely broadcasts."""
    from .linear import MaskedFlatten, MaskedLinear
    from .norm import MaskedLayerNorm

    inner = module.module if isinstance(module, Unmasked) else module
    return isinstance(module, (Masked, MaskedLinear, MaskedLayerNorm, MaskedFlatten)) or isinstance(
        inner, (nn.Linear, nn.LayerNorm, nn.Flatten)) or (isinstance(module, Unmasked) and is_elementwise(inner))


# -- the converted module -----------------------------------------------------------------------------------


class MaskedGraphModule(MaskedModule, nn.Module):
    """A converted model: the plain model's modules, parameters and buffers (the same names: a checkpoint
    loads with ``strict=True`` both ways) and ``forward(input, mask=None, **other_inputs) -> (output,
    out_mask)``, where ``out_mask`` has the structure of ``output`` (a tensor, tuple or dict; ``(N, 1)``
    sample validity for outputs without spatial dims). ``mask=None`` runs the plain model's computation.

    ``.graph`` (and ``.graph_train`` where training runs other code) is the rewritten ``torch.fx`` graph,
    ``.code`` its Python source.
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
        self._compile()

    def _adopt(self, root: nn.Module) -> None:
        self._parameters = root._parameters
        self._buffers = root._buffers
        self._non_persistent_buffers_set = root._non_persistent_buffers_set
        self._modules = root._modules

    def _compile(self) -> None:
        fns, self._sources = {}, {}
        for training, graph in self._graphs.items():
            code = graph.python_code(root_module="self")
            scope = dict(code.globals)
            exec(compile(code.src, f"<masked {self._class_name} {'train' if training else 'eval'}>", "exec"), scope)
            fns[training] = scope["forward"]
            self._sources[training] = code.src
        object.__setattr__(self, "_fns", fns)
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
               f"    if self._pending is not None and self._first_call({names[0]}, {names[1]}, "
               f"{{{', '.join(f'{n!r}: {n}' for n in names[2:])}}}):\n"
               f"        return self.forward({', '.join(names[:2] + [f'{n}={n}' for n in names[2:]])})\n"
               f"    return {body}\n")
        scope: dict = {}
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
            built = _build(pending["pre"], pending, example, others)
        except BaseException:
            self._pending = pending  # the next call tries again
            raise
        if built is None:
            return False
        self._adopt(built)
        self._graphs, self._spec, self.capture = built._graphs, built._spec, built.capture
        self._compile()
        return True

    @property
    def graph(self) -> fx.Graph:
        return self._graphs[False]

    @property
    def graph_train(self) -> fx.Graph:
        return self._graphs[True]

    @property
    def code(self) -> str:
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


# -- conversion ---------------------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """Layers with a mask rule are leaves; everything else (the model's own blocks, and plain ``torch.nn``
    modules without a rule) is traced through, down to functions that need a rule of their own."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return has_rule(m)


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


class _Rewriter:
    def __init__(self, root: nn.Module, kind: str, options: dict, name: str) -> None:
        self.root, self.kind, self.options, self.name = root, kind, options, name
        self.model = type(root).__name__
        self.plain = kind == "plain"

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
        if isinstance(index, slice):
            batch_or_channels = ((index.start or 0) >= 0 and index.stop is not None and 0 <= index.stop <= 2
                                 and index.step in (None, 1))
        else:
            batch_or_channels = isinstance(index, int) and index in (0, 1)
        return Val(value) if batch_or_channels else Val(value, canvas=(shape.shape_of, node, True))

    _INT_OPS = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
                operator.neg, operator.pow, operator.getitem, math.floor, math.ceil, int}

    def canvas_use(self, node, env, args, kwargs, tainted) -> Optional[Val]:
        """A node that uses a spatial size: arithmetic on it (tainted in turn), a reshape of a masked tensor
        (allowed: ``None`` goes on to the usual rule), ``interpolate(size=...)`` (per image), or a refusal."""
        source, read, _ = tainted[0]
        if node.op == "call_function" and node.target in self._INT_OPS and not any(
                env[n].masked for n in node.all_input_nodes):
            exact = node.target is operator.getitem and tainted[0][2]
            return Val(self.copy_node(node, args, kwargs), canvas=(source, read, exact))
        rule = rule_for(node)
        if rule is not None and rule.canvas is not None:
            use = rule.canvas(self, node, env, args, kwargs, **rule.options)
            if use is not NotImplemented:
                return use
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
        from .capture_export import export_capture

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
        rewritten[training] = _Rewriter(root, kind, options, f"Masked{name}").run(graph)
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
    how = dict(pre=pre, name=name, kind=kind, options=options, capture=capture, check=check)
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
