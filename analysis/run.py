"""The experiment driver behind ``visualize_activations_2d.py``: run conv / pconv / mconv on padded batches,
record per-channel statistics, measure padding sensitivity, and write parquet files and figures.

:func:`run_experiment` returns three tidy frames (:class:`Results`):

* ``stats``   -- one row per (stack, layer, channel): per-channel ``count, mean, var, std, min, max,
  zero_frac`` over the valid positions of every image, accumulated over all padded batches by
  :class:`masked_torch.analysis.record.ActivationRecorder`; plus ``depth`` and layer ``kind``. Besides the stacks asked
  for, the pseudo-stack ``conv_alone`` is the plain conv stack run on each image *alone* (padded only to its
  own size rounded up to ``2**depth``): the reference "what a plain network does on the unpadded image".
* ``padding`` -- one row per (stack, reference, layer, image): ``rel_error = ||batch - ref|| / ||ref||`` over
  the image's valid positions at that depth (all channels; positions whose ``2**depth`` block touches the
  image), with ``ref`` the same stack on the image alone (``reference="alone"``) or the plain conv stack on the
  image alone (``reference="conv_alone"``). ``padded`` says whether the batch canvas is larger than the image's
  own canvas (if not, the batch adds no padding to that image).
* ``maps``    -- for one image of one padded batch (the figure-1 image), per stack and layer: the channel-mean
  activation map over the whole canvas and the channel-mean output mask, as 2d arrays.

:func:`write_outputs` writes ``activation_stats.parquet``, ``padding_sensitivity.parquet`` (each with the
run's settings as JSON in the parquet schema metadata under ``masked_torch.settings``) and
``figures/*.png``, every file through a temporary file in the same folder and ``os.replace``, so an
interrupted run never leaves a half-written file and keeps the previous one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .data import Batch, DataError, Image, batches, load_images, pad_alone
from .distributed import gather_objects, rank_and_world
from .record import ActivationRecorder
from .stacks import STACKS, build_stacks, layer_depth, layer_kind

__all__ = [
    "Settings", "Results", "METADATA_KEY", "STATS_FILE", "PADDING_FILE", "FIGURES",
    "run_experiment", "write_outputs", "write_parquet_atomic", "read_settings", "level_outputs",
    "capture_outputs",
]

METADATA_KEY = b"masked_torch.settings"
STATS_FILE = "activation_stats.parquet"
PADDING_FILE = "padding_sensitivity.parquet"
FIGURES = {
    "maps": "activation_maps.png",
    "stats": "channel_stats.png",
    "padding": "padding_sensitivity.png",
}
REFERENCE = "conv_alone"


@dataclass
class Settings:
    """Everything that determines a run (all kept with the results)."""

    data: str = "photos"
    depth: int = 4
    num_images: Optional[int] = None  # None: every photo / every image of the folder; 8 synthetic
    batch_size: int = 4
    seed: int = 0
    bias: bool = True
    activation: str = "relu"
    init: str = "default"
    stacks: tuple[str, ...] = STACKS
    max_side: Optional[int] = 256
    normalize: str = "image"
    figure_image: Optional[str] = None  # None: the most padded image of the first batch
    threads: Optional[int] = None  # None: 1 (see run_experiment)
    device: str = "cpu"  # "cuda" (or "cuda:1") where CUDA is present: layers, recorder and data all move

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stacks"] = list(self.stacks)
        return d


@dataclass
class Results:
    settings: Settings
    stats: pd.DataFrame
    padding: pd.DataFrame
    maps: pd.DataFrame
    rgb: Optional[np.ndarray] = None  # (H, W, 3) display version of the figure-1 image's canvas
    images: list[dict] = field(default_factory=list)  # name, h, w of every image
    seconds: float = 0.0
    preset: Optional[str] = None  # "seed": masked_torch.analysis.seed's run (no padding frame, no conv_alone)


# ------------------------------------------------------------------------------------------------ helpers
def level_outputs(model: torch.nn.Module) -> list[str]:
    """Names of the layers whose output is recorded per level: every ``conv{i}`` and ``act{i}`` child."""
    return [name for name, _ in model.named_children() if layer_kind(name) in ("conv", "act")]


@contextmanager
def capture_outputs(model: torch.nn.Module, names: Sequence[str]) -> Iterator[dict]:
    """Forward hooks keeping ``{name: (output, mask)}`` of the named children during the block."""
    store: dict = {}
    modules = dict(model.named_modules())
    handles = []

    def hook_for(name):
        def hook(mod, args, output):
            out, mask = output if isinstance(output, tuple) else (output, None)
            store[name] = (out.detach(), None if mask is None else mask.detach())
        return hook

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def _valid_extent(size: tuple[int, int], depth: int) -> tuple[int, int]:
    """Rows and columns at ``depth`` whose ``2**depth`` block touches an image of ``size``."""
    f = 2**depth
    return math.ceil(size[0] / f), math.ceil(size[1] / f)


def _errors(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """``(||a - ref|| / ||ref||, max |a - ref|)``; norms accumulated in float64 (the float32 difference of two
    nearby values is exact, so nothing below float32 rounding is lost)."""
    diff = a - ref
    denom = float(torch.linalg.vector_norm(ref, dtype=torch.float64))
    num = float(torch.linalg.vector_norm(diff, dtype=torch.float64))
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    if denom == 0:
        return (0.0 if num == 0 else float("inf")), max_abs
    return num / denom, max_abs


def _to_device(b: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return b
    return dataclasses.replace(b, x=b.x.to(device), mask=b.mask.to(device))


def _display_rgb(x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The normalised input canvas ``(3, H, W)`` as an RGB picture: the 1st..99th percentile of the image's
    own pixels mapped to [0, 1]; the zero padding shows as whatever 0 (the image mean) maps to."""
    h, w = size
    x = x.cpu()
    inside = x[:, :h, :w].numpy()
    lo, hi = np.percentile(inside, [1, 99])
    rgb = (x.numpy() - lo) / max(hi - lo, 1e-6)
    return np.clip(rgb, 0, 1).transpose(1, 2, 0)


def _pick_figure_image(batch: Batch, wanted: Optional[str]) -> Optional[int]:
    if wanted is not None:
        return batch.names.index(wanted) if wanted in batch.names else None
    area = batch.shape[0] * batch.shape[1]
    fractions = [h * w / area for h, w in batch.sizes]
    return int(np.argmin(fractions))


def _maps_rows(stack: str, store: dict, k: int, name: str, size, canvas) -> list[dict]:
    rows = []
    for layer, (out, mask) in store.items():
        m = out[k].mean(dim=0).cpu().numpy().astype(np.float32)
        mk = (np.ones_like(m) if mask is None else mask[k].float().mean(dim=0).cpu().numpy().astype(np.float32))
        rows.append(dict(image=name, stack=stack, layer=layer, depth=layer_depth(layer), kind=layer_kind(layer),
                         map=m, mask=mk, h=size[0], w=size[1], canvas_h=canvas[0], canvas_w=canvas[1]))
    return rows


# ------------------------------------------------------------------------------------------------ the run
def stats_frame(frames: list, settings: "Settings") -> "pd.DataFrame":
    """The recorders' frames (a ``stack`` column each) as one tidy frame: layer depth and kind, and the settings
    as columns."""
    stats = pd.concat(frames, ignore_index=True)
    stats.insert(2, "depth", stats["layer"].map(layer_depth).astype("int64"))
    stats.insert(3, "kind", stats["layer"].map(layer_kind))
    for key in ("data", "activation", "bias", "init", "seed", "normalize"):
        stats[key] = getattr(settings, key)
    stats["net_depth"] = settings.depth
    return stats


def run_experiment(settings: Settings, *, progress: bool = True, images: Optional[list[Image]] = None) -> Results:
    """Run the experiment described by ``settings`` (see the module docstring)."""
    start = time.perf_counter()
    # One thread by default: the activations here are small (a few MB per layer), so intra-op threads gain
    # little, and on a busy machine (other jobs on the same cores) OpenMP workers spinning against each other
    # made the default run 20x slower with 2 threads on 2 cores. --threads raises it for large images.
    torch.set_num_threads(settings.threads or 1)
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {settings.device!r} asked for, but CUDA is not available here")
    # under torch.distributed (torchrun), batch i goes to rank i % world: every batch is padded exactly as in
    # a single-process run, and the statistics are merged across ranks at the end
    rank, world = rank_and_world()
    if images is None:
        images = load_images(settings.data, num_images=settings.num_images, max_side=settings.max_side,
                             seed=settings.seed, normalize=settings.normalize)
    if settings.figure_image is not None and settings.figure_image not in [im.name for im in images]:
        raise DataError(f"figure image {settings.figure_image!r} is not among the images "
                         f"({', '.join(im.name for im in images)})")
    models = build_stacks(settings.depth, bias=settings.bias, activation=settings.activation,
                          init=settings.init, seed=settings.seed)  # all three: conv is also the reference
    models = {name: model.to(device) for name, model in models.items()}
    stacks = list(settings.stacks)
    layers = level_outputs(models["conv"])
    # eager statistics kernel: for these small activations torch.compile's start-up costs more than it saves
    recorders = {s: ActivationRecorder(models[s], compile=False) for s in stacks}
    reference = ActivationRecorder(models["conv"], compile=False)

    padding_rows: list[dict] = []  # rows of the batch in hand (kept per batch in batch_rows)
    maps_rows: list[dict] = []
    rgb = None
    n_batches = math.ceil(len(images) / settings.batch_size)
    if n_batches < world:
        raise DataError(f"{n_batches} batch(es) for {world} processes: every process needs at least one batch "
                        f"(more images or a smaller --batch-size)")
    mine = [i for i in range(n_batches) if i % world == rank]
    batch_rows: dict[int, list[dict]] = {}
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    it = (b for i, b in enumerate(batches(images, settings.batch_size, settings.depth)) if i % world == rank)
    bar = tqdm(it, total=len(mine), desc="batches", unit="batch", disable=not progress) if tqdm else it
    with torch.no_grad():
        for b, batch_index in zip(bar, mine):
            padding_rows = batch_rows.setdefault(batch_index, [])
            b = _to_device(b, device)
            batch_out = {}
            for s in stacks:
                with capture_outputs(models[s], layers) as store, recorders[s]:
                    models[s](b.x, b.mask)
                batch_out[s] = store
            k_fig = None
            if not maps_rows and (batch_index == 0 or settings.figure_image is not None):
                k_fig = _pick_figure_image(b, settings.figure_image)
                if k_fig is not None:
                    name, size = b.names[k_fig], b.sizes[k_fig]
                    for s in stacks:
                        maps_rows += _maps_rows(s, batch_out[s], k_fig, name, size, b.shape)
                    rgb = _display_rgb(b.x[k_fig], size)
            for k, idx in enumerate(b.index):
                image = images[idx]
                alone = _to_device(pad_alone(image, settings.depth, index=idx), device)
                padded = alone.shape != b.shape
                alone_out = {}
                with capture_outputs(models["conv"], layers) as store, reference:
                    models["conv"](alone.x, alone.mask)
                alone_out[REFERENCE] = store
                for s in stacks:
                    if s == "conv":
                        alone_out[s] = alone_out[REFERENCE]
                        continue
                    with capture_outputs(models[s], layers) as store:
                        models[s](alone.x, alone.mask)
                    alone_out[s] = store
                for layer in layers:
                    d = layer_depth(layer)
                    hd, wd = _valid_extent(image.size, d)
                    for s in stacks:
                        got = batch_out[s][layer][0][k, :, :hd, :wd]
                        for ref_name, ref_key in (("alone", s), (REFERENCE, REFERENCE)):
                            ref = alone_out[ref_key][layer][0][0, :, :hd, :wd]
                            rel_error, max_abs_error = _errors(got, ref)
                            padding_rows.append(dict(
                                stack=s, reference=ref_name, layer=layer, depth=d, kind=layer_kind(layer),
                                image=image.name, rel_error=rel_error, max_abs_error=max_abs_error,
                                padded=padded, h=image.size[0], w=image.size[1],
                                batch_h=b.shape[0], batch_w=b.shape[1],
                                alone_h=alone.shape[0], alone_w=alone.shape[1],
                            ))
            if tqdm and progress:
                bar.set_postfix_str(f"{b.shape[0]}x{b.shape[1]}")
    if tqdm and progress:
        bar.close()

    if world > 1:
        for rec in list(recorders.values()) + [reference]:
            rec.reduce()
        parts = gather_objects((batch_rows, maps_rows, rgb))
        batch_rows = {i: rows for part in parts for i, rows in part[0].items()}
        maps_rows, rgb = next(((m, r) for _, m, r in parts if m), ([], None))
    padding_rows = [row for i in sorted(batch_rows) for row in batch_rows[i]]

    frames = []
    for s in stacks + [REFERENCE]:
        rec = reference if s == REFERENCE else recorders[s]
        f = rec.to_frame()
        f.insert(0, "stack", s)
        frames.append(f)
    stats = stats_frame(frames, settings)
    padding = pd.DataFrame(padding_rows)
    maps = pd.DataFrame(maps_rows)
    return Results(settings=settings, stats=stats, padding=padding, maps=maps, rgb=rgb,
                   images=[dict(name=im.name, h=im.size[0], w=im.size[1]) for im in images],
                   seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ writing
def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_parquet(frame: pd.DataFrame, path: Path, metadata: Optional[dict] = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    pq.write_table(table, path)


def write_parquet_atomic(frame: pd.DataFrame, path, metadata: Optional[dict] = None) -> Path:
    """Write ``frame`` to ``path`` through a temporary file in the same folder and ``os.replace``:
    readers see the old file or the complete new one, never a half-written one; on any error (or
    ``KeyboardInterrupt``) the temporary file is removed and the old file is left as it was.
    ``metadata`` goes into the schema metadata as JSON under :data:`METADATA_KEY`."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        _write_parquet(frame, tmp, metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_settings(path) -> dict:
    """The settings a parquet file was written with (``{}`` if it has none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


def run_metadata(results: Results) -> dict:
    import masked_torch

    meta = {
        "settings": results.settings.to_dict(),
        "images": results.images,
        "reference_stack": REFERENCE,
        "versions": {"torch": torch.__version__, "masked_torch": masked_torch.__version__,
                     "pandas": pd.__version__, "numpy": np.__version__},
    }
    if results.preset is not None:  # only then: the default run's metadata stays as it was
        meta["preset"] = results.preset
        meta["reference_stack"] = None
    return meta


def write_outputs(results: Results, out, *, dpi: int = 120) -> list[Path]:
    """Write the two parquet files and the three figures under ``out``; returns the paths written.

    Every file is first written completely to a temporary file beside it; only when all five are there
    are they renamed into place (``os.replace``) one after the other. An error or Ctrl-C while writing
    leaves the previous results untouched and no temporary file behind."""
    import matplotlib.pyplot as plt

    from . import plot

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    meta = run_metadata(results)
    staged: list[tuple[Path, Path]] = []  # (temporary, final)

    def stage(final: Path) -> Path:
        staged.append((_tmp_path(final), final))
        return staged[-1][0]

    figs = {}
    try:
        figs["maps"] = plot.plot_activation_maps(results.maps, rgb=results.rgb)
        figs["stats"] = plot.plot_channel_stats(results.stats)
        if not results.padding.empty:  # a preset without batches (--preset seed) has no padding frame
            figs["padding"] = plot.plot_padding_sensitivity(results.padding)
        for key, fig in figs.items():
            fig.savefig(stage(out / "figures" / FIGURES[key]), dpi=dpi, format="png")
        _write_parquet(results.stats, stage(out / STATS_FILE), meta)
        if not results.padding.empty:
            _write_parquet(results.padding, stage(out / PADDING_FILE), meta)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        for fig in figs.values():
            plt.close(fig)
    for tmp, final in staged:
        os.replace(tmp, final)
    return [final for _, final in staged]
