"""convert() on models that torch.fx cannot trace, or traces wrongly (tests/fx_defeating.py): the torch.export
front end, captures checked against the model, and every guarantee of fx-captured models.

Each pattern is converted as a user would (no example: ``capture="auto"`` captures on the first call) and
checked in float64 with NaN in the padding: ``"masked"`` gives each image what the unmodified model gives it
alone (1e-9 relative), ``"partial"`` does not depend on the padding, state_dict loads strict both ways, a
training step gives finite gradients.
"""
import copy
import io

import pytest
import torch
from torch import nn

import masked_torch.nn as mnn
from fx_defeating import PATTERNS, build
from masked_torch.utils import pad_batch
from test_convert_models import assert_per_image, assert_training_step, structure

EXACT = list(PATTERNS)
#: plain torch.fx raises on int() of a Proxy; convert's tracer records int() of a size as a call (torch.export
#: would fix the canvas size there, and is refused: see below)
CONVERT_FX = {"int_size"}


def images(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = PATTERNS[name].example[1]
    return [torch.randn(c, h, w, generator=g, dtype=torch.float64) for h, w in PATTERNS[name].sizes]


def padded(name, imgs, extra=0):
    """The padded batch with NaN in the padding (``extra`` more rows and columns of it)."""
    multiple = PATTERNS[name].multiple
    x, m = pad_batch(imgs, multiple, mask_dtype=torch.float64)
    if extra:
        pad = (0, extra * multiple, 0, extra * multiple)
        x, m = torch.nn.functional.pad(x, pad), torch.nn.functional.pad(m, pad)
    return torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan"))), m


@pytest.mark.parametrize("name", EXACT)
def test_masked_batch_equals_the_unmodified_model_on_each_image_alone(name):
    model = build(name)
    masked = mnn.convert(model, "masked")
    imgs = images(name)
    x, m = padded(name, imgs)
    with torch.no_grad():
        out, out_mask = masked(x, m)
        assert type(out) is type(model(imgs[0][None])), "the output keeps its structure (dataclass, ModelOutput)"
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))
    expected = "export" if PATTERNS[name].fx != "traces" and name not in CONVERT_FX else ("fx", "export")
    assert masked.capture in expected


@pytest.mark.parametrize("name", EXACT)
def test_partial_does_not_depend_on_the_padding(name):
    """update_mask=False, the padding use (with the default True the mask grows by each window, into padding
    that one canvas has and another lacks)."""
    masked = mnn.convert(build(name), "partial", update_mask=False)
    imgs = images(name)
    with torch.no_grad():
        a, _ = masked(*padded(name, imgs))
        b, _ = masked(*padded(name, imgs, extra=2))
    for u, v in zip(structure(a), structure(b)):  # b's canvas is larger: crop it to a's
        v = v[tuple(slice(0, n) for n in u.shape)]
        assert not bool(torch.isnan(u).any() or torch.isnan(v).any()), "no NaN of the padding reaches an output"
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", EXACT)
def test_state_dict_loads_strict_both_ways_and_mask_none_is_the_plain_model(name):
    model = build(name)
    masked = mnn.convert(model, "masked")
    x = images(name)[0][None]
    with torch.no_grad():
        masked(*padded(name, [x[0]]))  # captured on this first call
        out, out_mask = masked(x)
        for a, b in zip(structure(out), structure(model(x))):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert structure(out_mask) == []
    assert list(masked.state_dict()) == list(model.state_dict())
    masked.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(masked.state_dict(), strict=True)


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("kind", ["masked", "partial"])
def test_training_step_gives_finite_gradients(name, kind):
    masked = mnn.convert(build(name).train(), kind)
    assert_training_step(masked, *padded(name, images(name)))
    torch.optim.SGD(masked.parameters(), lr=0.01).step()


@pytest.mark.parametrize("name", ["jit_isinstance_cat", "jit_isinstance_add", "isinstance_gate"])
def test_a_wrong_fx_trace_is_caught_and_the_export_capture_taken(name):
    """fx records the branch without the skip connection (torch.jit.isinstance is False for a Proxy): the
    check against the model names the first layer where the graph parts from it; capture="auto" then takes
    torch.export's capture, which is exact."""
    model = build(name)
    example = torch.randn(*PATTERNS[name].example, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"torch\.fx capture of \w+ (differs from|fails at node) .*"
                                         r"try capture='export'"):
        mnn.convert(model, "masked", capture="fx", example=example)
    lazy = mnn.convert(model, "masked", capture="fx")  # checked on the first batch instead
    with pytest.raises(ValueError, match=r"torch\.fx capture of \w+"):
        lazy(*padded(name, images(name)))
    for converted in (mnn.convert(model, "masked", example=example), mnn.convert(model, "masked")):
        imgs = images(name)
        with torch.no_grad():
            out, out_mask = converted(*padded(name, imgs))
            assert converted.capture == "export"
            assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


def test_check_off_converts_the_fx_trace_as_it_is():
    """check=False: no comparison (and no cost); the user takes the fx graph as traced."""
    model = build("jit_isinstance_add")
    masked = mnn.convert(model, "masked", capture="fx", check=False)
    assert masked.capture == "fx"
    with torch.no_grad():
        masked(*padded("jit_isinstance_add", images("jit_isinstance_add")))


def test_a_capture_fixed_to_the_example_canvas_is_refused():
    """int() of a spatial size: torch.export pins that size to the example's (a guard and a constant in the
    graph), so the capture would hold for one canvas size only (convert's fx tracer takes it: see above)."""
    model = build("int_size")
    with pytest.raises(ValueError, match=r"torch\.export fixed a size computed from the spatial size of "
                                         r"IntSizeFCN's input to its value on the example \(.*== \d+"):
        mnn.convert(model, "masked", capture="export",
                    example=torch.randn(*PATTERNS["int_size"].example, dtype=torch.float64))


class PooledToOnePixel(nn.Module):
    """A pyramid branch strided down to a 1x1 map at a 16-pixel canvas, brought back by
    interpolate(size=x.shape[-2:]) (as PAN's feature-pyramid attention does at its coarsest level)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Sequential(*[nn.Conv2d(4, 4, 3, stride=2, padding=1) for _ in range(4)])
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        b = nn.functional.interpolate(self.down(y), size=y.shape[-2:], mode="bilinear", align_corners=True)
        return self.head(y * torch.sigmoid(b))


def test_a_map_one_pixel_wide_at_the_example_canvas_is_captured_on_a_larger_one():
    """torch.export fixes a size of 1 (a guard ``... == 1``): the capture is taken on the example in a canvas
    twice as large, checked against the model at the real canvas, and exact per image, also at a canvas where
    that map is 2 pixels wide."""
    torch.manual_seed(0)
    model = PooledToOnePixel().double().eval()
    g = torch.Generator().manual_seed(0)
    masked = mnn.convert(model, "masked", capture="export")
    for sizes in ([(16, 12), (10, 16)], [(24, 30), (17, 9)]):
        imgs = [torch.randn(3, *s, generator=g, dtype=torch.float64) for s in sizes]
        x, m = pad_batch(imgs, mask_dtype=torch.float64)
        x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan")))
        with torch.no_grad():
            out, out_mask = masked(x, m)
        assert masked.capture == "export"
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


def test_export_and_fx_captures_agree_in_train_mode():
    """A model both front ends capture: the same outputs, masks and running statistics in train mode (batch
    norm over the valid positions of the batch)."""
    from zoo import INPUTS
    from zoo import build as zoo_build

    model = zoo_build("resnet_basic").train()
    spec = INPUTS["resnet_basic"]
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randn(spec.channels, *s, generator=g, dtype=torch.float64) for s in spec.sizes]
    x, m = pad_batch(imgs, spec.multiple, mask_dtype=torch.float64)
    by_fx = mnn.convert(model, "masked", capture="fx")
    by_export = mnn.convert(model, "masked", capture="export", example=x)
    assert by_fx.capture == "fx" and by_export.capture == "export"
    a, am = by_fx(x, m)
    b, bm = by_export(x, m)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bm, am)
    for (name, u), (_, v) in zip(by_fx.named_buffers(), by_export.named_buffers()):
        torch.testing.assert_close(v, u, rtol=1e-12, atol=1e-12, msg=name)


def test_export_captured_model_copies_saves_compiles_and_exports_to_onnx():
    """A ResNet-like model captured by torch.export: deep copy, torch.save/load, torch.compile and ONNX
    export (run in onnxruntime) give the same numbers."""
    from zoo import build as zoo_build

    model = zoo_build("resnet_basic").float()
    x, m = pad_batch([torch.randn(3, 40, 50), torch.randn(3, 37, 45)])
    masked = mnn.convert(model, "masked", capture="export", example=x)
    with torch.no_grad():
        want, want_mask = masked(x, m)
        twin = copy.deepcopy(masked)
        buffer = io.BytesIO()
        torch.save(masked, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        for other in (twin, loaded):
            assert torch.equal(other(x, m)[0], want)
        compiled = torch.compile(masked, backend="eager")(x, m)
        torch.testing.assert_close(compiled[0], want, rtol=1e-5, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    batch, height, width = torch.export.Dim("batch", min=1), torch.export.Dim("h", min=32), torch.export.Dim("w", min=32)
    program = torch.onnx.export(masked, (x, m), dynamo=True, input_names=["x", "mask"],
                                dynamic_shapes={"x": {0: batch, 2: height, 3: width},
                                                "mask": {0: batch, 2: height, 3: width}})
    buffer = io.BytesIO()
    program.save(buffer)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x2, m2 = pad_batch([torch.randn(3, 33, 61), torch.randn(3, 52, 29), torch.randn(3, 20, 20)])
    got = session.run(None, {"x": x2.numpy(), "mask": m2.numpy()})
    with torch.no_grad():
        want2, want2_mask = masked(x2, m2)
    torch.testing.assert_close(torch.from_numpy(got[0]), want2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(got[1]), want2_mask)


def test_a_model_captured_on_its_first_call_can_be_compiled_before_that_call():
    """torch.compile runs the first call's capture eagerly (a graph break) and compiles what follows."""
    model = build("shape_assert")
    masked = mnn.convert(model, "masked")
    assert masked.capture is None  # fx cannot trace it; torch.export captures it on the first call
    imgs = images("shape_assert")
    x, m = padded("shape_assert", imgs)
    with torch.no_grad():
        out, out_mask = torch.compile(masked, backend="eager")(x, m)
        assert masked.capture == "export"
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


class ScaledByAConstant(nn.Module):
    """A plain tensor attribute (not a parameter or buffer): torch.export lifts it as a constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = torch.linspace(0.5, 2.0, 4, dtype=torch.float64).view(1, 4, 1, 1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.conv(x) * self.scale)


def test_a_lifted_tensor_constant_is_read_but_not_saved():
    model = ScaledByAConstant().double().eval()
    imgs = [torch.randn(3, 16, 12, dtype=torch.float64), torch.randn(3, 9, 14, dtype=torch.float64)]
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    masked = mnn.convert(model, "masked", capture="export")
    with torch.no_grad():
        out, out_mask = masked(x, m)
    assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))
    assert list(masked.state_dict()) == list(model.state_dict())


def test_bad_capture_arguments_get_one_clear_line():
    model = nn.Sequential(nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match=r"capture must be one of \['auto', 'fx', 'export'\], got 'jit'"):
        mnn.convert(model, "masked", capture="jit")
    with pytest.raises(TypeError, match="example must be an input tensor"):
        mnn.convert(model, "masked", example=[1, 2])
    with pytest.raises(TypeError, match="check must be True or False"):
        mnn.convert(model, "masked", check="yes")


@pytest.mark.parametrize("name", ["psp", "fpn"])
def test_sizes_torch_export_computes_from_the_input_are_read_off_a_tensor_of_that_size(name):
    """torch.export writes ``interpolate(y, size=x.shape[-2:])`` of an inner ``x`` as arithmetic on the input's
    sizes ((h - 1) // 8 + 1): the capture reads that size off the latest tensor of that size, as the forward
    does, so each image is resized to its own size (the fx capture of the same models reads it directly)."""
    model = build(name)
    imgs = images(name)
    x, m = padded(name, imgs)
    masked = mnn.convert(model, "masked", capture="export", example=x.nan_to_num())
    with torch.no_grad():
        out, out_mask = masked(x, m)
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


class TrainOnlyLayer(nn.Module):
    """fx cannot trace it (a shape check); in train mode it calls a layer that eval mode never calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.extra = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        if x.shape[1] != 3:
            raise ValueError("3 channels expected")
        y = torch.relu(self.conv(x))
        return self.extra(y) + y if self.training else y


def test_the_train_graph_is_captured_on_the_first_call_in_train_mode():
    """A model converted and first called in eval mode captures its train-mode graph when it first runs in
    train mode, also in a deep copy or a saved model made before that; the layer only train mode calls is
    swapped then, and each image gets what the model gives it alone in train mode."""
    model = TrainOnlyLayer().double().eval()
    imgs = [torch.randn(3, 11, 14, dtype=torch.float64), torch.randn(3, 8, 9, dtype=torch.float64)]
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    x = x.masked_fill(m == 0, float("nan"))
    masked = mnn.convert(model, "masked")
    with torch.no_grad():
        masked(x, m)
    assert masked.capture == "export"
    twin = copy.deepcopy(masked)
    buffer = io.BytesIO()
    torch.save(masked, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    model.train()
    for converted in (masked, twin, loaded):
        assert type(converted.extra) is nn.Conv2d, "not swapped before train mode calls it"
        out, out_mask = converted.train()(x, m)
        assert type(converted.extra) is mnn.MaskedConv2d
        assert converted.graph_train is not converted.graph and "extra" in converted.code
        with torch.no_grad():
            assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))
        assert list(converted.state_dict()) == list(model.state_dict())
        assert "extra" not in converted.eval().code
