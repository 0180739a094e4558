"""Per-batch reduction of one layer output to per-channel sums over its kept positions, in eager PyTorch ops.

:func:`shifted_sums` reduces an output ``x`` ``(N, C, L)`` and its mask ``(N, 1 or C, L)`` (``None``: every
position) to, per channel: the number of kept positions (``mask != 0``), the sums of ``x - shift`` and of
its square, min, max and the number of non-zero values, as one ``(6, C)`` float64 numpy array.
:func:`advance` adds them to a running state (:func:`~masked_torch.analysis.moments.add_shifted_sums`),
:func:`first_moments` to a state that may not exist yet (the first batch); :func:`batch_moments` is the
one-call form for a single output.

One kernel, the same on every machine and device (plus an exact fall-back):

* :func:`_reduce`: a handful of vectorised PyTorch reductions over the output, in its dtype (float32 for
  half types and integers, which converts them exactly below 2**24): sums of ``x - shift`` and of its
  square within blocks of :data:`BLOCK` consecutive positions (``sum`` and ``linalg.vector_norm`` over the
  last dimension of a blocked view: one read each, nothing written), the blocks' sums added in float64;
  ``amin``/``amax`` per channel; non-zeros counted as 0/1 in a reused scratch tensor. The mask enters as a
  0/1 factor (written once into scratch), or not at all for the output of a masked module, which is already
  0 wherever its mask is 0 (``zeroed``). The kept positions of a mask are counted once per mask object
  (:meth:`Workspace.counts`): an activation after a masked convolution passes the same mask on.
* :func:`exact_sums`: float64 with ``torch.where``, values under the mask never read: the fall-back when
  anything is not finite (NaN or Inf anywhere, also under the mask, where a multiply would let it leak), and
  for a sample of 2**24 positions or more (float32 counts of 0/1 are exact below that).

Nothing is compiled at run time: ``torch.compile`` would build C++ with the system's compiler, for the CPU
it runs on (its float32 rounding would then depend on the machine).

**Reference point.** Each batch is summed around 0 where the layer's running moments say that loses little
(every channel's squared mean at most ``K`` = 4 times its variance, i.e. the mean within 2 standard
deviations of 0, as after a ReLU; this saves the pass that subtracts the shift), else around the running
mean (rounded to the dtype the kernel works in; that same value is added back). A batch whose own mean is
more than ``sqrt(K)`` of its own standard deviations from that reference (the first batch, a batch that
moved) is reduced again around its own mean (up to 3 times, each with a better estimate of it).

**Precision.** Let ``u = 2**-24`` (float32 outputs; half of ``torch.finfo(torch.float32).eps``; ``2**-53``
for float64 outputs) and ``B`` = :data:`BLOCK` = 128. Every float32 sum in the kernel has at most ``B``
terms, in whatever order a CPU's vector width or thread count adds them, so a block's sum of
``d = fl(x - shift)`` is within ``gamma_B * sum|x - shift|`` of the exact one and its sum of squares within
``gamma_(B+4) * sum (x - shift)**2`` (``gamma_k = k u / (1 - k u)``; the subtraction, the square, the norm's
square root and its square included); the blocks' sums, the merge of batches (and of ranks) are float64.
Per channel, over ``n`` kept positions of any number of batches, with ``eps = (B + 4) u + n 2**-53``
(``<= (B + 12) u = 140 u`` for float32 and ``n <= 2**32``), ``mean`` and population ``var`` against the exact
values of the output's numbers satisfy::

    |var - var_exact|   <= C_VAR  * eps * var_exact,                             C_VAR  = 13.94
    |mean - mean_exact| <= C_MEAN * eps * std_exact + 2**-52 * |mean_exact|,     C_MEAN = 2.24

with ``C_VAR = (1 + K) + 2 sqrt(K (1 + K))`` and ``C_MEAN = sqrt(1 + K)``, the price of summing within
``sqrt(K)`` standard deviations of the mean rather than at it. For float32: ``var`` to 1952 ``u`` = 1.2e-4
relative, ``mean`` to 313 ``u`` = 1.9e-5 standard deviations (:func:`error_bound`). It is a worst case
over every summation order: it does not grow with ``N``, ``L``, the number of batches or threads, it grows
linearly with ``B`` (shorter blocks make PyTorch's reductions slower), and errors seen in practice are far
smaller (about ``sqrt(B) u``). Two runs over the same positions, in other batches, on other machines or
ranks, differ by at most twice the bound. Counts, min, max and zero fractions are exact. (Assumes finite
sums of squares in float32, i.e. ``|x - shift| < 1e19``; the exact kernel takes over otherwise; and
squares that do not underflow, ``|x - shift| > 1e-19`` or 0.)
"""
from __future__ import annotations

import functools
import math
import weakref
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .moments import ACC, Moments, add_shifted_sums, empty_state

__all__ = ["BLOCK", "error_bound", "Workspace", "as_ncl", "shifted_sums", "exact_sums", "empty_sums", "advance",
           "first_moments", "batch_moments"]

#: Consecutive positions of one sample and channel summed in float32 before the sums go to float64.
BLOCK = 128
#: ``K`` of the module docstring: a batch is summed around 0 (not around the running mean) where every
#: channel's squared mean is at most this many times its variance, and a batch's own mean may be at most
#: ``sqrt(K)`` of its standard deviations from the reference it was summed around.
_AROUND_ZERO = 4.0
_RECENTRES = 3  # how many times a batch is summed again around (a better estimate of) its own mean
_MAX_EXACT_F32 = 2**24  # float32 counts and sums of 0/1 are exact below this many positions per sample
_C_VAR = (1 + _AROUND_ZERO) + 2 * math.sqrt(_AROUND_ZERO * (1 + _AROUND_ZERO))
_C_MEAN = math.sqrt(1 + _AROUND_ZERO)


def error_bound(dtype: torch.dtype = torch.float32, positions: int = 2**32) -> tuple[float, float]:
    """The documented worst-case error (module docstring) for outputs of ``dtype`` and up to ``positions``
    kept positions per channel: ``(var_rtol, mean_tol)``, so that ``|var - var_exact| <= var_rtol *
    var_exact`` and ``|mean - mean_exact| <= mean_tol * std_exact + 2**-52 * |mean_exact|``."""
    u = 2.0**-53 if dtype == torch.float64 else 2.0**-24  # half types and integers are reduced in float32
    eps = (BLOCK + 4) * u + positions * 2.0**-53
    return _C_VAR * eps, _C_MEAN * eps


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


class Workspace:
    """Scratch tensors reused from call to call: fresh multi-megabyte temporaries cost more in page faults
    than the arithmetic on them. Grows to the largest request; never shrinks until dropped.

    Also remembers the last mask it saw (:func:`as_ncl` with this workspace) and that mask's kept positions
    (:meth:`counts`, :meth:`valid`): layers that pass their mask on unchanged (an activation after a masked
    convolution) share one mask object, whose kept positions are then counted once."""

    def __init__(self) -> None:
        self._flat: Optional[Tensor] = None
        self._views: dict = {}  # views of _flat by request: each layer's shapes come back every batch
        self._alias: tuple = (None, -1, None)  # (weakref to the caller's mask, its version, its (N, C, L) alias)
        self._mask: tuple = (None, -1)  # (weakref to the mask _counts and _valid are of, its version)
        self._counts: Optional[np.ndarray] = None
        self._valid: Optional[Tensor] = None
        self._valid_flat: Optional[Tensor] = None

    def take(self, shapes: list[tuple[int, ...]], like: Tensor) -> list[Tensor]:
        """Tensors of these shapes in ``like``'s dtype and device (contents undefined), views of one buffer."""
        key = (tuple(shapes), like.dtype, like.device)
        views = self._views.get(key)
        if views is not None:
            return views
        sizes = [math.prod(shape) for shape in shapes]
        flat = _at_least(self._flat, sum(sizes), like.dtype, like.device)
        # views of an old buffer go with it; at most 64 kept (a model's layers, not every canvas size seen)
        if flat is not self._flat or len(self._views) >= 64:
            self._flat, self._views = flat, {}
        views, start = [], 0
        for shape, numel in zip(shapes, sizes):
            views.append(flat[start:start + numel].view(shape))
            start += numel
        self._views[key] = views
        return views

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
            if mask.shape[0] * mask.shape[2] < _MAX_EXACT_F32:  # a float32 count is exact
                self._counts = valid.sum(dim=(0, 2)).cpu().numpy().astype(np.float64)
            else:
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


def as_ncl(output: Tensor, mask: Optional[Tensor], where: str,
           workspace: Optional[Workspace] = None) -> tuple[Tensor, Optional[Tensor]]:
    """``(N, C, *S)`` or ``(N, C)`` output and its mask as ``(N, C, L)`` and ``(N, 1 or C, L)``, detached;
    ``where`` names the caller in errors. With a ``workspace``, the same unmodified mask object gives the
    same ``(N, 1 or C, L)`` tensor as last time (so :meth:`Workspace.counts` counts its kept positions once)."""
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
    return t.detach().resolve_neg().contiguous().view(n, c, math.prod(t.shape[2:]))


# --------------------------------------------------------------------------------------------------------
# The exact kernel (float64, torch.where) and the blocked one
# --------------------------------------------------------------------------------------------------------


def exact_sums(x: Tensor, mask: Optional[Tensor], shift: Tensor) -> Tensor:
    """Per channel ``(6, C)`` float64: count, ``s1``, ``s2``, min, max, nonzero of ``x`` over the positions
    where ``mask`` is non-zero (``None``: all), as :func:`shifted_sums`; ``shift`` ``(1, C, 1)`` float64 is
    used as it is.

    In float64 with ``torch.where``, so values under the mask are never read (NaN there cannot leak): the
    fall-back of :func:`shifted_sums` for outputs that are not finite, and for any device and dtype.
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


@functools.lru_cache(maxsize=256)
def _blocking(length: int) -> tuple[int, int]:
    """``(block, blocks)``: ``length`` positions as ``blocks`` blocks of ``block`` (at most :data:`BLOCK`)
    consecutive positions, plus a shorter last block of the ``length - block * blocks`` left over. The
    block is the longest divisor of ``length`` up to :data:`BLOCK` where that is at least a quarter of it
    (no left-over block: one reduction instead of two), else :data:`BLOCK`."""
    if length <= BLOCK:
        return length, 1
    for block in range(BLOCK, BLOCK // 4 - 1, -1):
        if length % block == 0:
            return block, length // block
    return BLOCK, length // BLOCK


def _block_sums(d: Tensor, out: Tensor) -> None:
    """The sums of ``d`` ``(N, C, L)`` and the root of the sums of its squares over blocks of at most
    :data:`BLOCK` consecutive positions (:func:`_blocking`), float32 (``d``'s dtype), into ``out``
    ``(2, N, C, blocks)``: ``sum`` and ``linalg.vector_norm`` over the last dimension of a blocked view, one
    read of ``d`` each, nothing else written."""
    n, c, length = d.shape
    block, blocks = _blocking(length)
    head = block * blocks
    if head == length:
        view = d.view(n, c, blocks, block)
        torch.sum(view, dim=3, out=out[0])
        torch.linalg.vector_norm(view, dim=3, out=out[1])
    else:  # blocks of BLOCK and a shorter last one: out (2, N, C, blocks + 1)
        view = d[..., :head].view(n, c, blocks, block)
        torch.sum(view, dim=3, out=out[0, ..., :blocks])
        torch.linalg.vector_norm(view, dim=3, out=out[1, ..., :blocks])
        torch.sum(d[..., head:], dim=2, out=out[0, ..., blocks])
        torch.linalg.vector_norm(d[..., head:], dim=2, out=out[1, ..., blocks])


def _reduce(x: Tensor, mask: Optional[Tensor], shift: Optional[Tensor], workspace: Workspace,
            zeroed: bool = False) -> np.ndarray:
    """``(6, C)`` float64 sums (rows as :func:`shifted_sums`) of ``x`` ``(N, C, L)`` (float32 or float64)
    around ``shift`` (``(1, C, 1)`` in ``x``'s dtype; ``None``: 0, which saves the pass that subtracts it).

    The mask enters as a 0/1 factor: masked positions are 0 in the tensor min, max and the non-zero count are
    taken of, so the count is of kept non-zeros but a min (max) of 0 may come from a masked position
    (:func:`_fix_ambiguous_extrema`); values that are not finite there turn the sums into NaN (the caller
    then takes :func:`exact_sums`)."""
    n, c, length = x.shape
    block, blocks = _blocking(length)
    blocks += block * blocks < length
    # min, max and non-zeros per sample only where a float32 count over the whole batch could be inexact
    per_channel = n * length < _MAX_EXACT_F32
    # the block sums and the roots of the blocks' sums of squares; min, max and non-zeros
    small = [(2, n, c, blocks), (3, c) if per_channel else (3, n, c)]
    if mask is None or zeroed:  # a masked module's output: already exactly 0 where its mask is 0
        xz = x
        if shift is None:
            scratch, parts, extrema = workspace.take([tuple(x.shape)] + small, x)
        else:
            d, scratch, parts, extrema = workspace.take([tuple(x.shape)] * 2 + small, x)
    else:
        xz, scratch, parts, extrema = workspace.take([tuple(x.shape)] * 2 + small, x)
        d = scratch
    sums = np.empty((6, c))
    if mask is not None:
        # the 0/1 kept positions only where they multiply; else the counts alone, counted in the scratch
        valid = workspace.valid(mask, x.dtype) if shift is not None or not zeroed else None
        sums[0] = workspace.counts(mask, scratch)  # (1,) broadcasts over the channels
        if not zeroed:
            torch.mul(x, valid, out=xz)  # x where kept, 0 elsewhere
    else:
        sums[0] = n * length
    if shift is None:
        d = xz
    elif mask is None:
        torch.sub(x, shift, out=d)
    else:
        torch.addcmul(xz, valid, shift, value=-1, out=d)  # x - shift where kept, 0 elsewhere
    _block_sums(d, parts)
    dims = (0, 2) if per_channel else 2
    torch.amin(xz, dim=dims, out=extrema[0])
    torch.amax(xz, dim=dims, out=extrema[1])
    torch.sum(torch.ne(xz, 0, out=scratch), dim=dims, out=extrema[2])  # exact: fewer than 2**24 terms
    host = parts.cpu().numpy().astype(np.float64)  # exact
    np.square(host[1], out=host[1])  # exact: a float32 squared in float64
    sums[1:3] = host.sum(axis=(1, 3))
    host = extrema.cpu().numpy()
    if per_channel:
        sums[3:] = host
    else:
        sums[3] = host[0].min(axis=0)
        sums[4] = host[1].max(axis=0)
        sums[5] = host[2].sum(axis=0, dtype=np.float64)
    return sums


def _fix_ambiguous_extrema(sums: np.ndarray, x: Tensor, mask: Tensor) -> None:
    """After :func:`_reduce`, a min (max) of 0 is ambiguous where a channel has masked positions but no kept
    zero (also a channel without kept positions). Takes those channels' min and max again with
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
# Sums, and a running state advanced by them
# --------------------------------------------------------------------------------------------------------


def empty_sums(channels: int) -> np.ndarray:
    """:func:`shifted_sums` of no positions."""
    sums = np.zeros((6, channels))
    sums[3], sums[4] = np.inf, -np.inf
    return sums


def shifted_sums(x: Tensor, mask: Optional[Tensor], shift: np.ndarray, workspace: Optional[Workspace] = None,
                 *, zeroed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sums of ``x`` (N, C, L) over the positions where ``mask`` (N, 1 or C, L; any dtype;
    ``None``: all) is non-zero, around ``shift`` (C,): ``(sums, shift_used)``, float64 numpy arrays.

    ``sums`` ``(6, C)``: rows count, ``s1`` = sum of ``x - shift_used``, ``s2`` = sum of its square, min,
    max (``+inf``/``-inf`` in a channel without positions), number of non-zero values: what
    :func:`~masked_torch.analysis.moments.add_shifted_sums` takes. ``shift_used`` is ``shift`` as it was
    subtracted (rounded to the dtype the kernel works in). ``zeroed``: ``x`` is already exactly 0 wherever
    ``mask`` is 0 (the output of a masked module), which saves a pass. Precision: the module docstring.
    """
    n, c, length = x.shape
    shift = np.asarray(shift, dtype=np.float64)
    if n * length == 0:
        return empty_sums(c), shift
    if length >= _MAX_EXACT_F32:
        return _exact_sums(x, mask, shift)
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    rounded = shift.astype(_NUMPY_DTYPES.get(x.dtype, np.float64))  # the shift actually subtracted ...
    shift_used = rounded.astype(np.float64)  # ... and the same value added back
    shift_x = torch.from_numpy(rounded).to(device=x.device, dtype=x.dtype).view(1, c, 1) if rounded.any() else None
    sums = _reduce(x, mask, shift_x, workspace if workspace is not None else Workspace(), zeroed)
    if not math.isfinite(sums[1:3].sum()):  # NaN or Inf in x (kept, or multiplied by a 0 of the mask)
        return _exact_sums(x, mask, shift_used)
    if mask is not None and (sums[3] == 0).any() | (sums[4] == 0).any():
        _fix_ambiguous_extrema(sums, x, mask)
    return sums, shift_used


def _exact_sums(x: Tensor, mask: Optional[Tensor], shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return exact_sums(x, mask, torch.from_numpy(shift).to(x.device).view(1, -1, 1)).cpu().numpy(), shift


def _centred_enough(count: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> bool:
    """Whether sums of ``x - shift`` (``s1``) and of its square (``s2``) over ``count`` positions per channel
    are taken within ``sqrt(_AROUND_ZERO)`` standard deviations of the positions' mean in every channel:
    ``(mean - shift)**2 <= _AROUND_ZERO * m2 / count`` with ``m2 = s2 - s1**2 / count``, i.e.
    ``(1 + k) * s1**2 <= k * count * s2`` (no subtraction needed to check it)."""
    return bool(np.all((1.0 + _AROUND_ZERO) * s1 * s1 <= _AROUND_ZERO * count * s2))


def _centred_sums(x: Tensor, mask: Optional[Tensor], shift: np.ndarray, workspace: Optional[Workspace],
                  zeroed: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`shifted_sums` around ``shift``, again around the batch's own mean (known from the previous
    pass) while the batch's mean is more than ``sqrt(_AROUND_ZERO)`` of its standard deviations from the
    shift (:func:`_centred_enough`), up to :data:`_RECENTRES` times."""
    for _ in range(_RECENTRES + 1):
        sums, shift = shifted_sums(x, mask, shift, workspace, zeroed=zeroed)
        if _centred_enough(sums[0], sums[1], sums[2]) or not math.isfinite(sums[1:3].sum()):
            break
        shift = shift + sums[1] / np.maximum(sums[0], 1.0)
    return sums, shift


def advance(state: np.ndarray, x: Tensor, mask: Optional[Tensor], workspace: Optional[Workspace] = None,
            *, zeroed: bool = False) -> np.ndarray:
    """A packed state (:func:`~masked_torch.analysis.moments.add_shifted_sums`) plus the positions of one batch
    (``x`` (N, C, L), ``mask`` (N, 1 or C, L) or ``None``): summed around 0 where the running moments say
    that loses little (every channel's mean within ``sqrt(_AROUND_ZERO)`` standard deviations of 0, as after
    a ReLU or a convolution without a large bias; saves a pass), else around the running mean; again around
    the batch's own mean where that is too far from the reference (:func:`_centred_sums`)."""
    count, mean = state[0], state[1]
    shift = np.zeros(x.shape[1]) if np.all(count * mean * mean <= _AROUND_ZERO * state[2]) else mean
    sums, shift = _centred_sums(x, mask, shift, workspace, zeroed)
    return add_shifted_sums(state, shift, sums)


def first_moments(state: Optional[np.ndarray], x: Tensor, mask: Optional[Tensor],
                  workspace: Optional[Workspace] = None, *, zeroed: bool = False) -> np.ndarray:
    """:func:`advance` from ``state``, or from no positions (``None``: the first batch)."""
    if state is None:
        state = empty_state(x.shape[1])
    return advance(state, x, mask, workspace, zeroed=zeroed)


def batch_moments(output: Tensor, mask: Optional[Tensor] = None, shift: Optional[Tensor] = None) -> Moments:
    """Per-channel :class:`~masked_torch.analysis.moments.Moments` of one output ``(N, C, *S)`` or
    ``(N, C)`` over the positions where ``mask`` (``(N, 1 or C, *S)``, any dtype) is non-zero, or over all
    positions for ``mask=None``, on the output's device; precision as in the module docstring.

    ``shift`` (``(C,)``): a per-channel reference to sum around first (near the mean saves a second pass);
    ``None``: 0. Either way the batch is summed again around its own mean where the reference is too far
    from it.
    """
    x, m = as_ncl(output, mask, "batch_moments")
    c = x.shape[1]
    start = np.zeros(c) if shift is None else \
        torch.as_tensor(shift).detach().to(device="cpu", dtype=ACC).expand(c).numpy()
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        sums, used = _centred_sums(x, m, start, None, False)
    return Moments.from_tensor(torch.from_numpy(add_shifted_sums(empty_state(c), used, sums))).to(x.device)
