"""The "end" rule, checked against the plain torch layer on each image alone.

For every layer whose output grid follows the "end" rule (pooling, transposed convolution, upsampling,
normalisation, global pooling, and convolutions made by ``convert``), the library promises: on a padded batch
(each image at the origin of the canvas, NaN in the padding here), the masked layer gives, for each image,
exactly what the PLAIN ``torch.nn`` layer gives on that image alone at its own size (the output cropped to
the plain output's size); the output mask is 1 exactly on that region and 0 elsewhere; the output is exactly
0 wherever the output mask is 0; and nothing under the mask (NaN here) leaks anywhere.

The plain layer on each image alone is the independent reference: nothing here uses the library's own mask
arithmetic. Each property runs for the masked layer built directly and for ``mnn.convert(plain, "masked")``,
with 1-channel and C-channel masks, float and bool.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis import assume
from torch import nn

import masked_torch.nn as mnn
from masked_torch.utils import pad_batch

DTYPE = torch.float64
NAN = float("nan")
EXAMPLES = 100

# mask forms: (channels, dtype); item 8 of the brief: 1-channel vs C-channel, bool vs float
MASK_FORMS = [("1", torch.float64), ("1", torch.float32), ("1", torch.bool), ("C", torch.float64),
              ("C", torch.bool)]


# --- helpers -----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only cost here (a max_pool1d of a few entries took milliseconds with two
    threads on a busy two-core machine, microseconds with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Case:
    """One drawn configuration: the plain layer (the reference), its masked versions, the images."""

    name: str
    plain: nn.Module
    masked: dict  # label -> masked module (built directly, and by convert)
    images: list  # (C, *s) float64 tensors
    multiple: int = 1  # extra canvas padding (pad_batch's multiple)
    channels_last: bool = False  # LayerNorm over channels: run on x.movedim(1, -1) ...
    channels_first: frozenset = frozenset()  # ... except the models with these labels (they permute inside)
    exact_mask: bool = True  # the output mask is exactly 0/1 on the region (False: within 1e-12 of it)
    info: dict = field(default_factory=dict)  # the layer's arguments (printed with a failing example)


def padded(images, multiple: int, form) -> tuple[torch.Tensor, torch.Tensor]:
    """The padded batch with NaN in the padding, and its mask in the given form."""
    channels, mask_dtype = form
    x, mask = pad_batch(images, multiple=multiple, mask_dtype=mask_dtype)
    x = torch.where(mask.bool().expand_as(x), x, torch.full((), NAN, dtype=x.dtype))
    if channels == "C":
        mask = mask.expand_as(x).contiguous()
    return x, mask


def run_masked(module: nn.Module, x: torch.Tensor, mask: torch.Tensor, channels_last: bool):
    """The masked module on the padded batch; channels-first output and mask."""
    if channels_last:
        y, m = module(x.movedim(1, -1), mask.movedim(1, -1))
        return y.movedim(-1, 1), m.movedim(-1, 1)
    return module(x, mask)


def run_plain(module: nn.Module, image: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The plain module on one image alone, at its own size: (C_out, *s_out), channels first."""
    if channels_last:
        return module(image[None].movedim(1, -1)).movedim(-1, 1)[0]
    return module(image[None])[0]


def check_promise(y: torch.Tensor, m: torch.Tensor, refs: list, *, exact_mask: bool = True, what: str = "") -> None:
    """``y``/``m`` from the masked layer on the padded batch; ``refs[i]`` the plain layer on image ``i`` alone."""
    assert not torch.isnan(y).any(), f"{what}: NaN from the padding leaked into the output"
    assert m is not None, f"{what}: no output mask"
    assert not torch.isnan(m.to(DTYPE)).any(), f"{what}: NaN in the output mask"
    assert m.dim() == y.dim() and m.shape[0] == y.shape[0] and m.shape[2:] == y.shape[2:] \
        and m.shape[1] in (1, y.shape[1]), f"{what}: output mask {tuple(m.shape)} does not fit output {tuple(y.shape)}"
    assert y.shape[0] == len(refs)
    mf = m.to(DTYPE)
    for i, ref in enumerate(refs):
        assert ref.numel() > 0
        assert ref.shape[0] == y.shape[1], f"{what}: channels {y.shape[1]} != plain {ref.shape[0]}"
        assert all(a >= b for a, b in zip(y.shape[2:], ref.shape[1:])), \
            f"{what}: canvas output {tuple(y.shape[2:])} smaller than image {i}'s plain output {tuple(ref.shape[1:])}"
        region = (slice(None),) + tuple(slice(0, s) for s in ref.shape[1:])
        torch.testing.assert_close(y[i][region], ref, msg=lambda s: f"{what}: image {i} (plain output "
                                   f"{tuple(ref.shape)}) differs from the plain layer alone:\n{s}")
        expected = torch.zeros_like(mf[i])
        expected[region] = 1
        if exact_mask:
            assert torch.equal(mf[i], expected), (
                f"{what}: image {i}: output mask is not 1 exactly on the plain output region "
                f"{tuple(ref.shape[1:])} of canvas {tuple(y.shape[2:])}; "
                f"wrong at {(mf[i] != expected).nonzero().tolist()[:8]}")
        else:
            assert torch.equal(mf[i] == 0, expected == 0), \
                f"{what}: image {i}: output mask is not zero exactly outside the plain output region"
            torch.testing.assert_close(mf[i], expected, rtol=0, atol=1e-12)
    zero = (mf == 0).expand_as(y)
    assert bool((y[zero] == 0).all()), f"{what}: output is not 0 where the output mask is 0"


def check_case(case: Case, form) -> None:
    x, mask = padded(case.images, case.multiple, form)
    with torch.no_grad():
        refs = [run_plain(case.plain, img, case.channels_last) for img in case.images]
        for label, module in case.masked.items():
            y, m = run_masked(module, x, mask, case.channels_last and label not in case.channels_first)
            check_promise(y, m, refs, exact_mask=case.exact_mask, what=f"{label} mask={form}")


def draw_sizes(draw, nd: int, min_size, n_max: int = 4) -> list:
    """1..n_max images; per image and dim ``min_size[d] + extra`` (small in 3d)."""
    n = draw(st.integers(1, n_max if nd < 3 else 3), label="images")
    extra = 6 if nd < 3 else 3
    return [tuple(min_size[d] + draw(st.integers(0, extra)) for d in range(nd)) for _ in range(n)]


def seed_torch(draw) -> None:
    """Seed torch (module initialisation, images) from a drawn seed: every example reproduces on its own."""
    torch.manual_seed(draw(st.integers(0, 2**31 - 1), label="seed"))


def draw_images(sizes, channels: int) -> list:
    return [torch.randn((channels,) + s, dtype=DTYPE) for s in sizes]


def per_dim(draw, nd: int, values, label: str):
    """An int (same in every dim) or a tuple of one value per dim."""
    if draw(st.booleans(), label=f"{label} as int"):
        return draw(st.sampled_from(values), label=label)
    return tuple(draw(st.sampled_from(values), label=f"{label}[{d}]") for d in range(nd))


def tup(v, nd: int) -> tuple:
    return (v,) * nd if isinstance(v, int) else tuple(v)


def pool_out(s, k, st_, p, d, ceil_mode) -> int:
    """torch's pooling output size (the last window must start inside the input or its left padding)."""
    num = s + 2 * p - d * (k - 1) - 1
    if num < 0:
        return 0
    out = (-(-num // st_) if ceil_mode else num // st_) + 1
    if ceil_mode and (out - 1) * st_ >= s + p:
        out -= 1
    return out


class Wrapped(nn.Module):
    """A one-layer model that ``convert`` traces with ``torch.fx`` (the layer then runs with ``input_zeroed``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


class ChannelsLast(nn.Module):
    """A traced model that runs a channels-last layer (LayerNorm over channels) on channels-first input."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x.movedim(1, -1)).movedim(-1, 1)


GRAPH_CL = "convert(graph(movedim, LayerNorm, movedim))"


def converted(plain: nn.Module, kind: str = "masked", **options) -> dict:
    """``convert`` of the layer itself, of an ``nn.Sequential`` holding it and of a traced model holding it
    (for a LayerNorm, one that moves the channels last and back: a traced model takes ``(N, C, *S)``)."""
    name = type(plain).__name__
    out = {f"convert({name})": mnn.convert(plain, kind, **options),
           f"convert(Sequential({name}))": mnn.convert(nn.Sequential(plain), kind, **options)}
    if isinstance(plain, nn.LayerNorm):
        out[GRAPH_CL] = mnn.convert(ChannelsLast(plain), kind, **options)
    else:
        out[f"convert(graph({name}))"] = mnn.convert(Wrapped(plain), kind, **options)
    return out


def masked_versions(plain: nn.Module, masked_cls: type, build: Callable) -> dict:
    """The masked layer built directly (``build()``, weights loaded from ``plain``) and by ``convert``."""
    direct = build().to(DTYPE)  # float64 before loading: float32 parameters would round the weights
    direct.load_state_dict(plain.state_dict(), strict=True)
    out = {masked_cls.__name__: direct, **converted(plain)}
    layer = out[f"convert({type(plain).__name__})"]
    assert type(layer) is masked_cls, f"convert({type(plain).__name__}) gave {type(layer).__name__}"
    return out


def randomise(module: nn.Module) -> nn.Module:
    """float64 parameters drawn in float64 (not float32-representable: a float32 round trip shows)."""
    module = module.to(DTYPE)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


mask_forms = st.sampled_from(MASK_FORMS)


# --- 1. max pooling ----------------------------------------------------------------------------------------


@st.composite
def max_pool_cases(draw, nd=None):
    seed_torch(draw)
    nd = nd or draw(st.sampled_from([1, 2, 3]), label="nd")
    kernel = per_dim(draw, nd, [1, 2, 3, 4], "kernel")
    ks = tup(kernel, nd)
    stride = None if draw(st.booleans(), label="stride=None") else per_dim(draw, nd, [1, 2, 3], "stride")
    ss = ks if stride is None else tup(stride, nd)
    padding = tuple(draw(st.integers(0, k // 2), label=f"padding[{d}]") for d, k in enumerate(ks))
    dilation = per_dim(draw, nd, [1, 2], "dilation")
    ds = tup(dilation, nd)
    ceil_mode = draw(st.booleans(), label="ceil_mode")
    c = draw(st.integers(1, 3), label="C")
    min_size = [max(1, d * (k - 1) + 1 - 2 * p) for k, p, d in zip(ks, padding, ds)]
    sizes = draw_sizes(draw, nd, min_size)
    for s in sizes:
        assume(all(pool_out(*a, ceil_mode) > 0 for a in zip(s, ks, ss, padding, ds)))
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    plain = getattr(nn, f"MaxPool{nd}d")(**kw)
    cls = getattr(mnn, f"MaskedMaxPool{nd}d")
    return Case(f"MaxPool{nd}d", plain, masked_versions(plain, cls, lambda: cls(**kw)),
                draw_images(sizes, c), draw(st.integers(1, 3), label="multiple"), info=kw)


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data(), form=mask_forms)
@settings(max_examples=EXAMPLES)
def test_max_pool(nd, data, form):
    check_case(data.draw(max_pool_cases(nd=nd), label="case"), form)


# --- 2. average pooling ------------------------------------------------------------------------------------


@st.composite
def avg_pool_cases(draw, nd=None):
    seed_torch(draw)
    nd = nd or draw(st.sampled_from([1, 2, 3]), label="nd")
    kernel = per_dim(draw, nd, [1, 2, 3, 4], "kernel")
    ks = tup(kernel, nd)
    stride = None if draw(st.booleans(), label="stride=None") else per_dim(draw, nd, [1, 2, 3], "stride")
    ss = ks if stride is None else tup(stride, nd)
    padding = tuple(draw(st.integers(0, k // 2), label=f"padding[{d}]") for d, k in enumerate(ks))
    ceil_mode = draw(st.booleans(), label="ceil_mode")
    count_include_pad = draw(st.booleans(), label="count_include_pad")
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
              count_include_pad=count_include_pad)
    if nd > 1:
        kw["divisor_override"] = draw(st.one_of(st.none(), st.integers(1, 5)), label="divisor_override")
    c = draw(st.integers(1, 3), label="C")
    # torch's avg_pool3d refuses an input smaller than the kernel, padding or not ("input image smaller than
    # kernel size"): the plain layer has no output there to compare with
    min_size = [k if nd == 3 else max(1, k - 2 * p) for k, p in zip(ks, padding)]
    sizes = draw_sizes(draw, nd, min_size)
    for s in sizes:
        assume(all(pool_out(*a, 1, ceil_mode) > 0 for a in zip(s, ks, ss, padding)))
    plain = getattr(nn, f"AvgPool{nd}d")(**kw)
    cls = getattr(mnn, f"MaskedAvgPool{nd}d")
    return Case(f"AvgPool{nd}d", plain, masked_versions(plain, cls, lambda: cls(**kw)),
                draw_images(sizes, c), draw(st.integers(1, 3), label="multiple"), info=kw)


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data(), form=mask_forms)
@settings(max_examples=EXAMPLES)
def test_avg_pool(nd, data, form):
    check_case(data.draw(avg_pool_cases(nd=nd), label="case"), form)


# --- 3. transposed convolution -----------------------------------------------------------------------------


@st.composite
def conv_transpose_cases(draw, nd=None):
    seed_torch(draw)
    nd = nd or draw(st.sampled_from([1, 2, 3]), label="nd")
    kernel = per_dim(draw, nd, [1, 2, 3, 4], "kernel")
    ks = tup(kernel, nd)
    stride = per_dim(draw, nd, [1, 2, 3], "stride")
    ss = tup(stride, nd)
    padding = per_dim(draw, nd, [0, 1, 2], "padding")
    ps = tup(padding, nd)
    dilation = per_dim(draw, nd, [1, 2], "dilation")
    ds = tup(dilation, nd)
    ops = tuple(draw(st.integers(0, max(s, d) - 1), label=f"output_padding[{i}]")
                for i, (s, d) in enumerate(zip(ss, ds)))
    groups = draw(st.sampled_from([1, 2]), label="groups")
    c_in = groups * draw(st.integers(1, 2), label="in per group")
    c_out = groups * draw(st.integers(1, 2), label="out per group")
    bias = draw(st.booleans(), label="bias")

    def out(s, k, st_, p, d, op):
        return (s - 1) * st_ - 2 * p + d * (k - 1) + op + 1

    min_size = []
    for a in zip(ks, ss, ps, ds, ops):
        s = 1
        while out(s, *a) <= 0:
            s += 1
        min_size.append(s)
    sizes = draw_sizes(draw, nd, min_size)
    kw = dict(stride=stride, padding=padding, output_padding=ops, groups=groups, bias=bias, dilation=dilation)
    plain = randomise(getattr(nn, f"ConvTranspose{nd}d")(c_in, c_out, kernel, **kw))
    cls = getattr(mnn, f"MaskedConvTranspose{nd}d")
    return Case(f"ConvTranspose{nd}d", plain,
                masked_versions(plain, cls, lambda: cls(c_in, c_out, kernel, **kw)),
                draw_images(sizes, c_in), draw(st.integers(1, 3), label="multiple"), info=kw)


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data(), form=mask_forms)
@settings(max_examples=EXAMPLES)
def test_conv_transpose(nd, data, form):
    check_case(data.draw(conv_transpose_cases(nd=nd), label="case"), form)


# --- 4. upsampling -----------------------------------------------------------------------------------------

LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}
SCALES = [1, 2, 3, 1.5, 2.5, 0.5, 0.75, 1.25]


@st.composite
def upsample_cases(draw, nd=None):
    seed_torch(draw)
    nd = nd or draw(st.sampled_from([1, 2, 3]), label="nd")
    mode = draw(st.sampled_from(["nearest", "nearest-exact", LINEAR[nd]]), label="mode")
    if draw(st.booleans(), label="scale per dim"):
        scale = tuple(draw(st.sampled_from(SCALES), label=f"scale[{d}]") for d in range(nd))
    else:
        scale = draw(st.sampled_from(SCALES), label="scale")
    scales = scale if isinstance(scale, tuple) else (scale,) * nd
    c = draw(st.integers(1, 3), label="C")
    min_size = [max(1, math.ceil(1 / s)) for s in scales]
    sizes = draw_sizes(draw, nd, min_size)
    for s in sizes:
        assume(all(math.floor(a * f) > 0 for a, f in zip(s, scales)))
    kw = dict(scale_factor=scale, mode=mode)
    if mode == LINEAR[nd]:
        kw["align_corners"] = False
    plain = nn.Upsample(**kw)
    return Case(f"Upsample({mode})", plain,
                masked_versions(plain, mnn.MaskedUpsample, lambda: mnn.MaskedUpsample(**kw)),
                draw_images(sizes, c), draw(st.integers(1, 3), label="multiple"), info=kw)


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data(), form=mask_forms)
@settings(max_examples=EXAMPLES)
def test_upsample(nd, data, form):
    check_case(data.draw(upsample_cases(nd=nd), label="case"), form)


@pytest.mark.parametrize("mode,scale", [("nearest", (1.25, 2.0)), ("bilinear", (1.25, 2.0)), ("nearest", (2.25, 1.0)),
                                        ("linear", (1.25,))])
def test_upsample_same_size_shortcut(mode, scale):
    """torch copies a dim whose output size equals its input size (3 * 1.25 -> 3) and halves the index where it
    is exactly twice (3 * 2.25 -> 6), instead of reading floor(i / scale): no one rule on the canvas, where that
    dim is larger, gives both images what they get alone, so scales that are not integers or their inverses are
    interpolated per image."""
    shapes = [(1, 3, 1), (1, 4, 2)] if len(scale) == 2 else [(1, 3), (1, 5)]
    images = [torch.arange(1.0, 1.0 + math.prod(s), dtype=DTYPE).view(s) for s in shapes]
    kw = dict(scale_factor=scale, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    plain = nn.Upsample(**kw)
    x, mask = padded(images, 1, ("1", DTYPE))
    y, m = mnn.MaskedUpsample(**kw)(x, mask)
    check_promise(y, m, [plain(img[None])[0] for img in images], what=f"Upsample{kw}")


# --- 5. group, instance and layer norm ---------------------------------------------------------------------


@st.composite
def norm_cases(draw, kind=None):
    seed_torch(draw)
    kind = kind or draw(st.sampled_from(["group", "instance", "layer"]), label="kind")
    nd = 2 if kind == "instance" else draw(st.sampled_from([1, 2, 3]), label="nd")
    sizes = draw_sizes(draw, nd, [1] * nd)
    if kind == "group":
        g = draw(st.integers(1, 3), label="groups")
        c = g * draw(st.integers(1, 3), label="channels per group")
        # torch refuses a group of one value: "Expected more than 1 value per channel when training"
        assume(all(c // g * math.prod(s) > 1 for s in sizes))
        plain = randomise(nn.GroupNorm(g, c, affine=draw(st.booleans(), label="affine")))
        cls = mnn.MaskedGroupNorm
        build = lambda: cls(g, c, affine=plain.affine)  # noqa: E731
    elif kind == "instance":
        c = draw(st.integers(1, 3), label="C")
        # torch refuses instance norm over one spatial element ("Expected more than 1 spatial element")
        assume(all(math.prod(s) > 1 for s in sizes))
        plain = randomise(nn.InstanceNorm2d(c, affine=True))
        cls = mnn.MaskedInstanceNorm2d
        build = lambda: cls(c, affine=True)  # noqa: E731
    else:
        c = draw(st.integers(1, 4), label="C")
        affine = draw(st.booleans(), label="elementwise_affine")
        bias = draw(st.booleans(), label="bias")
        plain = randomise(nn.LayerNorm(c, elementwise_affine=affine, bias=bias))
        cls = mnn.MaskedLayerNorm
        build = lambda: cls(c, elementwise_affine=affine, bias=bias)  # noqa: E731
    return Case(f"{type(plain).__name__}", plain, masked_versions(plain, cls, build), draw_images(sizes, c),
                draw(st.integers(1, 3), label="multiple"), channels_last=kind == "layer",
                channels_first=frozenset({GRAPH_CL}))


@pytest.mark.parametrize("kind", ["group", "instance", "layer"])
@given(data=st.data(), form=mask_forms)
@settings(max_examples=EXAMPLES // 2)
def test_norm(kind, data, form):
    check_case(data.draw(norm_cases(kind), label="case"), form)


# --- 6. global pooling -------------------------------------------------------------------------------------


@st.composite
def adaptive_pool_cases(draw, nd=None):
    seed_torch(draw)
    nd = nd or draw(st.sampled_from([1, 2, 3]), label="nd")
    mode = draw(st.sampled_from(["Avg", "Max"]), label="mode")
    size = draw(st.sampled_from([1, (1,) * nd]), label="output_size")
    c = draw(st.integers(1, 3), label="C")
    sizes = draw_sizes(draw, nd, [1] * nd)
    plain = getattr(nn, f"Adaptive{mode}Pool{nd}d")(size)
    cls = getattr(mnn, f"MaskedAdaptive{mode}Pool{nd}d")
    return Case(f"Adaptive{mode}Pool{nd}d", plain, masked_versions(plain, cls, lambda: cls(size)),
                draw_images(sizes, c), draw(st.integers(1, 3), label="multiple"))


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data(), form=mask_forms)
@settings(max_examples=EXAMPLES // 2)
def test_adaptive_pool(nd, data, form):
    check_case(data.draw(adaptive_pool_cases(nd=nd), label="case"), form)


@given(case=adaptive_pool_cases(nd=2), form=mask_forms)
@settings(max_examples=EXAMPLES // 2)
def test_adaptive_pool_2d_shapes(case, form):
    x, mask = padded(case.images, case.multiple, form)
    for label, module in case.masked.items():
        y, m = module(x, mask)
        # (N, C, 1, 1); the mask (N, 1, 1, 1) for a 1-channel mask (a C-channel mask may stay C-channel)
        assert y.shape == x.shape[:2] + (1, 1), label
        assert m.shape == (x.shape[0], mask.shape[1], 1, 1) or m.shape == (x.shape[0], 1, 1, 1), label
        if mask.shape[1] == 1:
            assert m.shape == (x.shape[0], 1, 1, 1), label
    check_case(case, form)


# --- 7. convolutions made by convert (anchor="end") --------------------------------------------------------


@st.composite
def conv_cases(draw, nd=None, kind=None):
    """``convert(nn.ConvNd, "masked")`` for any window; ``convert(..., "partial", update_mask=False)`` for
    unpadded windows (with padding, partial convolution rescales the border by design: not the plain conv)."""
    seed_torch(draw)
    nd = nd or draw(st.sampled_from([1, 2, 3]), label="nd")
    kind = kind or draw(st.sampled_from(["masked", "partial"]), label="kind")
    kernel = per_dim(draw, nd, [1, 2, 3, 4], "kernel")
    ks = tup(kernel, nd)
    stride = per_dim(draw, nd, [1, 2, 3, 4], "stride")
    ss = tup(stride, nd)
    padding = 0 if kind == "partial" else per_dim(draw, nd, [0, 1, 2], "padding")
    ps = tup(padding, nd)
    dilation = per_dim(draw, nd, [1, 2], "dilation")
    ds = tup(dilation, nd)
    groups = draw(st.sampled_from([1, 2]), label="groups")
    c_in = groups * draw(st.integers(1, 2), label="in per group")
    c_out = groups * draw(st.integers(1, 2), label="out per group")
    bias = draw(st.booleans(), label="bias")
    min_size = [max(1, d * (k - 1) + 1 - 2 * p) for k, p, d in zip(ks, ps, ds)]
    sizes = draw_sizes(draw, nd, min_size)
    plain = randomise(getattr(nn, f"Conv{nd}d")(c_in, c_out, kernel, stride=stride, padding=padding,
                                                dilation=dilation, groups=groups, bias=bias))
    options = {"update_mask": False} if kind == "partial" else {}
    masked = converted(plain, kind, **options)
    layer = masked[f"convert(Conv{nd}d)"]
    assert type(layer) is getattr(mnn, f"{'Masked' if kind == 'masked' else 'Partial'}Conv{nd}d")
    assert layer.anchor == "end"
    # masked convolution mixes a C-channel mask over input channels with weights normalised to sum 1:
    # the mask is 1 up to rounding there
    return Case(f"convert(Conv{nd}d, {kind})", plain, masked, draw_images(sizes, c_in),
                draw(st.integers(1, 3), label="multiple"), exact_mask=kind == "partial",
                info={"kind": kind})


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data(), form=mask_forms)
@settings(max_examples=EXAMPLES)
def test_converted_conv(nd, data, form):
    check_case(data.draw(conv_cases(nd=nd), label="case"), form)


@pytest.mark.parametrize("kind", ["masked", "partial"])
@pytest.mark.parametrize("kernel,stride,padding", [(4, 4, 0), (3, 1, 0), (2, 2, 0), (3, 2, 0), (4, 2, 1), (2, 1, 0),
                                                   (5, 3, 1)])
@pytest.mark.parametrize("form", MASK_FORMS, ids=lambda f: f"{f[0]}-{str(f[1])[6:]}")
def test_converted_conv_non_centred_windows(kind, kernel, stride, padding, form):
    """Windows whose centre is not the "end": a 4x4 stride-4 patchify, an unpadded 3x3, 2x2 stride 2, ..."""
    if kind == "partial" and padding:
        pytest.skip("partial convolution rescales the zero padding by design")
    torch.manual_seed(1)
    plain = randomise(nn.Conv2d(3, 5, kernel, stride=stride, padding=padding))
    masked = converted(plain, kind, **({"update_mask": False} if kind == "partial" else {}))
    g = torch.Generator().manual_seed(2)
    sizes = [(17, 13), (9, 16), (kernel, kernel), (kernel + 1, 11), (12, kernel + 2)]
    images = [torch.randn((3,) + s, generator=g, dtype=DTYPE) for s in sizes]
    x, mask = padded(images, 4, form)
    with torch.no_grad():
        refs = [plain(img[None])[0] for img in images]
        for label, module in masked.items():
            y, m = module(x, mask)
            check_promise(y, m, refs, exact_mask=kind == "partial" or form[0] == "1", what=f"{label} {form}")


# --- 8. 1-channel vs C-channel masks, bool vs float --------------------------------------------------------


@st.composite
def any_case(draw):
    family = draw(st.sampled_from(["max", "avg", "convT", "up", "norm", "adaptive", "conv"]), label="family")
    return draw({"max": max_pool_cases(), "avg": avg_pool_cases(), "convT": conv_transpose_cases(),
                 "up": upsample_cases(), "norm": norm_cases(), "adaptive": adaptive_pool_cases(),
                 "conv": conv_cases()}[family])


@given(case=any_case())
@settings(max_examples=EXAMPLES)
def test_mask_forms_agree(case):
    """The same validity as a 1-channel or C-channel mask, float32, float64 or bool: the same outputs and the
    same output mask (broadcast over channels)."""
    with torch.no_grad():
        for label, module in case.masked.items():
            results = []
            for form in MASK_FORMS:
                x, mask = padded(case.images, case.multiple, form)
                y, m = run_masked(module, x, mask, case.channels_last and label not in case.channels_first)
                results.append((form, y, m.to(DTYPE).expand_as(y)))
            form0, y0, m0 = results[0]
            for form, y, m in results[1:]:
                torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12,
                                           msg=lambda s: f"{label}: output with mask {form} != with {form0}:\n{s}")
                torch.testing.assert_close(m, m0, rtol=0, atol=0 if case.exact_mask else 1e-12,
                                           msg=lambda s: f"{label}: output mask {form} != with {form0}:\n{s}")
