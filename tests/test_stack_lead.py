"""``torch.stack(maps)`` along dim 0, in front of the batch dim, as FPN heads add their maps
(``torch.stack(x).sum(dim=0)`` in segmentation libraries' merge blocks): exact per image where it is reduced
over dim 0 or indexed; refused, naming the node, where dim 0 would be read as the batch."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import masked_torch.nn as mnn
from masked_torch.utils import pad_batch
from test_convert_models import Head, assert_per_image, assert_training_step

FRONTS = ["fx", "export"]


class MergeBlock(nn.Module):
    def __init__(self, policy: str = "add"):
        super().__init__()
        self.policy = policy

    def forward(self, x):
        if self.policy == "add":
            return torch.stack(x).sum(dim=0)
        return torch.cat(x, dim=1)


class TinyFPN(nn.Module):
    """Three levels brought to the finest by nearest upsampling, merged by a stack summed over dim 0, then a
    mean of a stack, an index into one, and a max over one."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.merge = MergeBlock()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a = self.c1(x)
        b = self.c2(a)
        c = self.c3(b)
        y = self.merge([a, F.interpolate(b, scale_factor=2.0, mode="nearest"),
                        F.interpolate(c, scale_factor=4.0, mode="nearest")])
        both = torch.stack([y, torch.sigmoid(y)])
        y = (both * 2).mean(0) + both[1] + torch.stack([y, -y]).amax(0)
        return self.head(F.relu(self.bn(y)))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randn(3, h, w, generator=g, dtype=torch.float64) for h, w in [(8, 12), (16, 8), (12, 16)]]
    x, m = pad_batch(imgs, 4, mask_dtype=torch.float64)
    return imgs, torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan"))), m


def _model():
    torch.manual_seed(0)
    model = TinyFPN().double().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("front", FRONTS)
def test_a_stack_reduced_over_dim_0_is_exact_per_image(front):
    model = _model()
    imgs, x, m = _batch()
    masked = mnn.convert(model, "masked", capture=front)
    with torch.no_grad():
        out, out_mask = masked(x, m)
    assert masked.capture == front
    assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


@pytest.mark.parametrize("front", FRONTS)
def test_partial_is_padding_invariant_and_trains(front):
    model = _model()
    imgs, x, m = _batch()
    partial = mnn.convert(model, "partial", capture=front, update_mask=False)
    with torch.no_grad():
        out, out_mask = partial(x, m)
        for k, img in enumerate(imgs):  # the same image in a larger canvas of its own
            xa, ma = pad_batch([img], 4, mask_dtype=torch.float64)
            xa, ma = F.pad(xa, (0, 4, 0, 8)), F.pad(ma, (0, 4, 0, 8))
            alone = partial(xa, ma)[0]
            h, w = img.shape[1:]
            scale = alone.abs().max()
            assert float((out[k, :, :h, :w] - alone[0, :, :h, :w]).abs().max() / scale) <= 1e-9
    masked = mnn.convert(model, "masked", capture=front).train()
    assert_training_step(masked, x, m)
    plain_keys = set(model.state_dict())
    assert set(masked.state_dict()) == plain_keys
    masked.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(masked.state_dict(), strict=True)


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("op", [
    lambda a: torch.stack([a, a]).permute(1, 0, 2, 3, 4).flatten(1, 2),  # the stack dim moved among channels
    lambda a: torch.stack([a, a]).sum((0, 2)),  # a reduction over dim 0 and more
    lambda a: F.avg_pool3d(torch.stack([a, a]), 1),  # a layer that would read dim 0 as the batch
])
def test_other_uses_of_a_stack_in_front_of_the_batch_are_refused_naming_the_node(op, front):
    _, x, m = _batch()
    model = Head(op).double()
    with pytest.raises(ValueError, match=r"node '.*in front of the batch dim"):
        mnn.convert(model, "masked", capture=front)(x, m)
