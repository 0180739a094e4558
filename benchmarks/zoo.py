"""convert() tried as a new user would, on networks of libraries nobody here wrote.

    PYTHONPATH=. python benchmarks/zoo.py [--capture fx|export|auto] [--example] [--only NAME ...] [--threads 2]
    PYTHONPATH=. python benchmarks/zoo.py --inventory [--only NAME ...]

Networks of segmentation_models_pytorch, MONAI and Hugging Face transformers, with random weights (nothing
downloads: ``encoder_weights=None``, ``pretrained=False``, configs built locally, the hub set offline); a library
that is not installed is skipped with one line. None of these libraries is a dependency of masked_torch.

For each network, in float64 with NaN in the padding, three images of different sizes that obey the network's
size constraints (multiples of its output stride) are padded into one batch:

* ``masked``: ``convert(model, "masked")``; each image's output in the padded batch against the unmodified
  model on that image alone (max relative error over images and output tensors: max |diff| / max |alone|);
  ``exact`` when <= 1e-9 (float64 rounding is ~1e-15 at these depths);
* ``partial``: ``convert(model, "partial", update_mask=False)``; each image's output in the batch against the
  same image padded alone into another canvas (one output-stride larger): padding-invariant when <= 1e-9.

Each is told apart as ``refused`` (convert raised: the reason is the exception's first line), ``refused (1st
call)`` (the capture waits for the first call, as it does without ``example=``, and the converter refused the
model there), ``crash`` (the captured, converted model raised when run), ``differs`` (it ran and gave another
answer: silently wrong), ``exact`` / ``invariant``. ``convert s`` is the time to convert (capture included,
unless the capture waits for the first call); ``1st call s`` the converted model's first call on the padded
batch (a deferred capture and its check included). ``--capture`` is passed to ``convert`` only when given and
the installed ``convert`` accepts it; the ``capture`` column says what the converted model reports in its
``capture`` attribute, or else what was asked. ``--example`` passes ``example=`` (the padded batch with zeros in
the padding) so that the capture happens in ``convert``.

``--inventory`` instead exports each network with ``torch.export`` (non-strict, ``Dim.AUTO`` batch and spatial
dims) and lists the ATen ops of its graph, raw and after ``run_decompositions()``.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import pathlib
import sys
import time
import warnings
from dataclasses import fields, is_dataclass
from typing import Callable, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

import masked_torch.nn as mnn  # noqa: E402
from masked_torch.utils import pad_batch  # noqa: E402


def _tests_zoo():
    """tests/zoo.py, loaded by path (this file is also named zoo)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "tests" / "zoo.py"
    spec = importlib.util.spec_from_file_location("_tests_zoo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


randomize_batchnorm = _tests_zoo().randomize_batchnorm

EXACT = 1e-9


class Net(NamedTuple):
    name: str
    library: str  # the importable module that must be installed
    build: Callable[[], torch.nn.Module]
    multiple: int  # every side a multiple of it
    sizes: list[tuple[int, int]]  # three images (H, W)


# ------------------------------------------------------------------------------------------- networks

def _smp(arch: str, encoder: str, **kw) -> Callable[[], torch.nn.Module]:
    def build():
        import segmentation_models_pytorch as smp
        return getattr(smp, arch)(encoder, encoder_weights=None, in_channels=3, classes=3, **kw)
    return build


def _monai(fn: Callable) -> Callable[[], torch.nn.Module]:
    def build():
        from monai.networks import nets
        return fn(nets)
    return build


def _hf(config: str, model: str, **kw) -> Callable[[], torch.nn.Module]:
    def build():
        import transformers
        return getattr(transformers, model)(getattr(transformers, config)(num_labels=4, **kw))
    return build


_BY32 = [(96, 128), (64, 96), (128, 64)]
_BY16 = [(80, 96), (48, 64), (96, 48)]
_BY8 = [(72, 88), (40, 56), (88, 48)]
_ODD = [(97, 75), (64, 83), (81, 57)]

NETWORKS: list[Net] = [
    Net("smp Unet resnet18", "segmentation_models_pytorch", _smp("Unet", "resnet18"), 32, _BY32),
    Net("smp Unet resnet18, odd sizes", "segmentation_models_pytorch", _smp("Unet", "resnet18"), 1, _ODD),
    Net("smp Unet efficientnet-b0", "segmentation_models_pytorch", _smp("Unet", "efficientnet-b0"), 32, _BY32),
    Net("smp UnetPlusPlus resnet18", "segmentation_models_pytorch", _smp("UnetPlusPlus", "resnet18"), 32, _BY32),
    Net("smp FPN resnet34", "segmentation_models_pytorch", _smp("FPN", "resnet34"), 32, _BY32),
    Net("smp PSPNet resnet18", "segmentation_models_pytorch", _smp("PSPNet", "resnet18"), 32, _BY32),
    Net("smp DeepLabV3 resnet18", "segmentation_models_pytorch", _smp("DeepLabV3", "resnet18"), 32, _BY32),
    Net("smp DeepLabV3Plus resnet18", "segmentation_models_pytorch", _smp("DeepLabV3Plus", "resnet18"), 32, _BY32),
    Net("smp DeepLabV3Plus mobilenet_v2", "segmentation_models_pytorch", _smp("DeepLabV3Plus", "mobilenet_v2"),
        32, _BY32),
    Net("smp Linknet resnet18", "segmentation_models_pytorch", _smp("Linknet", "resnet18"), 32, _BY32),
    Net("smp MAnet resnet18", "segmentation_models_pytorch", _smp("MAnet", "resnet18"), 32, _BY32),
    Net("smp PAN resnet18", "segmentation_models_pytorch", _smp("PAN", "resnet18"), 32,
        [(160, 192), (128, 160), (192, 128)]),
    Net("smp UPerNet resnet18", "segmentation_models_pytorch", _smp("UPerNet", "resnet18"), 32, _BY32),
    Net("smp Segformer mit_b0", "segmentation_models_pytorch", _smp("Segformer", "mit_b0"), 32, _BY32),
    Net("monai BasicUNet", "monai", _monai(lambda n: n.BasicUNet(
        spatial_dims=2, in_channels=3, out_channels=2, features=(8, 8, 16, 32, 64, 8))), 16, _BY16),
    Net("monai UNet", "monai", _monai(lambda n: n.UNet(
        2, 3, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=2)), 8, _BY8),
    Net("monai AttentionUnet", "monai", _monai(lambda n: n.AttentionUnet(
        2, 3, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2))), 8, _BY8),
    Net("monai SegResNet", "monai", _monai(lambda n: n.SegResNet(
        spatial_dims=2, in_channels=3, out_channels=2, init_filters=8)), 8, _BY8),
    Net("monai DynUNet", "monai", _monai(lambda n: n.DynUNet(
        2, 3, 2, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2])), 8, _BY8),
    Net("monai FlexibleUNet resnet18", "monai", _monai(lambda n: n.FlexibleUNet(
        in_channels=3, out_channels=2, backbone="resnet18", pretrained=False, spatial_dims=2)), 32, _BY32),
    Net("monai FlexibleUNet efficientnet-b0", "monai", _monai(lambda n: n.FlexibleUNet(
        in_channels=3, out_channels=2, backbone="efficientnet-b0", pretrained=False, spatial_dims=2)), 32, _BY32),
    Net("monai DenseNet121", "monai", _monai(lambda n: n.DenseNet121(
        spatial_dims=2, in_channels=3, out_channels=4)), 1, _ODD),
    Net("monai ResNet18", "monai", _monai(lambda n: n.resnet18(
        spatial_dims=2, n_input_channels=3, num_classes=4)), 1, _ODD),
    Net("hf ResNet", "transformers", _hf("ResNetConfig", "ResNetForImageClassification", depths=[1, 1, 1, 1],
                                        hidden_sizes=[32, 64, 128, 256], embedding_size=32), 1, _ODD),
    Net("hf ConvNext", "transformers", _hf("ConvNextConfig", "ConvNextForImageClassification",
                                          depths=[1, 1, 2, 1], hidden_sizes=[16, 32, 64, 128]), 1, _ODD),
]


# ------------------------------------------------------------------------------------------- checks

def tensors(out) -> list[torch.Tensor]:
    """The tensors of an output (tensor, tuple/list, dict or ModelOutput, dataclass), in order."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in tensors(v)]
    if is_dataclass(out):
        return [t for f in fields(out) for t in tensors(getattr(out, f.name))]
    return []


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def nan_padded(imgs, multiple, extra=0):
    """Padded batch (canvas one ``extra`` x ``multiple`` larger when asked) with NaN in the padding."""
    if extra:
        big = [torch.zeros(imgs[0].shape[0], *(max(i.shape[d] for i in imgs) + extra * multiple
                                               for d in (1, 2)), dtype=imgs[0].dtype)]
        x, m = pad_batch(list(imgs) + big, multiple, mask_dtype=torch.float64)
        x, m = x[:len(imgs)], m[:len(imgs)]
    else:
        x, m = pad_batch(imgs, multiple, mask_dtype=torch.float64)
    return torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan"))), m


def cut(out, k: int, like) -> list[torch.Tensor]:
    """Sample ``k`` of each output tensor of a padded batch, cut to the shape of ``like``'s (the output of the
    image alone, batch of one)."""
    got, want = tensors(out), tensors(like)
    if len(got) != len(want):
        raise RuntimeError(f"output has {len(got)} tensors, the model alone {len(want)}")
    cuts = []
    for g, w in zip(got, want):
        if g.dim() != w.dim() or any(a < b for a, b in zip(g.shape[1:], w.shape[1:])):
            raise RuntimeError(f"output shape {tuple(g.shape)} cannot hold the image's {tuple(w.shape)}")
        cuts.append(g[(k,) + tuple(slice(0, s) for s in w.shape[1:])])
    return cuts


def rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Max over tensors of max |got - want| / max |want|; inf where ``got`` is not finite."""
    worst = 0.0
    for g, w in zip(got, want):
        if not bool(torch.isfinite(g).all()):
            return float("inf")
        worst = max(worst, float((g - w).abs().max() / w.abs().max().clamp_min(1e-300)))
    return worst


def convert(model, kind, capture, **options):
    kwargs = dict(options)
    if capture is not None:
        kwargs["capture"] = capture
    return mnn.convert(model, kind, **kwargs)


def built(net: Net) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The network (seeded random weights, float64, eval, batch norms with random statistics) and its three
    images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = net.build()
    g = torch.Generator().manual_seed(1)
    imgs = [torch.randn(3, *s, generator=g, dtype=torch.float64) for s in net.sizes]
    return randomize_batchnorm(model, 0).double().eval(), imgs


def check(net: Net, capture: str | None, with_example: bool = False) -> dict:
    row = {"network": net.name, "library": net.library, "capture": capture or CAPTURE_DEFAULT}
    try:
        model, imgs = built(net)
        with torch.no_grad():
            alone = [model(i[None]) for i in imgs]
    except Exception as e:  # noqa: BLE001 -- the network or its sizes, not the converter
        row.update(masked="not run", partial="not run", convert_s=float("nan"),
                   reason=f"the unmodified model fails: {first_line(e)}")
        return row
    x, m = nan_padded(imgs, net.multiple)
    example = {"example": x.nan_to_num(0.0)} if with_example else {}

    t0 = time.perf_counter()
    try:
        masked = convert(model, "masked", capture, **example)
    except Exception as e:  # noqa: BLE001 -- a refusal is a result
        row.update(masked="refused", err=None, convert_s=time.perf_counter() - t0, reason=first_line(e))
    else:
        row["convert_s"] = time.perf_counter() - t0
        deferred = getattr(masked, "capture", "") is None  # captured on the first call
        try:
            with torch.no_grad():
                t1 = time.perf_counter()
                out, _ = masked(x, m)
                row["first_call_s"] = time.perf_counter() - t1
            row["capture"] = getattr(masked, "capture", None) or row["capture"]
            err = max(rel_err(cut(out, k, a), [t[0] for t in tensors(a)]) for k, a in enumerate(alone))
        except Exception as e:  # noqa: BLE001
            row.update(masked=failed(masked, deferred, e), err=None, reason=first_line(e))
            row["capture"] = getattr(masked, "capture", None) or row["capture"]
        else:
            kind_ok = type(out) is type(alone[0]) or isinstance(alone[0], torch.Tensor)
            row.update(masked="exact" if err <= EXACT and kind_ok else "differs", err=err,
                       reason="" if kind_ok else f"output type {type(out).__name__}, alone "
                                                 f"{type(alone[0]).__name__}")

    try:
        partial = convert(model, "partial", capture, update_mask=False, **example)
    except Exception as e:  # noqa: BLE001
        row.update(partial="refused", reason=row.get("reason") or first_line(e))
    else:
        deferred = getattr(partial, "capture", "") is None
        try:
            x2, m2 = nan_padded(imgs, net.multiple, extra=1)
            with torch.no_grad():
                out, _ = partial(x, m)
                out2, _ = partial(x2, m2)
            perr = max(rel_err(cut(out, k, a), cut(out2, k, a)) for k, a in enumerate(alone))
            row["partial"] = "invariant" if perr <= EXACT else f"varies ({perr:.1e})"
        except Exception as e:  # noqa: BLE001
            row.update(partial=failed(partial, deferred, e))
            row["reason"] = row.get("reason") or f"partial: {first_line(e)}"
    return row


def failed(converted, deferred: bool, error: BaseException) -> str:
    """An exception from a converted model's call: ``refused (1st call)`` when the converter refused the model
    there (a capture deferred to that call did not complete, or the converter's own words, ``convert: ...``, as
    when a capture's check sends it to the other front end, which refuses), ``crash`` when the converted model
    itself failed."""
    ours = str(error).startswith("convert:")
    return "refused (1st call)" if ours or (deferred and getattr(converted, "capture", None) is None) else "crash"


CAPTURE_DEFAULT = "fx"


def op_name(target) -> str:
    """``aten.conv2d.default`` for an ATen overload, ``operator.floordiv`` for a SymInt Python op."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return f"{getattr(target, '__module__', '') or ''}.{getattr(target, '__name__', target)}".lstrip(".")


def export_inventory(net: Net) -> dict:
    """``torch.export`` (non-strict, ``Dim.AUTO`` batch and spatial dims) of the network on its padded batch:
    time, the input's captured shape, the ATen ops of the graph (raw and after ``run_decompositions()``),
    and whether the exported program gives the model's output on another canvas (one multiple larger)."""
    from collections import Counter
    from torch.export import Dim, export

    row = {"network": net.name}
    try:
        model, imgs = built(net)
    except Exception as e:  # noqa: BLE001
        return {**row, "result": f"not built: {first_line(e)}"}
    x, _ = pad_batch(imgs, net.multiple)
    auto = Dim.AUTO
    t0 = time.perf_counter()
    try:
        ep = export(model, (x,), dynamic_shapes=({0: auto, 2: auto, 3: auto},), strict=False)
    except Exception as e:  # noqa: BLE001
        return {**row, "result": "fails", "reason": first_line(e), "export_s": time.perf_counter() - t0}
    row["export_s"] = time.perf_counter() - t0
    placeholder = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs)
    row["input"] = tuple(str(d) for d in placeholder.meta["val"].shape)
    row["ranges"] = {str(k): (int(v.lower), str(v.upper)) for k, v in ep.range_constraints.items()}
    row["ops"] = Counter(op_name(n.target) for n in ep.graph.nodes if n.op == "call_function")
    row["ops_decomposed"] = Counter(op_name(n.target) for n in ep.run_decompositions().graph.nodes
                                    if n.op == "call_function")
    x2, _ = pad_batch(imgs + [torch.zeros(3, *(s + net.multiple * (1 + (net.multiple == 1))
                                               for s in x.shape[2:]), dtype=x.dtype)], net.multiple)
    try:
        with torch.no_grad():
            got, want = tensors(ep.module()(x2)), tensors(model(x2))
        err = rel_err(got, want)
        row["result"] = "exact" if err <= EXACT else f"differs ({err:.1e})"
    except Exception as e:  # noqa: BLE001
        row["result"] = "specialised"
        row["reason"] = f"on another canvas {tuple(x2.shape)}: {first_line(e)}"
    return row


def print_inventory(nets: list[Net]) -> None:
    from collections import Counter

    used, used_dec = Counter(), Counter()
    for net in nets:
        r = export_inventory(net)
        ops = r.get("ops", {})
        used.update(set(ops))
        used_dec.update(set(r.get("ops_decomposed", {})))
        print(f"{net.name}: {r['result']}, export {r.get('export_s', float('nan')):.1f} s, input "
              f"{r.get('input')}, ranges {r.get('ranges')} {r.get('reason', '')}", flush=True)
        if ops:
            print("    " + " ".join(sorted(ops)))
    print("\nATen ops (raw ep.graph): networks using each")
    for op, k in sorted(used.items()):
        print(f"  {op}: {k}")
    print("\nafter run_decompositions(): networks using each")
    for op, k in sorted(used_dec.items()):
        print(f"  {op}: {k}")


def main(argv=None) -> int:
    global CAPTURE_DEFAULT
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--capture", choices=["fx", "export", "auto"], default=None,
                   help="front end passed to convert (default: convert's own default, 'auto' once it exists)")
    p.add_argument("--only", nargs="*", default=None, help="network names (substrings) to run")
    p.add_argument("--example", action="store_true",
                   help="pass example= (the padded batch, zeros in the padding): capture at conversion, not on the "
                        "first call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inventory", action="store_true",
                   help="instead: torch.export each network (Dim.AUTO) and list the ATen ops of its graph")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.inventory:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print_inventory([n for n in NETWORKS if (not args.only or any(s.lower() in n.name.lower() for s in args.only))
                         and importlib.util.find_spec(n.library) is not None])
        return 0
    accepts = "capture" in inspect.signature(mnn.convert).parameters
    if not accepts:
        if args.capture not in (None, "fx"):
            print(f"zoo.py: the installed masked_torch.nn.convert has no capture argument (fx only); "
                  f"--capture {args.capture} cannot be tried", file=sys.stderr)
            return 2
        capture, CAPTURE_DEFAULT = None, "fx"
        if args.example:
            print("zoo.py: the installed masked_torch.nn.convert has no example argument", file=sys.stderr)
            return 2
    else:
        capture = args.capture
        CAPTURE_DEFAULT = inspect.signature(mnn.convert).parameters["capture"].default
    print(f"torch {torch.__version__}, masked_torch from {pathlib.Path(mnn.__file__).parents[1]}, "
          f"capture={capture or CAPTURE_DEFAULT}, {torch.get_num_threads()} threads")
    rows, t_all = [], time.perf_counter()
    for net in NETWORKS:
        if args.only and not any(s.lower() in net.name.lower() for s in args.only):
            continue
        if importlib.util.find_spec(net.library) is None:
            print(f"skip {net.name}: {net.library} is not installed")
            continue
        t0 = time.perf_counter()
        row = check(net, capture, args.example)
        rows.append(row)
        err = "" if row.get("err") is None else f"{row['err']:.1e}"
        print(f"{time.perf_counter() - t0:6.1f}s  {net.name} [{row['capture']}]: masked {row['masked']} {err} partial "
              f"{row.get('partial')} {row.get('reason', '')}", flush=True)
    print(f"\n{len(rows)} networks in {time.perf_counter() - t_all:.0f} s\n")
    print("| network | library | capture | masked | max rel err | partial | convert s | 1st call s | reason |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        err = "" if r.get("err") is None else f"{r['err']:.1e}"
        print(f"| {r['network']} | {r['library']} | {r['capture']} | {r['masked']} | {err} | {r.get('partial')} | "
              f"{r['convert_s']:.2f} | {r.get('first_call_s', float('nan')):.2f} | {r.get('reason', '')} |")
    counts = {}
    for r in rows:
        counts[r["masked"]] = counts.get(r["masked"], 0) + 1
    print("\nmasked: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
