"""Bad input to the suite (issue 16, section 5): each case is one clear line before any work is done, or it
just works; nothing computed is lost and nothing already written is damaged.

* a file name that is not valid UTF-8 works: it is stored with each such byte as ``\\xNN``;
* ``--out`` that names a file or an unwritable place, a depth the images or the memory cannot take, an
  unreadable image alone in its folder, ``--num-images 0``, a negative ``--max-side``, an unknown mask: one
  line (exit status 2) before the experiment runs;
* a folder holding one 1x1 image works;
* a run's files are swapped in all or nothing: an error or Ctrl-C between the renames keeps the previous set,
  a Ctrl-C there finishes the new set and says so, a killed run's half-done swap is rolled back and its
  temporary files removed by the next write.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from masked_torch.analysis import cli, files
from masked_torch.analysis import run as run_mod
from masked_torch.analysis.files import (PADDING_FILE, RESULT_FILES, STATS_FILE, TEMP_PREFIX, TENSOR_STATS_FILE,
                                         StagedFiles,
                                         InterruptedAfterWriting, out_problem, read_settings, recover, safe_text,
                                         write_parquet)
from masked_torch.analysis.models import MAX_PARAMETERS, build_model, check_parameters
from masked_torch.analysis.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--depth", "2", "--max-side", "32", "--quiet"]
RUN_FILES = sorted(n for n in RESULT_FILES if n != TENSOR_STATS_FILE)  # what a run writes (--preset seed: + tensor)


def _one_error_line(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def _no_experiment(monkeypatch):
    """Make any experiment fail loudly: a refusal must come before it."""
    def ran(*args, **kwargs):
        raise AssertionError("the experiment ran before the bad input was refused")
    monkeypatch.setattr(run_mod, "run_experiment", ran)


def _ours(folder: Path) -> list:
    return [p for p in folder.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def _png(path, h, w, value=None):
    pixels = (np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3)) if value is None
              else np.full((h, w, 3), value)).astype(np.uint8)
    with open(path, "wb") as f:  # a bytes path: the name need not be UTF-8
        Image.fromarray(pixels).save(f, format="PNG")


# ------------------------------------------------------------------------------------ file names
def test_safe_text_writes_the_undecodable_bytes_as_python_shows_them():
    raw = b"caf\xe9 \xff.png"
    expected = str(raw)[2:-1]  # Python's own rendering of the bytes: caf\xe9 \xff.png
    assert safe_text(os.fsdecode(raw)) == expected == "caf\\xe9 \\xff.png"
    for fine in ("café.png", "ok.png", "猫/1.jpg"):  # valid UTF-8 is stored as it is
        assert safe_text(fine) == fine


def test_write_parquet_stores_a_surrogate_name_in_an_object_column_and_in_the_metadata(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")  # what os.listdir gives for that name (pandas 2 keeps it in an object column)
    frame = pd.DataFrame({"image": pd.Series([name, "ok.png"], dtype=object), "v": [1.0, 2.0]})
    write_parquet(frame, tmp_path / "f.parquet", {"images": [{"name": name}]})
    back = pd.read_parquet(tmp_path / "f.parquet")
    assert list(back["image"]) == ["caf\\xe9.png", "ok.png"] and list(back["v"]) == [1.0, 2.0]
    assert read_settings(tmp_path / "f.parquet") == {"images": [{"name": "caf\\xe9.png"}]}


@pytest.fixture
def latin1_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    try:
        _png(os.path.join(os.fsencode(folder), b"caf\xe9.png"), 20, 30)
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 file names")
    _png(folder / "ok.png", 25, 18)
    return folder


def test_a_file_name_that_is_not_utf8_just_works(latin1_folder, tmp_path, capsys):
    out = tmp_path / "out"
    raw_name = os.fsdecode(b"caf\xe9.png")  # as the shell passes those bytes to Python
    assert cli.main(["--out", str(out), "--data", str(latin1_folder), "--figure-image", raw_name, *SMALL]) == 0
    assert "Traceback" not in capsys.readouterr().err
    stored = str(b"caf\xe9.png")[2:-1]
    pad = pd.read_parquet(out / PADDING_FILE)
    assert set(pad["image"]) == {stored, "ok.png"}
    meta = read_settings(out / STATS_FILE)
    assert sorted(im["name"] for im in meta["images"]) == sorted([stored, "ok.png"])
    maps = pd.read_parquet(out / STATS_FILE)
    assert len(maps) and not _ours(out)
    for name in RUN_FILES:
        assert (out / name).is_file(), name



def test_a_sweep_over_a_folder_whose_own_path_is_not_utf8(tmp_path):
    """The folder's path is a setting, stored in every row of the sweep's frames: written as ``\\xNN`` too."""
    from masked_torch.analysis.sweep import expand_grid, run_sweep

    try:
        raw = os.path.join(os.fsencode(tmp_path), b"d\xe9j\xe0")
        os.mkdir(raw)
        _png(os.path.join(raw, b"a.png"), 20, 30)
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 file names")
    _png(os.path.join(raw, b"b.png"), 25, 18)
    folder = os.fsdecode(raw)
    configs = expand_grid({"depth": [1, 2]}, {"data": folder, "num_images": 2, "batch_size": 2, "max_side": 32})
    result = run_sweep(configs, tmp_path / "out", jobs=1, progress=False)
    assert len(result.ran) == 2 and not result.failed, result.failed
    stats = pd.read_parquet(tmp_path / "out" / "sweep_stats.parquet")
    assert set(stats["data"]) == {str(os.fsencode(folder))[2:-1]}  # Python's rendering of the bytes
    assert set(stats["net_depth"]) == {1, 2}

# ------------------------------------------------------------------------------------ --out
def _unwritable(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder / "out"


@pytest.mark.parametrize("where, needle", [
    (lambda t: (t / "a_file").write_text("x") and t / "a_file", "is a file, not a folder"),
    (lambda t: (t / "a_file").write_text("x") and t / "a_file" / "sub" / "dir", "is a file, not a folder"),
    pytest.param(_unwritable, "Permission denied", marks=pytest.mark.skipif(
        hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a read-only folder")),
])
def test_an_out_that_cannot_take_the_results_is_one_line_before_the_experiment(where, needle, tmp_path,
                                                                                monkeypatch, capsys):
    out = where(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    _no_experiment(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--out", str(out), "--data", "synthetic", "--quiet"])
    assert exc.value.code == 2
    _one_error_line(capsys, "--out", needle)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing made, nothing left


def test_out_problem_makes_nothing_it_leaves(tmp_path):
    assert out_problem(tmp_path / "new" / "deeper") is None
    assert list(tmp_path.iterdir()) == []  # the folders it made to try are gone again
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "figures").write_text("a file where the figures go")
    assert "is a file, not a folder" in out_problem(tmp_path / "res")
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["figures"]


def test_sweep_refuses_a_bad_out_before_running(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("x")
    from masked_torch.analysis import sweep

    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["sweep", "--out", str(tmp_path / "a_file"), "--vary", "depth=1,2", "--set", "data=synthetic"])
    assert exc.value.code == 2
    _one_error_line(capsys, "--out", "is a file")


# ------------------------------------------------------------------------------------ a single 1x1 image
def test_a_folder_holding_a_single_1x1_image_just_works(tmp_path, capsys):
    folder = tmp_path / "one"
    folder.mkdir()
    _png(folder / "dot.png", 1, 1, value=200)
    out = tmp_path / "out"
    code = cli.main(["--out", str(out), "--data", str(folder), "--depth", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err[-3000:]
    stats = pd.read_parquet(out / STATS_FILE)
    # the image is one position at every level (its 2x2, then 1x1 cell of the 4x4 canvas): nothing varies
    assert np.isfinite(stats["mean"]).all() and (stats["var"] == 0).all()
    for name in RUN_FILES:
        assert (out / name).is_file(), name


# ------------------------------------------------------------------------------------ depth
@pytest.mark.parametrize("max_side, deepest", [(256, 8), (255, 8), (257, 9), (100, 7), (64, 6), (2, 1), (1, 1)])
def test_the_deepest_depth_is_where_the_largest_image_is_one_position(max_side, deepest):
    # independent: halve (rounding up, as the padded canvas does) until one position is left, at least once
    side, levels = max_side, 0
    while side > 1:
        side, levels = -(-side // 2), levels + 1
    assert max(levels, 1) == deepest
    for model in ("stack", "unet"):
        if model == "unet" and deepest > 6:
            continue  # the U-Net's width doubles per level: deeper is refused for its weights (below)
        assert Settings(model=model, depth=deepest, max_side=max_side).depth == deepest
        with pytest.raises(SettingsError) as info:
            Settings(model=model, depth=deepest + 1, max_side=max_side)
        text = str(info.value)
        assert "\n" not in text and f"the deepest for {max_side} pixels is {deepest}" in text
    assert Settings(model="resnet18", depth=20, max_side=max_side).depth == 20  # its depth is fixed: ignored


@pytest.mark.parametrize("depth", ["20", "12"])
def test_a_depth_deeper_than_the_images_is_one_line_before_work(depth, tmp_path, monkeypatch, capsys):
    _no_experiment(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--out", str(tmp_path), "--data", "synthetic", "--num-images", "2", "--depth", depth, "--quiet"])
    assert exc.value.code == 2
    _one_error_line(capsys, f"'depth' {depth}", "256 pixels", "is 8")
    assert list(tmp_path.iterdir()) == []


def test_without_max_side_the_largest_image_bounds_the_depth(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "a.png", 40, 30)
    _png(folder / "b.png", 12, 9)
    monkeypatch.setattr(run_mod, "build_model", lambda *a, **k: pytest.fail("model built before the check"))
    with pytest.raises(SettingsError, match="at most 40 pixels a side \\(the largest image\\).*deepest for 40 "
                                            "pixels is 6"):
        run_mod.run_experiment(Settings(data=str(folder), depth=7, max_side=None), progress=False)


def test_a_unet_too_large_is_refused_before_any_weight_is_allocated(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_mod, "build_model", lambda *a, **k: pytest.fail("weights allocated before the check"))
    code = cli.main(["--out", str(tmp_path), "--data", "synthetic", "--model", "unet", "--depth", "7", "--quiet"])
    assert code == 2
    line = _one_error_line(capsys, "unet", f"{MAX_PARAMETERS:,}", "the deepest unet within it is 6")
    count = int(line.split(" gives the unet ")[1].split(" parameters")[0].replace(",", ""))
    assert count == _unet_parameters(7) > MAX_PARAMETERS >= _unet_parameters(6)
    assert list(tmp_path.iterdir()) == []


def _unet_parameters(levels: int, width: int = 32, c_in: int = 3, classes: int = 2) -> int:
    """Parameters of the U-Net of models.py counted by hand: a double conv is two bias-free 3x3 convs with a
    BN (weight and bias) after each; an up step a 2x2 transposed conv with bias halving the channels."""
    def double(a, b):
        return 9 * a * b + 2 * b + 9 * b * b + 2 * b
    total = double(c_in, width) + width * classes + classes
    for i in range(1, levels + 1):
        total += double(width * 2 ** (i - 1), width * 2 ** i)  # down i
        lo, hi = width * 2 ** (levels - i), width * 2 ** (levels - i + 1)  # up i: from hi channels to lo
        total += 4 * hi * (hi // 2) + hi // 2 + double(hi // 2 + lo, lo)
    return total


def test_the_hand_count_is_the_unets():
    assert sum(p.numel() for p in build_model("unet", depth=3).parameters()) == _unet_parameters(3)
    check_parameters("unet", depth=6)  # _unet_parameters(6) <= MAX_PARAMETERS: accepted


def test_the_parameter_limit_follows_the_count_of_the_real_model(monkeypatch):
    from masked_torch.analysis import models

    for name in ("stack", "unet"):
        real = sum(p.numel() for p in build_model(name, depth=2).parameters())
        monkeypatch.setattr(models, "MAX_PARAMETERS", real)
        models.check_parameters(name, depth=2)  # exactly at the limit: fine
        monkeypatch.setattr(models, "MAX_PARAMETERS", real - 1)
        with pytest.raises(SettingsError, match=f"gives the {name} {real:,} parameters"):
            models.check_parameters(name, depth=2)


def test_a_sweep_with_a_depth_too_deep_is_one_line_before_running(tmp_path, capsys):
    assert cli.main(["sweep", "--out", str(tmp_path / "s"), "--vary", "depth=2,20", "--set", "data=synthetic",
                     "--quiet"]) == 2
    _one_error_line(capsys, "'depth' 20", "is 8")
    assert not (tmp_path / "s" / "runs").exists()


# ------------------------------------------------------------------------------------ other bad input
def test_a_folder_of_unreadable_images_is_one_line_before_work(tmp_path, capsys):
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.png").write_text("this is text, not a PNG\n")
    assert cli.main(["--out", str(tmp_path / "out"), "--data", str(folder), "--quiet"]) == 2
    _one_error_line(capsys, "none of the 1 image file(s) can be read", "a.png")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--num-images", "0"], "--num-images"),
    (["--max-side", "-5"], "--max-side"),
    (["--mask", "nope"], "--mask"),
    (["--depth", "-1"], "--depth"),
])
def test_bad_numbers_and_names_are_one_line(argv, needle, tmp_path, monkeypatch, capsys):
    _no_experiment(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--out", str(tmp_path), "--data", "synthetic", *argv])
    assert exc.value.code == 2
    _one_error_line(capsys, needle)


# ------------------------------------------------------------------------------------ all or nothing
@pytest.fixture(scope="module")
def two_runs():
    """Two small runs with different weights: the old results and the new."""
    def run(seed):
        return run_mod.run_experiment(Settings(data="synthetic", depth=1, num_images=2, max_side=16, seed=seed),
                                      progress=False)
    return run(0), run(1)


def _contents(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _replace_failing_at(monkeypatch, call: int, exc):
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == call:
            raise exc
        return real(src, dst)
    monkeypatch.setattr(files.os, "replace", replace)
    return calls


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_a_failure_between_the_renames_puts_every_old_file_back(two_runs, tmp_path, monkeypatch, exc):
    old, new = two_runs
    run_mod.write_outputs(old, tmp_path)
    before = _contents(tmp_path)
    assert sorted(before) == RUN_FILES
    calls = _replace_failing_at(monkeypatch, 4, exc)  # the journal, then 2 files renamed in, the 3rd fails
    with pytest.raises(type(exc)):
        run_mod.write_outputs(new, tmp_path)
    assert len(calls) >= 4
    assert _contents(tmp_path) == before  # the previous set, byte for byte, and nothing else


def test_ctrl_c_during_the_renames_finishes_the_new_set_and_says_so(two_runs, tmp_path, monkeypatch, capsys):
    old, new = two_runs
    run_mod.write_outputs(old, tmp_path)
    before = _contents(tmp_path)
    real, staged = os.replace, {}

    def replace(src, dst):
        if Path(dst).name in {Path(n).name for n in RESULT_FILES}:
            staged[Path(dst).relative_to(tmp_path).as_posix()] = Path(src).read_bytes()
            if len(staged) == 2:
                os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C between two renames
        return real(src, dst)
    monkeypatch.setattr(files.os, "replace", replace)
    monkeypatch.setattr(run_mod, "run_experiment", lambda *a, **k: new)
    assert cli.main(["--out", str(tmp_path), "--data", "synthetic", "--quiet"]) == 130
    _one_error_line(capsys, "interrupted after the results were written", "complete")
    after = _contents(tmp_path)
    assert after == staged and sorted(after) == RUN_FILES  # every file is this run's
    assert all(after[name] != before[name] for name in after if name.endswith(".parquet"))
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / STATS_FILE)["mean"], new.stats["mean"])


def test_an_interrupted_run_says_truly_that_nothing_was_written(two_runs, tmp_path, monkeypatch, capsys):
    old, new = two_runs
    run_mod.write_outputs(old, tmp_path)
    before = _contents(tmp_path)
    _replace_failing_at(monkeypatch, 3, KeyboardInterrupt())
    monkeypatch.setattr(run_mod, "run_experiment", lambda *a, **k: new)
    assert cli.main(["--out", str(tmp_path), "--data", "synthetic", "--quiet"]) == 130
    _one_error_line(capsys, "interrupted; nothing was written", "left as they were")
    assert _contents(tmp_path) == before


def test_files_of_an_earlier_run_that_this_run_does_not_write_go_in_the_same_swap(two_runs, tmp_path):
    import dataclasses

    old, new = two_runs
    run_mod.write_outputs(old, tmp_path)
    no_padding = dataclasses.replace(new, padding=pd.DataFrame(), image_stats=pd.DataFrame())
    written = run_mod.write_outputs(no_padding, tmp_path)
    assert sorted(_contents(tmp_path)) == sorted(p.relative_to(tmp_path).as_posix() for p in written)
    assert not (tmp_path / PADDING_FILE).exists()


_CHILD = r"""
import os, signal, sys
from pathlib import Path
from masked_torch.analysis import files
out, stage_only = Path(sys.argv[1]), sys.argv[2] == "stage"
staged = files.StagedFiles(out, replaces=["a.txt", "b.txt", "sub/c.txt"])
for name in ("a.txt", "b.txt", "sub/c.txt"):
    staged.stage(name).write_text("new " + name)
if stage_only:
    os.kill(os.getpid(), signal.SIGKILL)
real, n = os.replace, [0]
def replace(src, dst):
    n[0] += 1
    if n[0] == 3:  # the journal and one file are in: killed half way
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
files.os.replace = replace
staged.commit()
"""


@pytest.mark.parametrize("when", ["stage", "commit"])
def test_what_a_killed_run_left_is_undone_by_the_next_write(when, tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        (tmp_path / name).write_text("old " + name)
    (tmp_path / "notes.tmp").write_text("not ours: kept")
    before = _contents(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), when], env=env, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = _ours(tmp_path)
    assert left  # the killed run left its temporary files (and, half way through the swap, its journal)
    if when == "commit":
        assert any(p.name.endswith(".journal") for p in left)
        assert _contents(tmp_path) != before  # a mix of new and old
    recover(tmp_path)  # what StagedFiles (every write_outputs) does first
    assert _contents(tmp_path) == before  # the previous set back, byte for byte; others' files kept


def test_a_running_writers_temporary_files_are_left_alone(tmp_path):
    live = tmp_path / f"{TEMP_PREFIX}{os.getppid()}-{STATS_FILE}.tmp"  # our parent process: running
    live.write_text("being written")
    StagedFiles(tmp_path).discard()
    assert live.exists()
