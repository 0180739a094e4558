"""``--preset seed`` (masked_torch.analysis.seed): the seed README's experiment. The preset's frame is checked against
statistics computed here, independently, from the layers: the mask built by hand position by position, the
seeded convs built here in the seed's order, each level run by hand (F.pixel_unshuffle + F.conv2d for the
values of conv; masked_torch.nn layers for pconv, mconv and for the masks), and float64 mean / population
variance over each channel's valid positions."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import masked_torch.nn as mnn
from masked_torch.analysis.run import PADDING_FILE, STATS_FILE, read_settings
from masked_torch.analysis.seed import on_grid, run_seed, seed_channel_plan, seed_mask

ROOT = Path(__file__).resolve().parents[1]
_VENV_PY = ROOT / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PY) if _VENV_PY.exists() else sys.executable
CHECKED_DEPTHS = 3


def _hand_mask(size: int) -> torch.Tensor:
    """The seed's mask written out position by position (no vectorised grid)."""
    m = torch.ones(1, 3, size, size)
    half = size // 2
    for r in range(size):
        for c in range(size):
            if r % 2 == 0 or r % 3 == 0 or c % 2 == 0 or c % 3 == 0:
                m[0, :, r, c] = 0
            elif r < half <= c:  # top right
                m[0, 0, r, c] = 0
            elif r >= half and c >= half:  # bottom right
                m[0, :2, r, c] = 0
            elif r >= half and c < half:  # bottom left
                m[0, :, r, c] = 0
    return m


def test_on_grid_hand_checked():
    assert on_grid(13).nonzero().flatten().tolist() == [0, 2, 3, 4, 6, 8, 9, 10, 12]


def test_seed_mask_hand_checked_positions():
    m = seed_mask(256)
    assert m.shape == (1, 3, 256, 256)
    # (1, 1): off the grid, top-left quarter: valid everywhere
    assert m[0, :, 1, 1].tolist() == [1, 1, 1]
    # (1, 131): 131 % 6 == 5, off the grid, top-right quarter: channel 0 invalid
    assert m[0, :, 1, 131].tolist() == [0, 1, 1]
    # (133, 133): 133 % 6 == 1, bottom-right: channels 0, 1 invalid
    assert m[0, :, 133, 133].tolist() == [0, 0, 1]
    # (133, 1): bottom-left: all invalid
    assert m[0, :, 133, 1].tolist() == [0, 0, 0]
    # on the grid through the row (r = 3, a multiple of 3) or the column (c = 4, a multiple of 2)
    assert m[0, :, 3, 1].tolist() == [0, 0, 0] and m[0, :, 1, 4].tolist() == [0, 0, 0]
    # top-left quarter: exactly 1/9 of the positions valid (rows and columns 1 or 5 mod 6)
    assert int(m[0, 2, :128, :128].sum()) == 43 * 43
    assert torch.equal(m, _hand_mask(256))


def test_channel_plan_matches_unshuffle():
    plan = seed_channel_plan(8)
    assert plan[0] == (12, 4) and plan[-1] == (1024, 512)
    c = 3
    for c_in, c_out in plan:
        assert c_in == 4 * c
        c = c_out


def _channel_stats(out: torch.Tensor, mask: torch.Tensor) -> pd.DataFrame:
    out = out[0].double()
    m = mask[0].bool().expand_as(out)
    rows = []
    for ch in range(out.shape[0]):
        v = out[ch][m[ch]]
        rows.append(dict(channel=ch, count=v.numel(), mean=float(v.mean()), var=float(((v - v.mean()) ** 2).mean())))
    return pd.DataFrame(rows)


def _by_hand(depth: int) -> dict:
    """{stack: [frame of level 1, ..., frame of level depth]} computed without masked_torch.analysis.seed or convert."""
    torch.manual_seed(1337)
    convs = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False) for c_in, c_out in seed_channel_plan(8)]
    x = torch.randn(1, 3, 256, 256)
    mask = _hand_mask(256)
    x = x * mask
    out = {}
    with torch.no_grad():
        for stack in ("conv", "pconv", "mconv"):
            h, m, frames = x, mask, []
            for conv in convs[:depth]:
                if stack == "conv":  # values by F.conv2d; the positions the mask rides along to
                    values = F.conv2d(F.pixel_unshuffle(h, 2), conv.weight, padding=1)
                    h_unsh, m = mnn.Unmasked(nn.PixelUnshuffle(2))(h, m)
                    _, m = mnn.Unmasked(conv)(h_unsh, m)
                    h = values
                else:
                    h_unsh, m = mnn.MaskedUnshuffle2d(2)(h, m)
                    layer = (mnn.PartialConv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=False,
                                               multichannel=True, update_mask=False, anchor="end")
                             if stack == "pconv" else
                             mnn.MaskedConv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=False,
                                              anchor="end"))
                    layer.weight.copy_(conv.weight)
                    h, m = layer(h_unsh, m)
                frames.append(_channel_stats(h, m))
            out[stack] = frames
    return out


@pytest.fixture(scope="module")
def preset():
    return run_seed()


def test_preset_frame_equals_hand_computed(preset):
    stats = preset.stats
    assert set(stats["stack"]) == {"conv", "pconv", "mconv"}  # no conv_alone
    assert sorted(set(stats["depth"])) == list(range(1, 9))
    hand = _by_hand(CHECKED_DEPTHS)
    for stack, frames in hand.items():
        for d, want in enumerate(frames, start=1):
            got = stats[(stats["stack"] == stack) & (stats["layer"] == f"conv{d}")].sort_values("channel")
            assert len(got) == len(want) == 2 ** (d - 1) * 4, (stack, d)
            np.testing.assert_array_equal(got["count"].to_numpy(), want["count"].to_numpy())
            np.testing.assert_allclose(got["mean"].to_numpy(), want["mean"].to_numpy(), rtol=1e-4,
                                       atol=1e-6 * float(np.sqrt(want["var"].max())), err_msg=f"{stack} {d}")
            np.testing.assert_allclose(got["var"].to_numpy(), want["var"].to_numpy(), rtol=1e-4,
                                       err_msg=f"{stack} {d}")


def test_preset_leaves_global_rng_alone():
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    run_seed()
    assert torch.equal(torch.rand(3), a)


def test_cli_preset_seed(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([PYTHON, str(ROOT / "visualize_activations_2d.py"), "--preset", "seed", "--out",
                           str(tmp_path), "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    stats = pd.read_parquet(tmp_path / STATS_FILE)
    assert set(stats["stack"]) == {"conv", "pconv", "mconv"} and (stats["net_depth"] == 8).all()
    assert (stats["data"] == "seed").all() and not stats["bias"].any() and (stats["activation"] == "none").all()
    meta = read_settings(tmp_path / STATS_FILE)
    assert meta["preset"] == "seed" and meta["settings"]["seed"] == 1337
    assert (tmp_path / "figures" / "channel_stats.png").exists()
    assert (tmp_path / "figures" / "activation_maps.png").exists()
    assert not (tmp_path / PADDING_FILE).exists()  # one image, no batch: no padding frame


def test_preset_refuses_flags_it_would_ignore(tmp_path):
    from masked_torch.analysis import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["--preset", "seed", "--model", "unet", "--mask", "holes", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert not any(tmp_path.iterdir())
