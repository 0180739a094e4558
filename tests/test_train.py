"""The training experiment (analysis/train_*.py): it learns, the masked kinds do not depend on the batch, a killed run
resumes to the same frames, the command line refuses what it cannot use in one line, and the default data's label
cannot be told from the image size."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from masked_torch.analysis.cli import main
from masked_torch.analysis.models import load_weights
from masked_torch.analysis.plot_train import sensitivity_summary
from masked_torch.analysis.train_data import (SHAPES, draw_shape, folder_data, holdout_split, shape_label, shape_size,
                                              shapes_data)
from masked_torch.analysis.train_loop import FRAMES, TrainSettings, final_path, run_training, write_training
from masked_torch.analysis.train_model import build_classifier

ROOT = Path(__file__).resolve().parents[1]

# A tiny run: few, small images; seconds on one CPU thread.
TINY = TrainSettings(num_images=36, min_side=16, max_side=40, width=4, seeds=(0,), epochs=2, batch_size=6,
                     probe_images=4, sensitivity_every=1)


def _write_folder(root: Path, classes=("horizontal_bar", "disk"), per_class=24, seed=5) -> Path:
    """A class folder of PNG files drawn by the shapes generator (two of its classes), sides 24-48."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        label = SHAPES.index(name)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(24, 49, size=2))
            pixels = draw_shape(label, h, w, rng)
            Image.fromarray((pixels.transpose(1, 2, 0).clip(0, 1) * 255).round().astype(np.uint8)).save(
                root / name / f"{i:03d}.png")
    return root


# ------------------------------------------------------------------------------------------------ the data
def test_the_default_datas_label_cannot_be_told_from_the_image_size():
    """Sizes come from a generator the label never reads, so they are the same whatever the labels are; and a
    nearest-neighbour classifier on (h, w) does no better than chance on held-out images (4 binomial standard
    deviations above 1/3 for 300 test images: 0.44; a size-dependent labelling would be found far above it)."""
    n = 600
    data = shapes_data(n, seed=0, min_side=24, max_side=160)
    assert data.sizes == [shape_size(0, i, 24, 160) for i in range(n)]
    assert data.labels == [shape_label(0, i) for i in range(n)]
    sizes = np.array(data.sizes, dtype=float)
    labels = np.array(data.labels)
    assert sizes.min() >= 24 and sizes.max() <= 160
    assert (sizes[:, 0] / sizes[:, 1]).max() > 4 and (sizes[:, 1] / sizes[:, 0]).max() > 4  # widely different shapes

    def knn_accuracy(features, labels, k=25):
        train, test = features[: n // 2], features[n // 2:]
        d = ((test[:, None, :] - train[None, :, :]) ** 2).sum(-1)
        nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
        votes = np.stack([(labels[: n // 2][nearest] == c).sum(1) for c in range(len(SHAPES))], axis=1)
        return float((votes.argmax(1) == labels[n // 2:]).mean())

    features = np.log(np.c_[sizes, sizes[:, :1] * sizes[:, 1:]])
    bound = 1 / 3 + 4 * math.sqrt((1 / 3) * (2 / 3) / (n // 2))
    assert knn_accuracy(features, labels) < bound
    # the same classifier finds a label that does depend on the size (the test can fail)
    by_size = np.digitize(np.log(sizes[:, 0] * sizes[:, 1]), np.quantile(np.log(sizes[:, 0] * sizes[:, 1]), [1 / 3, 2 / 3]))
    assert knn_accuracy(features, by_size) > 0.8


def test_holdout_split_is_per_class_and_by_name():
    data = shapes_data(60)
    train, held = holdout_split(data, 0.25)
    assert sorted(train + held) == list(range(60)) and not set(train) & set(held)
    for c in range(len(SHAPES)):
        members = [i for i in range(60) if data.labels[i] == c]
        assert 1 <= sum(i in held for i in members) <= len(members) - 1
    # by name only: the split of the first 60 is kept by a larger set (no image moves out of the held-out part
    # unless its class's quota shrinks relative to it: here every held-out image of 60 stays held out in 60)
    assert holdout_split(data, 0.25) == (train, held)


# ------------------------------------------------------------------------------------------------ learning
def test_on_a_tiny_class_folder_every_kind_learns(tmp_path):
    """Loss falls from the first epoch to the last and held-out accuracy beats chance (1/2) for conv, pconv and
    mconv, each trained on the same padded batches of a generated two-class folder."""
    root = _write_folder(tmp_path / "folder")
    data = folder_data(root, max_side=64)
    assert data.classes == ("disk", "horizontal_bar") and len(data) == 48
    settings = TrainSettings(data=str(root), width=8, seeds=(0,), epochs=6, batch_size=8, lr=0.02, probe_images=4,
                             sensitivity_every=0)
    curves = run_training(settings, tmp_path / "out", progress=False, data=data).frames["curves"]
    for kind in ("conv", "pconv", "mconv"):
        c = curves[curves["stack"] == kind].set_index("epoch")
        assert c.loc[6, "train_loss"] < c.loc[1, "train_loss"], (kind, c["train_loss"].tolist())
        assert c.loc[6, "heldout_acc"] > 0.5, (kind, c["heldout_acc"].tolist())


# ------------------------------------------------------------------------------------------------ batch dependence
#: float64 unit roundoff; a logit sums at most ~10^4 products per layer (3x3 windows of <= 32 channels, a pool over
#: <= 80x80 positions), so an evaluation order that differs between canvases moves it by at most ~10^4 u relative
#: per layer (Higham's gamma_n), a few layers deep: 1e-9 leaves a margin of more than 100 on logits of magnitude
#: up to 10. Anything the padding leaks into the result is orders of magnitude larger (conv: 1e-3 and up).
FLOAT64_LOGIT_TOL = 1e-9


@pytest.fixture(scope="module")
def float64_run(tmp_path_factory):
    settings = TINY.replace(dtype="float64", epochs=1, width=4)
    return run_training(settings, tmp_path_factory.mktemp("f64"), progress=False)


def test_pconv_and_mconv_do_not_depend_on_the_batch_in_float64(float64_run):
    sens = float64_run.frames["sensitivity"]
    assert set(sens["epoch"]) == {0, 1} and set(sens["batching"]) == {1, 2}
    for kind in ("pconv", "mconv"):
        part = sens[sens["stack"] == kind]
        assert len(part) == 2 * float64_run.num_heldout * 2  # 2 epochs x held-out images x 2 batchings
        assert (part["pred"] == part["pred_alone"]).all()
        assert part["max_logit_change"].max() <= FLOAT64_LOGIT_TOL, part["max_logit_change"].max()
    summary = sensitivity_summary(sens)
    assert (summary.loc[summary["stack"] != "conv", "changed"] == 0).all()


def test_conv_depends_on_the_batch_where_its_padding_differs(float64_run):
    sens = float64_run.frames["sensitivity"]
    conv = sens[sens["stack"] == "conv"]
    padded = conv[conv["pad_fraction"] > 0]
    assert len(padded) > 0
    assert padded["max_logit_change"].max() > 1e3 * FLOAT64_LOGIT_TOL
    assert conv["max_logit_change"].median() > 1e3 * FLOAT64_LOGIT_TOL


def test_batches_of_one_image_are_the_image_alone_for_every_kind():
    """The measurement itself: "batched" with a batch of one (no padding) is the image alone, for conv too."""
    from masked_torch.analysis.stacks import build_variants
    from masked_torch.analysis.train_measure import sensitivity

    data = shapes_data(8, min_side=16, max_side=40)
    for kind, model in build_variants(build_classifier("small", 3, width=4), ("conv", "pconv", "mconv")).items():
        sens = sensitivity(model.double(), data, 1, 1, 1, torch.float64, seed=0, epoch=0)
        assert (sens["pad_fraction"] == 0).all() and (sens["pred"] == sens["pred_alone"]).all()
        assert sens["max_logit_change"].max() <= FLOAT64_LOGIT_TOL, kind


@pytest.mark.parametrize("model, depth", [("stack", 2), ("unet", 2), ("resnet18", 3)])
def test_every_suite_model_trains_and_its_masked_kinds_do_not_depend_on_the_batch(tmp_path, model, depth):
    """--model: the suite's networks with a classification head, one epoch in float64; pconv's and mconv's held-out
    logits do not depend on the batch, conv's do."""
    settings = TINY.replace(model=model, depth=depth, epochs=1, dtype="float64", num_images=24)
    result = run_training(settings, tmp_path, progress=False)
    sens = result.frames["sensitivity"]
    worst = sens.groupby("stack")["max_logit_change"].max()
    assert worst["pconv"] <= FLOAT64_LOGIT_TOL and worst["mconv"] <= FLOAT64_LOGIT_TOL, worst.to_dict()
    assert worst["conv"] > 1e3 * FLOAT64_LOGIT_TOL
    assert result.frames["curves"]["train_loss"].notna().sum() == 3


# ------------------------------------------------------------------------------------------------ resume
def assert_stopped_run_resumes(settings: TrainSettings, tmp_path: Path, stop_at: tuple[int, int]) -> None:
    """Stop a run after epoch ``stop_at = (seed, epoch)``'s checkpoint (the last seed's), run it again: only the
    epochs after it run, and the frames and final checkpoints are those of a run that was never stopped."""
    whole = run_training(settings, tmp_path / "whole", progress=False)

    class Stop(KeyboardInterrupt):
        pass

    def stop(seed, epoch):
        if (seed, epoch) == stop_at:
            raise Stop

    with pytest.raises(Stop):
        run_training(settings, tmp_path / "cut", progress=False, on_epoch=stop)
    seen = []
    resumed = run_training(settings, tmp_path / "cut", progress=False, on_epoch=lambda s, e: seen.append((s, e)))
    # the seeds before and the stopped seed's first epochs came from the checkpoints
    assert seen == [(stop_at[0], e) for e in range(stop_at[1] + 1, settings.epochs + 1)]
    for name in FRAMES:
        pd.testing.assert_frame_equal(resumed.frames[name], whole.frames[name], check_exact=True)
    for kind in settings.stacks:
        a = torch.load(final_path(tmp_path / "whole", kind, stop_at[0]), weights_only=True)["state_dict"]
        b = torch.load(final_path(tmp_path / "cut", kind, stop_at[0]), weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_after_an_epoch_resumes_to_the_same_frames(tmp_path):
    assert_stopped_run_resumes(TINY.replace(seeds=(0, 1), epochs=3), tmp_path, (1, 2))


def test_final_checkpoint_loads_with_weights_and_other_settings_are_not_resumed(tmp_path):
    result = run_training(TINY.replace(epochs=1), tmp_path, progress=False)
    path = final_path(tmp_path, "mconv", 0)
    model = build_classifier("small", 3, width=4, weights=path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert len(result.checkpoints) == 3
    with pytest.raises(ValueError, match="other settings"):
        run_training(TINY.replace(epochs=2), tmp_path, progress=False)
    with pytest.raises(ValueError, match="shapes differ"):
        load_weights(build_classifier("small", 3, width=8), path)
    # fine-tuning: a run started from the checkpoint measures, before its first step, what the first run measured
    # after its last (the same held-out images, the same weights and BatchNorm statistics)
    tuned = run_training(TINY.replace(epochs=1, weights=str(path)), tmp_path / "tuned", progress=False)
    before = tuned.frames["curves"].query("stack == 'mconv' and epoch == 0")
    after = result.frames["curves"].query("stack == 'mconv' and epoch == 1")
    assert before["heldout_loss"].item() == after["heldout_loss"].item()
    assert before["heldout_acc"].item() == after["heldout_acc"].item()


def test_outputs_are_written_with_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    result = run_training(TINY, tmp_path, progress=False)
    written = write_training(result, tmp_path)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    assert names == sorted([*FRAMES.values(), "figures/train_curves.png", "figures/train_stats.png",
                            "figures/train_sensitivity.png"])
    stats = pd.read_parquet(tmp_path / FRAMES["stats"])
    assert set(stats["epoch"]) == {0, 1, 2} and {"seed", "stack", "layer", "channel", "var", "dead"} <= set(stats)
    curves = pd.read_parquet(tmp_path / FRAMES["curves"])
    assert len(curves) == 3 * 3 and curves.loc[curves["epoch"] == 0, "train_loss"].isna().all()
    grads = pd.read_parquet(tmp_path / FRAMES["grads"])
    assert set(grads["epoch"]) == {1, 2} and (grads["grad_norm"] > 0).all()


# ------------------------------------------------------------------------------------------------ command line
@pytest.mark.parametrize("layout, message", [
    ({"a": 3}, "1 class sub-folder"),
    ({"a": 3, "b": 0}, "class 'b' has 0 image(s)"),
    ({"a": 3, "b": 1}, "class 'b' has 1 image(s)"),
    ({"a": 3, "b": 3, ".": 1}, "is not in a class sub-folder"),
])
def test_the_cli_refuses_an_unusable_class_folder_in_one_line(tmp_path, capsys, layout, message):
    from PIL import Image

    root = tmp_path / "data"
    root.mkdir()
    for name, count in layout.items():
        folder = root / name if name != "." else root
        folder.mkdir(exist_ok=True)
        for i in range(count):
            Image.new("RGB", (20, 30)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(root), "--out", str(out), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("flag", [["--epochs", "0"], ["--holdout", "1"], ["--seeds", "a"], ["--stacks", "nope"],
                                  ["--weights", "/no/such/file.pt"], ["--min-side", "90", "--max-side", "40"]])
def test_the_cli_refuses_bad_flags_in_one_line(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main(["train", *flag, "--out", str(tmp_path / "out"), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err, err
    assert not (tmp_path / "out").exists()


def test_a_killed_command_resumes_to_the_frames_of_an_uninterrupted_run(tmp_path):
    """SIGKILL the command line (the clone's script) after its first epoch's checkpoint, run it again: the same
    frames as one run that was never interrupted (the checkpoints are replaced atomically, so a kill never leaves half
    of one), and the final checkpoints."""
    import signal
    import time

    out = tmp_path / "out"
    args = [sys.executable, str(ROOT / "visualize_activations_2d.py"), "train", "--num-images", "24", "--min-side", "16",
            "--max-side", "32", "--width", "4", "--seeds", "0", "--epochs", "3", "--batch-size", "6",
            "--probe-images", "4", "--sensitivity-every", "0", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    resume = out / "checkpoints" / "resume_seed0.pt"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if resume.exists() and torch.load(resume, weights_only=True)["epoch"] >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = torch.load(resume, weights_only=True)["epoch"]
    assert 1 <= done < 3 and not (out / FRAMES["curves"]).exists()
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    whole = run_training(TrainSettings(num_images=24, min_side=16, max_side=32, width=4, seeds=(0,), epochs=3,
                                       batch_size=6, probe_images=4, sensitivity_every=0), tmp_path / "whole",
                         progress=False)
    for name, file in FRAMES.items():
        pd.testing.assert_frame_equal(pd.read_parquet(out / file), whole.frames[name], check_exact=True)
    assert all(final_path(out, kind, 0).exists() for kind in ("conv", "pconv", "mconv"))
