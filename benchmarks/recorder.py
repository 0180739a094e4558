"""ActivationRecorder overhead: forward time with the recorder on vs off, interleaved in one run.

Target (issue): <= 1.15x for a depth-4 mconv stack, N=8, 192x192 images with per-image masks, forward
under ``torch.no_grad()``, 2 threads. Variants: the eager statistics kernel (the default) and the opt-in
compiled one (``compile=True``). The machine is noisy, so each round times, for every variant in turn, a
pair with the recorder off and on back to back (alternating which goes first), and the table quotes the
median over pairs of the per-pair ratios (median times for scale only; quartiles of the ratios to show the
noise).

    python benchmarks/recorder.py [--repeats 60] [--stack mconv] [--batch 8] [--size 192]
"""
from __future__ import annotations

import argparse
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
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled variant (no compiler)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = build_stacks(args.depth, stacks=(args.stack,))[args.stack]
    x, mask = make_batch(args.batch, args.size)

    variants = {}
    if not args.no_compiled:
        variants["compiled"] = ActivationRecorder(model, compile=True)
    if not args.no_eager:
        variants["eager"] = ActivationRecorder(model, compile=False)
    if not variants:
        parser.error("nothing to time: --no-eager and --no-compiled")

    def run(rec) -> float:
        if rec is None:
            with torch.no_grad():
                t = time.perf_counter()
                model(x, mask)
                return time.perf_counter() - t
        with rec, torch.no_grad():
            t = time.perf_counter()
            model(x, mask)
            return time.perf_counter() - t

    compile_s = None
    if "compiled" in variants:
        t = time.perf_counter()
        run(variants["compiled"])  # lazy torch.compile of the statistics kernel (first batch: two calls)
        run(variants["compiled"])
        compile_s = time.perf_counter() - t
    for _ in range(args.warmup):
        run(None)
        for rec in variants.values():
            run(rec)

    # rounds of one off/on pair per variant: off and on alternate (off-on, on-off, ...), ratio = on / off
    off_times, on_times, ratios = [], {name: [] for name in variants}, {name: [] for name in variants}
    for r in range(args.repeats):
        for name, rec in variants.items():
            if r % 2:
                on, off = run(rec), run(None)
            else:
                off, on = run(None), run(rec)
            off_times.append(off)
            on_times[name].append(on)
            ratios[name].append(on / off)
    for rec in variants.values():
        rec.to_frame()  # the recorded statistics are complete (raises otherwise)

    print(f"ActivationRecorder overhead: {args.stack} depth {args.depth}, N={args.batch}, "
          f"{args.size}x{args.size}, {args.threads} threads, {args.repeats} rounds of off/on pairs, "
          f"torch {torch.__version__}")
    if compile_s is not None:
        print(f"first compiled calls (compile + 2 forwards): {compile_s:.1f} s")
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
