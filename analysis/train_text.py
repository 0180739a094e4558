"""Documents for the training experiment's language model (``--data stdlib``): the functions of the Python standard
library's own sources, as UTF-8 bytes. Nothing is downloaded: every machine with Python has them.

* **Where**: the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` (sorted relative paths; ``site-packages``,
  ``__pycache__`` and test folders -- ``test``, ``tests``, ``idle_test`` -- left out). Files are visited in the
  order of the CRC-32 of their relative path (ties by path) and parsed with :mod:`ast`; a file that does not
  decode as UTF-8 or parse is passed over.
* **A document**: one ``def`` or ``async def`` (methods and nested functions too) with its docstring and body,
  cut out as ``ast.get_source_segment(..., padded=True)`` does (the lines ``lineno`` to ``end_lineno``) and
  dedented (:func:`textwrap.dedent`), so a method starts at column 0 as a top-level function does; decorators are
  not part of it. Its name is
  ``relative/path.py:qualified.name`` (``#2``, ``#3`` for a name defined again in the same file).
* **Lengths**: a function longer than ``max_bytes`` keeps its whole lines up to ``max_bytes`` bytes (its head: the
  signature, the docstring and the first statements); a first line longer than that is cut at ``max_bytes``
  bytes. Documents shorter than ``min_bytes`` after that are left out. From each file at most
  ``per_file`` documents are taken (those whose names hash lowest), until ``num_docs`` are collected: the
  documents come from many modules, and their lengths range from ``min_bytes`` to ``max_bytes``.
* **Deterministic** for a given Python (the standard library of another version differs): the same documents in
  the same order on every machine and run; the held-out split (:func:`heldout_documents`) is by the CRC-32 of the
  document's name, never by position.

A batch (:meth:`Documents.batch`) is the documents one-hot encoded, ``(256, L_i)`` each, padded **on the right**
to the longest (:func:`masked_torch.utils.pad_batch`: each sequence at the start of the canvas, its mask ``(N, 1,
L)``), with next-byte targets ``(N, L)``: ``target[n, t] = doc_n[t + 1]`` for ``t < L_n - 1`` and ``-100``
(:data:`IGNORE`, :func:`torch.nn.functional.cross_entropy`'s ``ignore_index``) at the last byte and on the
padding. Right padding and causal convolutions: a valid position only ever sees positions before it, which are
the sequence's own, so the padding can reach a valid output only through what mixes positions other than the
convolutions (BatchNorm's batch statistics in training).
"""
from __future__ import annotations

import ast
import os
import sysconfig
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .data import DataError
from .train_data import _name_hash as _hash, IGNORE, lowest_hashes, pad

__all__ = ["BYTES", "IGNORE", "Documents", "stdlib_root", "stdlib_files", "file_documents", "stdlib_documents",
           "heldout_documents", "unigram_bits"]

BYTES = 256  # the vocabulary: one symbol per byte value
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


@dataclass
class Documents:
    """Byte sequences (``uint8`` tensors ``(L,)``) with their names."""

    names: list[str]
    docs: list[torch.Tensor]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) of files passed over
    classes: tuple = ()  # no classes: the targets are the next bytes

    def __len__(self) -> int:
        return len(self.docs)

    @property
    def sizes(self) -> list[int]:
        return [int(d.numel()) for d in self.docs]

    def subset(self, index: Sequence[int]) -> "Documents":
        return Documents([self.names[i] for i in index], [self.docs[i] for i in index])

    def split(self, fraction: float) -> tuple[list[int], list[int]]:
        """:func:`heldout_documents`."""
        return heldout_documents(self.names, fraction)

    def text(self, i: int) -> str:
        return bytes(self.docs[i].tolist()).decode("utf-8", "replace")

    def batch(self, index: Sequence[int], multiple: int, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, mask, target)``: one-hot ``(N, 256, L)`` padded on the right to the longest (a multiple of
        ``multiple``), its mask ``(N, 1, L)``, both in ``dtype``, and the next-byte targets ``(N, L)`` (module
        docstring)."""
        docs = [self.docs[i].long() for i in index]
        ids, mask = pad([d[None] for d in docs], multiple, dtype)  # (N, 1, L): the byte values, padded with 0
        x = torch.zeros(len(docs), BYTES, ids.shape[-1], dtype=dtype).scatter_(1, ids.long(), mask)
        target = torch.full((len(docs), ids.shape[-1]), IGNORE, dtype=torch.long)
        for n, d in enumerate(docs):
            target[n, :d.numel() - 1] = d[1:]
        return x, mask, target

    def compare(self, i: int, alone: torch.Tensor, batched: torch.Tensor, canvas: Sequence[int]) -> dict:
        """One row of the batch-composition check (:func:`~masked_torch.analysis.train_measure.sensitivity`):
        document ``i``'s logits alone ``(256, L_i)`` and inside a batch of canvas ``(L,)`` (its first ``L_i``
        positions), both float64: over the positions with a next byte, how many there are, how many argmax
        predictions differ, how many are right alone and batched, the largest change of a logit and the largest
        ``|logit|`` alone (``logit_scale``: what a rounding difference is relative to)."""
        d = self.docs[i].long()
        n = d.numel()
        alone, batched = alone[:, :n - 1], batched[:, :n - 1]
        target = d[1:]
        pred_alone, pred = alone.argmax(0), batched.argmax(0)
        (length,) = canvas
        return dict(document=self.names[i], length=n, batch_length=int(length), pad_fraction=1.0 - n / length,
                    positions=n - 1, changed=int((pred != pred_alone).sum()),
                    correct_alone=int((pred_alone == target).sum()), correct_batched=int((pred == target).sum()),
                    max_logit_change=float((batched - alone).abs().max()) if n > 1 else 0.0,
                    logit_scale=float(alone.abs().max()) if n > 1 else 0.0)


# ------------------------------------------------------------------------------------------------ extraction
def stdlib_root() -> Path:
    """The standard library's source folder of the running Python."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Optional[Path] = None) -> list[str]:
    """Every ``.py`` file under ``root`` (the standard library), relative paths, sorted; the folders of
    :data:`_SKIP_DIRS` and hidden ones left out."""
    root = Path(root) if root is not None else stdlib_root()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        rel = Path(folder).relative_to(root)
        found.extend((rel / f).as_posix() for f in files if f.endswith(".py"))
    return sorted(found)


def _cut(text: str, max_bytes: int) -> bytes:
    """``text`` as UTF-8, cut to its whole lines within ``max_bytes`` (a longer first line: its first
    ``max_bytes`` bytes)."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return data
    end = data.rfind(b"\n", 0, max_bytes)
    return data[:end + 1] if end > 0 else data[:max_bytes]


def file_documents(source: str, path: str, min_bytes: int, max_bytes: int) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every function of one file's ``source`` (module docstring), in source order,
    cut to ``max_bytes`` and without those shorter than ``min_bytes``."""
    tree = ast.parse(source)
    lines = source.encode("utf-8").splitlines(keepends=True)  # ast's column offsets count UTF-8 bytes
    out: list[tuple[str, bytes]] = []
    seen: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    # ast.get_source_segment(source, child, padded=True), without splitting the file each time
                    part = lines[child.lineno - 1:child.end_lineno]
                    part[-1] = part[-1][:child.end_col_offset]
                    part[0] = b" " * child.col_offset + part[0][child.col_offset:]
                    segment = b"".join(part).decode("utf-8")
                    if segment.strip():
                        data = _cut(textwrap.dedent(segment), max_bytes)
                        seen[qual] = seen.get(qual, 0) + 1
                        name = f"{path}:{qual}" + (f"#{seen[qual]}" if seen[qual] > 1 else "")
                        if len(data) >= min_bytes:
                            out.append((name, data))
                visit(child, qual + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def stdlib_documents(num_docs: int = 360, *, min_bytes: int = 32, max_bytes: int = 512, per_file: int = 4,
                     root: Optional[Path] = None) -> Documents:
    """``num_docs`` documents of the standard library (module docstring), in the order collected."""
    if not 1 <= min_bytes <= max_bytes:
        raise DataError(f"stdlib documents: need 1 <= min_bytes <= max_bytes, got {min_bytes}, {max_bytes}")
    if num_docs < 1 or per_file < 1:
        raise DataError(f"stdlib documents: num_docs and per_file must be positive, got {num_docs}, {per_file}")
    root = Path(root) if root is not None else stdlib_root()
    files = sorted(stdlib_files(root), key=lambda p: (_hash(p), p))
    out = Documents([], [])
    for path in files:
        try:
            source = (root / path).read_bytes().decode("utf-8")
            found = file_documents(source, path, min_bytes, max_bytes)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
            out.skipped.append((path, f"{type(exc).__name__}"))
            continue
        found.sort(key=lambda item: (_hash(item[0]), item[0]))
        for name, data in found[:per_file]:
            out.names.append(name)
            out.docs.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            if len(out) == num_docs:
                return out
    raise DataError(f"--data stdlib: the standard library at {root} gives {len(out)} documents of "
                    f"{min_bytes}-{max_bytes} bytes ({per_file} per file), fewer than the {num_docs} asked for")


def heldout_documents(names: Sequence[str], fraction: float) -> tuple[list[int], list[int]]:
    """``(train, held_out)`` indices: the ``round(fraction * n)`` documents (at least 1, at most n - 1) whose
    names hash lowest (CRC-32, ties by name) are held out; both lists in index order."""
    if not 0 < fraction < 1:
        raise DataError(f"held-out fraction must be in (0, 1), got {fraction}")
    n = len(names)
    if n < 2:
        raise DataError(f"{n} document(s): need at least 2 (one to train on, one held out)")
    held = set(lowest_hashes(range(n), names, fraction))
    return [i for i in range(n) if i not in held], sorted(held)


def unigram_bits(train: Documents, held: Documents) -> float:
    """The baseline a byte model must beat: bits per byte of the held-out next bytes (every byte but each
    document's first) under the training documents' byte frequencies, add-one smoothed over the 256 values."""
    counts = np.ones(BYTES)
    for d in train.docs:
        counts += np.bincount(d.numpy(), minlength=BYTES)
    logp = np.log2(counts / counts.sum())
    total = sum(int(d.numel()) - 1 for d in held.docs)
    return float(-sum(logp[d.numpy()[1:]].sum() for d in held.docs) / total)

