"""Writing a run's results: parquet files with the run's settings in their schema metadata, and the figures.

* One file: :func:`write_parquet_atomic` writes a temporary file beside it and ``os.replace``\\ s it in, so a
  reader sees the old file or the complete new one.
* A run's set of files: :class:`StagedFiles`. Every file is written completely to a temporary file first;
  :meth:`StagedFiles.commit` then swaps the whole set in, all or nothing as far as a file system allows: a
  journal naming every file is written, each old file is kept under a second name (a hard link), the new
  files are renamed in, and only then are the journal and the old copies removed. An error while renaming
  puts every old file back; Ctrl-C during the renames is held off until they are done (the run's results are
  complete, and :class:`InterruptedAfterWriting` says so); a process killed half way leaves its journal, and
  the next write into that folder (:func:`recover`) puts the old files back from it. Result files of an earlier
  run that this run does not write (``padding_sensitivity.parquet`` after ``--preset seed``) are removed in
  the same swap, so the folder always holds one run's set.
* Every temporary name starts with :data:`TEMP_PREFIX` and the writing process's id
  (``.masked_torch-<pid>-<name>.tmp``, ``...old``, ``.masked_torch-<pid>.journal``); :func:`recover` removes
  those of processes that no longer run (a killed run), and never touches other files.
* Text in a parquet file must be valid UTF-8, but a file name need not be: Python holds the bytes of a name
  that are not UTF-8 as lone surrogates (PEP 383), which pyarrow cannot store. :func:`safe_text` writes each
  such byte as ``\\xNN``, as Python shows bytes (``caf\\xe9.png``), in the frames and in the metadata; valid
  names are stored unchanged.
* :func:`out_problem` says in one line why a folder cannot take the results (a file of that name, no
  permission), before any work, and leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:  # pandas is imported when a frame is written: the command line checks --out before
    import pandas as pd

__all__ = ["METADATA_KEY", "STATS_FILE", "PADDING_FILE", "IMAGE_STATS_FILE", "TENSOR_STATS_FILE", "FIGURES",
           "RESULT_FILES", "TEMP_PREFIX", "write_parquet_atomic", "read_settings", "tmp_path", "write_parquet",
           "safe_text", "out_problem", "StagedFiles", "InterruptedAfterWriting", "recover"]

METADATA_KEY = b"masked_torch.settings"
STATS_FILE = "activation_stats.parquet"
PADDING_FILE = "padding_sensitivity.parquet"
IMAGE_STATS_FILE = "image_stats.parquet"
TENSOR_STATS_FILE = "tensor_stats.parquet"  # --preset seed: the seed's own statistics over whole output tensors
FIGURES = {
    "maps": "activation_maps.png",
    "stats": "channel_stats.png",
    "padding": "padding_sensitivity.png",
    "image_stats": "stats_vs_padding.png",
}
#: Every file a run writes under ``--out`` (relative paths): one run's set.
RESULT_FILES = (STATS_FILE, PADDING_FILE, IMAGE_STATS_FILE, TENSOR_STATS_FILE,
                *(f"figures/{name}" for name in FIGURES.values()))
#: The start of every temporary name this module makes (followed by the writer's process id).
TEMP_PREFIX = ".masked_torch-"
_OURS = re.compile(r"^" + re.escape(TEMP_PREFIX) + r"(\d+)[-.]")


# ------------------------------------------------------------------------------------------------ text
def safe_text(text: str) -> str:
    """``text`` as valid UTF-8: the undecodable bytes of a file name (held by Python as lone surrogates,
    ``os.fsdecode``) written as ``\\xNN`` (``b'caf\\xe9.png'`` -> ``'caf\\\\xe9.png'``); valid text unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate no file name makes: its code point
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_value(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {_safe_value(k): _safe_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe_value(v) for v in value]
    return value


def _safe_frame(frame: "pd.DataFrame") -> "pd.DataFrame":
    """``frame`` with :func:`safe_text` applied to every text value (a copy only where one changes)."""
    import pandas as pd

    out = frame
    for i, (col, dtype) in enumerate(frame.dtypes.items()):
        if isinstance(dtype, pd.CategoricalDtype):
            cats = list(dtype.categories)
            if any(isinstance(c, str) and safe_text(c) != c for c in cats):
                out = out.copy() if out is frame else out
                out.isetitem(i, frame.iloc[:, i].cat.rename_categories(
                    [safe_text(c) if isinstance(c, str) else c for c in cats]))
            continue
        if not (dtype == object or pd.api.types.is_string_dtype(dtype)):
            continue
        try:
            values = pd.unique(frame.iloc[:, i])
        except TypeError:  # unhashable values (lists): not text
            continue
        bad = {v: safe_text(v) for v in values if isinstance(v, str) and safe_text(v) != v}
        if bad:
            out = out.copy() if out is frame else out
            out.isetitem(i, frame.iloc[:, i].map(lambda v: bad.get(v, v) if isinstance(v, str) else v))
    return out


# ------------------------------------------------------------------------------------------------ parquet
def tmp_path(path: Path) -> Path:
    """The temporary file ``path`` is written through (beside it; :data:`TEMP_PREFIX` and this process id)."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}.tmp")


def write_parquet(frame: "pd.DataFrame", path: Path, metadata: Optional[dict] = None) -> None:
    """Write ``frame`` (zstd) with ``metadata`` as JSON under :data:`METADATA_KEY`; text made valid UTF-8
    (:func:`safe_text`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(_safe_frame(frame), preserve_index=False)
    if metadata is not None:
        text = json.dumps(_safe_value(metadata), sort_keys=True)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: text.encode()})
    pq.write_table(table, path, compression="zstd")  # smaller than snappy: committed results stay small


def atomic_write(path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path`` (:func:`tmp_path`), then ``os.replace`` it onto
    ``path``: readers see the old file or the complete new one, never a half-written one; on any error (or
    ``KeyboardInterrupt``) the temporary file is removed and the old file is left as it was."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_parquet_atomic(frame: "pd.DataFrame", path, metadata: Optional[dict] = None) -> Path:
    """:func:`write_parquet` through :func:`atomic_write`; ``metadata`` goes into the schema metadata as JSON
    under :data:`METADATA_KEY`."""
    return atomic_write(path, lambda tmp: write_parquet(frame, tmp, metadata))


def read_settings(path) -> dict:
    """The metadata a parquet file was written with (``{"settings": ..., "images": ..., ...}``; ``{}`` if it
    has none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


# ------------------------------------------------------------------------------------------------ --out
def out_problem(out) -> Optional[str]:
    """Why the folder ``out`` cannot take a run's files (one line), or ``None``. Missing folders are made
    to try it, a temporary file is made and removed in it, and what was made is removed again."""
    out = Path(out)
    missing = []
    p = out
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    if not p.is_dir():  # the nearest thing that exists: out itself, or what it would be made in
        return f"{safe_text(str(p))} is a file, not a folder"
    made = []
    try:
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
        for folder in (out, out / "figures"):
            if not os.path.lexists(folder):
                continue
            if not folder.is_dir():
                return f"{safe_text(str(folder))} is a file, not a folder"
            probe = folder / f"{TEMP_PREFIX}{os.getpid()}-probe.tmp"
            with open(probe, "wb"):
                pass
            probe.unlink()
        return None
    except OSError as exc:
        where = safe_text(str(exc.filename or out))
        return f"cannot write to {where}: {exc.strerror or exc}"
    finally:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass


# ------------------------------------------------------------------------------------------------ a run's set
class InterruptedAfterWriting(KeyboardInterrupt):
    """Ctrl-C came while :meth:`StagedFiles.commit` renamed the files: the renames were finished first, so
    the new results are complete (``paths``)."""

    def __init__(self, paths: list[Path]):
        super().__init__("interrupted after the results were written")
        self.paths = paths


def _pid_of(name: str) -> Optional[int]:
    m = _OURS.match(name)
    return int(m.group(1)) if m else None


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # elsewhere a process cannot be asked for safely: keep its files
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def _rollback(out: Path, entries: Iterable) -> None:
    """Put the old files of a commit (``[final, tmp, backup]`` relative to ``out``) back and remove the new."""
    for final, tmp, backup in reversed(list(entries)):
        f = out / final
        if backup is not None and (out / backup).exists():
            if os.path.exists(f) and os.path.samefile(out / backup, f):
                (out / backup).unlink()  # not renamed over yet: rename() between two links of one file does nothing
            else:
                os.replace(out / backup, f)  # the old file, as it was
        elif backup is None and tmp is not None and not (out / tmp).exists():
            f.unlink(missing_ok=True)  # renamed in where no file was: remove it
        if tmp is not None:
            (out / tmp).unlink(missing_ok=True)


def recover(out) -> None:
    """Undo what a killed run left in ``out``: a commit it did not finish is rolled back from its journal
    (the previous results come back), and its temporary files are removed. Only names that start with
    :data:`TEMP_PREFIX` and the id of a process that no longer runs are touched."""
    out = Path(out)
    if not out.is_dir():
        return
    folders = [out] + [d for d in out.iterdir() if d.is_dir() and not d.is_symlink()]
    for journal in sorted(out.glob(f"{TEMP_PREFIX}*.journal")):
        pid = _pid_of(journal.name)
        if pid is None or _running(pid):
            continue
        try:
            entries = json.loads(journal.read_text())["entries"]
        except (OSError, ValueError, KeyError, TypeError):
            entries = []
        _rollback(out, entries)
        journal.unlink(missing_ok=True)
    for folder in folders:
        for f in folder.iterdir():
            pid = _pid_of(f.name)
            if pid is not None and f.name.endswith((".tmp", ".old")) and not _running(pid) and not f.is_dir():
                f.unlink(missing_ok=True)


@contextmanager
def _hold_interrupt():
    """Hold SIGINT off (main thread only): yields a list that gets the signal if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    came: list = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    try:
        yield came
    finally:
        signal.signal(signal.SIGINT, old)
        if came and old not in (signal.default_int_handler, signal.SIG_IGN) and callable(old):
            old(signal.SIGINT, None)


class StagedFiles:
    """A run's set of files under ``out``, written all or nothing (see the module docstring)::

        with StagedFiles(out) as files:               # rolls back / cleans what a killed run left
            write_parquet(frame, files.stage(STATS_FILE), meta)   # each file to its temporary name
            ...
        paths = files.paths                           # all in, old files of the set removed

    An exception in the ``with`` block discards the staged files (nothing was changed in ``out``) and goes on;
    a block that ends normally commits them (:meth:`commit`, whose paths are :attr:`paths`).
    """

    def __init__(self, out, replaces: Iterable[str] = RESULT_FILES):
        self.out = Path(out)
        self.replaces = tuple(replaces)
        self._staged: dict[str, str] = {}  # final -> temporary, relative to out
        self._made: list[Path] = []
        self.paths: list[Path] = []
        recover(self.out)

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.paths = self.commit()
        else:
            self.discard()

    def stage(self, name: str) -> Path:
        """The temporary path to write ``name`` (relative to ``out``) to; its folder is made."""
        final = Path(name)
        folder = self.out / final.parent
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self._made.append(d)
        tmp = tmp_path(final)
        self._staged[final.as_posix()] = tmp.as_posix()
        return self.out / tmp

    def discard(self) -> None:
        """Remove the temporary files (and the folders :meth:`stage` made, if empty): ``out`` as it was."""
        for tmp in self._staged.values():
            (self.out / tmp).unlink(missing_ok=True)
        self._staged.clear()
        for d in reversed(self._made):
            try:
                d.rmdir()
            except OSError:
                pass
        self._made.clear()

    def commit(self) -> list[Path]:
        """Swap the staged files in (and remove the files of :attr:`replaces` not staged); returns the paths
        written. All or nothing: on an error the old files are put back and the error raised."""
        pid = os.getpid()
        entries = []
        names = list(self._staged) + [n for n in self.replaces if n not in self._staged]
        for final in names:
            f = self.out / final
            tmp = self._staged.get(final)
            if tmp is None and not os.path.lexists(f):
                continue
            backup = f.with_name(f"{TEMP_PREFIX}{pid}-{f.name}.old") if os.path.lexists(f) else None
            entries.append([final, tmp, None if backup is None else backup.relative_to(self.out).as_posix()])
        journal = self.out / f"{TEMP_PREFIX}{pid}.journal"
        with _hold_interrupt() as came:
            try:
                tmp_journal = journal.with_name(journal.name + ".tmp")
                tmp_journal.write_text(json.dumps({"entries": entries}))
                os.replace(tmp_journal, journal)
                for final, _, backup in entries:
                    if backup is not None:
                        try:
                            os.link(self.out / final, self.out / backup)
                        except OSError:  # a file system without hard links
                            shutil.copy2(self.out / final, self.out / backup)
                for final, tmp, _ in entries:
                    if tmp is not None:
                        os.replace(self.out / tmp, self.out / final)
                    else:
                        (self.out / final).unlink()
            except BaseException:
                _rollback(self.out, entries)
                journal.unlink(missing_ok=True)
                Path(str(journal) + ".tmp").unlink(missing_ok=True)
                self.discard()
                raise
            journal.unlink()  # the new set is in: from here on it stays
            for _, _, backup in entries:
                if backup is not None:
                    (self.out / backup).unlink(missing_ok=True)
        written = [self.out / final for final in self._staged]
        self._staged.clear()
        self._made.clear()
        if came:
            raise InterruptedAfterWriting(written)
        return written


def write_parquet_set(out, frames: dict, metadata: Optional[dict] = None) -> list[Path]:
    """Several parquet files under ``out`` (``{name: frame}``, names relative to it), each with ``metadata``,
    all or nothing through :class:`StagedFiles`; returns the paths written."""
    with StagedFiles(out, replaces=tuple(frames)) as files:
        for name, frame in frames.items():
            write_parquet(frame, files.stage(name), metadata)
    return files.paths


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
