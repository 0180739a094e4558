"""The models of tests/fx_defeating.py: each runs eagerly on every size its constraints allow, and torch.fx
fails on each as its ``Pattern.fx`` says (raises, traces a graph that crashes, traces a graph that silently
computes something else, or traces faithfully)."""
import math

import pytest
import torch
import torch.fx
from torch import nn

from fx_defeating import (PATTERNS, AttentionGate, ClassifierOutput, JitUpAdd, JitUpCat, SegOutput, build)

NAMES = list(PATTERNS)
CHANNELS = 3

# what each model returns for a (N, 3, H, W) input: "same" (N, classes, H, W) logits, "half" the stride-2
# grid (N, classes, ceil(H / 2), ceil(W / 2)), "classes" (N, classes) logits
OUTPUT = {"shape_assert": "same", "channel_check": "classes", "shape_iteration": "same", "int_size": "half",
          "jit_isinstance_cat": "same", "jit_isinstance_add": "same", "isinstance_gate": "same",
          "dataclass_output": "same", "model_output": "classes", "psp": "same", "fpn": "half"}


def tensors(out):
    """The tensors of an output: a tensor, a dict (ModelOutput) or a dataclass, in field order."""
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, SegOutput):
        return [out.logits, out.features]
    return [out]


def image(size, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, CHANNELS, *size, generator=g, dtype=torch.float64)


def test_patterns_cover_the_issue_and_their_sizes_obey_the_constraints():
    assert set(OUTPUT) == set(PATTERNS)
    assert {p.fx for p in PATTERNS.values()} == {"raises", "crashes", "differs", "traces"}
    for name, p in PATTERNS.items():
        assert len(set(p.sizes)) == 3, name
        assert p.example[1] == CHANNELS and p.example[0] >= 2, name
        for size in p.sizes + [p.example[2:]]:
            assert all(s % p.multiple == 0 for s in size), (name, size)
        if p.multiple == 1:
            assert any(s % 2 for size in p.sizes for s in size), f"{name}: an odd side among the sizes"


@pytest.mark.parametrize("name", NAMES)
def test_runs_eagerly_on_every_allowed_size(name):
    p = PATTERNS[name]
    model = build(name)
    classes = model.classifier.out_features if OUTPUT[name] == "classes" else None
    with torch.no_grad():
        for k, size in enumerate(p.sizes + [p.example[2:]]):
            out = model(image(size, seed=k, batch=2))
            logits = tensors(out)[0]
            assert bool(torch.isfinite(logits).all())
            h, w = size
            if OUTPUT[name] == "same":
                assert logits.shape[0] == 2 and logits.shape[2:] == (h, w), (name, size, logits.shape)
            elif OUTPUT[name] == "half":
                assert logits.shape[0] == 2 and logits.shape[2:] == (math.ceil(h / 2), math.ceil(w / 2))
            else:
                assert logits.shape == (2, classes)
            # a batch is its images alone (eval mode): no cross-sample coupling; float64 rounding (unit
            # roundoff 1.1e-16) over ~10 layers of sums of < 1000 products stays far below 1e-12
            alone = tensors(model(image(size, seed=k, batch=2)[1:]))[0]
            torch.testing.assert_close(logits[1:], alone, rtol=1e-12, atol=1e-12)


def test_the_shape_assertion_and_the_channel_check_refuse_bad_input_eagerly():
    with pytest.raises(ValueError, match="divisible by 8"):
        build("shape_assert")(image((37, 48)))
    with pytest.raises(ValueError, match="expected 3, got 4"):
        build("channel_check")(torch.randn(1, 4, 20, 20, dtype=torch.float64))


@pytest.mark.parametrize("name", [n for n in NAMES if PATTERNS[n].fx == "raises"])
def test_fx_cannot_trace(name):
    with pytest.raises((torch.fx.proxy.TraceError, TypeError)):
        torch.fx.symbolic_trace(build(name))


def test_fx_trace_of_the_jit_isinstance_cat_decoder_crashes_at_run_time():
    """fx takes ``torch.jit.isinstance(proxy, Tensor)`` as False: the graph's decoder convs get the upsampled
    map without the skip's channels."""
    model = build("jit_isinstance_cat")
    traced = torch.fx.symbolic_trace(model)
    assert not any(n.target is torch.cat for n in traced.graph.nodes), "the skip's cat was not recorded"
    with pytest.raises(RuntimeError, match="channels"):
        traced(image(PATTERNS["jit_isinstance_cat"].sizes[0]))


def drop_second_input(model: nn.Module, block_type: type) -> list:
    """Hooks that call every ``block_type`` block of ``model`` with None as its second input (the branch fx
    records); returns the handles."""
    def hook(module, args):
        return (args[0], None)
    return [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, block_type)]


@pytest.mark.parametrize("name, block_type", [("jit_isinstance_add", JitUpAdd), ("isinstance_gate", AttentionGate)])
def test_fx_trace_of_the_isinstance_skip_runs_and_silently_computes_the_network_without_it(name, block_type):
    """The traced graph runs, differs from the model, and is exactly the model with every block's optional
    input dropped (the same modules in the same order: bit-identical)."""
    model = build(name)
    traced = torch.fx.symbolic_trace(model)
    x = image(PATTERNS[name].sizes[0])
    with torch.no_grad():
        got, want = traced(x), model(x)
        gap = (got - want).abs().max() / want.abs().max()
        assert gap > 0.01, f"the mis-trace is visible: {float(gap)}"
        handles = drop_second_input(model, block_type)
        without = model(x)
        for h in handles:
            h.remove()
    assert torch.equal(got, without)


def test_fx_trace_of_a_model_output_returns_a_plain_dict():
    """The values are right, the type is lost: no attributes, no ``to_tuple``."""
    model = build("model_output")
    traced = torch.fx.symbolic_trace(model)
    x = image(PATTERNS["model_output"].sizes[0])
    with torch.no_grad():
        got, want = traced(x), model(x)
    assert isinstance(want, ClassifierOutput) and want.logits is want["logits"]
    assert type(got) is dict and not isinstance(got, ClassifierOutput)
    assert list(got) == list(want) == ["logits", "pooler_output"]
    for a, b in zip(got.values(), want.values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", [n for n in NAMES if PATTERNS[n].fx == "traces"])
def test_fx_traces_faithfully(name):
    """Same modules, same order, same kernels: the traced graph's output is bit-identical, also in type."""
    model = build(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        for size in PATTERNS[name].sizes:
            x = image(size)
            got, want = traced(x), model(x)
            assert type(got) is type(want)
            for a, b in zip(tensors(got), tensors(want)):
                assert torch.equal(a, b)


def test_the_isinstance_patterns_really_take_the_skip_eagerly():
    """Eagerly every decoder block receives a tensor skip (the branch fx misses is the one that runs)."""
    seen = []
    for name, block_type in [("jit_isinstance_cat", JitUpCat), ("jit_isinstance_add", JitUpAdd),
                             ("isinstance_gate", AttentionGate)]:
        model = build(name)
        handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(torch.is_tensor(args[1])))
                   for m in model.modules() if isinstance(m, block_type)]
        with torch.no_grad():
            model(image(PATTERNS[name].sizes[1]))
        for h in handles:
            h.remove()
    assert seen == [True] * 6
