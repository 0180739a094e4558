"""The training experiment: one plain classifier trained three ways on padded batches of differently sized images --
or, with ``data="stdlib"``, a causal next-byte language model on padded batches of documents of different lengths.

For each seed, the plain model (:func:`~masked_torch.analysis.train_model.build_classifier`, drawn from the seed) is
converted by :func:`~masked_torch.analysis.stacks.build_variants` into

* **conv**  -- ``convert(model, "plain")``: the plain network on the padded batch;
* **pconv** -- ``convert(model, "partial", update_mask=False, multichannel=True)``;
* **mconv** -- ``convert(model, "masked")``;

with identical initial weights. The three share the data order (a permutation per epoch from ``(seed, epoch)``),
the batching (every batch padded once, :func:`masked_torch.utils.pad_batch`, and given to each), the optimizer
(Adam) and the schedule (cosine decay of the learning rate per step). Epoch 0 is the
model before training. After every epoch (and at epoch 0), per kind:

* ``train_curves.parquet``  -- training loss (mean over the epoch's images), held-out loss and accuracy, the share
  of dead ReLU channels on the probe set, the learning rate at the epoch's end; the language model: the loss
  and accuracy per next byte (the mean over every predicted byte), and both losses also in bits per byte
  (``train_bpb``, ``heldout_bpb``);
* ``train_stats.parquet``   -- per-channel statistics of every recorded layer on the probe set (the first
  ``probe_images`` held-out images) with an ``epoch`` column (the language model: every layer but the logits,
  :func:`~masked_torch.analysis.train_model.lm_recorded`);
* ``train_grads.parquet``   -- per layer, the gradient norm (mean and largest over the epoch's steps);
* ``train_sensitivity.parquet`` -- at epoch 0, every ``sensitivity_every`` epochs and at the last: each held-out image
  alone and in two random padded batchings (:func:`~masked_torch.analysis.train_measure.sensitivity`).

The language model (``data="stdlib"``, ``model="bytelm"``: :mod:`~masked_torch.analysis.train_text`,
:class:`~masked_torch.analysis.train_model.ByteLM`) runs through the same loop: a batch is the documents one-hot and
padded on the right, the loss the cross-entropy over every valid position's next byte (padding and each document's
last byte ignored), a training step's loss the mean over the batch's predicted bytes; its batch-composition check
counts next-byte predictions per document. The run's metadata carries ``unigram_bpb``, the bits per byte of the
held-out bytes under the training documents' byte frequencies (:func:`~masked_torch.analysis.train_text.unigram_bits`),
the baseline a model must beat, and the Python version whose standard library gave the documents.

Checkpoints (``OUT/checkpoints``): ``resume_seed{S}.pt`` after every epoch, written atomically, holding every
kind's weights and optimizer state and the frames so far: a run interrupted or killed resumes from the last completed
epoch of each seed and gives the same frames as one that was not (on CPU the same seed gives the same frames).
``{stack}_seed{S}.pt`` at the end: the trained weights (the plain model's ``state_dict`` keys) for ``--weights``.

Under ``torchrun`` (:mod:`~masked_torch.analysis.distributed`) every batch is padded as in a single process and
rank ``r`` trains on its rows ``r::world`` with ``DistributedDataParallel`` (the loss scaled so that the averaged
gradient is the whole batch's); BatchNorm takes its batch statistics per rank. Rank 0 measures, checkpoints and
writes; the others only train.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .data import DataError
from .distributed import rank_and_world
from .files import atomic_write
from .models import layer_table
from .run import _with_layers
from .stacks import build_variants
from .train_data import IGNORE, Labelled, load_data
from .train_measure import GradNorms, heldout, probe_stats, sensitivity
from .train_model import IMAGE_MODELS, build_classifier, lm_recorded, multiples
from .train_text import BYTES, stdlib_documents, unigram_bits

__all__ = ["KINDS", "TrainSettings", "TrainResults", "run_training", "write_training", "epoch_batches", "FRAMES",
           "learning_rate", "resume_path", "final_path"]

KINDS = ("conv", "pconv", "mconv")
#: The frames a run writes: name -> file.
FRAMES = {"curves": "train_curves.parquet", "stats": "train_stats.parquet", "grads": "train_grads.parquet",
          "sensitivity": "train_sensitivity.parquet"}
_CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a training run's numbers (``threads`` only its speed)."""

    data: str = "shapes"  # "shapes", a class folder, or "stdlib" (documents for the language model "bytelm")
    num_images: int = 240  # shapes images (a folder: all of its images)
    min_side: int = 24  # shapes: smallest side
    max_side: int = 160  # shapes: largest side; a folder: larger images are shrunk to this
    data_seed: int = 0  # shapes: which images (the same for every training seed)
    num_docs: int = 240  # stdlib: documents
    min_bytes: int = 32  # stdlib: shortest document
    max_bytes: int = 512  # stdlib: longest document (longer functions are cut to their whole lines within it)
    holdout: float = 0.25  # share of each class (of the documents) held out
    model: str = "small"
    width: Optional[int] = 8  # channels of the first level (None: the model's own default)
    depth: int = 3  # levels of the stack / U-Net
    weights: Optional[str] = None  # start from this checkpoint of the plain classifier
    stacks: tuple = KINDS
    seeds: tuple = (0, 1, 2)
    epochs: int = 8
    batch_size: int = 16
    lr: float = 0.01  # Adam's step size at the start (cosine decay to 0)
    weight_decay: float = 0.0
    probe_images: int = 16
    sensitivity_every: int = 2
    dtype: str = "float32"
    strict: bool = False
    threads: Optional[int] = None

    @property
    def text(self) -> bool:
        """The language model on the standard library's documents."""
        return self.data == "stdlib"

    def replace(self, **changes) -> "TrainSettings":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def resume_key(self) -> dict:
        """What a seed's checkpoint must agree on to be resumed (all but the seeds listed and the threads)."""
        return {k: v for k, v in self.as_dict().items() if k not in ("seeds", "threads")}


@dataclass
class TrainResults:
    settings: TrainSettings
    frames: dict  # name (FRAMES) -> DataFrame
    classes: tuple
    num_train: int
    num_heldout: int
    sizes: list  # (h, w) of every image
    skipped: list
    seconds: float
    checkpoints: list  # final per-kind checkpoint paths (rank 0)
    models: dict = dataclasses.field(default_factory=dict)  # seed -> {stack: trained model} (every rank)
    extra: dict = dataclasses.field(default_factory=dict)  # the language model: unigram_bpb, python

    def metadata(self) -> dict:
        return dict(settings=self.settings.as_dict(), classes=list(self.classes), num_train=self.num_train,
                    num_heldout=self.num_heldout, skipped=[list(s) for s in self.skipped],
                    torch=torch.__version__, **self.extra)


def learning_rate(settings: TrainSettings, step: int, total: int) -> float:
    """Cosine decay from ``lr`` to 0 over the run's ``total`` steps."""
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, world: int = 1) -> list[list[int]]:
    """Epoch ``epoch``'s batches of the ``n`` training images: a permutation from ``(seed, epoch)`` cut into batches
    of ``batch_size``; a last batch smaller than ``max(2, world)`` joins the one before (every rank gets an image,
    BatchNorm at least two)."""
    order = np.random.default_rng([seed, epoch, 3]).permutation(n).tolist()
    out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < max(2, world):
        out[-2].extend(out.pop())
    return out


# ------------------------------------------------------------------------------------------------ checkpoints
def _frame_bytes(frame: pd.DataFrame) -> torch.Tensor:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _bytes_frame(tensor: torch.Tensor) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(tensor.numpy().tobytes()))


def resume_path(out, seed: int) -> Path:
    return Path(out) / "checkpoints" / f"resume_seed{seed}.pt"


def final_path(out, stack: str, seed: int) -> Path:
    return Path(out) / "checkpoints" / f"{stack}_seed{seed}.pt"


def _save(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _load_resume(out, seed: int, settings: TrainSettings) -> Optional[dict]:
    path = resume_path(out, seed)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reason is the same for the user
        raise DataError(f"cannot resume from {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}; "
                        f"remove it (or run with --fresh) to start over") from None
    if state.get("format") != _CHECKPOINT_FORMAT or state.get("settings") != settings.resume_key():
        theirs = state.get("settings") or {}
        differ = [k for k in settings.resume_key() if theirs.get(k) != settings.resume_key()[k]]
        raise DataError(f"{path} was written by a run with other settings ({', '.join(differ[:4]) or 'format'}); "
                        f"run with --fresh to start over, or use another --out")
    return state


# ------------------------------------------------------------------------------------------------ the run
def _dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise DataError(f"dtype must be float32 or float64, got {name!r}")
    return getattr(torch, name)


def _check_model(settings: TrainSettings) -> None:
    if settings.text and settings.model != "bytelm":
        raise DataError(f"--data stdlib trains the byte language model (--model bytelm), not {settings.model!r}")
    if not settings.text and settings.model not in IMAGE_MODELS:
        raise DataError(f"--model {settings.model} is the byte language model of --data stdlib; images need one of "
                        f"{', '.join(IMAGE_MODELS)}")


def _example(settings: TrainSettings, canvas: int, dtype: torch.dtype) -> torch.Tensor:
    """A zero input of the plain model, for :func:`~masked_torch.analysis.models.layer_table` (only shapes are
    read)."""
    if settings.text:
        return torch.zeros(1, BYTES, 64, dtype=dtype)
    return torch.zeros(1, 3, max(64, 2 * canvas), max(64, 2 * canvas), dtype=dtype)


def _tagged(frame: pd.DataFrame, seed: int, stack: str, epoch: int) -> pd.DataFrame:
    frame.insert(0, "epoch", epoch)
    frame.insert(0, "stack", stack)
    frame.insert(0, "seed", seed)
    return frame


class _Seed:
    """One seed's models, optimizers and frames."""

    def __init__(self, settings: TrainSettings, seed: int, num_classes: int, dtype: torch.dtype, world: int,
                 converted: Optional[dict] = None):
        """``num_classes``: the model's outputs (the language model: 256 per position). ``converted``: the kinds
        converted for an earlier seed, untrained (filled by the first seed; ``None``: convert): a later seed loads
        its weights into copies of them rather than converting again (the same modules and values; converting takes
        seconds)."""
        self.seed = seed
        # in its dtype before converting: a converted graph model is built at its first call from the plain one
        self.plain = build_classifier(settings.model, num_classes, width=settings.width, depth=settings.depth,
                                      seed=seed, weights=settings.weights).to(dtype)
        converted = {} if converted is None else converted
        if not converted:
            converted.update({k: copy.deepcopy(m) for k, m in build_variants(self.plain, settings.stacks).items()})
        self.models = {k: copy.deepcopy(m) for k, m in converted.items()}
        for m in self.models.values():
            m.load_state_dict(self.plain.state_dict())
            m.train()
        self.optimizers = {k: torch.optim.Adam(m.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
                           for k, m in self.models.items()}
        self.trained = self.models
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.trained = {k: DistributedDataParallel(m) for k, m in self.models.items()}
        self.frames: dict[str, list[pd.DataFrame]] = {name: [] for name in FRAMES}
        self.epoch = -1

    def state(self, settings: TrainSettings) -> dict:
        return dict(format=_CHECKPOINT_FORMAT, settings=settings.resume_key(), epoch=self.epoch,
                    models={k: m.state_dict() for k, m in self.models.items()},
                    optimizers={k: o.state_dict() for k, o in self.optimizers.items()},
                    frames={name: _frame_bytes(pd.concat(parts, ignore_index=True))
                            for name, parts in self.frames.items() if parts})

    def load(self, state: dict) -> None:
        for k, m in self.models.items():
            m.load_state_dict(state["models"][k])
            self.optimizers[k].load_state_dict(state["optimizers"][k])
        self.frames = {name: [_bytes_frame(state["frames"][name])] if name in state["frames"] else []
                       for name in FRAMES}
        self.epoch = int(state["epoch"])


def run_training(settings: TrainSettings, out, *, progress: bool = True, data=None,
                 fresh: bool = False, on_epoch: Optional[Callable[[int, int], None]] = None) -> TrainResults:
    """Train and measure as the module docstring says; checkpoints go to ``out/checkpoints`` (rank 0).

    ``data`` (a :class:`~masked_torch.analysis.train_data.Labelled`, or
    :class:`~masked_torch.analysis.train_text.Documents` for ``stdlib``) replaces the data ``settings`` names;
    ``fresh`` ignores existing resume checkpoints; ``on_epoch(seed, epoch)`` is called after each epoch's checkpoint
    is written (a test stops a run there)."""
    start = time.perf_counter()
    torch.set_num_threads(settings.threads or 1)
    dtype = _dtype(settings.dtype)
    rank, world = rank_and_world()
    _check_model(settings)
    if data is None and settings.text:
        data = stdlib_documents(settings.num_docs, min_bytes=settings.min_bytes, max_bytes=settings.max_bytes)
    elif data is None:
        data = load_data(settings.data, num_images=settings.num_images, seed=settings.data_seed,
                         min_side=settings.min_side, max_side=settings.max_side, strict=settings.strict)
    train_index, held_index = data.split(settings.holdout)
    train, held = data.subset(train_index), data.subset(held_index)
    extra = {}
    if settings.text:
        import platform

        extra = dict(unigram_bpb=unigram_bits(train, held), python=platform.python_version())
    outputs = BYTES if settings.text else len(data.classes)
    probe = held.subset(range(min(settings.probe_images, len(held))))
    canvas, alone = multiples(settings.model, settings.depth)
    out = Path(out)

    bar = None
    steps_per_epoch = len(epoch_batches(len(train), settings.batch_size, 0, 1, world))
    total_steps = steps_per_epoch * settings.epochs
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps * len(settings.seeds), desc="training", unit="batch")
    runs = []
    table = None
    converted: dict = {}
    for seed in settings.seeds:
        run = _Seed(settings, seed, outputs, dtype, world, converted)
        if table is None:
            table = layer_table(copy.deepcopy(run.plain).eval(), _example(settings, canvas, dtype))
        state = None if fresh else _load_resume(out, seed, settings)
        if state is not None:
            run.load(state)
        if run.epoch < 0:
            _measure(run, settings, train_loss={}, grads={}, held=held, probe=probe, canvas=canvas, alone=alone,
                     dtype=dtype, table=table, epoch=0, rank=rank, lr=settings.lr)
            _checkpoint(run, settings, out, rank, world)
        if bar is not None:
            bar.update(steps_per_epoch * run.epoch)
        for epoch in range(run.epoch + 1, settings.epochs + 1):
            losses, grads = _train_epoch(run, settings, train, epoch, canvas, dtype, total_steps, steps_per_epoch,
                                         rank, world, bar)
            _measure(run, settings, train_loss=losses, grads=grads, held=held, probe=probe, canvas=canvas,
                     alone=alone, dtype=dtype, table=table, epoch=epoch, rank=rank,
                     lr=learning_rate(settings, epoch * steps_per_epoch, total_steps))
            _checkpoint(run, settings, out, rank, world)
            if on_epoch is not None:
                on_epoch(seed, epoch)
        runs.append(run)
    if bar is not None:
        bar.close()

    checkpoints = []
    if rank == 0:
        for run in runs:
            for k, m in run.models.items():
                path = final_path(out, k, run.seed)
                _save(path, dict(state_dict=m.state_dict(), model=settings.model, classes=list(data.classes),
                                 seed=run.seed, stack=k, epochs=settings.epochs))
                checkpoints.append(path)
    frames = {name: pd.concat([p for run in runs for p in run.frames[name]], ignore_index=True)
              if any(run.frames[name] for run in runs) else pd.DataFrame() for name in FRAMES}
    return TrainResults(settings, frames, data.classes, len(train), len(held), data.sizes, data.skipped,
                        time.perf_counter() - start, checkpoints, {run.seed: run.models for run in runs}, extra)


def _checkpoint(run: _Seed, settings: TrainSettings, out: Path, rank: int, world: int) -> None:
    if rank == 0:
        _save(resume_path(out, run.seed), run.state(settings))
    if world > 1:
        torch.distributed.barrier()


def _train_epoch(run: _Seed, settings: TrainSettings, train, epoch: int, canvas: int,
                 dtype: torch.dtype, total_steps: int, steps_per_epoch: int, rank: int, world: int, bar):
    """One epoch of every kind on the same padded batches; returns (mean loss per kind, GradNorms per kind). The
    loss of a step is the mean over the batch's targets (images; next bytes), the epoch's the mean over all."""
    batches = epoch_batches(len(train), settings.batch_size, run.seed, epoch, world)
    sums = {k: 0.0 for k in run.models}
    grads = {k: GradNorms() for k in run.models}
    seen = 0
    for step, batch in enumerate(batches):
        lr = learning_rate(settings, (epoch - 1) * steps_per_epoch + step, total_steps)
        x, mask, y = train.batch(batch, canvas, dtype)
        count = int((y != IGNORE).sum())  # the whole batch's targets, on every rank
        mine = slice(rank, None, world)  # this rank's rows of the batch padded as in one process
        for k, model in run.trained.items():
            opt = run.optimizers[k]
            for group in opt.param_groups:
                group["lr"] = lr
            logits, _ = model(x[mine], mask[mine])
            loss_sum = F.cross_entropy(logits, y[mine], reduction="sum", ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            (loss_sum * (world / count)).backward()  # DDP averages over ranks: the batch's mean
            grads[k].add(run.models[k])
            opt.step()
            total = loss_sum.detach().double()
            if world > 1:
                torch.distributed.all_reduce(total)
            sums[k] += float(total)
        seen += count
        if bar is not None:
            bar.update()
            bar.set_postfix_str(f"seed {run.seed} epoch {epoch}/{settings.epochs} loss "
                                + " ".join(f"{k} {sums[k] / seen:.3f}" for k in sums))
    run.epoch = epoch
    return {k: s / seen for k, s in sums.items()}, grads


def _measure(run: _Seed, settings: TrainSettings, *, train_loss: dict, grads: dict, held,
             probe, canvas: int, alone: int, dtype: torch.dtype, table: pd.DataFrame, epoch: int,
             rank: int, lr: float) -> None:
    """Rank 0: the epoch's rows of every frame, for every kind (see the module docstring)."""
    run.epoch = epoch
    if rank != 0:
        return
    every = settings.sensitivity_every
    with_sensitivity = epoch == 0 or epoch == settings.epochs or (every > 0 and epoch % every == 0)
    for k, model in run.models.items():
        loss, acc = heldout(model, held, settings.batch_size, canvas, dtype)
        stats = _with_layers(probe_stats(model, probe, settings.batch_size, canvas, dtype,
                                         lm_recorded if settings.text else None), table)
        acts = stats[stats["kind"] == "act"]
        run.frames["stats"].append(_tagged(stats, run.seed, k, epoch))
        curve = dict(train_loss=[train_loss.get(k, float("nan"))], heldout_loss=[loss], heldout_acc=[acc],
                     dead_frac=[float(acts["dead"].mean()) if len(acts) else float("nan")], lr=[lr])
        if settings.text:  # the same losses in bits per byte
            curve.update(train_bpb=[curve["train_loss"][0] / math.log(2)], heldout_bpb=[loss / math.log(2)])
        run.frames["curves"].append(_tagged(pd.DataFrame(curve), run.seed, k, epoch))
        if k in grads:
            run.frames["grads"].append(_tagged(_with_layers(grads[k].frame(model), table, at=1), run.seed, k, epoch))
        if with_sensitivity:
            sens = sensitivity(model, held, settings.batch_size, canvas, alone, dtype, seed=run.seed, epoch=epoch)
            run.frames["sensitivity"].append(_tagged(sens, run.seed, k, epoch))


def write_training(results: TrainResults, out, *, dpi: int = 120) -> list[Path]:
    """The frames (:data:`FRAMES`, with the run's settings in their metadata) and the figures
    (:data:`~masked_torch.analysis.plot_train.TRAIN_FIGURES`) under ``out``, all or nothing
    (:class:`~masked_torch.analysis.files.StagedFiles`); returns the paths written."""
    import matplotlib.pyplot as plt

    from . import plot_train
    from .files import StagedFiles, write_parquet
    from .plot import save_png

    figures = {key: f"figures/{name}" for key, name in plot_train.TRAIN_FIGURES.items()}
    meta = results.metadata()
    figs = {}
    try:
        with StagedFiles(out, replaces=(*FRAMES.values(), *figures.values())) as files:
            curves = results.frames["curves"]
            curves.attrs["classes"] = list(results.classes)
            curves.attrs.update(results.extra)
            figs["curves"] = plot_train.plot_learning_curves(curves)
            results.frames["stats"].attrs["data"] = results.settings.data
            figs["stats"] = plot_train.plot_training_stats(results.frames["stats"])
            figs["sensitivity"] = plot_train.plot_train_sensitivity(results.frames["sensitivity"])
            for key, fig in figs.items():
                save_png(fig, files.stage(figures[key]), dpi=dpi)
            for name, file in FRAMES.items():
                write_parquet(results.frames[name], files.stage(file), meta)
    finally:
        for fig in figs.values():
            plt.close(fig)
    return files.paths
