"""Statistics from several processes, merged exactly, with PyTorch's own ``torch.distributed``.

Each rank records its share of the batches; :func:`reduce_moments` all-gathers every rank's per-channel
moments (count, mean, M2, min, max, zeros: one ``(6, C)`` float64 tensor per layer, all layers packed in one
collective) and merges them in rank order with the parallel formula of Chan et al.
(:func:`masked_torch.analysis.moments.merge_moments`). The result equals one process that saw every batch: counts,
minima, maxima and zeros exactly, mean and variance to rounding.

Under ``torchrun`` the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...) says how to join the
group; :func:`init_from_env` joins it with ``gloo`` on CPU or ``nccl`` when the work runs on CUDA.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist

from .moments import Moments, merge_moments

__all__ = ["init_from_env", "rank_and_world", "is_main", "reduce_moments", "gather_objects", "shutdown"]


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group described by the ``torchrun`` environment, if there is one.

    Returns ``(rank, world_size)``; ``(0, 1)`` outside ``torchrun``. Backend: ``nccl`` for a CUDA device,
    ``gloo`` otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return rank_and_world()


def rank_and_world(group=None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def is_main(group=None) -> bool:
    return rank_and_world(group)[0] == 0


def _collective_device(group=None) -> torch.device:
    backend = dist.get_backend(group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_moments(moments: dict[str, Moments], group=None) -> dict[str, Moments]:
    """Every rank's moments merged (in rank order), returned on every rank.

    All ranks must hold the same layers with the same channel counts (layers a rank never saw are
    :meth:`Moments.empty`). Without an initialised process group this is the identity.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return dict(moments)
    names = list(moments)
    sizes = [moments[n].channels for n in names]
    device = _collective_device(group)
    packed = torch.cat([moments[n].to_tensor() for n in names], dim=1).to(device) if names \
        else torch.zeros(6, 0, dtype=torch.float64, device=device)
    # the same layers everywhere, or the packed tensors would not line up
    layout = gather_objects((names, sizes), group)
    if any(item != (names, sizes) for item in layout):
        raise RuntimeError(f"reduce_moments: ranks recorded different layers: {layout}")
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed, group=group)
    merged: Optional[list[Moments]] = None
    for part in gathered:
        chunks = [Moments.from_tensor(c.cpu()) for c in part.split(sizes, dim=1)]
        merged = chunks if merged is None else [merge_moments(a, b) for a, b in zip(merged, chunks)]
    return dict(zip(names, merged or []))


def gather_objects(obj, group=None) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
