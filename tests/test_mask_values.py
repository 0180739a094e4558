"""What ``convert`` returns reads its mask as validity: 0/1 (any dtype) or bool; any other value (an 8-bit 0/255
mask, a soft mask, -1, NaN) is refused with one line before any work. Soft masks stay a feature of the layers a
user builds."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import masked_torch.functional as MF
import masked_torch.nn as mnn
from masked_torch.utils import pad_batch
from test_convert_models import images
from zoo import build


def conv_stack():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).double()


FORMS = {
    "graph": lambda: build("resnet_basic"),  # MaskedGraphModule
    "sequential": conv_stack,  # MaskedSequential
    "layer": lambda: nn.Conv2d(3, 4, 3, padding=1).double(),  # a single masked layer
}
NAMES = {"graph": "MaskedResNet", "sequential": "MaskedSequential"}


def batch():
    x, m = pad_batch(images("resnet_basic"), mask_dtype=torch.float64)
    return x, m


def bad_masks(m):
    one = m.clone()
    one[0, 0, 0, 0] = float("nan")
    return {
        "uint8 0/255": (m.to(torch.uint8) * 255, "torch.uint8 with values such as 255"),
        "float 0/255": (m * 255, "torch.float64 with values such as 255.0"),
        "soft 0.5": (m * 0.5, "values such as 0.5"),
        "negative": (-m, "values such as -1.0"),
        "NaN": (one, "torch.float64 with NaN"),
        "int64 2": (m.long() * 2, "torch.int64 with values such as 2"),
    }


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("kind", ["masked", "partial", "plain"])
@pytest.mark.parametrize("which", ["uint8 0/255", "float 0/255", "soft 0.5", "negative", "NaN", "int64 2"])
def test_a_mask_that_is_not_0_1_is_refused_with_one_line(form, kind, which):
    converted = mnn.convert(FORMS[form](), kind)
    x, m = batch()
    bad, found = bad_masks(m)[which]
    name = NAMES.get(form, type(converted).__name__)
    for call in (lambda: converted(x, bad), lambda: converted(x, mask=bad)):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{name}: the mask must be 0/1 or bool (a converted model reads it as validity)")
        assert found in message and "pass mask > 0" in message and "\n" not in message


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("kind", ["masked", "partial"])
def test_bool_and_0_1_masks_of_any_dtype_give_the_same_output(form, kind):
    converted = mnn.convert(FORMS[form](), kind)
    x, m = batch()
    with torch.no_grad():
        ref, ref_mask = converted(x, m)
        for mask in (m.bool(), m.to(torch.uint8), m.float(), m.long(), m.half()):
            out, out_mask = converted(x, mask)
            assert torch.equal(out, ref)
            assert torch.equal(out_mask.to(ref_mask.dtype), ref_mask)


def test_a_user_built_layer_keeps_its_soft_mask():
    """A soft mask is a layer feature: the user-built MaskedConv2d scales by it (its documented rule,
    ``conv(X) * m'`` with ``X`` taken as 0 where ``m`` is 0 and ``m'`` the mask at the window's centre, checked
    against an independent computation), and converting that layer gives a model that refuses it."""
    torch.manual_seed(0)
    conv = mnn.MaskedConv2d(3, 4, 3, padding=1, bias=False).double()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    soft = torch.rand(2, 1, 6, 7, dtype=torch.float64)
    soft[:, :, 4:] = 0
    x[:, :, 4:] = float("nan")
    out, out_mask = conv(x, soft)
    ref = F.conv2d(torch.where(soft != 0, x, 0.0), conv.weight, padding=1) * soft
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(out_mask, soft)
    converted = mnn.convert(conv, "masked")
    with pytest.raises(ValueError, match="the mask must be 0/1 or bool"):
        converted(x, soft)
    assert not conv._forward_pre_hooks, "convert leaves the user's layer as it is"
    assert torch.equal(mnn.MaskedSequential(conv)(x, soft)[0], out), "and a MaskedSequential a user builds too"


def test_the_check_survives_copy_and_pickle():
    converted = mnn.convert(build("resnet_basic"), "masked")
    x, m = batch()
    for model in (copy.deepcopy(converted), pickle.loads(pickle.dumps(converted))):
        with pytest.raises(ValueError, match="the mask must be 0/1 or bool"):
            model(x, m * 255)
        model(x, m)


def test_the_check_is_one_function_that_skips_bool_and_none():
    m = torch.tensor([[0.0, 1.0, 1.0]])
    assert MF.check_binary_mask(m, "f") is m
    assert MF.check_binary_mask(None, "f") is None
    b = torch.tensor([True, False])
    assert MF.check_binary_mask(b, "f") is b
    with pytest.raises(ValueError, match=r"^f: the mask must be 0/1 or bool .* torch.float32 with values such as inf"):
        MF.check_binary_mask(torch.tensor([0.0, float("inf")]), "f")


def test_compiled_converted_model_runs_without_the_check():
    """Under torch.compile the check (a host read of the mask's values) is skipped, so the graph does not break
    on it; eager calls check."""
    converted = mnn.convert(conv_stack(), "masked")
    x, m = batch()
    compiled = torch.compile(converted, backend="aot_eager", fullgraph=True)
    out, out_mask = compiled(x, m)
    ref, ref_mask = converted(x, m)
    assert torch.equal(out, ref) and torch.equal(out_mask, ref_mask)


def test_export_captures_a_converted_model_without_the_check():
    """torch.export (non-strict, as the dynamo ONNX exporter runs it) traces past the check."""
    converted = mnn.convert(conv_stack(), "masked")
    x, m = batch()
    program = torch.export.export(converted, (x, m), strict=False)
    out, out_mask = program.module()(x, m)
    ref, ref_mask = converted(x, m)
    assert torch.equal(out, ref) and torch.equal(out_mask, ref_mask)
