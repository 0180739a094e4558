#!/usr/bin/env python
"""Re-execute the notebooks headless and save them with their outputs (run after ``make figures``).

    .venv/bin/python notebooks/refresh.py                  # every notebook in notebooks/
    .venv/bin/python notebooks/refresh.py 01_explore_stats.ipynb

Each notebook runs top to bottom on the kernel ``python3`` (nbclient) with ``notebooks/`` as its working
directory, without ``ACTIVATION_RESULTS`` and ``MPLBACKEND`` in its environment, so it reads ``results/`` and
draws inline. A cell that fails stops the refresh and leaves the notebook as it was. Volatile metadata (the
execution timestamps nbclient records, the kernel's python version) is left out, so a re-run on unchanged
results changes nothing but what really changed. The file is written through a temporary file and
``os.replace``. Prints each notebook's size and run time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
KERNEL = "python3"
MAX_BYTES = 1_500_000  # a committed notebook stays below this (tests/test_notebooks.py checks it)
_CLEARED_ENV = ("ACTIVATION_RESULTS", "MPLBACKEND")


def notebooks() -> list[Path]:
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path, *, timeout: int = 300, env: dict | None = None) -> tuple[nbformat.NotebookNode, float]:
    """Run the notebook at ``path`` top to bottom (its saved outputs are replaced); returns it and the seconds.

    ``env``: variables set for the kernel on top of this process's environment, from which
    ``ACTIVATION_RESULTS`` and ``MPLBACKEND`` are removed first. A failing cell raises
    ``nbclient.exceptions.CellExecutionError``."""
    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in {*_CLEARED_ENV, *(env or {})}}
    for k in _CLEARED_ENV:
        os.environ.pop(k, None)
    os.environ.update(env or {})
    try:  # the kernel inherits this process's environment
        client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=timeout, record_timing=False,
                                         resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return strip_volatile(nb), seconds


def strip_volatile(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` without what changes on every run: cell execution timestamps, the kernel's version details."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata["language_info"] = {"name": nb.metadata.get("language_info", {}).get("name", "python")}
    nb.metadata.pop("widgets", None)
    return nb


def save(nb: nbformat.NotebookNode, path: Path) -> int:
    """Validate and write ``nb`` to ``path`` atomically; returns its size in bytes."""
    nbformat.validate(nb)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        nbformat.write(nb, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook file names in notebooks/ (default: all)")
    args = parser.parse_args(argv)
    paths = [HERE / n for n in args.names] if args.names else notebooks()
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook in {HERE}: {', '.join(missing)}")
    too_big = []
    for path in paths:
        nb, seconds = execute(path)
        size = save(nb, path)
        print(f"{path.name}: {size / 1e6:.2f} MB, ran in {seconds:.1f} s")
        if size > MAX_BYTES:
            too_big.append(path.name)
    if too_big:
        print(f"over the {MAX_BYTES / 1e6:.1f} MB cap: {', '.join(too_big)} (smaller figures or fewer of them)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
