"""ActivationRecorder overhead: forward time with the recorder on vs off, interleaved in one run.

Target (issue): <= 1.15x for a depth-4 mconv stack, N=8, 192x192 images with per-image masks, forward
under ``torch.no_grad()``, 2 threads. Variants: the compiled statistics kernel (``compile=True``; C, built
with the system's compiler; the default where it builds) and the eager one (``compile=False``).

As a recording runs (``run.py``): each variant's recorder is entered once, on its own copy of the model
(same weights), and stays entered for the whole run, so a forward pays for the hooks and the statistics,
not for registering hooks or allocating scratch. "off" is the same forward on the unrecorded copy.

The machine is noisy, so each round times, for every variant in turn, a pair with the recorder off and on
back to back (alternating which goes first), and the table quotes the median over pairs of the per-pair
ratios (median times for scale only; quartiles of the ratios to show the noise).

``--allocator steady`` (the default, glibc only) fixes glibc's mmap and trim thresholds so that the
forward's multi-megabyte tensors are served from the heap every time. With glibc's default (dynamic)
thresholds, ``--allocator default``, whether each large tensor is mapped afresh (and page-faulted in) or
reused depends on the history of frees, which moved the plain forward's own time between 16 and 33 ms
here from run to run, and the ratio with it (0.94-1.46x): that noise is the allocator's, not the recorder's.

    python benchmarks/recorder.py [--repeats 60] [--stack mconv] [--batch 8] [--size 192] [--allocator steady]
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from masked_torch.analysis.recorder import ActivationRecorder  # noqa: E402
from masked_torch.analysis.stacks import STACKS, build_stacks  # noqa: E402


def make_batch(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(n, 3, size, size)`` and a 1-channel mask cutting sample ``i`` to its own ``h_i x w_i``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=gen)
    mask = torch.zeros(n, 1, size, size)
    lo = max(1, size // 3)
    for i in range(n):
        h, w = (int(v) for v in torch.randint(lo, size + 1, (2,), generator=gen))
        mask[i, :, :h, :w] = 1
    return x, mask


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)


def steady_allocator() -> bool:
    """Serve blocks up to 32 MiB from the heap and never trim it (glibc): large tensors freed by one forward
    are reused by the next instead of being mapped and page-faulted in again. Returns whether it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # not glibc
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="mconv", choices=STACKS)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=60, help="timed off/on pairs per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds after compilation")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager variant")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled variant")
    parser.add_argument("--allocator", choices=("steady", "default"), default="steady",
                        help="steady: fixed glibc thresholds, large tensors reused from the heap (see above)")
    args = parser.parse_args(argv)

    allocator = "default (glibc's dynamic thresholds)"
    if args.allocator == "steady":
        allocator = "steady (glibc mmap threshold 32 MiB, no trim)" if steady_allocator() else "default (not glibc)"
    torch.set_num_threads(args.threads)
    model = build_stacks(args.depth, stacks=(args.stack,))[args.stack]
    x, mask = make_batch(args.batch, args.size)

    names = ([] if args.no_compiled else ["compiled"]) + ([] if args.no_eager else ["eager"])
    if not names:
        parser.error("nothing to time: --no-eager and --no-compiled")
    # each variant records its own copy of the model, entered once for the whole run (as a recording is)
    copies = {name: copy.deepcopy(model) for name in names}
    variants = {name: ActivationRecorder(copies[name], compile=name == "compiled") for name in names}
    recording = contextlib.ExitStack()
    for rec in variants.values():
        recording.enter_context(rec)

    def run(name) -> float:
        net = model if name is None else copies[name]
        with torch.no_grad():
            t = time.perf_counter()
            net(x, mask)
            return time.perf_counter() - t

    compile_s = None
    if "compiled" in variants:
        from masked_torch.analysis import native

        t = time.perf_counter()
        run("compiled")  # builds the compiled kernel, or loads it from the cache (first batch: two passes)
        run("compiled")
        compile_s = time.perf_counter() - t
        if native.load() is None:
            print(f"the compiled kernel is not available ({native.unavailable()}): its rows are the eager kernel")
    for _ in range(args.warmup):
        run(None)
        for name in variants:
            run(name)

    # rounds of one off/on pair per variant: off and on alternate (off-on, on-off, ...), ratio = on / off
    off_times, on_times, ratios = [], {name: [] for name in variants}, {name: [] for name in variants}
    for r in range(args.repeats):
        for name in variants:
            if r % 2:
                on, off = run(name), run(None)
            else:
                off, on = run(None), run(name)
            off_times.append(off)
            on_times[name].append(on)
            ratios[name].append(on / off)
    recording.close()
    for rec in variants.values():
        rec.to_frame()  # the recorded statistics are complete (raises otherwise)

    print(f"ActivationRecorder overhead: {args.stack} depth {args.depth}, N={args.batch}, "
          f"{args.size}x{args.size}, {args.threads} threads, {args.repeats} rounds of off/on pairs, "
          f"torch {torch.__version__}; allocator {allocator}")
    if compile_s is not None:
        print(f"first compiled calls (build or load + 2 forwards): {compile_s:.2f} s")
    print(f"{'variant':<10} {'median ms':>10} {'median ratio':>13} {'q25 ratio':>10} {'q75 ratio':>10} "
          f"{'min/min':>8}")
    fastest_off = min(off_times)
    print(f"{'off':<10} {statistics.median(off_times) * 1e3:>10.2f} {'1':>13} {'':>10} {'':>10} {'1':>8}")
    for name in variants:
        q = statistics.quantiles(ratios[name], n=4)
        print(f"{name:<10} {statistics.median(on_times[name]) * 1e3:>10.2f} {statistics.median(ratios[name]):>13.3f} "
              f"{q[0]:>10.3f} {q[2]:>10.3f} {min(on_times[name]) / fastest_off:>8.3f}")
    print("ratio = on / off of each back-to-back pair; the median over pairs is the figure to quote (min/min: "
          "the fastest on over the fastest off, for reference on a busy machine)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
