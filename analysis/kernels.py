"""Per-batch reduction of one layer output to per-channel sums over its kept positions.

:func:`shifted_sums` reduces an output ``x`` ``(N, C, L)`` and its mask ``(N, 1 or C, L)`` (``None``: every
position) to, per channel: the number of kept positions (``mask != 0``), the sums of ``x - shift`` and of
its square, min, max and the number of non-zero values, as one ``(6, C)`` float64 numpy array.
:func:`advance` adds them to a running state (:func:`~masked_torch.analysis.moments.add_shifted_sums`),
:func:`first_moments` to a state whose channels have no running mean yet (first batch: an extra pass for the
batch's own mean); :func:`batch_moments` is the one-call form for a single output.

Two kernels, one result:

* eager (the default, :func:`_eager_per_sample`): vectorised multiply, compare, sum and min/max kernels
  into reused scratch tensors, in ``x``'s dtype (float32 for half types and integers): about nine passes
  over an output with a mask, five without (on CPU ``torch.where``, ``aminmax``, ``var_mean`` and fresh
  temporaries are several times slower). Sums over each sample's positions in that dtype, then over samples
  in float64 on the host; the shift is rounded to ``x``'s dtype and that same value is added back.
* exact (:func:`exact_sums`): float64 with ``torch.where``, values under the mask never read. Eagerly it is
  the eager kernel's fall-back when anything is not finite (NaN or Inf anywhere, also under the mask) or a
  sample has 2**24 positions or more. Opt-in (``compiled=True``; the recorder's ``compile=True``) the same
  function runs under ``torch.compile(dynamic=True)``: one fused pass, compiled on first use (seconds, and
  it imports the compiler), then a few times cheaper per batch than the eager kernel on CPU
  (``benchmarks/recorder.py``).

Precision, either way: ``x - shift`` is centred (``shift``: the running mean), so ``mean`` and ``var`` keep
about 1e-7 relative precision (float32 eager; float64 exact) however far the mean is from 0; counts, min,
max and zeros are exact.
"""
from __future__ import annotations

import threading
import warnings
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .moments import ACC, Moments, add_shifted_sums, empty_state

__all__ = ["Workspace", "as_ncl", "shifted_sums", "exact_sums", "empty_sums", "advance", "first_moments",
           "batch_moments"]

_MAX_EXACT_F32 = 2**24  # float32 counts and sums of 0/1 are exact below this many positions per sample
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


class Workspace:
    """Scratch tensors reused from call to call: fresh multi-megabyte temporaries cost more in page faults
    than the arithmetic on them. Grows to the largest request; never shrinks until dropped."""

    def __init__(self) -> None:
        self._flat: Optional[Tensor] = None
        self._views: tuple = ((), [])  # (key, views) of the last request: the same shapes come back every batch

    def take(self, shapes: list[tuple[int, ...]], like: Tensor) -> list[Tensor]:
        key = (tuple(shapes), like.dtype, like.device)
        if self._views[0] == key:
            return self._views[1]
        sizes = []
        for shape in shapes:
            numel = 1
            for s in shape:
                numel *= s
            sizes.append(numel)
        flat = self._flat
        if flat is None or flat.numel() < sum(sizes) or flat.dtype != like.dtype or flat.device != like.device:
            flat = self._flat = torch.empty(sum(sizes), dtype=like.dtype, device=like.device)
        out, start = [], 0
        for shape, numel in zip(shapes, sizes):
            out.append(flat[start:start + numel].view(shape))
            start += numel
        self._views = (key, out)
        return out


def as_ncl(output: Tensor, mask: Optional[Tensor], where: str) -> tuple[Tensor, Optional[Tensor]]:
    """``(N, C, *S)`` or ``(N, C)`` output and its mask as ``(N, C, L)`` and ``(N, 1 or C, L)``, detached;
    ``where`` names the caller in errors."""
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
    """``t`` (N, C, *S) as an (N, C, L) plain tensor (not a view, so the compiled kernel has no guards on
    whatever it is a view of; detached) with the standard contiguous strides (also along size-1 dims, which
    ``reshape`` may leave at any stride). Copies only a non-contiguous tensor (channels-last, expanded)."""
    if not t.is_contiguous():
        t = t.contiguous()
    length = 1
    for s in t.shape[2:]:
        length *= s
    alias = torch.empty((0,), dtype=t.dtype, device=t.device)
    return alias.set_(t.untyped_storage(), t.storage_offset(), (n, c, length), (c * length, length, 1))


# --------------------------------------------------------------------------------------------------------
# The two kernels: exact (float64, torch.where; also what torch.compile runs) and eager (cheap passes)
# --------------------------------------------------------------------------------------------------------


def exact_sums(x: Tensor, mask: Optional[Tensor], shift: Tensor, count_dtype: torch.dtype = torch.int64) -> Tensor:
    """Per channel ``(6, C)`` float64: count, ``s1``, ``s2``, min, max, nonzero of ``x`` over the positions
    where ``mask`` is non-zero (``None``: all), as :func:`shifted_sums`; ``shift`` ``(1, C, 1)`` float64 is
    used as it is.

    In float64 with ``torch.where``, so values under the mask are never read (NaN there cannot leak).
    Written as one pass over ``x`` and ``mask`` for ``torch.compile`` (a single fused reduction; counts in
    ``count_dtype``: int32 there, where the caller makes sure N * L < 2**31).
    """
    n, c, length = x.shape
    d = x.to(ACC) - shift
    if mask is None:
        count = torch.full((c,), n * length, dtype=count_dtype, device=x.device)
        lo, hi = x.amin(dim=(0, 2)), x.amax(dim=(0, 2))
        nonzero = (x != 0).sum(dim=(0, 2), dtype=count_dtype)
    else:
        valid = (mask != 0).expand(n, c, length)
        d = torch.where(valid, d, torch.zeros((), dtype=ACC, device=x.device))
        count = valid.sum(dim=(0, 2), dtype=count_dtype)
        lo = torch.where(valid, x, float("inf")).amin(dim=(0, 2))
        hi = torch.where(valid, x, float("-inf")).amax(dim=(0, 2))
        nonzero = (valid & (x != 0)).sum(dim=(0, 2), dtype=count_dtype)
    return torch.stack([t.to(ACC) for t in (count, d.sum(dim=(0, 2)), (d * d).sum(dim=(0, 2)), lo, hi, nonzero)])


def _eager_per_sample(x: Tensor, mask: Optional[Tensor], shift: Tensor, workspace: Workspace,
                      zeroed: bool = False) -> Tensor:
    """Per sample and channel ``(6, N, C)`` in ``x``'s dtype: sum of ``x - shift`` and of its square, min,
    max, number of non-zero values and of kept positions, from cheap vectorised passes (``shift``
    ``(1, C, 1)`` in ``x``'s dtype).

    The mask enters as a 0/1 factor: masked positions are 0 in the tensor min, max and the non-zero count are
    taken of, so the count is of kept non-zeros but a min (max) of 0 may come from a masked position
    (:func:`_fix_ambiguous_extrema`); values that are not finite there turn the sums into NaN (caught by
    the caller). The count row is left unset without a mask, and beyond the mask's channels for a
    1-channel mask."""
    n, c, _ = x.shape
    if mask is None:
        (d,) = workspace.take([tuple(x.shape)], x)
        xz = x
        torch.sub(x, shift, out=d)
    else:
        d, xz, valid = workspace.take([tuple(x.shape), tuple(x.shape), tuple(mask.shape)], x)
        torch.ne(mask, 0, out=valid)  # 1.0 where kept (NaN counts as kept, as in exact_sums)
        if zeroed:  # a masked module's output: already exactly 0 where its mask is 0
            xz = x
        else:
            torch.mul(x, valid, out=xz)  # x where kept, 0 elsewhere
        torch.addcmul(xz, valid, shift, value=-1, out=d)  # x - shift where kept, 0 elsewhere
    out = torch.empty((6, n, c), dtype=x.dtype, device=x.device)
    torch.sum(d, dim=2, out=out[0])
    torch.sum(d.square_(), dim=2, out=out[1])
    torch.amin(xz, dim=2, out=out[2])
    torch.amax(xz, dim=2, out=out[3])
    torch.sum(torch.ne(xz, 0, out=d), dim=2, out=out[4])
    if mask is not None:
        torch.sum(valid, dim=2, out=out[5, :, :mask.shape[1]])
    if mask is None or mask.shape[1] < c:
        out[5, :, 0 if mask is None else mask.shape[1]:] = 0  # unused rows: defined, not uninitialised memory
    return out


def _over_samples(per_sample: Tensor, mask: Optional[Tensor], length: int) -> np.ndarray:
    """``(6, N, C)`` partial sums -> ``(6, C)`` float64 sums (rows count, s1, s2, min, max, nonzero) on the
    host: one copy, then a handful of numpy reductions."""
    host = np.asarray(per_sample.cpu().numpy(), dtype=np.float64)
    n, c = host.shape[1:]
    sums = np.empty((6, c))
    sums[1:3] = host[:2].sum(axis=1)
    host[2].min(axis=0, out=sums[3])
    host[3].max(axis=0, out=sums[4])
    host[4].sum(axis=0, out=sums[5])
    if mask is None:
        sums[0] = n * length
    else:
        sums[0] = host[5, :, :mask.shape[1]].sum(axis=0)
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
# The opt-in compiled kernel: exact_sums under torch.compile
# --------------------------------------------------------------------------------------------------------


# One compiled entry point per kind of mask, so that each has its own dynamo cache (and recompile limit):
# within one, the variants are N == 1 or not, L == 1 or not, and the dtypes.
def _sums_nomask(x: Tensor, shift: Tensor):
    return exact_sums(x, None, shift, torch.int32)


def _sums_mask1(x: Tensor, mask: Tensor, shift: Tensor):
    return exact_sums(x, mask, shift, torch.int32)


def _sums_maskc(x: Tensor, mask: Tensor, shift: Tensor):
    return exact_sums(x, mask, shift, torch.int32)


_compiled_fns: dict[str, Callable] = {}
_compile_failed = False
_compile_lock = threading.Lock()


def _compiled(kind: str) -> Callable:
    fn = _compiled_fns.get(kind)
    if fn is None:
        with _compile_lock:
            fn = _compiled_fns.get(kind)
            if fn is None:
                fn = {"none": _sums_nomask, "one": _sums_mask1, "full": _sums_maskc}[kind]
                fn = _compiled_fns[kind] = torch.compile(fn, dynamic=True)
    return fn


def _compiled_sums(x: Tensor, mask: Optional[Tensor], shift: Tensor) -> Optional[np.ndarray]:
    """:func:`exact_sums` compiled, on the host as :func:`shifted_sums`' sums; ``None`` (after one warning per
    process) if compilation fails."""
    global _compile_failed
    if _compile_failed:
        return None
    try:
        if mask is None:
            return _compiled("none")(x, shift).cpu().numpy()
        return _compiled("one" if mask.shape[1] == 1 else "full")(x, mask, shift).cpu().numpy()
    except Exception as exc:  # noqa: BLE001 -- any compiler failure: fall back, once, loudly
        _compile_failed = True
        warnings.warn(
            f"ActivationRecorder: torch.compile of the statistics kernel failed ({type(exc).__name__}: {exc}); "
            f"falling back to eager PyTorch for the rest of this process (slower; same results up to float32 "
            f"rounding)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


# --------------------------------------------------------------------------------------------------------
# Sums, and a running state advanced by them
# --------------------------------------------------------------------------------------------------------


def empty_sums(channels: int) -> np.ndarray:
    """:func:`shifted_sums` of no positions."""
    sums = np.zeros((6, channels))
    sums[3], sums[4] = np.inf, -np.inf
    return sums


def shifted_sums(x: Tensor, mask: Optional[Tensor], shift: np.ndarray, workspace: Optional[Workspace] = None,
                 *, compiled: bool = False, zeroed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sums of ``x`` (N, C, L) over the positions where ``mask`` (N, 1 or C, L; any dtype;
    ``None``: all) is non-zero, around ``shift`` (C,): ``(sums, shift_used)``, float64 numpy arrays.

    ``sums`` ``(6, C)``: rows count, ``s1`` = sum of ``x - shift_used``, ``s2`` = sum of its square, min,
    max (``+inf``/``-inf`` in a channel without positions), number of non-zero values: what
    :func:`~masked_torch.analysis.moments.add_shifted_sums` takes. ``shift_used`` is ``shift`` as it was
    subtracted (rounded to ``x``'s dtype on the eager fast path). ``compiled``: the opt-in compiled kernel
    (see the module docstring). ``zeroed``: ``x`` is already exactly 0 wherever ``mask`` is 0 (the output of a
    masked module), which saves the eager kernel one pass.
    """
    n, c, length = x.shape
    shift = np.asarray(shift, dtype=np.float64)
    if n * length == 0:
        return empty_sums(c), shift
    if compiled and n * length < 2**31:
        sums = _compiled_sums(x, mask, torch.from_numpy(shift).to(x.device).view(1, c, 1))
        if sums is not None:
            return sums, shift
    if length >= _MAX_EXACT_F32:
        return _exact_sums(x, mask, shift)
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    rounded = shift.astype(_NUMPY_DTYPES.get(x.dtype, np.float64))  # the shift actually subtracted ...
    shift_x = torch.from_numpy(rounded).to(device=x.device, dtype=x.dtype).view(1, c, 1)
    shift_used = rounded.astype(np.float64)  # ... and the same value added back
    per_sample = _eager_per_sample(x, mask, shift_x, workspace if workspace is not None else Workspace(), zeroed)
    sums = _over_samples(per_sample, mask, length)
    if not np.isfinite(sums).all():
        return _exact_sums(x, mask, shift_used)
    if mask is not None:
        _fix_ambiguous_extrema(sums, x, mask)
    return sums, shift_used


def _exact_sums(x: Tensor, mask: Optional[Tensor], shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return exact_sums(x, mask, torch.from_numpy(shift).to(x.device).view(1, -1, 1)).cpu().numpy(), shift


def advance(state: np.ndarray, x: Tensor, mask: Optional[Tensor], workspace: Optional[Workspace] = None,
            *, compiled: bool = False, zeroed: bool = False) -> np.ndarray:
    """A packed state (:func:`~masked_torch.analysis.moments.add_shifted_sums`) plus the positions of one batch
    (``x`` (N, C, L), ``mask`` (N, 1 or C, L) or ``None``), reduced around the running mean (one pass): for
    a state whose every channel has positions."""
    sums, shift = shifted_sums(x, mask, state[1], workspace, compiled=compiled, zeroed=zeroed)
    return add_shifted_sums(state, shift, sums)


def first_moments(state: Optional[np.ndarray], x: Tensor, mask: Optional[Tensor],
                  workspace: Optional[Workspace] = None, *, compiled: bool = False,
                  zeroed: bool = False) -> np.ndarray:
    """:func:`advance` for a state without a reference mean in some channel (``None``: the first batch; or
    channels without any kept position yet): those channels are shifted by the batch's own mean, which
    takes an extra pass."""
    empty = empty_state(x.shape[1])
    batch_mean = advance(empty, x, mask, workspace, compiled=compiled, zeroed=zeroed)[1]
    if state is None:
        state = empty
    shift = np.where(state[0] > 0, state[1], batch_mean)
    sums, shift = shifted_sums(x, mask, shift, workspace, compiled=compiled, zeroed=zeroed)
    return add_shifted_sums(state, shift, sums)


def batch_moments(
    output: Tensor, mask: Optional[Tensor] = None, shift: Optional[Tensor] = None, *, compile: bool = False
) -> Moments:
    """Per-channel :class:`~masked_torch.analysis.moments.Moments` of one output ``(N, C, *S)`` or
    ``(N, C)`` over the positions where ``mask`` (``(N, 1 or C, *S)``, any dtype) is non-zero, or over all
    positions for ``mask=None``, on the output's device.

    ``shift`` (``(C,)``) is a per-channel reference subtracted before squaring; near the mean keeps ``m2``
    exact for activations on a large mean. ``None`` takes two passes: the batch's own mean first.
    ``compile``: the opt-in compiled kernel (see the module docstring).
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
