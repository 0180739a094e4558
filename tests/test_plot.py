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


def test_figures_are_reproducible_and_leave_numpy_rng_alone(tiny):
    import io

    def png(fig):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=50)
        return buf.getvalue()

    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    first = [png(plot.plot_channel_stats(tiny.stats)), png(plot.plot_padding_sensitivity(tiny.padding))]
    assert np.array_equal(np.random.get_state()[1], state)
    second = [png(plot.plot_channel_stats(tiny.stats)), png(plot.plot_padding_sensitivity(tiny.padding))]
    assert first == second
