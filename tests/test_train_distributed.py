"""The training experiment under torch.distributed: two gloo ranks train one model on their shares of every padded
batch, stay in step, and rank 0 alone writes."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from masked_torch.analysis.train_loop import FRAMES, TrainSettings, _Seed, final_path, run_training

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = TrainSettings(num_images=36, min_side=16, max_side=40, width=4, seeds=(0,), epochs=2, batch_size=6,
                         probe_images=4, sensitivity_every=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out, settings):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = run_training(settings, out, progress=False)
        torch.save({"rows": {k: len(v) for k, v in result.frames.items()},
                    "checkpoints": [str(p) for p in result.checkpoints],
                    "weights": {k: m.state_dict() for k, m in result.models[0].items()}},
                   os.path.join(os.path.dirname(out), f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def assert_two_ranks_train_in_step(settings: TrainSettings, outputs: int, tmp_path: Path) -> None:
    """Two gloo ranks run ``settings``: rank 0 alone measures and writes, and both end with the same parameters,
    which differ from the start (``outputs``: the model's, as ``_Seed`` takes it)."""
    out = str(tmp_path / "out")
    mp.spawn(_worker, args=(2, free_port(), out, settings), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # rank 0 measured and wrote; rank 1 only trained
    assert rank1["checkpoints"] == [] and all(n == 0 for n in rank1["rows"].values())
    assert all(n > 0 for n in rank0["rows"].values()) and len(rank0["checkpoints"]) == 3
    # one model across the ranks: DistributedDataParallel averaged the gradients, so every rank took the same steps
    start = {k: m.state_dict() for k, m in _Seed(settings, 0, outputs, torch.float32, 1).models.items()}
    for kind, a in rank0["weights"].items():
        b = rank1["weights"][kind]
        params = [n for n in a if "running" not in n and "num_batches" not in n]  # BN statistics are per rank
        assert all(torch.equal(a[n], b[n]) for n in params), kind
        assert any(not torch.equal(a[n], start[kind][n]) for n in params), kind  # and they did train
        saved = torch.load(final_path(out, kind, 0), weights_only=True)["state_dict"]
        assert all(torch.equal(saved[n], a[n]) for n in a)  # rank 0's checkpoint holds rank 0's model


def test_two_ranks_train_in_step_and_rank_0_writes(tmp_path):
    assert_two_ranks_train_in_step(SETTINGS, 3, tmp_path)


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_the_cli_under_torchrun(tmp_path):
    out = tmp_path / "out"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    proc = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", str(free_port()),
                           str(ROOT / "visualize_activations_2d.py"), "train", "--num-images", "24", "--min-side", "16",
                           "--max-side", "32", "--width", "4", "--seeds", "0", "--epochs", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 processes" in proc.stdout
    assert all((out / name).exists() for name in FRAMES.values())
