"""Streaming images: peak memory and throughput of the loader for 120 and 1,200 images.

    python benchmarks/streaming.py [--images 1200] [--small 120] [--batch-size 8] [--workers 0 2] [--folder DIR]

Writes a folder of ``--images`` generated images (random sizes, each side in [64, 400] pixels, JPEG and PNG,
in 12 class sub-folders) into a temporary directory (or uses ``--folder``), then runs every set-up in a
fresh Python process, for the first ``--small`` images and for all of them:

* ``stream``       -- ``make_loader(open_source(folder, max_side=256), batch_size, multiple=16)``, iterated;
* ``stream+conv``  -- the same, plus a forward of the depth-4 mconv stack (``masked_torch.analysis.stacks``)
  on every batch, under ``torch.no_grad()`` (one thread, as the suite runs);
* ``stream+conv+limit`` -- the same, with :func:`masked_torch.analysis.loader.limit_heap_growth` called in
  the main process too (the workers always call it);
* ``in-memory+conv`` -- the older way, for comparison: every image decoded and held first, then padded in
  consecutive batches (``masked_torch.utils.pad_batch``).

Each child prints its peak resident memory (``getrusage``: ``ru_maxrss`` of the process, and of its largest
finished child, i.e. one DataLoader worker) and images per second (from opening the source to the last
batch). The table gives the ratio of peak memory, 1,200 images over 120 (the goal for streaming: <= 1.3x).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = ("stream", "stream+conv", "stream+conv+limit", "in-memory+conv")


def write_folder(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` images of random sizes (sides in [64, 400]): smooth random colour fields (upsampled noise, so
    the files are small), every 3rd one a PNG, the rest JPEG, in 12 class sub-folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(64, 401, size=2))
        small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        path = folder / f"class{i % 12:02d}" / f"img{i:05d}.{'png' if i % 3 == 0 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)


def child(args) -> None:
    import torch

    from masked_torch.analysis.data import Batch, open_source
    from masked_torch.analysis.loader import limit_heap_growth, make_loader
    from masked_torch.analysis.stacks import build_stacks

    torch.set_num_threads(1)
    workers = args.workers[0]
    depth = 4
    model = build_stacks(depth, stacks=("mconv",), seed=0)["mconv"] if "conv" in args.mode else None
    if args.mode.endswith("limit"):
        limit_heap_growth()
    start = time.perf_counter()
    images = batches_seen = 0
    source = open_source(args.folder, num_images=args.num_images, max_side=256)
    if args.mode.startswith("stream"):
        it = make_loader(source, batch_size=args.batch_size, multiple=2**depth, workers=workers)
    else:  # every image decoded first and held, then padded in consecutive batches
        from masked_torch.utils import pad_batch

        held = [torch.from_numpy(source.load(i).pixels) for i in range(len(source))]
        it = (Batch(*pad_batch(held[s:s + args.batch_size], 2**depth), [], [])
              for s in range(0, len(held), args.batch_size))
    with torch.no_grad():
        for b in it:
            if model is not None:
                model(b.x, b.mask)
            images += len(b)
            batches_seen += 1
    seconds = time.perf_counter() - start
    kb = 1024.0  # ru_maxrss is in KiB on Linux
    print(json.dumps(dict(
        mode=args.mode, images=images, batches=batches_seen, workers=workers, seconds=seconds,
        images_per_s=images / seconds,
        rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kb,
        rss_worker_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kb,
    )))


def run_child(folder: str, mode: str, num_images: int, workers: int, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--folder", folder, "--mode", mode, "--num-images",
           str(num_images), "--workers", str(workers), "--batch-size", str(batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"benchmark child failed ({' '.join(cmd[2:])}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--small", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--folder", default=None, help="use these images instead of generating them")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    p.add_argument("--num-images", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="streaming-bench-") as tmp:
        folder = args.folder
        if folder is None:
            folder = tmp
            t = time.perf_counter()
            write_folder(Path(folder), args.images)
            size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20
            print(f"wrote {args.images} images ({size:.0f} MiB) in {time.perf_counter() - t:.1f} s", flush=True)
        print(f"batch size {args.batch_size}, max side 256, canvas multiple 16; peak RSS of the process "
              f"(+ largest worker); images/s from opening the source to the last batch", flush=True)
        header = f"{'set-up':<18} {'workers':>7} {'images':>6} {'peak MiB':>9} {'worker MiB':>10} {'img/s':>7}"
        print(header)
        print("-" * len(header))
        for mode in args.modes:
            for workers in (args.workers if mode.startswith("stream") else [0]):
                rows = []
                for n in (args.small, args.images):
                    r = run_child(folder, mode, n, workers, args.batch_size)
                    rows.append(r)
                    print(f"{mode:<18} {workers:>7} {r['images']:>6} {r['rss_mb']:>9.0f} "
                          f"{r['rss_worker_mb'] if workers else 0:>10.0f} {r['images_per_s']:>7.1f}", flush=True)
                ratio = rows[1]["rss_mb"] / rows[0]["rss_mb"]
                total = [r["rss_mb"] + workers * r["rss_worker_mb"] for r in rows]
                print(f"{'':<18} {'':>7} ratio {args.images}/{args.small}: peak {ratio:.2f}x"
                      + (f" (process + {workers} workers: {total[1] / total[0]:.2f}x)" if workers else ""),
                      flush=True)


if __name__ == "__main__":
    main()
