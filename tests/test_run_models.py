"""The experiment on networks that are not a chain (``--model resnet18``, ``--model unet``), with holes in the
masks, bucketed batches, worker processes and a checkpoint: small runs end to end, checked against values
computed here from the models themselves."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from masked_torch.analysis.files import IMAGE_STATS_FILE, PADDING_FILE, STATS_FILE, read_settings
from masked_torch.analysis.models import build_model, layer_table
from masked_torch.analysis.run import run_experiment
from masked_torch.analysis.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
_VENV_PY = ROOT / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PY) if _VENV_PY.exists() else sys.executable


def _cli(*args, timeout=300):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([PYTHON, "-m", "masked_torch.analysis", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def resnet_run():
    settings = Settings(model="resnet18", data="synthetic", num_images=3, batch_size=3, max_side=96, seed=3)
    return run_experiment(settings, progress=False)


def test_resnet_frames_place_every_layer(resnet_run):
    stats = resnet_run.stats
    table = layer_table(build_model("resnet18", seed=3), torch.zeros(1, 3, 64, 64))
    recorded = table[table["layer"].isin(stats["layer"])]
    # every recorded layer of the ResNet (convs, norms, activations: 57) in forward order, its resolution level
    assert stats["layer"].nunique() == len(recorded) == 57
    first = stats.drop_duplicates("layer").set_index("layer")
    for row in recorded.itertuples():
        assert first.loc[row.layer, "order"] == row.order and first.loc[row.layer, "depth"] == row.depth
    assert first.loc["conv1", "depth"] == 1 and first.loc["layer4.1.relu2", "depth"] == 5
    assert set(stats["stack"]) == {"conv", "pconv", "mconv", "conv_alone"}
    assert (stats["model"] == "resnet18").all()
    # channels per layer as the model has them
    per_layer = stats[stats["stack"] == "mconv"].groupby("layer").size()
    assert per_layer["layer3.0.conv1"] == 256 and per_layer["bn1"] == 64


def test_resnet_padding_errors_and_per_image_stats(resnet_run):
    pad, img = resnet_run.padding, resnet_run.image_stats
    alone = pad[pad["reference"] == "alone"]
    padded = alone[alone["padded"]]
    assert not padded.empty
    # masked and partial stacks: each image in its batch is what it is alone (float32 rounding)
    assert padded.loc[padded["stack"].isin(["mconv", "pconv"]), "rel_error"].max() < 1e-4
    # the plain stack leaks the padding into the image by the last level
    deep = padded[(padded["stack"] == "conv") & (padded["depth"] == 5)]
    assert deep["rel_error"].max() > 1e-3
    # image stats: padded share of the canvas, variance in the batch over the variance alone
    for row in img.drop_duplicates("image").itertuples():
        assert math.isclose(row.pad_fraction, 1 - row.h * row.w / (row.batch_h * row.batch_w))
    masked = img[img["stack"] == "mconv"]
    assert np.allclose(masked["rel_var"], 1.0, atol=1e-4)
    assert {"order", "depth", "block"} <= set(img.columns)


def test_padding_errors_by_hand_for_one_image():
    """The frame's batch-vs-alone error for one image and layer, recomputed here from the plain model."""
    settings = Settings(model="unet", depth=2, data="synthetic", num_images=2, batch_size=2, max_side=40,
                        stacks=("conv",), seed=5)
    res = run_experiment(settings, progress=False)
    from masked_torch.analysis.data import open_source

    source = open_source("synthetic", num_images=2, max_side=40, seed=5)
    images = [torch.from_numpy(source[i].pixels) for i in range(2)]
    plain = build_model("unet", depth=2, seed=5)
    H = max(-(-im.shape[1] // 4) * 4 for im in images)
    W = max(-(-im.shape[2] // 4) * 4 for im in images)
    outs = {}
    for i, im in enumerate(images):
        h, w = im.shape[1:]
        batch = torch.zeros(2, 3, H, W)
        for j, other in enumerate(images):
            batch[j, :, :other.shape[1], :other.shape[2]] = other
        alone = torch.zeros(1, 3, -(-h // 4) * 4, -(-w // 4) * 4)
        alone[0, :, :h, :w] = im
        with torch.no_grad():
            got, ref = plain(batch)[i, :, :h, :w], plain(alone)[0, :, :h, :w]  # outc: full resolution
        outs[source.names[i]] = float(torch.linalg.vector_norm((got - ref).double())
                                      / torch.linalg.vector_norm(ref.double()))
    frame = res.padding[(res.padding["layer"] == "outc") & (res.padding["reference"] == "alone")]
    for name, expected in outs.items():
        assert frame.loc[frame["image"] == name, "rel_error"].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_holes_mask_is_applied_to_batch_and_alone_alike():
    settings = Settings(data="synthetic", depth=2, num_images=4, batch_size=4, max_side=48, mask="holes", seed=2)
    res = run_experiment(settings, progress=False)
    plain = Settings(data="synthetic", depth=2, num_images=4, batch_size=4, max_side=48, seed=2)
    ref = run_experiment(plain, progress=False)
    a = res.stats[res.stats["stack"] == "mconv"].set_index(["layer", "channel"])["count"]
    b = ref.stats[ref.stats["stack"] == "mconv"].set_index(["layer", "channel"])["count"]
    assert (a.loc["conv1"] < b.loc["conv1"]).all()  # holes take valid positions away
    alone = res.padding[(res.padding["reference"] == "alone") & res.padding["stack"].isin(["pconv", "mconv"])]
    assert alone["rel_error"].max() < 1e-4  # the same holes in the batch and alone
    assert (res.stats["mask"] == "holes").all()


@pytest.mark.parametrize("model", ["resnet18", "unet"])
def test_cli_model_run_with_workers_bucket_and_weights(tmp_path, model):
    weights = tmp_path / "w.pt"
    torch.save(build_model(model, depth=2, seed=9).state_dict(), weights)
    out = tmp_path / "out"
    proc = _cli("--out", str(out), "--model", model, "--depth", "2", "--weights", str(weights), "--data",
                "synthetic", "--num-images", "4", "--batch-size", "2", "--max-side", "48", "--bucket",
                "--workers", "2", "--stacks", "conv,mconv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 images" in proc.stdout and "% of the batch canvases is padding (bucketed)" in proc.stdout
    meta = read_settings(out / STATS_FILE)
    assert meta["settings"]["model"] == model and meta["settings"]["weights"] == str(weights)
    assert 0 <= meta["padding_fraction"] < 1 and meta["num_images"] == 4
    for f in (STATS_FILE, PADDING_FILE, IMAGE_STATS_FILE, "figures/channel_stats.png",
              "figures/stats_vs_padding.png", "figures/activation_maps.png", "figures/padding_sensitivity.png"):
        assert (out / f).is_file(), f
    stats = pd.read_parquet(out / STATS_FILE)
    assert set(stats["stack"]) == {"conv", "mconv", "conv_alone"}


def test_cli_refuses_a_checkpoint_of_another_model_in_one_line(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(build_model("unet", depth=2).state_dict(), weights)
    out = tmp_path / "out"
    proc = _cli("--out", str(out), "--model", "resnet18", "--weights", str(weights), "--data", "synthetic",
                "--num-images", "2", "--max-side", "32")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "w.pt" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.rglob("*.parquet"))


def test_cli_bad_model_and_mask_are_flag_errors():
    for args, needle in ((("--model", "vgg"), "--model"), (("--mask", "stripes"), "--mask"),
                         (("--workers", "-1"), "--workers"), (("--weights", "/no/such.pt"), "--weights")):
        proc = _cli("--out", "/tmp/never", *args)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr


def test_masked_resnet_in_a_padded_batch_is_the_plain_resnet_on_each_image_exactly(resnet_run):
    """The ResNet runs at any size, so conv_alone is the plain model on each image at its exact size (no
    rounding padding): mconv in the padded batch gives that, at every layer, to float32 rounding."""
    pad = resnet_run.padding
    ref = pad[(pad["reference"] == "conv_alone")]
    assert ((ref["alone_h"] == ref["h"]) & (ref["alone_w"] == ref["w"])).all()
    assert ref.loc[ref["stack"] == "mconv", "rel_error"].max() < 1e-5
    assert ref.loc[ref["stack"] == "conv", "rel_error"].max() > 1e-3  # the plain model does see the padding
    stats = resnet_run.stats.set_index(["stack", "layer", "channel"]).sort_index()
    np.testing.assert_allclose(stats.loc["mconv", "var"], stats.loc["conv_alone", "var"], rtol=1e-4, atol=1e-7)


def test_run_padding_fraction_is_over_the_batches_that_ran(resnet_run):
    img = resnet_run.image_stats.drop_duplicates("image")
    expected = 1 - (img["h"] * img["w"]).sum() / (img["batch_h"] * img["batch_w"]).sum()
    assert resnet_run.padding_fraction == pytest.approx(expected)
    assert ((img["extra_pad_fraction"] <= img["pad_fraction"]) & (img["extra_pad_fraction"] >= 0)).all()


def test_variance_ratio_of_an_empty_region_is_nan_not_inf():
    from masked_torch.analysis.passes import _ratio

    assert math.isnan(_ratio(float("nan"), float("nan"))) and _ratio(0.0, 0.0) == 1.0
    assert _ratio(2.0, 0.0) == float("inf") and _ratio(3.0, 1.5) == 2.0


def test_an_unreadable_figure_image_is_a_one_line_error(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "ok.png")
    (folder / "bad.png").write_bytes(b"not a png")
    proc = _cli("--out", str(tmp_path / "out"), "--data", str(folder), "--depth", "1", "--figure-image", "bad.png")
    assert proc.returncode == 2 and "bad.png" in proc.stderr and "Traceback" not in proc.stderr


def test_settings_a_model_does_not_use_are_na_and_count_means_positions_per_channel(resnet_run):
    """The ResNet's depth is fixed and its ``bias`` is only ``fc``'s (not recorded): its rows carry <NA> for
    ``net_depth`` and ``bias``, in nullable columns that a stack run fills; the metadata keeps what was asked."""
    stats = resnet_run.stats
    assert str(stats["net_depth"].dtype) == "Int64" and str(stats["bias"].dtype) == "boolean"
    assert stats["net_depth"].isna().all() and stats["bias"].isna().all()
    assert (stats["seed"] == 3).all() and (stats["activation"] == "relu").all()
    stack = run_experiment(Settings(data="synthetic", depth=1, num_images=2, batch_size=2, max_side=16, seed=1,
                                    bias=False), progress=False).stats
    assert str(stack["net_depth"].dtype) == "Int64" and str(stack["bias"].dtype) == "boolean"
    assert (stack["net_depth"] == 1).all() and (stack["bias"] == False).all()  # noqa: E712 - a nullable column
    both = pd.concat([stats, stack], ignore_index=True)
    assert str(both["net_depth"].dtype) == "Int64" and both["net_depth"].isna().sum() == len(stats)
    # `count` (stats): valid positions per channel over every image; `values` (image_stats): valid positions x
    # channels of one image. For a layer with a one-channel mask the two agree: sum(values) = count * channels.
    img = resnet_run.image_stats
    assert "count" not in img.columns
    conv1 = img[(img["stack"] == "mconv") & (img["layer"] == "conv1")]
    per_channel = stats[(stats["stack"] == "mconv") & (stats["layer"] == "conv1")]["count"]
    assert per_channel.nunique() == 1 and len(per_channel) == 64
    assert conv1["values"].sum() == per_channel.iloc[0] * 64


def test_settings_apply_by_model():
    assert not Settings(model="resnet18").applies("depth") and not Settings(model="resnet18").applies("bias")
    assert Settings(model="resnet18").applies("seed")
    assert all(Settings(model=m).applies(k) for m in ("stack", "unet") for k in ("depth", "bias"))
