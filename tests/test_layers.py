"""Behaviour of the masked layers: drop-in, garbage under the mask, bad input, lazy, norms, containers."""
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import masked_torch.nn as mnn
import masked_torch.functional as MF

CONVS = [
    (nn.Conv1d, mnn.PartialConv1d, mnn.MaskedConv1d, 1),
    (nn.Conv2d, mnn.PartialConv2d, mnn.MaskedConv2d, 2),
    (nn.Conv3d, mnn.PartialConv3d, mnn.MaskedConv3d, 3),
]
SPATIAL = {1: (13,), 2: (9, 11), 3: (5, 6, 7)}


def padded_mask(n, spatial, channels=1):
    """Per-sample masks that cut each sample to a different size (top-left anchored)."""
    m = torch.zeros((n, channels) + spatial)
    for i in range(n):
        cut = tuple(max(1, s - i * 2) for s in spatial)
        m[(i, slice(None)) + tuple(slice(0, c) for c in cut)] = 1
    return m


@pytest.mark.parametrize("plain,partial,masked,nd", CONVS)
@pytest.mark.parametrize("which", ["partial", "masked"])
def test_drop_in_from_plain_conv(plain, partial, masked, nd, which):
    conv = plain(4, 6, 3, padding=1, stride=1, bias=True)
    new = (partial if which == "partial" else masked)(4, 6, 3, padding=1)
    new.load_state_dict(conv.state_dict(), strict=True)
    x = torch.randn((2, 4) + SPATIAL[nd])
    y, out_mask = new(x)
    assert out_mask is None
    assert torch.equal(y, conv(x)), "mask=None must be bit-identical to nn.ConvNd"
    assert isinstance(new, plain) and set(new.state_dict()) == set(conv.state_dict())


@pytest.mark.parametrize("plain,partial,masked,nd", CONVS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_garbage_under_the_mask_never_leaks(plain, partial, masked, nd, bad):
    torch.manual_seed(0)
    spatial = SPATIAL[nd]
    x = torch.randn((3, 4) + spatial)
    m = padded_mask(3, spatial)
    garbage = torch.where(m.bool().expand_as(x), x, torch.full_like(x, bad))
    clean = torch.where(m.bool().expand_as(x), x, torch.zeros_like(x))
    for layer in (partial(4, 5, 3, padding=1, update_mask=False), partial(4, 5, 3, padding=1),
                  partial(4, 5, 3, padding=1, multichannel=True), masked(4, 5, 3, padding=1)):
        for mask in (m, m.expand_as(x).contiguous()):
            y_bad, mask_bad = layer(garbage, mask)
            y_ok, mask_ok = layer(clean, mask)
            assert torch.isfinite(y_bad).all(), type(layer).__name__
            assert torch.equal(y_bad, y_ok) and torch.equal(mask_bad, mask_ok)


@pytest.mark.parametrize("plain,partial,masked,nd", CONVS)
def test_all_zero_mask_sample_gives_exact_zeros(plain, partial, masked, nd):
    spatial = SPATIAL[nd]
    x = torch.randn((2, 3) + spatial)
    x[1] = float("nan")
    m = torch.ones((2, 1) + spatial)
    m[1] = 0
    for layer in (partial(3, 4, 3, padding=1), partial(3, 4, 3, padding=1, update_mask=False),
                  masked(3, 4, 3, padding=1)):
        y, out_mask = layer(x, m)
        assert torch.isfinite(y).all()
        assert bool((y[1] == 0).all()) and bool((out_mask[1] == 0).all())


@pytest.mark.parametrize(
    "mask_shape, match",
    [
        ((2, 1, 9, 10), "mask of shape \\(2, 1, 9, 10\\) does not fit input of shape \\(2, 4, 9, 11\\)"),
        ((2, 3, 9, 11), "mask of shape \\(2, 3, 9, 11\\)"),
        ((1, 1, 9, 11), "mask of shape \\(1, 1, 9, 11\\)"),
        ((2, 9, 11), "mask of shape \\(2, 9, 11\\)"),
        ((2, 1, 1, 9, 11), "mask of shape \\(2, 1, 1, 9, 11\\)"),
    ],
)
@pytest.mark.parametrize("cls", [mnn.PartialConv2d, mnn.MaskedConv2d])
def test_bad_masks_raise_value_error_naming_module_and_shapes(mask_shape, match, cls):
    layer = cls(4, 2, 3, padding=1)
    with pytest.raises(ValueError, match=match) as info:
        layer(torch.randn(2, 4, 9, 11), torch.ones(mask_shape))
    assert cls.__name__ in str(info.value)


@pytest.mark.parametrize("module,input", [
    (mnn.MaskedBatchNorm2d(4), torch.randn(2, 4, 9, 11)),
    (mnn.MaskedUnshuffle2d(2), torch.randn(2, 4, 8, 10)),
    (mnn.MaskedSpatialMean(), torch.randn(2, 4, 9, 11)),
    (mnn.Masked(nn.ReLU()), torch.randn(2, 4, 9, 11)),
])
def test_bad_masks_other_modules(module, input):
    with pytest.raises(ValueError, match="mask|fit"):
        module(input, torch.ones(2, 1, 3, 3))


def test_unbatched_input_with_mask_is_rejected_but_plain_unbatched_works():
    layer = mnn.MaskedConv2d(3, 2, 3, padding=1)
    x = torch.randn(3, 8, 8)
    assert layer(x)[0].shape == (2, 8, 8)
    with pytest.raises(ValueError, match="MaskedConv2d"):
        layer(x, torch.ones(1, 8, 8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(padding_mode="reflect", padding=1), "padding_mode"),
    (dict(padding="same", kernel_size=4), "even kernel"),
    (dict(padding="middle"), "padding"),
])
def test_bad_constructor_arguments(kwargs, match):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        mnn.MaskedConv2d(3, 4, **kwargs)
    if "even kernel" not in match:
        with pytest.raises(ValueError, match=match):
            mnn.PartialConv2d(3, 4, **kwargs)
    else:  # the centre is only needed for update_mask=False
        with pytest.raises(ValueError, match=match):
            mnn.PartialConv2d(3, 4, update_mask=False, **kwargs)
        mnn.PartialConv2d(3, 4, **kwargs)  # window sums need no centre


def test_no_assert_statements_for_validation():
    import pathlib

    import masked_torch

    for path in pathlib.Path(masked_torch.__file__).parent.rglob("*.py"):
        assert "assert " not in path.read_text(), f"{path} validates with assert"


def test_string_padding_same_and_valid():
    x = torch.randn(2, 3, 9, 9)
    m = padded_mask(2, (9, 9))
    for padding in ("same", "valid"):
        for cls in (mnn.MaskedConv2d, mnn.PartialConv2d):
            layer = cls(3, 4, 3, padding=padding)
            ref = cls(3, 4, 3, padding=1 if padding == "same" else 0)
            ref.load_state_dict(layer.state_dict())
            y, mk = layer(x, m)
            ry, rmk = ref(x, m)
            assert torch.allclose(y, ry) and torch.equal(mk, rmk)


@pytest.mark.parametrize("lazy,eager,nd", [
    (mnn.LazyPartialConv1d, mnn.PartialConv1d, 1), (mnn.LazyPartialConv2d, mnn.PartialConv2d, 2),
    (mnn.LazyPartialConv3d, mnn.PartialConv3d, 3), (mnn.LazyMaskedConv1d, mnn.MaskedConv1d, 1),
    (mnn.LazyMaskedConv2d, mnn.MaskedConv2d, 2), (mnn.LazyMaskedConv3d, mnn.MaskedConv3d, 3),
])
def test_lazy_infers_in_channels(lazy, eager, nd):
    options = {"update_mask": False} if "Partial" in eager.__name__ else {}
    layer = lazy(5, 3, padding=1, **options)
    x = torch.randn((2, 6) + SPATIAL[nd])
    y, out_mask = layer(x, padded_mask(2, SPATIAL[nd]))
    assert type(layer) is eager and layer.in_channels == 6 and layer.weight.shape[:2] == (5, 6)
    assert y.shape[1] == 5 and out_mask is not None
    if options:
        assert layer.update_mask is False
    # the lazy layer loads a trained eager state_dict
    fresh = lazy(5, 3, padding=1, **options)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(x)[0], layer(x)[0])


def test_extra_repr_shows_options():
    text = repr(mnn.convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), "partial",
                            update_mask=False, multichannel=True))
    assert "update_mask=False" in text and "multichannel=True" in text and "padding=(1, 1)" in text
    assert "downscale_factor=2" in repr(mnn.MaskedUnshuffle2d(2))


# --- batch norm -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,plain,nd", [(mnn.MaskedBatchNorm1d, nn.BatchNorm1d, 1),
                                          (mnn.MaskedBatchNorm2d, nn.BatchNorm2d, 2),
                                          (mnn.MaskedBatchNorm3d, nn.BatchNorm3d, 3)])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("mask_channels", [1, 4])
def test_masked_batch_norm_matches_batch_norm_on_valid_positions(cls, plain, nd, momentum, mask_channels):
    torch.manual_seed(1)
    c = 4
    bn = cls(c, momentum=momentum)
    ref = plain(c, momentum=momentum)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    ref.load_state_dict(bn.state_dict(), strict=True)
    spatial = SPATIAL[nd]
    for step in range(3):
        x = torch.randn((3, c) + spatial) * 2 + 5
        m = (torch.rand((3, mask_channels) + spatial) > 0.3).float()
        x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan")))
        y, out_mask = bn(x, m)
        assert out_mask is m and torch.isfinite(y).all()
        for ch in range(c):
            valid = m.expand_as(x)[:, ch].bool()
            vals = x[:, ch][valid].double()
            mean, var = vals.mean(), vals.var(unbiased=False)
            expected = (vals - mean) / torch.sqrt(var + bn.eps) * bn.weight[ch].double() + bn.bias[ch].double()
            torch.testing.assert_close(y[:, ch][valid].double(), expected, rtol=1e-4, atol=1e-4)
            assert bool((y[:, ch][~valid] == 0).all())
            # running stats: what nn.BatchNorm1d computes on exactly these values
            ref_ch = nn.BatchNorm1d(1, momentum=momentum)
            ref_ch.running_mean.copy_(ref.running_mean[ch:ch + 1])
            ref_ch.running_var.copy_(ref.running_var[ch:ch + 1])
            ref_ch.num_batches_tracked.copy_(ref.num_batches_tracked)
            ref_ch.train()(vals.float().view(-1, 1))
            ref.running_mean[ch] = ref_ch.running_mean[0]
            ref.running_var[ch] = ref_ch.running_var[0]
        ref.num_batches_tracked += 1
        torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
        assert int(bn.num_batches_tracked) == step + 1
    bn.eval()
    x = torch.randn((2, c) + spatial)
    m = padded_mask(2, spatial)
    y, _ = bn(x, m)
    shape = (1, c) + (1,) * nd
    expected = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) \
        * bn.weight.view(shape) + bn.bias.view(shape)
    torch.testing.assert_close(y, expected * m)


def test_masked_batch_norm_without_mask_is_batch_norm():
    bn, ref = mnn.MaskedBatchNorm2d(3), nn.BatchNorm2d(3)
    ref.load_state_dict(bn.state_dict(), strict=True)
    x = torch.randn(4, 3, 5, 5)
    y, out_mask = bn(x)
    assert out_mask is None and torch.equal(y, ref(x))
    assert torch.equal(bn.running_var, ref.running_var)


def test_masked_batch_norm_all_masked_batch_keeps_running_stats():
    bn = mnn.MaskedBatchNorm2d(2)
    y, _ = bn(torch.randn(2, 2, 4, 4), torch.zeros(2, 1, 4, 4))
    assert bool((y == 0).all())
    assert torch.equal(bn.running_mean, torch.zeros(2)) and torch.equal(bn.running_var, torch.ones(2))


def test_masked_batch_norm_without_running_stats_uses_batch_stats_in_eval():
    bn = mnn.MaskedBatchNorm2d(2, track_running_stats=False).eval()
    x = torch.randn(2, 2, 4, 4) + 3
    y, _ = bn(x, torch.ones(2, 1, 4, 4))
    torch.testing.assert_close(y, nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True))


# --- unshuffle, mean, containers ---------------------------------------------------------------------

@given(n=st.integers(1, 2), c=st.integers(1, 3), nd=st.sampled_from([1, 2, 3]), r=st.sampled_from([1, 2, 3]),
       blocks=st.lists(st.integers(1, 3), min_size=3, max_size=3))
@settings(max_examples=30)
def test_unshuffle_reference(n, c, nd, r, blocks):
    spatial = tuple(b * r for b in blocks[:nd])
    x = torch.randn((n, c) + spatial)
    m = (torch.rand((n, 1) + spatial) > 0.5).float()
    module = [mnn.MaskedUnshuffle1d, mnn.MaskedUnshuffle2d, mnn.MaskedUnshuffle3d][nd - 1](r)
    y, out_mask = module(x, m)
    assert y.shape == (n, c * r**nd) + tuple(b for b in blocks[:nd])
    x = torch.where(m.bool(), x, torch.zeros(()))  # the output is 0 where its mask is 0
    # reference: output channel c*r^nd + offset, offset row-major over the sub-position
    import itertools
    for offset, sub in enumerate(itertools.product(range(r), repeat=nd)):
        index = (slice(None), slice(None)) + tuple(slice(s, None, r) for s in sub)
        for ch in range(c):
            assert torch.equal(y[:, ch * r**nd + offset], x[index][:, ch])
            assert torch.equal(out_mask[:, ch * r**nd + offset], m[index][:, 0])
    if nd == 2:
        assert torch.equal(y, nn.PixelUnshuffle(r)(x))


def test_unshuffle_bad_size():
    with pytest.raises(ValueError, match="MaskedUnshuffle2d.*divisible"):
        mnn.MaskedUnshuffle2d(2)(torch.randn(1, 3, 5, 4), torch.ones(1, 1, 5, 4))


def test_spatial_mean():
    x = torch.randn(3, 2, 5, 6)
    m = padded_mask(3, (5, 6))
    m[2] = 0
    x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan")))
    y, out_mask = mnn.MaskedSpatialMean()(x, m)
    for i in range(2):
        valid = m[i, 0].bool()
        torch.testing.assert_close(y[i], x[i][:, valid].mean(-1))
    assert bool((y[2] == 0).all()) and out_mask.flatten().tolist() == [1.0, 1.0, 0.0]
    y, out_mask = mnn.MaskedSpatialMean()(x[:, :, :2, :2].nan_to_num())
    assert out_mask is None and y.shape == (3, 2)


def test_masked_sequential_rejects_plain_child():
    seq = mnn.MaskedSequential(mnn.MaskedConv2d(3, 3, 3, padding=1), nn.ReLU())
    with pytest.raises(TypeError, match="Masked"):
        seq(torch.randn(1, 3, 4, 4), torch.ones(1, 1, 4, 4))


def test_masked_wrapper_refuses_what_is_not_elementwise_and_names_the_layer_to_use():
    with pytest.raises(TypeError, match="MaskedMaxPool2d"):
        mnn.Masked(nn.MaxPool2d(2))
    with pytest.raises(TypeError, match="MaskedGroupNorm"):
        mnn.Masked(nn.GroupNorm(2, 4))
    with pytest.raises(TypeError, match="elementwise=True"):
        mnn.Masked(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="elementwise"):  # vouched for, but it changes the shape
        mnn.Masked(nn.MaxPool2d(2), elementwise=True)(torch.randn(1, 3, 4, 4), torch.ones(1, 1, 4, 4))


@pytest.mark.parametrize("module", [nn.Sigmoid(), nn.Hardsigmoid(), nn.ReLU(), nn.Softplus(), nn.Threshold(-1, 2.0)])
def test_masked_wrapper_output_is_zero_under_the_mask(module):
    """f(0) != 0 (sigmoid) or garbage under the mask: the output is still exactly 0 where the mask is 0."""
    x = torch.randn(2, 3, 5, 5)
    m = torch.ones(2, 1, 5, 5)
    m[1, :, 2:] = 0
    x[1, :, 3:] = float("nan")
    y, out_mask = mnn.Masked(module)(x, m)
    assert out_mask is m
    assert bool((y[m.expand_as(y) == 0] == 0).all())
    assert torch.equal(y[m.expand_as(y) == 1], module(x)[m.expand_as(y) == 1])


def test_wrappers_keep_the_wrapped_modules_parameter_names():
    prelu = nn.PReLU(3)
    wrapped = mnn.Masked(prelu)
    assert set(wrapped.state_dict()) == {"weight"} and wrapped.module is prelu
    assert wrapped.weight is prelu.weight
    conv = nn.Conv2d(3, 4, 3, padding=1)
    plain = mnn.Unmasked(conv).double()
    assert set(plain.state_dict()) == {"weight", "bias"} and conv.weight.dtype == torch.float64
    drop = mnn.Masked(nn.Dropout(0.5)).eval()
    assert drop.module.training is False


def test_state_dict_round_trip_through_bytes():
    seq = mnn.convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()), "masked")
    buf = io.BytesIO()
    torch.save(seq.state_dict(), buf)
    buf.seek(0)
    other = mnn.convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()), "masked")
    other.load_state_dict(torch.load(buf), strict=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_zero_masked_fast_path_is_bit_exact(dtype):
    """The CPU bitwise select equals torch.where bit for bit: NaN/-0.0 kept where valid, +0.0 elsewhere."""
    from masked_torch.functional import _zero_masked

    x = torch.randn(3, 4, 5, 6).to(dtype)
    x[0, 0, 0, :3] = torch.tensor([float("nan"), -0.0, float("inf")]).to(dtype)
    x[1, :, 2, 2] = float("nan")
    m = (torch.rand(3, 1, 5, 6) > 0.4).float()
    m[0, 0, 0, :3] = 1
    fast = _zero_masked(x, m)
    ref = torch.where(m != 0, x, torch.zeros((), dtype=dtype))
    assert fast.dtype == dtype
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}.get(dtype, torch.int16)
    assert torch.equal(fast.view(bits), ref.view(bits))
    x.requires_grad_(True)  # the autograd path is torch.where
    assert torch.equal(_zero_masked(x, m).detach().view(bits), ref.view(bits))


def test_masked_batch_norm_gradients_stay_finite_with_nan_under_the_mask():
    bn = mnn.MaskedBatchNorm2d(3).double()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    m = padded_mask(2, (5, 6)).double()
    x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan"))).requires_grad_(True)
    y, _ = bn(x, m)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(bn.weight.grad).all()
    assert torch.isfinite(bn.bias.grad).all()


def test_forward_mode_ad_and_functorch_keep_tangents():
    """The CPU fast path must not drop forward-mode tangents (it falls back to torch.where)."""
    layer = mnn.MaskedConv2d(2, 3, 3, padding=1).double()
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    t = torch.randn_like(x)
    m = padded_mask(1, (6, 6)).double()
    m[:, :, 3:] = 0
    f = lambda x: layer(x, m)[0]  # noqa: E731
    _, tangent = torch.func.jvp(f, (x,), (t,))
    eps = 1e-6
    numeric = (f(x + eps * t) - f(x - eps * t)) / (2 * eps)
    torch.testing.assert_close(tangent, numeric, rtol=1e-5, atol=1e-6)
    assert tangent.abs().max() > 0


def test_masks_are_never_written_and_an_unchanged_mask_is_passed_on():
    """Layers never write into a mask; where a layer keeps the grid, the output mask *is* the input mask
    (as batch norm and elementwise modules pass it on), so a converted model can tell equal masks apart
    for free."""
    m = torch.ones(1, 1, 5, 5)
    m[..., 3:] = 0
    before = m.clone()
    for layer in (mnn.MaskedConv2d(1, 1, 3, padding=1), mnn.PartialConv2d(1, 1, 3, padding=1, update_mask=False),
                  mnn.MaskedConv2d(1, 1, 3, padding=1, stride=2)):
        _, out_mask = layer(torch.randn(1, 1, 5, 5), m)
        assert torch.equal(m, before)
    assert mnn.MaskedConv2d(1, 1, 3, padding=1)(torch.randn(1, 1, 5, 5), m)[1] is m


def test_masked_batch_norm_single_valid_position_keeps_running_var():
    bn = mnn.MaskedBatchNorm2d(2)
    m = torch.zeros(1, 1, 3, 3)
    m[..., 0, 0] = 1
    bn(torch.randn(1, 2, 3, 3), m)
    assert torch.equal(bn.running_var, torch.ones(2))


@pytest.mark.parametrize("layer,shape", [
    (mnn.MaskedUnshuffle2d(2), (2, 3, 6, 8)),
    (mnn.MaskedPixelShuffle(2), (2, 8, 3, 4)),
    (mnn.MaskedFlatten(2), (2, 3, 6, 8)),
    (mnn.Masked(nn.Identity()), (2, 3, 6, 8)),
    (mnn.MaskedMaxPool2d(2), (2, 3, 6, 8)),
    (mnn.MaskedAvgPool2d(3, 2, 1), (2, 3, 6, 8)),
    (mnn.MaskedUpsample(scale_factor=2, mode="bilinear"), (2, 3, 6, 8)),
    (mnn.MaskedGroupNorm(1, 3), (2, 3, 6, 8)),
    (mnn.MaskedConvTranspose2d(3, 2, 2, stride=2), (2, 3, 6, 8)),
])
def test_every_layer_output_is_zero_where_its_mask_is_zero_even_with_garbage_input(layer, shape):
    x = torch.randn(shape)
    m = torch.ones(shape[0], 1, *shape[2:])
    m[1, :, shape[2] // 2:] = 0
    x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan")))
    y, out_mask = layer(x, m)
    assert bool(torch.isfinite(y).all())
    assert bool((y[(out_mask == 0).expand_as(y)] == 0).all())


@pytest.mark.parametrize("mode", ["mean", "sum", "amax", "amin"])
def test_reducing_to_one_value_per_sample_with_a_broadcast_mask(mode):
    """Every dim but the batch, where the mask has size 1 on each: the plain reduction, 0 for an invalid
    sample; the result is 1-d (this once read a channel dim the output does not have)."""
    x = torch.randn(3, 4, 1, 1)
    mask = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1, 1)
    y, out_mask = MF.masked_reduce(x, mask, dim=(1, 2, 3), mode=mode)
    plain = getattr(x, mode)(dim=(1, 2, 3))
    assert y.shape == out_mask.shape == (3,)
    assert torch.equal(y, torch.where(mask.view(3) != 0, plain, torch.zeros(())))
