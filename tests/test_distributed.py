"""Statistics recorded by 2 gloo processes, merged, equal those of one process that saw every batch."""
import os
import socket

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from masked_torch.analysis.kernels import error_bound
from masked_torch.analysis.recorder import ActivationRecorder
from masked_torch.analysis.stacks import build_stacks

#: Merged ranks and one process sum the same positions in other batches (and around other references): each
#: is within the kernel's documented bound of the exact moments, so they differ by at most twice the bound
#: (kernels.error_bound; the merge's float64 rounding is inside it); tests allow that with this margin.
MARGIN = 2.0


def assert_same_moments(mean, var, want_mean, want_var, want_std):
    """Two recordings of the same positions (float32 outputs): within twice the documented bound, with MARGIN."""
    import numpy as np

    var_rtol, mean_tol = error_bound()
    k = 2 * MARGIN
    mean, var, want_mean, want_var, want_std = (np.asarray(a, dtype=np.float64)
                                                for a in (mean, var, want_mean, want_var, want_std))
    assert np.all(np.abs(var - want_var) <= k * var_rtol * want_var), np.max(np.abs(var / want_var - 1))
    assert np.all(np.abs(mean - want_mean) <= k * (mean_tol * want_std + 2.0**-52 * np.abs(want_mean)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batches(count=5):
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(count):
        h, w = 16 * (2 + i % 3), 16 * (3 - i % 2)
        x = torch.randn(3, 3, h, w, generator=g) + 100.0 * (i % 2)  # shifting means stress the merge
        m = torch.zeros(3, 1, h, w)
        for k in range(3):
            m[k, :, : h - 5 * k, : w - 3 * k] = 1
        out.append((x, m))
    return out


def record(model, batches):
    with ActivationRecorder(model) as rec:
        with torch.no_grad():
            for x, m in batches:
                model(x, m)
    return rec


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = build_stacks(2, seed=3)["mconv"]
        mine = [b for i, b in enumerate(make_batches()) if i % world == rank]  # batch i -> rank i % K
        rec = record(model, mine)
        rec.reduce()
        if rank == 0:
            rec.to_frame().to_pickle(os.path.join(out_dir, "merged.pkl"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    got = pd.read_pickle(tmp_path / "merged.pkl")
    model = build_stacks(2, seed=3)["mconv"]
    want = record(model, make_batches()).to_frame()
    assert list(got["layer"]) == list(want["layer"])
    assert (got["count"].to_numpy() == want["count"].to_numpy()).all()
    for col in ("min", "max", "zero_frac"):
        assert (got[col].to_numpy() == want[col].to_numpy()).all(), col
    assert_same_moments(got["mean"], got["var"], want["mean"], want["var"], want["std"])


def test_reduce_without_process_group_is_identity():
    model = build_stacks(1, seed=0)["pconv"]
    rec = record(model, make_batches(2))
    before = rec.to_frame()
    rec.reduce()
    assert before.equals(rec.to_frame())


def test_cli_under_torchrun_writes_the_single_process_frame(tmp_path):
    """torchrun --nproc_per_node=2: rank 0 writes the same frame as one process (counts, min, max, zeros
    exactly; mean and variance within twice the kernel's documented bound); other ranks write nothing."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = str(root / "visualize_activations_2d.py")
    flags = ["--data", "synthetic", "--depth", "2", "--num-images", "6", "--batch-size", "2", "--quiet",
             "--max-side", "96"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, multi = tmp_path / "single", tmp_path / "multi"
    # one thread everywhere: the forward's own float32 rounding may depend on the thread count (min and max
    # are compared exactly); the kernel's bound holds for any count (test_record.py)
    subprocess.run([sys.executable, script, "--out", str(single), *flags], check=True, env=env, cwd=tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master-addr=127.0.0.1",
                f"--master-port={free_port()}"]
    proc = subprocess.run([*torchrun, script, "--out", str(multi), *flags], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = pd.read_parquet(single / "activation_stats.parquet")
    b = pd.read_parquet(multi / "activation_stats.parquet")
    keys = ["stack", "layer", "channel"]
    assert a[keys].equals(b[keys]) and (a["count"] == b["count"]).all()
    for col in ("min", "max", "zero_frac"):
        assert (a[col] == b[col]).all(), col
    assert_same_moments(b["mean"], b["var"], a["mean"], a["var"], a["std"])
    pa, pb = (pd.read_parquet(d / "padding_sensitivity.parquet") for d in (single, multi))
    assert pa.drop(columns=["rel_error", "max_abs_error"]).equals(pb.drop(columns=["rel_error", "max_abs_error"]))
    # only rank 0 wrote: exactly the files of a single-process run, no stray temporary files
    assert sorted(p.name for p in multi.rglob("*")) == sorted(p.name for p in single.rglob("*"))
