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

__all__ = ["MaskedGraphModule", "convert_graph", "register_elementwise"]


# -- runtime helpers the generated code calls ----------------------------------------------------------------


def enter(input: Tensor, mask: Optional[Tensor], zero: bool, name: str):
    """Check the mask, bring it to the mask dtype, and (masked kinds) zero the input under it."""
    if mask is None:
        return input, None
    if not isinstance(input, Tensor):
        raise ValueError(f"{name}: the first input must be a tensor to take a mask, got {type(input).__name__}")
    MF.check_mask(input, mask, input.dim() - 2, name)
    mask = MF._mask_as(mask, input)
    return (MF.zero_masked(input, mask) if zero else input), mask


def zero_unless_same(value: Tensor, mask: Optional[Tensor], a: Optional[Tensor], b: Optional[Tensor]) -> Tensor:
    """After ``a + b`` of values 0 under their masks ``a``/``b``: zero where the intersection ``mask`` is 0,
    unless both had the same mask (then the sum is already 0 there)."""
    if a is b or mask is None:
        return value
    return MF.zero_masked(value, mask)


def _broadcasts_mask(module: nn.Module) -> bool:
    """Layers that act on each position (in any layout) and take a mask that merely broadcasts."""
    from .linear import MaskedFlatten, MaskedLinear
    from .norm import MaskedLayerNorm

    inner = module.module if isinstance(module, Unmasked) else module
    return isinstance(module, (Masked, MaskedLinear, MaskedLayerNorm, MaskedFlatten)) or isinstance(
        inner, (nn.Linear, nn.LayerNorm, nn.Flatten)) or (isinstance(module, Unmasked) and is_elementwise(inner))


def fit_mask(mask: Optional[Tensor], value: Tensor) -> Optional[Tensor]:
    """A mask of size 1 along a spatial dim (a per-sample mask viewed as a sequence, as ECA does before its
    Conv1d) expanded to the layer input's size there: it is constant along it."""
    if mask is None or mask.dim() != value.dim() or mask.shape[2:] == value.shape[2:]:
        return mask
    return mask.expand(tuple(mask.shape[:2]) + tuple(value.shape[2:]))


def refit_mask(out_mask: Optional[Tensor], mask: Optional[Tensor], value: Tensor) -> Optional[Tensor]:
    """After a layer that got a mask expanded by :func:`fit_mask`: the output mask is constant along those
    dims too (windows read it at their clamped end), so it goes back to size 1 there."""
    if mask is None or out_mask is None or mask.dim() != value.dim() or mask.shape[2:] == value.shape[2:]:
        return out_mask
    dims = tuple(d for d in range(2, mask.dim()) if mask.shape[d] == 1 and value.shape[d] != 1)
    return out_mask.amax(dim=dims, keepdim=True) if dims and out_mask.dim() == mask.dim() else out_mask


def reshape_like(mask: Optional[Tensor], before: Tensor, after: Tensor) -> Optional[Tensor]:
    return MF.reshape_mask(mask, before.shape, after.shape)


def check_unmasked_dim(value: Tensor, mask: Optional[Tensor], dim: int, name: str) -> Tensor:
    """For an op along ``dim`` of each position (softmax, normalize): the mask must not vary along it."""
    if mask is not None and mask.shape[dim % value.dim()] != 1:
        raise ValueError(f"{name}: works along dim {dim}, where the mask {tuple(mask.shape)} varies: it would mix "
                         f"image and padding")
    return value


def field_mask(mask, value, field: str, name: str):
    """The mask of ``value.field``: a field of a namedtuple of outputs. A tensor attribute (``.T``, ``.mT``,
    ``.real``) has no rule."""
    if isinstance(value, tuple) and hasattr(value, field):  # a namedtuple, or torch.max's (values, indices)
        return None if mask is None else getattr(mask, field)
    raise ValueError(f"{name}: no mask rule for the attribute {field!r} of a masked {type(value).__name__}")


def mask_method(mask: Optional[Tensor], method: str, *args, **kwargs) -> Optional[Tensor]:
    """Move the mask as a layout method (``permute``, ``transpose``, ``unsqueeze``, ...) moves its tensor."""
    return None if mask is None else getattr(mask, method)(*args, **kwargs)


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


@dataclass
class _Val:
    """A value of the rewritten graph: its node (or constant), its mask node (``None``: statically
    unmasked), and whether it is exactly 0 under the mask."""

    value: Any
    mask: Optional[fx.Node] = None
    masked: bool = False
    clean: bool = True
    shape_of: Optional["_Val"] = None  # this is ``t.shape`` (or ``t.size()``) of the masked value ``t``
    canvas: Optional[tuple] = None  # a spatial size of a masked value: (source _Val, reading node, exact)


# ops that act on each entry alone; True: f(0) == 0
_UNARY: dict[Any, bool] = {}
for _f, _z in [
    (F.relu, True), (F.relu6, True), (F.gelu, True), (F.silu, True), (F.hardswish, True), (F.mish, True),
    (F.leaky_relu, True), (F.elu, True), (F.selu, True), (F.celu, True), (F.hardtanh, True), (F.tanh, True),
    (F.softsign, True), (F.tanhshrink, True), (F.dropout, True), (F.dropout1d, True), (F.dropout2d, True),
    (F.dropout3d, True), (F.sigmoid, False), (F.hardsigmoid, False), (F.softplus, False), (F.logsigmoid, False),
    (torch.relu, True), (torch.tanh, True), (torch.sigmoid, False), (torch.abs, True), (torch.neg, True),
    (torch.sqrt, True), (torch.square, True), (torch.exp, False), (torch.rsqrt, False), (torch.erf, True),
    (torch.sin, True), (torch.cos, False), (torch.clamp, False), (torch.clip, False), (operator.neg, True),
    (F.relu_, True), (torch.relu_, True), (F.hardtanh_, True), (F.leaky_relu_, True), (F.elu_, True),
    (torch.nn.functional.hardshrink, True), (torch.nn.functional.softshrink, True),
]:
    _UNARY[_f] = _z
#: functions that ``torch.fx.wrap`` keeps whole, by name: stochastic depth multiplies each sample by 0 or 1/(1-p)
_UNARY_BY_NAME = {("torchvision.ops.stochastic_depth", "stochastic_depth"): True}


def register_elementwise(fn: Callable, *, preserves_zero: bool) -> Callable:
    """Declare a function (typically one kept whole by ``torch.fx.wrap``) as acting on each entry alone, so
    that :func:`convert` passes its input's mask on. ``preserves_zero``: ``fn(0) == 0``. Returns ``fn``."""
    _UNARY[fn] = bool(preserves_zero)
    return fn


_UNARY_METHODS: dict[str, bool] = {
    "relu": True, "relu_": True, "tanh": True, "tanh_": True, "sigmoid": False, "sigmoid_": False, "abs": True,
    "neg": True, "sqrt": True, "square": True, "exp": False, "rsqrt": False, "erf": True, "sin": True,
    "cos": False, "clamp": False, "clamp_": False, "clip": False, "clamp_min": False, "clamp_max": False,
    "float": True, "double": True, "half": True, "bfloat16": True, "to": True, "type": True, "type_as": True,
    "contiguous": True, "clone": True, "detach": True, "requires_grad_": True, "hardswish": True,
}
_BINARY = {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub", operator.isub: "sub",
           torch.sub: "sub", torch.subtract: "sub", operator.mul: "mul", operator.imul: "mul", torch.mul: "mul",
           torch.multiply: "mul", operator.truediv: "div", operator.itruediv: "div", torch.div: "div",
           torch.true_divide: "div", torch.maximum: "add", torch.minimum: "add", operator.pow: "pow",
           torch.pow: "pow"}
_BINARY_METHODS = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
                   "div": "div", "div_": "div", "pow": "pow", "maximum": "add", "minimum": "add"}
_REDUCE = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin"}
_REDUCE_METHODS = {"mean": "mean", "sum": "sum", "amax": "amax", "amin": "amin"}
_SAME_OP_METHODS = {"permute", "transpose", "movedim", "moveaxis", "swapaxes", "swapdims", "unsqueeze", "expand_as",
                    "expand"}
_SAME_OP_FUNCTIONS = {torch.permute: "permute", torch.transpose: "transpose", torch.movedim: "movedim",
                      torch.moveaxis: "moveaxis", torch.swapaxes: "swapaxes", torch.unsqueeze: "unsqueeze"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "view_as", "reshape_as"}
_RESHAPE_FUNCTIONS = {torch.reshape, torch.flatten, torch.squeeze, torch.unflatten}
_FACTORY_METHODS = {"new_empty", "new_zeros", "new_ones", "new_full", "new_tensor"}
_FACTORY_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
                      torch.randn_like}
_ALONG_DIM = {F.softmax: "dim", F.log_softmax: "dim", torch.softmax: "dim", torch.log_softmax: "dim",
              F.normalize: "dim"}


def _sig(*names_defaults):
    params = []
    for item in names_defaults:
        name, default = item if isinstance(item, tuple) else (item, inspect.Parameter.empty)
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(params)


_SIGS = {
    "max_pool": _sig("input", "kernel_size", ("stride", None), ("padding", 0), ("dilation", 1), ("ceil_mode", False),
                     ("return_indices", False)),
    "avg_pool": _sig("input", "kernel_size", ("stride", None), ("padding", 0), ("ceil_mode", False),
                     ("count_include_pad", True), ("divisor_override", None)),
    "adaptive": _sig("input", "output_size", ("return_indices", False)),
    "interpolate": _sig("input", ("size", None), ("scale_factor", None), ("mode", "nearest"), ("align_corners", None),
                        ("recompute_scale_factor", None), ("antialias", False)),
    "conv": _sig("input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    "conv_t": _sig("input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("output_padding", 0),
                   ("groups", 1), ("dilation", 1)),
    "linear": _sig("input", "weight", ("bias", None)),
    "layer_norm": _sig("input", "normalized_shape", ("weight", None), ("bias", None), ("eps", 1e-5)),
    "group_norm": _sig("input", "num_groups", ("weight", None), ("bias", None), ("eps", 1e-5)),
    "batch_norm": _sig("input", "running_mean", "running_var", ("weight", None), ("bias", None), ("training", False),
                       ("momentum", 0.1), ("eps", 1e-5)),
    "reduce": _sig("input", ("dim", None), ("keepdim", False), ("dtype", None)),
    "cat": _sig("tensors", ("dim", 0)),
    "split": _sig("input", "split_size_or_sections", ("dim", 0)),
    "chunk": _sig("input", "chunks", ("dim", 0)),
    "pixel": _sig("input", "factor"),
    "pad": _sig("input", "pad", ("mode", "constant"), ("value", None)),
    "var": _sig("input", ("dim", None), ("unbiased", None), ("keepdim", False), ("correction", None)),
    "max_dim": _sig("input", ("dim", None), ("keepdim", False)),
    "stack": _sig("tensors", ("dim", 0)),
}
_FUNCTION_RULES = {
    F.max_pool1d: ("max_pool", 1), F.max_pool2d: ("max_pool", 2), F.max_pool3d: ("max_pool", 3),
    F.max_pool1d_with_indices: ("max_pool_indices", 1), F.max_pool2d_with_indices: ("max_pool_indices", 2),
    F.max_pool3d_with_indices: ("max_pool_indices", 3), F.adaptive_max_pool1d_with_indices: ("max_pool_indices", 1),
    F.adaptive_max_pool2d_with_indices: ("max_pool_indices", 2),
    F.adaptive_max_pool3d_with_indices: ("max_pool_indices", 3),
    F.avg_pool1d: ("avg_pool", 1), F.avg_pool2d: ("avg_pool", 2), F.avg_pool3d: ("avg_pool", 3),
    F.adaptive_avg_pool1d: ("adaptive_avg", 1), F.adaptive_avg_pool2d: ("adaptive_avg", 2),
    F.adaptive_avg_pool3d: ("adaptive_avg", 3), F.adaptive_max_pool1d: ("adaptive_max", 1),
    F.adaptive_max_pool2d: ("adaptive_max", 2), F.adaptive_max_pool3d: ("adaptive_max", 3),
    F.interpolate: ("interpolate", None), F.upsample: ("interpolate", None),
    F.conv1d: ("conv", 1), F.conv2d: ("conv", 2), F.conv3d: ("conv", 3),
    F.conv_transpose1d: ("conv_t", 1), F.conv_transpose2d: ("conv_t", 2), F.conv_transpose3d: ("conv_t", 3),
    F.linear: ("linear", None), F.layer_norm: ("layer_norm", None), F.group_norm: ("group_norm", None),
    F.batch_norm: ("batch_norm", None), torch.cat: ("cat", None), torch.concat: ("cat", None),
    torch.concatenate: ("cat", None), torch.split: ("split", None), torch.chunk: ("chunk", None),
    F.pixel_shuffle: ("pixel_shuffle", None), F.pixel_unshuffle: ("pixel_unshuffle", None),
    F.pad: ("pad", None), torch.stack: ("stack", None),
}


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

    def clean(self, v: _Val) -> Any:
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
        env: dict[fx.Node, _Val] = {}
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
                    env[node] = _Val(self.get(0, t), self.get(1, t), True, True)
                else:
                    env[node] = _Val(ph)
            elif node.op == "get_attr":
                env[node] = _Val(self.g.get_attr(node.target))
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

    def node(self, node: fx.Node, env: dict) -> _Val:
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
                return _Val(self.get(0, self.g.call_module(node.target, args, kwargs)))
            return _Val(self.g.create_node(node.op, node.target, args, kwargs, node.name))
        if _is_shape_read(node):
            return self.shape_read(node, env, args, kwargs)
        if _is_metadata_read(node):
            return _Val(self.copy_node(node, args, kwargs))
        if isinstance(node.target, type) and (issubclass(node.target, tuple) and hasattr(node.target, "_fields")
                                              or dataclasses.is_dataclass(node.target)):
            return self.namedtuple(node, env, args, kwargs)
        if node.op == "call_function" and node.target is getattr:
            return self.attribute(node, env, args, kwargs)
        if node.op == "call_method" and node.target in _FACTORY_METHODS:
            # x.new_empty(shape): reads only the dtype and device of a masked tensor: a new, unmasked tensor
            return _Val(self.copy_node(node, args, kwargs))
        if node.op == "call_function" and node.target in _FACTORY_FUNCTIONS:
            # torch.ones_like(x): the canvas's shape, so the canvas's mask (zeros_like is 0 everywhere: clean)
            x = env[node.args[0]]
            return _Val(self.copy_node(node, args, kwargs), x.mask, True, node.target is torch.zeros_like)
        if node.op == "call_module":
            return self.module(node, env, args, kwargs)
        return self.function(node, env, args, kwargs)

    # -- shapes --
    #
    # The batch size and channel count (dims 0 and 1) of a masked tensor are each image's too. A spatial size
    # is the padded canvas's: it may flow, through integer arithmetic, into the shape arguments of a view or
    # reshape of a masked tensor (where it only names the tensor's own dims), or, unchanged, into
    # ``interpolate(size=...)`` (resized per image); any other use is refused at conversion.

    def shape_read(self, node, env, args, kwargs) -> _Val:
        source = env[node.args[0]]
        value = self.g.create_node(node.op, node.target, args, kwargs, node.name)
        if node.op == "call_method" and node.target == "size" and (len(args) > 1 or kwargs):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if isinstance(dim, int) and dim in (0, 1):
                return _Val(value)
            return _Val(value, canvas=(source, node, True))
        if (node.op == "call_function" and node.target is getattr and node.args[1] == "shape") or (
                node.op == "call_method" and node.target == "size"):
            return _Val(value, shape_of=source)
        return _Val(value)  # dim(), ndim: the rank

    def shape_index(self, node, shape: _Val, args, kwargs) -> _Val:
        value = self.copy_node(node, args, kwargs)
        index = node.args[1]
        if isinstance(index, slice):
            batch_or_channels = ((index.start or 0) >= 0 and index.stop is not None and 0 <= index.stop <= 2
                                 and index.step in (None, 1))
        else:
            batch_or_channels = isinstance(index, int) and index in (0, 1)
        return _Val(value) if batch_or_channels else _Val(value, canvas=(shape.shape_of, node, True))

    _INT_OPS = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
                operator.neg, operator.pow, operator.getitem, math.floor, math.ceil, int}

    def canvas_use(self, node, env, args, kwargs, tainted) -> Optional[_Val]:
        """A node that uses a spatial size: arithmetic on it (tainted in turn), a reshape of a masked tensor
        (allowed: ``None`` goes on to the usual rule), ``interpolate(size=...)`` (per image), or a refusal."""
        source, read, _ = tainted[0]
        if node.op == "call_function" and node.target in self._INT_OPS and not any(
                env[n].masked for n in node.all_input_nodes):
            exact = node.target is operator.getitem and tainted[0][2]
            return _Val(self.copy_node(node, args, kwargs), canvas=(source, read, exact))
        first = env[node.all_input_nodes[0]] if node.all_input_nodes else None
        reshape = (node.op == "call_method" and node.target in _RESHAPE_METHODS) or (
            node.op == "call_function" and node.target in _RESHAPE_FUNCTIONS)
        if reshape and first is not None and first.masked and node.args and node.args[0] is node.all_input_nodes[0]:
            return None
        if node.op == "call_function" and node.target in (F.interpolate, F.upsample):
            return self.interpolate_to(node, env, args, kwargs)
        if node.op == "call_function" and _FUNCTION_RULES.get(node.target, ("",))[0] in ("avg_pool", "max_pool"):
            return self.pool_whole(node, env, args, kwargs)
        self.fail(node, f"uses a spatial size of a masked tensor (read at node {read.name!r}): that is the padded "
                        f"canvas's size, not each image's. Only dims 0 and 1 (batch, channels) may be read; a "
                        f"spatial size may only shape a view/reshape of a masked tensor or be an "
                        f"interpolate(size=...) target", ValueError)

    def pool_whole(self, node, env, args, kwargs) -> _Val:
        """``F.avg_pool2d(x, x.shape[2:])`` (or ``(x.size(2), x.size(3))``): global pooling of ``x``."""
        rule, nd = _FUNCTION_RULES[node.target]
        b = self.bind(node, rule, args, kwargs)
        kernel = node.kwargs.get("kernel_size", node.args[1] if len(node.args) > 1 else None)
        parts = list(kernel) if isinstance(kernel, (tuple, list)) else [kernel]
        taints = [env[p].canvas if isinstance(p, fx.Node) else None for p in parts]
        x = env[node.args[0]]
        rest = {k: v for k, v in b.items() if k not in ("input", "kernel_size")}
        if (None in taints or not all(t[2] and t[0] is x for t in taints) or rest.get("stride") not in (None, [], ())
                or any(rest.get(k) for k in ("padding", "ceil_mode", "return_indices", "divisor_override"))):
            self.fail(node, "pools with a window sized by the padded canvas: only a window of the whole map "
                            "(kernel_size=x.shape[2:], no stride or padding) has a per-image rule", ValueError)
        mode = "mean" if rule == "avg_pool" else "amax"
        t = self.call(MF.masked_reduce, self.clean(x), x.mask, tuple(range(2, 2 + nd)), True, mode, zeroed=True,
                      name=self.label(node))
        return self.result(node, t, args, kwargs)

    def interpolate_to(self, node, env, args, kwargs) -> _Val:
        b = self.bind(node, "interpolate", args, kwargs)
        size_arg = node.kwargs.get("size", node.args[1] if len(node.args) > 1 else None)
        parts = list(size_arg) if isinstance(size_arg, (tuple, list)) else [size_arg]
        taints = [env[p].canvas if isinstance(p, fx.Node) else None for p in parts]
        sources = {id(t[0]) for t in taints if t is not None}
        x = env[node.args[0]]
        if None in taints or len(sources) != 1 or not all(t[2] for t in taints) or not x.masked:
            self.fail(node, "interpolate(size=...) resizes to the padded canvas's size: only a size read as it is "
                            "from a masked tensor (size=t.shape[-2:]) is resized per image", ValueError)
        like = taints[0][0]
        t = self.call(MF.interpolate_to, self.clean(x), x.mask, like.mask, b["size"], b.get("mode", "nearest"),
                      b.get("align_corners"), name=self.label(node))
        return self.result(node, t, args, kwargs)

    def namedtuple(self, node, env, args, kwargs) -> _Val:
        """A namedtuple or dataclass of outputs (Inception's ``InceptionOutputs``, a ``ModelOutput``): the same
        structure of their masks."""
        mask_of = lambda n: env[n].mask if env[n].masked else None  # noqa: E731
        masks = self.g.create_node(node.op, node.target, fx.map_arg(node.args, mask_of),
                                   fx.map_arg(node.kwargs, mask_of))
        value_of = lambda n: self.clean(env[n])  # noqa: E731  (its fields are zeroed as they go in)
        value = self.g.create_node(node.op, node.target, fx.map_arg(node.args, value_of),
                                   fx.map_arg(node.kwargs, value_of), node.name)
        return _Val(value, masks, True, True)

    def attribute(self, node, env, args, kwargs) -> _Val:
        x = env[node.args[0]]
        if not (isinstance(node.args[1], str) and x.masked):
            self.fail(node, "no mask rule for this attribute")
        value = self.copy_node(node, args, kwargs)
        return _Val(value, self.call(field_mask, x.mask, args[0], node.args[1], self.label(node)), True, x.clean)

    # -- layers --
    def module(self, node, env, args, kwargs) -> _Val:
        module = self.root.get_submodule(node.target)
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            self.fail(node, "a masked layer takes one input")
        x = env[node.args[0]]
        value = self.clean(x)
        if not _broadcasts_mask(module):  # a layer over (N, C, *spatial) that needs the mask's full extent
            t = self.g.call_module(node.target, (value, self.call(fit_mask, x.mask, value)))
            return _Val(self.get(0, t), self.call(refit_mask, self.get(1, t), x.mask, value), True, True)
        t = self.g.call_module(node.target, (value, x.mask))
        return _Val(self.get(0, t), self.get(1, t), True, True)

    # -- functions and methods --
    def function(self, node, env, args, kwargs) -> _Val:
        target = node.target
        if node.op == "call_method":
            if target in _UNARY_METHODS:
                return self.unary(node, env, args, kwargs, _UNARY_METHODS[target])
            if target in _BINARY_METHODS:
                return self.binary(node, env, args, kwargs, _BINARY_METHODS[target])
            if target in _REDUCE_METHODS:
                return self.reduce(node, env, args, kwargs, _REDUCE_METHODS[target])
            if target in _SAME_OP_METHODS:
                return self.same_op(node, env, args, kwargs)
            if target in _RESHAPE_METHODS:
                return self.reshape(node, env, args, kwargs)
            if target in ("split", "chunk"):
                return self.split(node, env, args, kwargs, target)
            if target in ("softmax", "log_softmax"):
                return self.along_dim(node, env, args, kwargs)
            if target in ("var", "std"):
                return self.var(node, env, args, kwargs, target == "std")
            if target in ("max", "min"):
                return self.max_dim(node, env, args, kwargs, target)
        else:
            if target in _UNARY:
                return self.unary(node, env, args, kwargs, _UNARY[target])
            key = (getattr(target, "__module__", None), getattr(target, "__name__", None))
            if key in _UNARY_BY_NAME:
                return self.unary(node, env, args, kwargs, _UNARY_BY_NAME[key])
            if target in _BINARY:
                return self.binary(node, env, args, kwargs, _BINARY[target])
            if target in _REDUCE:
                return self.reduce(node, env, args, kwargs, _REDUCE[target])
            if target in _SAME_OP_FUNCTIONS:
                return self.same_op(node, env, args, kwargs)
            if target in _RESHAPE_FUNCTIONS:
                return self.reshape(node, env, args, kwargs)
            if target is operator.getitem:
                return self.getitem(node, env, args, kwargs)
            if target in _ALONG_DIM:
                return self.along_dim(node, env, args, kwargs)
            if target in (torch.var, torch.std):
                return self.var(node, env, args, kwargs, target is torch.std)
            if target in (torch.max, torch.min):
                return self.max_dim(node, env, args, kwargs, target.__name__)
            if target in _FUNCTION_RULES:
                rule, nd = _FUNCTION_RULES[target]
                return getattr(self, "fn_" + rule)(node, env, args, kwargs, nd)
        self.fail(node, "no mask rule for this op on a masked tensor; supported are the layers and functions "
                        "a CNN is made of (see masked_torch.nn.convert)")

    def copy_node(self, node, args, kwargs) -> fx.Node:
        return self.g.create_node(node.op, node.target, args, kwargs, node.name)

    def masked_args(self, node, env) -> list[_Val]:
        out = []
        fx.map_arg((node.args, node.kwargs), lambda n: out.append(env[n]) if env[n].masked else None)
        return out

    def unary(self, node, env, args, kwargs, keeps_zero: bool) -> _Val:
        x = env[node.args[0]] if node.args and isinstance(node.args[0], fx.Node) else None
        if x is None or not x.masked or len(self.masked_args(node, env)) != 1:
            self.fail(node, "an elementwise op whose masked operand is not its first argument")
        out = _Val(self.copy_node(node, args, kwargs), x.mask, True, x.clean and keeps_zero)
        self.in_place(node, x, out)
        return out

    @staticmethod
    def in_place(node, x: _Val, out: _Val) -> None:
        """``x.sigmoid_()``, ``x += 1``, ``F.relu(x, inplace=True)``: ``x`` itself now holds the result."""
        if (node.op == "call_method" and node.target.endswith("_")) or node.kwargs.get("inplace") or (
                node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv)):
            x.clean = x.clean and out.clean

    def binary(self, node, env, args, kwargs, op: str) -> _Val:
        operands = list(node.args[:2]) + [node.kwargs.get(k) for k in ("other",) if k in node.kwargs]
        vals = [env[a] if isinstance(a, fx.Node) else None for a in operands[:2]]
        masked = [v for v in vals if v is not None and v.masked]
        value = self.copy_node(node, args, kwargs)
        if len(masked) == 2:
            a, b = masked
            mask = self.call(MF.intersect_masks, a.mask, b.mask)
        else:
            mask = masked[0].mask
        other = [o for o, v in zip(operands[:2], vals) if v is None or not v.masked]
        other = other[0] if other else None
        if op == "mul":
            clean = all(v.clean for v in masked)
        elif op in ("add", "sub"):
            if len(masked) == 2:
                clean = all(v.clean for v in masked)
                if clean and not self.plain:
                    value = self.call(zero_unless_same, value, mask, masked[0].mask, masked[1].mask)
            else:
                clean = masked[0].clean and isinstance(other, (int, float)) and other == 0
        elif op == "div":
            first = vals[0]
            clean = (first is not None and first.masked and first.clean and isinstance(other, (int, float))
                     and other != 0 and len(masked) == 1)
        else:  # pow
            clean = (len(masked) == 1 and vals[0] is not None and vals[0].masked and vals[0].clean
                     and isinstance(operands[1], (int, float)) and operands[1] > 0)
        out = _Val(value, mask, True, clean)
        if vals[0] is not None and vals[0].masked:
            self.in_place(node, vals[0], out)
        return out

    def reduce(self, node, env, args, kwargs, mode: str) -> _Val:
        bound = _SIGS["reduce"].bind(*args, **kwargs).arguments
        if bound.get("dtype") is not None:
            self.fail(node, "dtype= is not supported")
        (x,) = self.masked_args(node, env)
        if bound.get("dim") is None:
            self.fail(node, "a reduction over every dim, batch included, mixes the samples", ValueError)
        t = self.call(MF.masked_reduce, self.clean(x), x.mask, bound["dim"], bound.get("keepdim", False), mode,
                      zeroed=True, name=self.label(node))
        return self.result(node, t, args, kwargs)

    def result(self, node, t: fx.Node, args, kwargs, clean: bool = True) -> _Val:
        """``t = (value, mask)`` from a mask rule; the plain kind keeps the plain op's value."""
        value = self.copy_node(node, args, kwargs) if self.plain else self.get(0, t)
        return _Val(value, self.get(1, t), True, clean)

    def same_op(self, node, env, args, kwargs) -> _Val:
        x = env[node.args[0]]  # expand_as(other): other only gives a shape
        if not x.masked:
            self.fail(node, "the layout of an unmasked tensor set by a masked one")
        value = self.copy_node(node, args, kwargs)
        if node.target in ("expand", "expand_as"):
            return _Val(value, x.mask, True, x.clean)
        method = node.target if node.op == "call_method" else _SAME_OP_FUNCTIONS[node.target]
        mask = self.call(mask_method, x.mask, method, *args[1:], **kwargs)
        return _Val(value, mask, True, x.clean)

    def reshape(self, node, env, args, kwargs) -> _Val:
        x = env[node.args[0]]
        if not x.masked:
            self.fail(node, "reshapes with a masked tensor as the target shape")
        value = self.copy_node(node, args, kwargs)
        return _Val(value, self.call(reshape_like, x.mask, args[0], value), True, x.clean)

    def getitem(self, node, env, args, kwargs) -> _Val:
        x = env[node.args[0]]
        index_nodes = []
        fx.map_arg(node.args[1:], index_nodes.append)
        if not x.masked or any(env[n].masked for n in index_nodes):
            self.fail(node, "indexes with a masked tensor")
        value = self.copy_node(node, args, kwargs)
        return _Val(value, self.call(MF.index_mask, x.mask, args[0], args[1], name=self.label(node)), True, x.clean)

    def split(self, node, env, args, kwargs, how: str) -> _Val:
        bound = _SIGS[how].bind(*args, **kwargs).arguments
        x = env[node.args[0]]
        value = self.copy_node(node, args, kwargs)
        size = bound.get("split_size_or_sections", bound.get("chunks"))
        masks = self.call(MF.split_masks, x.mask, args[0], size, bound.get("dim", 0), chunks=how == "chunk")
        return _Val(value, masks, True, x.clean)

    def var(self, node, env, args, kwargs, std: bool) -> _Val:
        b = self.bind(node, "var", args, kwargs)
        if b.get("dim") is None:
            self.fail(node, "a reduction over every dim, batch included, mixes the samples", ValueError)
        correction = b.get("correction")
        if correction is None:
            correction = 1 if b.get("unbiased", True) in (True, None) else 0
        x = env[node.args[0]]
        t = self.call(MF.masked_var, self.clean(x), x.mask, b["dim"], correction, b.get("keepdim", False), std,
                      name=self.label(node))
        return self.result(node, t, args, kwargs)

    def max_dim(self, node, env, args, kwargs, mode: str) -> _Val:
        masked = self.masked_args(node, env)
        other = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("dim"))
        if len(masked) == 2 or isinstance(other, fx.Node):  # torch.max(a, b): elementwise
            return self.binary(node, env, args, kwargs, "add")
        b = self.bind(node, "max_dim", args, kwargs)
        if b.get("dim") is None:
            self.fail(node, "a max over every dim, batch included, mixes the samples", ValueError)
        x = env[node.args[0]]
        t = self.call(MF.masked_max_dim, self.clean(x), x.mask, b["dim"], b.get("keepdim", False), mode,
                      name=self.label(node))
        return self.result(node, t, args, kwargs)

    def along_dim(self, node, env, args, kwargs) -> _Val:
        (x,) = self.masked_args(node, env)
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if not isinstance(dim, int):
            self.fail(node, "needs an explicit dim")
        checked = self.call(check_unmasked_dim, args[0], x.mask, dim, self.label(node))
        value = self.g.create_node(node.op, node.target, (checked,) + tuple(args[1:]), kwargs, node.name)
        return _Val(value, x.mask, True, False)

    # -- functional layers --
    def bind(self, node, rule, args, kwargs):
        try:
            return _SIGS[rule].bind(*args, **kwargs).arguments
        except TypeError as exc:
            self.fail(node, f"unexpected arguments ({exc})")

    def fn_max_pool(self, node, env, args, kwargs, nd):
        b = self.bind(node, "max_pool", args, kwargs)
        if b.get("return_indices"):
            self.fail(node, "return_indices=True: indices into the padded canvas are not each image's", ValueError)
        x = env[node.args[0]]
        t = self.call(MF.masked_max_pool, x.value, x.mask, b["kernel_size"], b.get("stride"), b.get("padding", 0),
                      b.get("dilation", 1), b.get("ceil_mode", False), nd=nd, name=self.label(node))
        return self.result(node, t, args, kwargs)

    def fn_max_pool_indices(self, node, env, args, kwargs, nd):
        self.fail(node, "return_indices=True: indices into the padded canvas are not each image's", ValueError)

    def fn_avg_pool(self, node, env, args, kwargs, nd):
        b = self.bind(node, "avg_pool", args, kwargs)
        x = env[node.args[0]]
        t = self.call(MF.masked_avg_pool, self.clean(x), x.mask, b["kernel_size"], b.get("stride"),
                      b.get("padding", 0), b.get("ceil_mode", False), b.get("count_include_pad", True),
                      b.get("divisor_override"), nd=nd, zeroed=True, name=self.label(node))
        return self.result(node, t, args, kwargs)

    def _adaptive(self, node, env, args, kwargs, nd, mode):
        b = self.bind(node, "adaptive", args, kwargs)
        if b.get("return_indices"):
            self.fail(node, "return_indices=True is not supported", ValueError)
        x = env[node.args[0]]  # global pooling over the valid positions, other sizes over each image's box
        t = self.call(MF.masked_adaptive_pool, self.clean(x), x.mask, b["output_size"], mode, nd=nd, zeroed=True,
                      name=self.label(node))
        return self.result(node, t, args, kwargs)

    def fn_adaptive_avg(self, node, env, args, kwargs, nd):
        return self._adaptive(node, env, args, kwargs, nd, "mean")

    def fn_adaptive_max(self, node, env, args, kwargs, nd):
        return self._adaptive(node, env, args, kwargs, nd, "amax")

    def fn_interpolate(self, node, env, args, kwargs, nd):
        b = self.bind(node, "interpolate", args, kwargs)
        try:
            MF.check_interpolate(b.get("size"), b.get("scale_factor"), b.get("mode", "nearest"), b.get("align_corners"),
                                 b.get("recompute_scale_factor"), b.get("antialias", False), name="interpolate")
        except ValueError as exc:
            self.fail(node, str(exc).split(": ", 1)[1], ValueError)
        x = env[node.args[0]]
        t = self.call(MF.masked_interpolate, self.clean(x), x.mask, b["scale_factor"], b.get("mode", "nearest"),
                      b.get("align_corners"), zeroed=True, name=self.label(node))
        return self.result(node, t, args, kwargs)

    def fn_conv(self, node, env, args, kwargs, nd):
        b = self.bind(node, "conv", args, kwargs)
        x = env[node.args[0]]
        conv_args = (b["weight"], b.get("bias"), b.get("stride", 1), b.get("padding", 0), b.get("dilation", 1),
                     b.get("groups", 1))
        if self.kind == "partial":
            t = self.call(MF.partial_conv, self.clean(x), x.mask, *conv_args, anchor="end", zeroed=True,
                          name=self.label(node), **self.options)
        else:
            t = self.call(MF.masked_conv, self.clean(x), x.mask, *conv_args, anchor="end", zeroed=True, name=self.label(node))
        return self.result(node, t, args, kwargs)

    def fn_conv_t(self, node, env, args, kwargs, nd):
        b = self.bind(node, "conv_t", args, kwargs)
        x = env[node.args[0]]
        t = self.call(MF.masked_conv_transpose, self.clean(x), x.mask, b["weight"], b.get("bias"), b.get("stride", 1),
                      b.get("padding", 0), b.get("output_padding", 0), b.get("groups", 1), b.get("dilation", 1),
                      zeroed=True, name=self.label(node))
        return self.result(node, t, args, kwargs)

    def fn_linear(self, node, env, args, kwargs, nd):
        b = self.bind(node, "linear", args, kwargs)
        x = env[node.args[0]]
        t = self.call(MF.masked_linear, self.clean(x), x.mask, b["weight"], b.get("bias"), name=self.label(node))
        return self.result(node, t, args, kwargs)

    def fn_layer_norm(self, node, env, args, kwargs, nd):
        b = self.bind(node, "layer_norm", args, kwargs)
        x = env[node.args[0]]
        value = self.copy_node(node, args, kwargs) if self.plain else self.call(
            MF.masked_layer_norm, x.value, x.mask, b["normalized_shape"], b.get("weight"), b.get("bias"),
            b.get("eps", 1e-5), name=self.label(node))
        return _Val(value, x.mask, True, True)

    def fn_group_norm(self, node, env, args, kwargs, nd):
        b = self.bind(node, "group_norm", args, kwargs)
        x = env[node.args[0]]
        value = self.copy_node(node, args, kwargs) if self.plain else self.call(
            MF.masked_group_norm, x.value, x.mask, b["num_groups"], b.get("weight"), b.get("bias"), b.get("eps", 1e-5),
            name=self.label(node))
        return _Val(value, x.mask, True, True)

    def fn_batch_norm(self, node, env, args, kwargs, nd):
        b = self.bind(node, "batch_norm", args, kwargs)
        x = env[node.args[0]]
        value = self.copy_node(node, args, kwargs) if self.plain else self.call(
            MF.masked_batch_norm, x.value, x.mask, b["running_mean"], b["running_var"], b.get("weight"),
            b.get("bias"), b.get("training", False), b.get("momentum", 0.1), b.get("eps", 1e-5), name=self.label(node))
        return _Val(value, x.mask, True, True)

    def tensor_list(self, node, env) -> tuple[list, list]:
        """The cleaned values and the masks (``None`` where unmasked) of a cat/stack's literal tensor list."""
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        if not isinstance(tensors, (list, tuple)):
            self.fail(node, "needs a literal list of tensors")
        vals = [env[t] if isinstance(t, fx.Node) else _Val(t) for t in tensors]
        return [self.clean(v) for v in vals], [v.mask if v.masked else None for v in vals]

    def fn_cat(self, node, env, args, kwargs, nd):
        b = self.bind(node, "cat", args, kwargs)
        values, masks = self.tensor_list(node, env)
        t = self.call(MF.masked_cat, values, masks, b.get("dim", 0), zero=not self.plain, name=self.label(node))
        return _Val(self.get(0, t), self.get(1, t), True, True)

    def fn_stack(self, node, env, args, kwargs, nd):
        b = self.bind(node, "stack", args, kwargs)
        values, masks = self.tensor_list(node, env)
        t = self.call(MF.masked_stack, values, masks, b.get("dim", 0), zero=not self.plain,
                      name=self.label(node))
        return _Val(self.get(0, t), self.get(1, t), True, True)

    def fn_split(self, node, env, args, kwargs, nd):
        return self.split(node, env, args, kwargs, "split")

    def fn_chunk(self, node, env, args, kwargs, nd):
        return self.split(node, env, args, kwargs, "chunk")

    def fn_pixel_shuffle(self, node, env, args, kwargs, nd):
        x = env[node.args[0]]
        t = self.call(MF.masked_pixel_shuffle, self.clean(x), x.mask, args[1], zeroed=True, name=self.label(node))
        return _Val(self.get(0, t), self.get(1, t), True, True)

    def fn_pixel_unshuffle(self, node, env, args, kwargs, nd):
        x = env[node.args[0]]
        t = self.call(MF.masked_unshuffle, self.clean(x), x.mask, args[1], zeroed=True, name=self.label(node))
        return _Val(self.get(0, t), self.get(1, t), True, True)

    def fn_pad(self, node, env, args, kwargs, nd):
        b = self.bind(node, "pad", args, kwargs)
        pad, mode = b["pad"], b.get("mode", "constant")
        if mode != "constant" or not isinstance(pad, (tuple, list)) or any(
                not isinstance(p, int) or p < 0 for p in pad):
            self.fail(node, f"F.pad(mode={mode!r}, pad={pad!r}) reads or cuts the padded canvas's edge; only "
                            f"constant padding by fixed non-negative amounts has a per-image rule", ValueError)
        x = env[node.args[0]]
        t = self.call(MF.masked_pad, self.clean(x), x.mask, pad, mode, b.get("value"), zeroed=True, name=self.label(node))
        return self.result(node, t, args, kwargs)


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
