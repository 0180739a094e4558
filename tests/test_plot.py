"""masked_torch.analysis.plot: the axes-level functions draw the data and the pandas summaries on the axes they are
given; the figure-level wrappers lay out, caption and save; zeros, NaN, empty panels and a 1x1 image are drawn,
never raised on. Small tidy frames built here; expectations computed here with numpy, not by the module."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from masked_torch.analysis import plot  # noqa: E402

STACKS = ("conv", "pconv", "mconv")


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------------------ frames
def _chain_stats(zero_var: bool = False, nan_var: bool = False) -> pd.DataFrame:
    """A seed-like stack: conv{d}, act{d} at depth d = 1..3, 4*d channels, every stack and conv_alone."""
    rng = np.random.default_rng(0)
    rows = []
    for stack in (*STACKS, "conv_alone"):
        for d in (1, 2, 3):
            for k, kind in enumerate(("conv", "act")):
                for c in range(4 * d):
                    var = 10.0 ** (-2 * d) * rng.uniform(0.5, 2)
                    if zero_var and kind == "act" and c == 0:
                        var = 0.0
                    if nan_var and kind == "act" and c == 1:
                        var = float("nan")
                    rows.append(dict(stack=stack, layer=f"{kind}{d}", order=2 * (d - 1) + k, depth=d, kind=kind,
                                     block=f"level{d}", channel=c, count=100, mean=rng.normal(), var=var))
    return pd.DataFrame(rows)


_NET = [  # (layer, depth, kind, block): several layers per depth, a norm, two blocks per level
    ("stem.conv", 1, "conv", "stem"), ("stem.bn", 1, "norm", "stem"), ("stem.relu", 1, "act", "stem"),
    ("b1.conv", 2, "conv", "b1"), ("b1.bn", 2, "norm", "b1"), ("b1.relu", 2, "act", "b1"),
    ("b2.conv", 2, "conv", "b2"), ("b2.bn", 2, "norm", "b2"), ("b2.relu", 2, "act", "b2"),
    ("b3.conv", 3, "conv", "b3"), ("b3.bn", 3, "norm", "b3"), ("b3.relu", 3, "act", "b3"),
]


def _net_stats() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for stack in (*STACKS, "conv_alone"):
        for order, (layer, depth, kind, block) in enumerate(_NET):
            for c in range(6):
                var = 0.0 if (kind == "act" and c == 0) else 10.0 ** (-depth) * rng.uniform(0.5, 2)
                rows.append(dict(stack=stack, layer=layer, order=order, depth=depth, kind=kind, block=block,
                                 channel=c, count=50, mean=rng.normal(), var=var))
    return pd.DataFrame(rows)


def _padding_frame(chain: bool = True, reference_padded: bool = True) -> pd.DataFrame:
    """conv differs from the image alone by 0.01 * depth * (image + 1); pconv and mconv are bit-identical to
    their own run alone; against conv_alone everything differs a little, mconv by float32 rounding."""
    layers = ([(f"act{d}", 2 * d - 1, d, "act", f"level{d}") for d in (1, 2, 3)] +
              [(f"conv{d}", 2 * d - 2, d, "conv", f"level{d}") for d in (1, 2, 3)] if chain else
              [(lay, o, d, k, b) for o, (lay, d, k, b) in enumerate(_NET)])
    rows = []
    for i, (h, w) in enumerate([(30, 40), (25, 40), (40, 40)]):
        for stack in STACKS:
            for ref in ("alone", "conv_alone"):
                for layer, order, depth, kind, block in layers:
                    if ref == "alone":
                        err = 0.01 * depth * (i + 1) if stack == "conv" else 0.0
                    else:
                        err = {"conv": 0.01 * depth * (i + 1), "pconv": 0.2 * depth, "mconv": 3e-7 * i}[stack]
                    pad = (8 - h % 8) % 8 if reference_padded else 0
                    rows.append(dict(stack=stack, reference=ref, layer=layer, order=order, depth=depth, kind=kind,
                                     block=block, image=f"im{i}", h=h, w=w, batch_h=40, batch_w=40,
                                     pad_fraction=1 - h * w / 1600, rel_error=err, padded=h != 40,
                                     alone_h=h + pad if ref == "conv_alone" else h, alone_w=w))
    return pd.DataFrame(rows)


def _image_stats(rel=None) -> pd.DataFrame:
    """Per (stack, layer, image): conv's variance grows with the padded share, pconv and mconv unchanged."""
    rows = []
    for i in range(6):
        pf = i / 10
        for stack in STACKS:
            for order, (layer, depth) in enumerate([("conv1", 1), ("act1", 1), ("act2", 2), ("act3", 3)]):
                ratio = 1 + 0.05 * pf * depth if stack == "conv" else 1.0
                if rel is not None:
                    ratio = rel(stack, layer, i, ratio)
                rows.append(dict(stack=stack, layer=layer, order=order, depth=depth,
                                 kind="conv" if layer.startswith("conv") else "act", block=f"level{depth}",
                                 image=f"im{i}", pad_fraction=pf, var=2.0 * ratio, var_alone=2.0, rel_var=ratio))
    return pd.DataFrame(rows)


def _maps_frame(h=20, w=30, canvas=32, padding_value=0.0, size=1) -> pd.DataFrame:
    rows = []
    for stack in STACKS:
        for d in (1, 2):
            n = max(1, canvas // 2 ** d)
            m = np.full((n, n), padding_value)
            rh, rw = -(-h * n // canvas), -(-w * n // canvas)
            m[:rh, :rw] = np.linspace(0, 1, rh * rw).reshape(rh, rw)
            mask = np.zeros((n, n))
            mask[:rh, :rw] = 1
            for kind in ("conv", "act"):
                rows.append(dict(image="im", stack=stack, layer=f"{kind}{d}", order=2 * d - 2 + (kind == "act"),
                                 depth=d, kind=kind, block=f"level{d}", map=m, mask=mask, h=h, w=w,
                                 canvas_h=canvas, canvas_w=canvas))
    return pd.DataFrame(rows)


def _hline_ys(ax) -> list:
    """The y of every horizontal segment drawn with hlines (the medians)."""
    ys = []
    for coll in ax.collections:
        if isinstance(coll, LineCollection):
            for seg in coll.get_segments():
                if len(seg) == 2 and seg[0][1] == seg[1][1] and seg[0][0] != seg[1][0]:
                    ys.append(float(seg[0][1]))
    return ys


def _dot_ys(ax) -> np.ndarray:
    return np.concatenate([np.asarray(c.get_offsets())[:, 1] for c in ax.collections
                           if isinstance(c, PathCollection)] or [np.empty(0)])


def _texts(fig) -> str:
    """Every text of the figure (titles, labels, notes, legend entries and titles), joined, line breaks from
    wrapping made spaces."""
    return " | ".join(" ".join(t.get_text().split()) for t in fig.findobj(matplotlib.text.Text))


def _linthresh(ax) -> float:
    return ax.yaxis.get_transform().linthresh


# ------------------------------------------------------------------------------------------------ pieces
def test_symlog_threshold_is_the_decade_below_the_smallest_non_zero_magnitude():
    assert plot.symlog_threshold([0.0, 3e-5, 0.2, np.nan, np.inf]) == pytest.approx(1e-5, rel=1e-12)
    assert plot.symlog_threshold([-0.02, 0.0, 5.0]) == pytest.approx(1e-2, rel=1e-12)
    assert plot.symlog_threshold([1e-3]) == pytest.approx(1e-3, rel=1e-12)
    assert plot.symlog_threshold([0.0, 0.0]) == 1.0
    assert plot.symlog_threshold([]) == 1.0


def test_summarize_is_the_median_and_quartiles_of_the_finite_values():
    frame = pd.DataFrame(dict(stack=["a"] * 6 + ["b"] * 3, v=[0, 0, 0.0086, 0.028, np.nan, np.inf, 1, 2, 4]))
    got = plot.summarize(frame, "v", ["stack"]).set_index("stack")
    a = np.array([0, 0, 0.0086, 0.028])
    assert got.loc["a", "n"] == 4 and got.loc["b", "n"] == 3
    assert got.loc["a", "median"] == pytest.approx(np.median(a), rel=1e-12)  # 0.0043, not 0 as on a log axis
    assert got.loc["a", "q25"] == pytest.approx(np.percentile(a, 25), abs=1e-15)
    assert got.loc["a", "q75"] == pytest.approx(np.percentile(a, 75), rel=1e-12)
    assert got.loc["b", "max_abs"] == 4


def test_stack_colours_are_seaborns_colorblind_palette():
    import seaborn as sns

    cb = sns.color_palette("colorblind")
    assert plot.STACK_COLORS["conv"] == pytest.approx(cb[3], abs=2e-3)
    assert plot.STACK_COLORS["pconv"] == pytest.approx(cb[0], abs=2e-3)
    assert plot.STACK_COLORS["mconv"] == pytest.approx(cb[2], abs=2e-3)


def test_layer_titles_are_words():
    assert plot.layer_title(dict(layer="act3", kind="act", block="level3", depth=3)) == \
        "level3: activation output (act3), 1/8 resolution"
    assert plot.layer_title(dict(layer="fc", kind="linear", block="fc", depth=pd.NA)) == \
        "Linear-layer output (fc), no spatial dimensions"


def test_is_chain_and_level_outputs_on_the_suites_networks():
    import torch

    from masked_torch.analysis.models import build_model, layer_table

    def table(name, size):
        return layer_table(build_model(name, depth=2 if name != "resnet18" else 4), torch.zeros(1, 3, size, size))

    stack, unet, resnet = table("stack", 16), table("unet", 16), table("resnet18", 64)
    assert plot.is_chain(stack) and plot.is_chain(stack.drop(columns="order"))
    assert not plot.is_chain(unet) and not plot.is_chain(resnet)
    assert plot.level_outputs(stack) == ["act1", "act2"]
    assert plot.level_outputs(stack, first=True) == ["conv1", "act1", "act2"]
    assert plot.level_outputs(unet) == ["inc.relu2", "down1.conv.relu2", "down2.conv.relu2", "up1.conv.relu2",
                                        "outc"]
    assert plot.level_outputs(unet, 3) == ["inc.relu2", "down2.conv.relu2", "outc"]
    assert plot.level_outputs(resnet) == ["relu", "layer1.1.relu2", "layer2.1.relu2", "layer3.1.relu2",
                                         "layer4.1.relu2"]


def test_rel_var_of_zero_variances():
    frame = pd.DataFrame(dict(var=[2.0, 0.0, 1.0, np.nan], var_alone=[1.0, 0.0, 0.0, 1.0]))
    np.testing.assert_array_equal(plot.rel_var(frame), [2.0, 1.0, np.inf, np.nan])


# ------------------------------------------------------------------------------------------------ axes level
def test_channel_stat_points_draws_every_channel_and_the_pandas_medians_on_the_given_axes():
    stats = _chain_stats(zero_var=True)
    data = stats[stats["kind"] == "act"]
    fig, ax = plt.subplots()
    n_figs = len(plt.get_fignums())
    assert plot.channel_stat_points(data, ax=ax, y="var", x="depth") is ax
    assert len(plt.get_fignums()) == n_figs  # drew on the axes it was given, no figure of its own
    assert ax.get_yscale() == "symlog"
    assert _linthresh(ax) == pytest.approx(10.0 ** np.floor(np.log10(data.loc[data["var"] > 0, "var"].min())))
    assert sorted(_dot_ys(ax)) == pytest.approx(sorted(data["var"]), rel=1e-12)  # zeros at 0, each channel once
    assert (_dot_ys(ax) == 0).sum() == (data["var"] == 0).sum() == 4 * 3
    expected = [np.median(g["var"]) for _, g in data.groupby(["stack", "depth"])]
    drawn = _hline_ys(ax)
    for m in expected:  # each median bar at the median of its channels, a zero median at 0
        assert any(abs(y - m) <= 1e-12 * abs(m) for y in drawn)
    assert "exactly 0" in _texts(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]


def test_channel_stat_points_mean_is_linear_and_nan_is_left_out_and_counted():
    data = _chain_stats(nan_var=True)
    fig, (a1, a2) = plt.subplots(1, 2)
    plot.channel_stat_points(data, ax=a1, y="mean")
    assert a1.get_yscale() == "linear"
    plot.channel_stat_points(data, ax=a2, y="var")
    n_nan = int(data["var"].isna().sum())
    assert len(_dot_ys(a2)) == len(data) - n_nan
    assert f"{n_nan} value(s) not finite" in _texts(fig)


def test_channel_stat_lines_are_the_median_and_quartiles_per_layer():
    data = _net_stats()
    fig, ax = plt.subplots()
    assert plot.channel_stat_lines(data, ax=ax, y="var") is ax
    assert ax.get_yscale() == "symlog"
    rows = plot.layer_rows(data)
    for stack in STACKS:
        line = next(ln for ln in ax.lines if len(ln.get_ydata()) == len(rows)
                    and np.allclose(ln.get_ydata(), [np.median(data.loc[(data["stack"] == stack)
                                                                        & (data["layer"] == lay), "var"])
                                                     for lay in rows["layer"]], rtol=1e-12, atol=0))
        assert line is not None
    # the resolution of each level over the top, the blocks under the axis
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stem", "b1", "b2", "b3"]


def test_relative_error_points_zero_at_zero_and_shared_threshold():
    data = _padding_frame()
    part = data[data["reference"] == "alone"]
    fig, ax = plt.subplots()
    assert plot.relative_error_points(part, ax=ax, linthresh=1e-9) is ax
    assert _linthresh(ax) == pytest.approx(1e-9)
    ys = _dot_ys(ax)
    assert (ys == 0).sum() == (part["rel_error"] == 0).sum() > 0  # bit-identical images drawn at 0
    assert sorted(ys) == pytest.approx(sorted(part["rel_error"]), abs=0, rel=1e-12)
    assert 0.0 in list(ax.get_yticks())
    assert "bit-identical" in _texts(fig)


def test_variance_change_points_are_percent_changes_from_the_image_alone():
    data = _image_stats()
    layer = data[data["layer"] == "act3"]
    fig, ax = plt.subplots()
    assert plot.variance_change_points(layer, ax=ax) is ax
    expected = 100 * (layer["rel_var"].to_numpy() - 1)
    assert sorted(_dot_ys(ax)) == pytest.approx(sorted(expected), rel=1e-12, abs=1e-12)
    assert (_dot_ys(ax) == 0).sum() == (expected == 0).sum() == 2 * 6 + 1  # pconv, mconv and unpadded conv at 0
    assert ax.get_yscale() == "symlog"


def test_axes_level_functions_say_so_on_an_empty_or_all_nan_panel():
    fig, axes = plt.subplots(1, 4)
    empty = _chain_stats().iloc[:0]
    plot.channel_stat_points(empty, ax=axes[0], y="var", stacks=["conv"])
    nan = _chain_stats().assign(var=np.nan)
    plot.channel_stat_lines(nan, ax=axes[1], y="var")
    plot.relative_error_points(_padding_frame().assign(rel_error=np.nan), ax=axes[2])
    plot.variance_change_points(_image_stats().assign(rel_var=np.inf), ax=axes[3])
    text = _texts(fig)
    assert text.count("no finite") == 2 and "no relative difference" in text and "no variance ratio" in text


def test_activation_map_colour_scale_is_taken_over_the_image_only():
    maps = _maps_frame(padding_value=1e6)  # the padding holds huge values: they must not set the scale
    fig = plot.plot_activation_maps(maps)
    images = [im for ax in fig.axes for im in ax.images if im.get_cmap().name == "viridis"]
    assert images and all(im.norm.vmax <= 1.0 + 1e-12 for im in images)
    assert "update_mask=False" in _texts(fig)
    assert "update_mask=True" in _texts(plot.plot_activation_maps(maps, update_mask=True))


# ------------------------------------------------------------------------------------------------ figure level
def test_channel_stats_figure_names_the_stacks_in_words():
    fig = plot.plot_channel_stats(_chain_stats())
    assert isinstance(fig, Figure)
    text = _texts(fig)
    for stack in (*STACKS, "conv_alone"):
        assert plot.STACK_LABELS[stack] in text
    assert "plain convolution on each image alone" in text and "never over padding" in text
    assert "level 2" in text


def test_channel_stats_by_layer_for_a_network_that_is_not_a_chain():
    stats = _net_stats()
    assert not plot.is_chain(stats)
    fig = plot.plot_channel_stats(stats)
    assert len([ax for ax in fig.axes if ax.get_ylabel()]) == 3 * 2  # conv, norm, act x mean, var
    assert "in the order the network runs them" in _texts(fig)
    fig2 = plot.plot_channel_stats_by_layer(stats, statistics=("var",), kinds=("act",))
    assert len([ax for ax in fig2.axes if ax.get_ylabel()]) == 1
    with pytest.raises(ValueError, match="kinds"):
        plot.plot_channel_stats_by_layer(stats, kinds=("pool",))


def test_padding_figure_says_what_is_compared_and_warns_when_the_reference_pads():
    fig = plot.plot_padding_sensitivity(_padding_frame(reference_padded=True))
    text = _texts(fig)
    assert "same network on the image alone" in text and "plain network (conv) on the image alone" in text
    assert "cannot run an image at its own size" in text and "up to 7 pixels" in text
    assert "pconv: bit-identical for every image and layer" in text
    assert "mconv: equal up to float32 rounding" in text
    axes = [ax for ax in fig.axes if ax.get_yscale() == "symlog"]
    assert len(axes) == 2 and _linthresh(axes[0]) == _linthresh(axes[1]) <= plot.ROUNDING / 100
    fig2 = plot.plot_padding_sensitivity(_padding_frame(reference_padded=False))
    assert "cannot run an image at its own size" not in _texts(fig2)


def test_padding_figure_of_a_network_that_is_not_a_chain():
    fig = plot.plot_padding_sensitivity(_padding_frame(chain=False))
    text = _texts(fig)
    assert "in the order the network runs them" in text
    assert "1/4" in text  # the resolution over the top


def test_stats_vs_padding_figure_states_the_finding():
    fig = plot.plot_stats_vs_padding(_image_stats())
    text = _texts(fig)
    assert "pconv: unchanged, exactly, for every image" in text
    assert "conv: changes by up to" in text
    assert "act3" in text and "1/8 resolution" in text  # titles in words
    assert "÷" not in text and "×" not in text


def test_stats_vs_padding_counts_ratios_that_are_not_finite_and_rejects_bad_input():
    frame = _image_stats(rel=lambda s, lay, i, r: np.inf if (s == "mconv" and i == 0) else r)
    fig = plot.plot_stats_vs_padding(frame, layers=["act1"])
    assert "1 image(s) without variance alone, left out" in _texts(fig)
    with pytest.raises(ValueError, match="pad_fraction"):
        plot.plot_stats_vs_padding(_image_stats().assign(pad_fraction=1.5))
    with pytest.raises(ValueError, match="not in the frame"):
        plot.plot_stats_vs_padding(_image_stats(), layers=["nope"])


@pytest.mark.parametrize("function", [plot.plot_activation_maps, plot.plot_channel_stats,
                                      plot.plot_channel_stats_by_layer, plot.plot_padding_sensitivity,
                                      plot.plot_stats_vs_padding])
def test_an_empty_frame_is_one_clear_error(function):
    with pytest.raises(ValueError, match=f"{function.__name__}: empty frame"):
        function(pd.DataFrame(columns=["stack", "layer"]))


def test_figures_are_saved_atomically_small_and_reproducible(tmp_path):
    state = np.random.get_state()
    paths = []
    for k in range(2):
        path = tmp_path / f"padding{k}.png"
        assert isinstance(plot.plot_padding_sensitivity(_padding_frame(), path=path, dpi=60), Figure)
        paths.append(path)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size < 500_000
    assert paths[0].read_bytes() == paths[1].read_bytes()  # seeded jitter: the same frame, the same PNG
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's global generator untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["padding0.png", "padding1.png"]  # no temporary files
    with pytest.raises(OSError):
        plot.plot_channel_stats(_chain_stats(), path=tmp_path / "missing" / "stats.png")
    assert not (tmp_path / "missing").exists()


def test_save_figure_lowers_the_resolution_to_fit_the_cap(tmp_path):
    fig = plot.plot_activation_maps(_maps_frame())
    plot.save_figure(fig, tmp_path / "maps.png", dpi=40)
    cap = int(0.8 * (tmp_path / "maps.png").stat().st_size)  # over the cap at 40 dpi, under it at 34 or below
    plot.save_figure(fig, tmp_path / "maps.png", dpi=40, cap=cap, min_dpi=10)
    assert (tmp_path / "maps.png").stat().st_size <= cap
    assert [p.name for p in tmp_path.iterdir()] == ["maps.png"]


def test_a_folder_with_one_1x1_image_gives_every_figure(tmp_path):
    """The 1x1 image: zero variances everywhere (the old log axis raised 'math domain error')."""
    from PIL import Image

    from masked_torch.analysis.run import Settings, run_experiment, write_outputs

    (tmp_path / "img").mkdir()
    Image.new("RGB", (1, 1), (10, 200, 30)).save(tmp_path / "img" / "a.png")
    results = run_experiment(Settings(data=str(tmp_path / "img")), progress=False)
    written = write_outputs(results, tmp_path / "out", dpi=50)
    pngs = sorted(p.name for p in written if p.suffix == ".png")
    assert pngs == ["activation_maps.png", "channel_stats.png", "padding_sensitivity.png", "stats_vs_padding.png"]
    assert all(p.stat().st_size > 0 for p in written)
