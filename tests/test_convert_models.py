"""convert() on model-zoo-style networks (tests/zoo.py): the padded-batch promise, state_dict, training,
compile, ONNX, and the refusals."""
import collections
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import masked_torch.nn as mnn
from masked_torch.nn.outputs import flatten_output
from masked_torch.utils import pad_batch
from zoo import INPUTS, MODELS, build

NAMES = list(MODELS)


def structure(out):
    """The tensors of an output (a tensor, tuple, dict, namedtuple or dataclass), in order."""
    return flatten_output(out)[0]


def images(name, seed=0):
    spec = INPUTS[name]
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(spec.channels, *s, generator=g, dtype=torch.float64) for s in spec.sizes]


def garbage_padded(name, imgs):
    """The padded batch with NaN in the padding: nothing may read it."""
    x, m = pad_batch(imgs, INPUTS[name].multiple, mask_dtype=torch.float64)
    return torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan"))), m


def crop(t, k, like):
    """Sample ``k`` of a padded output, cut to the shape of ``like`` (the output of the image alone)."""
    return t[(slice(k, k + 1),) + tuple(slice(0, s) for s in like.shape[1:])]


def assert_per_image(out, out_mask, reference):
    """``out``/``out_mask`` of a padded batch against ``reference(k)``, each image's own output: equal to
    1e-9 (relative to the output's scale), the mask valid exactly on it, and exactly 0 elsewhere."""
    for k in range(structure(out)[0].shape[0]):
        for o, om, ref in zip(structure(out), structure(out_mask), structure(reference(k))):
            got = crop(o, k, ref)
            err = (got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)
            assert err <= 1e-9, float(err)
            full = om.expand_as(o)[k:k + 1]
            inside = torch.zeros_like(full, dtype=torch.bool)
            inside[(slice(None),) + tuple(slice(0, s) for s in ref.shape[1:])] = True
            assert bool((full[inside] != 0).all()), "the image's own outputs are valid"
            assert not bool(full[~inside].any()), "nothing outside the image is valid"
            assert bool((o[k:k + 1][~inside] == 0).all()), "the output is exactly 0 where its mask is 0"


@pytest.mark.parametrize("name", NAMES)
def test_masked_padded_batch_equals_the_unmodified_model_on_each_image_alone(name):
    model = build(name)
    imgs = images(name)
    masked = mnn.convert(model, "masked")
    x, m = garbage_padded(name, imgs)
    with torch.no_grad():
        out, out_mask = masked(x, m)
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


@pytest.mark.parametrize("name", NAMES)
def test_partial_padded_batch_equals_the_converted_model_on_each_image_alone(name):
    model = build(name)
    imgs = images(name)
    partial = mnn.convert(model, "partial", update_mask=False)
    x, m = garbage_padded(name, imgs)
    with torch.no_grad():
        out, out_mask = partial(x, m)
        alone = lambda k: partial(*pad_batch([imgs[k]], mask_dtype=torch.float64))[0]  # noqa: E731
        assert_per_image(out, out_mask, alone)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["masked", "partial", "plain"])
def test_state_dict_names_and_mask_none(name, kind):
    model = build(name)
    converted = mnn.convert(model, kind)
    assert list(converted.state_dict()) == list(model.state_dict())
    # a checkpoint loads strict both ways
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    converted.load_state_dict(torch.load(buffer), strict=True)
    model.load_state_dict(converted.state_dict(), strict=True)
    x = images(name)[0][None]
    with torch.no_grad():
        out, out_mask = converted(x)
        for a, b in zip(structure(out), structure(model(x))):
            assert torch.equal(a, b), "mask=None runs the plain model's kernels"
    assert structure(out_mask) == [], "mask=None: no masks anywhere in the output"


@pytest.mark.parametrize("name", ["resnet_basic", "densenet", "unet", "convnext"])
def test_train_mode_batch_statistics_over_valid_positions(name):
    """Two images of one size padded into a larger canvas, in train mode: batch norm sees only the images, so
    outputs and running statistics are the plain model's on the unpadded batch."""
    model = build(name).train()
    for module in model.modules():  # a deterministic train step: no dropout or stochastic depth
        if hasattr(module, "p") and isinstance(module.p, float):
            module.p = 0.0
    spec = INPUTS[name]
    size = spec.sizes[2]
    g = torch.Generator().manual_seed(1)
    imgs = [torch.randn(spec.channels, *size, generator=g, dtype=torch.float64) for _ in range(2)]
    bigger = torch.randn(spec.channels, *(s + spec.multiple * 2 for s in size), dtype=torch.float64)
    masked = mnn.convert(model, "masked")
    assert masked.training
    x, m = pad_batch(imgs + [bigger], spec.multiple, mask_dtype=torch.float64)
    x, m = x[:2], m[:2]  # two images padded to the larger canvas
    out, out_mask = masked(x, m)
    ref = model(torch.stack(imgs))
    for k in range(2):
        for o, r in zip(structure(out), structure(ref)):
            got = crop(o, k, r[k:k + 1])
            assert (got - r[k:k + 1]).abs().max() <= 1e-9 * r.abs().max()
    for (key, a), b in zip(masked.state_dict().items(), model.state_dict().values()):
        if "running" in key:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenetv3", "efficientnet", "convnext", "unet_dict", "cnn1d"])
@pytest.mark.parametrize("kind", ["masked", "partial"])
def test_training_step_gives_finite_gradients_for_every_parameter(name, kind):
    assert_training_step(mnn.convert(build(name).train(), kind), *garbage_padded(name, images(name)))


def assert_training_step(masked, x, m):
    """One forward and backward on the padded batch: every parameter gets a finite gradient, some non-zero."""
    out, out_mask = masked(x, m)
    loss = sum(((o * om) ** 2).mean() for o, om in zip(structure(out), structure(out_mask)))
    loss.backward()
    for pname, param in masked.named_parameters():
        assert param.grad is not None, pname
        assert bool(torch.isfinite(param.grad).all()), pname
    assert any(p.grad.abs().sum() > 0 for p in masked.parameters())


def test_stochastic_depth_runs_in_train_mode_only():
    """Code that reads self.training (a drop-path function) is traced once per mode."""
    model = build("convnext")
    masked = mnn.convert(model, "masked")
    assert masked.graph is not masked.graph_train
    assert "bernoulli_" in masked.train().code and "bernoulli_" not in masked.eval().code


def test_converted_models_copy_and_pickle():
    model = build("resnet_basic")
    masked = mnn.convert(model, "masked")
    x, m = garbage_padded("resnet_basic", images("resnet_basic"))
    buffer = io.BytesIO()
    torch.save(masked, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    import copy

    twin = copy.deepcopy(masked)
    with torch.no_grad():
        ref = masked(x, m)[0]
        assert torch.equal(loaded(x, m)[0], ref) and torch.equal(twin(x, m)[0], ref)
    assert twin.stem[0].weight is not masked.stem[0].weight


def test_compile_gives_the_same_numbers():
    model = build("resnet_basic").float()
    masked = mnn.convert(model, "masked")
    x, m = pad_batch([i.float() for i in images("resnet_basic")])
    with torch.no_grad():
        eager = masked(x, m)
        compiled = torch.compile(masked, backend="eager")(x, m)  # the traced graph, without codegen (fast)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1])


def test_onnx_export_with_dynamic_sizes_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model = build("resnet_basic").float()
    masked = mnn.convert(model, "masked")
    x, m = pad_batch([torch.randn(3, 40, 50), torch.randn(3, 37, 45)])
    batch, height, width = torch.export.Dim("batch", min=1), torch.export.Dim("h", min=32), torch.export.Dim("w", min=32)
    buffer = io.BytesIO()
    program = torch.onnx.export(masked, (x, m), dynamo=True, input_names=["x", "mask"],
                                dynamic_shapes={"x": {0: batch, 2: height, 3: width},
                                                "mask": {0: batch, 2: height, 3: width}})
    program.save(buffer)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x2, m2 = pad_batch([torch.randn(3, 33, 61), torch.randn(3, 52, 29), torch.randn(3, 20, 20)])  # 52x61 canvas
    got = session.run(None, {"x": x2.numpy(), "mask": m2.numpy()})
    with torch.no_grad():
        want, want_mask = masked(x2, m2)
    torch.testing.assert_close(torch.from_numpy(got[0]), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(got[1]), want_mask)


# --- refusals ----------------------------------------------------------------------------------------


class Head(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.op = op

    def forward(self, x):
        return self.op(self.conv(x))


class Block(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.body = Head(op)

    def forward(self, x):
        return self.body(x) + 1


@pytest.mark.parametrize("op,match", [
    (lambda x: F.interpolate(x, size=(8, 8)), "size= resizes the padded canvas"),
    (lambda x: x * x.shape[-1], "uses a spatial size of a masked tensor"),
    (lambda x: x + x.new_zeros(x.size(0), 1, x.size(2), 1), "uses a spatial size of a masked tensor"),
    (lambda x: x.mean((2, 3), keepdim=True).expand(-1, -1, x.shape[2], x.shape[3]), "uses a spatial size"),
    (lambda x: F.pad(x, (0, 1, 0, 1), mode="reflect"), "mode='reflect'"),
    (lambda x: F.pad(x, (0, -1, 0, 1)), "fixed non-negative"),
    (lambda x: F.max_pool2d(x, 2, return_indices=True)[0], "return_indices"),
    (lambda x: torch.stack([x, x]).transpose(0, 1).sum(1), "in front of the batch dim"),
])
def test_canvas_dependent_ops_are_refused_at_conversion_naming_node_op_and_module(op, match):
    with pytest.raises(ValueError, match=match) as info:
        mnn.convert(Block(op), "masked")
    assert "in module 'body' (Head)" in str(info.value) and "node '" in str(info.value)


@pytest.mark.parametrize("layer,match", [
    (nn.Upsample(size=(8, 8), mode="bilinear"), "size= resizes the padded canvas"),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "padding_mode='zeros'"),
    (nn.MaxPool2d(2, return_indices=True), "return_indices"),
])
def test_canvas_dependent_layers_are_refused_at_conversion_naming_the_layer(layer, match):
    with pytest.raises(ValueError, match=match) as info:
        mnn.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), layer)), "masked")
    assert "'1.1'" in str(info.value)


class PadThenConv(nn.Module):
    """Asymmetric constant padding before an unpadded strided conv (as latent-diffusion downsamplers do)."""

    def __init__(self, value):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.pad = nn.ZeroPad2d((1, 2, 0, 3))
        self.value = value

    def forward(self, x):
        return self.pad(F.pad(self.conv(F.pad(x, (0, 1, 0, 1), value=self.value)), (2, 0, 1, 1), value=self.value))


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_constant_padding_is_per_image(value):
    model = PadThenConv(value).double()
    imgs = [torch.randn(3, 9, 12, dtype=torch.float64), torch.randn(3, 13, 7, dtype=torch.float64)]
    masked = mnn.convert(model, "masked")
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    with torch.no_grad():
        out, out_mask = masked(x, m)
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


def test_untraceable_model_gets_one_clear_error():
    with pytest.raises(TypeError, match=r"cannot trace DataDependent with torch\.fx .*control flow"):
        mnn.convert(DataDependent(), "masked", capture="fx")
    # capture="auto" (the default) tries torch.export next, on the first batch (or on example=): it cannot
    # follow a branch on a tensor's value either, and the error says why each front end failed
    why = r"cannot capture DataDependent with torch\.export .*and torch\.fx: cannot trace DataDependent"
    with pytest.raises(TypeError, match=why):
        mnn.convert(DataDependent(), "masked", example=torch.randn(2, 3, 8, 8))
    masked = mnn.convert(DataDependent(), "masked")
    with pytest.raises(TypeError, match=why):
        masked(torch.randn(2, 3, 8, 8), torch.ones(2, 1, 8, 8))


def test_linear_over_masked_positions_is_refused_at_run_time():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    masked = mnn.convert(model, "masked")
    with pytest.raises(ValueError, match="pool over the valid positions first"):
        masked(torch.randn(2, 3, 6, 6), torch.ones(2, 1, 6, 6))


def test_concatenating_equal_masks_keeps_one_channel():
    """DenseNet-style concatenation of features on the same grid keeps a 1-channel mask."""
    model = build("densenet")
    masked = mnn.convert(model, "masked")
    x, m = garbage_padded("densenet", images("densenet"))
    seen = []
    for module in masked.modules():
        if isinstance(module, mnn.MaskedConv2d):
            module.register_forward_hook(lambda mod, args, out: seen.append(args[1].shape[1]))
    with torch.no_grad():
        masked(x, m)
    assert seen and set(seen) == {1}


def test_bad_mask_gets_a_value_error_naming_the_model_and_shapes():
    masked = mnn.convert(build("resnet_basic"), "masked")
    with pytest.raises(ValueError, match=r"MaskedResNet: mask of shape \(2, 1, 5, 5\) does not fit input"):
        masked(torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.ones(2, 1, 5, 5))


def test_plain_kind_leaks_and_keeps_the_mask_alongside():
    model = build("resnet_basic")
    plain = mnn.convert(model, "plain")
    masked = mnn.convert(model, "masked")
    imgs = images("resnet_basic")
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    with torch.no_grad():
        out_plain, mask_plain = plain(x, m)
        out_masked, mask_masked = masked(x, m)
    assert torch.equal(out_plain, model(x)), "the plain kind runs the model as it is"
    assert torch.equal(mask_plain, mask_masked)
    assert not torch.allclose(out_plain, out_masked)


# --- spatial sizes that only name a tensor's own dims, or resize per image ---------------------------------


def channel_shuffle(x, groups: int):
    """ShuffleNet's channel shuffle: reads all four sizes and views through them."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, -1, height, width)


class ShuffleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        x = channel_shuffle(self.conv(x), 2)
        a, b = x.chunk(2, dim=1)
        return torch.cat((a, self.dw(b)), dim=1)


class SegHead(nn.Module):
    """torchvision segmentation style: a strided backbone, an ASPP-like pooled branch broadcast back with
    interpolate(size=...), and logits resized to the input's size."""

    def __init__(self, align_corners):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.ReLU())
        self.classifier = nn.Conv2d(16, 3, 1)
        self.align_corners = align_corners

    def forward(self, x):
        input_shape = x.shape[-2:]
        features = self.backbone(x)
        size = features.shape[-2:]
        pooled = F.interpolate(self.pool(features), size=size, mode="bilinear", align_corners=False)
        out = self.classifier(torch.cat([features, pooled], dim=1))
        return {"out": F.interpolate(out, size=input_shape, mode="bilinear", align_corners=self.align_corners)}


@pytest.mark.parametrize("model", [ShuffleBlock(), SegHead(False), SegHead(True)], ids=["shuffle", "seg", "seg-ac"])
def test_spatial_sizes_that_name_own_dims_or_resize_per_image(model):
    model = model.double().eval()
    imgs = [torch.randn(3, 29, 41, dtype=torch.float64), torch.randn(3, 40, 23, dtype=torch.float64),
            torch.randn(3, 17, 17, dtype=torch.float64)]
    masked = mnn.convert(model, "masked")
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan")))
    with torch.no_grad():
        out, out_mask = masked(x, m)
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


@torch.fx.wrap
def scaled_tanh(x, scale: float):
    return torch.tanh(x) * scale


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return scaled_tanh(self.conv(x), 2.0)


def test_functions_kept_whole_by_fx_wrap_can_be_declared_elementwise():
    with pytest.raises(TypeError, match="scaled_tanh"):
        mnn.convert(Wrapped(), "masked")
    mnn.register_elementwise(scaled_tanh, preserves_zero=True)
    model = Wrapped().double().eval()
    imgs = [torch.randn(3, 9, 12, dtype=torch.float64), torch.randn(3, 13, 7, dtype=torch.float64)]
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    with torch.no_grad():
        out, out_mask = mnn.convert(model, "masked")(x, m)
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


# --- patterns found in torchvision and timm models ----------------------------------------------------------

Outputs = collections.namedtuple("Outputs", ["logits", "aux"])


class Patterns(nn.Module):
    """CBAM (max/min over channels, global pools written with the map's own size), SKNet (stack of branches),
    ECA (a Conv1d over the pooled channel vector), SE with expand_as, var/std pooling, metadata reads, and a
    namedtuple output as Inception returns."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch1 = nn.Conv2d(8, 8, 3, padding=1)
        self.branch2 = nn.Conv2d(8, 8, 1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        spatial = torch.max(x, 1, keepdim=True)[0] - x.min(dim=1, keepdim=True).values
        pooled = F.avg_pool2d(x, x.shape[2:]) + F.max_pool2d(x, (x.size(2), x.size(3)))
        spread = x.var((2, 3), keepdim=True) + torch.std(x, dim=(2, 3), keepdim=True, unbiased=False)
        selected = torch.stack([self.branch1(x), self.branch2(x)], dim=1).sum(1)
        eca = self.eca(x.mean((2, 3)).view(x.shape[0], 1, -1)).view(x.shape[0], -1, 1, 1).sigmoid()
        gate = torch.zeros(1, dtype=x.dtype, device=x.device) + eca
        y = selected * torch.sigmoid(pooled + spread) * gate.expand_as(selected) + spatial
        return Outputs(self.head(y.mean((2, 3))), torch.max(y, torch.zeros_like(y)))


def test_patterns_from_real_model_zoos_are_per_image():
    model = Patterns().double().eval()
    imgs = [torch.randn(3, 9, 10, dtype=torch.float64), torch.randn(3, 5, 7, dtype=torch.float64)]
    masked = mnn.convert(model, "masked")
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan")))
    with torch.no_grad():
        out, out_mask = masked(x, m)
        assert type(out) is Outputs and type(out_mask) is Outputs
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


class Chain(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(4, 4, 1) for _ in range(depth))

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + torch.relu(block(x))
        return x


def test_a_deep_converted_model_saves_and_loads_whole():
    masked = mnn.convert(Chain(80), "masked")
    buffer = io.BytesIO()
    torch.save(masked, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x, m = pad_batch([torch.randn(3, 9, 10), torch.randn(3, 5, 7)])
    with torch.no_grad():
        assert torch.equal(loaded(x, m)[0], masked(x, m)[0])
    assert str(loaded.graph) == str(masked.graph)


class Inner(nn.Module):
    def forward(self, x):
        return x if x.mean() > 0 else -x


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.body = nn.Sequential(nn.ReLU(), Inner())

    def forward(self, x):
        return self.body(self.conv(x))


def test_untraceable_model_error_names_the_module_that_failed():
    with pytest.raises(TypeError, match=r"cannot trace Outer with torch\.fx in module 'body\.1' \(Inner\)"):
        mnn.convert(Outer(), "masked", capture="fx")
    with pytest.raises(TypeError, match=r"torch\.export .*torch\.fx: cannot trace Outer with torch\.fx in module "
                                        r"'body\.1' \(Inner\)"):
        mnn.convert(Outer(), "masked", example=torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("op,match", [
    (lambda y: y - y.mean(0, keepdim=True), "over the batch dim"),
    (lambda y: y.var(0, keepdim=True), "over the batch dim"),
    (lambda y: y[0], "on the batch dim"),
    (lambda y: y.chunk(2, dim=-1)[0], "cuts the padded canvas"),
])
def test_ops_that_mix_samples_or_cut_the_canvas_are_refused_when_they_run(op, match):
    masked = mnn.convert(Head(op), "masked")
    x, m = pad_batch([torch.randn(3, 9, 10), torch.randn(3, 5, 7)])
    with pytest.raises(ValueError, match=match):
        masked(x, m)


@pytest.mark.parametrize("op", [
    lambda y: torch.sigmoid(y).max(dim=1, keepdim=True)[0].expand(-1, 4, -1, -1),  # a dirty value's channel max
    lambda y: (y.sigmoid_(), y)[1],  # in place: y itself is dirty now
    lambda y: y * torch.ones_like(y).sum((2, 3), keepdim=True),  # ones_like carries the canvas's mask
    lambda y: y * F.adaptive_avg_pool2d(y, (None, 1)),  # pools the width only
])
def test_subtle_ops_stay_per_image(op):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.after = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.after(op(self.conv(x)))

    model = Net().double().eval()
    imgs = [torch.randn(3, 9, 10, dtype=torch.float64), torch.randn(3, 5, 7, dtype=torch.float64)]
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan")))
    with torch.no_grad():
        out, out_mask = mnn.convert(model, "masked")(x, m)
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, guide):
        return self.conv(x) + guide


def test_a_second_required_input_is_keyword_only_and_unmasked():
    masked = mnn.convert(TwoInputs(), "masked")
    x, m = pad_batch([torch.randn(3, 9, 10), torch.randn(3, 5, 7)])
    out, out_mask = masked(x, m, guide=torch.zeros(1, 3, 1, 1))
    assert out.shape == x.shape and out_mask.shape == m.shape


def test_convert_leaves_the_global_random_stream_alone():
    model, sequential = build("resnet_basic"), nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = torch.random.get_rng_state()
    for kind in ("masked", "partial", "plain"):
        mnn.convert(model, kind)
        mnn.convert(sequential, kind)
    assert torch.equal(state, torch.random.get_rng_state())
