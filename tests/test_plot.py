"""masked_torch.analysis.plot: every figure function returns a Figure on small frames (a tiny real run and hand-made ones)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from masked_torch.analysis import plot  # noqa: E402
from masked_torch.analysis.run import Settings, run_experiment  # noqa: E402


def _valid_values(out, mask, k):
    """Image k's values at the positions its output mask keeps, all channels, as float64."""
    valid = (mask[k] != 0).expand_as(out[k])
    return out[k][valid].double()


def model_frames(name, *, n_images=4, max_side=40, batch_size=2, seed=0, **build):
    """A small real run of model ``name``: ``(stats, image_stats, padding, maps)``.

    ``stats``: the recorder's per-channel frame of every stack with the layer table merged in (stack, layer,
    channel, count, mean, var, ..., order, depth, kind, block, channels, stride), as the suite's frame will be;
    ``image_stats``: per (stack, layer, image) the pad fraction of the image's batch canvas and the variance of
    its valid values (all channels) in the batch and alone; ``padding``: per (stack, layer, image) the relative
    error of the image in its batch against the same stack on the image alone (reference "alone"), over the
    positions the alone output keeps; ``maps``: channel-mean maps and masks of the first batch's most padded
    image; all computed here from captured outputs."""
    import torch

    from masked_torch.analysis.data import load_images
    from masked_torch.analysis.models import build_model, build_variants, canvas_multiple, layer_table
    from masked_torch.analysis.recorder import ActivationRecorder
    from masked_torch.utils import pad_batch

    images = load_images("synthetic", num_images=n_images, max_side=max_side, seed=seed, normalize="image")
    model = build_model(name, seed=seed, **build)
    variants = build_variants(model)
    multiple = canvas_multiple(name, build.get("depth", 4))
    table = layer_table(model, torch.zeros(1, 3, 2 * multiple, 2 * multiple))
    layers = list(table["layer"])

    def run(net, x, mask):
        store, handles = {}, []
        modules = dict(net.named_modules())
        for layer in layers:
            handles.append(modules[layer].register_forward_hook(
                lambda mod, args, out, layer=layer: store.__setitem__(layer, out)))
        try:
            net(x, mask)
        finally:
            for h in handles:
                h.remove()
        return store

    recorders = {s: ActivationRecorder(net, compile=False) for s, net in variants.items()}
    rows, errors, maps = [], [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            group = images[start:start + batch_size]
            x, mask = pad_batch([torch.from_numpy(im.pixels) for im in group], multiple=multiple)
            canvas = x.shape[2] * x.shape[3]
            for s, net in variants.items():
                with recorders[s]:
                    batch = run(net, x, mask)
                if start == 0:  # the maps of the first batch's most padded image
                    k = int(np.argmin([im.size[0] * im.size[1] for im in group]))
                    for layer, (out, out_mask) in batch.items():
                        if out.dim() == 4:
                            maps.append(dict(image=group[k].name, stack=s, layer=layer,
                                             map=out[k].mean(0).numpy(), mask=out_mask[k].float().mean(0).numpy(),
                                             h=group[k].size[0], w=group[k].size[1], canvas_h=x.shape[2],
                                             canvas_w=x.shape[3]))
                for k, im in enumerate(group):
                    alone_x, alone_mask = pad_batch([torch.from_numpy(im.pixels)], multiple=multiple)
                    alone = run(net, alone_x, alone_mask)
                    for layer in layers:
                        v = _valid_values(*batch[layer], k)
                        a = _valid_values(*alone[layer], 0)
                        rows.append(dict(stack=s, layer=layer, image=im.name,
                                         pad_fraction=1 - im.size[0] * im.size[1] / canvas,
                                         mean=float(v.mean()), var=float(v.var(unbiased=False)),
                                         var_alone=float(a.var(unbiased=False))))
                        out, out_mask = alone[layer]
                        h, w = out.shape[2:]
                        got = batch[layer][0][k:k + 1, :, :h, :w]
                        valid = (out_mask != 0).expand_as(out)
                        diff = torch.linalg.vector_norm((got - out)[valid].double())
                        ref = torch.linalg.vector_norm(out[valid].double())
                        errors.append(dict(stack=s, reference="alone", layer=layer, image=im.name,
                                           rel_error=float(diff / ref) if ref > 0 else float(diff > 0),
                                           padded=tuple(x.shape[2:]) != tuple(alone_x.shape[2:])))
    frames = []
    for s, rec in recorders.items():
        f = rec.to_frame()
        f.insert(0, "stack", s)
        frames.append(f)
    info = table[["layer", "order", "depth", "kind", "block", "channels", "stride"]]
    stats = pd.concat(frames, ignore_index=True).merge(info, on="layer", how="left")
    image_stats = pd.DataFrame(rows).merge(info[["layer", "order", "depth", "block"]], on="layer", how="left")
    image_stats["rel_var"] = image_stats["var"] / image_stats["var_alone"]
    padding = pd.DataFrame(errors).merge(info[["layer", "order", "depth", "kind", "block"]], on="layer", how="left")
    maps = pd.DataFrame(maps).merge(info[["layer", "order", "depth", "kind", "block"]], on="layer", how="left")
    return stats, image_stats, padding, maps


@pytest.fixture(scope="module")
def tiny():
    return run_experiment(Settings(data="synthetic", depth=2, num_images=3, batch_size=3, max_side=40),
                          progress=False)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _stats_frame(kinds=("conv", "act"), var_scale=1.0, zero_var=False):
    rng = np.random.default_rng(0)
    rows = []
    for stack in ("conv", "pconv", "mconv"):
        for d in (1, 2, 3):
            for kind in kinds:
                for c in range(4 * d):
                    var = var_scale * 10.0 ** (-d) * rng.uniform(0.5, 2)
                    rows.append(dict(stack=stack, layer=f"{kind}{d}", depth=d, kind=kind, channel=c, count=100,
                                     mean=rng.normal(), var=0.0 if zero_var and c == 0 else var))
    return pd.DataFrame(rows)


def test_channel_stats_on_a_real_run(tiny):
    fig = plot.plot_channel_stats(tiny.stats)
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 4  # (conv, act) x (mean, var)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("mconv" in lb for lb in labels) and any("alone" in lb for lb in labels)


def _drawn_medians(ax):
    """{'median <stack> depth <d>': y} of the median marks the figure functions tag: a line with gid
    'median <stack> depth <d>' (a box's median, one y), or a line with gid 'median <stack>' (a pointplot, one
    point per depth: the depth is the tick label at the nearest category position; NaN points are no data)."""
    labels = {round(t.get_position()[0]): t.get_text() for t in ax.get_xticklabels()}
    out = {}
    for artist in list(ax.lines) + list(ax.collections):
        gid = artist.get_gid()
        if not (gid and gid.startswith("median ")):
            continue
        if hasattr(artist, "get_segments"):
            points = [(x, y) for seg in artist.get_segments() for x, y in seg]
        else:
            points = list(zip(artist.get_xdata(), artist.get_ydata()))
        points = [(float(x), float(y)) for x, y in points if not np.isnan(y)]
        if " depth " in gid:
            ys = {y for _, y in points}
            assert len(ys) == 1, (gid, ys)
            out[gid] = ys.pop()
        else:
            for x, y in points:
                key = f"{gid} depth {labels[round(x)]}"
                assert key not in out, key
                out[key] = y
    return out


def _zero_tick(ax):
    """The y value whose tick reads '0' (None if there is none)."""
    fmt = ax.yaxis.get_major_formatter()
    zeros = [t for t in ax.get_yticks() if fmt(t, 0) == "0"]
    return zeros[0] if zeros else None


def test_channel_stats_variance_is_always_log_and_mean_linear():
    flat = _stats_frame(kinds=("conv",))
    flat["var"] = np.random.default_rng(1).uniform(1, 2, len(flat))  # less than a decade: log all the same
    for frame in (_stats_frame(), flat):
        fig = plot.plot_channel_stats(frame)
        var_axes = [ax for ax in fig.axes if "variance" in ax.get_title()]
        mean_axes = [ax for ax in fig.axes if "mean" in ax.get_title()]
        assert var_axes and all(ax.get_yscale() == "log" and "log scale" in ax.get_ylabel() for ax in var_axes)
        assert mean_axes and all(ax.get_yscale() == "linear" and "linear scale" in ax.get_ylabel()
                                 for ax in mean_axes)
        plt.close(fig)


def test_channel_stats_zero_variance_is_drawn_at_a_zero_tick_and_said():
    frame = _stats_frame(zero_var=True)
    fig = plot.plot_channel_stats(frame)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("= 0" in t for t in texts)
    for ax in [ax for ax in fig.axes if "variance" in ax.get_title()]:
        zero = _zero_tick(ax)
        assert zero is not None and ax.get_ylim()[0] < zero < frame.loc[frame["var"] > 0, "var"].min()


def test_channel_stats_boxes_are_the_data_statistics():
    """Median line of each box = the median of the channel values (not of drawn or log-transformed ones)."""
    frame = _stats_frame(kinds=("conv",))
    # depth 1, conv: two zero-variance channels of four: the median is half the third value, not near the floor
    sel = (frame["stack"] == "conv") & (frame["depth"] == 1)
    frame.loc[sel, "var"] = [0.0, 0.0, 0.0086, 0.028]
    fig = plot.plot_channel_stats(frame)
    for ax in fig.axes:
        stat = "var" if "variance" in ax.get_title() else "mean" if "mean" in ax.get_title() else None
        if stat is None:
            continue
        drawn = _drawn_medians(ax)
        expected = frame.groupby(["stack", "depth"])[stat].median()
        assert len(drawn) == len(expected)
        for (stack, depth), value in expected.items():
            assert drawn[f"median {stack} depth {depth}"] == pytest.approx(value, rel=1e-12)
        if stat == "var":
            assert drawn["median conv depth 1"] == pytest.approx(0.0043)


def test_channel_stats_zero_median_and_whiskers_on_the_zero_band():
    """A box whose median (and lower whisker) is 0 is drawn on the 0 band, not off the log axis; the medians of
    the other boxes are still the data's."""
    frame = _stats_frame(kinds=("conv",))
    sel = (frame["stack"] == "mconv") & (frame["depth"] == 2)
    values = np.zeros(sel.sum())
    values[-2:] = [0.01, 0.02]
    frame.loc[sel, "var"] = values
    fig = plot.plot_channel_stats(frame)
    (ax,) = [ax for ax in fig.axes if "variance" in ax.get_title()]
    zero = _zero_tick(ax)
    drawn = _drawn_medians(ax)
    assert drawn["median mconv depth 2"] == zero
    assert drawn["median conv depth 2"] == pytest.approx(
        frame.loc[(frame["stack"] == "conv") & (frame["depth"] == 2), "var"].median(), rel=1e-12)
    lows = [min(ln.get_ydata()) for ln in ax.lines if len(ln.get_ydata())]
    assert min(lows) >= zero  # nothing of a box is drawn under the band (off a log axis)


def test_stack_colours_are_seaborns_colorblind_palette():
    import seaborn as sns

    cb = sns.color_palette("colorblind")
    assert plot.STACK_COLORS["conv"] == pytest.approx(cb[3], abs=2e-3)
    assert plot.STACK_COLORS["pconv"] == pytest.approx(cb[0], abs=2e-3)
    assert plot.STACK_COLORS["mconv"] == pytest.approx(cb[2], abs=2e-3)


def test_channel_stats_subset_of_stacks_and_errors():
    assert isinstance(plot.plot_channel_stats(_stats_frame(), stacks=["mconv"]), Figure)
    with pytest.raises(ValueError):
        plot.plot_channel_stats(_stats_frame(), stacks=["nope"])
    with pytest.raises(ValueError):
        plot.plot_channel_stats(_stats_frame().iloc[:0])


def test_activation_maps_on_a_real_run(tiny):
    fig = plot.plot_activation_maps(tiny.maps, rgb=tiny.rgb)
    assert isinstance(fig, Figure)
    images = [ax for ax in fig.axes if ax.images]
    # top row: input + 2 masks; 3 stacks x 2 depths of maps
    assert len(images) == 1 + 2 + 3 * 2
    # one colour scale per depth, shared by the stacks
    for d in (1, 2):
        col = [ax.images[0] for ax in fig.axes
               if ax.images and ax.images[0].get_cmap().name != "gray" and ax.images[0].get_array().ndim == 2
               and ax.images[0].get_array().shape == tiny.maps[tiny.maps["depth"] == d]["map"].iloc[0].shape]
        assert len(col) == 3
        assert len({(im.norm.vmin, im.norm.vmax) for im in col}) == 1


def test_activation_maps_diverging_scale_for_signed_maps(tiny):
    maps = tiny.maps.copy()
    maps["map"] = [m - 0.5 for m in maps["map"]]  # negative values, e.g. tanh or no activation
    fig = plot.plot_activation_maps(maps)
    cmaps = {ax.images[0].get_cmap().name for ax in fig.axes if ax.images}
    assert "RdBu_r" in cmaps
    with pytest.raises(ValueError, match="one image"):
        plot.plot_activation_maps(pd.concat([maps, maps.assign(image="other")]))


def test_padding_sensitivity_on_a_real_run(tiny):
    fig = plot.plot_padding_sensitivity(tiny.padding)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2 and all(ax.get_yscale() == "log" for ax in panels)
    texts = [t.get_text() for ax in panels for t in ax.texts]
    assert any("float32 eps" in t for t in texts)


def test_padding_sensitivity_bar_is_the_median_of_the_errors():
    """The issue's case: errors [0, 0, 0.0086, 0.028] have median 0.0043 (the median of the drawn, floored
    positions on a log axis would land near 1e-6); an all-zero median is drawn at the tick that reads 0."""
    rows = [dict(stack=s, reference="alone", layer="act1", depth=1, kind="act", image=f"im{i}", rel_error=v,
                 padded=True)
            for s, values in (("conv", [0.0, 0.0, 0.0086, 0.028]), ("mconv", [0.0, 0.0, 0.0, 1e-7]))
            for i, v in enumerate(values)]
    fig = plot.plot_padding_sensitivity(pd.DataFrame(rows))
    (ax,) = [ax for ax in fig.axes if ax.get_title()]
    drawn = _drawn_medians(ax)
    assert drawn["median conv depth 1"] == pytest.approx(0.0043)
    zero = _zero_tick(ax)
    assert zero is not None and drawn["median mconv depth 1"] == zero
    assert zero < 1e-7 / 10  # the 0 band sits clear below the smallest non-zero error
    assert ax.get_ylim()[0] < zero
    assert set(drawn) == {"median conv depth 1", "median mconv depth 1"}


def test_padding_sensitivity_medians_on_a_real_run(tiny):
    fig = plot.plot_padding_sensitivity(tiny.padding)
    data = plot.level_layers(tiny.padding)
    data = data[data["padded"]] if data["padded"].any() else data
    for ax in [ax for ax in fig.axes if ax.get_title()]:
        ref = "alone" if "same stack" in ax.get_title() else "conv_alone"
        expected = data[data["reference"] == ref].groupby(["stack", "depth"])["rel_error"].median()
        drawn = _drawn_medians(ax)
        zero = _zero_tick(ax)
        assert len(drawn) == len(expected)
        for (stack, depth), value in expected.items():
            y = drawn[f"median {stack} depth {depth}"]
            assert y == (zero if value == 0 else pytest.approx(value, rel=1e-12))


def test_padding_sensitivity_hand_made_zeros_and_errors():
    rows = [dict(stack=s, reference="alone", layer=f"act{d}", depth=d, kind="act", image=f"im{i}",
                 rel_error=(0.0 if s != "conv" else 10.0 ** (-3 + d)), padded=True)
            for s in ("conv", "mconv") for d in (1, 2) for i in range(3)]
    frame = pd.DataFrame(rows)
    fig = plot.plot_padding_sensitivity(frame)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 1
    with pytest.raises(ValueError):
        plot.plot_padding_sensitivity(frame.iloc[:0])


def _png(dpi: int, fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def test_figures_are_reproducible_and_leave_numpy_rng_alone(tiny):
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    first = [_png(50, plot.plot_channel_stats(tiny.stats)), _png(50, plot.plot_padding_sensitivity(tiny.padding))]
    assert np.array_equal(np.random.get_state()[1], state)
    second = [_png(50, plot.plot_channel_stats(tiny.stats)), _png(50, plot.plot_padding_sensitivity(tiny.padding))]
    assert first == second


# ------------------------------------------------------------------------------------------------ non-chain networks
@pytest.fixture(scope="module")
def resnet():
    return model_frames("resnet18", n_images=4, max_side=48, batch_size=2, width=4, num_classes=3)


@pytest.fixture(scope="module")
def unet():
    return model_frames("unet", n_images=3, max_side=40, batch_size=3, depth=2, width=4)


def _layer_medians(ax, rows):
    """{(stack, layer): y} of the lines tagged 'median <stack>' in a by-layer panel (x = order + a dodge
    smaller than half a layer), NaN points skipped."""
    by_order = dict(zip(rows["order"], rows["layer"]))
    out = {}
    for line in ax.lines:
        gid = line.get_gid() or ""
        if gid.startswith("median "):
            for x, y in zip(line.get_xdata(), line.get_ydata()):
                if not np.isnan(y):
                    key = (gid[len("median "):], by_order[int(round(float(x)))])
                    assert key not in out, key
                    out[key] = float(y)
    return out


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_title()]


def test_is_chain_and_level_outputs(tiny, resnet, unet):
    assert plot.is_chain(tiny.stats)  # no order column: an older frame, the depth figure
    stack_stats = model_frames("stack", n_images=2, max_side=24, batch_size=2, depth=2)[0]
    assert plot.is_chain(stack_stats)  # with order and block: still one conv and one act per depth
    assert not plot.is_chain(resnet[0]) and not plot.is_chain(unet[0])
    assert plot.level_outputs(stack_stats) == ["act1", "act2"]
    assert plot.level_outputs(stack_stats, first=True) == ["conv1", "act1", "act2"]
    levels = plot.level_outputs(unet[0])  # down 0, 1, 2, up 1, 0 (the last run holds up2 and outc)
    assert levels == ["inc.relu2", "down1.conv.relu2", "down2.conv.relu2", "up1.conv.relu2", "outc"]
    assert plot.level_outputs(unet[0], 3) == ["inc.relu2", "down2.conv.relu2", "outc"]
    assert plot.level_outputs(resnet[0]) == ["relu", "layer1.1.relu2", "layer2.1.relu2", "layer3.1.relu2",
                                             "layer4.1.relu2"]


def test_stack_frame_with_layer_columns_keeps_the_depth_figure():
    stats = model_frames("stack", n_images=2, max_side=24, batch_size=2, depth=2)[0]
    fig = plot.plot_channel_stats(stats)
    assert all(ax.get_xlabel() == "depth (level)" for ax in _panels(fig))
    fig2 = plot.plot_channel_stats(stats, layout="layer")
    assert all("execution order" in ax.get_xlabel() for ax in _panels(fig2)[-2:])
    with pytest.raises(ValueError, match="layout"):
        plot.plot_channel_stats(stats, layout="grid")


@pytest.mark.parametrize("which", ["resnet", "unet"])
def test_channel_stats_by_layer_on_a_real_run(which, request):
    stats = request.getfixturevalue(which)[0]
    fig = plot.plot_channel_stats(stats)
    panels = _panels(fig)
    titles = [ax.get_title() for ax in panels]
    assert len(panels) == 6  # (conv [+ transposed conv], norm, act) x (mean, var)
    assert ("transposed-conv" in titles[0]) == (which == "unet")
    rows = plot.layer_rows(stats)
    for ax in panels:
        stat = "var" if "variance" in ax.get_title() else "mean"
        assert ax.get_yscale() == ("log" if stat == "var" else "linear")
        kinds = ["conv", "upconv"] if ax.get_title().startswith("Conv") else (
            ["norm"] if ax.get_title().startswith("Norm") else ["act"])
        sub = stats[stats["kind"].isin(kinds)]
        expected = sub.groupby(["stack", "layer"])[stat].median()
        drawn = _layer_medians(ax, rows)
        zero = _zero_tick(ax)
        assert set(drawn) == set(expected.index)
        for key, value in expected.items():
            assert drawn[key] == (zero if value == 0 and zero is not None else pytest.approx(value, rel=1e-9)), key
    # the block names are the tick labels of the bottom row; the depths over the top row
    bottom = [t.get_text() for t in panels[-1].get_xticklabels() if t.get_visible() and t.get_text()]
    assert set(bottom) <= set(rows["block"]) and len(bottom) >= 5
    top = [t.get_text() for t in panels[0]._depth_axis.get_xticklabels() if t.get_visible()]
    assert top[0] == "depth 1" if which == "resnet" else top[:3] == ["depth 0", "depth 1", "depth 2"]


def test_channel_stats_by_layer_band_is_the_interquartile_range():
    """Hand-made: channels 0..4 valued 1..5 at one layer: median 3, band from 2 to 4 (numpy's percentiles)."""
    rows = [dict(stack="mconv", layer=f"l{i}", order=i, depth=1 + i // 20, kind="conv", block=f"b{i // 2}",
                 channel=c, mean=float(c + 1 + i), var=float(c + 1)) for i in range(30) for c in range(5)]
    fig = plot.plot_channel_stats(pd.DataFrame(rows))
    (mean_ax,) = [ax for ax in _panels(fig) if "mean" in ax.get_title()]
    (band,) = [c for c in mean_ax.collections if (c.get_gid() or "") == "iqr mconv"]
    verts = band.get_paths()[0].vertices
    at0 = verts[np.isclose(verts[:, 0], 0)][:, 1]
    assert sorted(set(np.round(at0, 12))) == [2.0, 4.0]
    assert _layer_medians(mean_ax, plot.layer_rows(pd.DataFrame(rows)))[("mconv", "l0")] == 3.0


def _assert_no_overlap(boxes):
    boxes = sorted(boxes, key=lambda b: b.x0)
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 <= b.x0 or a.y1 <= b.y0 or b.y1 <= a.y0, (a, b)


@pytest.mark.parametrize("layers_per_block", [1, 3])
def test_a_fifty_layer_frame_draws_with_non_overlapping_ticks(layers_per_block):
    """50 layers in 5 levels, a block name per layer (50 names) or per 3 layers (17): the names are upright if
    they fit, else vertical, and thinned only where they would still overlap (extents as drawn); the depths
    over the top; every layer keeps a tick."""
    rng = np.random.default_rng(0)
    rows = [dict(stack=s, layer=f"stage{i // 10}.block{i // layers_per_block}.conv{i}", order=i, depth=1 + i // 10,
                 kind="conv", block=f"stage{i // 10}.{i // layers_per_block}", channel=c, mean=rng.normal(),
                 var=float(rng.uniform(0.5, 2)) * 10.0 ** (-(i // 10)))
            for s in ("conv", "pconv", "mconv") for i in range(50) for c in range(4)]
    frame = pd.DataFrame(rows)
    fig = plot.plot_channel_stats(frame, statistics=("var",))
    (ax,) = _panels(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()

    def boxes(axis):
        return [t.get_window_extent(renderer) for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]

    bottom = boxes(ax.xaxis)
    _assert_no_overlap(bottom)
    n_blocks = frame["block"].nunique()
    assert len(bottom) == n_blocks  # 50 vertical names fit a 50-layer axis
    rotation = {t.get_rotation() for t in ax.get_xticklabels()}
    assert rotation in ({0.0}, {90.0}) and (layers_per_block == 3 or rotation == {90.0})
    _assert_no_overlap(boxes(ax._depth_axis.xaxis))
    assert [t.get_text() for t in ax._depth_axis.get_xticklabels()] == [f"depth {d}" for d in range(1, 6)]
    assert len(ax.xaxis.get_minorticklocs()) == 50  # every layer keeps its own tick


def test_tick_labels_that_cannot_fit_are_thinned_without_overlap():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_xticks(range(40), [f"block number {i}" for i in range(40)])
    hidden = plot.thin_tick_labels(fig, ax.xaxis)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    kept = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_visible()]
    assert hidden == 40 - len(kept) and 1 <= len(kept) < 5
    _assert_no_overlap(kept)


def test_channel_stats_by_layer_zero_variance_on_the_zero_band():
    rows = [dict(stack=s, layer=f"l{i}", order=i, depth=1 + i // 8, kind="act", block=f"b{i // 4}", channel=c,
                 mean=1.0, var=0.0 if (s == "conv" and i == 3) else 0.5 + c)
            for s in ("conv", "mconv") for i in range(16) for c in range(4)]
    frame = pd.DataFrame(rows)
    fig = plot.plot_channel_stats(frame)
    (ax,) = [ax for ax in _panels(fig) if "variance" in ax.get_title()]
    zero = _zero_tick(ax)
    drawn = _layer_medians(ax, plot.layer_rows(frame))
    assert zero is not None and drawn[("conv", "l3")] == zero and drawn[("conv", "l4")] == 2.0
    assert any("= 0" in t.get_text() for t in ax.texts)


def test_padding_sensitivity_by_layer_on_a_real_run(resnet):
    padding = resnet[2]
    fig = plot.plot_padding_sensitivity(padding)
    (ax,) = _panels(fig)
    assert ax.get_yscale() == "log"
    data = padding[(padding["kind"] == "act") & padding["padded"]]
    expected = data.groupby(["stack", "layer"])["rel_error"].median()
    drawn = _layer_medians(ax, plot.layer_rows(data))
    zero = _zero_tick(ax)
    assert set(drawn) == set(expected.index) and len(drawn) == 3 * 17
    for key, value in expected.items():
        assert drawn[key] == (zero if value == 0 else pytest.approx(value, rel=1e-9)), key


def _image_frame():
    """Two layers, three stacks, six images: conv's ratio grows with padding, mconv is exactly 1."""
    rows = []
    for layer, order, depth in (("conv1", 0, 1), ("act4", 7, 4)):
        for i, pf in enumerate([0.0, 0.1, 0.3, 0.5, 0.7, 0.9]):
            for s, ratio in (("conv", 1 + pf * (1 + order)), ("pconv", 1 / (1 + pf)), ("mconv", 1.0)):
                rows.append(dict(stack=s, layer=layer, order=order, depth=depth, image=f"im{i}", pad_fraction=pf,
                                 mean=0.0, var=2.0 * ratio, var_alone=2.0))
    return pd.DataFrame(rows)


def test_stats_vs_padding_axes_and_medians():
    frame = _image_frame()
    fig = plot.plot_stats_vs_padding(frame, bins=2)
    panels = _panels(fig)
    assert [ax.get_title().split()[0] for ax in panels] == ["conv1", "act4"]
    ratio = frame["var"] / frame["var_alone"]
    for ax in panels:
        assert ax.get_yscale() == "log"
        lo, hi = ax.get_ylim()
        assert lo * hi == pytest.approx(1.0) and hi >= ratio.max() and lo <= ratio.min()  # centred on 1
        labels = {ax.yaxis.get_major_formatter()(t, 0) for t in ax.get_yticks()}
        assert "1" in labels and any(lb.startswith("×") for lb in labels) and any(lb.startswith("÷") for lb in labels)
        layer = ax.get_title().split()[0]
        for s in ("conv", "pconv", "mconv"):
            (line,) = [ln for ln in ax.lines if ln.get_gid() == f"median {s}"]
            sub = frame[(frame["layer"] == layer) & (frame["stack"] == s)]
            r = (sub["var"] / sub["var_alone"]).to_numpy()
            pf = sub["pad_fraction"].to_numpy()
            low = pf < 0.45  # two equal-width bins of [0, 0.9]
            assert list(line.get_ydata()) == pytest.approx([np.median(r[low]), np.median(r[~low])], rel=1e-12)
            assert list(line.get_xdata()) == pytest.approx([np.median(pf[low]), np.median(pf[~low])])
        assert [ln.get_ydata()[0] for ln in ax.lines if ln.get_gid() is None and len(ln.get_ydata()) == 2] == [1.0]
    assert "batch canvas" in panels[-1].get_xlabel()


def test_stats_vs_padding_all_ones_still_show_the_one_line_and_bad_ratios_are_counted():
    frame = _image_frame()
    frame["var"] = frame["var_alone"]
    frame.loc[0, ["var", "var_alone"]] = [1.0, 0.0]  # the image alone had no variance: not finite, counted
    fig = plot.plot_stats_vs_padding(frame)
    ax = _panels(fig)[0]
    lo, hi = ax.get_ylim()
    assert lo < 1 < hi and hi == pytest.approx(1.1)
    assert any("1 ratio(s) not finite" in t.get_text() for t in ax.texts)
    assert plot.rel_var(pd.DataFrame(dict(var=[0.0, 2.0, 1.0], var_alone=[0.0, 1.0, 0.0]))).tolist() == [
        1.0, 2.0, np.inf]


def test_stats_vs_padding_errors():
    frame = _image_frame()
    with pytest.raises(ValueError, match="lacks columns"):
        plot.plot_stats_vs_padding(frame.drop(columns="pad_fraction"))
    with pytest.raises(ValueError, match=r"pad_fraction must be in \[0, 1\]"):
        plot.plot_stats_vs_padding(frame.assign(pad_fraction=frame["pad_fraction"] * 2))
    with pytest.raises(ValueError, match="not in the frame"):
        plot.plot_stats_vs_padding(frame, layers=["nope"])
    with pytest.raises(ValueError, match="empty"):
        plot.plot_stats_vs_padding(frame.iloc[:0])


@pytest.mark.parametrize("which", ["resnet", "unet"])
def test_stats_vs_padding_on_a_real_run(which, request):
    """The facets: the first layer and each level's output, at most 6; masked stacks: the image's variance in
    the batch is its variance alone (float32 rounding)."""
    image_stats = request.getfixturevalue(which)[1]
    fig = plot.plot_stats_vs_padding(image_stats)
    panels = _panels(fig)
    expected = plot.level_outputs(image_stats, 6, first=True)
    assert [ax.get_title().split()[0] for ax in panels] == expected and len(expected) <= 6
    masked = image_stats[image_stats["stack"] == "mconv"]
    assert np.allclose(masked["rel_var"], 1.0, rtol=0, atol=1e-4)
    assert (image_stats["pad_fraction"] > 0).any()


def test_activation_maps_of_a_unet_one_column_per_level_output(unet):
    maps = unet[3]
    fig = plot.plot_activation_maps(maps)
    titles = [ax.get_title() for ax in fig.axes if ax.images and "output mask" in ax.get_title()]
    assert [t.split(":")[1].split(",")[0].strip() for t in titles] == plot.level_outputs(maps)
    assert len([ax for ax in fig.axes if ax.images]) == 1 + 5 + 3 * 5


def test_new_figures_are_reproducible_and_leave_numpy_rng_alone(resnet):
    np.random.seed(7)
    state = np.random.get_state()[1].copy()
    first = [_png(40, plot.plot_padding_sensitivity(resnet[2])), _png(40, plot.plot_stats_vs_padding(resnet[1]))]
    assert np.array_equal(np.random.get_state()[1], state)
    assert first == [_png(40, plot.plot_padding_sensitivity(resnet[2])), _png(40, plot.plot_stats_vs_padding(resnet[1]))]
