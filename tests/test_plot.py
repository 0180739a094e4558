"""analysis.plot: every figure function returns a Figure on small frames (a tiny real run and hand-made ones)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis import plot  # noqa: E402
from analysis.run import Settings, run_experiment  # noqa: E402


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


def test_channel_stats_log_axis_only_when_needed():
    fig = plot.plot_channel_stats(_stats_frame())  # variances span 1e-1 .. 1e-3: log
    var_axes = [ax for ax in fig.axes if "variance" in ax.get_title()]
    assert var_axes and all(ax.get_yscale() == "log" for ax in var_axes)
    assert all("log scale" in ax.get_ylabel() for ax in var_axes)
    flat = _stats_frame(kinds=("conv",))
    flat["var"] = np.random.default_rng(1).uniform(1, 2, len(flat))
    fig = plot.plot_channel_stats(flat)
    var_axes = [ax for ax in fig.axes if "variance" in ax.get_title()]
    assert len(var_axes) == 1 and var_axes[0].get_yscale() == "linear"


def test_channel_stats_zero_variance_is_drawn_and_said():
    fig = plot.plot_channel_stats(_stats_frame(zero_var=True))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("= 0" in t for t in texts)


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
