"""Many configurations of the experiment in one tidy frame.

A grid (a TOML file, or ``name=v1,v2`` strings) names values for any field of :class:`masked_torch.analysis.run.Settings`
(``depth``, ``bias``, ``activation``, ``init``, ``data``, ``seed``, ``normalize``, ``max_side``,
``batch_size``, ``num_images``, ...); the sweep runs every combination in worker processes and writes

* ``DIR/runs/<config>.parquet`` and ``DIR/runs/<config>.padding.parquet`` per configuration (written
  atomically, so a rerun skips configurations whose results are already there);
* ``DIR/runs/<config>.error.json`` for a configuration that failed (its settings and the error; the others
  go on, and a rerun tries it again);
* ``DIR/sweep_stats.parquet`` and ``DIR/sweep_padding.parquet``: every configuration's rows with one column
  per setting (and ``config``), so that a notebook can ``groupby`` any of them.

Grid file::

    [grid]              # every combination of these
    depth = [2, 3, 4]
    bias = [true, false]
    activation = ["relu", "none"]

    [fixed]             # the same for every configuration
    data = "synthetic"
    num_images = 16
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd

from .files import write_parquet_set, write_text_atomic
from .run import run_experiment, with_settings
from .settings import Settings, SettingsError

__all__ = ["SweepError", "SweepResult", "load_grid", "parse_vary", "expand_grid", "config_id", "run_sweep"]

STATS_FILE = "sweep_stats.parquet"
PADDING_FILE = "sweep_padding.parquet"


_NOT_IN_RESULTS = ("threads", "workers", "figure_image", "device")  # how a run is computed, not what


class SweepError(ValueError):
    """A grid that cannot be run (unknown setting, bad value, unreadable file)."""


def load_grid(path) -> tuple[dict, dict]:
    """``(grid, fixed)`` from a TOML file: ``[grid]`` lists of values, ``[fixed]`` single values."""
    import tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise SweepError(f"cannot read grid file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"grid file {path} is not valid TOML: {exc}") from None
    unknown = set(doc) - {"grid", "fixed"}
    if unknown:
        raise SweepError(f"grid file {path}: unknown tables {sorted(unknown)}; use [grid] and [fixed]")
    grid = {k: (v if isinstance(v, list) else [v]) for k, v in doc.get("grid", {}).items()}
    return grid, dict(doc.get("fixed", {}))


def parse_vary(items: Iterable[str]) -> dict:
    """``["depth=2,3", "bias=true,false"]`` -> ``{"depth": ["2", "3"], "bias": ["true", "false"]}``."""
    grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise SweepError(f"--vary takes NAME=V1,V2,..., got {item!r}")
        grid[name.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def expand_grid(grid: dict, fixed: Optional[dict] = None) -> list[Settings]:
    """Every combination of ``grid`` (in the order given), each with ``fixed`` on top of the defaults; values
    may be text (``--vary``/``--set``) or typed (TOML). Each configuration is checked once, as it is made."""
    fixed = dict(fixed or {})
    names = list(grid)
    for n in names:
        if not grid[n]:
            raise SweepError(f"setting {n!r} has no values in the grid")
    inert = [n for n in names if n in _NOT_IN_RESULTS and len(grid[n]) > 1]
    if inert:
        raise SweepError(f"settings {inert} do not change the results (the sweep writes no figures); "
                         f"give them with --set, not --vary")
    both = set(names) & set(fixed)
    if both:
        raise SweepError(f"settings {sorted(both)} are both in the grid and fixed")
    try:
        base = Settings.from_text(fixed)
        return [Settings.from_text(dict(zip(names, combo)), base)
                for combo in itertools.product(*(grid[n] for n in names))]
    except SettingsError as exc:
        raise SweepError(str(exc)) from None


def config_id(settings: Settings) -> str:
    """A short stable name for a configuration: a hash of its settings."""
    text = json.dumps(settings.to_dict(), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _setting_columns(frame: pd.DataFrame, settings: Settings, cid: str) -> pd.DataFrame:
    """One column per setting (:func:`~masked_torch.analysis.run.with_settings`: ``net_depth`` for the network's
    depth, ``<NA>`` where the model does not use a setting)."""
    frame = with_settings(frame.copy(), settings, [k for k in Settings.names() if k not in _NOT_IN_RESULTS])
    frame["config"] = cid
    return frame


def _failure(settings: Settings, cid: str, runs: Path, error: str, trace: str = "") -> dict:
    """A failed configuration's record, also kept as ``runs/<config>.error.json``."""
    record = {"config": cid, "ok": False, "settings": settings.to_dict(), "error": error, "traceback": trace}
    write_text_atomic(runs / f"{cid}.error.json", json.dumps(record, indent=2, default=str))
    return record


def _run_one(settings: Settings, runs: str, threads: int) -> dict:
    """Worker: run one configuration, write its parquet files; never raises (errors become a record)."""
    import torch

    threads = settings.threads or threads  # a threads setting in the grid wins
    torch.set_num_threads(threads)
    cid = config_id(settings)
    runs = Path(runs)
    error_file = runs / f"{cid}.error.json"
    start = time.perf_counter()
    try:
        settings = settings.replace(threads=threads)
        results = run_experiment(settings, progress=False)
        meta = {"settings": settings.to_dict(), "config": cid}
        write_parquet_set(runs, {f"{cid}.padding.parquet": _setting_columns(results.padding, settings, cid),
                                 f"{cid}.parquet": _setting_columns(results.stats, settings, cid)}, meta)
        error_file.unlink(missing_ok=True)
        return {"config": cid, "ok": True, "seconds": time.perf_counter() - start}
    except Exception as exc:  # noqa: BLE001 -- report every failure with its settings, keep the others
        return _failure(settings, cid, runs, f"{type(exc).__name__}: {exc}", traceback.format_exc())


@dataclass
class SweepResult:
    stats: pd.DataFrame
    padding: pd.DataFrame
    ran: list[str]
    skipped: list[str]
    failed: list[dict]
    seconds: float


def run_sweep(configs: Sequence[Settings], out, *, jobs: int = 1, progress: bool = True,
              threads: Optional[int] = None) -> SweepResult:
    """Run ``configs`` (skipping those already in ``out/runs``) in ``jobs`` worker processes and write the
    merged frames. Each worker gets ``threads`` torch threads (default: cores // jobs, at least 1)."""
    start = time.perf_counter()
    out = Path(out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    ids = [config_id(c) for c in configs]
    if len(set(ids)) != len(ids):
        raise SweepError("the grid lists the same configuration twice")
    todo = [(c, i) for c, i in zip(configs, ids) if not (runs / f"{i}.parquet").exists()]
    skipped = [i for c, i in zip(configs, ids) if (runs / f"{i}.parquet").exists()]
    jobs = max(1, min(jobs, len(todo) or 1))
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    results = []
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="configurations", unit="config")
    if jobs == 1:
        for c, _ in todo:
            results.append(_run_one(c, str(runs), threads))
            if bar:
                bar.update()
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_one, c, str(runs), threads): (c, i) for c, i in todo}
            for fut in as_completed(futures):
                try:
                    results.append(fut.result())
                except Exception as exc:  # noqa: BLE001 -- a worker that died (killed, out of memory, crashed)
                    c, i = futures[fut]
                    results.append(_failure(c, i, runs, f"worker process died: {type(exc).__name__}: {exc}"))
                if bar:
                    bar.update()
    if bar:
        bar.close()
    failed = [r for r in results if not r["ok"]]
    done = [i for i in ids if (runs / f"{i}.parquet").exists()]
    stats = pd.concat([pd.read_parquet(runs / f"{i}.parquet") for i in done], ignore_index=True) if done \
        else pd.DataFrame()
    padding = pd.concat([pd.read_parquet(runs / f"{i}.padding.parquet") for i in done
                         if (runs / f"{i}.padding.parquet").exists()], ignore_index=True) if done else pd.DataFrame()
    meta = {"configs": [c.to_dict() for c in configs], "failed": [f["config"] for f in failed]}
    if done:
        write_parquet_set(out, {STATS_FILE: stats, PADDING_FILE: padding}, meta)
    return SweepResult(stats=stats, padding=padding, ran=[r["config"] for r in results if r["ok"]],
                       skipped=skipped, failed=failed, seconds=time.perf_counter() - start)
