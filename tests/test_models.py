"""masked_torch.analysis.models: the plain models the suite runs, their stacks, weights and layer tables."""
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from masked_torch.analysis import models as M
from masked_torch.analysis.data import DataError
from masked_torch.analysis.stacks import build_plain, layer_depth, layer_kind
from masked_torch.utils import pad_batch

sys.path.insert(0, str(Path(__file__).parent))
from zoo import randomize_batchnorm  # noqa: E402

@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


SMALL = {"stack": dict(depth=3), "resnet18": dict(width=4, num_classes=5), "unet": dict(depth=2, width=4)}


def _small(name, **kwargs):
    return M.build_model(name, **{**SMALL[name], **kwargs})


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", M.MODEL_NAMES)
def test_each_model_builds_in_eval_mode_and_converts_with_identical_weights(name):
    model = _small(name)
    assert not model.training
    variants = M.build_variants(model)
    assert list(variants) == ["conv", "pconv", "mconv"]
    for stack, converted in variants.items():
        assert not converted.training, stack
        assert _same_weights(model, converted), stack
        assert converted is not model


@pytest.mark.parametrize("name", M.MODEL_NAMES)
def test_seeded_and_the_global_random_stream_untouched(name):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = _small(name, seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # as if nothing had been built
    assert _same_weights(a, _small(name, seed=5))
    assert not _same_weights(a, _small(name, seed=6))


def test_stack_is_the_seed_style_stack_with_its_weights():
    """The default model is build_plain unchanged; its first conv is what nn.Conv2d draws after manual_seed."""
    model = M.build_model("stack", depth=3, seed=7)
    assert _same_weights(model, build_plain(3, seed=7))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        conv1 = nn.Conv2d(12, 16, 3, padding=1)
    assert torch.equal(model.conv1.weight, conv1.weight) and torch.equal(model.conv1.bias, conv1.bias)
    assert M.MODEL_NAMES[0] == "stack"


def test_resnet18_has_torchvisions_layout():
    """Parameter count and state_dict keys of torchvision's resnet18 (11,689,512 parameters), keys written out
    here from torchvision's layout: a torchvision checkpoint loads strict."""
    model = M.build_model("resnet18")
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in bn]
    for stage in range(1, 5):
        for block in range(2):
            p = f"layer{stage}.{block}."
            for i in (1, 2):
                keys += [p + f"conv{i}.weight"] + [p + f"bn{i}.{k}" for k in bn]
            if stage > 1 and block == 0:
                keys += [p + "downsample.0.weight"] + [p + f"downsample.1.{k}" for k in bn]
    keys += ["fc.weight", "fc.bias"]
    assert list(model.state_dict()) == keys
    assert tuple(model.fc.weight.shape) == (1000, 512) and tuple(model.conv1.weight.shape) == (64, 3, 7, 7)
    assert "fc.bias" not in M.build_model("resnet18", width=4, bias=False).state_dict()


def test_options_and_refusals():
    assert M.canvas_multiple("stack", 3) == 8 and M.canvas_multiple("unet", 5) == 32
    assert M.canvas_multiple("resnet18", 2) == 32  # depth is ignored by the ResNet
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        M.build_model("vgg")
    with pytest.raises(ValueError, match="unknown model"):
        M.canvas_multiple("vgg", 4)
    with pytest.raises(ValueError, match="activation"):
        M.build_model("unet", activation="swish")
    with pytest.raises(ValueError, match="init"):
        M.build_model("resnet18", init="orthogonal")
    relu = _small("resnet18")
    tanh = _small("resnet18", activation="tanh")
    assert isinstance(tanh.layer1[0].relu2, nn.Tanh) and isinstance(relu.layer1[0].relu2, nn.ReLU)
    assert not relu.layer1[0].relu2.inplace  # a kept output is never overwritten by the activation after it
    kaiming = _small("unet", init="kaiming", seed=1)
    w = kaiming.down2.conv.conv1.weight  # 8 -> 16 channels, 3x3: He-normal std sqrt(2 / fan_in)
    assert float(w.std()) == pytest.approx(math.sqrt(2 / (8 * 9)), rel=0.15)
    assert not _same_weights(kaiming, _small("unet", seed=1))


# ------------------------------------------------------------------------------------------------ masked == alone
def _images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, *s, generator=g, dtype=torch.float64) for s in sizes]


def _nan_padding(x, mask):
    x = x.clone()
    x[mask.expand_as(x) == 0] = float("nan")
    return x


def test_resnet18_masked_padded_batch_equals_each_image_alone():
    model = randomize_batchnorm(_small("resnet18", seed=3), seed=3).double()
    variants = M.build_variants(model)
    images = _images([(40, 50), (37, 45)])
    x, mask = pad_batch(images, multiple=M.canvas_multiple("resnet18", 4), mask_dtype=torch.float64)
    assert tuple(x.shape[2:]) == (64, 64)
    out, out_mask = variants["mconv"](_nan_padding(x, mask), mask)
    assert torch.equal(out_mask, torch.ones(2, 1, dtype=torch.float64))
    pout, _ = variants["pconv"](_nan_padding(x, mask), mask)
    for k, im in enumerate(images):
        ref = model(im[None])
        assert torch.allclose(out[k:k + 1], ref, rtol=0, atol=1e-12 * float(ref.abs().max())), k
        # partial conv: padding-invariant (the batch against the partial model on the image alone)
        palone, _ = variants["pconv"](*pad_batch([im], mask_dtype=torch.float64))
        assert torch.allclose(pout[k], palone[0], rtol=0, atol=1e-12 * float(palone.abs().max())), k


def test_unet_masked_padded_batch_equals_each_image_alone():
    """Sizes that are multiples of 2**levels: the masked U-Net on the padded batch is the plain U-Net on each
    image alone, over the whole image; the output mask is the image."""
    model = randomize_batchnorm(_small("unet", seed=2), seed=2).double()
    variants = M.build_variants(model)
    images = _images([(16, 20), (12, 8)], seed=1)
    x, mask = pad_batch(images, multiple=M.canvas_multiple("unet", 2), mask_dtype=torch.float64)
    out, out_mask = variants["mconv"](_nan_padding(x, mask), mask)
    assert torch.equal(out_mask, mask)
    for k, im in enumerate(images):
        ref = model(im[None])
        h, w = im.shape[1:]
        assert torch.allclose(out[k:k + 1, :, :h, :w], ref, rtol=0, atol=1e-12 * float(ref.abs().max())), k
        assert torch.all(out[k, :, h:, :] == 0) and torch.all(out[k, :, :, w:] == 0)


def test_unet_sizes_off_the_multiple_match_the_image_on_its_own_canvas_and_lose_the_ragged_edge():
    """An image whose sides are not multiples of 2**levels cannot run alone in the plain U-Net (the skips would
    not match); on its own canvas (rounded up, masked) every stack gives what it gives in the batch, and the
    valid output is the image cut down to the multiple (the 2x2 pools keep only whole windows, as a plain pool
    on the image alone would)."""
    model = randomize_batchnorm(_small("unet", seed=4), seed=4).double()
    variants = M.build_variants(model)
    images = _images([(15, 21), (10, 7)], seed=2)
    m = M.canvas_multiple("unet", 2)
    x, mask = pad_batch(images, multiple=m, mask_dtype=torch.float64)
    for stack in ("mconv", "pconv"):
        out, out_mask = variants[stack](x, mask)
        for k, im in enumerate(images):
            alone, alone_mask = variants[stack](*pad_batch([im], multiple=m, mask_dtype=torch.float64))
            h, w = alone.shape[2:]
            assert torch.allclose(out[k, :, :h, :w], alone[0], rtol=0, atol=1e-12), (stack, k)
            assert torch.equal(out_mask[k, :, :h, :w], alone_mask[0])
            hh, ww = (s // m * m for s in im.shape[1:])
            assert int(out_mask[k].sum()) == hh * ww, (stack, k)


# ------------------------------------------------------------------------------------------------ weights
def test_weights_round_trip_in_every_checkpoint_form(tmp_path):
    source = _small("resnet18", seed=1)
    target = _small("resnet18", seed=2)
    assert not _same_weights(source, target)
    sd = source.state_dict()
    forms = {"plain.pt": sd, "ckpt.pt": {"state_dict": sd, "epoch": 3}, "model.pt": {"model": sd},
             "ddp.pt": {f"module.{k}": v for k, v in sd.items()}}
    for file, obj in forms.items():
        torch.save(obj, tmp_path / file)
        fresh = _small("resnet18", seed=2)
        assert M.load_weights(fresh, tmp_path / file) is fresh
        assert _same_weights(fresh, source), file
    loaded = M.build_model("resnet18", width=4, num_classes=5, seed=9, weights=tmp_path / "plain.pt")
    assert _same_weights(loaded, source) and not loaded.training


def _one_line_error(match, model, path):
    with pytest.raises(DataError, match=match) as info:
        M.load_weights(model, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_weights_missing_unexpected_shape_and_unreadable_are_one_line_errors(tmp_path):
    model = _small("unet")
    sd = model.state_dict()
    missing = {k: v for k, v in sd.items() if k != "outc.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    msg = _one_line_error("missing 1 key", model, tmp_path / "missing.pt")
    assert "outc.weight" in msg
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    assert "extra.weight" in _one_line_error("unexpected 1 key", model, tmp_path / "extra.pt")
    wrong = dict(sd)
    wrong["outc.weight"] = torch.zeros(3, 4, 1, 1)
    torch.save(wrong, tmp_path / "shape.pt")
    msg = _one_line_error("shapes differ", model, tmp_path / "shape.pt")
    assert "outc.weight (3, 4, 1, 1) (model (2, 4, 1, 1))" in msg
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    _one_line_error("cannot read", model, tmp_path / "junk.pt")
    _one_line_error("cannot read", model, tmp_path / "absent.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    _one_line_error("not a state_dict", model, tmp_path / "list.pt")
    # many missing keys: the first few are named and the rest counted, still one line
    torch.save({}, tmp_path / "empty.pt")
    msg = _one_line_error(r"missing \d+ key\(s\): inc.conv1.weight, inc.bn1.weight, inc.bn1.bias \(\+\d+ more\)",
                          model, tmp_path / "empty.pt")
    assert _same_weights(model, _small("unet"))  # nothing was loaded by any failed attempt


# ------------------------------------------------------------------------------------------------ layer table
def test_layer_table_of_the_stack_depth_is_the_level_number():
    model = M.build_model("stack", depth=4)
    table = M.layer_table(model, torch.zeros(1, 3, 32, 32))
    assert list(table.columns) == list(M.LAYER_TABLE_COLUMNS)
    assert list(table["layer"]) == ["conv1", "act1", "conv2", "act2", "conv3", "act3", "conv4", "act4"]
    assert list(table["order"]) == list(range(8))
    assert list(table["depth"]) == [layer_depth(n) for n in table["layer"]]  # today's level numbers
    assert list(table["kind"]) == [layer_kind(n) for n in table["layer"]]
    assert list(table["block"]) == [f"level{layer_depth(n)}" for n in table["layer"]]
    assert list(table["channels"]) == [16, 16, 32, 32, 48, 48, 64, 64]
    for stack, converted in M.build_variants(model).items():  # the same table for every stack
        pd.testing.assert_frame_equal(M.layer_table(converted, torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 32, 32)),
                                      table, obj=stack)


def test_layer_table_of_resnet18_goes_down_five_levels_and_the_fc_has_no_depth():
    model = _small("resnet18")
    from masked_torch.analysis.selection import default_selection

    with_fc = lambda name, module: isinstance(module, nn.Linear) or default_selection(name, module)  # noqa: E731
    table = M.layer_table(model, torch.zeros(1, 3, 64, 64), include=with_fc)
    assert len(table) == 57 + 1  # stem 3, 8 blocks x 6, 3 downsample x 2, fc
    spatial, fc = table.iloc[:-1], table.iloc[-1]
    assert list(spatial["depth"]) == sorted(spatial["depth"])  # never back up
    assert set(spatial["depth"]) == {1, 2, 3, 4, 5}
    assert fc["layer"] == "fc" and pd.isna(fc["depth"]) and fc["kind"] == "linear" and fc["channels"] == 5
    assert fc["block"] == "head" and np.isnan(fc["stride"]) and fc["order"] == len(table) - 1
    row = table.set_index("layer")
    assert list(row.loc[["conv1", "bn1", "relu"], "block"]) == ["stem"] * 3
    assert row.loc["conv1", "stride"] == 2.0 and row.loc["layer2.0.downsample.0", "stride"] == 2.0
    assert row.loc["layer1.0.conv1", "depth"] == 2  # after the stem's max pool
    assert row.loc["layer4.1.relu2", "depth"] == 5 and row.loc["layer4.1.relu2", "channels"] == 32
    assert row.loc["layer2.0.downsample.1", "block"] == "layer2.0"
    assert set(row["kind"].iloc[:-1]) == {"conv", "norm", "act"}
    # the default selection (the recorder's) leaves the fc out
    assert len(M.layer_table(model, torch.zeros(1, 3, 64, 64))) == 57


def test_layer_table_of_the_unet_goes_down_then_up():
    model = _small("unet", depth=3)
    table = M.layer_table(model, torch.zeros(1, 3, 16, 16))
    depth = list(table["depth"])
    bottom = depth.index(3)
    assert depth[0] == 0 and depth[-1] == 0
    assert depth[:bottom + 1] == sorted(depth[:bottom + 1]) and depth[bottom:] == sorted(depth[bottom:], reverse=True)
    row = table.set_index("layer")
    assert row.loc["up1.up", "kind"] == "upconv" and row.loc["up1.up", "stride"] == 0.5
    assert row.loc["up1.up", "depth"] == 2 and row.loc["up3.conv.relu2", "depth"] == 0
    assert list(row.loc[["inc.conv1", "down2.conv.bn1", "up1.conv.conv2", "outc"], "block"]) == [
        "inc", "down2", "up1", "head"]
    assert row.loc["down3.conv.relu2", "channels"] == 32


def test_layer_table_follows_execution_not_registration_and_refuses_a_layer_run_twice():
    class Swapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Conv2d(4, 4, 3, padding=1)  # registered first, runs second
            self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x):
            return self.b(self.a(x))

    table = M.layer_table(Swapped(), torch.zeros(1, 3, 8, 8))
    assert list(table["layer"]) == ["a", "b"] and list(table["order"]) == [0, 1]

    class Shared(nn.Module):  # torchvision's BasicBlock calls one ReLU twice
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(self.relu(x)))

    with pytest.raises(ValueError, match=r"\['relu'\] ran 2 times"):
        M.layer_table(Shared(), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="plain model"):
        M.layer_table(Shared(), torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 4, 4))
