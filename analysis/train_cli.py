"""``train``: the training experiment's subcommand of the suite's command line (:mod:`~masked_torch.analysis.cli`).

    python -m masked_torch.analysis train --out results/train            # the README run (make figures)
    python -m masked_torch.analysis train --data ~/pets --epochs 20 --out /tmp/pets
    python -m masked_torch.analysis train --data stdlib --out results/train_lm  # the byte language model
    torchrun --nproc-per-node 2 -m masked_torch.analysis train --out /tmp/ddp

Bad flags (also a flag of images with ``--data stdlib`` or one of documents without it), a class folder that cannot
be used (one class, an empty class, an image outside a class folder), a
missing ``--weights`` file or an ``--out`` that cannot take the results: exit status 2 and one line on stderr,
before any image is drawn or decoded. Ctrl-C: exit status 130; the checkpoints of every completed epoch are kept
and the same command resumes from them.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

from .cli_parts import PROG, _error, _HelpFormatter, _integer, _Parser, _positive, _stacks, _write_phase

_DESCRIPTION = """\
Train one classifier three ways -- conv (the plain network on the padded batch), pconv (partial
convolutions), mconv (masked convolutions) -- from the same initial weights on the same padded
batches, and record every epoch: learning curves, per-channel activation statistics on a probe set,
dead ReLU channels, gradient norms, and whether a prediction changes with what the image is batched with.
--data stdlib does the same with a causal next-byte language model (--model bytelm) on the functions of
Python's standard library, padded on the right to the longest in the batch."""

_EPILOG = f"""\
examples:
  {PROG} train --out results/train            # the README run (make figures)
  {PROG} train --data ~/pets --epochs 20 --seeds 0 --out /tmp/pets
  {PROG} train --weights results/train/checkpoints/mconv_seed0.pt --seeds 0 --out /tmp/finetune
  {PROG} train --data stdlib --out results/train_lm    # the language model (make figures)

Writes train_curves.parquet, train_stats.parquet, train_grads.parquet, train_sensitivity.parquet and
figures/train_*.png under --out, and checkpoints/{{conv,pconv,mconv}}_seed{{S}}.pt (loadable with --weights).
An interrupted run resumes from its last completed epoch: run the same command again (--fresh starts over)."""


def _number(name: str, what: str, ok):
    """An argparse type: a float for which ``ok(value)`` holds (NaN never does), else one line saying ``what``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if value != value or not ok(value):
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}")
        return value
    return parse


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds takes distinct non-negative integers joined by commas "
                                         f"(0,1,2), got {text!r}")
    return seeds


def build_train_parser() -> argparse.ArgumentParser:
    from .choices import STACKS

    p = _Parser(prog=f"{PROG} train", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=_HelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", default="shapes", metavar="WHAT",
                      help="'shapes' (generated: bars and disks of one class per image, sides from --min-side to "
                           "--max-side; the label does not depend on the size), a folder with one sub-folder of "
                           "images per class, or 'stdlib': the functions of this Python's standard library as "
                           "byte sequences, for the causal next-byte language model")
    data.add_argument("--num-images", type=_integer("--num-images", 12), default=None, metavar="N",
                      help=f"shapes images to generate (default: {_IMAGE_DEFAULTS['num_images']}; a folder: all of "
                           f"its images are used)")
    data.add_argument("--min-side", type=_integer("--min-side", 8), default=None, metavar="PIXELS",
                      help=f"shapes: smallest image side (default: {_IMAGE_DEFAULTS['min_side']})")
    data.add_argument("--max-side", type=_integer("--max-side", 8), default=None, metavar="PIXELS",
                      help=f"shapes: largest image side; a folder: larger images are shrunk to this (default: "
                           f"{_IMAGE_DEFAULTS['max_side']})")
    data.add_argument("--num-docs", type=_integer("--num-docs", 4), default=None, metavar="N",
                      help=f"stdlib: documents (functions, at most 4 per source file; default: "
                           f"{_TEXT_DEFAULTS['num_docs']})")
    data.add_argument("--min-bytes", type=_integer("--min-bytes", 2), default=None, metavar="BYTES",
                      help=f"stdlib: shortest document (default: {_TEXT_DEFAULTS['min_bytes']})")
    data.add_argument("--max-bytes", type=_integer("--max-bytes", 2), default=None, metavar="BYTES",
                      help=f"stdlib: longest document; a longer function keeps its whole lines up to this "
                           f"(default: {_TEXT_DEFAULTS['max_bytes']})")
    data.add_argument("--holdout", type=_number("--holdout", "a number between 0 and 1", lambda v: 0 < v < 1),
                      default=0.25, metavar="FRACTION",
                      help="share of each class (stdlib: of the documents) held out (by name hash: the same split "
                           "for every seed)")
    data.add_argument("--strict", action="store_true", help="a folder: an unreadable image file is an error, not a "
                                                            "skip")

    net = p.add_argument_group("network and training")
    net.add_argument("--model", choices=("small", "stack", "resnet18", "unet", "bytelm"), default=None,
                     help="small (the default for images): 3 convs + BN + ReLU and a global-average-pool + linear "
                          "head; or one of the suite's models with a classification head; bytelm (--data stdlib "
                          "only, its default): one-hot bytes, a 1x1 conv, --depth residual blocks of causal dilated "
                          "conv + BN + ReLU, a 1x1 conv to 256 logits per position")
    net.add_argument("--width", type=_positive("--width"), default=None, metavar="N",
                     help=f"channels of the first level (doubled deeper; bytelm: of every block) (default: "
                          f"{_IMAGE_DEFAULTS['width']}; stdlib: {_TEXT_DEFAULTS['width']})")
    net.add_argument("--depth", type=_positive("--depth"), default=None, metavar="N",
                     help=f"levels of stack / unet; bytelm: causal blocks, dilations 1, 2, 4, ... (default: "
                          f"{_IMAGE_DEFAULTS['depth']}; stdlib: {_TEXT_DEFAULTS['depth']})")
    net.add_argument("--weights", default=None, metavar="PATH",
                     help="start from this checkpoint of the same classifier (e.g. checkpoints/mconv_seed0.pt of "
                          "an earlier run); default: seeded init")
    net.add_argument("--stacks", type=_stacks, default=",".join(STACKS), metavar="KINDS",
                     help=f"comma-separated kinds to train, a subset of {','.join(STACKS)}")
    net.add_argument("--seeds", type=_seeds, default=(0, 1, 2), metavar="S1,S2",
                     help="training seeds (initial weights, data order, batchings), comma-separated "
                          "(default: 0,1,2)")
    net.add_argument("--epochs", type=_positive("--epochs"), default=None, metavar="N",
                     help=f"(default: {_IMAGE_DEFAULTS['epochs']}; stdlib: {_TEXT_DEFAULTS['epochs']})")
    net.add_argument("--batch-size", type=_integer("--batch-size", 2), default=None, metavar="N",
                     help=f"images (documents) per padded batch (default: {_IMAGE_DEFAULTS['batch_size']}; "
                          f"stdlib: {_TEXT_DEFAULTS['batch_size']})")
    net.add_argument("--lr", type=_number("--lr", "a positive number", lambda v: 0 < v < math.inf), default=None,
                     help=f"Adam's step size, cosine-decayed to 0 (default: {_IMAGE_DEFAULTS['lr']}; stdlib: "
                          f"{_TEXT_DEFAULTS['lr']})")
    net.add_argument("--weight-decay", default=0.0,
                     type=_number("--weight-decay", "a non-negative number", lambda v: 0 <= v < math.inf))
    net.add_argument("--probe-images", type=_positive("--probe-images"), default=16, metavar="N",
                     help="held-out images (documents) whose activation statistics are recorded every epoch")
    net.add_argument("--sensitivity-every", type=_integer("--sensitivity-every", 0), default=2, metavar="N",
                     help="batch-composition sensitivity every N epochs (and before training and at the end; 0: "
                          "only those)")
    net.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="weights and images")

    out = p.add_argument_group("output")
    out.add_argument("--out", default=None, metavar="DIR",
                     help=f"output folder, created if missing (default: {_IMAGE_DEFAULTS['out']}; stdlib: "
                          f"{_TEXT_DEFAULTS['out']})")
    out.add_argument("--fresh", action="store_true", help="ignore the resume checkpoints in --out and start over")
    out.add_argument("--dpi", type=_positive("--dpi"), default=120, help="resolution of the PNG figures")
    out.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    out.add_argument("--threads", type=_positive("--threads"), default=None, metavar="N",
                     help="torch CPU threads (default 1)")
    return p


#: Defaults that depend on the data: images (shapes or a folder), and the language model's documents (stdlib).
_IMAGE_DEFAULTS = dict(num_images=240, min_side=24, max_side=160, model="small", width=8, depth=3, epochs=8,
                       batch_size=16, lr=0.01, out="results/train")
_TEXT_DEFAULTS = dict(num_docs=240, min_bytes=32, max_bytes=512, model="bytelm", width=32, depth=4, epochs=4,
                      batch_size=8, lr=0.02, out="results/train_lm")
_IMAGE_ONLY = ("num_images", "min_side", "max_side", "strict")
_TEXT_ONLY = ("num_docs", "min_bytes", "max_bytes")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _resolve(args, parser) -> None:
    """Refuse a flag that does not apply to the data, or a model that does not fit it (one line); then fill in
    the defaults of the data."""
    text = args.data == "stdlib"
    given = [k for k in (_IMAGE_ONLY if text else _TEXT_ONLY) if getattr(args, k) not in (None, False)]
    if given:
        parser.error(f"{_flag(given[0])} is for {'images' if text else '--data stdlib'}, not "
                     f"{'--data stdlib' if text else 'images'}")
    if text and args.model not in (None, "bytelm"):
        parser.error(f"--data stdlib trains the byte language model (--model bytelm), not --model {args.model}")
    if not text and args.model == "bytelm":
        parser.error("--model bytelm is the language model of --data stdlib; images need small, stack, resnet18 "
                     "or unet")
    for key, value in (_TEXT_DEFAULTS if text else _IMAGE_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in (_IMAGE_ONLY if text else _TEXT_ONLY):
        if getattr(args, key) is None:
            setattr(args, key, (_IMAGE_DEFAULTS if key in _IMAGE_DEFAULTS else _TEXT_DEFAULTS)[key])


def _check(args, parser) -> None:
    """Everything that can be refused without drawing or decoding an image: one line, exit status 2."""
    from .data import DataError

    _resolve(args, parser)
    if args.min_bytes > args.max_bytes:
        parser.error(f"--min-bytes {args.min_bytes} is larger than --max-bytes {args.max_bytes}")
    if args.min_side > args.max_side:
        parser.error(f"--min-side {args.min_side} is larger than --max-side {args.max_side}")
    if args.weights is not None and not os.path.isfile(os.path.expanduser(args.weights)):
        parser.error(f"--weights: no such file {args.weights!r}")
    if args.data == "stdlib":
        pass  # the documents are found when the run starts (a second): too few is refused then, in one line
    elif args.data == "shapes":
        import numpy as np

        from .train_data import SHAPES, shape_label

        counts = np.bincount([shape_label(0, i) for i in range(args.num_images)], minlength=len(SHAPES))
        if counts.min() < 2:
            parser.error(f"--num-images {args.num_images}: shapes class {SHAPES[int(counts.argmin())]!r} gets "
                         f"{int(counts.min())} image(s); every class needs at least 2")
    else:
        from .train_data import folder_classes

        try:
            folder_classes(os.path.expanduser(args.data))
        except DataError as exc:
            parser.error(str(exc))
    from .files import out_problem

    problem = out_problem(os.path.expanduser(args.out)) if os.environ.get("RANK", "0") == "0" else None
    if problem:
        parser.error(f"--out: {problem}")


def train_main(argv) -> int:
    start = time.perf_counter()
    parser = build_train_parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    _check(args, parser)
    from ._extras import MissingExtraError, require

    try:
        require("pandas", "pyarrow", "matplotlib", "seaborn", "tqdm", "skimage")
    except MissingExtraError as exc:
        return _error(prog, str(exc))
    import matplotlib

    matplotlib.use("Agg")
    from .data import DataError
    from .distributed import init_from_env
    from .files import safe_text
    from .settings import SettingsError
    from .train_loop import TrainSettings, resume_path, run_training, write_training

    settings = TrainSettings(
        data=args.data if args.data in ("shapes", "stdlib") else os.path.expanduser(args.data),
        num_images=args.num_images,
        min_side=args.min_side, max_side=args.max_side, num_docs=args.num_docs, min_bytes=args.min_bytes,
        max_bytes=args.max_bytes, holdout=args.holdout, model=args.model, width=args.width,
        depth=args.depth, weights=None if args.weights is None else os.path.expanduser(args.weights),
        stacks=args.stacks, seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, probe_images=args.probe_images, sensitivity_every=args.sensitivity_every,
        dtype=args.dtype, strict=args.strict, threads=args.threads)
    if args.model not in ("small", "bytelm"):
        from .models import check_parameters

        try:
            check_parameters(args.model, depth=args.depth, width=args.width)
        except SettingsError as exc:
            return _error(prog, str(exc))
    rank, world = init_from_env("cpu")
    out = os.path.expanduser(args.out)
    try:
        results = run_training(settings, out, progress=not args.quiet and rank == 0, fresh=args.fresh)
    except (DataError, SettingsError, ValueError) as exc:
        return _error(prog, safe_text(str(exc)))
    except KeyboardInterrupt:
        done = [s for s in settings.seeds if os.path.exists(resume_path(out, s))]
        print(f"{prog}: interrupted; checkpoints of the completed epochs are in {safe_text(out)}/checkpoints "
              f"(seeds {', '.join(map(str, done)) or 'none'}): run the same command again to resume",
              file=sys.stderr)
        return 130
    status, written = _write_phase(prog, out, lambda: write_training(results, out, dpi=args.dpi), rank)
    if status is not None:
        return status
    if not args.quiet and rank == 0:
        curves = results.frames["curves"]
        column = "heldout_bpb" if settings.text else "heldout_acc"
        last = curves[curves["epoch"] == curves["epoch"].max()].groupby("stack")[column]
        spread = ", ".join(f"{k} {last.mean()[k]:.3f} ({last.min()[k]:.3f}-{last.max()[k]:.3f})"
                           for k in settings.stacks)
        what = (f"documents of Python {results.extra['python']}'s standard library" if settings.text else
                f"images, {len(results.classes)} classes")
        procs = f", {world} processes" if world > 1 else ""
        print(f"{results.num_train} training / {results.num_heldout} held-out {what}, {len(settings.seeds)} seed(s) "
              f"x {settings.epochs} epochs{procs}: {results.seconds:.1f} s, total {time.perf_counter() - start:.1f} s")
        if settings.text:
            print(f"  held-out bits per byte at the end (mean, seed range): {spread}; unigram baseline "
                  f"{results.extra['unigram_bpb']:.3f}, uniform 8")
        else:
            print(f"  held-out accuracy at the end (mean, seed range): {spread}")
        for path in written:
            print(f"  wrote {safe_text(str(path))} ({os.path.getsize(path) / 1024:.0f} KB)")
    return 0
