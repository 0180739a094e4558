"""Per-batch reduction of one layer output to per-channel sums over its kept positions.

:func:`shifted_sums` reduces an output ``x`` ``(N, C, L)`` and its mask ``(N, 1 or C, L)`` (``None``: every
position) to, per channel: the number of kept positions (``mask != 0``), the sums of ``x - shift`` and of
its square, min, max and the number of non-zero values, as one ``(6, C)`` float64 numpy array.
:func:`advance` adds them to a running state (:func:`~masked_torch.analysis.moments.add_shifted_sums`),
:func:`first_moments` to a state whose channels have no running mean yet (the first batch);
:func:`batch_moments` is the one-call form for a single output.

Two kernels, one result (plus an exact fall-back):

* compiled (:mod:`masked_torch.analysis.native`; the default where it applies and builds): one fused pass
  in C over a float32 output on the CPU and its float32 mask, no scratch written, the shift subtracted on
  the fly; float32 sums within blocks of 512 positions, float64 across them. Built with the system's C
  compiler on first use (about 0.2 s, then cached on disk). ``compiled=None`` (the default) uses it where
  it can and the eager kernel elsewhere (no compiler, other dtypes or devices); ``True`` also warns once
  where it cannot be built; ``False`` never uses it.
* eager (:func:`_eager_per_sample`): vectorised multiply, compare, sum and min/max kernels into reused
  scratch tensors, in ``x``'s dtype (float32 for half types and integers): five to seven passes over an
  output (on CPU ``torch.where``, ``aminmax``, ``var_mean``, ``count_nonzero`` and fresh temporaries are
  several times slower). Sums over each sample's positions in that dtype, then over samples in float64 on
  the host; the shift is rounded to ``x``'s dtype and that same value is added back. The kept positions of
  a mask are counted once per mask object (:meth:`Workspace.counts`): an activation after a masked
  convolution passes the same mask on.
* exact (:func:`exact_sums`): float64 with ``torch.where``, values under the mask never read: the fall-back
  of both when anything is not finite (NaN or Inf anywhere, also under the mask), and of the eager kernel
  when a sample has 2**24 positions or more.

Reference point and precision: the compiled kernel sums around the running mean. The eager kernel sums
around 0 where that loses little, else around the running mean (:func:`advance`): around 0 saves it the
pass that subtracts the shift; it is taken where every channel's squared mean is at most ``_AROUND_ZERO``
(4) times its variance, judged from the running moments. A batch whose mean is far from the reference for
its spread (more than 2 of its standard deviations: the first batch, a batch that moved) is reduced again
around its own mean (both kernels), so ``mean`` and ``var`` keep about 1e-7 relative
precision (float32 sums; float64 exact) however far the mean is from 0 or drifts; around 0 the
float32 sums lose at most a factor ``1 + _AROUND_ZERO`` of that to cancellation (about 6e-7 at worst).
Counts, min, max and zeros are exact.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .moments import ACC, Moments, add_shifted_sums, empty_state

__all__ = ["Workspace", "as_ncl", "shifted_sums", "exact_sums", "empty_sums", "advance", "first_moments",
           "batch_moments", "native_for"]

_MAX_EXACT_F32 = 2**24  # float32 counts and sums of 0/1 are exact below this many positions per sample
#: Sums are taken around 0 rather than around the running mean where every channel's squared mean is at most
#: this many times its variance (the mean within 2 standard deviations of 0: a ReLU's output, a convolution
#: without a large bias): float32 sums of ``x`` and ``x**2`` then keep ``m2`` to within a factor
#: ``1 + _AROUND_ZERO`` of the centred sums' relative precision (about 6e-7 at worst instead of 1e-7).
_AROUND_ZERO = 4.0
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


class Workspace:
    """Scratch tensors reused from call to call: fresh multi-megabyte temporaries cost more in page faults
    than the arithmetic on them. Grows to the largest request; never shrinks until dropped.

    Also remembers the last mask it saw (:func:`as_ncl` with this workspace) and that mask's kept positions
    (:meth:`counts`, :meth:`valid`): layers that pass their mask on unchanged (an activation after a masked
    convolution) share one mask object, whose kept positions are then counted once."""

    def __init__(self) -> None:
        self._flat: Optional[Tensor] = None
        self._views: tuple = ((), [])  # (key, views) of the last request: the same shapes come back every batch
        self._alias: tuple = (None, -1, None)  # (weakref to the caller's mask, its version, its (N, C, L) alias)
        self._mask: tuple = (None, -1)  # (weakref to the mask _counts and _valid are of, its version)
        self._counts: Optional[np.ndarray] = None
        self._valid: Optional[Tensor] = None
        self._valid_flat: Optional[Tensor] = None

    def take(self, shapes: list[tuple[int, ...]], like: Tensor) -> list[Tensor]:
        key = (tuple(shapes), like.dtype, like.device)
        if self._views[0] == key:
            return self._views[1]
        sizes = [_numel(shape) for shape in shapes]
        flat = self._flat = _at_least(self._flat, sum(sizes), like.dtype, like.device)
        out, start = [], 0
        for shape, numel in zip(shapes, sizes):
            out.append(flat[start:start + numel].view(shape))
            start += numel
        self._views = (key, out)
        return out

    def alias(self, mask: Tensor, make: Callable[[], Tensor]) -> Tensor:
        """``make()``, or the tensor it returned for the same ``mask`` object last time if ``mask`` has not
        been modified in place since (its version counter; an inference tensor has none, so it is never
        reused)."""
        version = _version(mask)
        ref, last, alias = self._alias
        if version is not None and ref is not None and ref() is mask and version == last:
            return alias
        alias = make()
        self._alias = (weakref.ref(mask), version, alias)
        return alias

    def _remember(self, mask: Tensor) -> None:
        """Forget what is cached unless it is of this very mask, unmodified (never for an inference tensor)."""
        version = _version(mask)
        ref, last = self._mask
        if version is None or ref is None or ref() is not mask or version != last:
            self._mask = (weakref.ref(mask), version)
            self._counts = self._valid = None

    def counts(self, mask: Tensor, scratch: Tensor) -> np.ndarray:
        """Kept positions (``mask != 0``) per channel of a mask ``(N, Cm, L)``, ``(Cm,)`` float64: from the
        cached :meth:`valid` if there is one, else counted in ``scratch`` (at least as many elements as
        ``mask``, in the dtype to count in: exact below 2**24 positions per sample in float32; overwritten)."""
        self._remember(mask)
        if self._counts is None:
            if self._valid is not None:
                valid = self._valid
            else:
                valid = scratch.view(-1)[:mask.numel()].view(mask.shape)
                torch.ne(mask, 0, out=valid)  # 1 where kept (NaN counts as kept, as in exact_sums)
            self._counts = valid.sum(dim=2).cpu().numpy().sum(axis=0, dtype=np.float64)
        return self._counts

    def valid(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """``mask != 0`` as 0/1 in ``dtype``, cached for the same unmodified mask (in its own buffer)."""
        self._remember(mask)
        valid = self._valid
        if valid is None or valid.dtype != dtype:
            numel = mask.numel()
            self._valid_flat = _at_least(self._valid_flat, numel, dtype, mask.device)
            valid = self._valid = self._valid_flat[:numel].view(mask.shape)
            torch.ne(mask, 0, out=valid)  # 1 where kept (NaN counts as kept, as in exact_sums)
        return valid


def _version(t: Tensor) -> Optional[int]:
    """``t``'s version counter (bumped by every in-place change), or ``None`` for a tensor without one (made
    under ``torch.inference_mode``). Changes that bypass it (``t.data[...] = ...``, a shared numpy buffer
    refilled) are not seen: the caches assume masks are not modified that way between two layers."""
    return None if t.is_inference() else t._version


def _at_least(flat: Optional[Tensor], numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``flat`` if it holds ``numel`` elements of ``dtype`` on ``device``, else a new 1-d buffer that does."""
    if flat is None or flat.numel() < numel or flat.dtype != dtype or flat.device != device:
        flat = torch.empty(numel, dtype=dtype, device=device)
    return flat


def _numel(shape: tuple[int, ...]) -> int:
    numel = 1
    for s in shape:
        numel *= s
    return numel


def as_ncl(output: Tensor, mask: Optional[Tensor], where: str,
           workspace: Optional[Workspace] = None) -> tuple[Tensor, Optional[Tensor]]:
    """``(N, C, *S)`` or ``(N, C)`` output and its mask as ``(N, C, L)`` and ``(N, 1 or C, L)``, detached;
    ``where`` names the caller in errors. With a ``workspace``, the same unmodified mask object gives the
    same ``(N, 1 or C, L)`` tensor as last time (so :meth:`Workspace.kept` computes its kept positions once)."""
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
    if workspace is None:
        return x, _canonical(mask, n, mask.shape[1])
    return x, workspace.alias(mask, lambda: _canonical(mask, n, mask.shape[1]))


def _canonical(t: Tensor, n: int, c: int) -> Tensor:
    """``t`` (N, C, *S) as a contiguous (N, C, L) view, detached, its memory holding its values (a lazily
    negated view is materialised); copies only such a tensor or a non-contiguous one (channels-last,
    expanded)."""
    length = 1
    for s in t.shape[2:]:
        length *= s
    return t.detach().resolve_neg().contiguous().view(n, c, length)


# --------------------------------------------------------------------------------------------------------
# The exact kernel (float64, torch.where) and the eager one (cheap passes)
# --------------------------------------------------------------------------------------------------------


def exact_sums(x: Tensor, mask: Optional[Tensor], shift: Tensor) -> Tensor:
    """Per channel ``(6, C)`` float64: count, ``s1``, ``s2``, min, max, nonzero of ``x`` over the positions
    where ``mask`` is non-zero (``None``: all), as :func:`shifted_sums`; ``shift`` ``(1, C, 1)`` float64 is
    used as it is.

    In float64 with ``torch.where``, so values under the mask are never read (NaN there cannot leak): the
    other kernels' fall-back for outputs that are not finite, and for any device and dtype.
    """
    n, c, length = x.shape
    d = x.to(ACC) - shift
    if mask is None:
        count = torch.full((c,), n * length, dtype=torch.int64, device=x.device)
        lo, hi = x.amin(dim=(0, 2)), x.amax(dim=(0, 2))
        nonzero = (x != 0).sum(dim=(0, 2))
    else:
        valid = (mask != 0).expand(n, c, length)
        d = torch.where(valid, d, torch.zeros((), dtype=ACC, device=x.device))
        count = valid.sum(dim=(0, 2))
        lo = torch.where(valid, x, float("inf")).amin(dim=(0, 2))
        hi = torch.where(valid, x, float("-inf")).amax(dim=(0, 2))
        nonzero = (valid & (x != 0)).sum(dim=(0, 2))
    return torch.stack([t.to(ACC) for t in (count, d.sum(dim=(0, 2)), (d * d).sum(dim=(0, 2)), lo, hi, nonzero)])


def _eager_per_sample(x: Tensor, mask: Optional[Tensor], shift: Optional[Tensor], workspace: Workspace,
                      zeroed: bool = False) -> tuple[Tensor, Optional[np.ndarray]]:
    """Per sample and channel ``(5, N, C)`` in ``x``'s dtype: sum of ``x - shift`` and of its square, min,
    max and number of non-zero values, from cheap vectorised passes (``shift`` ``(1, C, 1)`` in ``x``'s
    dtype; ``None``: 0, which saves the pass that subtracts it); and the kept positions per mask channel
    (``(1 or C,)`` float64, :meth:`Workspace.counts`; ``None`` without a mask).

    The mask enters as a 0/1 factor: masked positions are 0 in the tensor min, max and the non-zero count are
    taken of, so the count is of kept non-zeros but a min (max) of 0 may come from a masked position
    (:func:`_fix_ambiguous_extrema`); values that are not finite there turn the sums into NaN (caught by
    the caller)."""
    counts = None
    if mask is None or zeroed:  # a masked module's output: already exactly 0 where its mask is 0
        (d,) = workspace.take([tuple(x.shape)], x)
        xz = x
    else:
        d, xz = workspace.take([tuple(x.shape), tuple(x.shape)], x)
    if mask is not None:
        # the 0/1 kept positions only where they multiply; else the counts alone, counted in d (still in cache)
        valid = workspace.valid(mask, x.dtype) if shift is not None or not zeroed else None
        counts = workspace.counts(mask, d)
        if not zeroed:
            torch.mul(x, valid, out=xz)  # x where kept, 0 elsewhere
    out = torch.empty((5,) + tuple(x.shape[:2]), dtype=x.dtype, device=x.device)
    s1, s2, lo, hi, nonzero = out.unbind(0)
    if shift is None:
        torch.sum(xz, dim=2, out=s1)
        torch.sum(torch.mul(xz, xz, out=d), dim=2, out=s2)
    else:
        if mask is None:
            torch.sub(x, shift, out=d)
        else:
            torch.addcmul(xz, valid, shift, value=-1, out=d)  # x - shift where kept, 0 elsewhere
        torch.sum(d, dim=2, out=s1)
        torch.sum(d.square_(), dim=2, out=s2)
    torch.amin(xz, dim=2, out=lo)
    torch.amax(xz, dim=2, out=hi)
    torch.sum(torch.ne(xz, 0, out=d), dim=2, out=nonzero)
    return out, counts


def _over_samples(per_sample: Tensor, counts: Optional[np.ndarray], positions: int) -> np.ndarray:
    """``(5, N, C)`` partial sums and the kept positions per mask channel (``None``: ``positions`` in every
    channel) -> ``(6, C)`` float64 sums (rows count, s1, s2, min, max, nonzero) on the host: one copy, then
    a handful of numpy reductions (float64 accumulators)."""
    host = per_sample.cpu().numpy()
    sums = np.empty((6, host.shape[2]))
    sums[0] = positions if counts is None else counts  # (1,) broadcasts over the channels
    np.sum(host[:2], axis=1, dtype=np.float64, out=sums[1:3])
    sums[3] = host[2].min(axis=0)
    sums[4] = host[3].max(axis=0)
    np.sum(host[4], axis=0, dtype=np.float64, out=sums[5])
    return sums


def _fix_ambiguous_extrema(sums: np.ndarray, x: Tensor, mask: Tensor) -> None:
    """After :func:`_eager_per_sample`, a min (max) of 0 is ambiguous where a channel has masked positions but
    no kept zero (also a channel without kept positions). Takes those channels' min and max again with
    ``torch.where``, in place."""
    n, _, length = x.shape
    count, lo, hi, nonzero = sums[0], sums[3], sums[4], sums[5]
    ambiguous = (lo * hi == 0) & (nonzero == count) & (count < n * length)
    if not ambiguous.any():
        return
    ambiguous = np.flatnonzero(ambiguous)
    idx = torch.from_numpy(ambiguous).to(x.device)
    valid = (mask if mask.shape[1] == 1 else mask.index_select(1, idx)) != 0
    xs = x.index_select(1, idx)
    lo[ambiguous] = torch.where(valid, xs, float("inf")).amin(dim=(0, 2)).cpu().double().numpy()
    hi[ambiguous] = torch.where(valid, xs, float("-inf")).amax(dim=(0, 2)).cpu().double().numpy()


# --------------------------------------------------------------------------------------------------------
# The compiled kernel (native.py), where it applies and builds
# --------------------------------------------------------------------------------------------------------


_warned_unavailable = False


def native_for(x: Tensor, mask: Optional[Tensor], compiled: Optional[bool]):
    """The compiled kernel (:class:`~masked_torch.analysis.native.Library`) if ``compiled`` asks for it
    (``True`` or ``None``) and it applies to these tensors and builds here; else ``None`` (the eager
    kernel)."""
    if compiled is False:
        return None
    from . import native

    return _compiled_fn(required=compiled is True) if native.applies(x, mask) else None


def _compiled_fn(required: bool):
    """The compiled kernel, or ``None`` (eager): it could not be built here, which ``required``
    (``compiled=True``) says once per process in a warning; ``compiled=None`` (auto) falls back quietly."""
    global _warned_unavailable
    from . import native  # builds on first use only

    fn = native.load()
    if fn is None and required and not _warned_unavailable:
        _warned_unavailable = True
        warnings.warn(
            f"masked_torch.analysis: the compiled statistics kernel is not available ({native.unavailable()}); "
            f"using the eager kernel (same results up to float32 rounding, slower)",
            RuntimeWarning,
            stacklevel=2,
        )
    return fn


# --------------------------------------------------------------------------------------------------------
# Sums, and a running state advanced by them
# --------------------------------------------------------------------------------------------------------


def empty_sums(channels: int) -> np.ndarray:
    """:func:`shifted_sums` of no positions."""
    sums = np.zeros((6, channels))
    sums[3], sums[4] = np.inf, -np.inf
    return sums


def shifted_sums(x: Tensor, mask: Optional[Tensor], shift: np.ndarray, workspace: Optional[Workspace] = None,
                 *, compiled: Optional[bool] = False, zeroed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sums of ``x`` (N, C, L) over the positions where ``mask`` (N, 1 or C, L; any dtype;
    ``None``: all) is non-zero, around ``shift`` (C,): ``(sums, shift_used)``, float64 numpy arrays.

    ``sums`` ``(6, C)``: rows count, ``s1`` = sum of ``x - shift_used``, ``s2`` = sum of its square, min,
    max (``+inf``/``-inf`` in a channel without positions), number of non-zero values: what
    :func:`~masked_torch.analysis.moments.add_shifted_sums` takes. ``shift_used`` is ``shift`` as it was
    subtracted (rounded to ``x``'s dtype). ``compiled``: the compiled kernel where it applies (a float32
    output on the CPU) and builds; ``None``: the same, quietly falling back to the eager kernel where it
    cannot be built; ``True`` warns once then; ``False``: the eager kernel (see the module docstring). ``zeroed``: ``x`` is already exactly 0 wherever ``mask`` is 0 (the output of a
    masked module), which saves the eager kernel one pass.
    """
    n, c, length = x.shape
    shift = np.asarray(shift, dtype=np.float64)
    if n * length == 0:
        return empty_sums(c), shift
    fn = native_for(x, mask, compiled)
    if fn is not None:
        from .native import channel_sums

        rounded = shift.astype(np.float32)  # the shift actually subtracted, and added back
        sums = channel_sums(fn, x, mask, rounded)
        if np.isfinite(sums[1:3]).all():
            return sums, rounded.astype(np.float64)
        return _exact_sums(x, mask, rounded.astype(np.float64))
    if length >= _MAX_EXACT_F32:
        return _exact_sums(x, mask, shift)
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    rounded = shift.astype(_NUMPY_DTYPES.get(x.dtype, np.float64))  # the shift actually subtracted ...
    shift_used = rounded.astype(np.float64)  # ... and the same value added back
    shift_x = torch.from_numpy(rounded).to(device=x.device, dtype=x.dtype).view(1, c, 1) if rounded.any() else None
    per_sample, counts = _eager_per_sample(x, mask, shift_x, workspace if workspace is not None else Workspace(),
                                           zeroed)
    sums = _over_samples(per_sample, counts, n * length)
    if not np.isfinite(sums).all():
        return _exact_sums(x, mask, shift_used)
    if mask is not None:
        _fix_ambiguous_extrema(sums, x, mask)
    return sums, shift_used


def _exact_sums(x: Tensor, mask: Optional[Tensor], shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return exact_sums(x, mask, torch.from_numpy(shift).to(x.device).view(1, -1, 1)).cpu().numpy(), shift


def _centred_enough(count: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> bool:
    """Whether sums of ``x - shift`` (``s1``) and of its square (``s2``) over ``count`` positions per channel
    lose at most a factor ``1 + _AROUND_ZERO`` of their relative precision to cancellation in the centred
    sum of squares ``m2 = s2 - s1**2 / count``: ``(mean - shift)**2 <= _AROUND_ZERO * m2 / count`` in every
    channel, i.e. ``(1 + k) * s1**2 <= k * count * s2`` (no subtraction needed to check it)."""
    return bool(np.all((1.0 + _AROUND_ZERO) * s1 * s1 <= _AROUND_ZERO * count * s2))


def advance(state: np.ndarray, x: Tensor, mask: Optional[Tensor], workspace: Optional[Workspace] = None,
            *, compiled: Optional[bool] = False, zeroed: bool = False) -> np.ndarray:
    """A packed state (:func:`~masked_torch.analysis.moments.add_shifted_sums`) plus the positions of one batch
    (``x`` (N, C, L), ``mask`` (N, 1 or C, L) or ``None``), in one pass: around 0 where the running moments
    say that loses no precision (every channel's mean within ``sqrt(_AROUND_ZERO)`` standard deviations of 0,
    as after a ReLU or a convolution without a large bias; the eager kernel then skips a pass), else around
    the running mean. A batch whose own mean is more than 2 of its standard deviations from the reference
    (:func:`_centred_enough`) is reduced again around its own mean (known from the first pass)."""
    count, mean = state[0], state[1]
    # around 0 saves the eager kernel a pass; the compiled one subtracts the shift for free
    if native_for(x, mask, compiled) is None and np.all(count * mean * mean <= _AROUND_ZERO * state[2]):
        shift = np.zeros(x.shape[1])
    else:
        shift = mean
    sums, shift = shifted_sums(x, mask, shift, workspace, compiled=compiled, zeroed=zeroed)
    if np.isfinite(sums[1:3]).all() and not _centred_enough(sums[0], sums[1], sums[2]):
        # too far from the reference for the batch's spread: again around the batch's own mean
        sums, shift = shifted_sums(x, mask, shift + sums[1] / np.maximum(sums[0], 1.0), workspace,
                                   compiled=compiled, zeroed=zeroed)
    return add_shifted_sums(state, shift, sums)


def first_moments(state: Optional[np.ndarray], x: Tensor, mask: Optional[Tensor],
                  workspace: Optional[Workspace] = None, *, compiled: Optional[bool] = False,
                  zeroed: bool = False) -> np.ndarray:
    """:func:`advance` from ``state``, or from no positions (``None``: the first batch). A channel without
    a running mean is summed around 0 first, and again around the batch's own mean where that is not
    centred enough."""
    if state is None:
        state = empty_state(x.shape[1])
    return advance(state, x, mask, workspace, compiled=compiled, zeroed=zeroed)


def batch_moments(
    output: Tensor, mask: Optional[Tensor] = None, shift: Optional[Tensor] = None, *,
    compile: Optional[bool] = None
) -> Moments:
    """Per-channel :class:`~masked_torch.analysis.moments.Moments` of one output ``(N, C, *S)`` or
    ``(N, C)`` over the positions where ``mask`` (``(N, 1 or C, *S)``, any dtype) is non-zero, or over all
    positions for ``mask=None``, on the output's device.

    ``shift`` (``(C,)``) is a per-channel reference subtracted before squaring; near the mean keeps ``m2``
    exact for activations on a large mean. ``None`` takes two passes: the batch's own mean first.
    ``compile``: the compiled kernel where it applies and builds (``None``, the default: quietly the eager
    one elsewhere; ``True``: warn once when it cannot be built; ``False``: the eager kernel).
    """
    x, m = as_ncl(output, mask, "batch_moments")
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        if shift is None:
            state = first_moments(None, x, m, compiled=compile)
        else:
            c = x.shape[1]
            state = empty_state(c)
            state[1] = torch.as_tensor(shift).detach().to(device="cpu", dtype=ACC).expand(c).numpy()
            state = advance(state, x, m, compiled=compile)
    return Moments.from_tensor(torch.from_numpy(state)).to(x.device)
