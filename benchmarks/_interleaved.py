"""Interleaved timing shared by the benchmark scripts: every round runs every variant once, in a rotating
order; a variant's time is divided by the baseline's time *in the same round*, and the median ratio over
rounds is reported with its interquartile range (these machines are noisy: single times mean little)."""
from __future__ import annotations

import statistics
from typing import Callable, Sequence


def interleaved(names: Sequence[str], once: Callable[[str], float], repeats: int, base: str, warmup: int = 2):
    """``[(name, median ratio, q25, q75, median ms)]``; ``once(name)`` runs a variant and returns seconds."""
    names = list(names)
    times = {name: [] for name in names}
    for name in names:
        for _ in range(warmup):
            once(name)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(once(name))
    rows = []
    for name in names:
        ratios = [t / b for t, b in zip(times[name], times[base])]
        q = statistics.quantiles(ratios, n=4)
        rows.append((name, statistics.median(ratios), q[0], q[2], statistics.median(times[name]) * 1e3))
    return rows


def print_rows(rows, width: int = 42) -> None:
    for name, med, lo, hi, ms in rows:
        print(f"  {name:{width}s} {med:5.2f}x  [{lo:4.2f}-{hi:4.2f}]  ({ms:7.2f} ms median)")
