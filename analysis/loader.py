"""Padded, masked batches streamed from an :class:`~masked_torch.analysis.data.ImageSource`.

:func:`make_loader` plans the batches of a run from the image sizes alone (read from the file headers), then
streams them through :class:`torch.utils.data.DataLoader`: worker processes (``workers``) decode the images
of a batch and pad them with :func:`masked_torch.utils.pad_batch` onto one zero canvas, the largest height and
width rounded up to ``multiple``, top-left, with a ``(N, 1, H, W)`` float mask (1 inside the image). Only the
batches in flight are in memory: the workers keep their heap from growing (:func:`limit_heap_growth`), and
so does the main process while it iterates, giving the heap a batch freed back after it (:func:`release_heap`).

* Batches: consecutive images in source order, or with ``bucket=True`` images of similar size together (less
  padding): sorted by height into strips, each strip sorted by width and cut into batches; the batches are
  then put in an order shuffled with ``seed``, so that sizes are mixed through the run (a steady rate; the
  largest batches do not all come last). Either way the plan is deterministic and
  :meth:`BatchLoader.padding_fraction` gives the run's padded share of canvas pixels before anything is decoded.
* Processes: batch ``i`` of the run goes to rank ``i % world`` (torchrun); each rank iterates its own.
* Unreadable files: a file whose header cannot be read is left out of the plan and reported by rank 0 when
  iteration starts; one that fails to decode is left out of its batch (``Batch.skipped``). Each is reported
  once (a :class:`~masked_torch.analysis.data.SkippedImageWarning`, or ``on_skip``) in the main process and
  listed in :attr:`BatchLoader.skipped`; a batch whose every image was skipped is dropped. A source opened
  with ``strict=True`` raises :class:`~masked_torch.analysis.data.DataError` naming the file instead.
* ``normalize="dataset"``: :func:`make_loader` first streams the statistics (:func:`dataset_stats`, same
  workers and batch size) unless the source has them (every rank computes the same numbers).

:func:`crop_alone` gives image ``k`` of a batch "alone", padded only to its own size rounded up to
``multiple``: a crop of the batch's canvas, which is zero beyond the image, so nothing is decoded again.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from masked_torch.utils import pad_batch

from .data import Batch, DataError, ImageSource, Skipped, dataset_stats, paste_masks, round_up

__all__ = ["Batch", "BatchLoader", "PadImages", "make_loader", "plan_batches", "padding_fraction", "crop_alone",
           "limit_heap_growth", "release_heap", "limit_kernel_cache"]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _glibc() -> Optional[ctypes.CDLL]:
    """glibc, where this process runs on it; ``None`` elsewhere (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_heap_growth(mmap_threshold: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold at ``mmap_threshold`` bytes in this process: larger blocks are then always
    mapped and unmapped, instead of glibc raising the threshold after the first large free and serving later
    large blocks from a heap that fragments and never shrinks. Without it a DataLoader worker, which builds a
    batch canvas of a different size every time and hands it over in shared memory, grew from 0.24 to 0.5 GB
    resident over 1,200 images (benchmarks/streaming.py); with it, flat. Every worker of
    :class:`BatchLoader` calls it, and so does the main process when it iterates one (it decodes and pads
    there with ``workers=0``, and runs the forwards). Returns whether it was set (glibc only)."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))


def release_heap() -> bool:
    """Hand the free memory inside glibc's heaps back to the system now (``malloc_trim(0)``). glibc returns
    only the free memory at the top of its main heap by itself; the small blocks a batch leaves freed in
    the middle (a decoded image, a padded canvas, the tensors of a forward on a new canvas size) stay
    resident. :class:`BatchLoader` calls it in the main process after every batch. Returns whether memory
    was released (glibc only)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


ONEDNN_CACHE = 64  # oneDNN primitives kept by a run (oneDNN's default: 1,024)


def limit_kernel_cache(capacity: int = ONEDNN_CACHE) -> bool:
    """Keep at most ``capacity`` oneDNN primitives (the CPU convolution kernels PyTorch builds for each input
    shape) in this process, unless ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` is set already. Every canvas size of a
    run (each batch's, and each image's alone) builds its own, about 230 KB a shape, kept up to oneDNN's
    default 1,024; a run over many sizes grew by that much (issue 16). oneDNN reads the variable when it
    builds its first primitive, so this works only before the process's first convolution: returns whether
    it set it."""
    if "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return False
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(int(capacity))
    return True


def _init_worker(worker_id: int) -> None:
    limit_heap_growth()


class _Indexed(Dataset):
    """``(i, source[i])``: the collate needs each image's index."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return i, self.source[i]


class PadImages:
    """Collate ``[(index, Image | Skipped), ...]`` into a :class:`Batch` with
    :func:`masked_torch.utils.pad_batch` (canvas: the largest h, w rounded up to ``multiple``). A batch whose
    every image was skipped has ``x`` of shape ``(0, 3, 0, 0)``. Holds only an int, so it pickles."""

    def __init__(self, multiple: int):
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        self.multiple = int(multiple)

    def __call__(self, items: Sequence) -> Batch:
        images = [(i, im) for i, im in items if not isinstance(im, Skipped)]
        skipped = [im for _, im in items if isinstance(im, Skipped)]
        if not images:
            return Batch(torch.zeros(0, 3, 0, 0), torch.zeros(0, 1, 0, 0), [], [], [], skipped)
        x, mask = pad_batch([torch.from_numpy(im.pixels) for _, im in images], self.multiple)
        if any(im.mask is not None for _, im in images):  # images that carry their own mask (--preset seed)
            x, mask = paste_masks(x, mask, [im.mask for _, im in images])
        return Batch(x, mask, [im.name for _, im in images], [im.size for _, im in images],
                     [i for i, _ in images], skipped)


def plan_batches(sizes: Sequence[tuple[int, int]], batch_size: int, *, bucket: bool = False,
                 seed: int = 0, skip: Sequence[int] = ()) -> list[list[int]]:
    """The batches of a run, as lists of image indices, from the images' ``(h, w)`` alone.

    Without ``bucket``: consecutive images in index order. With ``bucket``: the images sorted by one side
    (height, or width; then the other side, then index) are cut into 1 or ``round(sqrt(number of batches))``
    strips of whole batches, each strip is sorted by the other side and cut into batches; of these four plans
    and the file order, the one with the least padding is taken, and its batches are shuffled with ``seed``. Only the last batch (before the shuffle) may be smaller. Indices in ``skip`` are left out."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    left_out = set(skip)
    order = [i for i in range(len(sizes)) if i not in left_out]
    if not bucket:
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    n_batches = math.ceil(len(order) / batch_size)
    if n_batches == 0:
        return []
    def cut(arranged: list[int]) -> list[list[int]]:
        return [arranged[s:s + batch_size] for s in range(0, len(arranged), batch_size)]

    def strips_of(first: int, then: int, strips: int) -> list[list[int]]:
        """Sorted by one side into ``strips`` strips of whole batches, each strip sorted by the other side."""
        strip_len = batch_size * math.ceil(n_batches / strips)
        by_first = sorted(order, key=lambda i: (sizes[i][first], sizes[i][then], i))
        arranged = []
        for s in range(0, len(by_first), strip_len):
            arranged += sorted(by_first[s:s + strip_len], key=lambda i: (sizes[i][then], sizes[i][first], i))
        return cut(arranged)

    # candidates: strips (by height then width, and the transpose) for 1 (one side sorted) up to
    # sqrt(batches) strips; the plan with the least padding wins (ties: the first), all from sizes alone
    candidates = [strips_of(first, 1 - first, k) for k in sorted({1, max(1, round(math.sqrt(n_batches)))})
                  for first in (0, 1)] + [cut(order)]  # file order too: bucketing never pads more
    plan = min(candidates, key=lambda p: padding_fraction(p, sizes, 1))
    shuffle = np.random.default_rng(seed).permutation(len(plan))
    return [plan[j] for j in shuffle]


def padding_fraction(plan: Sequence[Sequence[int]], sizes: Sequence[tuple[int, int]], multiple: int) -> float:
    """Padded canvas pixels / all canvas pixels over the batches of ``plan`` (each batch's canvas: its
    largest h and w rounded up to ``multiple``); 0 for no batches."""
    canvas = valid = 0
    for batch in plan:
        if not batch:
            continue
        h = round_up(max(sizes[i][0] for i in batch), multiple)
        w = round_up(max(sizes[i][1] for i in batch), multiple)
        canvas += len(batch) * h * w
        valid += sum(sizes[i][0] * sizes[i][1] for i in batch)
    return 0.0 if canvas == 0 else 1.0 - valid / canvas


class BatchLoader:
    """The batches of one rank, streamed (see the module docstring). Iterate it for :class:`Batch` es; ``len``
    is this rank's number of planned batches (fewer arrive only if every image of a batch fails to decode).

    Attributes: ``source``, ``plan`` (every batch of the run, as image indices), ``mine`` (the indices into
    ``plan`` of this rank's batches), ``multiple``, ``workers``, ``rank``, ``world``, ``release_memory``
    (default True: iterating calls :func:`limit_heap_growth` and, after every batch, :func:`release_heap`)."""

    def __init__(self, source: ImageSource, plan: list[list[int]], *, multiple: int, workers: int = 0,
                 rank: int = 0, world: int = 1, start_method: Optional[str] = None,
                 on_skip: Optional[Callable[[Skipped], None]] = None, prefetch_factor: int = 2,
                 release_memory: bool = True):
        self.source, self.plan, self.multiple = source, plan, int(multiple)
        self.release_memory = bool(release_memory)
        self.workers, self.rank, self.world = int(workers), int(rank), int(world)
        self.start_method, self.on_skip, self.prefetch_factor = start_method, on_skip, int(prefetch_factor)
        self.mine = list(range(rank, len(plan), world))
        self._skipped: dict[int, Skipped] = {}

    def __len__(self) -> int:
        return len(self.mine)

    def __repr__(self) -> str:
        return (f"BatchLoader({len(self)} of {len(self.plan)} batches, rank {self.rank}/{self.world}, "
                f"multiple={self.multiple}, workers={self.workers}, {self.source!r})")

    @property
    def num_images(self) -> int:
        """Images in this rank's batches (as planned)."""
        return sum(len(self.plan[j]) for j in self.mine)

    def padding_fraction(self, *, mine: bool = False) -> float:
        """Padded canvas pixels / all canvas pixels over every batch of the run (``mine=True``: of this rank),
        from the header sizes: known before the run."""
        plan = [self.plan[j] for j in self.mine] if mine else self.plan
        return padding_fraction(plan, self.source.sizes, self.multiple)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(name, reason)`` of every image skipped during the last iteration (of this rank), by index."""
        return [(r.name, r.reason) for _, r in sorted(self._skipped.items())]

    def _skip(self, record: Skipped) -> None:
        self.source.report(record, self.on_skip)  # strict: DataError naming the file
        self._skipped[record.index] = record

    def __iter__(self) -> Iterator[Batch]:
        self._skipped = {}
        if self.rank == 0:
            for i, reason in self.source.unreadable.items():
                self._skip(Skipped(i, self.source.names[i], reason))
        if not self.mine:
            return
        workers = self.workers
        loader = DataLoader(_Indexed(self.source), batch_sampler=[self.plan[j] for j in self.mine],
                            collate_fn=PadImages(self.multiple), num_workers=workers, persistent_workers=False,
                            prefetch_factor=self.prefetch_factor if workers else None,
                            multiprocessing_context=self.start_method if workers else None,
                            worker_init_fn=_init_worker if workers else None)
        if self.release_memory:
            limit_heap_growth()
        for j, batch in zip(self.mine, loader):  # every planned batch arrives, in order (empty ones too)
            batch.batch_index = j
            for record in batch.skipped:
                self._skip(record)
            if len(batch):
                yield batch
                del batch  # the consumer is done with it: its memory can go back
            if self.release_memory:
                release_heap()


def make_loader(
    source: ImageSource,
    *,
    batch_size: int,
    multiple: int,
    bucket: bool = False,
    workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    start_method: Optional[str] = None,
    on_skip: Optional[Callable[[Skipped], None]] = None,
) -> BatchLoader:
    """The :class:`BatchLoader` of rank ``rank`` of ``world`` over ``source`` (see the module docstring).

    Reads the header sizes (a ``strict`` source raises :class:`DataError` for a file whose header cannot be
    read), plans the batches, and, for ``normalize="dataset"`` without statistics, streams them first.
    ``start_method``: the worker processes' start method (``None``: the platform's default; ``"spawn"``,
    ``"forkserver"``). :class:`DataError` if there are fewer batches than processes."""
    if batch_size < 1 or multiple < 1 or workers < 0:
        raise ValueError(f"batch_size and multiple must be >= 1 and workers >= 0, got batch_size={batch_size}, "
                         f"multiple={multiple}, workers={workers}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got rank={rank}, world={world}")
    sizes = source.sizes
    plan = plan_batches(sizes, batch_size, bucket=bucket, seed=seed, skip=list(source.unreadable))
    if len(plan) < world:
        raise DataError(f"{len(plan)} batch(es) of readable images for {world} processes: every process needs "
                        f"at least one batch (more images or a smaller batch size)")
    if source.normalize == "dataset" and source.stats is None:
        source.set_stats(*dataset_stats(source, workers=workers, batch_size=batch_size, on_skip=on_skip,
                                        start_method=start_method))
    return BatchLoader(source, plan, multiple=multiple, workers=workers, rank=rank, world=world,
                       start_method=start_method, on_skip=on_skip)


def crop_alone(batch: Batch, k: int, multiple: int) -> Batch:
    """Image ``k`` of ``batch`` "alone": a batch of 1 padded only to its own size rounded up to ``multiple``,
    cropped from the batch's canvas (zero beyond the image; a copy). Equal to padding the image alone. The crop
    must fit in the canvas, which it does when ``multiple`` is the one the batch was padded with (or divides it);
    otherwise a :class:`ValueError`."""
    if not 0 <= k < len(batch):
        raise IndexError(f"image {k} of a batch of {len(batch)}")
    h, w = batch.sizes[k]
    H, W = round_up(h, multiple), round_up(w, multiple)
    if H > batch.shape[0] or W > batch.shape[1]:
        raise ValueError(f"crop_alone: {h}x{w} rounded up to a multiple of {multiple} is {H}x{W}, larger than "
                         f"the batch canvas {batch.shape[0]}x{batch.shape[1]}")
    return Batch(batch.x[k:k + 1, :, :H, :W].clone(), batch.mask[k:k + 1, :, :H, :W].clone(), [batch.names[k]],
                 [batch.sizes[k]], [batch.index[k]] if batch.index else [k])
