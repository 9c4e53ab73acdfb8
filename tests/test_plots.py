"""The report's figures, checked on the figure objects: a legend that covers no curve, one y range across
panels, a log axis of weights remaining past 90% sparsity, legend swatches in their bars' colours, and
integer ticks for an integer count (issue 25, item 2)."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from pracset.layouts import PipelineLayout  # noqa: E402
from pracset.report.plots import CEP_COLOUR, COLOURS, sparsity_x, use_log_axis, write_plots  # noqa: E402


def _curve(sparsities, accuracy):
    return [{"round": r, "sparsity": s, "accuracy": accuracy - r / 100, "std": 0.002} for r, s in enumerate(sparsities)]


@pytest.fixture
def figures(tmp_path, monkeypatch):
    """Draw every plot of a two-architecture report; returns the figures by file name, still open."""
    kept = {}
    monkeypatch.setattr(plt, "close", lambda fig: kept.setdefault(len(kept), fig))

    def draw(sparsities, axis="auto"):
        kept.clear()
        pipeline = SimpleNamespace(arch="mlp", transfer=["lenet300"], report=SimpleNamespace(sparsity_axis=axis))
        curves = {("mlp", "imp"): _curve([0, *sparsities], 0.98), ("mlp", "prac-imp"): _curve([0, *sparsities], 0.97),
                  ("lenet300", "imp"): _curve([0, *sparsities], 0.90)}  # another range: the panels still share y
        headline = {"per_round": [{"sparsity": s, "imp_search": 100 * (r + 1), "prac_search": 20 * (r + 1),
                                   "prac_probes": 5} for r, s in enumerate(sparsities)], "at": None}
        rounds = [{"round": 0, "next_set": 80, "cep": None}, {"round": 1, "next_set": 40, "cep": 30}]
        made = write_plots(PipelineLayout(tmp_path), pipeline, curves, headline, rounds,
                           {"counts": [1300, 80, 3], "never_learned": 0})
        return dict(zip((name for name, _ in made), kept.values()))

    return draw


def test_the_sparsity_axis_rule():
    assert not use_log_axis("auto", [0.2, 0.9]) and use_log_axis("auto", [0.2, 0.91])
    assert use_log_axis("log", [0.2]) and not use_log_axis("linear", [0.99])
    assert sparsity_x(0.968, True) == pytest.approx(3.2) and sparsity_x(0.968, False) == pytest.approx(96.8)


def test_accuracy_panels_share_one_y_range_and_one_legend_below_them(figures):
    fig = figures([0.2, 0.36, 0.49])["accuracy_vs_sparsity.png"]
    left, right = fig.axes[:2]
    assert left.get_ylim() == right.get_ylim()
    assert left.get_legend() is None and right.get_legend() is None and len(fig.legends) == 1
    legend_top = fig.legends[0].get_window_extent(fig.canvas.get_renderer()).y1
    assert legend_top <= min(ax.get_position().y0 for ax in (left, right)) * fig.bbox.height  # below the panels
    assert left.get_xscale() == "linear" and "pruned" in left.get_xlabel()


def test_past_90_percent_the_axis_is_log_weights_remaining(figures):
    drawn = figures([0.2, 0.5, 0.8, 0.95, 0.968])
    for name in ("accuracy_vs_sparsity.png", "iterations_vs_sparsity.png"):
        ax = drawn[name].axes[0]
        assert ax.get_xscale() == "log" and "remaining" in ax.get_xlabel()
        lo, hi = ax.get_xlim()
        assert lo > hi  # inverted: sparser to the right
        xs = sorted(x for line in ax.get_lines() for x in line.get_xdata() if line.get_label() == "full-data IMP") \
            if name == "iterations_vs_sparsity.png" else None
        if xs is not None:
            assert xs == pytest.approx([3.2, 5, 20, 50, 80])
    assert figures([0.2, 0.5], axis="log")["accuracy_vs_sparsity.png"].axes[0].get_xscale() == "log"


def test_the_per_round_bars_have_the_colours_of_their_legend_swatches(figures):
    ax = figures([0.2, 0.36])["prac_set_per_round.png"].axes[0]
    legend = ax.get_legend()
    swatches = {text.get_text(): mcolors.to_hex(patch.get_facecolor())
                for text, patch in zip(legend.get_texts(), legend.get_patches())}
    bars = [mcolors.to_hex(p.get_facecolor()) for p in ax.patches]
    assert set(swatches.values()) == set(bars) == {mcolors.to_hex(CEP_COLOUR), mcolors.to_hex(COLOURS["prac-imp"])}
    # stacked: round 1 is 30 CEP examples plus 10 more, 40 in all; round 0 (no CEP count) is 80 of the rest
    heights = sorted((p.get_x(), p.get_y(), p.get_height()) for p in ax.patches)
    assert [(round(y), round(h)) for _, y, h in heights] == [(0, 0), (0, 80), (0, 30), (30, 10)]


def test_the_forgetting_histogram_has_integer_ticks_only(figures):
    ax = figures([0.2])["forgetting_histogram.png"].axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [0, 1, 2]
