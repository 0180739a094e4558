"""Rules of ops that move, cut, join or create tensors: the mask moves with its values."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ... import functional as MF
from .. import linear as _linear, resample as _resample, shuffle as _shuffle
from ..runtime import field_mask, mask_method, reshape_per_image
from .aten import aten, call, method, select_index, slice_index
from .table import Val, register, sig

__all__ = ["same_op", "reshape", "getitem", "split", "cat", "stack", "lead", "pixel_shuffle", "pad", "attribute"]

CAT = sig("tensors", ("dim", 0))
SPLIT = sig("input", "split_size_or_sections", ("dim", 0))
CHUNK = sig("input", "chunks", ("dim", 0))
PAD = sig("input", "pad", ("mode", "constant"), ("value", None))


def same_op(rw, node, env, args, kwargs, method=None) -> Val:
    """permute, transpose, unsqueeze, expand...: the same op on the mask (``method``: its Tensor method)."""
    x = env[node.args[0]]  # expand_as(other): other only gives a shape
    if not x.masked:
        rw.fail(node, "the layout of an unmasked tensor set by a masked one")
    value = rw.copy_node(node, args, kwargs)
    if node.target in ("expand", "expand_as"):
        return Val(value, x.mask, True, x.clean)
    mask = rw.call(mask_method, x.mask, method or node.target, *args[1:], **kwargs)
    return Val(value, mask, True, x.clean)


def reshape(rw, node, env, args, kwargs) -> Val:
    """The mask moves with the values where the reshape keeps each image's values in place; elsewhere each image
    is reshaped alone, to its own sizes (:func:`~masked_torch.functional.masked_reshape`)."""
    x = env[node.args[0]]
    if not x.masked:
        rw.fail(node, "reshapes with a masked tensor as the target shape")
    plain = rw.copy_node(node, args, kwargs)
    t = rw.call(reshape_per_image, args[0], x.mask, plain, _image_shape(rw, node, env, args), rw.label(node),
                **_canvas_sizes(rw, node, env))
    # an image reshaped alone is cut from its box (all valid) and placed in zeros: clean where the input was
    return Val(plain if rw.plain else rw.get(0, t), rw.get(1, t), True, x.clean)


def _image_shape(rw, node, env, args):
    """How each image's own new sizes are computed (the recipes of
    :func:`~masked_torch.functional.masked_reshape`), from the captured node's shape arguments."""
    target = node.target
    if target in ("flatten", torch.flatten):
        b = rw.bind(node, sig("input", ("start_dim", 0), ("end_dim", -1)), args, node.kwargs)
        return ("flatten", b.get("start_dim", 0), b.get("end_dim", -1))
    if target in ("squeeze", torch.squeeze):
        b = rw.bind(node, sig("input", ("dim", None)), args, node.kwargs)
        return ("squeeze", b.get("dim"))
    if target in ("view_as", "reshape_as"):
        other = env[node.args[1]] if isinstance(node.args[1], fx.Node) else None
        if other is None or not other.masked:
            return ("like", None, rw.call(getattr, args[1], "shape"))
        return ("like", other.mask, rw.call(getattr, args[1], "shape"))
    if target in ("unflatten", torch.unflatten):
        b = rw.bind(node, sig("input", "dim", "sizes"), node.args, node.kwargs)
        return ("unflatten", b["dim"], tuple(rw.recipe(s, env) for s in b["sizes"]))
    items = node.args[1:] or (node.kwargs.get("shape", node.kwargs.get("size")),)
    if len(items) == 1 and isinstance(items[0], (list, tuple)):
        items = items[0]
    elif len(items) == 1 and isinstance(items[0], fx.Node) and env[items[0]].shape_of is not None:
        other = env[items[0]].shape_of  # x.view(y.shape)
        return ("like", other.mask if other.masked else None, env[items[0]].value)
    return [rw.recipe(s, env) for s in items]


def _read_dim(read: fx.Node):
    """The dim a spatial size was read from: ``x.size(d)``, ``x.shape[d]`` (``None``: not known)."""
    if read.op == "call_method" and read.target == "size" and len(read.args) > 1:
        return read.args[1] if isinstance(read.args[1], int) else None
    if read.op == "call_function" and read.target is operator.getitem and isinstance(read.args[1], int):
        return read.args[1]
    return None


def _canvas_sizes(rw, node, env) -> dict:
    """What :func:`~masked_torch.nn.runtime.reshape_like` needs to know of the new sizes of a view/reshape that
    are spatial sizes of a masked tensor: ``sizes=((index, that tensor's mask, its dim or None), ...)`` (dim
    ``None``: computed from one), the index counted from ``base`` (an unflatten's dim); ``like=mask``: the
    spatial sizes of the tensor of ``view_as(y)`` / ``view(y.shape)``."""
    if node.target in ("flatten", "squeeze", torch.flatten, torch.squeeze):
        return {}
    if node.target in ("view_as", "reshape_as"):
        other = env[node.args[1]] if isinstance(node.args[1], fx.Node) else None
        return {"like": other.mask} if other is not None and other.masked else {}
    if node.target in ("unflatten", torch.unflatten):
        b = rw.bind(node, sig("input", "dim", "sizes"), node.args, node.kwargs)
        base, items = b["dim"], b["sizes"]
    else:
        base = 0
        items = node.args[1:] or (node.kwargs.get("shape", node.kwargs.get("size")),)
        if len(items) == 1 and isinstance(items[0], (list, tuple)):
            items = items[0]
        elif len(items) == 1 and isinstance(items[0], fx.Node) and env[items[0]].shape_of is not None:
            source = env[items[0]].shape_of  # x.view(y.shape): y's spatial sizes
            return {"like": source.mask} if source.masked else {}
    found = []
    for j, item in enumerate(items if isinstance(items, (list, tuple)) else ()):
        taint = env[item].canvas if isinstance(item, fx.Node) else None
        if taint is not None:
            source, read, exact = taint
            found.append((j, source.mask if source.masked else None, _read_dim(read) if exact else None))
    return {"base": base, "sizes": tuple(found)} if found else {}


def _reshape_canvas(rw, node, env, args, kwargs):
    """A spatial size may name a masked tensor's own dims in its view/reshape."""
    first = env[node.all_input_nodes[0]] if node.all_input_nodes else None
    if first is not None and first.masked and node.args and node.args[0] is node.all_input_nodes[0]:
        return None
    return NotImplemented


def getitem(rw, node, env, args, kwargs) -> Val:
    x = env[node.args[0]]
    index_nodes = []
    fx.map_arg(node.args[1:], index_nodes.append)
    if not x.masked or any(env[n].masked for n in index_nodes):
        rw.fail(node, "indexes with a masked tensor")
    value = rw.copy_node(node, args, kwargs)
    return Val(value, rw.call(MF.index_mask, x.mask, args[0], args[1], name=rw.label(node)), True, x.clean)


def split(rw, node, env, args, kwargs, chunks: bool) -> Val:
    bound = (CHUNK if chunks else SPLIT).bind(*args, **kwargs).arguments
    x = env[node.args[0]]
    value = rw.copy_node(node, args, kwargs)
    size = bound.get("split_size_or_sections", bound.get("chunks"))
    masks = rw.call(MF.split_masks, x.mask, args[0], size, bound.get("dim", 0), chunks=chunks)
    return Val(value, masks, True, x.clean)


def _tensor_list(rw, node, env) -> tuple[list, list]:
    """The cleaned values and the masks (``None`` where unmasked) of a cat/stack's literal tensor list."""
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    if not isinstance(tensors, (list, tuple)):
        rw.fail(node, "needs a literal list of tensors")
    vals = [env[t] if isinstance(t, fx.Node) else Val(t) for t in tensors]
    return [rw.clean(v) for v in vals], [v.mask if v.masked else None for v in vals]


def cat(rw, node, env, args, kwargs, fn=MF.masked_cat) -> Val:
    b = rw.bind(node, CAT, args, kwargs)
    values, masks = _tensor_list(rw, node, env)
    t = rw.call(fn, values, masks, b.get("dim", 0), zero=not rw.plain, name=rw.label(node))
    return Val(rw.get(0, t), rw.get(1, t), True, True)


def stack(rw, node, env, args, kwargs) -> Val:
    out = cat(rw, node, env, args, kwargs, MF.masked_stack)
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    out.lead = rw.bind(node, CAT, args, kwargs).get("dim", 0) == 0 and isinstance(tensors, (list, tuple)) and any(
        isinstance(t, fx.Node) and env[t].masked for t in tensors)
    return out


def lead(rw, node, env, args, kwargs, rule) -> Val:
    """An op on a stack in front of the batch dim (``torch.stack(maps)``): a reduction over that dim (sum,
    mean, amax, amin: exact, its mask is the same for every map) or ``x[i]`` gives a batch again; an op
    entry by entry keeps the stack; anything else would read dim 0 as the batch and is refused."""
    from .elementwise import binary, unary
    from .reduce import REDUCE, reduce

    x = env[node.args[0]] if node.args and isinstance(node.args[0], fx.Node) else None
    if rule is not None and rule.fn in (unary, binary):
        out = rule.fn(rw, node, env, args, kwargs, **rule.options)
        out.lead = True
        return out
    if x is not None and x.lead and rule is not None and rule.fn is reduce:
        b = rw.bind(node, REDUCE, args, kwargs)
        if b.get("dim") in (0, (0,), [0]) and b.get("dtype") is None:
            keep = bool(b.get("keepdim", False))
            mask = x.mask if keep else rw.call(mask_method, x.mask, "squeeze", 0)
            return Val(rw.copy_node(node, args, kwargs), mask, True, x.clean, lead=keep)
    index = node.args[1] if len(node.args) > 1 else None
    index = index[0] if isinstance(index, tuple) and len(index) == 1 else index  # aten.select(x, 0, i): x[(i,)]
    if x is not None and x.lead and rule is not None and rule.fn is getitem and isinstance(index, int):
        return Val(rw.copy_node(node, args, kwargs), rw.call(mask_method, x.mask, "squeeze", 0), True, x.clean)
    rw.fail(node, "reads a stack of maps made in front of the batch dim (torch.stack(maps) along dim 0) as if dim 0 "
                  "were the batch; only a sum/mean/amax/amin over dim 0, x[i], or an op entry by entry has a rule "
                  "there (or stack along dim 1: torch.stack(maps, 1).sum(1))", ValueError)


def pixel_shuffle(rw, node, env, args, kwargs, fn) -> Val:
    x = env[node.args[0]]
    t = rw.call(fn, rw.clean(x), x.mask, args[1], zeroed=True, name=rw.label(node))
    return Val(rw.get(0, t), rw.get(1, t), True, True)


def pad(rw, node, env, args, kwargs) -> Val:
    b = rw.bind(node, PAD, args, kwargs)
    amounts, mode = b["pad"], b.get("mode", "constant")
    x = env[node.args[0]]
    if isinstance(amounts, (tuple, list)) and all(isinstance(p, int) and p == 0 for p in amounts):
        return Val(rw.copy_node(node, args, kwargs), x.mask, True, x.clean)  # pads nothing, whatever the mode
    if mode != "constant" or not isinstance(amounts, (tuple, list)) or any(
            not isinstance(p, int) or p < 0 for p in amounts):
        rw.fail(node, f"F.pad(mode={mode!r}, pad={amounts!r}) reads or cuts the padded canvas's edge; only "
                      f"constant padding by fixed non-negative amounts has a per-image rule", ValueError)
    t = rw.call(MF.masked_pad, rw.clean(x), x.mask, amounts, mode, b.get("value"), zeroed=True, name=rw.label(node))
    return rw.result(node, t, args, kwargs)


def attribute(rw, node, env, args, kwargs) -> Val:
    """``out.logits`` of a namedtuple of outputs, ``values`` of ``torch.max``'s result."""
    x = env[node.args[0]]
    if not (isinstance(node.args[1], str) and x.masked):
        rw.fail(node, "no mask rule for this attribute")
    value = rw.copy_node(node, args, kwargs)
    return Val(value, rw.call(field_mask, x.mask, args[0], node.args[1], rw.label(node)), True, x.clean)


def new_tensor(rw, node, env, args, kwargs) -> Val:
    """``x.new_empty(shape)``: reads only the dtype and device of a masked tensor: a new, unmasked tensor."""
    return Val(rw.copy_node(node, args, kwargs))


def like(rw, node, env, args, kwargs) -> Val:
    """``torch.ones_like(x)``: the canvas's shape, so the canvas's mask (zeros_like is 0 everywhere: clean)."""
    x = env[node.args[0]]
    return Val(rw.copy_node(node, args, kwargs), x.mask, True, node.target is torch.zeros_like)


# -- the table --

register(same_op, "permute", "transpose", "movedim", "moveaxis", "swapaxes", "swapdims", "unsqueeze", "expand_as",
         "expand", aten={aten.expand: method("expand", "self", "size")})
for _fn in (torch.permute, torch.transpose, torch.movedim, torch.moveaxis, torch.swapaxes, torch.unsqueeze):
    register(same_op, _fn, method=_fn.__name__)
register(reshape, "view", "reshape", "flatten", "unflatten", "squeeze", "view_as", "reshape_as", torch.reshape,
         torch.flatten, torch.squeeze, torch.unflatten, nn.Flatten, layer=_linear.MaskedFlatten, canvas=_reshape_canvas,
         aten={aten.alias: method("view_as", "self", "self")})
register(getitem, operator.getitem, aten={aten.slice: slice_index, aten.select: select_index})
register(split, "split", torch.split, chunks=False)
register(split, "chunk", torch.chunk, chunks=True)
register(cat, torch.cat, torch.concat, torch.concatenate,
         aten={aten.cat: call(torch.cat, "tensors", "dim"), aten.concat: call(torch.cat, "tensors", "dim")})
register(stack, torch.stack, aten={aten.stack: call(torch.stack, "tensors", "dim")})
register(pixel_shuffle, F.pixel_shuffle, nn.PixelShuffle, layer=_resample.MaskedPixelShuffle, fn=MF.masked_pixel_shuffle,
         aten={aten.pixel_shuffle: call(F.pixel_shuffle, "self", "upscale_factor")})
register(pixel_shuffle, F.pixel_unshuffle, nn.PixelUnshuffle, layer=_shuffle.MaskedUnshuffle2d, fn=MF.masked_unshuffle,
         aten={aten.pixel_unshuffle: call(F.pixel_unshuffle, "self", "downscale_factor")})
register(pad, F.pad, aten={
    aten.pad: call(F.pad, "self", "pad", "mode", "value"),
    aten.constant_pad_nd: lambda b: ("call_function", F.pad, (b["self"], b["pad"], "constant", b.get("value", 0)), {})})
register(attribute, getattr)
register(new_tensor, "new_empty", "new_zeros", "new_ones", "new_full", "new_tensor")
register(like, torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
         torch.randn_like, aten={aten.zeros_like: call(torch.zeros_like, "self"),
                                 aten.ones_like: call(torch.ones_like, "self"),
                                 aten.empty_like: call(torch.empty_like, "self"),
                                 aten.full_like: call(torch.full_like, "self", "fill_value")})
