"""Streaming images: peak memory of the full command for 120 and for 1,200 images.

    python benchmarks/streaming.py [--images 1200] [--small 120] [--workers 0] [--folder DIR] [-- CLI FLAGS]

Writes a folder of ``--images`` generated images (random sizes, each side in ``[--min-side, --max-side-px]``
pixels, default [24, 160]; every 3rd a PNG, the rest JPEG, in 12 class sub-folders) into a temporary
directory (or uses ``--folder``), then runs the suite's command line end to end in a fresh process,

    python -m masked_torch.analysis --data FOLDER --num-images N --out TMP --quiet [--workers W] [CLI FLAGS]

for the first ``--small`` images and for all of them: reading the headers, planning, streaming every batch
through every stack and every image alone, the passes, the figures and the parquet files. Flags after
``--`` go to the command (e.g. ``-- --bucket --batch-size 8``).

Peak memory, two ways: ``peak MiB`` is the largest resident set of the command's process or of any one of its
DataLoader workers (``ru_maxrss`` from ``wait4``, exact: the kernel's own high-water mark), and ``tree MiB``
the largest sum over the process and its workers seen by polling every 20 ms (psutil; it may miss a spike
shorter than that). With ``--workers 0`` (the default) the two agree. The goal: the ratio, 1,200 images over
120, at most 1.3x. Images per second are over the whole command (start-up and writing included).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.3


def write_folder(folder: Path, n: int, seed: int = 0, sides: tuple[int, int] = (24, 160)) -> None:
    """``n`` images of random sizes (each side uniform in ``sides``): smooth random colour fields (upsampled
    noise, so the files are small), every 3rd one a PNG, the rest JPEG, in 12 class sub-folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
        small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        path = folder / f"class{i % 12:02d}" / f"img{i:05d}.{'png' if i % 3 == 0 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)


def _poll_tree(pid: int, peak: list, done: threading.Event, every: float = 0.02) -> None:
    """Largest sum of resident memory over process ``pid`` and its descendants, into ``peak[0]`` (bytes)."""
    try:
        import psutil
    except ImportError:  # the exact per-process peak is still measured
        return
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return
    while not done.is_set():
        total = 0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        peak[0] = max(peak[0], total)
        done.wait(every)


def run_command(folder: str, num_images: int, workers: int, extra: list[str]) -> dict:
    """Run the command line on the first ``num_images`` of ``folder``; its peak memory and speed."""
    with tempfile.TemporaryDirectory(prefix="streaming-out-") as out:
        cmd = [sys.executable, "-m", "masked_torch.analysis", "--data", folder, "--num-images", str(num_images),
               "--out", out, "--quiet", "--workers", str(workers), *extra]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        start = time.perf_counter()
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
            peak, done = [0], threading.Event()
            poller = threading.Thread(target=_poll_tree, args=(proc.pid, peak, done), daemon=True)
            poller.start()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            done.set()
            poller.join()
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                err.seek(0)
                sys.exit(f"the command failed ({' '.join(cmd[1:])}):\n{err.read()}")
    return dict(images=num_images, seconds=seconds, images_per_s=num_images / seconds,
                peak_mb=usage.ru_maxrss / 1024.0,  # KiB on Linux: the process or its largest descendant
                tree_mb=peak[0] / 2**20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1200, help="the large run's images (default 1200)")
    p.add_argument("--small", type=int, default=120, help="the small run's images (default 120)")
    p.add_argument("--workers", type=int, nargs="+", default=[0], help="the command's --workers, each in turn")
    p.add_argument("--min-side", type=int, default=24, help="generated images: smallest side (default 24)")
    p.add_argument("--max-side-px", type=int, default=160,
                   help="generated images: largest side (default 160; the command shrinks beyond its --max-side)")
    p.add_argument("--folder", default=None, help="use these images instead of generating them")
    p.add_argument("cli", nargs="*", help="flags for the command, after --")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="streaming-bench-") as tmp:
        folder = args.folder
        if folder is None:
            folder = tmp
            t = time.perf_counter()
            write_folder(Path(folder), args.images, sides=(args.min_side, args.max_side_px))
            size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20
            print(f"wrote {args.images} images, sides {args.min_side}-{args.max_side_px} ({size:.0f} MiB) in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
        print(f"the full command: python -m masked_torch.analysis --data FOLDER --num-images N --quiet "
              f"{' '.join(args.cli)}".rstrip(), flush=True)
        header = f"{'workers':>7} {'images':>6} {'peak MiB':>9} {'tree MiB':>9} {'seconds':>8} {'img/s':>6}"
        print(header)
        print("-" * len(header))
        for workers in args.workers:
            rows = []
            for n in (args.small, args.images):
                r = run_command(folder, n, workers, args.cli)
                rows.append(r)
                print(f"{workers:>7} {n:>6} {r['peak_mb']:>9.0f} {r['tree_mb']:>9.0f} {r['seconds']:>8.1f} "
                      f"{r['images_per_s']:>6.1f}", flush=True)
            ratio = rows[1]["peak_mb"] / rows[0]["peak_mb"]
            tree = rows[1]["tree_mb"] / rows[0]["tree_mb"] if rows[0]["tree_mb"] else float("nan")
            print(f"{'':>7} ratio {args.images}/{args.small}: peak {ratio:.2f}x, tree {tree:.2f}x "
                  f"({'within' if ratio <= GOAL else 'ABOVE'} the goal, <= {GOAL}x)", flush=True)


if __name__ == "__main__":
    main()
