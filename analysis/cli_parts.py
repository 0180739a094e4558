"""Pieces of the suite's command line that its subcommands share (:mod:`~masked_torch.analysis.cli`,
:mod:`~masked_torch.analysis.train_cli`): the one-line argparse error, the help formatter, typed arguments and the
name the user called the command by. No torch here: ``--help`` and bad flags answer at once."""
from __future__ import annotations

import argparse
import os
import sys


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits with status 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each default said once, as it would be typed: ``(default: X)`` is appended to an option's help unless
    the help already says what the default is (the word "default"), the option is off by default (a plain
    flag), or it has no default (``None``, an empty list)."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=min(100, _terminal_width()))

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if ("default" in text.lower() or not action.option_strings or d is None or d is False
                or d is argparse.SUPPRESS or d == []):
            return text
        return f"{text} (default: %(default)s)"


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns - 2


def _integer(name: str, minimum: int):
    """An argparse type: an integer of at least ``minimum`` (1: positive, 0: non-negative)."""
    what = "a positive integer" if minimum == 1 else "a non-negative integer"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}")
        return value
    return parse


def _positive(name: str):
    return _integer(name, 1)


def _stacks(text: str) -> tuple[str, ...]:
    from masked_torch.analysis.choices import STACKS

    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in STACKS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"--stacks takes a comma-separated subset of {','.join(STACKS)}, got {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--stacks lists a stack twice: {text!r}")
    return names


def _program_name() -> str:
    """How the user called the command (for usage lines): the console script, ``python -m`` or the script."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name == "__main__.py":
        return "python -m masked_torch.analysis"
    return name if name in ("masked-torch-activations", "visualize_activations_2d.py") else "visualize_activations_2d.py"


PROG = _program_name()


def _error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message.splitlines()[0] if message else 'unknown error'}", file=sys.stderr)
    return 2


def _nothing_written(prog: str, out) -> int:
    """Ctrl-C before the renames: one line, exit status 130."""
    from masked_torch.analysis.files import safe_text

    print(f"{prog}: interrupted; nothing was written, files already in {safe_text(str(out))} were left as they were",
          file=sys.stderr)
    return 130


def _write_phase(prog: str, out, write, rank: int):
    """``(exit status or None, paths written)``: rank 0 runs ``write()`` (its files all or nothing), then every rank
    leaves the process group. A write error, Ctrl-C during the renames (the run's files are then complete) and Ctrl-C
    before them (nothing was written) are each one line on stderr."""
    from masked_torch.analysis.distributed import shutdown
    from masked_torch.analysis.files import InterruptedAfterWriting, safe_text

    try:
        # rank 0 writes the parquet files and the figures; the other ranks write nothing
        written = write() if rank == 0 else []
        shutdown()
    except OSError as exc:
        return _error(prog, f"cannot write to {safe_text(str(out))}: {exc.strerror or exc}; files already there "
                            f"were left as they were"), []
    except InterruptedAfterWriting:
        print(f"{prog}: interrupted after the results were written; {safe_text(str(out))} holds this run's "
              f"complete results", file=sys.stderr)
        return 130, []
    except KeyboardInterrupt:
        return _nothing_written(prog, out), []
    return None, written
