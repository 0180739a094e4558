"""The experiment behind the command line: the conv / pconv / mconv variants of one plain model on padded
batches of images streamed from disk, recorded layer by layer, and the results written as tidy frames and
figures.

:func:`run_experiment` streams the images through a ``DataLoader`` (:mod:`~masked_torch.analysis.loader`),
runs every stack once on each padded batch and once on each of its images alone, and hands the outputs to
the passes of :mod:`~masked_torch.analysis.passes`; each returns one frame of :class:`Results`:

* ``stats``       -- one row per (stack, layer, channel): ``count`` (the channel's valid positions, over every
  image), ``mean, var, std, min, max, zero_frac`` over them; besides the stacks asked for, ``conv_alone`` is
  the plain model on each image alone (padded only to its own size rounded up to the canvas multiple); the
  settings as columns, ``<NA>`` where the model does not use one (:func:`with_settings`);
* ``padding``     -- one row per (stack, reference, layer, image): ``rel_error = ||batch - ref|| / ||ref||``;
* ``image_stats`` -- one row per (stack, layer, image): mean and variance in the batch and alone over the
  image's ``values`` (its valid positions times channels: all channels together), and ``pad_fraction``, the
  padded share of the image's batch canvas;
* ``maps``        -- channel-mean maps of a few layers for one image (figure 1).

Every frame carries each layer's place in the network (:func:`~masked_torch.analysis.models.layer_table`):
``order`` (forward order), ``depth`` (resolution level: the layer's output is ``2**depth`` times smaller than
the input), ``kind`` and ``block``. :func:`write_outputs` writes the parquet files and figures atomically.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .data import DataError, open_source
from .distributed import gather_objects, rank_and_world
from .files import (FIGURES, IMAGE_STATS_FILE, METADATA_KEY, PADDING_FILE, STATS_FILE, TENSOR_STATS_FILE,
                    StagedFiles, read_settings, safe_text, write_parquet, write_parquet_atomic)
from .loader import crop_alone, limit_kernel_cache, make_loader
from .masks import apply_holes
from .models import (build_model, build_variants, canvas_multiple, check_parameters, layer_table,
                     reference_multiple)
from .passes import (REFERENCE, ImageStatsPass, MapsPass, PaddingPass, StatsPass, capture_outputs, map_layers)
from .selection import select_layers
from .settings import IGNORED_BY_MODEL, Settings, SettingsError, check_depth

__all__ = [
    "Settings", "SettingsError", "Results", "METADATA_KEY", "STATS_FILE", "PADDING_FILE", "IMAGE_STATS_FILE",
    "FIGURES", "run_experiment", "write_outputs", "write_parquet_atomic", "read_settings", "capture_outputs",
    "stats_frame", "with_settings", "recorded_layers",
]

_SETTING_COLUMNS = ("model", "data", "activation", "bias", "init", "seed", "normalize", "mask", "update_mask")
_MAX_LISTED_IMAGES = 2000  # the metadata lists every image's name and size up to this many


@dataclass
class Results:
    settings: Settings
    stats: pd.DataFrame
    padding: pd.DataFrame
    maps: pd.DataFrame
    image_stats: pd.DataFrame = field(default_factory=pd.DataFrame)
    rgb: Optional[np.ndarray] = None  # (H, W, 3) display version of the figure-1 image's canvas
    images: list[dict] = field(default_factory=list)  # name, h, w of every image used (up to 2000)
    num_images: int = 0
    skipped: list[dict] = field(default_factory=list)  # name, reason of every unreadable file
    padding_fraction: Optional[float] = None  # padded share of all batch canvases
    seconds: float = 0.0
    preset: Optional[str] = None  # "seed": analysis.seed's run (no padding frame, no conv_alone)
    tensor_stats: pd.DataFrame = field(default_factory=pd.DataFrame)  # "seed": the seed's whole-tensor statistics


class _RankPart(NamedTuple):
    """What one process of a run hands to the others (``gather_objects``) besides its recorders' moments."""

    padding: pd.DataFrame  # PaddingPass's frame
    image_stats: pd.DataFrame  # ImageStatsPass's frame
    maps: list[dict]  # MapsPass rows (one process has them: the one that ran the figure image)
    rgb: Optional[np.ndarray]  # the figure image's display picture, with the maps
    images: list[dict]  # name, h, w, batch of every image it ran
    skipped: list[tuple[str, str]]  # (name, reason) of every file it could not read
    canvas_px: int  # pixels of its batch canvases
    image_px: int  # pixels of its images


def recorded_layers(model: torch.nn.Module) -> list[str]:
    """Names of the layers a run records: the recorder's default selection."""
    return [name for name, _ in select_layers(model)]


def _with_layers(frame: pd.DataFrame, table: pd.DataFrame, at: int = 2) -> pd.DataFrame:
    """``frame`` with the layer's ``order, depth, kind, block`` inserted after column ``at - 1``."""
    if frame.empty:
        return frame
    info = table.set_index("layer")
    for i, col in enumerate(("order", "depth", "kind", "block")):
        if col in info and col not in frame:
            frame.insert(at + i, col, frame["layer"].map(info[col]))
    return frame


#: The nullable dtype of each setting some model ignores (``<NA>`` there), for every model, so that runs concatenate.
_NULLABLE = {key: "boolean" if isinstance(getattr(Settings(), key), bool) else "Int64"
             for keys in IGNORED_BY_MODEL.values() for key in keys}


def with_settings(frame: pd.DataFrame, settings: Settings, keys) -> pd.DataFrame:
    """``frame`` with one column per setting in ``keys``, in place: the network's depth setting is ``net_depth``
    (``depth`` is the layer's), stacks are joined with ``+``; a setting the run's model does not use
    (:meth:`Settings.applies`) is ``<NA>``, in a nullable column (``Int64``, ``boolean``) for every model; a text
    is made writable (:func:`~masked_torch.analysis.files.safe_text`: a folder name need not be UTF-8)."""
    for key in keys:
        value = getattr(settings, key)
        value = "+".join(value) if isinstance(value, (list, tuple)) else value
        value = safe_text(value) if isinstance(value, str) else value
        column = "net_depth" if key == "depth" else key
        if key in _NULLABLE:
            frame[column] = pd.array([value if settings.applies(key) else pd.NA] * len(frame), dtype=_NULLABLE[key])
        else:
            frame[column] = value
    return frame


def stats_frame(frame: pd.DataFrame, settings: Settings, table: pd.DataFrame) -> pd.DataFrame:
    """The recorders' frame (with a ``stack`` column) as the tidy stats frame: the layers' place in the
    network, and the settings as columns (:func:`with_settings`)."""
    return with_settings(_with_layers(frame, table), settings, (*_SETTING_COLUMNS, "depth"))


def _forward(model, x, mask, names, recorder=None) -> dict:
    with capture_outputs(model, names) as store:
        if recorder is None:
            model(x, mask)
        else:
            with recorder:
                model(x, mask)
    return store


def _check_images(settings: Settings, source) -> None:
    """One line before any batch runs: no image can be read (their headers), or, where ``max_side`` does not
    bound the images (``None``), the depth is too deep for the largest (:func:`~.settings.check_depth`)."""
    unreadable = source.unreadable
    if len(unreadable) == len(source):
        i, reason = next(iter(unreadable.items()))
        raise DataError(f"none of the {len(source)} image file(s) can be read ({source.location(i)}: {reason})")
    if settings.max_side is None:
        side = source.max_side or max(max(size) for size in source.sizes)
        check_depth(settings.model, settings.depth, side, "max_side" if source.max_side else "the largest image")


def run_experiment(settings: Settings, *, progress: bool = True, plain: Optional[torch.nn.Module] = None,
                   source=None, passes: Sequence = ()) -> Results:
    """Run the experiment ``settings`` describes (see the module docstring).

    ``plain`` and ``source`` replace the plain model and the image source that ``settings`` names (a preset's
    own network and images, :mod:`~masked_torch.analysis.seed`); ``passes``: more passes, each given every
    batch with the stacks' outputs (``p.add(batch, batch_out)``, as :class:`MapsPass`) on this process."""
    start = time.perf_counter()
    limit_kernel_cache()  # before the first convolution: a kernel per canvas shape would be kept
    # One thread by default: the activations here are small, and on a busy machine OpenMP workers spinning
    # against each other made the default run 20x slower with 2 threads on 2 cores. --threads raises it.
    torch.set_num_threads(settings.threads or 1)
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {settings.device!r} asked for, but CUDA is not available here")
    rank, world = rank_and_world()  # under torchrun batch i goes to rank i % world
    if source is None:
        source = open_source(settings.data, num_images=settings.num_images, max_side=settings.max_side,
                             seed=settings.seed, normalize=settings.normalize, strict=settings.strict)
    _check_images(settings, source)  # before any model is built

    if plain is None:
        # counted on the meta device: a network too large is refused before any weight is allocated
        check_parameters(settings.model, depth=settings.depth, bias=settings.bias, activation=settings.activation)
        plain = build_model(settings.model, depth=settings.depth, bias=settings.bias,
                            activation=settings.activation, init=settings.init, seed=settings.seed,
                            weights=settings.weights)
    multiple = canvas_multiple(settings.model, settings.depth)
    ref_multiple = reference_multiple(settings.model, settings.depth)
    models = {s: m.to(device) for s, m in build_variants(plain, ("conv", *[s for s in settings.stacks
                                                                            if s != "conv"]),
                                                         update_mask=settings.update_mask).items()}
    stacks = list(settings.stacks)
    names = recorded_layers(models["conv"])
    table = layer_table(plain, torch.zeros(1, 3, 2 * multiple, 2 * multiple))
    table = table[table["layer"].isin(names)]

    if settings.figure_image is not None and settings.figure_image in [
            source.names[i] for i in source.unreadable]:
        raise DataError(f"figure image {settings.figure_image!r} cannot be read")
    if settings.figure_image is not None and settings.figure_image not in source.names:
        raise DataError(f"figure image {settings.figure_image!r} is not among the images "
                        f"({', '.join(source.names[:10])}{', ...' if len(source) > 10 else ''})")
    loader = make_loader(source, batch_size=settings.batch_size, multiple=multiple, bucket=settings.bucket,
                         workers=settings.workers, seed=settings.seed, rank=rank, world=world)

    stats = StatsPass(models, stacks, names)
    padding = PaddingPass(stacks, names)
    per_image = ImageStatsPass(stacks, names)
    maps = MapsPass(stacks, map_layers(table, settings.model), settings.figure_image)
    images: list[dict] = []
    canvas_px = image_px = 0  # over the batches that ran: the run's padding fraction
    bar = None
    if progress:  # imported only then: tqdm.auto warns in a notebook without ipywidgets
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc="batches", unit="batch")
    with torch.no_grad():
        for batch in loader:
            x, mask = batch.x.to(device), batch.mask.to(device)
            if settings.mask == "holes":
                mask = apply_holes(mask, batch.sizes, batch.index, seed=settings.seed)
                x = x * mask
            batch = dataclasses.replace(batch, x=x, mask=mask)
            canvas_px += x.shape[0] * x.shape[-2] * x.shape[-1]
            image_px += sum(h * w for h, w in batch.sizes)
            batch_out = {s: _forward(models[s], x, mask, names, stats.recorder(s)) for s in stacks}
            maps.add(batch, batch_out)
            for extra in passes:
                extra.add(batch, batch_out)
            for k in range(len(batch.names)):
                alone = crop_alone(batch, k, multiple)  # what each stack sees of the image alone
                # the unmodified model on the image alone: exactly the image where the model runs at any size
                ref = alone if ref_multiple == multiple else crop_alone(batch, k, ref_multiple)
                alone_out = {REFERENCE: _forward(models["conv"], ref.x, ref.mask, names, stats.recorder(REFERENCE))}
                for s in stacks:
                    alone_out[s] = (alone_out[REFERENCE] if s == "conv" and ref is alone
                                    else _forward(models[s], alone.x, alone.mask, names))
                padding.add(batch, k, alone, ref, batch_out, alone_out)
                per_image.add(batch, k, alone, ref, batch_out, alone_out)
                images.append(dict(name=batch.names[k], h=batch.sizes[k][0], w=batch.sizes[k][1],
                                   batch=batch.batch_index))
            if bar is not None:
                bar.update()
                bar.set_postfix_str(f"{x.shape[-2]}x{x.shape[-1]}")
    if bar is not None:
        bar.close()

    parts = [_RankPart(padding.frame(), per_image.frame(), maps.rows, maps.rgb, images, loader.skipped, canvas_px,
                       image_px)]
    if world > 1:
        stats.reduce()
        parts = gather_objects(parts[0])

    def in_run_order(field: str) -> list:  # the ranks' rows, in the order of a single-process run
        return sorted((row for p in parts for row in getattr(p, field)), key=lambda row: row["batch"])

    def frame_in_run_order(field: str) -> pd.DataFrame:  # the ranks' frames, as a single-process run's
        return pd.concat([getattr(p, field) for p in parts], ignore_index=True).sort_values(
            "batch", kind="stable", ignore_index=True)

    padding_frame, image_frame = frame_in_run_order("padding"), frame_in_run_order("image_stats")
    maps_rows, rgb = next(((p.maps, p.rgb) for p in parts if p.maps), ([], None))
    images = in_run_order("images")
    skipped = sorted({sk for p in parts for sk in p.skipped})
    canvas_px, image_px = sum(p.canvas_px for p in parts), sum(p.image_px for p in parts)
    if not maps_rows:  # the figure image was in no batch that ran (it failed to decode)
        raise DataError(f"figure image {settings.figure_image!r} could not be decoded; no activation maps")
    return Results(
        settings=settings,
        stats=stats_frame(stats.frame(), settings, table),
        padding=_with_layers(padding_frame, table, at=3),
        image_stats=_with_layers(image_frame, table),
        maps=_with_layers(pd.DataFrame(maps_rows), table),
        rgb=rgb,
        images=images[:_MAX_LISTED_IMAGES],
        num_images=len(images),
        skipped=[dict(name=n, reason=r) for n, r in skipped],
        padding_fraction=1.0 - image_px / canvas_px if canvas_px else None,
        seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------------------------------------ writing
def run_metadata(results: Results) -> dict:
    import masked_torch

    meta = {
        "settings": results.settings.to_dict(),
        "images": results.images,
        "num_images": results.num_images,
        "skipped": results.skipped,
        "padding_fraction": results.padding_fraction,
        "reference_stack": REFERENCE,
        "versions": {"torch": torch.__version__, "masked_torch": masked_torch.__version__,
                     "pandas": pd.__version__, "numpy": np.__version__},
    }
    if results.preset is not None:
        meta["preset"] = results.preset
        meta["reference_stack"] = None
    return meta


def write_outputs(results: Results, out, *, dpi: int = 120) -> list[Path]:
    """Write the parquet files and the figures under ``out``; returns the paths written.

    All or nothing (:class:`~masked_torch.analysis.files.StagedFiles`): every file is first written completely
    to a temporary file beside it, then the set is swapped in; result files of an earlier run that this one
    does not write are removed in the same swap. An error or Ctrl-C before the swap leaves ``out`` as it was,
    with no temporary file; an error during it puts the old files back; Ctrl-C during it is held until the
    swap is done (:class:`~masked_torch.analysis.files.InterruptedAfterWriting`)."""
    import matplotlib.pyplot as plt

    from . import plot

    meta = run_metadata(results)
    figs = {}
    try:
        with StagedFiles(out) as files:
            figs["maps"] = plot.plot_activation_maps(results.maps, rgb=results.rgb,
                                                     update_mask=results.settings.update_mask)
            figs["stats"] = plot.plot_channel_stats(results.stats)
            if not results.padding.empty:  # a preset without batches (--preset seed) has no padding frame
                figs["padding"] = plot.plot_padding_sensitivity(results.padding)
            if not results.image_stats.empty:
                figs["image_stats"] = plot.plot_stats_vs_padding(results.image_stats)
            for key, fig in figs.items():
                plot.save_png(fig, files.stage(f"figures/{FIGURES[key]}"), dpi=dpi)  # under plot.PNG_CAP bytes
            write_parquet(results.stats, files.stage(STATS_FILE), meta)
            if not results.padding.empty:
                write_parquet(results.padding, files.stage(PADDING_FILE), meta)
            if not results.image_stats.empty:
                write_parquet(results.image_stats, files.stage(IMAGE_STATS_FILE), meta)
            if not results.tensor_stats.empty:
                write_parquet(results.tensor_stats, files.stage(TENSOR_STATS_FILE), meta)
    finally:
        for fig in figs.values():
            plt.close(fig)
    return files.paths
