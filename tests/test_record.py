"""ActivationRecorder against independent float64 references over the kept positions, streamed over batches."""
import gc
import weakref
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import masked_torch.analysis.kernels as kernels_mod
import masked_torch.nn as mnn
from masked_torch.analysis.kernels import batch_moments, error_bound
from masked_torch.analysis.moments import MERGE_ROUNDING, Moments, add_shifted_sums, empty_state, merge_moments
from masked_torch.analysis.recorder import COLUMNS, ActivationRecorder
from masked_torch.analysis.selection import select_layers
from masked_torch.analysis.stacks import build_stacks

# --------------------------------------------------------------------------------------------- helpers

#: Every tolerance on a recorded mean or variance is the kernel's documented worst-case bound
#: (:func:`~masked_torch.analysis.kernels.error_bound`, the kernels module docstring) times this margin.
MARGIN = 2.0


def assert_moments_close(mean, var, want_mean, want_var, dtype=torch.float32, runs=1, positions=2**32, what=""):
    """``mean``/``var`` against exact ``want_mean``/``want_var`` within the documented bound for outputs of
    ``dtype`` (``runs=2``: two recordings compared with each other, each within the bound), with MARGIN."""
    var_rtol, mean_tol = error_bound(dtype, positions)
    k = MARGIN * runs
    mean, var, want_mean, want_var = (np.asarray(a, dtype=np.float64) for a in (mean, var, want_mean, want_var))
    std = np.sqrt(np.abs(want_var))
    np.testing.assert_allclose(var, want_var, rtol=k * var_rtol, atol=1e-300, err_msg=f"{what} var")
    mean_err = np.abs(mean - want_mean)
    bound = k * (mean_tol * std + 2.0**-52 * np.abs(want_mean)) + 1e-300
    both_nan = np.isnan(mean) & np.isnan(want_mean)
    assert np.all(both_nan | (mean_err <= bound)), f"{what} mean: errors {mean_err} above {bound}"


class Capture:
    """Plain forward hooks that keep every (output, mask) of the named modules as float64 numpy arrays."""

    def __init__(self, model, names):
        self.model, self.names = model, list(names)
        self.got = {n: [] for n in self.names}

    def __enter__(self):
        def hook(name):
            def fn(module, args, output):
                out, mask = output if isinstance(output, tuple) else (output, None)
                self.got[name].append((out.detach().double().numpy().copy(),
                                       None if mask is None else mask.detach().double().numpy().copy()))
            return fn
        self.handles = [self.model.get_submodule(n).register_forward_hook(hook(n)) for n in self.names]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def reference(pairs):
    """Per channel: count, mean, var, min, max, zero_frac over the kept positions of every batch."""
    channels = pairs[0][0].shape[1]
    vals = [[] for _ in range(channels)]
    for out, mask in pairs:
        m = np.ones(out.shape, bool) if mask is None else np.broadcast_to(mask != 0, out.shape)
        for c in range(channels):
            vals[c].append(out[:, c][m[:, c]])
    rows = []
    for c in range(channels):
        v = np.concatenate(vals[c])
        if v.size == 0:
            rows.append(dict(count=0, mean=np.nan, var=np.nan, min=np.nan, max=np.nan, zero_frac=np.nan))
        else:
            rows.append(dict(count=v.size, mean=v.mean(), var=v.var(), min=v.min(), max=v.max(),
                             zero_frac=float((v == 0).mean())))
    return pd.DataFrame(rows)


def check_against(frame, captured):
    for name, pairs in captured.items():
        got = frame[frame["layer"] == name].reset_index(drop=True)
        want = reference(pairs)
        assert len(got) == len(want), name
        assert list(got["channel"]) == list(range(len(want)))
        np.testing.assert_array_equal(got["count"].to_numpy(), want["count"].to_numpy(), err_msg=name)
        for col in ("min", "max", "zero_frac"):  # exact: no arithmetic on the values
            np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), err_msg=f"{name} {col}")
        assert_moments_close(got["mean"], got["var"], want["mean"], want["var"], what=name)
        np.testing.assert_allclose(got["std"] ** 2, got["var"], rtol=4 * 2.0**-52)  # sqrt, then squared


def padded_batch(n, h, w, seed, c=3, mask_channels=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    mask = torch.zeros(n, mask_channels, h, w)
    for k in range(n):
        hk = int(torch.randint(1, h + 1, (1,), generator=g))
        wk = int(torch.randint(1, w + 1, (1,), generator=g))
        mask[k, :, :hk, :wk] = 1
    return x, mask


BATCHES = [(3, 32, 48, 1), (1, 16, 16, 2), (4, 48, 32, 3), (2, 32, 32, 4)]  # different N and sizes


@pytest.fixture
def shifts(monkeypatch):
    """The shift of every pass of the kernel over a batch (kernels.shifted_sums calls), in order."""
    calls = []
    real = kernels_mod.shifted_sums

    def spy(x, mask, shift, *args, **kwargs):
        calls.append(np.asarray(shift).copy())
        return real(x, mask, shift, *args, **kwargs)

    monkeypatch.setattr(kernels_mod, "shifted_sums", spy)
    return calls


def hooks_of(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("stack", ["conv", "pconv", "mconv"])
def test_stacks_match_reference_over_batches(stack):
    model = build_stacks(3, seed=1)[stack]
    rec = ActivationRecorder(model)
    names = [n for n, _ in rec.layers]
    assert names == ["conv1", "act1", "conv2", "act2", "conv3", "act3"]  # no conv1.module, no unshuffle
    with Capture(model, names) as cap, rec, torch.no_grad():
        for n, h, w, seed in BATCHES:
            model(*padded_batch(n, h, w, seed))
    frame = rec.to_frame()
    assert list(frame.columns) == list(COLUMNS)
    assert list(frame["layer"].unique()) == names
    assert frame["count"].dtype == np.int64
    check_against(frame, cap.got)
    assert (frame.loc[frame["layer"].str.startswith("act"), "zero_frac"] > 0).any()  # dead ReLUs seen


def test_conv_stack_keeps_wrapper_not_inner_module():
    model = build_stacks(2)["conv"]
    names = [n for n, _ in select_layers(model)]
    assert names == ["conv1", "act1", "conv2", "act2"]
    assert isinstance(model.get_submodule("conv1"), mnn.Unmasked)


def test_large_mean_variance():
    """1e3 + N(0, 1) in float32: the naive E[x^2] - E[x]^2 would lose every digit of the variance."""
    model = mnn.MaskedSequential(OrderedDict(id=mnn.Masked(nn.Identity())))
    g = torch.Generator().manual_seed(0)
    captured = {"id": []}
    rec = ActivationRecorder(model)
    with Capture(model, ["id"]) as cap, rec:
        for n, length in [(5, 3000), (2, 700), (7, 1500), (1, 20000)]:
            x = 1e3 + torch.randn(n, 4, length, generator=g)
            mask = (torch.rand(n, 1, length, generator=g) > 0.3).float()
            model(x, mask)
    captured = cap.got
    want = reference(captured["id"])
    got = rec.to_frame()
    np.testing.assert_array_equal(got["count"], want["count"])
    # summed around the running mean: the documented bound, whose mean error is in units of std (1), not of
    # the mean (1e3)
    assert_moments_close(got["mean"], got["var"], want["mean"], want["var"])


def test_merge_keeps_variance_of_large_mean_exact():
    g = np.random.default_rng(0)
    parts = [1e6 + g.standard_normal(k) for k in (10, 1, 5000, 37, 800)]

    def exact(v):
        t = torch.tensor(v)[None]
        return Moments(torch.tensor([v.size], dtype=torch.float64), t.mean(1), ((t - t.mean()) ** 2).sum(1),
                       t.amin(1), t.amax(1), (t == 0).sum(1).double())

    merged = Moments.empty(1)
    for p in parts:
        merged = merge_moments(merged, exact(p))
    allv = np.concatenate(parts)
    assert merged.count.item() == allv.size
    # 5 merges of exact moments (moments.py: MERGE_ROUNDING per merge, relative to |mean| + |delta|), with margin
    deltas = 2 * np.abs(np.array([p.mean() for p in parts]) - allv.mean()).max()
    assert abs(merged.mean.item() - allv.mean()) <= 2 * 5 * MERGE_ROUNDING * (abs(allv.mean()) + deltas)
    assert merged.var.item() == pytest.approx(allv.var(), rel=2 * 5 * MERGE_ROUNDING + 1e-15)
    assert merged.min.item() == allv.min() and merged.max.item() == allv.max()


def test_merge_is_pure_and_handles_empty_sides():
    a = Moments(*(torch.tensor(v, dtype=torch.float64) for v in
                  ([3.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, np.inf], [2.0, -np.inf], [1.0, 0.0])))
    b = Moments(*(torch.tensor(v, dtype=torch.float64) for v in
                  ([1.0, 2.0], [5.0, -1.0], [0.0, 8.0], [5.0, -3.0], [5.0, 1.0], [0.0, 0.0])))
    before = a.to_tensor().clone()
    m = merge_moments(a, b)
    assert torch.equal(a.to_tensor(), before)
    assert m.count.tolist() == [4.0, 2.0]
    assert m.mean.tolist() == [2.0, -1.0]  # the empty side contributes nothing, exactly
    assert m.m2.tolist() == [2.0 + 0.0 + 16.0 * 3 / 4, 8.0]
    assert m.min.tolist() == [0.0, -3.0] and m.max.tolist() == [5.0, 1.0]
    assert torch.equal(Moments.from_tensor(m.to_tensor()).to_tensor(), m.to_tensor())
    with pytest.raises(ValueError, match="channel"):
        merge_moments(a, Moments.empty(3))


@pytest.mark.parametrize("kind", ["float-1", "bool-1", "float-C", "soft-C", "bool-C"])
def test_one_and_c_channel_masks(kind):
    dtype, channels = kind.split("-")
    model = mnn.MaskedSequential(OrderedDict(act=mnn.Masked(nn.ReLU())))
    g = torch.Generator().manual_seed(3)
    with Capture(model, ["act"]) as cap, ActivationRecorder(model) as rec:
        for n, h, w in [(2, 5, 7), (3, 4, 4), (1, 9, 2)]:
            x = torch.randn(n, 6, h, w, generator=g) + 0.3
            cm = 1 if channels == "1" else 6
            mask = (torch.rand(n, cm, h, w, generator=g) > 0.4).float()
            if dtype == "soft":
                mask = mask * torch.rand(n, cm, h, w, generator=g)  # weights: non-zero = kept
            elif dtype == "bool":
                mask = mask.bool()
            model(x, mask)
    check_against(rec.to_frame(), cap.got)


def test_values_under_the_mask_are_never_read():
    """NaN/Inf under the mask, all-positive channels (min is not the 0 of a masked position)."""
    model = mnn.MaskedSequential(OrderedDict(sig=mnn.Masked(nn.Sigmoid()), act=mnn.Masked(nn.ReLU())))
    g = torch.Generator().manual_seed(5)
    with Capture(model, ["sig", "act"]) as cap, ActivationRecorder(model) as rec:
        for n in (2, 3):
            x = torch.randn(n, 4, 6, 6, generator=g)
            mask = (torch.rand(n, 4, 6, 6, generator=g) > 0.5).float()
            x = torch.where(mask == 0, torch.full_like(x, float("nan")), x)
            x[0, 1, ~mask[0, 1].bool()] = float("inf")
            model(x, mask)
    frame = rec.to_frame()
    assert np.isfinite(frame[["mean", "var", "min", "max"]].to_numpy()).all()
    cap.got = {k: [(np.nan_to_num(o, nan=123.0), m) for o, m in v] for k, v in cap.got.items()}
    check_against(frame, cap.got)
    assert (frame.loc[frame["layer"] == "sig", "min"] > 0).all()


def test_nan_at_a_kept_position_spoils_only_its_channel():
    """NaN at a kept position makes that channel's mean and variance NaN (the exact fall-back sums it as it
    is); the other channels, min/max where finite, counts and zeros stay right; NaN under the mask is never
    read."""
    ident = mnn.MaskedSequential(OrderedDict(id=mnn.Masked(nn.Identity())))
    g = torch.Generator().manual_seed(3)
    with Capture(ident, ["id"]) as cap, ActivationRecorder(ident) as rec:
        for i in range(3):
            x = torch.randn(2, 3, 400, generator=g)
            mask = (torch.rand(2, 1, 400, generator=g) > 0.4).float()
            x[mask.expand_as(x) == 0] = float("nan")
            if i == 2:
                x[1, 0, int((mask[1, 0] != 0).nonzero()[0])] = float("nan")
            ident(x, mask)
    got, want = rec.to_frame(), reference(cap.got["id"])
    assert got["var"].isna().tolist() == [True, False, False]
    assert got["mean"].isna().tolist() == [True, False, False]
    np.testing.assert_array_equal(got["count"], want["count"])
    np.testing.assert_array_equal(got["zero_frac"], want["zero_frac"])
    assert_moments_close(got["mean"][1:], got["var"][1:], want["mean"][1:], want["var"][1:])
    np.testing.assert_array_equal(got[["min", "max"]][1:], want[["min", "max"]][1:])


def test_channel_without_kept_positions():
    model = mnn.MaskedSequential(OrderedDict(act=mnn.Masked(nn.ReLU())))
    x = torch.randn(2, 3, 4, 4)
    mask = torch.ones(2, 3, 4, 4)
    mask[:, 1] = 0
    with ActivationRecorder(model) as rec:
        model(x, mask)
    f = rec.to_frame()
    assert f["count"].tolist() == [32, 0, 32]
    assert f.loc[1, ["mean", "var", "std", "min", "max", "zero_frac"]].isna().all()
    with rec:  # the channel gets positions later
        model(x, torch.ones(2, 1, 4, 4))
    f = rec.to_frame()
    assert f["count"].tolist() == [64, 32, 64]
    kept = x[:, 1].relu().double()
    assert_moments_close([f.loc[1, "mean"]], [f.loc[1, "var"]], [kept.mean().item()],
                         [kept.var(unbiased=False).item()])


def test_plain_model_without_masks():
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 5, 3, padding=1), bn=nn.BatchNorm2d(5), relu=nn.ReLU(), drop=nn.Dropout(0.5),
        ident=nn.Identity(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(5, 4),
        gelu=nn.GELU(),
    )).eval()
    rec = ActivationRecorder(model)
    assert [n for n, _ in rec.layers] == ["conv", "bn", "relu", "gelu"]
    names = ["conv", "bn", "relu", "fc", "gelu"]
    rec2 = ActivationRecorder(model, include=["fc", "relu"])  # (N, C) output too
    assert [n for n, _ in rec2.layers] == ["relu", "fc"]  # model order
    with Capture(model, names) as cap, rec, rec2, torch.no_grad():
        for n, s in [(2, 8), (5, 6), (1, 11)]:
            model(torch.randn(n, 3, s, s))
    check_against(rec.to_frame(), {k: cap.got[k] for k in ["conv", "bn", "relu", "gelu"]})
    check_against(rec2.to_frame(), {k: cap.got[k] for k in ["relu", "fc"]})


def test_masked_model_without_mask_records_every_position():
    model = build_stacks(2, seed=2)["mconv"]
    with Capture(model, ["conv1", "act2"]) as cap, ActivationRecorder(model, ["conv1", "act2"],
                                                                       ) as rec:
        model(torch.randn(2, 3, 16, 16))
        model(torch.randn(3, 3, 32, 16))
    assert all(m is None for pairs in cap.got.values() for _, m in pairs)
    check_against(rec.to_frame(), cap.got)


def test_include_predicate_and_errors():
    model = build_stacks(2)["pconv"]
    rec = ActivationRecorder(model, include=lambda name, m: name.startswith("act"))
    assert [n for n, _ in rec.layers] == ["act1", "act2"]
    with pytest.raises(KeyError, match="nope"):
        ActivationRecorder(model, include=["conv1", "nope"])
    with pytest.raises(ValueError, match="no layers"):
        ActivationRecorder(model, include=lambda name, m: False)
    mean_model = mnn.MaskedSequential(OrderedDict(conv=mnn.MaskedConv2d(3, 4, 3, padding=1),
                                                  pool=mnn.MaskedSpatialMean()))
    x, mask = padded_batch(3, 8, 8, 0)
    with Capture(mean_model, ["pool"]) as cap, ActivationRecorder(mean_model, ["pool"]) as r:
        mean_model(x, mask)  # (N, C) output with an (N, 1) mask
    check_against(r.to_frame(), cap.got)


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_hooks_removed_when_the_block_raises(exc):
    model = build_stacks(2)["mconv"]
    base = hooks_of(model)
    rec = ActivationRecorder(model)
    with pytest.raises(exc):
        with rec:
            assert hooks_of(model) > base
            model(*padded_batch(2, 16, 16, 0))
            raise exc("stop")
    assert hooks_of(model) == base and not rec.recording
    assert rec.to_frame()["count"].gt(0).all()  # what ran before the error is kept
    with pytest.raises(ValueError, match="does not fit"):  # an error in the recorder itself: same
        with rec:
            rec._update("conv1", torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 4, 4), "test")
    assert hooks_of(model) == base


def test_no_growth_with_batches_and_no_activation_kept():
    model = build_stacks(2)["mconv"]
    refs = []
    model.get_submodule("act2").register_forward_hook(lambda m, a, o: refs.append(weakref.ref(o[0])))
    with ActivationRecorder(model) as rec, torch.no_grad():
        for i in range(6):
            model(*padded_batch(2, 16, 16, i))
    gc.collect()
    assert all(r() is None for r in refs)
    assert all(t.numel() == m.channels for m in rec.moments().values() for t in m.to_tensor())
    assert rec.calls == {n: 6 for n, _ in rec.layers}


def test_nothing_ran_or_layers_missing_raise():
    model = build_stacks(2)["mconv"]
    with ActivationRecorder(model) as rec:
        pass
    with pytest.raises(RuntimeError, match="no forward pass"):
        rec.to_frame()
    with ActivationRecorder(model) as rec:
        model[:3](*padded_batch(2, 16, 16, 0))  # unshuffle1, conv1, act1 only
    with pytest.raises(RuntimeError, match="never fired"):
        rec.to_frame()
    partial = rec.to_frame(strict=False)
    assert list(partial["layer"].unique()) == ["conv1", "act1"]


def test_compiled_model_raises_clearly():
    model = build_stacks(2)["mconv"]
    compiled = torch.compile(model, backend="eager")
    with pytest.raises(RuntimeError, match="_orig_mod"):
        ActivationRecorder(compiled)
    outer = nn.Sequential(OrderedDict(block=torch.compile(nn.Sequential(nn.Conv2d(3, 3, 1)), backend="eager"),
                                      relu=nn.ReLU()))
    with pytest.raises(RuntimeError, match="compile"):
        ActivationRecorder(outer)
    model.compile(backend="eager")  # in-place nn.Module.compile
    with pytest.raises(RuntimeError, match="compile"):
        ActivationRecorder(model)


def test_compiled_after_creation_never_returns_a_silent_frame():
    """Hooks added after dynamo traced a function are skipped silently: to_frame must raise, not return."""
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU()))
    torch._dynamo.reset()
    try:
        rec = ActivationRecorder(model)
        outer = nn.Sequential(OrderedDict(block=model, act=nn.ReLU()))
        rec_outer = ActivationRecorder(outer)
        outer.block = torch.compile(model, backend="eager")  # compiled after the recorder was made
        with pytest.raises(RuntimeError, match="_orig_mod"):
            with rec_outer:
                pass
        fn = torch.compile(lambda x: model(x), backend="eager")
        fn(torch.randn(2, 3, 8, 8))  # traced without hooks
        with rec:
            fn(torch.randn(2, 3, 8, 8))
        if not any(rec.calls.values()):  # what PyTorch does today
            with pytest.raises(RuntimeError, match="torch.compile"):
                rec.to_frame()
        else:  # should PyTorch ever run them: then the statistics must be complete and right
            assert rec.to_frame()["count"].eq(2 * 64).all()
        # a function compiled while the recorder is active: the hooks run (eagerly, dynamo graph-breaks)
        with rec:
            torch.compile(lambda x: model(x), backend="eager")(torch.randn(2, 3, 8, 8))
        assert rec.to_frame()["count"].ge(2 * 64).all()
    finally:
        torch._dynamo.reset()


def test_layers_that_never_fire_while_others_do_raise():
    inner = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU()))
    model = nn.Sequential(OrderedDict(block=inner, act=nn.ReLU()))
    with ActivationRecorder(model) as rec:
        model.act(torch.randn(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match=r"\['block.conv', 'block.relu'\] never fired"):
        rec.to_frame()
    assert list(rec.to_frame(strict=False)["layer"].unique()) == ["act"]


def test_batch_moments_over_all_positions_and_around_a_given_shift(shifts):
    """Without a mask: every position; ``shift`` is the reference of the first pass (a batch on a large mean
    summed around a shift near it needs no second pass)."""
    x = torch.randn(4, 3, 10)
    m = batch_moments(x)
    xd = x.double()
    assert_moments_close(m.mean.numpy(), m.var.numpy(), xd.mean(dim=(0, 2)).numpy(),
                         xd.var(dim=(0, 2), unbiased=False).numpy())
    y = 1e4 + x
    shifts.clear()
    shifted = batch_moments(y, shift=torch.full((3,), 1e4))
    assert len(shifts) == 1 and (shifts[0] == 1e4).all()  # centred enough: one pass
    shifts.clear()
    around_zero = batch_moments(y)
    assert len(shifts) == 2 and not shifts[0].any()  # around 0, then again around the batch's own mean
    yd = y.double()
    for mom in (shifted, around_zero):
        assert_moments_close(mom.mean.numpy(), mom.var.numpy(), yd.mean(dim=(0, 2)).numpy(),
                             yd.var(dim=(0, 2), unbiased=False).numpy())


def _record(model, batches, **kwargs):
    with ActivationRecorder(model, **kwargs) as rec, torch.no_grad():
        for b in batches:
            model(*b)
    return rec.to_frame()


def test_recording_with_grad_enabled_leaves_autograd_alone():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), bn=nn.BatchNorm2d(4), act=nn.SiLU()))
    x = torch.randn(3, 3, 8, 8)
    with Capture(model, ["conv", "bn", "act"]) as cap, ActivationRecorder(model) as rec:
        out = model(x)
        out.square().mean().backward()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
    assert model.conv.weight.grad is not None
    check_against(rec.to_frame(), cap.got)


# ------------------------------------------------------------------ the kernels and the merge, one by one


def test_add_shifted_sums_equals_merging_the_two_sets():
    """A state plus a batch given as sums around a shift: the moments of the union, within the rounding
    moments.py states for add_shifted_sums. The inputs are exact (dyadic values on a large mean: the state's
    mean, ``m2`` and the batch's sums have no rounding), the reference is exact rational arithmetic."""
    from fractions import Fraction

    g = np.random.default_rng(1)
    half = g.integers(-40, 41, (3, 200)) / 8.0
    a = 5e4 + np.concatenate([half, -half], axis=1)  # 3 channels, a large mean, exactly 5e4
    b = 5e4 + g.integers(-80, 81, (3, 250)) / 8.0 + 0.5
    state = np.stack([np.full(3, a.shape[1]), np.full(3, 5e4), ((a - 5e4) ** 2).sum(1),
                      a.min(1), a.max(1), (a == 0).sum(1)]).astype(np.float64)
    shift = np.full(3, 5e4 + 1.0 / 1024)  # near, not at, the running mean
    sums = np.stack([np.full(3, b.shape[1]), (b - shift[:, None]).sum(1), ((b - shift[:, None]) ** 2).sum(1),
                     b.min(1), b.max(1), (b != 0).sum(1)]).astype(np.float64)
    before = state.copy()
    got = add_shifted_sums(state, shift, sums)
    assert np.array_equal(state, before)  # pure
    both = np.concatenate([a, b], axis=1)
    n = both.shape[1]
    np.testing.assert_array_equal(got[0], n)
    for c in range(3):
        values = [Fraction(v) for v in both[c]]
        mean = sum(values) / n
        m2 = sum((v - mean) ** 2 for v in values)
        # moments.py: m2 within 2 * MERGE_ROUNDING * (m2_a + s2 + n_a (mean_a - shift)**2 + t**2 / n); the
        # mean (shift + t / n) within MERGE_ROUNDING of |shift| + |t / n|; with margin
        t = a.shape[1] * (5e4 - shift[c]) + sums[1, c]
        terms = state[2, c] + sums[2, c] + a.shape[1] * (5e4 - shift[c]) ** 2 + t * t / n
        assert abs(Fraction(got[1, c]) - mean) <= MARGIN * MERGE_ROUNDING * (abs(shift[c]) + abs(t / n))
        assert abs(Fraction(got[2, c]) - m2) <= MARGIN * 2 * MERGE_ROUNDING * terms
    np.testing.assert_array_equal(got[3], both.min(1))
    np.testing.assert_array_equal(got[4], both.max(1))
    np.testing.assert_array_equal(got[5], 0)
    # a channel without positions on either side stays empty; an empty state takes the batch as it is
    empty = add_shifted_sums(empty_state(3), np.zeros(3), np.stack([np.zeros(3), np.zeros(3), np.zeros(3),
                                                                     np.full(3, np.inf), np.full(3, -np.inf),
                                                                     np.zeros(3)]))
    assert np.array_equal(empty, empty_state(3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int32])
def test_output_dtypes_against_reference(dtype):
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(3, 4, 50, generator=g) * 3 + 7)
    x[0, 1, :10] = 0
    x = x.round().to(dtype) if dtype == torch.int32 else x.to(dtype)
    mask = (torch.rand(3, 1, 50, generator=g) > 0.4)
    m = batch_moments(x, mask)
    want = reference([(x.double().numpy(), mask.double().numpy())])
    np.testing.assert_array_equal(m.count.numpy(), want["count"])
    np.testing.assert_array_equal(m.min.numpy(), want["min"])
    np.testing.assert_array_equal(m.max.numpy(), want["max"])
    np.testing.assert_array_equal(m.zero_frac.numpy(), want["zero_frac"])
    assert_moments_close(m.mean.numpy(), m.var.numpy(), want["mean"], want["var"], dtype=dtype,
                         positions=int(want["count"].max()))


def test_empty_batches_count_nothing():
    model = mnn.MaskedSequential(OrderedDict(act=mnn.Masked(nn.ReLU())))
    x, mask = torch.randn(2, 3, 5, 5), torch.ones(2, 1, 5, 5)
    with Capture(model, ["act"]) as cap, ActivationRecorder(model) as rec:
        model(x[:0], mask[:0])  # no samples
        model(x, mask)
    check_against(rec.to_frame(), {"act": cap.got["act"][1:]})
    m = batch_moments(torch.zeros(0, 3, 4))
    assert m.count.tolist() == [0, 0, 0] and m.var.isnan().all()


_IMPORT_PROBE = """
import importlib, json, sys
loaded = {}
for name in sys.argv[1:]:
    importlib.import_module("masked_torch.analysis." + name)
    loaded[name] = sorted(m.rsplit(".", 1)[1] for m in sys.modules if m.startswith("masked_torch.analysis."))
print(json.dumps({"loaded": loaded, "dynamo": "torch._dynamo" in sys.modules}))
"""


def test_statistics_modules_import_one_way_in_any_order():
    """Each module alone in a fresh interpreter pulls in only what it builds on (no cycle: distributed and
    moments never load the recorder), every import order works, and none loads the compiler."""
    import json
    import subprocess
    import sys

    modules = ["moments", "kernels", "selection", "distributed", "recorder"]
    orders = [[first] + [m for m in reversed(modules) if m != first] for first in modules]
    procs = [subprocess.Popen([sys.executable, "-c", _IMPORT_PROBE, *order], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for order in orders]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    alone = {order[0]: set(r["loaded"][order[0]]) for order, r in zip(orders, results)}
    assert alone["moments"] == {"moments"}
    assert alone["kernels"] == {"kernels", "moments"}
    assert alone["selection"] == {"selection"}
    assert alone["distributed"] == {"distributed", "moments"}
    assert alone["recorder"] == {"recorder", "kernels", "moments", "selection", "distributed"}
    assert all(set(r["loaded"][o[-1]]) == alone["recorder"] for o, r in zip(orders, results))
    assert not any(r["dynamo"] for r in results)


@pytest.mark.parametrize("channels_in_mask", [1, 5])
def test_zeroed_kernel_path_equals_the_general_one_on_a_masked_output(channels_in_mask):
    """A masked module's output is 0 where its mask is 0; the kernel then skips its multiply by the mask and
    gives the same sums: the same operations on the same values, so identical (including min/max when every
    kept value is positive or negative)."""
    import numpy as np

    from masked_torch.analysis.kernels import shifted_sums

    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(3, channels_in_mask, 50, generator=g) > 0.4).float()
    for offset in (0.0, 5.0, -5.0):  # all-positive / all-negative kept values: the 0s of the padding must not win
        x = (torch.randn(3, 5, 50, generator=g) + offset) * mask
        shift = np.full(5, offset / 2)
        general, _ = shifted_sums(x, mask, shift)
        fast, _ = shifted_sums(x, mask, shift, zeroed=True)
        np.testing.assert_array_equal(fast, general)


def test_the_recorder_takes_the_zeroed_path_only_for_masked_modules():
    from masked_torch.nn import Unmasked, convert

    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    x = torch.randn(2, 3, 8, 8)
    mask = torch.ones(2, 1, 8, 8)
    mask[1, :, 5:] = 0
    frames = {}
    for kind in ("plain", "masked"):
        model = convert(plain, kind)
        with ActivationRecorder(model) as rec, torch.no_grad():
            model(x, mask)
        frames[kind] = rec.to_frame()
    # the plain baseline writes into the padding; its statistics are still over the kept positions only
    with torch.no_grad():
        ref = plain(x)
    kept = ref[0, :, :, :].reshape(4, -1)
    kept = torch.cat([kept, ref[1, :, :5].reshape(4, -1)], dim=1).double()
    got = frames["plain"]
    relu = got[got["layer"] == "1"].sort_values("channel")
    assert_moments_close(relu["mean"].to_numpy(), relu["var"].to_numpy(), kept.mean(1).numpy(),
                         kept.var(1, unbiased=False).numpy())
    np.testing.assert_array_equal(relu["min"].to_numpy(), kept.amin(1).numpy())
    assert isinstance(convert(plain, "plain")[0], Unmasked)


# ----------------------------------------------------- sums around 0, and kept positions shared between layers


def _float64_var_over_kept(x, mask):
    kept = (mask != 0).expand_as(x).double()
    n = kept.sum(dim=(0, 2))
    mean = (x.double() * kept).sum(dim=(0, 2)) / n
    return (((x.double() - mean.view(1, -1, 1)) ** 2) * kept).sum(dim=(0, 2)) / n


@pytest.mark.parametrize("offset", [0.0, 1.0, 2.0, 3.0, 1e3])
def test_the_reference_point_keeps_the_variance_precise_at_any_offset(offset):
    """Batches of ``offset + N(0, 1)``: near 0 (mean within 2 std) the sums are taken around 0, farther away
    around the running mean; either way the variance is within the documented bound of float64 over the kept positions,
    batch after batch (the first batch decides with its own sums, later ones with the running moments)."""
    model = mnn.MaskedSequential(OrderedDict(id=mnn.Masked(nn.Identity())))
    g = torch.Generator().manual_seed(1)
    xs, masks = [], []
    with ActivationRecorder(model) as rec:
        for n, length in [(4, 5000), (3, 9000), (6, 2000)]:
            x = offset + torch.randn(n, 3, length, generator=g)
            mask = (torch.rand(n, 1, length, generator=g) > 0.3).float()
            x = x * mask  # a masked module's output: 0 where masked
            model(x, mask)
            xs.append(x), masks.append(mask)
    got = rec.to_frame()
    x = torch.cat([t.reshape(t.shape[0], 3, -1).transpose(0, 1).reshape(3, -1) for t in xs], dim=1)
    m = torch.cat([t.reshape(t.shape[0], 1, -1).transpose(0, 1).reshape(1, -1) for t in masks], dim=1)
    kept = (m != 0).expand_as(x)
    want_mean = torch.stack([x[c][kept[c]].double().mean() for c in range(3)]).numpy()
    want = _float64_var_over_kept(x.unsqueeze(0), m.unsqueeze(0)).numpy()
    assert_moments_close(got["mean"], got["var"], want_mean, want)


def test_a_batch_far_from_zero_after_batches_near_it_is_reduced_again_around_its_own_mean(shifts):
    """The running moments say "near 0" (so the next batch is summed around 0), but the batch sits at 1e4:
    the kernel sees it is not centred enough and reduces it again around the batch's own mean."""
    from masked_torch.analysis.kernels import advance, first_moments

    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 3, 4000, generator=g)
    b = 1e4 + torch.randn(2, 3, 4000, generator=g)
    state = first_moments(None, a, None)
    calls = shifts
    calls.clear()
    state = advance(state, b, None)
    assert len(calls) == 2 and not calls[0].any()  # around 0, then around the batch's own mean
    # the batch's mean from sums around 0: within the documented bound in units of sqrt(mean**2 + var) (the
    # spread around the reference 0), far closer than the sqrt(4) standard deviations asked for
    bd = b.double()
    spread = bd.square().mean(dim=(0, 2)).sqrt().numpy()
    assert np.all(np.abs(calls[1] - bd.mean(dim=(0, 2)).numpy()) <= MARGIN * error_bound()[1] * spread)
    both = torch.cat([a, b], dim=2).double()
    assert_moments_close(state[1], state[2] / state[0], both.mean(dim=(0, 2)).numpy(),
                         both.var(dim=(0, 2), unbiased=False).numpy())


def test_kept_positions_are_computed_once_per_mask_and_again_after_an_in_place_change():
    """A masked activation passes its convolution's mask on unchanged: the workspace counts that mask's kept
    positions once for both layers. A mask modified in place (its version changes) is counted again."""
    from masked_torch.analysis.kernels import Workspace, as_ncl, shifted_sums

    ws = Workspace()
    mask = torch.ones(2, 1, 4, 4)
    mask[1, :, 2:] = 0
    x = torch.randn(2, 3, 4, 4) * mask
    _, m1 = as_ncl(x, mask, "test", ws)
    _, m2 = as_ncl(x.relu(), mask, "test", ws)
    assert m1 is m2
    scratch = torch.empty(2 * 16)
    counts = ws.counts(m1, scratch)
    np.testing.assert_array_equal(counts, [24.0])
    scratch.fill_(7.0)  # what the scratch holds afterwards does not matter
    assert ws.counts(m2, scratch) is counts
    valid = ws.valid(m1, torch.float32)
    assert ws.valid(m2, torch.float32) is valid and float(valid.sum()) == 24.0
    sums, _ = shifted_sums(*as_ncl(x, mask, "test", ws), np.zeros(3), ws)
    np.testing.assert_array_equal(sums[0], [24.0] * 3)

    mask[0, :, 0] = 0  # in place: 4 positions fewer
    _, m3 = as_ncl(x, mask, "test", ws)
    assert m3 is not m1
    for zeroed in (False, True):
        for shift in (np.zeros(3), np.ones(3)):  # around 0 / around a mean: with or without the 0/1 tensor
            sums, _ = shifted_sums(x.reshape(2, 3, 16) * mask.reshape(2, 1, 16), m3, shift, ws, zeroed=zeroed)
            np.testing.assert_array_equal(sums[0], [20.0] * 3)
    assert float(ws.valid(m3, torch.float32).sum()) == 20.0
    # another mask object (even one of the same values) is counted afresh
    other = mask.clone()
    other[1] = 1
    _, m4 = as_ncl(x, other, "test", ws)
    assert m4 is not m3
    np.testing.assert_array_equal(ws.counts(m4, scratch), [28.0])
    assert float(ws.valid(m4, torch.float32).sum()) == 28.0


def test_a_batch_whose_mean_moved_far_from_the_running_one_keeps_its_precision():
    """A few values around 0, then many around 1e4: summed around the running mean (near 0) the second
    batch would lose its variance to cancellation; it is reduced again around its own mean."""
    model = mnn.MaskedSequential(OrderedDict(id=mnn.Masked(nn.Identity())))
    g = torch.Generator().manual_seed(7)
    a = torch.randn(1, 2, 6, generator=g)
    b = 1e4 + torch.randn(2, 2, 1 << 18, generator=g)
    with ActivationRecorder(model) as rec:
        for x in (a, b):
            model(x, torch.ones(x.shape[0], 1, x.shape[2]))
    both = torch.cat([a.transpose(0, 1).reshape(2, -1), b.transpose(0, 1).reshape(2, -1)], dim=1).double()
    got = rec.to_frame()
    assert_moments_close(got["mean"], got["var"], both.mean(dim=1).numpy(), both.var(dim=1, unbiased=False).numpy())


def test_recording_under_inference_mode_and_on_a_negated_view():
    """Inference tensors have no version counter (the mask caches are then not used); a lazily negated view
    holds the opposite of its memory (materialised before any kernel reads the memory)."""
    conv = mnn.MaskedConv2d(3, 4, 3, padding=1)
    mask = torch.ones(2, 1, 8, 8)
    mask[1, :, 5:] = 0
    with ActivationRecorder(conv) as rec, torch.inference_mode():
        x = torch.randn(2, 3, 8, 8)
        out, _ = conv(x, mask)
        out2, _ = conv(x, mask.clone())
    assert rec.to_frame()["count"].tolist() == [2 * (64 + 40)] * 4
    y = torch._neg_view(torch.rand(2, 3, 10) + 1)
    m, yd = batch_moments(y), y.double()
    assert_moments_close(m.mean.numpy(), m.var.numpy(), yd.mean(dim=(0, 2)).numpy(),
                         yd.var(dim=(0, 2), unbiased=False).numpy())


# ------------------------------------------------------------- blocks of positions, threads: the documented bound


@pytest.mark.parametrize("length", [1, 7, 127, 128, 129, 300, 1000, 4099, 9216])
def test_any_length_is_summed_in_blocks_within_the_bound(length):
    """Rows shorter than a block, a multiple of a block, a length with a divisor below BLOCK, a prime (blocks
    of BLOCK and a shorter last one): every float32 sum has at most BLOCK terms, and the moments are within
    the documented bound of float64, around 0 and on a large mean."""
    from masked_torch.analysis.kernels import BLOCK, _blocking

    block, blocks = _blocking(length)
    assert 1 <= block <= BLOCK and block * blocks <= length and length - block * blocks < BLOCK
    g = torch.Generator().manual_seed(length)
    for offset in (0.0, 3.0, -1e3):
        x = offset + torch.randn(3, 4, length, generator=g) * torch.rand(1, 4, 1, generator=g) * 10
        mask = (torch.rand(3, 1, length, generator=g) > 0.3).float()
        mask[0, 0, 0] = 1  # at least one kept position
        m = batch_moments(x, mask)
        want = reference([(x.double().numpy(), mask.double().numpy())])
        np.testing.assert_array_equal(m.count.numpy(), want["count"])
        assert_moments_close(m.mean.numpy(), m.var.numpy(), want["mean"], want["var"], what=f"offset {offset}")


@pytest.mark.parametrize("threads", [1, 2])
def test_the_bound_holds_with_any_thread_count(threads):
    """Thread counts change how PyTorch splits a reduction; the documented bound holds for any split."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_stacks(2, seed=5)["conv"]
        with Capture(model, ["conv1", "act1", "conv2", "act2"]) as cap, ActivationRecorder(model) as rec, \
                torch.no_grad():
            for n, h, w, seed in BATCHES:
                x, mask = padded_batch(n, h, w, seed)
                model(x + 2.0, mask)
        check_against(rec.to_frame(), cap.got)
    finally:
        torch.set_num_threads(before)


def test_counts_per_sample_where_a_batch_has_2_to_the_24_positions(monkeypatch):
    """Counts of kept positions and of non-zeros are float32 sums of 0/1, exact below 2**24 terms: a batch
    with more positions per channel is counted per sample first. Lowering that threshold shows the per-sample
    path gives exactly the same sums (only exact counts, min and max differ in how they are taken)."""
    from masked_torch.analysis import kernels

    g = torch.Generator().manual_seed(9)
    x = torch.randn(4, 3, 60, generator=g).relu()
    mask = (torch.rand(4, 3, 60, generator=g) > 0.3).float()
    for zeroed in (False, True):
        xs = x * mask if zeroed else x
        whole, _ = kernels.shifted_sums(xs, mask, np.zeros(3), kernels.Workspace(), zeroed=zeroed)
        with monkeypatch.context() as m:
            m.setattr(kernels, "_MAX_EXACT_F32", 100)  # 4 * 60 positions: per sample
            per_sample, _ = kernels.shifted_sums(xs, mask, np.zeros(3), kernels.Workspace(), zeroed=zeroed)
        np.testing.assert_array_equal(per_sample, whole)
        kept = mask.numpy() != 0
        np.testing.assert_array_equal(whole[0], kept.sum(axis=(0, 2)))
        np.testing.assert_array_equal(whole[5], (kept & (xs.numpy() != 0)).sum(axis=(0, 2)))


@given(offset=st.floats(-1e4, 1e4), log_scale=st.floats(-3, 3), n=st.integers(1, 4),
       length=st.integers(1, 700), kept=st.floats(0.05, 1.0), seed=st.integers(0, 2**16))
def test_the_documented_bound_holds_for_any_offset_scale_and_shape(offset, log_scale, n, length, kept, seed):
    """The kernels module's bound, as a property: any mean, spread, batch and row length (blocks, short last
    blocks), any share of kept positions; two batches so that the second is summed around the running mean
    or around 0 as the first decides."""
    from masked_torch.analysis.kernels import Workspace, as_ncl, first_moments

    g = torch.Generator().manual_seed(seed)
    ws, state, pairs = Workspace(), None, []
    for _ in range(2):
        x = offset + 10.0**log_scale * torch.randn(n, 3, length, generator=g)
        mask = (torch.rand(n, 1, length, generator=g) < kept).float()
        mask[0, 0, 0] = 1
        state = first_moments(state, *as_ncl(x, mask, "test", ws), ws)
        pairs.append((x.double().numpy(), mask.double().numpy()))
    want = reference(pairs)
    np.testing.assert_array_equal(state[0], want["count"])
    assert_moments_close(state[1], state[2] / state[0], want["mean"], want["var"])
