"""Sweeps: a grid of settings in worker processes, one tidy frame, failures reported, reruns skip."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from masked_torch.analysis.sweep import SweepError, config_id, expand_grid, load_grid, parse_vary, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "visualize_activations_2d.py")
FIXED = {"data": "synthetic", "num_images": 2, "batch_size": 2, "max_side": 64}


def test_grid_file_and_vary(tmp_path):
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text('[grid]\ndepth = [1, 2]\nbias = [true, false]\n\n[fixed]\ndata = "synthetic"\n')
    grid, fixed = load_grid(grid_file)
    configs = expand_grid(grid, fixed)
    assert [(c.depth, c.bias) for c in configs] == [(1, True), (1, False), (2, True), (2, False)]
    assert all(c.data == "synthetic" for c in configs)
    assert parse_vary(["depth=2,3", "activation=relu,none"]) == {"depth": ["2", "3"],
                                                                 "activation": ["relu", "none"]}
    configs = expand_grid(parse_vary(["depth=2,3", "bias=false"]), FIXED)
    assert [(c.depth, c.bias, c.num_images) for c in configs] == [(2, False, 2), (3, False, 2)]
    assert len({config_id(c) for c in configs}) == 2


@pytest.mark.parametrize("grid, match", [
    ({"colour": ["red"]}, "unknown setting 'colour'"),
    ({"depth": ["deep"]}, "integer"),
    ({"bias": ["maybe"]}, "true or false"),
    ({"depth": []}, "no values"),
])
def test_bad_grids(grid, match):
    with pytest.raises(SweepError, match=match):
        expand_grid(grid, {})


def test_sweep_in_two_processes_with_a_failing_configuration(tmp_path):
    configs = expand_grid({"depth": [1, 2], "data": ["synthetic", str(tmp_path / "missing")]},
                          {k: v for k, v in FIXED.items() if k != "data"})
    result = run_sweep(configs, tmp_path / "out", jobs=2, progress=False)
    assert len(result.ran) == 2 and len(result.failed) == 2 and not result.skipped
    assert all("no such folder" in f["error"] and f["settings"]["data"].endswith("missing") for f in result.failed)
    stats = pd.read_parquet(tmp_path / "out" / "sweep_stats.parquet")
    assert set(stats["net_depth"]) == {1, 2} and set(stats["data"]) == {"synthetic"}
    assert {"stack", "layer", "depth", "channel", "count", "mean", "var", "bias", "activation", "seed",
            "config"} <= set(stats.columns)
    # per configuration: one row per (stack, layer, channel)
    assert not stats.duplicated(["config", "stack", "layer", "channel"]).any()
    assert (tmp_path / "out" / "sweep_padding.parquet").exists()
    assert len(list((tmp_path / "out" / "runs").glob("*.error.json"))) == 2
    # rerun: the finished configurations are skipped, the failed ones tried again
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").glob("*.parquet")}
    again = run_sweep(configs, tmp_path / "out", jobs=1, progress=False)
    assert sorted(again.skipped) == sorted(result.ran) and len(again.failed) == 2 and not again.ran
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_sweep_cli(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, SCRIPT, "sweep", "--vary", "depth=1,2", "--vary", "activation=relu,none",
           "--set", "data=synthetic", "--set", "num_images=2", "--set", "max_side=64", "--out", str(out),
           "--jobs", "2", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stats = pd.read_parquet(out / "sweep_stats.parquet")
    assert stats.groupby(["net_depth", "activation"]).ngroups == 4
    bad = subprocess.run([sys.executable, SCRIPT, "sweep", "--vary", "colour=red", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "colour" in bad.stderr


@pytest.mark.parametrize("grid, match", [
    ({"depth": [2.5]}, "integer"),
    ({"seed": [True]}, "integer"),
    ({"batch_size": [0]}, "positive"),
    ({"activation": ["swish"]}, "activation"),
    ({"stacks": ["conv+fancy"]}, "stacks"),
])
def test_bad_values_are_rejected_before_any_worker_starts(grid, match):
    with pytest.raises(SweepError, match=match):
        expand_grid(grid, {})


def test_a_worker_that_dies_is_reported_and_the_others_kept(tmp_path, monkeypatch):
    import masked_torch.analysis.sweep as sweep

    configs = expand_grid({"depth": [1, 2]}, FIXED)

    class DyingPool:
        """Stands in for the process pool: the first worker dies, the second runs."""

        def __init__(self, *a, **k):
            self.calls = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            from concurrent.futures import Future
            from concurrent.futures.process import BrokenProcessPool

            fut = Future()
            self.calls += 1
            if self.calls == 1:
                fut.set_exception(BrokenProcessPool("killed"))
            else:
                fut.set_result(fn(*args))
            return fut

    monkeypatch.setattr(sweep, "ProcessPoolExecutor", DyingPool)
    result = run_sweep(configs, tmp_path, jobs=2, progress=False)
    assert len(result.failed) == 1 and "worker process died" in result.failed[0]["error"]
    assert len(result.ran) == 1 and (tmp_path / "sweep_stats.parquet").exists()


def test_a_setting_that_does_not_change_results_cannot_be_varied():
    with pytest.raises(SweepError, match="do not change the results"):
        expand_grid({"workers": ["0", "2"]})
    assert expand_grid({"depth": ["2"]}, {"workers": "2"})[0].workers == 2  # fixed is fine
