"""The training experiment's language model (``train --data stdlib``): the documents are the standard library's
functions, the same on every run; the byte model is causal and converts exactly; every kind learns; no kind's
next-byte predictions depend on the batch in eval mode (right padding, causal convolutions); a stopped run resumes
to the same frames; the command line refuses what does not fit in one line."""
import ast
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from masked_torch.analysis.cli import main
from masked_torch.analysis.plot_train import sensitivity_summary
from masked_torch.analysis.stacks import build_variants
from masked_torch.analysis.train_loop import FRAMES, TrainSettings, final_path, run_training, write_training
from masked_torch.analysis.train_measure import sensitivity
from masked_torch.analysis.train_model import ByteLM, build_classifier
from masked_torch.analysis.train_text import (IGNORE, Documents, file_documents, heldout_documents, stdlib_documents,
                                              stdlib_files, stdlib_root, unigram_bits)
from test_train import assert_stopped_run_resumes
from test_train_distributed import assert_two_ranks_train_in_step

ROOT = Path(__file__).resolve().parents[1]

#: float64 unit roundoff is 1.1e-16. A logit of the byte model is a sum of at most a few hundred products per layer
#: (a 1x1 conv over 32 channels, a causal window of 3 x 32 inputs; the one-hot embedding picks one weight), through
#: at most ten layers, with values below ~1e2: a different evaluation order (another canvas length, another conv
#: algorithm) moves it by at most ~1e2 * 10 * 300 u ~ 3e-11 (Higham's gamma_n). 1e-9 leaves a margin of 30; a
#: leak of the padding into a valid position is of the order of the activations (1e-3 and up).
FLOAT64_LOGIT_TOL = 1e-9

# A tiny run: short documents, a narrow model; seconds on one CPU thread.
TINY = TrainSettings(data="stdlib", model="bytelm", num_docs=32, max_bytes=160, width=8, depth=2, seeds=(0,),
                     epochs=3, batch_size=4, lr=0.05, probe_images=4, sensitivity_every=1)


@pytest.fixture(scope="module")
def docs():
    return stdlib_documents(60, max_bytes=256)


# ------------------------------------------------------------------------------------------------ the documents
def test_documents_are_the_same_on_every_run_and_their_lengths_vary(docs):
    again = stdlib_documents(60, max_bytes=256)
    assert again.names == docs.names and all(torch.equal(a, b) for a, b in zip(again.docs, docs.docs))
    sizes = np.array(docs.sizes)
    assert sizes.min() >= 32 and sizes.max() <= 256
    assert sizes.max() >= 4 * sizes.min() and len(set(sizes.tolist())) > 40  # widely different lengths
    assert len({n.split(":")[0] for n in docs.names}) >= 60 // 4  # at most 4 functions per file
    assert len(set(docs.names)) == 60
    for i in range(len(docs)):
        assert docs.text(i).startswith(("def ", "async def ")), docs.names[i]


def test_documents_do_not_depend_on_the_process_hash_seed(docs):
    """Another interpreter with another string-hash seed finds the same documents (the choice and the split use
    CRC-32 of the names, never Python's hash)."""
    code = ("from masked_torch.analysis.train_text import stdlib_documents as s; d = s(60, max_bytes=256); "
            "import hashlib; print(hashlib.sha256(b''.join(bytes(x.tolist()) for x in d.docs)).hexdigest(), "
            "hashlib.sha256('|'.join(d.names).encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    import hashlib

    mine = (hashlib.sha256(b"".join(bytes(x.tolist()) for x in docs.docs)).hexdigest(),
            hashlib.sha256("|".join(docs.names).encode()).hexdigest())
    assert out.stdout.split() == list(mine)


def test_a_document_is_its_function_cut_to_whole_lines():
    """Against ast.get_source_segment(padded=True) + textwrap.dedent on a real file: every function, whole where it
    fits (and then it parses as a function definition), else its whole lines within max_bytes."""
    root = stdlib_root()
    path = next(p for p in stdlib_files(root) if p == "textwrap.py")
    source = (root / path).read_text(encoding="utf-8")
    tree = ast.parse(source)
    reference = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            reference.setdefault(node.name, []).append(
                textwrap.dedent(ast.get_source_segment(source, node, padded=True)).encode("utf-8"))
    found = file_documents(source, path, 1, 300)
    assert len(found) == sum(len(v) for v in reference.values())
    for name, data in found:
        whole = next(r for r in reference[name.split(":")[1].split("#")[0].rsplit(".", 1)[-1]]
                     if r.startswith(data[:40]))
        if len(whole) <= 300:
            assert data == whole
            assert isinstance(ast.parse(data.decode()).body[0], (ast.FunctionDef, ast.AsyncFunctionDef))
        else:  # its whole lines within 300 bytes: the next line would not fit
            next_line = whole[len(data):].split(b"\n", 1)[0] + b"\n"
            assert whole.startswith(data) and data.endswith(b"\n") and len(data) + len(next_line) > 300 >= len(data)


def test_the_held_out_split_is_by_name_not_position(docs):
    train, held = heldout_documents(docs.names, 0.25)
    assert len(held) == 15 and sorted(train + held) == list(range(60))
    order = np.random.default_rng(0).permutation(60)
    shuffled = [docs.names[i] for i in order]
    _, held2 = heldout_documents(shuffled, 0.25)
    assert {shuffled[i] for i in held2} == {docs.names[i] for i in held}


def test_a_batch_is_one_hot_padded_on_the_right_with_next_byte_targets(docs):
    index = [3, 0, 7]
    x, mask, target = docs.batch(index, 1, torch.float64)
    lengths = [docs.sizes[i] for i in index]
    L = max(lengths)
    assert x.shape == (3, 256, L) and mask.shape == (3, 1, L) and target.shape == (3, L)
    for n, i in enumerate(index):
        d = docs.docs[i].long()
        m = lengths[n]
        assert torch.equal(x[n, :, :m], F.one_hot(d, 256).T.double()) and (x[n, :, m:] == 0).all()
        assert (mask[n, 0, :m] == 1).all() and (mask[n, 0, m:] == 0).all()
        assert torch.equal(target[n, :m - 1], d[1:]) and (target[n, m - 1:] == IGNORE).all()


def test_the_unigram_baseline_is_the_cross_entropy_of_add_one_byte_frequencies():
    def doc(text):
        return torch.frombuffer(bytearray(text), dtype=torch.uint8)

    train = Documents(["a", "b"], [doc(b"aab"), doc(b"ba")])
    held = Documents(["c"], [doc(b"xab")])  # predicted: 'a', 'b'
    # counts +1 over 256 values: a 3+1, b 2+1, others 1: total 5 + 256
    expected = -(math.log2(4 / 261) + math.log2(3 / 261)) / 2
    assert unigram_bits(train, held) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------------ the model
def _randomise_norms(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=m.running_var.dtype) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g, dtype=m.weight.dtype))
    return model


def test_the_byte_model_is_causal(docs):
    model = _randomise_norms(ByteLM(width=8, depth=3).double()).eval()
    x, _, _ = docs.batch([0], 1, torch.float64)
    t = 40
    changed = x.clone()
    changed[0, :, t:] = torch.roll(changed[0, :, t:], 1, dims=0)  # every byte from t on replaced
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert (a[..., :t] - b[..., :t]).abs().max() <= FLOAT64_LOGIT_TOL  # outputs before t see no byte from t on
    assert (a[..., t] - b[..., t]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["conv", "pconv", "mconv"])
def test_the_converted_byte_model_gives_each_sequence_what_the_plain_model_gives_it_alone(docs, kind):
    """Every kind in eval mode, float64, on a padded batch: at every valid position, the plain model's logits on
    the sequence alone (the causal F.pad on the left is part of each sequence's computation)."""
    plain = _randomise_norms(build_classifier("bytelm", 256, width=8, depth=3, seed=1).double()).eval()
    model = build_variants(plain, (kind,))[kind].eval()
    index = list(range(8))
    x, mask, _ = docs.batch(index, 1, torch.float64)
    with torch.no_grad():
        batched, out_mask = model(x, mask)
        assert torch.equal(out_mask, mask)
        for n, i in enumerate(index):
            alone = plain(docs.batch([i], 1, torch.float64)[0])[0]
            m = docs.sizes[i]
            assert (batched[n, :, :m] - alone).abs().max() <= FLOAT64_LOGIT_TOL, (kind, n)


def test_the_sensitivity_check_finds_a_model_that_reads_the_padding(docs):
    """The measurement can fail: two non-causal (centred, 5 wide) convs with a bias: in a batch the first fills the
    padding after a sequence with relu(bias + ...), which the second reads two positions on (alone it reads its own
    zero padding there), so the prediction from a sequence's second-last byte changes with the batch."""
    leaky = nn.Sequential(nn.Conv1d(256, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 8, 5, padding=2),
                          nn.Conv1d(8, 256, 1)).double()
    nn.init.ones_(leaky[0].bias)
    model = build_variants(leaky, ("conv",))["conv"]
    sens = sensitivity(model, docs.subset(range(12)), 4, 1, 1, torch.float64, seed=0, epoch=0)
    assert set(sens.columns) >= {"document", "positions", "changed", "correct_alone", "correct_batched",
                                 "max_logit_change", "pad_fraction"}
    padded = sens[sens["pad_fraction"] > 0]
    assert padded["max_logit_change"].min() > 1e3 * FLOAT64_LOGIT_TOL
    assert (sens.loc[sens["pad_fraction"] == 0, "max_logit_change"] <= FLOAT64_LOGIT_TOL).all()


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def float64_run(tmp_path_factory):
    return run_training(TINY.replace(dtype="float64"), tmp_path_factory.mktemp("lm64"), progress=False)


def test_every_kind_learns_below_uniform_and_the_loss_falls(float64_run):
    curves = float64_run.frames["curves"]
    assert {"train_bpb", "heldout_bpb"} <= set(curves)
    for kind in ("conv", "pconv", "mconv"):
        c = curves[curves["stack"] == kind].set_index("epoch")
        assert c.loc[3, "train_bpb"] < c.loc[2, "train_bpb"] < c.loc[1, "train_bpb"], c["train_bpb"].tolist()
        assert c.loc[0, "heldout_bpb"] > 7.5 and c.loc[3, "heldout_bpb"] < 6, c["heldout_bpb"].tolist()
        assert c.loc[3, "heldout_acc"] > 0.1  # chance: 1/256
        np.testing.assert_allclose(c["heldout_bpb"], c["heldout_loss"] / math.log(2), rtol=1e-12)
    assert 3 < float64_run.extra["unigram_bpb"] < 8


def test_no_kind_depends_on_the_batch_in_eval_mode_in_float64(float64_run):
    """pconv and mconv: exactly (within float64 rounding). conv too: with right padding and causal convolutions a
    valid position never sees the padding, and in eval mode BatchNorm is a per-position affine map."""
    sens = float64_run.frames["sensitivity"]
    assert set(sens["epoch"]) == {0, 1, 2, 3} and set(sens["batching"]) == {1, 2}
    assert (sens["pad_fraction"] > 0).mean() > 0.5  # most documents were padded
    for kind in ("conv", "pconv", "mconv"):
        part = sens[sens["stack"] == kind]
        assert len(part) == 4 * 2 * float64_run.num_heldout
        assert (part["changed"] == 0).all() and (part["correct_alone"] == part["correct_batched"]).all()
        assert part["max_logit_change"].max() <= FLOAT64_LOGIT_TOL, (kind, part["max_logit_change"].max())
    summary = sensitivity_summary(sens)
    assert (summary["changed"] == 0).all() and (summary["acc_alone"] == summary["acc_batched"]).all()


def test_the_kinds_differ_in_training_only_through_batchnorms_batch_statistics(float64_run):
    """pconv and mconv train the same model (a partial conv's every window is whole: the causal zeros are part of
    the sequence); conv's BatchNorm takes its batch statistics over the padding too, so it trains differently."""
    curves = float64_run.frames["curves"].set_index(["stack", "epoch"])
    for epoch in (1, 2, 3):
        p, m, c = (curves.loc[(k, epoch), "train_loss"] for k in ("pconv", "mconv", "conv"))
        assert abs(p - m) <= 1e-9 * abs(m)
        assert abs(c - m) > 1e-6 * abs(m)
    assert (curves.xs(0, level="epoch")["heldout_loss"].max() - curves.xs(0, level="epoch")["heldout_loss"].min()
            <= FLOAT64_LOGIT_TOL)  # the same model before training


def test_a_stopped_run_resumes_to_the_same_frames(tmp_path):
    assert_stopped_run_resumes(TINY.replace(seeds=(0, 1), epochs=2, sensitivity_every=0), tmp_path, (1, 1))


def test_two_ranks_train_the_language_model_in_step(tmp_path):
    """Each rank trains on its rows of every padded batch (its loss scaled by the whole batch's number of
    predicted bytes), the two stay in step, and rank 0 alone writes."""
    assert_two_ranks_train_in_step(TINY.replace(epochs=1, sensitivity_every=0), 256, tmp_path)


def test_outputs_are_written_with_figures_and_the_baseline(tmp_path):
    from masked_torch.analysis.files import read_settings

    result = run_training(TINY.replace(epochs=1), tmp_path, progress=False)
    written = write_training(result, tmp_path)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    assert names == sorted([*FRAMES.values(), "figures/train_curves.png", "figures/train_stats.png",
                            "figures/train_sensitivity.png"])
    meta = read_settings(tmp_path / FRAMES["curves"])
    assert meta["unigram_bpb"] == result.extra["unigram_bpb"] and meta["settings"]["data"] == "stdlib"
    stats = pd.read_parquet(tmp_path / FRAMES["stats"])
    assert "out" not in set(stats["layer"]) and {"embed", "blocks.0.conv", "blocks.1.relu"} <= set(stats["layer"])
    model = build_classifier("bytelm", 256, width=8, depth=2, weights=final_path(tmp_path, "mconv", 0))
    assert isinstance(model, ByteLM)


# ------------------------------------------------------------------------------------------------ command line
@pytest.mark.parametrize("flags, message", [
    (["--data", "stdlib", "--model", "small"], "--data stdlib trains the byte language model"),
    (["--model", "bytelm"], "--model bytelm is the language model of --data stdlib"),
    (["--data", "stdlib", "--min-side", "30"], "--min-side is for images"),
    (["--data", "stdlib", "--num-images", "30"], "--num-images is for images"),
    (["--num-docs", "30"], "--num-docs is for --data stdlib"),
    (["--data", "stdlib", "--min-bytes", "600"], "--min-bytes 600 is larger than --max-bytes 512"),
    (["--data", "stdlib", "--min-bytes", "1"], "--min-bytes must be"),
])
def test_the_cli_refuses_what_does_not_fit_the_language_model_in_one_line(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["train", *flags, "--out", str(out), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_the_cli_trains_the_language_model(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--data", "stdlib", "--num-docs", "12", "--max-bytes", "96", "--width", "4", "--depth", "1",
                 "--seeds", "0", "--epochs", "1", "--sensitivity-every", "0", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "held-out documents of Python" in text and "unigram baseline" in text
    assert all((out / f).exists() for f in FRAMES.values())
