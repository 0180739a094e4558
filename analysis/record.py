"""Per-channel activation statistics over the valid positions, streamed over any number of forward passes.

::

    from masked_torch.analysis.record import ActivationRecorder

    with ActivationRecorder(stack) as rec:
        for x, mask in batches:
            stack(x, mask)
    df = rec.to_frame()  # one row per (layer, channel): count, mean, var, std, min, max, zero_frac

Forward hooks on the selected layers reduce each output, per channel, to a :class:`Moments` (count, mean,
centred sum of squares ``m2``, min, max, number of exact zeros) over the positions the layer's *output*
mask keeps (``mask != 0``; all positions for an output without a mask) and merge it into a float64 running
state with the parallel formula of Chan et al. (:func:`merge_moments`). No activation is kept, so memory
does not grow with the number of batches.

Each batch is shifted by the layer's running mean (the first batch by its own mean: an extra pass), so that
``m2`` is a centred sum even for activations on a large mean, and merged in float64. By default the
reduction and the merge run as one function under ``torch.compile(dynamic=True)``: a single fused pass over
each output and its mask, computed in float64 (compiled lazily on first use, shared by every recorder of the
process). If compilation fails the recorder warns once and falls back to eager PyTorch: a handful of cheap
elementwise passes in the output's dtype (float32: about 1e-7 relative on ``mean``/``var``; counts, min,
max and zeros exact either way). ``compile=False`` or ``MASKED_TORCH_RECORD_COMPILE=0`` keeps it eager.

Compiled *models* cannot be recorded: PyTorch silently ignores hooks added to a model after
``torch.compile``. The recorder refuses an ``OptimizedModule`` (or a model holding compiled submodules)
with an error naming the eager model to record instead, and :meth:`ActivationRecorder.to_frame` raises
rather than return a frame that lacks layers which never fired.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from dataclasses import dataclass, fields
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from masked_torch.nn import ELEMENTWISE, Masked, MaskedModule, Unmasked

__all__ = [
    "Moments",
    "merge_moments",
    "batch_moments",
    "default_selection",
    "select_layers",
    "ActivationRecorder",
    "COLUMNS",
]

#: Columns of :meth:`ActivationRecorder.to_frame`, in order.
COLUMNS = ("layer", "channel", "count", "mean", "var", "std", "min", "max", "zero_frac")

_ENV_COMPILE = "MASKED_TORCH_RECORD_COMPILE"
_ACC = torch.float64  # dtype of every accumulated statistic


# --------------------------------------------------------------------------------------------------------
# Moments and their merge
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Moments:
    """Per-channel moments of a set of positions; every field is a float64 tensor of shape ``(C,)``.

    ``count`` positions, their ``mean``, ``m2`` = sum of squared deviations from that mean, ``min``,
    ``max`` (``+inf``/``-inf`` for a channel without positions) and ``zeros`` = number of exact zeros.
    Merge two with :func:`merge_moments`; :meth:`to_tensor`/:meth:`from_tensor` pack them into one
    ``(6, C)`` tensor (e.g. for ``torch.distributed.all_gather``).
    """

    count: Tensor
    mean: Tensor
    m2: Tensor
    min: Tensor
    max: Tensor
    zeros: Tensor

    @classmethod
    def empty(cls, channels: int, device: Union[str, torch.device, None] = None) -> "Moments":
        """No positions: the identity of :func:`merge_moments`."""
        z = torch.zeros(channels, dtype=_ACC, device=device)
        inf = torch.full((channels,), float("inf"), dtype=_ACC, device=device)
        return cls(z, z.clone(), z.clone(), inf, -inf, z.clone())

    @property
    def channels(self) -> int:
        return self.count.shape[0]

    @property
    def var(self) -> Tensor:
        """Population variance (``m2 / count``); NaN for a channel without positions."""
        return torch.where(self.count > 0, self.m2 / self.count.clamp_min(1), float("nan"))

    @property
    def std(self) -> Tensor:
        return self.var.sqrt()

    @property
    def zero_frac(self) -> Tensor:
        """Fraction of exact zeros among the positions; NaN for a channel without positions."""
        return torch.where(self.count > 0, self.zeros / self.count.clamp_min(1), float("nan"))

    def to_tensor(self) -> Tensor:
        """``(6, C)``: count, mean, m2, min, max, zeros."""
        return torch.stack([getattr(self, f.name) for f in fields(self)])

    @classmethod
    def from_tensor(cls, packed: Tensor) -> "Moments":
        if packed.dim() != 2 or packed.shape[0] != len(fields(cls)):
            raise ValueError(f"Moments.from_tensor: expected shape (6, C), got {tuple(packed.shape)}")
        return cls(*packed.to(_ACC).unbind(0))

    def to(self, device: Union[str, torch.device]) -> "Moments":
        return Moments(*(getattr(self, f.name).to(device) for f in fields(self)))


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of the union of two disjoint sets of positions (Chan, Golub & LeVeque's parallel formula).

    Pure (``a`` and ``b`` are left as they are); exact for counts and extrema, and ``m2`` stays a centred
    sum: ``m2 = m2_a + m2_b + delta**2 * n_a * n_b / n`` with ``delta = mean_b - mean_a``. Either side may
    be empty (count 0) in any channel.
    """
    if a.channels != b.channels:
        raise ValueError(f"merge_moments: channel counts differ ({a.channels} vs {b.channels})")
    n = a.count + b.count
    a_empty, b_empty = a.count == 0, b.count == 0
    delta = b.mean - a.mean
    w = b.count / n.clamp_min(1)
    # a side without positions contributes nothing, exactly (whatever its ``mean`` holds)
    mean = torch.where(a_empty, b.mean, torch.where(b_empty, a.mean, a.mean + delta * w))
    m2 = torch.where(a_empty, b.m2, torch.where(b_empty, a.m2, a.m2 + b.m2 + delta * delta * (a.count * w)))
    return Moments(
        count=n,
        mean=mean,
        m2=m2,
        min=torch.minimum(a.min, b.min),
        max=torch.maximum(a.max, b.max),
        zeros=a.zeros + b.zeros,
    )


# --------------------------------------------------------------------------------------------------------
# Per-batch reduction (one pass; compiled lazily)
# --------------------------------------------------------------------------------------------------------


def _finish(shift: Tensor, count: Tensor, s1: Tensor, s2: Tensor):
    """Mean and centred ``m2`` from the sums ``s1``, ``s2`` of ``x - shift`` and of its square."""
    has = count > 0
    n_safe = count.clamp_min(1)
    mean = torch.where(has, shift + s1 / n_safe, torch.zeros_like(shift))
    m2 = torch.where(has, (s2 - s1 * s1 / n_safe).clamp_min(0), torch.zeros_like(shift))
    return mean, m2


def _reduce(x: Tensor, mask: Optional[Tensor], shift: Tensor, count_dtype: torch.dtype = torch.int32):
    """``x`` (N, C, L), ``mask`` (N, 1 or C, L) or None, ``shift`` (C,) float64 -> per-channel
    ``(count, mean, m2, min, max, zeros)``, all float64.

    Written as one pass over ``x`` and ``mask`` for ``torch.compile`` (a single fused reduction). Positions
    under the mask are never read (``torch.where``), so NaN there cannot leak. ``m2 = s2 - s1**2 / n`` with
    ``s1, s2`` the float64 sums of ``x - shift`` and of its square: for ``shift`` near the mean (the layer's
    running mean) that is a centred sum. Min and max are taken in ``x``'s own dtype (exact) and the counts in
    ``count_dtype`` (int32 in the compiled kernel, where :func:`_advance` makes sure N * L < 2**31): both
    cheaper than float64.
    """
    n, c, length = x.shape
    d = x.to(_ACC) - shift.view(1, c, 1)
    if mask is None:
        count = torch.full((c,), n * length, dtype=_ACC, device=x.device)
        s1 = d.sum(dim=(0, 2))
        s2 = (d * d).sum(dim=(0, 2))
        lo = x.amin(dim=(0, 2)).to(_ACC)
        hi = x.amax(dim=(0, 2)).to(_ACC)
        zeros = (x == 0).sum(dim=(0, 2), dtype=count_dtype).to(_ACC)
    else:
        valid = (mask != 0).expand(n, c, length)
        d = torch.where(valid, d, torch.zeros((), dtype=_ACC, device=x.device))
        count = valid.sum(dim=(0, 2), dtype=count_dtype).to(_ACC)
        s1 = d.sum(dim=(0, 2))
        s2 = (d * d).sum(dim=(0, 2))
        lo = torch.where(valid, x, float("inf")).amin(dim=(0, 2)).to(_ACC)
        hi = torch.where(valid, x, float("-inf")).amax(dim=(0, 2)).to(_ACC)
        zeros = (valid & (x == 0)).sum(dim=(0, 2), dtype=count_dtype).to(_ACC)
    mean, m2 = _finish(shift, count, s1, s2)
    return count, mean, m2, lo, hi, zeros


def _sum_nl(t: Tensor) -> Tensor:
    """Sum over dims 0 and 2 of ``(N, C, L)``: in ``t``'s dtype over L (cascade summation), then float64."""
    return t.sum(dim=2).to(_ACC).sum(dim=0)


class _Workspace:
    """Scratch tensors reused from call to call: fresh multi-megabyte temporaries cost more in page faults
    than the arithmetic on them. Grows to the largest request; never shrinks until dropped."""

    def __init__(self) -> None:
        self._flat: Optional[Tensor] = None

    def take(self, k: int, shape: tuple[int, ...], like: Tensor) -> list[Tensor]:
        numel = 1
        for s in shape:
            numel *= s
        flat = self._flat
        if flat is None or flat.numel() < k * numel or flat.dtype != like.dtype or flat.device != like.device:
            flat = self._flat = torch.empty(k * numel, dtype=like.dtype, device=like.device)
        return [flat[i * numel:(i + 1) * numel].view(shape) for i in range(k)]


def _reduce_eager(x: Tensor, mask: Optional[Tensor], shift: Tensor, workspace: Optional[_Workspace] = None):
    """:func:`_reduce` for eager PyTorch, from cheap elementwise ops only (multiply, subtract, abs, sign, sum,
    amin, amax, into reused scratch tensors: ``torch.where``, comparisons and fresh temporaries are several
    times slower on CPU).

    Runs in ``x``'s dtype (float32 for half types) with the mask as a 0/1 factor: sums over each sample's
    positions in that dtype, over samples in float64. ``m2`` keeps its relative precision (about 1e-7 in
    float32) because ``x - shift`` is centred; the shift is rounded to ``x``'s dtype and that same value goes
    into the mean. Exact fall-backs: :func:`_reduce` (float64, ``torch.where``) when anything is not finite
    (NaN or Inf anywhere, also under the mask) or a sample has 2**24 positions or more; and ``torch.where``
    for the channels whose min (max) is ambiguous (0 from a masked position, no valid zero).
    """
    n, c, length = x.shape
    if length >= 2**24:
        return _reduce(x, mask, shift, torch.int64)
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if workspace is None:
        workspace = _Workspace()
    shift = shift.to(x.dtype)  # the shift actually subtracted ...
    shift64 = shift.to(_ACC)  # ... and the same value added back
    if mask is None:
        (d,) = workspace.take(1, tuple(x.shape), x)
        count = torch.full((c,), n * length, dtype=_ACC, device=x.device)
        xz = x
        torch.sub(x, shift.view(1, c, 1), out=d)
    else:
        d, xz, vf = workspace.take(3, tuple(x.shape), x)
        vf = vf[:, : mask.shape[1]]
        if mask.dtype == torch.bool:
            vf.copy_(mask)
        else:
            if mask.dtype == x.dtype:
                torch.abs(mask, out=vf)
            else:
                vf.copy_(mask.abs())
            vf.sign_()  # 1 where mask != 0 (NaN stays NaN: caught below)
        count = _sum_nl(vf).expand(c)
        torch.mul(x, vf, out=xz)
        torch.sub(x, shift.view(1, c, 1), out=d)
        d.mul_(vf)
    s1 = _sum_nl(d)
    s2 = _sum_nl(d.square_())
    lo = xz.amin(dim=(0, 2)).to(_ACC)
    hi = xz.amax(dim=(0, 2)).to(_ACC)
    torch.abs(xz, out=d)
    nonzero = _sum_nl(d.sign_())
    if not bool(torch.isfinite(torch.stack([s1, s2, nonzero, count])).all()):
        return _reduce(x, mask, shift64, torch.int64)
    zeros = count - nonzero
    has = count > 0
    if mask is not None:
        # masked positions are 0 in ``xz``: a min (max) of 0 is ambiguous where the channel has masked
        # positions but no valid zero; take those channels again with torch.where
        ambiguous = has & (count < n * length) & (zeros == 0) & ((lo == 0) | (hi == 0))
        if bool(ambiguous.any()):
            idx = ambiguous.nonzero().flatten()
            valid = (mask if mask.shape[1] == 1 else mask.index_select(1, idx)) != 0
            xs = x.index_select(1, idx).to(_ACC)
            lo[idx] = torch.where(valid, xs, float("inf")).amin(dim=(0, 2))
            hi[idx] = torch.where(valid, xs, float("-inf")).amax(dim=(0, 2))
        lo = torch.where(has, lo, float("inf"))
        hi = torch.where(has, hi, float("-inf"))
    mean, m2 = _finish(shift64, count, s1, s2)
    return count.clone(), mean, m2, lo, hi, zeros


def _step(x: Tensor, mask: Optional[Tensor], count, mean, m2, lo, hi, zeros):
    """The running state ``(count, mean, m2, min, max, zeros)`` after one more batch: :func:`_reduce`
    shifted by the running ``mean``, then :func:`merge_moments`. One function, so that ``torch.compile``
    makes it one fused reduction plus one tiny pointwise kernel, with a single Python call per layer."""
    state = Moments(count, mean, m2, lo, hi, zeros)
    merged = merge_moments(state, Moments(*_reduce(x, mask, mean)))
    return merged.count, merged.mean, merged.m2, merged.min, merged.max, merged.zeros


# One compiled entry point per kind of mask, so that each has its own dynamo cache (and recompile limit):
# within one, the variants are N == 1 or not, L == 1 or not, and the dtypes.
def _step_nomask(x: Tensor, count, mean, m2, lo, hi, zeros):
    return _step(x, None, count, mean, m2, lo, hi, zeros)


def _step_mask1(x: Tensor, mask: Tensor, count, mean, m2, lo, hi, zeros):
    return _step(x, mask, count, mean, m2, lo, hi, zeros)


def _step_maskc(x: Tensor, mask: Tensor, count, mean, m2, lo, hi, zeros):
    return _step(x, mask, count, mean, m2, lo, hi, zeros)


_compiled_steps: dict[str, Callable] = {}
_compile_failed = False
_compile_lock = threading.Lock()


def _compiled(kind: str) -> Callable:
    fn = _compiled_steps.get(kind)
    if fn is None:
        with _compile_lock:
            fn = _compiled_steps.get(kind)
            if fn is None:
                fn = {"none": _step_nomask, "one": _step_mask1, "full": _step_maskc}[kind]
                fn = _compiled_steps[kind] = torch.compile(fn, dynamic=True)
    return fn


def _compile_enabled(compile: Optional[bool]) -> bool:
    if compile is not None:
        return bool(compile)
    return os.environ.get(_ENV_COMPILE, "1").strip().lower() not in ("0", "false", "no", "off", "")


def _advance(state: Moments, x: Tensor, mask: Optional[Tensor], use_compile: bool,
             workspace: Optional[_Workspace] = None) -> Moments:
    """``merge_moments(state, moments of (x, mask) shifted by state.mean)``, compiled or eager."""
    global _compile_failed
    if use_compile and not _compile_failed and x.shape[0] * x.shape[2] < 2**31:
        try:
            if mask is None:
                return Moments(*_compiled("none")(x, *_fields(state)))
            kind = "one" if mask.shape[1] == 1 else "full"
            return Moments(*_compiled(kind)(x, mask, *_fields(state)))
        except Exception as exc:  # noqa: BLE001 -- any compiler failure: fall back, once, loudly
            _compile_failed = True
            warnings.warn(
                f"ActivationRecorder: torch.compile of the statistics kernel failed ({type(exc).__name__}: "
                f"{exc}); falling back to eager PyTorch for the rest of this process (slower; same results up "
                f"to float32 rounding)",
                RuntimeWarning,
                stacklevel=2,
            )
    return merge_moments(state, Moments(*_reduce_eager(x, mask, state.mean, workspace)))


def _fields(m: Moments) -> tuple[Tensor, ...]:
    return (m.count, m.mean, m.m2, m.min, m.max, m.zeros)


def _first_moments(x: Tensor, mask: Optional[Tensor], state: Optional[Moments], use_compile: bool,
                   workspace: Optional[_Workspace] = None) -> Moments:
    """:func:`_advance` for a state without a reference mean in some channel (first batch, or channels
    without any kept position yet): those channels are shifted by the batch's own mean (an extra pass)."""
    c = x.shape[1]
    empty = Moments.empty(c, x.device)
    batch_mean = _advance(empty, x, mask, use_compile, workspace).mean
    if state is None:
        state = empty
    shift = torch.where(state.count > 0, state.mean, batch_mean)
    return _advance(Moments(state.count, shift, state.m2, state.min, state.max, state.zeros), x, mask, use_compile,
                    workspace)


def _as_ncl(output: Tensor, mask: Optional[Tensor], where: str) -> tuple[Tensor, Optional[Tensor]]:
    """``(N, C, *S)`` or ``(N, C)`` output and its mask as ``(N, C, L)`` and ``(N, 1 or C, L)``."""
    if not isinstance(output, Tensor):
        raise TypeError(f"{where}: expected a tensor output, got {type(output).__name__}")
    if output.dim() < 2:
        raise ValueError(f"{where}: expected an output (N, C, *spatial) or (N, C), got shape {tuple(output.shape)}")
    if output.is_complex():
        raise TypeError(f"{where}: complex outputs are not supported ({output.dtype})")
    n, c = output.shape[:2]
    x = _canonical(output, n, c)
    if mask is None:
        return x, None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{where}: expected the output mask to be a tensor or None, got {type(mask).__name__}")
    if (
        mask.dim() != output.dim()
        or mask.shape[0] != n
        or mask.shape[2:] != output.shape[2:]
        or mask.shape[1] not in (1, c)
    ):
        raise ValueError(
            f"{where}: the output mask of shape {tuple(mask.shape)} does not fit the output of shape "
            f"{tuple(output.shape)}; expected (N, 1 or C, *spatial)"
        )
    return x, _canonical(mask, n, mask.shape[1])


def _canonical(t: Tensor, n: int, c: int) -> Tensor:
    """``t`` (N, C, *S) as an (N, C, L) plain tensor (not a view, so no guards on whatever it is a view of;
    detached) with the standard contiguous strides (also along size-1 dims, which ``reshape`` may leave at
    any stride): one layout for the compiled kernel. Copies only a non-contiguous tensor (channels-last,
    expanded)."""
    if not t.is_contiguous():
        t = t.contiguous()
    length = 1
    for s in t.shape[2:]:
        length *= s
    alias = torch.empty((0,), dtype=t.dtype, device=t.device)
    return alias.set_(t.untyped_storage(), t.storage_offset(), (n, c, length), (c * length, length, 1))


def batch_moments(
    output: Tensor, mask: Optional[Tensor] = None, shift: Optional[Tensor] = None, *, compile: bool = False
) -> Moments:
    """Per-channel :class:`Moments` of one output ``(N, C, *S)`` or ``(N, C)`` over the positions where
    ``mask`` (``(N, 1 or C, *S)``, any dtype) is non-zero, or over all positions for ``mask=None``.

    ``shift`` (``(C,)``) is a per-channel reference subtracted before squaring; near the mean keeps ``m2``
    exact for activations on a large mean. ``None`` takes two passes: the batch's own mean first.
    """
    x, m = _as_ncl(output, mask, "batch_moments")
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        use = _compile_enabled(compile)
        if shift is None:
            return _first_moments(x, m, None, use)
        c = x.shape[1]
        empty = Moments.empty(c, x.device)
        shift = shift.to(device=x.device, dtype=_ACC).expand(c).clone()
        return _advance(Moments(empty.count, shift, empty.m2, empty.min, empty.max, empty.zeros), x, m, use)


# --------------------------------------------------------------------------------------------------------
# Layer selection
# --------------------------------------------------------------------------------------------------------

_NORMS: tuple[type, ...] = tuple(
    t for t in (
        torch.nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm, masked BN
        nn.GroupNorm,
        nn.LayerNorm,
        getattr(nn, "RMSNorm", None),
    ) if t is not None
)
_SKIP_ELEMENTWISE = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                     nn.FeatureAlphaDropout)
_ACTIVATIONS: tuple[type, ...] = tuple(t for t in ELEMENTWISE if not issubclass(t, _SKIP_ELEMENTWISE))

Include = Union[None, Sequence[str], Callable[[str, nn.Module], bool]]


def default_selection(name: str, module: nn.Module) -> bool:
    """Convolutions, normalisations, :class:`~masked_torch.nn.Masked` and :class:`~masked_torch.nn.Unmasked`
    wrappers and plain activations (``ELEMENTWISE`` without Identity and dropouts). Containers are not
    selected; an ``Unmasked`` wrapper is selected where the layer it wraps is."""
    if isinstance(module, Unmasked):
        return default_selection(name, module.module)
    return isinstance(module, (torch.nn.modules.conv._ConvNd, Masked) + _NORMS + _ACTIVATIONS)


def _optimized_module_type() -> Optional[type]:
    """``torch._dynamo.eval_frame.OptimizedModule`` if the compiler is loaded, else ``None``: without
    ``torch._dynamo`` imported no module can have been compiled, and importing it costs 1-2 s."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def _not_traced(fn: Callable) -> Callable:
    """``torch._dynamo.disable(fn)``: a hook that runs eagerly under ``torch.compile`` (dynamo breaks the
    graph there) instead of being traced into a compiled graph. The compiler is not imported for it: while
    ``torch._dynamo`` is not loaded nothing can be tracing, so ``fn`` runs as it is; once it is loaded (a
    ``torch.compile`` inside the recording block), the disabled wrapper is made once and used from then on."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None and hasattr(dynamo, "disable"):
        return dynamo.disable(fn)
    disabled: Optional[Callable] = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            loaded = sys.modules.get("torch._dynamo")
            if loaded is None or not hasattr(loaded, "disable"):
                return fn(*args, **kwargs)
            disabled = loaded.disable(fn)
        return disabled(*args, **kwargs)

    return call


def _compiled_modules(model: nn.Module) -> list[str]:
    optimized = _optimized_module_type()
    found = []
    for name, module in model.named_modules():
        if ((optimized is not None and isinstance(module, optimized))
                or getattr(module, "_compiled_call_impl", None) is not None):
            found.append(name or "<model>")
    return found


def _refuse_compiled(model: nn.Module) -> None:
    compiled = _compiled_modules(model)
    if not compiled:
        return
    optimized = _optimized_module_type()
    hint = ("record the eager model `model._orig_mod` instead (same parameters), or the model before "
            "torch.compile" if optimized is not None and isinstance(model, optimized) else
            "record an eager copy (use `._orig_mod` of each compiled submodule) or the model before "
            "torch.compile")
    raise RuntimeError(
        f"ActivationRecorder: cannot record a torch.compile'd model (compiled: {compiled}): PyTorch "
        f"ignores forward hooks added to compiled modules, so the statistics would be silently empty "
        f"or partial; {hint}"
    )


def select_layers(model: nn.Module, include: Include = None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the layers a recorder records, in ``model.named_modules()`` order.

    ``include=None``: :func:`default_selection`; a predicate ``(name, module) -> bool``: the modules it
    accepts. Either way a module inside a selected :class:`~masked_torch.nn.Masked` wrapper is skipped (the
    wrapper's output *is* its output, with the mask). A list of names: exactly those (unknown names raise
    ``KeyError``).
    """
    modules = list(model.named_modules())
    if include is None or callable(include):
        accept = default_selection if include is None else include
        chosen, wrappers = [], []
        for name, module in modules:
            if any(name.startswith(w + ".") if w else True for w in wrappers):
                continue
            if accept(name, module):
                chosen.append((name, module))
                if isinstance(module, (Masked, Unmasked)):
                    wrappers.append(name)
        return chosen
    if isinstance(include, str):
        include = [include]
    by_name = dict(modules)
    unknown = [name for name in include if name not in by_name]
    if unknown:
        raise KeyError(f"ActivationRecorder: no modules named {unknown} in the model; "
                       f"names are those of model.named_modules()")
    wanted = set(include)
    return [(name, module) for name, module in modules if name in wanted]


# --------------------------------------------------------------------------------------------------------
# The recorder
# --------------------------------------------------------------------------------------------------------


class ActivationRecorder:
    """Context manager recording per-channel activation statistics of a model's layers.

    ``model``: any ``nn.Module`` (masked modules return ``(output, mask)``, plain ones a tensor).
    ``include``: ``None`` (every convolution, normalisation, ``Masked`` wrapper and activation; see
    :func:`select_layers`), a list of ``named_modules()`` names, or a predicate ``(name, module) -> bool``.
    ``compile``: run the per-batch reduction under ``torch.compile`` (``None``: yes unless
    ``MASKED_TORCH_RECORD_COMPILE=0``); counts, min, max and zero fractions are identical either way, mean
    and variance agree to the eager kernel's float32 rounding (about 1e-7 relative).

    Hooks are registered on ``__enter__`` and always removed on ``__exit__`` (also on an exception or
    ``KeyboardInterrupt``). Statistics accumulate over every forward pass inside the block and stay
    readable after it: :meth:`to_frame`, :meth:`moments`; :meth:`reduce` merges ``torch.distributed``
    ranks. Entering again continues to accumulate; :meth:`reset` clears. A compiled model is refused (hooks
    on it would be ignored), and :meth:`to_frame` raises rather than return a frame without the selected
    layers that never fired. While recording, the eager kernel keeps scratch space of up to three times the
    largest recorded output.
    """

    def __init__(self, model: nn.Module, include: Include = None, *, compile: Optional[bool] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ActivationRecorder: model must be an nn.Module, got {type(model).__name__}")
        _refuse_compiled(model)
        self.model = model
        self.layers = select_layers(model, include)
        if not self.layers:
            raise ValueError(
                "ActivationRecorder: no layers selected (default: convolutions, normalisations, Masked "
                "wrappers and activations); pass include=[names] or include=predicate"
            )
        self.compile = _compile_enabled(compile)
        self._state: dict[str, Moments] = {}
        self._primed: set[str] = set()
        self._calls: dict[str, int] = {name: 0 for name, _ in self.layers}
        self._model_calls = 0
        self._handles: list = []
        self._workspace = _Workspace()  # eager kernel scratch, dropped on __exit__

    # -- hooks ------------------------------------------------------------------------------------------

    def _make_hook(self, name: str, module: nn.Module):
        masked = isinstance(module, MaskedModule)
        where = f"ActivationRecorder[{name!r} ({type(module).__name__})]"

        @_not_traced
        def hook(mod, args, output):
            if masked and isinstance(output, tuple) and len(output) == 2:
                out, mask = output
            elif isinstance(output, Tensor):
                out, mask = output, None
            else:
                raise TypeError(
                    f"{where}: expected a tensor or an (output, mask) pair, got {type(output).__name__}; "
                    f"leave this layer out of include"
                )
            self._update(name, out, mask, where)

        return hook

    def _count_model_call(self, mod, args, output) -> None:
        self._model_calls += 1

    def _update(self, name: str, output: Tensor, mask: Optional[Tensor], where: str) -> None:
        x, m = _as_ncl(output, mask, where)
        if torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
            # one state of grad mode and autocast for the compiled kernel (entered only when needed: cheap)
            with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
                self._accumulate(name, x, m, where)
        else:
            self._accumulate(name, x, m, where)

    def _accumulate(self, name: str, x: Tensor, m: Optional[Tensor], where: str) -> None:
        c = x.shape[1]
        state = self._state.get(name)
        if state is not None:
            if state.channels != c:
                raise ValueError(f"{where}: output has {c} channels, earlier batches had {state.channels}")
            if state.count.device != x.device:
                state = state.to(x.device)
        if name in self._primed:
            # one pass, shifted by the running mean
            state = _advance(state, x, m, self.compile, self._workspace)
        else:
            state = _first_moments(x, m, state, self.compile, self._workspace)
            if bool((state.count > 0).all()):
                self._primed.add(name)
        self._state[name] = state
        self._calls[name] += 1

    # -- context manager ----------------------------------------------------------------------------------

    def __enter__(self) -> "ActivationRecorder":
        if self._handles:
            raise RuntimeError("ActivationRecorder: already recording (the block is not re-entrant)")
        _refuse_compiled(self.model)  # compiled since the recorder was made?
        try:
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(self._make_hook(name, module)))
            self._handles.append(self.model.register_forward_hook(_not_traced(self._count_model_call)))
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove_hooks()
        self._workspace = _Workspace()
        return False

    def _remove_hooks(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    @property
    def recording(self) -> bool:
        return bool(self._handles)

    def reset(self) -> None:
        """Forget every statistic (hooks stay as they are)."""
        self._state.clear()
        self._primed.clear()
        self._calls = {name: 0 for name, _ in self.layers}
        self._model_calls = 0

    def reduce(self, group=None) -> "ActivationRecorder":
        """Merge the statistics of every ``torch.distributed`` rank into this recorder (on every rank), via
        :func:`masked_torch.analysis.distributed.reduce_moments`; without a process group nothing changes.

        Every rank must have recorded the same layers (each of them must have fired on every rank)."""
        from .distributed import reduce_moments

        mine = self.moments(strict=True)
        merged = reduce_moments({name: m.to("cpu") for name, m in mine.items()}, group)
        for name, m in merged.items():
            self._state[name] = m.to(mine[name].count.device)
            if bool((m.count > 0).all()):
                self._primed.add(name)
        return self

    # -- results ------------------------------------------------------------------------------------------

    @property
    def calls(self) -> dict[str, int]:
        """How many times each selected layer fired."""
        return dict(self._calls)

    def _check_fired(self, strict: bool) -> None:
        missing = [name for name, _ in self.layers if self._calls[name] == 0]
        if not missing:
            return
        if len(missing) == len(self.layers):
            if self._model_calls == 0:
                raise RuntimeError(
                    "ActivationRecorder: nothing was recorded: no forward pass of the model reached the "
                    "recorder's hooks inside the `with` block. If the model ran under torch.compile (a "
                    "function compiled before the recorder was entered), PyTorch skipped the hooks: record "
                    "the eager model, or compile after entering the recorder"
                )
            raise RuntimeError(
                f"ActivationRecorder: the model ran {self._model_calls} forward pass(es) but none of the "
                f"{len(self.layers)} selected layers fired; was the model (or part of it) compiled with "
                f"torch.compile after the recorder was created? Hooks on compiled modules are ignored: "
                f"record the eager model (`._orig_mod`)"
            )
        if strict:
            raise RuntimeError(
                f"ActivationRecorder: selected layers {missing} never fired while "
                f"{[n for n, _ in self.layers if self._calls[n]]} did; if they are compiled "
                f"(torch.compile ignores hooks), record the eager model; if they are legitimately unused, "
                f"leave them out with include=... or pass strict=False"
            )

    def moments(self, strict: bool = True) -> dict[str, Moments]:
        """``{layer name: Moments}`` in model order (copies, on the device the outputs were on).

        Raises ``RuntimeError`` if selected layers never fired (``strict=False``: leave them out, unless
        none fired)."""
        self._check_fired(strict)
        return {name: Moments(*(t.clone() for t in (getattr(self._state[name], f.name)
                                                     for f in fields(Moments))))
                for name, _ in self.layers if name in self._state}

    def to_frame(self, strict: bool = True):
        """Tidy ``pandas.DataFrame``: one row per (layer, channel), columns :data:`COLUMNS`, model order.

        ``count`` is an integer; ``mean``/``var``/``std``/``min``/``max``/``zero_frac`` are NaN for a channel
        without any kept position. Raises ``RuntimeError`` rather than leave out layers that never fired
        (``strict=False`` leaves them out, unless none fired).
        """
        import numpy as np
        import pandas as pd

        moments = self.moments(strict)
        parts = []
        for name, mom in moments.items():
            mom = mom.to("cpu")
            has = (mom.count > 0).numpy()

            def col(t: Tensor, has=has) -> np.ndarray:
                return np.where(has, t.numpy(), np.nan)

            c = mom.channels
            parts.append(pd.DataFrame({
                "layer": [name] * c,
                "channel": np.arange(c, dtype=np.int64),
                "count": mom.count.numpy().astype(np.int64),
                "mean": col(mom.mean),
                "var": col(mom.var),
                "std": col(mom.std),
                "min": col(mom.min),
                "max": col(mom.max),
                "zero_frac": col(mom.zero_frac),
            }))
        if not parts:
            return pd.DataFrame({k: [] for k in COLUMNS})
        return pd.concat(parts, ignore_index=True)[list(COLUMNS)]

    def __repr__(self) -> str:
        names = [name for name, _ in self.layers]
        return (f"ActivationRecorder({type(self.model).__name__}, layers={names}, compile={self.compile}, "
                f"recording={self.recording})")
