"""``--preset seed`` (masked_torch.analysis.seed): the seed's ``examples/visualize_activations_2d.py``.

Every expectation here is computed independently of the preset: the mask by the seed's own slices (and position by
position), the seed's order of random draws written out (three stacks built, then the image), and the seed's
layers re-written from their formulas (``eps = 1e-8`` as the seed has it) and run in float64. The preset runs in
float32: each level sums at most ``n = 1024 * 9`` products, whose rounding (the probabilistic bound of Higham and
Mary, SIAM J. Sci. Comput. 2019: ``sqrt(n) * u`` with ``u = 2**-24``, exceeded with negligible probability; the
worst case ``n * u`` needs every rounding to err the same way) is 5.7e-6 of the layer's scale per level, 4.6e-5
after 8 levels. The statistics are compared to ``1e-4`` of their scale (``std``): twice that (8e-6 observed);
``eps`` changes the seed's ratios by under ``1e-8`` relative.
"""
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
from masked_torch.analysis.data import paste_masks
from masked_torch.analysis.loader import make_loader
from masked_torch.analysis.run import PADDING_FILE, STATS_FILE, read_settings
from masked_torch.analysis.seed import (SeedSource, run_seed, seed_channel_plan, seed_draws, seed_mask,
                                        seed_settings)
from masked_torch.analysis.settings import Settings
from masked_torch.analysis.stacks import build_variants

ROOT = Path(__file__).resolve().parents[1]
_VENV_PY = ROOT / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PY) if _VENV_PY.exists() else sys.executable
EPS = 1e-8  # the seed's
TOL = 1e-4  # of the layer's std: float32 rounding through 8 levels, with margin (module docstring)


# ---------------------------------------------------------------------------------------------------- the mask
def _seed_slicing() -> torch.Tensor:
    """The seed's lines, verbatim in meaning: x_mask = ones_like(x) with x of shape (1, 3, 256, 256)."""
    x_mask = torch.ones(1, 3, 256, 256)
    x_mask[:, :1, 0:128, 128:256] = 0
    x_mask[:, :2, 128:256, 128:256] = 0
    x_mask[:, :3, 128:256, 0:128] = 0
    x_mask[:, :, 0:256:2, 0:256:2] = 0
    x_mask[:, :, 0:256:3, 0:256:3] = 0
    return x_mask


def test_mask_is_the_seeds_slicing():
    assert torch.equal(seed_mask(256), _seed_slicing())


def test_mask_is_a_lattice_of_points_not_lines():
    m = seed_mask(256)[0]
    # top-left quarter: valid in every channel unless row and column are both even or both multiples of 3
    for r, c, valid in [(0, 0, 0), (0, 1, 1), (1, 0, 1), (2, 2, 0), (2, 3, 1), (3, 2, 1), (3, 3, 0), (0, 3, 0),
                        (3, 0, 0), (4, 9, 1), (6, 6, 0), (9, 4, 1), (1, 1, 1), (127, 127, 1), (126, 126, 0)]:
        assert m[:, r, c].tolist() == [valid] * 3, (r, c)
    # the other quarters, off the lattice: channel 0 out top-right, 0-1 bottom-right, all bottom-left
    assert m[:, 1, 131].tolist() == [0, 1, 1]
    assert m[:, 131, 131].tolist() == [0, 0, 1]
    assert m[:, 131, 1].tolist() == [0, 0, 0]
    # on the lattice, every channel is out
    assert m[:, 0, 130].tolist() == [0, 0, 0] and m[:, 132, 132].tolist() == [0, 0, 0]
    # a quarter: 64*64 both even + 43*43 both multiples of 3 - 22*22 both multiples of 6 are out
    assert int(m[2, :128, :128].sum()) == 128 * 128 - (64 * 64 + 43 * 43 - 22 * 22)
    # a third of the positions are on the lattice (not the 8/9 of the rows-or-columns reading)
    lattice = ~_on_lattice(256)
    assert abs(float(lattice.float().mean()) - 2 / 3) < 0.01
    assert torch.equal(m[2, :128, :128].bool(), lattice[:128, :128])


def _on_lattice(n: int) -> torch.Tensor:
    """(n, n) bool, position by position: row and column both even, or both multiples of 3."""
    out = torch.zeros(n, n, dtype=torch.bool)
    for r in range(n):
        for c in range(n):
            out[r, c] = (r % 2 == 0 and c % 2 == 0) or (r % 3 == 0 and c % 3 == 0)
    return out


def test_channel_plan_matches_unshuffle():
    plan = seed_channel_plan(8)
    assert plan[0] == (12, 4) and plan[-1] == (1024, 512)
    c = 3
    for c_in, c_out in plan:
        assert c_in == 4 * c
        c = c_out


# ---------------------------------------------------------------------------------------------- the draws
def _seed_order_of_draws():
    """As the seed's script: manual_seed(1337); conv, pconv, mconv stacks built in that order (its PartialConv2d
    and MaskedConv2d are nn.Conv2d subclasses; so are ours); pconv and mconv load conv's weights; then x."""
    torch.manual_seed(1337)
    conv, pconv, mconv = [], [], []
    for i in range(8):
        conv += [nn.PixelUnshuffle(2), nn.Conv2d(2 ** (i + 1) * 4 if i > 0 else 12, 2**i * 4, (3, 3), padding=1,
                                                 bias=False)]
    for i in range(8):
        pconv += [mnn.MaskedUnshuffle2d(2), mnn.PartialConv2d(2 ** (i + 1) * 4 if i > 0 else 12, 2**i * 4, (3, 3),
                                                               padding=1, bias=False, multichannel=True)]
    for i in range(8):
        mconv += [mnn.MaskedUnshuffle2d(2), mnn.MaskedConv2d(2 ** (i + 1) * 4 if i > 0 else 12, 2**i * 4, (3, 3),
                                                             padding=1, bias=False)]
    weights = [m.weight.detach().clone() for m in conv if isinstance(m, nn.Conv2d)]
    x = torch.randn(1, 3, 256, 256)
    return weights, x


@pytest.fixture(scope="module")
def seed_reference():
    state = torch.random.get_rng_state()
    try:
        return _seed_order_of_draws()
    finally:
        torch.random.set_rng_state(state)


def test_draws_in_the_seeds_order(seed_reference):
    weights, x = seed_reference
    plain, x_preset = seed_draws()
    convs = [m for m in plain if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 and all(c.bias is None for c in convs)
    for w, c in zip(weights, convs):
        assert torch.equal(w, c.weight)
    assert torch.equal(x_preset, x)
    # the image is drawn after all three stacks, not after the first only
    torch.manual_seed(1337)
    for c_in, c_out in seed_channel_plan(8):
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    assert not torch.equal(torch.randn(1, 3, 256, 256), x)


def test_source_yields_the_image_with_its_mask_and_the_batch_is_masked(seed_reference):
    _, x = seed_reference
    source = SeedSource()
    image = source[0]
    assert image.name == "seed_noise" and image.pixels.shape == (3, 256, 256)
    np.testing.assert_array_equal(image.pixels, x[0].numpy())
    np.testing.assert_array_equal(image.mask, _seed_slicing()[0].numpy())
    batches = list(make_loader(source, batch_size=1, multiple=256))
    assert len(batches) == 1
    batch = batches[0]
    assert torch.equal(batch.mask, _seed_slicing())
    assert torch.equal(batch.x, x * _seed_slicing())


def test_paste_masks_puts_each_images_mask_at_its_origin():
    x = torch.ones(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2, :3] = 1
    mask[1, :, :4, :4] = 1
    own = np.ones((3, 2, 3), np.float32)
    own[1, 0, 0] = 0
    x2, m2 = paste_masks(x, mask, [own, None])
    assert m2.shape == (2, 3, 4, 4)
    want = torch.zeros(2, 3, 4, 4)
    want[0, :, :2, :3] = 1
    want[0, 1, 0, 0] = 0
    want[1] = 1
    assert torch.equal(m2, want) and torch.equal(x2, want)
    assert mask.shape == (2, 1, 4, 4) and float(mask.sum()) == 22  # the input mask is not modified


# --------------------------------------------------------------------------- the seed's layers, from its formulas
def _ref_pconv(x, m, w):
    """The seed's PartialConv2d(multichannel=True): count of valid inputs over the window and every input channel,
    ratio = (in * k * k) / (count + eps), mask = count clamped at 1, output = conv * ratio * mask (no bias)."""
    out = F.conv2d(x, w, None, 1, 1)
    count = F.conv2d(m, torch.ones_like(w), None, 1, 1)
    ratio = w[0].numel() / (count + EPS)
    m_out = count.clamp(max=1)
    return out * ratio * m_out, m_out


def _ref_mconv(x, m, w):
    """The seed's MaskedConv2d: mask' = conv(mask, sum_kernel |W| as 1x1, padding 0) / (sum_c of it + eps),
    output = conv(x) * mask'."""
    a = w.abs().sum(dim=(2, 3), keepdim=True)
    m_out = F.conv2d(m, a, None, 1, 0) / (a.sum(dim=1).view(1, -1, 1, 1) + EPS)
    return F.conv2d(x, w, None, 1, 1) * m_out, m_out


def _moments(t: torch.Tensor) -> dict:
    v = t.double().flatten().numpy()
    mean, std = v.mean(), v.std()
    z = (v - mean) / std if std > 0 else np.full_like(v, np.nan)
    return dict(count=v.size, mean=mean, std=std, skewness=(z**3).mean(), kurtosis=(z**4).mean())


@pytest.fixture(scope="module")
def reference(seed_reference):
    return _seed_forward(*seed_reference)


def _seed_forward(weights, x) -> dict:
    """The seed's forward of all three stacks in float64: per stack, [(output, mask)] for depth 0 (the input)
    .. 8; conv's mask is None, as in the seed."""
    mask = _seed_slicing().double()
    xm = x.double() * mask
    ws = [w.double() for w in weights]
    out = {"conv": [(xm, None)], "pconv": [(xm, mask)], "mconv": [(xm, mask)]}
    with torch.no_grad():
        h = xm
        for w in ws:
            h = F.conv2d(F.pixel_unshuffle(h, 2), w, None, 1, 1)
            out["conv"].append((h, None))
        for s, layer in (("pconv", _ref_pconv), ("mconv", _ref_mconv)):
            h, m = xm, mask
            for w in ws:
                h, m = layer(F.pixel_unshuffle(h, 2), F.pixel_unshuffle(m.expand_as(h), 2), w)
                out[s].append((h, m))
    return out


@pytest.fixture(scope="module")
def preset():
    return run_seed()


def test_tensor_stats_are_the_seeds_printed_statistics(preset, reference):
    t = preset.tensor_stats
    assert sorted(set(t["stack"])) == ["conv", "mconv", "pconv"]
    for s, levels in reference.items():
        for d, (h, _) in enumerate(levels):
            row = t[(t["stack"] == s) & (t["depth"] == d)]
            assert len(row) == 1, (s, d)
            row = row.iloc[0]
            want = _moments(h[0])
            assert row["layer"] == ("input" if d == 0 else f"conv{d}")
            assert row["values"] == want["count"] == h[0].numel()
            assert row["std"] == pytest.approx(want["std"], rel=TOL), (s, d)
            assert row["mean"] == pytest.approx(want["mean"], abs=TOL * want["std"]), (s, d)
            # skewness and kurtosis are scale-free: float32 rounding of TOL relative in the values moves them by
            # about 3 * TOL and 4 * TOL times their size
            assert row["skewness"] == pytest.approx(want["skewness"], abs=3 * TOL * want["kurtosis"]), (s, d)
            assert row["kurtosis"] == pytest.approx(want["kurtosis"], rel=4 * TOL), (s, d)


def test_pconv_closes_the_holes_as_the_seeds_does(reference):
    # the seed's pconv mask grows with depth until the last level is valid everywhere; mconv's keeps its holes
    pconv_valid = [float((m != 0).double().mean()) for _, m in reference["pconv"][1:]]
    mconv_valid = [float((m[:, :1] != 0).double().mean()) for _, m in reference["mconv"][1:]]
    assert all(p >= q for p, q in zip(pconv_valid, mconv_valid))
    assert pconv_valid[0] > mconv_valid[0] and pconv_valid[-1] == 1.0
    assert mconv_valid[0] == pytest.approx(0.75)  # every 2x2 block has a valid input except the bottom-left quarter


def test_channel_stats_over_each_stacks_valid_positions(preset, reference):
    stats = preset.stats
    assert set(stats["stack"]) == {"conv", "pconv", "mconv"}  # no conv_alone
    assert sorted(set(stats["depth"])) == list(range(1, 9))
    for s in ("conv", "pconv", "mconv"):
        for d in range(1, 9):
            h = reference[s][d][0][0]
            # conv's positions: where mconv's mask is not 0 (the input is valid at the window centre in a channel)
            m = reference["pconv" if s == "pconv" else "mconv"][d][1][0] != 0
            m = m.expand_as(h)
            got = stats[(stats["stack"] == s) & (stats["layer"] == f"conv{d}")].sort_values("channel")
            assert len(got) == h.shape[0] == 2 ** (d - 1) * 4, (s, d)
            count = m.flatten(1).sum(1).numpy()
            mean = np.array([float(h[c][m[c]].mean()) for c in range(h.shape[0])])
            var = np.array([float(((h[c][m[c]] - h[c][m[c]].mean()) ** 2).mean()) for c in range(h.shape[0])])
            np.testing.assert_array_equal(got["count"].to_numpy(), count, err_msg=f"{s} {d}")
            scale = float(h[m].std()) if d < 8 else float(h.abs().max())
            np.testing.assert_allclose(got["mean"].to_numpy(), mean, rtol=0, atol=TOL * scale, err_msg=f"{s} {d}")
            np.testing.assert_allclose(got["var"].to_numpy(), var, rtol=0, atol=2 * TOL * scale**2,
                                       err_msg=f"{s} {d}")


def test_suite_runs_keep_pconv_padding_rule_and_the_preset_uses_the_seeds():
    assert Settings().update_mask is False and seed_settings().update_mask is True
    assert Settings.from_text({"update_mask": "true"}).update_mask is True
    plain, _ = seed_draws(2)
    for update_mask in (False, True):
        pconv = build_variants(plain, ("pconv",), update_mask=update_mask)["pconv"]
        layers = [m for m in pconv.modules() if isinstance(m, mnn.PartialConv2d)]
        assert len(layers) == 2 and all(m.update_mask is update_mask and m.multichannel for m in layers)
    layers = [m for m in build_variants(plain, ("pconv",))["pconv"].modules() if isinstance(m, mnn.PartialConv2d)]
    assert not any(m.update_mask for m in layers)


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
    assert meta["preset"] == "seed" and meta["settings"]["seed"] == 1337 and meta["settings"]["update_mask"]
    tensor = pd.read_parquet(tmp_path / "tensor_stats.parquet")
    assert len(tensor) == 3 * 9 and set(tensor["depth"]) == set(range(9))
    assert (tmp_path / "figures" / "channel_stats.png").exists()
    assert (tmp_path / "figures" / "activation_maps.png").exists()
    assert not (tmp_path / PADDING_FILE).exists()  # the image fills its canvas: no padding frame


def test_preset_refuses_flags_it_would_ignore(tmp_path):
    from masked_torch.analysis import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["--preset", "seed", "--model", "unet", "--mask", "holes", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert not any(tmp_path.iterdir())
