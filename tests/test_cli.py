"""visualize_activations_2d.py: a small run end to end (subprocess, the venv's python), bad flags, unreadable
images, and the atomic writing that keeps previous results when a run is interrupted."""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the script lives at the repository root
    sys.path.insert(0, str(ROOT))

from masked_torch.analysis import cli  # noqa: E402
from masked_torch.analysis import run as run_mod  # noqa: E402
from masked_torch.analysis.run import METADATA_KEY, PADDING_FILE, STATS_FILE, read_settings, write_parquet_atomic  # noqa: E402

SCRIPT = ROOT / "visualize_activations_2d.py"
_VENV_PY = ROOT / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PY) if _VENV_PY.exists() else sys.executable  # the project's venv python
FIGURES = ("activation_maps.png", "channel_stats.png", "padding_sensitivity.png")


def _run(*args, timeout=240):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([PYTHON, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = _run("--out", str(out), "--data", "synthetic", "--depth", "2", "--num-images", "4", "--batch-size", "3",
                "--seed", "1", "--max-side", "48", "--no-bias", "--activation", "gelu")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_small_run_writes_stats_parquet(small_run):
    out, proc = small_run
    stats = pd.read_parquet(out / STATS_FILE)
    for col in ("stack", "layer", "depth", "kind", "channel", "count", "mean", "var", "min", "max", "zero_frac"):
        assert col in stats.columns, col
    assert not stats.duplicated(["stack", "layer", "channel"]).any()  # one row per (stack, layer, channel)
    assert set(stats["stack"]) == {"conv", "pconv", "mconv", "conv_alone"}
    # depth 2, GELU: conv1 (16), act1 (16), conv2 (32), act2 (32) channels per stack
    per_stack = stats.groupby("stack").size()
    assert (per_stack == 16 + 16 + 32 + 32).all()
    assert set(stats["layer"]) == {"conv1", "act1", "conv2", "act2"}
    assert set(stats["depth"]) == {1, 2}
    assert (stats["count"] > 0).all() and (stats["var"] >= 0).all()
    assert (stats["activation"] == "gelu").all() and not stats["bias"].any()
    # the stacks see exactly the same valid positions
    counts = stats.pivot_table(index=["layer", "channel"], columns="stack", values="count")
    assert (counts.nunique(axis=1) == 1).all()
    assert "experiment" in proc.stdout and "wrote" in proc.stdout


def test_small_run_settings_metadata(small_run):
    out, _ = small_run
    meta = read_settings(out / STATS_FILE)
    s = meta["settings"]
    assert s["data"] == "synthetic" and s["depth"] == 2 and s["num_images"] == 4 and s["batch_size"] == 3
    assert s["seed"] == 1 and s["bias"] is False and s["activation"] == "gelu" and s["init"] == "default"
    assert s["stacks"] == ["conv", "pconv", "mconv"] and s["max_side"] == 48
    assert len(meta["images"]) == 4 and "torch" in meta["versions"]
    assert METADATA_KEY in pq.read_schema(out / PADDING_FILE).metadata


def test_small_run_padding_frame_and_figures(small_run):
    out, _ = small_run
    pad = pd.read_parquet(out / PADDING_FILE)
    for col in ("stack", "reference", "layer", "depth", "image", "rel_error", "padded"):
        assert col in pad.columns
    assert pad["image"].nunique() == 4 and set(pad["reference"]) == {"alone", "conv_alone"}
    alone = pad[pad["reference"] == "alone"]
    # the masked stacks are insensitive to padding (float32 level), with or without bias
    assert alone.loc[alone["stack"].isin(["pconv", "mconv"]), "rel_error"].max() < 1e-5
    for name in FIGURES:
        path = out / "figures" / name
        assert path.stat().st_size > 10_000
        assert path.stat().st_size < 500_000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))


def test_bias_makes_conv_padding_sensitive(tmp_path):
    res = run_mod.run_experiment(run_mod.Settings(data="synthetic", depth=3, num_images=3, batch_size=3,
                                                  max_side=48, seed=0), progress=False)
    pad = res.padding[(res.padding["reference"] == "alone") & res.padding["padded"] & (res.padding["depth"] == 3)]
    assert pad.loc[pad["stack"] == "conv", "rel_error"].min() > 1e-3
    assert pad.loc[pad["stack"] != "conv", "rel_error"].max() < 1e-5


def test_bad_flag_exits_2_with_one_line():
    proc = _run("--depth", "0", timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--depth" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, needle", [
    (["--activation", "swish"], "--activation"),
    (["--init", "orthogonal"], "--init"),
    (["--stacks", "conv,bogus"], "--stacks"),
    (["--stacks", "conv,conv"], "twice"),
    (["--num-images", "-3"], "--num-images"),
    (["--batch-size", "two"], "--batch-size"),
    (["--max-side", "0"], "--max-side"),
    (["--seed", "-1"], "seed"),
    (["--no-such-flag"], "unrecognized"),
    (["--data", "/definitely/not/here"], "--data"),
])
def test_bad_flags_in_process(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--out", str(tmp_path), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def _folder_with_a_broken_file(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "cats").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "ok.png")
    Image.fromarray(np.full((24, 17), 200, np.uint8)).save(folder / "cats" / "grey.png")
    (folder / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    return folder


@pytest.mark.parametrize("normalize", ["image", "dataset"])
def test_an_unreadable_image_is_skipped_with_one_warning_line_and_counted(tmp_path, normalize):
    folder = _folder_with_a_broken_file(tmp_path)
    proc = _run("--out", str(tmp_path / "out"), "--data", str(folder), "--depth", "2", "--normalize", normalize,
                timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warned = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warned) == 1 and "cats/broken.jpg" in warned[0] and "Traceback" not in proc.stderr
    assert "2 images, 1 unreadable file(s) skipped" in proc.stdout
    meta = read_settings(tmp_path / "out" / STATS_FILE)
    assert [s["name"] for s in meta["skipped"]] == ["cats/broken.jpg"]
    assert sorted(im["name"] for im in meta["images"]) == ["cats/grey.png", "ok.png"]  # read recursively
    assert 0 < meta["padding_fraction"] < 1


def test_strict_makes_an_unreadable_image_exit_2_naming_the_file(tmp_path):
    folder = _folder_with_a_broken_file(tmp_path)
    proc = _run("--out", str(tmp_path / "out"), "--data", str(folder), "--depth", "2", "--strict", timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.jpg" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / STATS_FILE).exists()


def test_empty_folder_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["--out", str(tmp_path / "out"), "--data", str(tmp_path / "empty"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no images" in err[0] and "empty" in err[0]


def test_unknown_figure_image_exits_2(tmp_path, capsys):
    code = cli.main(["--out", str(tmp_path), "--data", "synthetic", "--num-images", "2", "--depth", "1",
                     "--max-side", "16", "--figure-image", "nope", "--quiet"])
    assert code == 2
    assert "nope" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ --help and start-up
def _help(*args) -> str:
    proc = _run(*args, "--help", timeout=60)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return proc.stdout


def _option_entries(text: str) -> dict:
    """{'--flag': its help entry (the flag line and its continuation lines)} from an argparse help text."""
    entries, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-{1,2}[\w-]+)", line)
        if m:
            current = m.group(1)
            entries[current] = line
        elif current and line.startswith("      "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("sub", [(), ("sweep",)])
def test_help_shows_each_default_once_readably(sub):
    text = _help(*sub)
    parser = cli.build_sweep_parser() if sub else cli.build_parser()
    entries = _option_entries(text)
    for action in parser._actions:
        flag = action.option_strings[-1] if action.option_strings else None
        if flag in (None, "--help"):
            continue
        entry = entries.get(action.option_strings[0])
        assert entry is not None, (flag, text)
        said = len(re.findall(r"\(default|\(the default\)", entry))  # where a help text states its default
        assert said <= 1, entry
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert said == 1, f"{flag}: its default is not shown: {entry}"
    assert "None" not in text and "('conv'" not in text and "(default: False)" not in text
    for line in text.splitlines():
        assert len(line) <= 100, line


def test_help_names_the_sweep_subcommand_and_torchrun():
    text = _help()
    usage = text.split("\n\n")[0]
    assert "sweep" in usage and "torchrun" in usage
    assert re.search(r"^subcommand:\n  sweep ", text, re.M)
    assert "sweep --help" in text
    sweep = _help("sweep")
    assert sweep.startswith("usage: visualize_activations_2d.py sweep")
    assert "--vary" in sweep and "--grid" in sweep and "(default: 1)" in sweep


def test_help_and_flag_errors_do_not_import_torch():
    """--help answers without importing torch (or matplotlib, pandas); a run does not import the compiler."""
    code = (
        "import sys, runpy\n"
        "sys.argv = [sys.argv[1], *sys.argv[2:]]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'pandas', 'matplotlib', 'seaborn') if m in sys.modules)\n"
        "print('HEAVY', ','.join(heavy))\n"
    )
    for argv in (["--help"], ["sweep", "--help"], ["--depth", "0"], ["--stacks", "conv,bogus"]):
        proc = subprocess.run([PYTHON, "-c", code, str(SCRIPT), *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert "HEAVY \n" in proc.stdout, (argv, proc.stdout[-300:], proc.stderr[-300:])


def test_a_run_does_not_import_the_compiler(tmp_path):
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from masked_torch.analysis import cli\n"
        f"rc = cli.main(['--out', {str(tmp_path)!r}, '--data', 'synthetic', '--depth', '1', '--num-images', '2',"
        " '--max-side', '16', '--quiet'])\n"
        "print('RC', rc, 'DYNAMO', 'torch._dynamo' in sys.modules, 'INDUCTOR', 'torch._inductor' in sys.modules)\n"
    )
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert "RC 0 DYNAMO False INDUCTOR False" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]


def test_recorder_hooks_stay_eager_when_the_compiler_loads_later():
    """The recorder's hooks are dynamo-disabled without importing dynamo up front: a function compiled
    inside the recording block (dynamo imported only then) still runs every hook, eagerly."""
    code = (
        "import sys\n"
        "from collections import OrderedDict\n"
        "import torch\n"
        "from torch import nn\n"
        "from masked_torch.analysis.recorder import ActivationRecorder\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU()))\n"
        "with ActivationRecorder(model) as rec:\n"
        "    model(torch.randn(2, 3, 8, 8))\n"
        "    fn = torch.compile(lambda x: model(x), backend='eager')\n"
        "    fn(torch.randn(2, 3, 8, 8)); fn(torch.randn(2, 3, 8, 8))\n"
        "assert 'torch._dynamo' in sys.modules\n"
        "print('CALLS', rec.calls, 'COUNTS', sorted(set(rec.to_frame()['count'].tolist())))\n"
    )
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert "CALLS {'conv': 3, 'relu': 3} COUNTS [384]" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]


def test_cli_choices_match_the_stacks_module():
    from masked_torch.analysis import choices, stacks

    assert tuple(stacks.ACTIVATIONS) == choices.ACTIVATION_NAMES
    assert stacks.STACKS == choices.STACKS and stacks.INITS == choices.INITS


# ------------------------------------------------------------------------------------ atomic writing
def test_write_parquet_atomic_roundtrip_and_metadata(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    path = write_parquet_atomic(frame, tmp_path / "f.parquet", {"settings": {"k": 1}})
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)
    assert read_settings(path) == {"settings": {"k": 1}}
    assert [p.name for p in tmp_path.iterdir()] == ["f.parquet"]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, OSError])
def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch, exc_type):
    path = tmp_path / "f.parquet"
    old = pd.DataFrame({"a": [1, 2, 3]})
    write_parquet_atomic(old, path)
    before = path.read_bytes()
    import pyarrow.parquet as pq_mod

    real = pq_mod.write_table

    def half_then_fail(table, where, *args, **kwargs):
        real(table, where, *args, **kwargs)
        with open(where, "r+b") as f:  # a half-written temporary file
            f.truncate(10)
        raise exc_type("interrupted while writing")

    monkeypatch.setattr(pq_mod, "write_table", half_then_fail)
    with pytest.raises(exc_type):
        write_parquet_atomic(pd.DataFrame({"a": [9]}), path)
    assert path.read_bytes() == before  # the previous result survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["f.parquet"]  # no temporary file left behind


def test_interrupted_run_exits_130_and_keeps_results(tmp_path, monkeypatch, capsys):
    old = pd.DataFrame({"a": [1]})
    write_parquet_atomic(old, tmp_path / STATS_FILE)
    before = (tmp_path / STATS_FILE).read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "run_experiment", interrupted)
    assert cli.main(["--out", str(tmp_path), "--data", "synthetic", "--quiet"]) == 130
    assert (tmp_path / STATS_FILE).read_bytes() == before
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]


def test_interrupt_between_files_leaves_only_complete_files(tmp_path, monkeypatch):
    """Ctrl-C while the padding file is written: every earlier result file is kept as it was."""
    res = run_mod.run_experiment(run_mod.Settings(data="synthetic", depth=1, num_images=2, max_side=16),
                                 progress=False)
    run_mod.write_outputs(res, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real = run_mod.write_parquet

    def stop_at_padding(frame, path, metadata=None):
        if PADDING_FILE in Path(path).name:
            raise KeyboardInterrupt
        return real(frame, path, metadata)

    monkeypatch.setattr(run_mod, "write_parquet", stop_at_padding)
    with pytest.raises(KeyboardInterrupt):
        run_mod.write_outputs(res, tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    pd.read_parquet(tmp_path / STATS_FILE)
    assert not list(tmp_path.rglob("*.tmp"))
