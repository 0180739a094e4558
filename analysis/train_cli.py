"""``train``: the training experiment's subcommand of the suite's command line (:mod:`~masked_torch.analysis.cli`).

    python -m masked_torch.analysis train --out results/train            # the README run (make figures)
    python -m masked_torch.analysis train --data ~/pets --epochs 20 --out /tmp/pets
    torchrun --nproc-per-node 2 -m masked_torch.analysis train --out /tmp/ddp

Bad flags, a class folder that cannot be used (one class, an empty class, an image outside a class folder), a
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
dead ReLU channels, gradient norms, and whether a prediction changes with what the image is batched with."""

_EPILOG = f"""\
examples:
  {PROG} train --out results/train            # the README run (make figures)
  {PROG} train --data ~/pets --epochs 20 --seeds 0 --out /tmp/pets
  {PROG} train --weights results/train/checkpoints/mconv_seed0.pt --seeds 0 --out /tmp/finetune

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
    data = p.add_argument_group("images")
    data.add_argument("--data", default="shapes", metavar="WHAT",
                      help="'shapes' (generated: bars and disks of one class per image, sides from --min-side to "
                           "--max-side; the label does not depend on the size) or a folder with one sub-folder of "
                           "images per class")
    data.add_argument("--num-images", type=_integer("--num-images", 12), default=240, metavar="N",
                      help="shapes images to generate (a folder: all of its images are used)")
    data.add_argument("--min-side", type=_integer("--min-side", 8), default=24, metavar="PIXELS",
                      help="shapes: smallest image side")
    data.add_argument("--max-side", type=_integer("--max-side", 8), default=160, metavar="PIXELS",
                      help="shapes: largest image side; a folder: larger images are shrunk to this")
    data.add_argument("--holdout", type=_number("--holdout", "a number between 0 and 1", lambda v: 0 < v < 1),
                      default=0.25, metavar="FRACTION",
                      help="share of each class held out (by name hash: the same split for every seed)")
    data.add_argument("--strict", action="store_true", help="an unreadable image file is an error, not a skip")

    net = p.add_argument_group("network and training")
    net.add_argument("--model", choices=("small", "stack", "resnet18", "unet"), default="small",
                     help="small: 3 convs + BN + ReLU and a global-average-pool + linear head; or one of the "
                          "suite's models with a classification head")
    net.add_argument("--width", type=_positive("--width"), default=8, metavar="N",
                     help="channels of the first level (doubled deeper)")
    net.add_argument("--depth", type=_positive("--depth"), default=3, metavar="N", help="levels of stack / unet")
    net.add_argument("--weights", default=None, metavar="PATH",
                     help="start from this checkpoint of the same classifier (e.g. checkpoints/mconv_seed0.pt of "
                          "an earlier run); default: seeded init")
    net.add_argument("--stacks", type=_stacks, default=",".join(STACKS), metavar="KINDS",
                     help=f"comma-separated kinds to train, a subset of {','.join(STACKS)}")
    net.add_argument("--seeds", type=_seeds, default=(0, 1, 2), metavar="S1,S2",
                     help="training seeds (initial weights, data order, batchings), comma-separated "
                          "(default: 0,1,2)")
    net.add_argument("--epochs", type=_positive("--epochs"), default=8, metavar="N")
    net.add_argument("--batch-size", type=_integer("--batch-size", 2), default=16, metavar="N",
                     help="images per padded batch")
    net.add_argument("--lr", type=_number("--lr", "a positive number", lambda v: 0 < v < math.inf), default=0.01,
                     help="Adam's step size, cosine-decayed to 0")
    net.add_argument("--weight-decay", default=0.0,
                     type=_number("--weight-decay", "a non-negative number", lambda v: 0 <= v < math.inf))
    net.add_argument("--probe-images", type=_positive("--probe-images"), default=16, metavar="N",
                     help="held-out images whose activation statistics are recorded every epoch")
    net.add_argument("--sensitivity-every", type=_integer("--sensitivity-every", 0), default=2, metavar="N",
                     help="batch-composition sensitivity every N epochs (and before training and at the end; 0: "
                          "only those)")
    net.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="weights and images")

    out = p.add_argument_group("output")
    out.add_argument("--out", default="results/train", metavar="DIR", help="output folder (created if missing)")
    out.add_argument("--fresh", action="store_true", help="ignore the resume checkpoints in --out and start over")
    out.add_argument("--dpi", type=_positive("--dpi"), default=120, help="resolution of the PNG figures")
    out.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    out.add_argument("--threads", type=_positive("--threads"), default=None, metavar="N",
                     help="torch CPU threads (default 1)")
    return p


def _check(args, parser) -> None:
    """Everything that can be refused without drawing or decoding an image: one line, exit status 2."""
    from .data import DataError

    if args.min_side > args.max_side:
        parser.error(f"--min-side {args.min_side} is larger than --max-side {args.max_side}")
    if args.weights is not None and not os.path.isfile(os.path.expanduser(args.weights)):
        parser.error(f"--weights: no such file {args.weights!r}")
    if args.data == "shapes":
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
        data=args.data if args.data == "shapes" else os.path.expanduser(args.data), num_images=args.num_images,
        min_side=args.min_side, max_side=args.max_side, holdout=args.holdout, model=args.model, width=args.width,
        depth=args.depth, weights=None if args.weights is None else os.path.expanduser(args.weights),
        stacks=args.stacks, seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, probe_images=args.probe_images, sensitivity_every=args.sensitivity_every,
        dtype=args.dtype, strict=args.strict, threads=args.threads)
    if args.model != "small":
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
        last = curves[curves["epoch"] == curves["epoch"].max()].groupby("stack")["heldout_acc"]
        accs = ", ".join(f"{k} {last.mean()[k]:.3f} ({last.min()[k]:.3f}-{last.max()[k]:.3f})"
                         for k in settings.stacks)
        procs = f", {world} processes" if world > 1 else ""
        print(f"{results.num_train} training / {results.num_heldout} held-out images, {len(results.classes)} classes, "
              f"{len(settings.seeds)} seed(s) x {settings.epochs} epochs{procs}: {results.seconds:.1f} s, total "
              f"{time.perf_counter() - start:.1f} s")
        print(f"  held-out accuracy at the end (mean, seed range): {accs}")
        for path in written:
            print(f"  wrote {safe_text(str(path))} ({os.path.getsize(path) / 1024:.0f} KB)")
    return 0
