"""Converting what is converted already: ``convert(convert(m, a), b)`` gives exactly ``convert(m, b)``, or is
refused with one line naming the module, both kinds and what to do. Never a mix of kinds."""
import copy

import pytest
import torch
from torch import nn

import masked_torch.nn as mnn
from masked_torch.nn.convert import MaskValueCheck
from masked_torch.utils import pad_batch
from test_convert_models import assert_per_image, garbage_padded, images, structure
from zoo import build

KINDS = ["plain", "masked", "partial"]
IMAGE_SIZES = [(9, 12), (5, 7), (12, 6)]


def sequential():
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1), nn.GELU()),
                          nn.ConvTranspose2d(5, 3, 2, stride=2))
    with torch.no_grad():
        for p in [*model.parameters(), *model.buffers()]:
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
        model[1].running_var.abs_()
    return model.double().eval()


def layer():
    g = torch.Generator().manual_seed(4)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    return conv.double()


FORMS = {"sequential": sequential, "layer": layer}


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randn(3, *s, generator=g, dtype=torch.float64) for s in IMAGE_SIZES]
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    return imgs, x, m


def kinds_of(module):
    """The class of every module below ``module``, by name: what the conversion made of each layer."""
    return [(name, type(m).__name__, getattr(m, "anchor", None), getattr(m, "update_mask", None),
             getattr(m, "input_zeroed", None)) for name, m in module.named_modules()]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("first", KINDS)
@pytest.mark.parametrize("second", KINDS)
def test_layers_converted_again_are_exactly_the_new_kind(form, first, second):
    model = FORMS[form]()
    options = {"update_mask": False} if second == "partial" else {}  # partial convolutions for padding
    again = mnn.convert(mnn.convert(model, first), second, **options)
    direct = mnn.convert(model, second, **options)
    assert kinds_of(again) == kinds_of(direct), "the same layers, options and promises as converting the plain model"
    assert list(again.state_dict()) == list(model.state_dict())
    model.load_state_dict(again.state_dict(), strict=True)
    imgs, x, m = batch()
    nan_x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan")))
    with torch.no_grad():
        out, out_mask = again(nan_x if second != "plain" else x, m)
        ref, ref_mask = direct(nan_x if second != "plain" else x, m)
        assert torch.equal(out, ref) and torch.equal(out_mask, ref_mask)
        if second == "masked":  # each image exactly what the unmodified model gives it alone
            assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))
        elif second == "partial":  # padding-invariant
            assert_per_image(out, out_mask, lambda k: again(*pad_batch([imgs[k]], mask_dtype=torch.float64))[0])
        else:  # the baseline: the layers as they are on the padded batch
            assert torch.equal(out, model(x))


@pytest.mark.parametrize("first", KINDS)
@pytest.mark.parametrize("second", KINDS)
def test_a_converted_graph_model_gives_a_copy_of_its_own_kind_and_refuses_another(first, second):
    model = build("resnet_basic")
    converted = mnn.convert(model, first)
    if first != second:
        with pytest.raises(TypeError) as info:
            mnn.convert(converted, second)
        message = str(info.value)
        assert message.startswith(f"convert: MaskedResNet was converted as kind {first!r}")
        assert f"cannot become kind {second!r} exactly" in message
        assert f"convert(model, {second!r})" in message and "model.load_state_dict(converted.state_dict())" in message
        assert "\n" not in message
        return
    again = mnn.convert(converted, second)
    assert again is not converted and kinds_of(again) == kinds_of(converted)
    x, m = garbage_padded("resnet_basic", images("resnet_basic"))
    if second == "plain":
        x = torch.nan_to_num(x)
    with torch.no_grad():
        out, out_mask = again(x, m)
        ref, ref_mask = mnn.convert(model, second)(x, m)
        assert torch.equal(out, ref) and torch.equal(out_mask, ref_mask)
        if second == "masked":
            imgs = images("resnet_basic")
            assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


def test_partial_options_are_the_new_ones():
    model = sequential()
    again = mnn.convert(mnn.convert(model, "partial"), "partial", update_mask=False, multichannel=True)
    assert kinds_of(again) == kinds_of(mnn.convert(model, "partial", update_mask=False, multichannel=True))
    assert [m.update_mask for m in again.modules() if isinstance(m, mnn.PartialConv2d)] == [False, False]
    graph = mnn.convert(build("resnet_basic"), "partial")
    with pytest.raises(TypeError, match=r"was converted as kind 'partial' with options \{\} and its forward is "
                                         r"rewritten for that, so it cannot become kind 'partial' with options "
                                         r"\{'update_mask': False\} exactly; convert the plain model instead "
                                         r"\(convert\(model, 'partial', update_mask=False\)\)"):
        mnn.convert(graph, "partial", update_mask=False)
    assert mnn.convert(graph, "partial") is not graph


def test_inplace_conversion_again_shares_the_converted_models_tensors():
    masked = mnn.convert(sequential(), "masked")
    partial = mnn.convert(masked, "partial", inplace=True)
    assert partial[0].weight is masked[0].weight and partial[1].running_mean is masked[1].running_mean
    assert isinstance(partial[0], mnn.PartialConv2d) and isinstance(masked[0], mnn.MaskedConv2d)
    plain = mnn.convert(partial, "plain", inplace=True)
    assert plain[4].weight is masked[4].weight and isinstance(plain[4], mnn.Unmasked)


def test_a_layer_taken_out_of_a_converted_model_reads_its_own_padding_again():
    """Inside a converted model a layer may skip zeroing its input (the model did it once); converted on its
    own it must not: NaN in the padding stays out."""
    model = build("resnet_basic")
    masked = mnn.convert(model, "masked")
    assert masked.layer1[0].conv2.input_zeroed
    conv = mnn.convert(masked.layer1[0].conv2, "masked")
    assert not conv.input_zeroed
    g = torch.Generator().manual_seed(5)
    imgs = [torch.randn(8, *s, generator=g, dtype=torch.float64) for s in IMAGE_SIZES]
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan")))
    with torch.no_grad():
        out, out_mask = conv(x, m)
        assert_per_image(out, out_mask, lambda k: model.layer1[0].conv2(imgs[k][None]))


def test_a_user_built_masked_layer_becomes_what_convert_makes_of_its_plain_layer():
    user = mnn.MaskedConv2d(3, 4, 3, padding=1, anchor="centre").double()
    again = mnn.convert(user, "masked")
    assert type(again) is mnn.MaskedConv2d and again.anchor == "end" and again.weight is not user.weight
    assert torch.equal(again.weight, user.weight)
    partial = mnn.convert(user, "partial", update_mask=False)
    assert type(partial) is mnn.PartialConv2d and not partial.update_mask


class PlainWithMasked(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = mnn.convert(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()), "plain")

    def forward(self, x):
        out, _ = self.block(self.stem(x))
        return out


@pytest.mark.parametrize("kind", KINDS)
def test_a_plain_model_that_calls_a_masked_module_itself_is_refused(kind):
    model = PlainWithMasked()
    assert model(torch.randn(1, 3, 5, 5)).shape == (1, 4, 5, 5)
    with pytest.raises(TypeError, match=r"convert: 'block' \(MaskedSequential\) is a masked module inside the plain "
                                        r"model PlainWithMasked.*build PlainWithMasked with the plain layer there"):
        mnn.convert(model, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_a_sequential_holding_masked_layers_of_another_kind_converts_them_all(kind):
    mixed = nn.Sequential(mnn.PartialConv2d(3, 4, 3, padding=1), mnn.Unmasked(nn.ReLU()),
                          mnn.convert(nn.Conv2d(4, 2, 3, padding=1), "masked")).double()
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).double()
    plain.load_state_dict(mixed.state_dict())
    assert kinds_of(mnn.convert(mixed, kind)) == kinds_of(mnn.convert(plain, kind))


def test_masked_layers_without_a_plain_layer():
    seq = mnn.MaskedSequential(mnn.convert(nn.Conv2d(3, 4, 3), "masked"), mnn.MaskedSpatialMean())
    assert isinstance(mnn.convert(seq, "partial")[1], mnn.MaskedSpatialMean)
    with pytest.raises(TypeError, match=r"'1' \(MaskedSpatialMean\) is a masked layer without a plain layer, so it "
                                        r"cannot become kind 'plain' exactly"):
        mnn.convert(seq, "plain")
    lazy = mnn.LazyMaskedConv2d(4, 3)
    with pytest.raises(TypeError, match=r"LazyMaskedConv2d is a 'masked' layer of its own class, so it cannot become "
                                        r"kind 'partial'"):
        mnn.convert(lazy, "partial")


def test_one_mask_value_check_however_often_converted():
    model = sequential()
    twice = mnn.convert(mnn.convert(model, "masked"), "partial")
    hooks = {name: [h for h in m._forward_pre_hooks.values() if isinstance(h, MaskValueCheck)]
             for name, m in twice.named_modules()}
    assert len(hooks.pop("")) == 1 and not any(hooks.values())
    graph = mnn.convert(mnn.convert(build("resnet_basic"), "masked"), "masked")
    assert sum(isinstance(h, MaskValueCheck) for m in graph.modules() for h in m._forward_pre_hooks.values()) == 1
    assert copy.deepcopy(graph)._convert_kind == ("masked", ())
    out, _ = graph(*garbage_padded("resnet_basic", images("resnet_basic")))
    assert all(bool(torch.isfinite(o).all()) for o in structure(out))
