"""The suite's command line: what plain, partial and masked convolutions do to the activations of a network on
padded batches of differently sized images.

    masked-torch-activations --out results                  # the README figures (make figures)
    python -m masked_torch.analysis --out /tmp/run --data synthetic --depth 2 --num-images 4
    masked-torch-activations --out /tmp/r18 --model resnet18 --data ~/pictures --workers 4 --bucket
    masked-torch-activations sweep --out /tmp/sweep --vary depth=2,3,4 --set data=synthetic

(``python visualize_activations_2d.py`` in a clone is the same command.) Builds the conv / pconv / mconv
variants of one plain model (:mod:`~masked_torch.analysis.models`, identical weights), streams the images
(:mod:`~masked_torch.analysis.loader`), records per-channel statistics over the valid positions and compares
every image in its batch with the same image run alone (:mod:`~masked_torch.analysis.run`). Writes, under
``--out``, the parquet files and figures of :func:`~masked_torch.analysis.run.write_outputs`.

Bad flags, a missing extra, unusable images, a depth too deep for the images or an ``--out`` that cannot take
the results: exit status 2 and one line on stderr, before the experiment runs. The run's files are replaced
all or nothing (:class:`~masked_torch.analysis.files.StagedFiles`), so an interrupted run (exit status 130)
keeps the previous results, or, interrupted while its files are swapped in, finishes writing its own.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .cli_parts import (PROG, _error, _HelpFormatter, _integer, _nothing_written, _Parser, _positive,  # noqa: F401
                        _stacks, _write_phase)

_USAGE = f"""%(prog)s [options]
       {PROG} sweep [sweep options]
       {PROG} train [train options]
       torchrun --nproc-per-node N {PROG.replace("python -m", "-m")} [options]"""

_EPILOG = f"""\
subcommand:
  sweep                       run a grid of settings (--vary NAME=V1,V2, a TOML --grid) in worker
                              processes into one tidy parquet; its options: sweep --help
  train                       train conv / pconv / mconv from the same weights on the same padded
                              batches and record every epoch; its options: train --help

examples:
  {PROG} --out results               # the README figures (make figures)
  {PROG} --out /tmp/run --data synthetic --depth 2 --num-images 4
  {PROG} --out /tmp/seed --preset seed     # the seed README's experiment
  {PROG} --out /tmp/mine --data ~/pictures --max-side 384
  {PROG} sweep --out /tmp/sweep --vary depth=2,3,4 --set data=synthetic

Writes activation_stats.parquet, padding_sensitivity.parquet and figures/*.png under --out.
Exit status 2 with one line on stderr, before any work, for a bad flag, unusable images, a depth
too deep for the images or an --out that cannot take the results; 130 when interrupted (the previous
results are kept whole, or, interrupted while writing, this run's are written whole)."""

_SWEEP_DESCRIPTION = f"""\
Run many configurations (a grid of settings) in worker processes into one tidy parquet.
A setting is an option of a single run ({PROG} --help),
without the dashes and with _ for -: model, weights, data, depth, num_images, batch_size,
bucket, mask, seed, bias, activation, init, max_side, normalize, workers, strict, device,
threads, and stacks (names joined by +: stacks=conv+mconv)."""


def build_parser() -> argparse.ArgumentParser:
    # no torch here: --help and bad flags answer at once (the names come from the torch-free masked_torch.analysis.choices)
    from masked_torch.analysis.choices import ACTIVATION_NAMES, INITS, MASKS, MODEL_NAMES, NORMALIZE, STACKS

    p = _Parser(
        prog=PROG,
        usage=_USAGE,
        description="Activation statistics of the conv / pconv / mconv variants of a network\n"
                    "on padded batches of differently sized images.",
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    data = p.add_argument_group("images")
    data.add_argument("--data", default="photos", metavar="WHAT",
                      help="'synthetic' (N(0,1) noise of random sizes), 'photos' (bundled scikit-image/matplotlib "
                           "photos) or a folder (read recursively, e.g. class sub-folders) or file of your own "
                           "images")
    data.add_argument("--num-images", type=_positive("--num-images"), default=None, metavar="N",
                      help="images to use (default: every photo / every image in the folder; 8 synthetic)")
    data.add_argument("--max-side", type=_positive("--max-side"), default=256, metavar="PIXELS",
                      help="shrink images so that their longer side is at most this (synthetic: largest side)")
    data.add_argument("--normalize", choices=NORMALIZE, default="image",
                      help="standardise each image on its own, all images with one per-channel mean/std, or not")
    data.add_argument("--batch-size", type=_positive("--batch-size"), default=4, metavar="N",
                      help="images per padded batch")
    data.add_argument("--bucket", action="store_true",
                      help="batch images of similar size together (less padding) instead of in file order")
    data.add_argument("--mask", choices=MASKS, default="padding",
                      help="padding: every image valid everywhere, only the batch padding masked; holes: also "
                           "seeded free-form holes inside each image (inpainting)")
    data.add_argument("--workers", type=_integer("--workers", 0), default=0, metavar="N",
                      help="DataLoader worker processes that decode images (0: decode in the main process)")
    data.add_argument("--strict", action="store_true",
                      help="an unreadable image file is an error (exit 2) instead of a warning and a skip")

    net = p.add_argument_group("network")
    net.add_argument("--model", choices=MODEL_NAMES, default="stack",
                     help="the plain network: stack (the seed's unshuffle + conv levels), resnet18 (a ResNet-18 "
                          "classifier) or unet (a U-Net); its conv / pconv / mconv variants share its weights")
    net.add_argument("--weights", default=None, metavar="PATH",
                     help="a checkpoint (state_dict) for the plain model, loaded strict (default: seeded init)")
    net.add_argument("--preset", choices=("seed",), default=None,
                     help="seed: the seed README's experiment exactly (one 256x256 N(0,1) image with the seed's "
                          "3-channel mask with holes, depth 8, no bias, no activation, torch.manual_seed(1337)); "
                          "it fixes the image and stack options, --out, --stacks, --dpi, --device, --threads apply")
    net.add_argument("--depth", type=_positive("--depth"), default=4, metavar="N",
                     help="levels of the stack or the U-Net (the ResNet has its fixed 5)")
    net.add_argument("--stacks", type=_stacks, default=",".join(STACKS), metavar="NAMES",
                     help=f"comma-separated stacks to run, a subset of {','.join(STACKS)}")
    bias = net.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True)
    bias.help = "convolutions with bias or without (default: --bias)"  # set after: 3.11 appends its own
    net.add_argument("--activation", choices=ACTIVATION_NAMES, default="relu", help="activation after each conv")
    net.add_argument("--init", choices=INITS, default="default",
                     help="weight init: default = nn.Conv2d's own (the default), kaiming = He normal, "
                          "xavier = Glorot normal")
    net.add_argument("--seed", type=_integer("seed", 0), default=0, help="seed of the weights and of the synthetic images")

    out = p.add_argument_group("output")
    out.add_argument("--out", default="results", metavar="DIR", help="output folder (created if missing)")
    out.add_argument("--figure-image", default=None, metavar="NAME",
                     help="image (name) for the activation-map figure (default: the most padded image of the "
                          "first batch)")
    out.add_argument("--dpi", type=_positive("--dpi"), default=120, help="resolution of the PNG figures")
    out.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    run = p.add_argument_group("compute")
    run.add_argument("--device", default="cpu",
                     help="torch device for layers, recorder and data: cpu, cuda or cuda:N (where CUDA is "
                          "present; under torchrun give cuda, each process takes its LOCAL_RANK's GPU)")
    run.add_argument("--threads", type=_positive("--threads"), default=None, metavar="N",
                     help="torch CPU threads (default 1: the tensors are small, and more threads than free "
                          "cores slow a run down badly on a busy machine)")
    return p


def build_sweep_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} sweep",
        description=_SWEEP_DESCRIPTION,
        epilog=f"example:\n  {PROG} sweep --out /tmp/sweep --vary depth=2,3,4 --vary bias=true,false \\\n"
               "      --set data=synthetic --set num_images=16 --jobs 2",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--grid", default=None, metavar="FILE",
                   help="TOML file with [grid] (lists of values) and [fixed] tables")
    p.add_argument("--vary", action="append", default=[], metavar="NAME=V1,V2",
                   help="a setting and its values (repeatable; adds to --grid), e.g. --vary depth=2,3,4")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="fixed",
                   help="a setting for every configuration (repeatable), e.g. --set data=synthetic")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (required); configurations already there are skipped")
    p.add_argument("--jobs", type=_positive("--jobs"), default=1, metavar="N", help="worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def sweep_main(argv) -> int:
    parser = build_sweep_parser()
    args = parser.parse_args(argv)
    from masked_torch.analysis.sweep import SweepError, expand_grid, load_grid, parse_vary, run_sweep

    prog = parser.prog
    from masked_torch.analysis.files import out_problem

    problem = out_problem(os.path.expanduser(args.out))
    if problem:
        parser.error(f"--out: {problem}")
    try:
        grid, fixed = load_grid(args.grid) if args.grid else ({}, {})
        grid.update(parse_vary(args.vary))
        for item in args.fixed:
            name, sep, value = item.partition("=")
            if not sep:
                raise SweepError(f"--set takes NAME=VALUE, got {item!r}")
            fixed[name.strip()] = value.strip()
        if not grid:
            raise SweepError("nothing to sweep: give --grid FILE and/or --vary NAME=V1,V2")
        configs = expand_grid(grid, fixed)
        result = run_sweep(configs, args.out, jobs=args.jobs, progress=not args.quiet)
    except SweepError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished configurations in {args.out}/runs are kept", file=sys.stderr)
        return 130
    for failure in result.failed:
        settings = ", ".join(f"{k}={v}" for k, v in failure["settings"].items() if v is not None)
        print(f"{prog}: configuration {failure['config']} failed: {failure['error']} [{settings}]",
              file=sys.stderr)
    if not args.quiet:
        print(f"{len(configs)} configurations: {len(result.ran)} ran, {len(result.skipped)} already done, "
              f"{len(result.failed)} failed, {result.seconds:.1f} s with --jobs {args.jobs}")
        print(f"  {args.out}/sweep_stats.parquet: {len(result.stats)} rows")
    return 1 if result.failed else 0


def _one_line_warnings(prog: str) -> None:
    """A skipped image file is one line on stderr (``prog: warning: skipped image PATH: reason``), not the
    two lines (source file and line) of Python's default warning format."""
    import warnings

    from masked_torch.analysis.data import SkippedImageWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SkippedImageWarning):
            print(f"{prog}: warning: {message}", file=sys.stderr if file is None else file)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


_PRESET_FIXES = ("data", "num_images", "max_side", "normalize", "batch_size", "bucket", "mask", "workers", "strict",
                 "model", "weights", "depth", "bias", "activation", "init", "seed", "figure_image")


def main(argv=None) -> int:
    start = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:
        return sweep_main(argv[1:])
    if argv[:1] == ["train"]:
        from .train_cli import train_main

        return train_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    if args.data not in ("synthetic", "photos") and not os.path.exists(os.path.expanduser(args.data)):
        parser.error(f"--data: {args.data!r} is not 'synthetic', 'photos' or an existing folder or image file")
    if args.weights is not None and not os.path.isfile(os.path.expanduser(args.weights)):
        parser.error(f"--weights: no such file {args.weights!r}")
    if args.preset is not None:  # the preset fixes these: a flag that would be ignored is refused instead
        fixed = [a.option_strings[0] for a in parser._actions if a.dest in _PRESET_FIXES
                 and getattr(args, a.dest) != a.default]
        if fixed:
            parser.error(f"--preset {args.preset} fixes the images and the network; drop {', '.join(fixed)}")
    from masked_torch.analysis.files import out_problem, safe_text
    from masked_torch.analysis.settings import Settings, SettingsError

    try:
        settings = Settings(
            model=args.model, weights=None if args.weights is None else os.path.expanduser(args.weights),
            data=os.path.expanduser(args.data) if args.data not in ("synthetic", "photos") else args.data,
            depth=args.depth, num_images=args.num_images, batch_size=args.batch_size, bucket=args.bucket,
            mask=args.mask, seed=args.seed, bias=args.bias, activation=args.activation, init=args.init,
            stacks=args.stacks, max_side=args.max_side, normalize=args.normalize,
            figure_image=args.figure_image and safe_text(args.figure_image),  # named as the images are
            workers=args.workers, strict=args.strict, threads=args.threads, device=args.device,
        )
    except SettingsError as exc:
        parser.error(str(exc))

    # before any work: a --out that cannot take the results is one line now, not after the experiment
    # (under torchrun only rank 0 writes)
    problem = out_problem(os.path.expanduser(args.out)) if os.environ.get("RANK", "0") == "0" else None
    if problem:
        parser.error(f"--out: {problem}")
    from masked_torch.analysis._extras import MissingExtraError, require

    try:
        require("pandas", "pyarrow", "matplotlib", "seaborn", "tqdm", "skimage")
    except MissingExtraError as exc:
        return _error(prog, str(exc))
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window

    import torch

    from masked_torch.analysis.data import DataError
    from masked_torch.analysis.distributed import init_from_env
    from masked_torch.analysis.run import run_experiment, write_outputs
    from masked_torch.analysis.seed import run_seed, seed_settings

    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: {args.device!r} is not a torch device (cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    # under torchrun: join the process group (gloo on CPU, nccl on CUDA); batch i goes to rank i % world
    if device.type == "cuda" and device.index is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error("--device: under torchrun give 'cuda' without an index; each process takes the GPU of its "
                     "LOCAL_RANK")
    rank, world = init_from_env(args.device)
    _one_line_warnings(prog)
    if device.type == "cuda" and world > 1:
        settings = settings.replace(device=f"cuda:{torch.cuda.current_device()}")
    if args.preset == "seed":
        settings = seed_settings(stacks=args.stacks, threads=args.threads, device=settings.device)
    try:
        if args.preset == "seed":
            results = run_seed(settings)
        else:
            results = run_experiment(settings, progress=not args.quiet and rank == 0)
    except (DataError, SettingsError) as exc:
        return _error(prog, str(exc))
    except OSError as exc:  # reading, not writing: nothing has been written yet
        return _error(prog, f"{safe_text(str(exc))}; nothing was written")
    except KeyboardInterrupt:
        return _nothing_written(prog, args.out)
    status, written = _write_phase(prog, args.out, lambda: write_outputs(results, args.out, dpi=args.dpi), rank)
    if status is not None:
        return status
    if not args.quiet and rank == 0:
        total = time.perf_counter() - start
        procs = f", {world} processes" if world > 1 else ""
        skipped = f", {len(results.skipped)} unreadable file(s) skipped" if results.skipped else ""
        padding = ("" if results.padding_fraction is None
                   else f", {100 * results.padding_fraction:.1f}% of the batch canvases is padding"
                        f"{' (bucketed)' if settings.bucket else ''}")
        print(f"{results.num_images} images{skipped}{padding}; model {settings.model}, stacks "
              f"{','.join(settings.stacks)}{procs}: experiment {results.seconds:.1f} s, total {total:.1f} s")
        for path in written:
            print(f"  wrote {safe_text(str(path))} ({os.path.getsize(path) / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
