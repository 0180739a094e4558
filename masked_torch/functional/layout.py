"""Masks through tensor manipulation: reshape, index, split, cat, stack, constant padding, valid extents."""
from __future__ import annotations

import math
import operator

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import _mask_as, _zero_masked, check_input, intersect_masks, zero_masked
from .windows import _grow

__all__ = ["reshape_mask", "masked_reshape", "image_sizes", "index_mask", "split_masks", "masked_cat", "masked_pad", "masked_stack", "valid_extents", "image_boxes"]


def masked_stack(tensors: Sequence[Tensor], masks: Sequence[Optional[Tensor]], dim: int = 0, *, zero: bool = True,
                 name: str = "stack") -> tuple[Tensor, Optional[Tensor]]:
    """``torch.stack``: the masks stack along the new dim (one mask of size 1 there when they agree), as in
    :func:`masked_cat`. Along dim 0, in front of the batch dim (``torch.stack(maps).sum(0)``, as FPN heads
    add their maps), the mask is the intersection of the masks, of size 1 along the new dim (where ``a + b``
    is valid), and the stack is 0 outside it."""
    d = dim % (tensors[0].dim() + 1)
    if d != 0 or all(m is None for m in masks):
        return masked_cat([t.unsqueeze(d) for t in tensors],
                          [None if m is None else m.unsqueeze(d) for m in masks], d, zero=zero, name=name)
    common = None
    for m in masks:
        if m is not None:
            common = m if common is None or m is common else intersect_masks(common, m)
    common = common.unsqueeze(0)
    out = torch.stack(tensors)
    return (zero_masked(out, common) if zero else out), common


def _reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of dims of shape ``a`` with runs of shape ``b`` that hold the same elements."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj, pa, pb = [], [], 1, 1
        if i < len(a):
            gi.append(i)
            pa, i = pa * a[i], i + 1
        if j < len(b):
            gj.append(j)
            pb, j = pb * b[j], j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa, i = pa * a[i], i + 1
            elif pb < pa and j < len(b):
                gj.append(j)
                pb, j = pb * b[j], j + 1
            else:
                raise ValueError(f"cannot reshape {tuple(a)} to {tuple(b)}")
        groups.append((gi, gj))
    return groups


def _reshape_plan(mask: Tensor, in_shape: tuple, out_shape: tuple, sizes: Sequence):
    """The expanded shape and target shape of the mask of a canvas reshape, and where it would move an image's
    values (``None``: nowhere; else ``(input run, output run, the first dim that moves them)``)."""
    expand, target, runs = list(mask.shape), [], []
    for gi, gj in _reshape_groups(in_shape, out_shape):
        if all(mask.shape[d] == 1 for d in gi):
            target += [1] * len(gj)
        else:
            for d in gi:
                expand[d] = in_shape[d]
            runs.append((gi, gj))
            target += [out_shape[d] for d in gj]
    tainted = {j: (m, d) for j, m, d in sizes}
    for gi, gj in runs:
        later = [d for d in gi if in_shape[d] != 1][1:]
        narrow = [d for d in later if mask.shape[d] != 1 and not _fills_canvas(mask, d)]
        for d in [d for d in gj if out_shape[d] != 1][1:]:
            m, source_dim = tainted.get(d, (None, 0))
            if m is not None and (source_dim is None or not _fills_canvas(m, source_dim % m.dim())):
                narrow.append(f"{d} of the output (sized by the canvas; alone, by each image)")
        if narrow:
            return expand, target, (gi, gj, narrow[0])
    return expand, target, None


def reshape_mask(mask: Optional[Tensor], in_shape: Sequence[int], out_shape: Sequence[int], *,
                 name: str = "reshape", sizes: Sequence = ()) -> Optional[Tensor]:
    """The mask of ``x.reshape(out_shape)`` for ``x`` of ``in_shape`` (view, flatten, unflatten, ...), where the
    reshape keeps every image's values in place.

    Runs of dims where the mask has size 1 stay size 1; a run where it varies is expanded to the tensor's
    size there and reshaped with it (every value keeps its own validity).

    Exactness per image: a run of dims merged or split puts element ``(i, j)`` at ``i * size_j + j``. Where an
    image is narrower than the padded canvas along a dim after the first of the run (``size_j`` is the
    canvas's, not the image's), its values land elsewhere than in the image alone: ``x.flatten(2)`` of a
    padded map, whose image rows no longer follow one another, or ``(N, H*W, C) -> (N, C, H, W)``. That is
    refused (``ValueError``); :func:`masked_reshape` reshapes each image alone there. ``sizes``: the output
    dims whose new size is a spatial size of a masked tensor, ``(dim, that tensor's mask, the dim it was read
    from or None)``: as a later dim of a run, each image's own size there is its own extent, so every image
    must fill the canvas along it. Exact: ``(N, H, W, C) -> (N, H, W * C)`` (channels after positions),
    ``(N, C, H, W) -> (N * C, H, W)``, a flatten of dims where every image fills the canvas."""
    if mask is None:
        return None
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    expand, target, moved = _reshape_plan(mask, in_shape, out_shape, sizes)
    if moved is not None:
        _refuse_moved(name, mask, in_shape, out_shape, moved)
    return mask.expand(expand).reshape(target)


def _refuse_moved(name, mask, in_shape, out_shape, moved, why: str = "") -> None:
    gi, gj, dim = moved
    raise ValueError(
        f"{name}: reshape {in_shape} -> {out_shape} merges or splits dims {gi} -> {gj}, where an image is "
        f"narrower than the padded canvas along dim {dim} (mask {tuple(mask.shape)}): each image's values would "
        f"land elsewhere than in the image alone{why}; merge only dims that every image fills (e.g. move the "
        f"channels after the positions), or keep the spatial dims apart")


def image_sizes(mask: Optional[Tensor], value, dim: int, size: Optional[int] = None):
    """Each image's own size along ``dim`` of ``value`` (or of a tensor of that rank whose size there is
    ``size``; pass ``value=None`` then), an ``(N,)`` integer tensor: 1 along the batch dim; the tensor's size where
    the mask has size 1 (every image fills it); else the extent of the image's valid entries from the origin
    (last valid index + 1; 0 for an image with none). ``mask=None``: the tensor's size, an int. What a shape read
    ``x.size(dim)`` gives each image alone, where the valid region is a box at the origin (:func:`masked_reshape`
    checks that where it uses these sizes)."""
    if size is None:
        size = value.shape[dim]
    if mask is None:
        return size
    dim = dim % mask.dim()
    n = mask.shape[0] if value is None else max(mask.shape[0], value.shape[0])
    if dim == 0:
        return torch.ones(n, dtype=torch.long, device=mask.device)
    if mask.shape[dim] == 1:
        return torch.full((n,), int(size), dtype=torch.long, device=mask.device)
    others = tuple(d for d in range(1, mask.dim()) if d != dim)
    along = (mask != 0).any(dim=others) if others else mask != 0  # (N or 1, size)
    index = torch.arange(1, mask.shape[dim] + 1, device=mask.device)
    return (along * index).amax(dim=1).expand(n)


_RECIPE_OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
               "mod": operator.mod, "neg": operator.neg}


def _evaluate(recipe, input: Tensor, mask: Tensor):
    """A per-image size from its recipe (:func:`masked_reshape`): an int, ``-1``, ``None`` (unknown), ``("in",
    d)`` (the input's own size along ``d``), ``("size", mask, d, canvas size)`` (a size read from a masked
    tensor), ``(op, *recipes)`` (integer arithmetic)."""
    if recipe is None or isinstance(recipe, (int, Tensor)):
        return recipe
    if not isinstance(recipe, tuple):
        return int(recipe)
    tag = recipe[0]
    if tag == "in":
        return image_sizes(mask, input, recipe[1])
    if tag == "size":
        _, m, d, size = recipe
        return image_sizes(m, None, d, size) if m is not None else size
    args = [_evaluate(r, input, mask) for r in recipe[1:]]
    return None if any(a is None for a in args) else _RECIPE_OPS[tag](*args)


def _image_shape(spec, input: Tensor, mask: Tensor, out_rank: int) -> list:
    """The per-image sizes of the output dims: ``spec`` a list of recipes, or ``("flatten", start, end)``,
    ``("unflatten", dim, [recipes])``, ``("squeeze", dims or None)``, ``("like", mask, shape)``."""
    r = input.dim()
    if isinstance(spec, tuple) and spec and spec[0] == "flatten":
        start, end = spec[1] % r, spec[2] % r
        spec = [("in", d) for d in range(start)] + [-1] + [("in", d) for d in range(end + 1, r)]
    elif isinstance(spec, tuple) and spec and spec[0] == "unflatten":
        dim = spec[1] % r
        spec = [("in", d) for d in range(dim)] + list(spec[2]) + [("in", d) for d in range(dim + 1, r)]
    elif isinstance(spec, tuple) and spec and spec[0] == "squeeze":
        dims = spec[1]
        dims = set(range(r)) if dims is None else {d % r for d in ((dims,) if isinstance(dims, int) else dims)}
        spec = [("in", d) for d in range(r) if not (d in dims and input.shape[d] == 1)]
    elif isinstance(spec, tuple) and spec and spec[0] == "like":
        _, m, shape = spec
        spec = [("size", m, d, shape[d]) for d in range(len(shape))]
    spec = list(spec)
    if len(spec) == 1 and isinstance(spec[0], (list, tuple)) and not (spec[0] and isinstance(spec[0][0], str)):
        spec = list(spec[0])
    if len(spec) != out_rank:
        return [None] * out_rank
    return [_evaluate(item, input, mask) for item in spec]


def masked_reshape(input: Tensor, mask: Optional[Tensor], output: Tensor, image_shape: Sequence, *,
                   name: str = "reshape", sizes: Sequence = ()) -> tuple[Tensor, Optional[Tensor]]:
    """``output = input.reshape(...)`` on the padded batch, made what each image gets alone.

    Where the reshape keeps every image's values in place (:func:`reshape_mask` accepts it), ``output`` as it is
    and its mask. Elsewhere (a run of dims merged or split where an image is narrower than the canvas: ``x.flatten
    (2)`` of a padded map, the view back, ``(N, HW, C).reshape(N, C, H, W)``) each image is reshaped alone: its box
    (at the canvas origin; its valid region must be one) is cut out, reshaped to its own sizes and placed at the
    origin of the output canvas, 0 around it. ``x.flatten(2)`` thus becomes a packed, right-padded sequence (each
    image's positions first, in its own row-major order), and the view back unpacks it.

    ``image_shape``: how to compute the new sizes for each image, one recipe per output dim (dim 0, the batch,
    is 1 for each image): an int (the same for every image), ``-1`` (inferred per image), ``None`` (a size of the
    canvas whose per-image value is unknown: refused where it matters), ``("size", mask, dim, canvas size)`` (a
    spatial size read from a masked tensor: each image's own, :func:`image_sizes`), ``("in", dim)`` (the input's
    own), ``(op, *recipes)`` (integer arithmetic: ``"add"``, ``"mul"``, ``"floordiv"``, ...); or, for the whole
    shape, ``("flatten", start, end)``, ``("unflatten", dim, recipes)``, ``("squeeze", dims)``, ``("like", mask,
    shape)``. They are evaluated only where an image is reshaped alone (no cost on the fast path).
    Returns ``(output, mask)``."""
    if mask is None:
        return output, None
    in_shape, out_shape = tuple(input.shape), tuple(output.shape)
    expand, target, moved = _reshape_plan(mask, in_shape, out_shape, tuple(sizes) + _recipe_sizes(image_shape))
    if moved is None:
        return output, mask.expand(expand).reshape(target)
    if moved[0][0] == 0 or moved[1][0] == 0:
        _refuse_moved(name, mask, in_shape, out_shape, moved, " (the reshape moves the batch dim, so no image can "
                                                              "be reshaped alone)")
    image_shape = _image_shape(image_shape, input, mask, len(out_shape))
    unknown = [j for j, s in enumerate(image_shape) if s is None]
    if unknown:
        _refuse_moved(name, mask, in_shape, out_shape, moved, f" (and output dim {unknown[0]} has a size computed "
                                                              f"from the canvas in a way each image's own size "
                                                              f"cannot follow: int()/float arithmetic)")
    n = input.shape[0]
    extents = image_boxes_nd(mask, input, name, "reshapes")
    per = [s.tolist() if isinstance(s, Tensor) else [int(s)] * n for s in image_shape[1:]]
    out, shapes = input.new_zeros(out_shape), []
    for k in range(n):
        own = extents[k]
        count = math.prod(own)
        if not count:  # an empty image: nothing of it anywhere
            shapes.append([0] * len(per))
            continue
        new = [per[j][k] for j in range(len(per))]
        if -1 in new:
            known = math.prod(s for s in new if s != -1)
            if count and (known == 0 or count % known):
                raise ValueError(f"{name}: sample {k} ({own} alone) cannot be reshaped to {tuple(new)}")
            new[new.index(-1)] = count // known if known else 0
        if math.prod(new) != count or any(s > c for s, c in zip(new, out_shape[1:])):
            raise ValueError(f"{name}: sample {k} alone is {tuple(own)}, which does not reshape to {tuple(new)} "
                             f"within the canvas {out_shape[1:]}: its sizes are read from masks that disagree (a "
                             f"partial convolution with update_mask=True grows the mask into the padding; convert "
                             f"with update_mask=False)")
        piece = input[(slice(k, k + 1),) + tuple(slice(0, e) for e in own)].reshape([1] + new)
        out[(slice(k, k + 1),) + tuple(slice(0, s) for s in new)] = piece
        shapes.append(new)
    sizes_t = torch.tensor(shapes, dtype=torch.long, device=mask.device).reshape(n, len(out_shape) - 1)
    m = torch.ones((n,) + (1,) * (len(out_shape) - 1), dtype=mask.dtype, device=mask.device)
    for j, c in enumerate(out_shape[1:]):
        if any(shape[j] < c for shape in shapes):
            shape = [n] + [1] * (len(out_shape) - 1)
            shape[j + 1] = c
            inside = torch.arange(c, device=mask.device)[None, :] < sizes_t[:, j:j + 1]
            m = m * inside.reshape(shape).to(mask.dtype)
    return out, m


def _recipe_sizes(image_shape) -> tuple:
    """The output dims that recipes size by the canvas, as :func:`reshape_mask`'s ``sizes``: ``(dim, mask, the
    dim it was read from, or None where it is computed)``."""
    if not isinstance(image_shape, list):
        return ()
    items = image_shape[0] if len(image_shape) == 1 and isinstance(image_shape[0], list) else image_shape
    found = []
    for j, r in enumerate(items):
        if isinstance(r, tuple) and r and r[0] == "size" and r[1] is not None:
            found.append((j, r[1], r[2]))
        elif isinstance(r, tuple) and r and r[0] in _RECIPE_OPS:
            leaves = [x for x in _leaves(r) if x[1] is not None]
            if leaves:
                found.append((j, leaves[0][1], None))
    return tuple(found)


def _leaves(recipe):
    if isinstance(recipe, tuple) and recipe and recipe[0] == "size":
        yield recipe
    elif isinstance(recipe, tuple) and recipe and recipe[0] in _RECIPE_OPS:
        for r in recipe[1:]:
            yield from _leaves(r)


def image_boxes_nd(mask: Tensor, value: Tensor, name: str, what: str) -> list[tuple[int, ...]]:
    """Each sample's own shape (dims 1..) in a tensor of any layout (tokens, attention maps) whose valid region in
    each sample is a box at the origin (:func:`image_sizes` along every dim); ``ValueError`` for a mask with holes
    there; an empty sample has size 0 along every dim."""
    n = value.shape[0]
    if n == 0:
        return []
    columns = torch.stack([image_sizes(mask, value, d) for d in range(1, value.dim())], 1) if value.dim() > 1 \
        else torch.zeros(n, 0, dtype=torch.long)
    broadcast = math.prod(value.shape[d] for d in range(1, value.dim()) if mask.shape[d] == 1)
    counts = ((mask != 0).reshape(mask.shape[0], -1).sum(1) * broadcast).expand(n)
    columns = columns * (counts > 0)[:, None]  # an image with no valid entry: size 0 along every dim
    box = columns.prod(1)
    if not bool((counts == box).all()):
        _refuse_holes(name, what, mask, int((counts != box).nonzero()[0]))
    return [tuple(row) for row in columns.tolist()]


def _fills_canvas(mask: Tensor, dim: int) -> bool:
    """Whether every sample reaches the canvas's end along ``dim`` (its mask is 1 somewhere at every index)."""
    if mask.shape[dim] == 1:
        return True
    others = tuple(d for d in range(1, mask.dim()) if d != dim)
    reach = mask.amax(dim=others) if others else mask
    return bool(reach.bool().all())


def _is_canvas_slice(item) -> bool:
    if isinstance(item, slice):
        return any(v is not None and v < 0 for v in (item.start, item.stop))
    return isinstance(item, int) and item < 0


def index_mask(mask, value: Tensor, index, *, name: str = "getitem"):
    """The mask of ``value[index]``: the same index, with slices and ints applied as ``:`` and ``0`` where the
    mask has size 1. Indexing a dim where the mask varies from its end (negative indices) depends on the
    padded canvas and is refused; so are tensor (advanced) indices there."""
    if mask is None or isinstance(mask, (tuple, list)):
        return None if mask is None else mask[index]
    items = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in items):
        k = items.index(Ellipsis)
        used = sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:k] + (slice(None),) * (value.dim() - used) + items[k + 1:]
    out, d = [], 0
    for item in items:
        if item is None:
            out.append(None)
            continue
        if d == 0 and not isinstance(item, slice) and not (isinstance(item, int) and mask.shape[0] == 1
                                                            and value.shape[0] != 1):
            raise ValueError(f"{name}: index {item!r} on the batch dim drops it (a masked tensor keeps its batch "
                             f"dim; slice it, e.g. x[:1])")
        if mask.shape[d] == 1 and value.shape[d] != 1:
            if isinstance(item, Tensor):
                raise ValueError(f"{name}: tensor indices are not supported on a masked tensor")
            out.append(0 if isinstance(item, int) else slice(None))
        else:
            if d >= 1 and (isinstance(item, Tensor) or _is_canvas_slice(item)):
                raise ValueError(
                    f"{name}: index {item!r} on dim {d} counts from the end of the padded canvas, not of each "
                    f"image (tensor {tuple(value.shape)}, mask {tuple(mask.shape)})")
            out.append(item)
        d += 1
    return mask[tuple(out)]


def split_masks(mask: Optional[Tensor], value: Tensor, split, dim: int = 0, *, chunks: bool = False) -> list:
    """Masks of ``value.split(split, dim)`` (or ``value.chunk(split, dim)`` with ``chunks=True``)."""
    n = len(value.chunk(split, dim) if chunks else value.split(split, dim))
    if mask is None:
        return [None] * n
    dim = dim % value.dim()
    if mask.shape[dim] == 1:
        return [mask] * n
    if dim >= 2:
        raise ValueError(f"split/chunk along dim {dim}, where the mask {tuple(mask.shape)} varies, cuts the padded "
                         f"canvas, not each image")
    return list(mask.chunk(split, dim) if chunks else mask.split(split, dim))


def masked_cat(tensors: Sequence[Tensor], masks: Sequence[Optional[Tensor]], dim: int = 0, *,
               zero: bool = True, name: str = "cat") -> tuple[Tensor, Optional[Tensor]]:
    """``torch.cat(tensors, dim)`` and its mask.

    Concatenating channels keeps one mask of size 1 along ``dim`` where every input's mask has size 1
    there: the same mask when they are the same tensor, else their intersection (valid where every input
    is; then, with ``zero=True``, the output is set to 0 where the intersection is 0). Otherwise the masks,
    expanded to their tensors along ``dim``, are concatenated. A dim past the channels along which a mask
    varies (a spatial dim) is refused: joining canvases is not joining images."""
    y = torch.cat(list(tensors), dim)
    present = [m for m in masks if m is not None]
    if not present:
        return y, None
    dim = dim % y.dim()
    if dim >= 2 and any(m.shape[dim] != 1 for m in present):
        raise ValueError(f"{name}: concatenating along dim {dim}, where the masks vary, joins padded canvases, not "
                         f"images (tensors {[tuple(t.shape) for t in tensors]})")
    if all(m is not None and m.shape[dim] == 1 for m in masks):
        first = masks[0]
        if all(m is first for m in masks):
            return y, first
        out = first
        for m in masks[1:]:
            out = intersect_masks(out, m)
        return (zero_masked(y, out) if zero else y), out
    parts = []
    for m, t in zip(masks, tensors):
        if m is None:
            m = torch.ones((1,) * t.dim(), dtype=present[0].dtype, device=t.device)
        shape = list(torch.broadcast_shapes(m.shape, (t.shape[0],) + tuple(present[0].shape[1:])))
        shape[dim] = t.shape[dim]
        parts.append(m.expand(shape))
    return y, torch.cat(parts, dim)


def masked_pad(input: Tensor, mask: Optional[Tensor], pad: Sequence[int], mode: str = "constant",
               value: Optional[float] = None, *, zeroed: bool = False,
               name: str = "pad") -> tuple[Tensor, Optional[Tensor]]:
    """``F.pad`` with constant padding of the spatial dims, per image as on the image alone.

    The image at the canvas origin alone gets ``left`` entries before it and ``right`` entries after its
    own end, not after the canvas's: the output mask is the input mask with ``left`` entries before it
    (valid where the image is not empty) and each image's valid run extended by ``right``; the entries after
    each image hold ``value`` as they do on the image alone. Other modes (reflect, replicate, circular)
    and negative (cropping) pads are refused: they read or cut the canvas's edge."""
    value = 0.0 if value is None else float(value)
    if mask is None:
        return F.pad(input, list(pad), mode=mode, value=value), None
    nd = input.dim() - 2
    check_input(input, mask, nd, name)
    if mode != "constant":
        raise ValueError(f"{name}: mode={mode!r} reads the padded canvas's edge, not each image's; only constant "
                         f"padding has a per-image rule")
    pad = list(pad)
    if len(pad) % 2 or len(pad) > 2 * nd or any(p < 0 for p in pad):
        raise ValueError(f"{name}: pad {tuple(pad)} must be non-negative (left, right) pairs of the spatial dims "
                         f"of input {tuple(input.shape)}")
    x = input if zeroed else _zero_masked(input, mask)
    y = F.pad(x, pad, value=value)
    m = _mask_as(mask, input)
    before = F.pad(m, pad)  # the input's own validity, moved
    m = _grow(m, pad)
    if value != 0.0:
        fresh = (m != 0) & (before == 0)
        fresh = fresh & ~_left_pad_region(fresh, pad)
        y = torch.where(fresh, torch.full((), value, dtype=y.dtype, device=y.device), y)
        y = torch.where(m != 0, y, torch.zeros((), dtype=y.dtype, device=y.device))
    return y, m


def _left_pad_region(t: Tensor, pad: Sequence[int]) -> Tensor:
    """True on the entries the left pads added (they already hold the pad value)."""
    region = torch.zeros_like(t)
    for i in range(len(pad) // 2):
        d = t.dim() - 1 - i
        if pad[2 * i]:
            region.narrow(d, 0, pad[2 * i]).fill_(True)
    return region


def valid_extents(mask: Tensor) -> list[tuple[int, ...]]:
    """Per sample of a mask ``(N, C, *S)``, the size of the bounding box of ``mask != 0`` (any channel) from
    the origin: last valid index + 1 along each spatial dim; 0 along every dim for a sample with no valid
    position (and along a dim of size 0)."""
    valid = (mask != 0).any(dim=1)  # (N, *S)
    n, spatial = valid.shape[0], valid.shape[1:]
    if n == 0:
        return []
    columns = []
    for d, s in enumerate(spatial):
        if s == 0 or valid.numel() == 0:
            columns.append(torch.zeros(n, dtype=torch.long, device=mask.device))
            continue
        others = [k + 1 for k in range(len(spatial)) if k != d]
        along = valid.any(dim=others) if others else valid  # (N, s)
        index = torch.arange(1, s + 1, device=mask.device)
        columns.append((along * index).amax(dim=1))
    if not columns:
        return [() for _ in range(n)]
    return [tuple(row) for row in torch.stack(columns, dim=1).tolist()]


def image_boxes(mask: Tensor, name: str, what: str) -> list[tuple[int, ...]]:
    """:func:`valid_extents` of a mask ``(N, C, *S)`` whose valid region in each sample (and each mask channel) is
    a box at the canvas origin, as ``pad_batch`` makes it: for a rule that runs on each image's own region
    (``what`` says which, for the message). A sample whose mask has holes there, or channels that differ, raises
    ``ValueError``; a sample with no valid position has extent 0 (:func:`image_boxes_nd` of the spatial dims)."""
    valid = mask != 0
    if mask.shape[1] > 1 and bool((valid != valid[:, :1]).any()):
        k = int((valid != valid[:, :1]).flatten(1).any(1).nonzero()[0])
        _refuse_holes(name, what, mask, k)
    first = mask[:, :1]
    return [extent[1:] for extent in image_boxes_nd(first, first, name, what)]


def _refuse_holes(name: str, what: str, mask: Tensor, k: int) -> None:
    raise ValueError(f"{name}: {what} each image's own region, which must be a box at the canvas origin (as "
                     f"pad_batch makes it); sample {k}'s mask {tuple(mask.shape)} has holes or differs between "
                     f"channels")
