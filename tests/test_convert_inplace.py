"""``convert(model)`` returns a copy; ``convert(model, inplace=True)`` shares the plain model's own parameters and
buffers (the same tensor objects), so that an optimizer built before converting trains the converted model.

References are computed independently: the same training step taken by an unconverted twin (a deepcopy of the
plain model, run image by image on the valid region, where the masked model equals the plain one exactly), and
PyTorch's own parameter bookkeeping (``named_parameters``/``named_buffers``)."""
import copy
import itertools

import pytest
import torch
from torch import nn

import masked_torch.nn as mnn
from masked_torch.utils import pad_batch

KINDS = [("masked", {}), ("partial", {"update_mask": False, "multichannel": True}), ("plain", {})]


class Net(nn.Module):
    """A traced model (residual add, PReLU with a weight, batch norm, linear head)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = x + self.conv2(x)
        return self.head(x.mean((2, 3)))


def sequential():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(8),
                         nn.Sequential(nn.Conv2d(8, 4, 3, padding=1)))


MODELS = {"graph": Net, "sequential": sequential, "layer": lambda: nn.Conv2d(3, 4, 3, padding=1)}


def tensors(module):
    """Every parameter and buffer by its state_dict name (the objects themselves)."""
    return dict(itertools.chain(module.named_parameters(), module.named_buffers()))


def batch():
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 9, 12, generator=gen), torch.randn(3, 12, 7, generator=gen)]
    return images, *pad_batch(images)


@pytest.mark.parametrize("kind,options", KINDS)
@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_inplace_shares_every_parameter_and_buffer_and_the_default_copies(make, kind, options):
    torch.manual_seed(0)
    model = make()
    before = {name: type(m) for name, m in model.named_modules()}
    shared = mnn.convert(model, kind, inplace=True, **options)
    copied = mnn.convert(model, kind, **options)
    plain = tensors(model)
    assert plain and set(tensors(shared)) == set(plain) == set(tensors(copied))
    for name, tensor in tensors(shared).items():
        assert tensor is plain[name], name
    for name, tensor in tensors(copied).items():
        assert tensor is not plain[name] and torch.equal(tensor, plain[name]), name
    # the plain model's own tree is left as it was (its modules, its forward)
    assert {name: type(m) for name, m in model.named_modules()} == before
    assert not any(isinstance(m, mnn.MaskedModule) for m in model.modules())


def test_a_copy_is_not_trained_by_an_optimizer_built_before_converting():
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masked = mnn.convert(model)                       # the default: a copy
    assert masked.conv1.weight is not model.conv1.weight
    start = {k: v.detach().clone() for k, v in masked.named_parameters()}
    images, x, mask = batch()
    logits, _ = masked(x, mask)
    logits.square().sum().backward()
    optimizer.step()
    for name, param in masked.named_parameters():
        assert torch.equal(param, start[name]), f"{name} moved: the optimizer holds the plain model's tensors"
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("make", [Net, sequential], ids=["graph", "sequential"])
def test_an_optimizer_built_before_an_inplace_convert_trains_the_converted_model(make):
    torch.manual_seed(0)
    model = make().double()
    twin = copy.deepcopy(model)                       # the reference: trained image by image, never converted
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masked = mnn.convert(model, inplace=True).eval()
    reference = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    twin.eval()
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    images, x, mask = batch()
    for _ in range(2):
        optimizer.zero_grad()
        out, out_mask = masked(x.double(), mask)
        out = out * out_mask if out.dim() > 2 else out   # only the valid positions count
        out.square().sum().backward()
        optimizer.step()
        reference.zero_grad()
        sum(twin(image.double()[None]).square().sum() for image in images).backward()
        reference.step()
    for (name, param), (_, want) in zip(model.named_parameters(), twin.named_parameters()):
        assert not torch.equal(param, start[name]), name
        torch.testing.assert_close(param, want, rtol=1e-10, atol=1e-12, msg=name)
    # the converted model holds these very tensors: both models give the trained twin's output
    torch.testing.assert_close(masked(images[0].double()[None])[0], twin(images[0].double()[None]),
                               rtol=1e-10, atol=1e-12)


def test_running_statistics_are_shared_and_training_mode_is_each_models_own():
    torch.manual_seed(0)
    model = Net().eval()
    masked = mnn.convert(model, inplace=True)
    masked.train()
    assert not model.training and not model.bn1.training, "train() on the converted model left the plain one"
    images, x, mask = batch()
    masked(x, mask)
    assert int(model.bn1.num_batches_tracked) == 1
    assert not torch.equal(model.bn1.running_mean, torch.zeros(8))
    # the same update the plain batch norm makes from the valid positions of the batch
    reference = nn.BatchNorm2d(8).train()
    with torch.no_grad():
        feats = model.conv1(x)
    valid = feats.permute(1, 0, 2, 3)[:, mask[:, 0].bool()]      # (channels, valid positions of the batch)
    reference(valid[None, :, :, None])
    # both sum the same few hundred float32 values in another order: rounding of sqrt(n) * 2**-24 ~ 1e-6 relative
    torch.testing.assert_close(model.bn1.running_mean, reference.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn1.running_var, reference.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("inplace", [False, True])
def test_state_dict_loads_strict_both_ways(inplace):
    torch.manual_seed(0)
    model = Net()
    masked = mnn.convert(model, inplace=inplace)
    trained = Net()                                    # other values under the same keys
    masked.load_state_dict(trained.state_dict(), strict=True)
    for name, tensor in masked.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[name]), name
    # into the plain model: a new one, and the original (where inplace shares, it has them already)
    fresh = Net()
    fresh.load_state_dict(masked.state_dict(), strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.state_dict().items())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.state_dict().items()) == inplace


def test_deepcopy_of_a_shared_conversion():
    torch.manual_seed(0)
    model = Net().eval()
    masked = mnn.convert(model, inplace=True)
    alone = copy.deepcopy(masked)                      # independent of the plain model
    for name, tensor in tensors(alone).items():
        assert tensor is not tensors(model)[name] and torch.equal(tensor, tensors(model)[name]), name
    images, x, mask = batch()
    torch.testing.assert_close(alone(x, mask)[0], masked(x, mask)[0], rtol=0, atol=0)
    model2, masked2 = copy.deepcopy((model, masked))   # copied together: still sharing with each other
    for name, tensor in tensors(masked2).items():
        assert tensor is tensors(model2)[name] and tensor is not tensors(model)[name], name
    with torch.no_grad():
        model2.conv1.weight.zero_()
    assert torch.equal(masked2.conv1.weight, torch.zeros_like(model.conv1.weight))
    assert not torch.equal(masked.conv1.weight, masked2.conv1.weight)


def test_moving_after_converting_keeps_parameters_but_not_buffers_shared():
    """What the docstring says about .to(): PyTorch changes param.data in place, but replaces buffers."""
    torch.manual_seed(0)
    model = Net()
    masked = mnn.convert(model, inplace=True)
    model.double()
    assert masked.conv1.weight is model.conv1.weight and masked.conv1.weight.dtype == torch.float64
    assert masked.bn1.running_mean is not model.bn1.running_mean
    assert masked.bn1.running_mean.dtype == torch.float32


def test_converting_a_masked_module_in_place_shares_it():
    layer = mnn.MaskedConv2d(3, 4, 3, padding=1)
    assert mnn.convert(layer, inplace=True).weight is layer.weight
    assert mnn.convert(layer).weight is not layer.weight


def test_inplace_must_be_a_bool():
    with pytest.raises(TypeError, match="inplace must be True or False"):
        mnn.convert(Net(), inplace="yes")
