"""Half precision, autocast, torch.compile and ONNX export of masked stacks."""
import pytest
import torch
from torch import nn

import masked_torch.nn as mnn


def stack(kind, **options):
    torch.manual_seed(0)
    plain = nn.Sequential(
        nn.PixelUnshuffle(2),
        nn.Conv2d(12, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.PixelUnshuffle(2),
        nn.Conv2d(64, 8, 3, padding=1),
        nn.GELU(),
    ).eval()
    with torch.no_grad():
        plain[2].running_mean.uniform_(-0.2, 0.2)
        plain[2].running_var.uniform_(0.5, 2.0)
    return mnn.convert(plain, kind, **options).eval()


KINDS = [("masked", {}), ("partial", {}), ("partial", {"update_mask": False, "multichannel": True})]


def batch(n=3, h=24, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, h, w, generator=g)
    m = torch.zeros(n, 1, h, w)
    for i in range(n):
        m[i, :, : h - 5 * i, : w - 7 * i] = 1
    m[-1] = 0  # a whole sample masked
    return x, m


def soft_mask_layer_inputs():
    """A window whose mask sums to ~1e-8: 9 / 1e-8 does not fit in float16."""
    x = torch.randn(2, 4, 8, 8)
    m = torch.zeros(2, 4, 8, 8)
    m[0, :, :5, :6] = 1
    m[0, :, 7, 7] = 1e-8
    return x, m


@pytest.mark.parametrize("kind,options", KINDS)
def test_float16_module_stays_finite_and_close(kind, options):
    model = stack(kind, **options)
    x, m = batch()
    with torch.no_grad():
        ref, ref_mask = model(x, m)
        half = stack(kind, **options).half()
        y, out_mask = half(x.half(), m.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all() and torch.isfinite(out_mask).all()
    keep = out_mask.float().amax(1, keepdim=True).expand_as(ref) > 0
    err = (y.float() - ref)[keep].abs().max() / ref[keep].abs().max()
    assert err < 2e-2, float(err)
    assert bool((y[-1] == 0).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,options", KINDS)
def test_autocast_stays_finite_and_close(dtype, kind, options):
    model = stack(kind, **options)
    x, m = batch()
    with torch.no_grad():
        ref, _ = model(x, m)
        with torch.autocast("cpu", dtype=dtype):
            y, out_mask = model(x, m)
    assert torch.isfinite(y).all() and torch.isfinite(out_mask).all()
    keep = out_mask.float().amax(1, keepdim=True).expand_as(ref) > 0
    err = (y.float() - ref)[keep].abs().max() / ref[keep].abs().max()
    assert err < 5e-2, float(err)


@pytest.mark.parametrize("cls,options", [(mnn.PartialConv2d, {"multichannel": True}), (mnn.PartialConv2d, {}),
                                         (mnn.MaskedConv2d, {})])
def test_tiny_mask_sums_do_not_overflow_in_half(cls, options):
    x, m = soft_mask_layer_inputs()
    layer = cls(4, 4, 3, padding=1, **options)
    ref, _ = layer(x, m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb, _ = layer(x, m)
    assert torch.isfinite(yb).all()
    layer = layer.half()
    # a float32 mask keeps the 1e-8 (fp16 cannot hold it); the ratio is computed in float32 all the same
    for mask, ref_mask in [(m, m), (m.half(), m.half().float())]:
        ref, _ = layer.float()(x, ref_mask)
        y, out_mask = layer.half()(x.half(), mask)
        assert torch.isfinite(y).all() and torch.isfinite(out_mask).all()
        assert bool((y[1] == 0).all())
        # windows that hold a real (>= 1) amount of valid input agree with float32; windows holding only the
        # 1e-8 entry cannot be represented in fp16 arithmetic (X * 1e-8 underflows) and only need to be finite
        support = torch.nn.functional.avg_pool2d(ref_mask.amax(1, keepdim=True), 3, 1, 1) * 9 >= 1
        support = support.expand_as(ref)
        torch.testing.assert_close(y.float()[support], ref[support], rtol=2e-2,
                                   atol=2e-2 * ref.abs().max().item())


def test_bfloat16_window_sums_are_exact_for_wide_masks():
    """576 = 64 channels x 9 taps: not representable as a bf16 sum of ones; the ratio must still be exact."""
    layer = mnn.PartialConv2d(64, 2, 3, padding=1, multichannel=True, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0 / 576)
    x = torch.ones(1, 64, 6, 6)
    m = torch.ones(1, 64, 6, 6)
    m[:, 0, 2, 2] = 0  # one entry missing: sum 575
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = layer(x, m)
    # conv of ones over the valid entries (575/576 in bf16) rescaled by 576/575 gives 1
    torch.testing.assert_close(y.float(), torch.ones_like(y.float()), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kind,options", KINDS)
def test_torch_compile_gives_the_same_numbers(kind, options):
    # aot_eager: dynamo's capture and AOTAutograd's graph, run with eager kernels. Inductor would build C++ with
    # the system's compiler for this CPU (not on every machine, and its rounding is the CPU's); the capture is
    # what the converted layers must survive.
    model = stack(kind, **options)
    compiled = torch.compile(model, dynamic=True, backend="aot_eager")
    with torch.no_grad():
        for shape in [(3, 24, 32), (2, 16, 40)]:
            x, m = batch(*shape)
            ref, ref_mask = model(x, m)
            y, out_mask = compiled(x, m)
            torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)  # eager kernels, maybe decomposed: float32 rounding
            torch.testing.assert_close(out_mask, ref_mask)


@pytest.mark.parametrize("kind,options", KINDS)
def test_onnx_round_trip_with_dynamic_shapes(kind, options, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = stack(kind, **options)
    x, m = batch(3, 24, 32)
    path = tmp_path / "stack.onnx"
    batch_dim, h, w = torch.export.Dim("batch"), torch.export.Dim("h"), torch.export.Dim("w")
    dyn = {0: batch_dim, 2: 4 * h, 3: 4 * w}
    torch.onnx.export(model, (x, m), str(path), input_names=["input", "mask"], output_names=["output", "out_mask"],
                      dynamic_shapes=({**dyn}, {**dyn}), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 40, 20), (5, 16, 48)]:
        x, m = batch(*shape, seed=3)
        with torch.no_grad():
            ref, ref_mask = model(x, m)
        y, out_mask = session.run(None, {"input": x.numpy(), "mask": m.numpy()})
        assert y.shape == tuple(ref.shape)
        assert abs(torch.from_numpy(y) - ref).max() <= 1e-4
        assert abs(torch.from_numpy(out_mask) - ref_mask).max() <= 1e-6
