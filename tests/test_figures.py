"""Charts that survive a screenshot: legends, ticks and labels where they belong, and the plotted
numbers still the engine's."""

import html

import numpy as np
import pytest
from plotly.colors import sample_colorscale

from plotly_json import decode, sink_mass_bars
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.flow.sweep import shipped_text
from sinkviz.numbers.metrics import Thresholds, layer_sinks, norm_vs_median
from sinkviz.output import figures
from sinkviz.output.readable import quoted
from sinkviz.output.verdict import verdict, verdict_layer


@pytest.fixture(scope="module")
def long_analysis(default_model_dir, tmp_path_factory):
    """~500 tokens of the shipped text through the default model: maps pooled 4 tokens a bin."""
    from sinkviz.flow.store import ResultStore
    return analyze(shipped_text()[:2300], Settings(), store=ResultStore(tmp_path_factory.mktemp("figure-store")))


def test_every_bar_colour_has_its_legend_entry_and_lines_are_labelled_in_the_margin(long_analysis):
    limits = Thresholds(warning=0.45, critical=0.7)
    sinks = layer_sinks(long_analysis.stats, 3, limits)
    fig = figures.sink_bars(sinks, limits)
    bars = [t for t in fig.data if t.type == "bar"]
    names = figures.severity_names(limits)
    assert [t.name for t in bars] == [names[s] for s in ("shallow", "ok", "warning", "critical") if s in sinks.severity]
    assert [t.name for t in bars][-2:] == ["warning (≥ 45%)", "critical (≥ 70%)"] and len(bars) == 4
    for trace, cls in zip(bars, [s for s in ("shallow", "ok", "warning", "critical") if s in sinks.severity]):
        assert trace.marker.color == figures.SEVERITY_COLORS[cls] and trace.showlegend is not False
        assert [sinks.severity[int(x)] for x in trace.x] == [cls] * len(trace.x)
    layers, mass = sink_mass_bars(decode(fig.to_dict()))
    np.testing.assert_array_equal(layers, np.arange(30))
    np.testing.assert_allclose(mass, sinks.sink_mass, rtol=1e-7)
    labels = [(a.text, a.y, a.xref, a.x, a.xanchor) for a in fig.layout.annotations]
    assert labels == [(f"uniform baseline {sinks.baseline:.1%}", sinks.baseline, "paper", 1.0, "left"),
                      ("warning 45%", 0.45, "paper", 1.0, "left"), ("critical 70%", 0.7, "paper", 1.0, "left")]
    assert fig.layout.margin.r >= 140          # the labels sit right of the plot area, beside no bar


def test_close_lines_get_labels_apart():
    assert figures.margin_label_shifts([0.02, 0.35, 0.37, 0.38]) == [0, 0, 12, 24]
    assert figures.margin_label_shifts([0.5, 0.02, 0.35]) == [0, 0, 0]


def test_large_heatmap_names_thinned_tokens_at_any_length(long_analysis):
    stats, tokens = long_analysis.stats, long_analysis.tokens.shown
    assert stats.bin_width == 4 and stats.maps.shape[-1] > figures.MAX_TICK_LABELS
    fig = figures.attention_heatmap(stats, tokens, 12)
    z, x, y = np.array(fig.data[0].z, dtype=float), list(fig.data[0].x), list(fig.data[0].y)
    np.testing.assert_allclose(z, figures.map_for_display(figures.layer_map(stats, 12), 4, False, False), rtol=1e-7)
    assert x == y and x[0] == "0–3: '&lt;|im_start|&gt;' …" and x[5] == f"20–23: {quoted(tokens[20])} …"
    step = -(-len(x) // figures.MAX_TICK_LABELS)
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert list(axis.tickvals) == x[::step] and len(axis.tickvals) <= figures.MAX_TICK_LABELS
        shown = [html.unescape(t) for t in axis.ticktext]           # as Plotly draws them
        assert all(len(t) <= figures.TICK_CHARS for t in shown)
        assert [t.rstrip("…") for t in shown] == [html.unescape(v)[:len(t.rstrip("…"))] for t, v in zip(shown, axis.tickvals)]
    assert "\ufffd" not in "".join(x)


def test_short_map_names_every_token_as_readable_text(default_model_dir, store):
    a = analyze("Thé capital of 日本 is Tokyo.", Settings(use_template=False), store=store)
    fig = figures.attention_heatmap(a.stats, a.tokens.shown, 3)
    assert list(fig.layout.xaxis.tickvals) == list(fig.data[0].x) == [f"{i}: {quoted(t)}" for i, t in enumerate(a.tokens.shown)]
    assert "'␣capital'" in " ".join(fig.layout.xaxis.ticktext)


def test_the_page_opens_on_the_layer_the_verdict_names(long_analysis):
    a = long_analysis
    sinks = layer_sinks(a.stats, 3)
    row = verdict_layer(sinks, a.stats)
    assert row == int(np.argmax(sinks.sink_mass[2:])) + 2
    assert f"The strongest is layer {a.stats.layer_ids[row]}:" in verdict(sinks, a.stats, a.tokens.shown, a.tokens.special)


@pytest.mark.parametrize("what", ["hidden_norm", "value_norm"])
def test_norm_charts_have_round_log_ticks_and_the_median_label_on_its_line(long_analysis, what):
    stats, tokens = long_analysis.stats, long_analysis.tokens.shown
    fig = figures.norm_ratio_lines(getattr(stats, what), tokens, what, 5, stats.layer_ids)
    ratio = norm_vs_median(getattr(stats, what), 5)
    np.testing.assert_allclose(np.stack([t.y for t in fig.data], -1), ratio, rtol=1e-7)
    assert [t.name for t in fig.data] == [f"{p}: {figures.plotly_text(quoted(tokens[p]))}" for p in range(5)]
    assert fig.data[0].name == "0: '&lt;|im_start|&gt;'"     # Plotly would read a token like <s> as markup
    ticks = list(fig.layout.yaxis.tickvals)
    assert fig.layout.yaxis.type == "log" and ticks == figures.log_ticks(ratio)
    assert list(fig.layout.yaxis.ticktext) == [f"{t:,g}" for t in ticks]
    assert ticks[0] <= np.nanmin(ratio) and ticks[-1] >= np.nanmax(ratio)
    (line,), (label,) = fig.layout.shapes, fig.layout.annotations
    assert (line.y0, line.y1) == (1.0, 1.0)
    assert label.text == "median token (1×)" and label.yref == "y" and label.y == 0.0   # log axis: log10(1)


def test_log_ticks_are_round_numbers():
    assert figures.log_ticks(np.array([0.8, 3.0, 190.0])) == [0.1, 1.0, 10.0, 100.0, 1000.0]
    assert figures.log_ticks(np.array([0.094, 1.3, np.nan])) == pytest.approx([0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10])
    assert figures.log_ticks(np.array([1.5, 40.0])) == [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
    ticks = figures.log_ticks(np.array([0.55, 1.4]))          # within one decade: two ticks inside the data
    assert ticks == pytest.approx([0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10])
    assert sum(0.55 <= t <= 1.4 for t in ticks) == 2


def test_sweep_draws_layers_on_a_sequential_scale_in_percent():
    lengths = [256, 512, 1024, 1701]
    mass = np.random.default_rng(0).uniform(0.1, 0.8, (4, 30))
    fig = figures.sweep_lines(lengths, mass, 3)
    layers = [t for t in fig.data if t.name and t.name.startswith("layer ")]
    assert [t.line.color for t in layers] == sample_colorscale(figures.LAYER_SCALE, np.linspace(0, 1, 30))
    assert not any(t.showlegend for t in layers)
    np.testing.assert_allclose(np.stack([t.y for t in layers], -1), mass)
    scale = [t for t in fig.data if t.marker is not None and t.marker.showscale][0]
    assert (scale.marker.cmin, scale.marker.cmax, scale.marker.colorbar.title.text) == (0, 29, "layer")
    mean = fig.data[-1]
    assert mean.name == "mean over layers" and mean.showlegend is not False
    np.testing.assert_allclose(mean.y, mass.mean(axis=1))
    assert fig.layout.yaxis.tickformat == ".0%" and "%{y:.1%}" in layers[0].hovertemplate
    assert list(fig.layout.xaxis.tickvals) == lengths and list(fig.layout.xaxis.ticktext) == ["256", "512", "1,024", "1,701"]


def test_part_names_that_would_overlap_take_separate_rows():
    """Three parts starting 1-2 cells apart on a 300-cell heatmap: three rows; one far away: row 0."""
    import plotly.graph_objects as go
    from collections import namedtuple
    from sinkviz.output.segment_figures import LABEL_ROW_PX, mark_segments
    Seg = namedtuple("Seg", "name spans")
    segments = [Seg("template", [(0, 1), (4, 5), (250, 260)]), Seg("system turn", [(1, 4)]), Seg("user turn", [(5, 250)])]
    fig = mark_segments(go.Figure(go.Heatmap(z=np.zeros((300, 300)), x=list(range(300)))), segments, 1)
    rows = {(a.text, a.x + 0.5): (a.yshift or 0) // LABEL_ROW_PX for a in fig.layout.annotations}
    assert rows == {("system turn", 1): 0, ("template", 4): 1, ("user turn", 5): 2, ("template", 250): 0}
    assert sorted(s.x0 + 0.5 for s in fig.layout.shapes) == [1, 4, 5, 250]


def test_sliding_window_layers_get_their_own_uniform_marks(long_analysis):
    """Layers with a window shorter than the prompt: the bars mark each layer's own baseline and the
    entropy chart each layer's uniform entropy, instead of one full-attention line."""
    from dataclasses import replace
    from sinkviz.numbers.metrics import layer_entropy, uniform_entropies
    stats = long_analysis.stats
    windowed = replace(stats, windows=tuple(64 if l % 2 == 0 else None for l in range(stats.n_layers)))
    sinks = layer_sinks(windowed, 3)
    fig = figures.sink_bars(sinks)
    marks = [t for t in fig.data if t.name == "uniform baseline (each layer's window)"]
    assert len(marks) == 1 and not any("uniform baseline" in (a.text or "") for a in fig.layout.annotations)
    np.testing.assert_array_equal(marks[0].y, sinks.baselines)
    assert sinks.baselines[0] < sinks.baselines[1] == sinks.baseline   # queries past the window never see the first N
    np.testing.assert_allclose(sinks.ratio, sinks.sink_mass / sinks.baselines, rtol=1e-12)
    entropy = figures.entropy_lines(layer_entropy(windowed), uniform_entropies(windowed), windowed.layer_ids)
    assert [t.name for t in entropy.data] == ["mean entropy", "uniform attention (each layer's window)"]
    np.testing.assert_array_equal(entropy.data[1].y, uniform_entropies(windowed))
    assert not entropy.layout.shapes                                          # no single line
    plain = figures.entropy_lines(layer_entropy(stats), uniform_entropies(stats), stats.layer_ids)
    assert len(plain.data) == 1 and len(plain.layout.shapes) == 1


def test_layer_axes_tick_whole_layers_and_the_position_heatmap_has_a_row_per_layer(long_analysis):
    import plotly.graph_objects as go
    assert figures.whole_layer_ticks(go.Figure(), [1, 3]).layout.xaxis.dtick == 1          # a hybrid's two layers
    assert figures.whole_layer_ticks(go.Figure(), range(30)).layout.xaxis.dtick is None    # Plotly's own ticks
    heat = figures.position_heatmap(long_analysis.stats, 0, "<s>")
    assert heat.layout.yaxis.type == "category" and list(heat.data[0].y) == list(long_analysis.stats.layer_ids)
    assert "('&lt;s&gt;')" in heat.layout.title.text


def test_the_learned_sink_tick_does_not_print_over_the_last_token_tick():
    labels = [f"{i}: 'w{i}'" for i in range(101)]                   # 101 keys: every 4th named
    assert figures.thinned_ticks(labels)["tickvals"][-1] == "100: 'w100'"
    ticks = figures.thinned_ticks(labels, also=["learned sink"])["tickvals"]
    assert ticks[-2:] == ["96: 'w96'", "learned sink"] and len(ticks) == 26
    assert figures.thinned_ticks(labels[:20], also=["learned sink"])["tickvals"][-2:] == ["19: 'w19'", "learned sink"]
