"""PartialConv and MaskedConv against the reference formulas (tests/reference.py), 1d/2d/3d."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import masked_torch.nn as mnn
from reference import centre_ref, masked_ref, partial_ref

PARTIAL = {1: mnn.PartialConv1d, 2: mnn.PartialConv2d, 3: mnn.PartialConv3d}
MASKED = {1: mnn.MaskedConv1d, 2: mnn.MaskedConv2d, 3: mnn.MaskedConv3d}


@st.composite
def conv_case(draw):
    nd = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.sampled_from([1, 2, 3, 4, 5])) for _ in range(nd))
    stride = tuple(draw(st.sampled_from([1, 2])) for _ in range(nd))
    dilation = tuple(draw(st.sampled_from([1, 2])) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    max_side = {1: 14, 2: 9, 3: 6}[nd]
    padding = tuple(draw(st.integers(0, 3)) for _ in range(nd)) if draw(st.booleans()) else padding
    spatial = []
    for k, d, p in zip(kernel, dilation, padding):
        extent = d * (k - 1) + 1
        spatial.append(draw(st.integers(max(1, extent - 2 * p), max(max_side, extent - 2 * p))))
    n = draw(st.integers(1, 3))
    mask_channels = draw(st.sampled_from([1, c_in]))
    bias = draw(st.booleans())
    mask_kind = draw(st.sampled_from(["binary", "bool", "soft"]))
    seed = draw(st.integers(0, 2**16))
    return dict(nd=nd, groups=groups, c_in=c_in, c_out=c_out, kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, spatial=tuple(spatial), n=n,
                mask_channels=mask_channels, bias=bias, mask_kind=mask_kind, seed=seed)


def make_inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    shape = (case["n"], case["c_in"]) + case["spatial"]
    x = torch.randn(shape, generator=g)
    mshape = (case["n"], case["mask_channels"]) + case["spatial"]
    m = (torch.rand(mshape, generator=g) > 0.35).float()
    if case["mask_kind"] == "bool":
        m = m.bool()
    elif case["mask_kind"] == "soft":
        m = m * torch.rand(mshape, generator=g)
    return x, m


def build(cls, case, **options):
    layer = cls(case["c_in"], case["c_out"], case["kernel"], stride=case["stride"], padding=case["padding"],
                dilation=case["dilation"], groups=case["groups"], bias=case["bias"], **options)
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.normal_()
    return layer.double()


@settings(max_examples=150)
@given(case=conv_case(), multichannel=st.booleans(), update_mask=st.booleans(),
       anchor=st.sampled_from(["centre", "end"]))
def test_partial_conv_formula(case, multichannel, update_mask, anchor):
    x, m = make_inputs(case)
    layer = build(PARTIAL[case["nd"]], case, multichannel=multichannel, update_mask=update_mask, anchor=anchor)
    y, out_mask = layer(x.double(), m)
    ry, rm = partial_ref(x, m.double(), layer.weight.detach(), layer.bias, case["groups"], case["stride"],
                         case["padding"], case["dilation"], multichannel, update_mask, anchor)
    torch.testing.assert_close(y, ry, rtol=1e-9, atol=1e-9)
    assert out_mask.shape[1] in (1, case["c_out"])
    torch.testing.assert_close(out_mask.expand_as(rm).double(), rm, rtol=1e-12, atol=1e-12)


@settings(max_examples=150)
@given(case=conv_case(), anchor=st.sampled_from(["centre", "end"]))
def test_masked_conv_formula(case, anchor):
    x, m = make_inputs(case)
    layer = build(MASKED[case["nd"]], case, anchor=anchor)
    y, out_mask = layer(x.double(), m)
    ry, rm = masked_ref(x, m.double(), layer.weight.detach(), layer.bias, case["groups"], case["stride"],
                        case["padding"], case["dilation"], anchor)
    torch.testing.assert_close(y, ry, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out_mask.expand_as(rm).double(), rm, rtol=1e-12, atol=1e-12)
    if case["mask_channels"] == 1:
        assert out_mask.shape[1] == 1, "a 1-channel mask through MaskedConv stays 1-channel"


def test_masked_conv_one_channel_mask_is_the_centre():
    """With a 1-channel mask, m' is exactly the mask at the window centre (seed bug: padding < k//2)."""
    torch.manual_seed(0)
    for padding, dilation in [(0, 1), (1, 2), (0, 2), (3, 1)]:
        layer = mnn.MaskedConv2d(2, 3, 3, padding=padding, dilation=dilation).double()
        x = torch.randn(2, 2, 11, 10, dtype=torch.float64)
        m = (torch.rand(2, 1, 11, 10) > 0.3).double()
        _, out_mask = layer(x, m)
        ref = centre_ref(m, (3, 3), (1, 1), (padding,) * 2, (dilation,) * 2, out_mask.shape[2:])
        assert torch.equal(out_mask, ref)


def test_multichannel_false_counts_any_channel_valid():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    m = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    m[:, 0, :, :3] = 1
    m[:, 1, :, 3:] = 1
    layer = mnn.PartialConv2d(2, 1, 3, padding=1, bias=False).double()
    _, out_mask = layer(x, m)
    assert out_mask.shape == (1, 1, 6, 6) and bool((out_mask == 1).all())


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_depthwise_counts_own_group(nd):
    """Depthwise conv with a C-channel mask: each output channel counts its own input channel only."""
    c = 3
    layer = mnn.PartialConv1d if nd == 1 else mnn.PartialConv2d if nd == 2 else mnn.PartialConv3d
    conv = layer(c, c, 3, padding=1, groups=c, multichannel=True, bias=False).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
    spatial = (5,) * nd
    x = torch.ones((1, c) + spatial, dtype=torch.float64)
    m = torch.zeros((1, c) + spatial, dtype=torch.float64)
    m[:, 0] = 1  # channel 0 fully valid, channel 1 half, channel 2 nothing
    m[(0, 1) + (slice(0, 2),) * nd] = 1
    y, out_mask = conv(x, m)
    # all-ones input and weights: a partial conv of ones gives winsize/sum*sum = 9 (3**nd) where valid
    full = 3 ** nd
    assert torch.allclose(y[:, 0], torch.full_like(y[:, 0], full))
    assert bool((y[:, 2] == 0).all()) and bool((out_mask[:, 2] == 0).all())
    assert torch.allclose(y[:, 1][out_mask[:, 1] > 0], torch.tensor(float(full), dtype=torch.float64))
