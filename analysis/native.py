"""The recorder's compiled statistics kernel: one fused pass over a layer's output, in C.

:func:`channel_sums` reduces a float32 output ``x`` ``(N, C, L)`` on the CPU and its float32 mask
``(N, 1 or C, L)`` (or none) to the ``(6, C)`` float64 sums :func:`~masked_torch.analysis.kernels.shifted_sums`
returns (count, sum of ``x - shift`` and of its square, min, max, non-zeros over the kept positions): one read
of each, no scratch written, channels spread over torch's intra-op threads (OpenMP). :func:`update` does
that around each channel's running mean and merges the result into the running state in the same call (the
recorder's per-batch step: no per-layer work left on the host). Values under the mask are never read into a
sum (a select, not a multiply), so NaN there cannot leak, and min and max are over the kept positions only.
Sums are float32 within blocks of 512 positions and float64 across blocks: the precision of the eager
kernel's float32 per-sample sums.

The C source below is built on first use with the system's C compiler (``$CC``, else ``cc``, ``gcc`` or
``clang``; about 0.2 s) and cached under ``$MASKED_TORCH_CACHE_DIR`` (default
``$XDG_CACHE_HOME/masked_torch`` or ``~/.cache/masked_torch``) by a hash of the source, the flags and the
CPU (it is built for this CPU, ``-march=native``); written atomically. Without a compiler, or if the build
fails, :func:`load` returns ``None`` and :func:`unavailable` says why: the recorder then uses the eager
kernel. Nothing is built or imported until a recorder needs the kernel.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["Library", "applies", "channel_sums", "update", "load", "unavailable"]

_SOURCE = r"""
#include <math.h>
#include <stdint.h>

#define BLOCK 512

/* One channel ch of x (n, c, len) float32 contiguous, over the positions where mask (n, cm, len) float32
   contiguous, cm 1 or c, is not 0 (mask NULL: all positions): r[0..5] = count, sum(x - shift),
   sum((x - shift)^2), min, max (+inf/-inf without positions), non-zeros. float32 within blocks of BLOCK
   positions, float64 across blocks. Values under the mask are selected away, never multiplied. */
static void channel_pass(const float *x, const float *mask, int64_t n, int64_t c, int64_t len, int64_t cm,
                         int64_t ch, float sh, double *r) {
    double cnt = 0, s1 = 0, s2 = 0, nz = 0;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + (i * c + ch) * len;
        const float *mr = mask ? mask + (i * cm + (cm == 1 ? 0 : ch)) * len : 0;
        for (int64_t b = 0; b < len; b += BLOCK) {
            const int64_t e = b + BLOCK < len ? b + BLOCK : len;
            float bc = 0, b1 = 0, b2 = 0, bz = 0, blo = INFINITY, bhi = -INFINITY;
            if (mr) {
                #pragma omp simd reduction(+:bc,b1,b2,bz) reduction(min:blo) reduction(max:bhi)
                for (int64_t l = b; l < e; l++) {
                    const float v = xr[l];
                    const int k = mr[l] != 0.0f;
                    const float d = k ? v - sh : 0.0f;
                    const float a = k ? v : INFINITY, z = k ? v : -INFINITY;
                    b1 += d;
                    b2 += d * d;
                    bc += k ? 1.0f : 0.0f;
                    bz += (k && v != 0.0f) ? 1.0f : 0.0f;
                    blo = a < blo ? a : blo;
                    bhi = z > bhi ? z : bhi;
                }
            } else {
                #pragma omp simd reduction(+:bc,b1,b2,bz) reduction(min:blo) reduction(max:bhi)
                for (int64_t l = b; l < e; l++) {
                    const float v = xr[l];
                    const float d = v - sh;
                    b1 += d;
                    b2 += d * d;
                    bc += 1.0f;
                    bz += v != 0.0f ? 1.0f : 0.0f;
                    blo = v < blo ? v : blo;
                    bhi = v > bhi ? v : bhi;
                }
            }
            cnt += bc; s1 += b1; s2 += b2; nz += bz;
            lo = blo < lo ? blo : lo;
            hi = bhi > hi ? bhi : hi;
        }
    }
    r[0] = cnt; r[1] = s1; r[2] = s2; r[3] = lo; r[4] = hi; r[5] = nz;
}

/* Every channel around shift (c,) float32: out (6, c) float64, rows as channel_pass. */
void masked_torch_channel_sums(const float *x, const float *mask, int64_t n, int64_t c, int64_t len,
                               int64_t cm, const float *shift, double *out, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t ch = 0; ch < c; ch++) {
        double r[6];
        channel_pass(x, mask, n, c, len, cm, ch, shift[ch], r);
        for (int j = 0; j < 6; j++) out[j * c + ch] = r[j];
    }
}

/* A running state (6, c) float64, rows count, mean, m2, min, max, zeros, plus this batch, in place: each
   channel summed around its running mean rounded to float32 (a channel without positions yet, or a batch
   whose mean moved far from it: around the batch's own mean, which takes another pass), then merged as
   moments.add_shifted_sums does. sums: (7, c) scratch. Returns 1, leaving the state as it was, if a sum is
   not finite (NaN or Inf at a kept position). */
int masked_torch_channel_update(const float *x, const float *mask, int64_t n, int64_t c, int64_t len,
                                int64_t cm, double *state, double *sums, int threads) {
    int bad = 0;
    #pragma omp parallel for schedule(static) num_threads(threads) reduction(|:bad)
    for (int64_t ch = 0; ch < c; ch++) {
        double r[6];
        float sh = (float)state[c + ch];
        if (!(state[ch] > 0)) {
            channel_pass(x, mask, n, c, len, cm, ch, 0.0f, r);
            sh = r[0] > 0 ? (float)(r[1] / r[0]) : 0.0f;
        }
        channel_pass(x, mask, n, c, len, cm, ch, sh, r);
        if (5.0 * r[1] * r[1] > 4.0 * r[0] * r[2]) {
            /* the batch's mean is more than 2 of its standard deviations from the running one: float32 sums
               around sh would lose that much precision to cancellation; again around the batch's own mean */
            sh = (float)(sh + r[1] / r[0]);
            channel_pass(x, mask, n, c, len, cm, ch, sh, r);
        }
        for (int j = 0; j < 6; j++) sums[j * c + ch] = r[j];
        sums[6 * c + ch] = sh;
        bad |= !(isfinite(r[1]) && isfinite(r[2]));
    }
    if (bad) return 1;
    for (int64_t ch = 0; ch < c; ch++) {
        const double count_a = state[ch], mean_a = state[c + ch], m2_a = state[2 * c + ch];
        const double count_b = sums[ch], s1 = sums[c + ch], s2 = sums[2 * c + ch];
        const double shift = sums[6 * c + ch];
        const double delta = mean_a - shift, n_delta = count_a * delta, t = n_delta + s1;
        const double cnt = count_a + count_b, q = t / (cnt > 1.0 ? cnt : 1.0);
        const double m2 = m2_a + s2 + n_delta * delta - t * q;
        state[ch] = cnt;
        state[c + ch] = cnt == 0 ? 0.0 : shift + q;
        state[2 * c + ch] = m2 > 0 ? m2 : 0.0;
        state[3 * c + ch] = sums[3 * c + ch] < state[3 * c + ch] ? sums[3 * c + ch] : state[3 * c + ch];
        state[4 * c + ch] = sums[4 * c + ch] > state[4 * c + ch] ? sums[4 * c + ch] : state[4 * c + ch];
        state[5 * c + ch] += count_b - sums[5 * c + ch];
    }
    return 0;
}
"""

# tried in order: OpenMP threads; else one thread (clang without libomp)
_FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"),
    ("-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC"),
    ("-O3", "-shared", "-fPIC"),
)

_lock = threading.Lock()
_state: dict = {}  # "fn": the loaded function, or "why": the reason there is none


def _compiler() -> Optional[list[str]]:
    cc = os.environ.get("CC")
    if cc:
        return shlex.split(cc)
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _cache_dir() -> Path:
    explicit = os.environ.get("MASKED_TORCH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "masked_torch"


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags where Linux lists them."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _build(cc: list[str], directory: Path, stale: Optional[Path] = None) -> Path:
    """The shared library built from :data:`_SOURCE` (cached); raises ``RuntimeError`` with the compiler's
    last error if no flag set builds. A flag set that failed once is remembered (``*.failed`` next to the
    libraries: delete the directory to try again); ``stale``: a cached library that would not load, built
    again."""
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256("\0".join([_SOURCE, " ".join(cc), *flags, _cpu_id()]).encode()).hexdigest()[:16]
        lib = directory / f"channel_sums-{key}{suffix}"
        failed = directory / f"channel_sums-{key}.failed"
        if lib.exists() and lib != stale:
            return lib
        if failed.exists():
            errors.append(failed.read_text().strip() or "failed before")
            continue
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            src = Path(tmp) / "channel_sums.c"
            src.write_text(_SOURCE)
            built = Path(tmp) / f"channel_sums{suffix}"
            try:
                proc = subprocess.run([*cc, *flags, str(src), "-o", str(built)], capture_output=True, text=True,
                                      timeout=60)
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue  # the compiler itself did not run: not remembered
            if proc.returncode != 0 or not built.exists():
                tail = (proc.stderr or proc.stdout).strip().splitlines()
                errors.append(tail[-1] if tail else f"exit status {proc.returncode}")
                note = Path(tmp) / "failed"
                note.write_text(errors[-1] + "\n")
                os.replace(note, failed)
                continue
            os.replace(built, lib)  # atomic: a concurrent process sees no library or a whole one
            return lib
    raise RuntimeError(f"{' '.join(cc)} could not build it ({errors[-1]})")


class Library:
    """The two compiled functions: :func:`channel_sums` and :func:`update` call them."""

    def __init__(self, dll: ctypes.CDLL) -> None:
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self.sums = dll.masked_torch_channel_sums
        self.sums.argtypes = [ptr, ptr, i64, i64, i64, i64, ptr, ptr, ctypes.c_int]
        self.sums.restype = None
        self.update = dll.masked_torch_channel_update
        self.update.argtypes = [ptr, ptr, i64, i64, i64, i64, ptr, ptr, ctypes.c_int]
        self.update.restype = ctypes.c_int


def load() -> Optional[Library]:
    """The compiled kernel (built on first use, then cached), or ``None`` if it cannot be built here
    (:func:`unavailable` says why). Thread-safe; tried once per process."""
    with _lock:
        if "lib" in _state or "why" in _state:
            return _state.get("lib")
        cc = _compiler()
        if cc is None:
            _state["why"] = "no C compiler found ($CC, cc, gcc or clang)"
            return None
        try:
            path = _build(cc, _cache_dir())
            try:
                lib = Library(ctypes.CDLL(str(path)))
            except (OSError, AttributeError):  # a damaged cached file: built once more
                lib = Library(ctypes.CDLL(str(_build(cc, _cache_dir(), stale=path))))
        except (OSError, RuntimeError, AttributeError) as exc:
            _state["why"] = str(exc)
            return None
        _state["lib"] = lib
        return lib


def unavailable() -> Optional[str]:
    """Why :func:`load` returned ``None`` (``None`` if it loaded or was not tried yet)."""
    return _state.get("why")


def applies(x: Tensor, mask: Optional[Tensor]) -> bool:
    """Whether :func:`channel_sums` takes these: float32, on the CPU, contiguous (as
    :func:`~masked_torch.analysis.kernels.as_ncl` makes them), a float32 mask or none."""
    return _plain_f32(x) and (mask is None or _plain_f32(mask))


def _plain_f32(t: Tensor) -> bool:
    """float32 on the CPU, contiguous, and its memory holds its values (not a lazily negated view)."""
    return t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() and not t.is_neg()


def channel_sums(lib: Library, x: Tensor, mask: Optional[Tensor], shift: np.ndarray) -> np.ndarray:
    """``(6, C)`` float64 sums of ``x`` ``(N, C, L)`` over the kept positions of ``mask`` ``(N, 1 or C, L)``
    around ``shift`` ``(C,)`` float32 (rows as :func:`~masked_torch.analysis.kernels.shifted_sums`); the
    inputs must satisfy :func:`applies`."""
    n, c, length = x.shape
    shift = np.ascontiguousarray(shift, dtype=np.float32)
    out = np.empty((6, c))
    lib.sums(x.data_ptr(), 0 if mask is None else mask.data_ptr(), n, c, length,
             1 if mask is None else mask.shape[1], shift.ctypes.data, out.ctypes.data, torch.get_num_threads())
    return out


def update(lib: Library, x: Tensor, mask: Optional[Tensor], state: np.ndarray) -> bool:
    """A running state (``(6, C)`` float64 C-contiguous, rows count, mean, m2, min, max, zeros; see
    :func:`~masked_torch.analysis.moments.add_shifted_sums`) plus the batch ``x`` ``(N, C, L)`` over the
    kept positions of ``mask``, in place and in one call: each channel summed around its running mean (a
    channel without positions yet, or whose batch mean moved more than 2 of the batch's standard deviations
    from it: around the batch's own mean, an extra pass), then merged as
    ``add_shifted_sums`` merges. Returns ``False``, the state untouched, if a sum is not finite (NaN or Inf
    at a kept position: the caller takes the exact kernel). The inputs must satisfy :func:`applies`."""
    n, c, length = x.shape
    if state.dtype != np.float64 or state.shape != (6, c) or not state.flags.c_contiguous:
        raise ValueError(f"native.update: expected a (6, {c}) float64 C-contiguous state, got {state.dtype} "
                         f"{state.shape}")
    scratch = np.empty((7, c))
    bad = lib.update(x.data_ptr(), 0 if mask is None else mask.data_ptr(), n, c, length,
                     1 if mask is None else mask.shape[1], state.ctypes.data, scratch.ctypes.data,
                     torch.get_num_threads())
    return bad == 0
