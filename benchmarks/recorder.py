"""ActivationRecorder overhead as a recording runs: forward time with the recorder on vs off, interleaved.

Target (issue 16): <= 1.15x for a depth-4 mconv stack, N=8, 192x192 images with per-image masks, forward
under ``torch.no_grad()``, 2 threads, glibc's default allocator.

As a recording runs (``run.py``): one recorder is entered once, on its own copy of the model (same
weights), and stays entered while many batches go through it, so a forward pays for the hooks and the
statistics, not for registering hooks or allocating scratch. "off" is the same forward on the identical
copy without hooks. Each round runs the next of ``--batches`` different batches (other images and masks,
same shape) through both copies back to back, alternating which goes first; the figure is the median over
rounds of the per-round ratio on / off (quartiles show the noise; median times for scale).

``--allocator steady`` (glibc only) is an option for studying the kernel alone: it fixes glibc's mmap and
trim thresholds so that the forward's multi-megabyte tensors are served from the heap every time. With
glibc's default (dynamic) thresholds, the default here and what a user gets, whether a large tensor is
mapped afresh (and page-faulted in) or reused depends on the history of frees, which moves the plain
forward's own time from run to run.

    python benchmarks/recorder.py [--repeats 60] [--stack mconv] [--batch 8] [--size 192] [--allocator default]
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import os
import platform
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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="mconv", choices=STACKS)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=60, help="timed rounds (one off/on pair each)")
    parser.add_argument("--batches", type=int, default=8, help="different batches, cycled through")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--allocator", choices=("default", "steady"), default="default",
                        help="default: glibc's own thresholds (as a user runs); steady: see above")
    args = parser.parse_args(argv)

    allocator = "default (glibc's dynamic thresholds)"
    if args.allocator == "steady":
        allocator = "steady (glibc mmap threshold 32 MiB, no trim)" if steady_allocator() else "default (not glibc)"
    torch.set_num_threads(args.threads)
    model = build_stacks(args.depth, stacks=(args.stack,))[args.stack]
    recorded = copy.deepcopy(model)  # identical weights; only this copy has hooks
    batches = [make_batch(args.batch, args.size, seed) for seed in range(args.batches)]

    def run(net, batch) -> float:
        with torch.no_grad():
            t = time.perf_counter()
            net(*batch)
            return time.perf_counter() - t

    off_times, on_times, ratios = [], [], []
    with ActivationRecorder(recorded) as rec:  # entered once, as a recording is
        for r in range(args.warmup + args.repeats):
            batch = batches[r % len(batches)]
            if r % 2:
                on, off = run(recorded, batch), run(model, batch)
            else:
                off, on = run(model, batch), run(recorded, batch)
            if r >= args.warmup:
                off_times.append(off)
                on_times.append(on)
                ratios.append(on / off)
    rec.to_frame()  # the recorded statistics are complete (raises otherwise)

    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"ActivationRecorder overhead: {args.stack} depth {args.depth}, N={args.batch}, {args.size}x{args.size}, "
          f"{args.threads} threads, {args.repeats} rounds over {args.batches} batches, one recorder entered once")
    print(f"CPU {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__} "
          f"(CPU capability {torch.backends.cpu.get_cpu_capability()}), allocator {allocator}, load average "
          f"at the end {load}")
    q = statistics.quantiles(ratios, n=4)
    print(f"{'':<4} {'median ms':>10}")
    print(f"{'off':<4} {statistics.median(off_times) * 1e3:>10.2f}")
    print(f"{'on':<4} {statistics.median(on_times) * 1e3:>10.2f}")
    print(f"median ratio on/off {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}; "
          f"fastest on / fastest off {min(on_times) / min(off_times):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
