"""Scale-out: recording statistics with 1 and 2 processes (torch.distributed, gloo), and a sweep with 1 and 2 jobs.

    python benchmarks/scale.py [--images 256] [--depth 4] [--batch-size 16] [--repeats 3]

Part 1 records the per-channel statistics of the conv, pconv and mconv stacks over ``--images`` synthetic
images (padded batches of ``--batch-size``), batch ``i`` on rank ``i % K``, then merges the ranks'
moments (``ActivationRecorder.reduce``). The cores are shared out: 1 process x 2 threads, 2 processes x 1
thread (and 1 process x 1 thread for reference). Timed from a barrier after start-up to the merged result;
repeated, alternating the set-ups, and the median is reported.

Part 2 runs a small sweep (4 configurations) with ``--jobs 1`` and ``--jobs 2`` into fresh folders.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from masked_torch.analysis.data import open_source  # noqa: E402
from masked_torch.analysis.loader import make_loader  # noqa: E402
from masked_torch.analysis.recorder import ActivationRecorder  # noqa: E402
from masked_torch.analysis.stacks import build_stacks  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, threads, args, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(threads)
    source = open_source("synthetic", num_images=args.images, max_side=args.max_side, seed=0)
    stacks = build_stacks(args.depth, seed=0)
    recorders = {name: ActivationRecorder(model) for name, model in stacks.items()}
    # batch i on rank i % world, every batch decoded and padded before the timing starts
    mine = list(make_loader(source, batch_size=args.batch_size, multiple=2**args.depth, rank=rank, world=world))
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    with torch.no_grad():
        for b in mine:
            for name, model in stacks.items():
                with recorders[name]:
                    model(b.x, b.mask)
    for rec in recorders.values():
        rec.reduce()
    if world > 1:
        dist.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        result.put(elapsed)
    if world > 1:
        dist.destroy_process_group()


def record_time(world, threads, args) -> float:
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, world, args.port, threads, args, result))
             for r in range(world)]
    for p in procs:
        p.start()
    elapsed = result.get()
    for p in procs:
        p.join()
    args.port += 1
    return elapsed


def sweep_time(jobs: int, images: int) -> float:
    from masked_torch.analysis.sweep import expand_grid, run_sweep

    configs = expand_grid({"depth": ["3", "4"], "bias": ["true", "false"]},
                          {"data": "synthetic", "num_images": str(images), "batch_size": "8"})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = run_sweep(configs, out, jobs=jobs, progress=False)
        if result.failed:
            raise RuntimeError(result.failed)
        return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--sweep-images", type=int, default=48, help="images per sweep configuration")
    args = parser.parse_args(argv)
    args.port = _free_port()
    setups = [("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1), ("1 process x 1 thread", 1, 1)]
    times = {name: [] for name, _, _ in setups}
    for _ in range(0 if args.no_record else args.repeats):
        for name, world, threads in setups:
            times[name].append(record_time(world, threads, args))
    if not args.no_record:
        print(f"recording statistics of conv+pconv+mconv: {args.images} synthetic images, depth {args.depth}, "
              f"batch {args.batch_size}, median of {args.repeats}")
        base = statistics.median(times[setups[0][0]])
        single = statistics.median(times[setups[2][0]])
        for name, _, _ in setups:
            t = statistics.median(times[name])
            print(f"  {name:24s} {t:7.2f} s  {args.images / t:7.1f} images/s  speed-up vs 1 process x 2 threads: "
                  f"{base / t:4.2f}x, vs 1 process x 1 thread: {single / t:4.2f}x")
    if not args.no_sweep:
        t1, t2 = sweep_time(1, args.sweep_images), sweep_time(2, args.sweep_images)
        print(f"sweep of 4 configurations (synthetic, {args.sweep_images} images, depth 3/4, bias on/off; "
              f"each worker process pays torch's import): --jobs 1 {t1:.1f} s, --jobs 2 {t2:.1f} s, "
              f"speed-up {t1 / t2:.2f}x")


if __name__ == "__main__":
    main()
