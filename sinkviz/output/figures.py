"""Plotly figures: pure functions from engine results to ``go.Figure``.

Every plotted number is taken from the metrics as is (fractions, not rescaled), so a test
can compare the figure's arrays with the engine's.
"""

import html

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from sinkviz.numbers.metrics import LayerSinks, Thresholds, norm_vs_median
from sinkviz.numbers.stats import AttentionStats
from sinkviz.output.readable import quoted

SEVERITY_COLORS = {"shallow": "#9aa5b1", "ok": "#4c78a8", "warning": "#f58518", "critical": "#d62728"}
SMALL_MAP_BINS = 32  # bins per side in the all-layers grid
MAX_TICK_LABELS = 32  # token labels per axis of the large heatmap; longer axes name every k-th bin
TICK_CHARS = 18       # a tick label's characters at most (the hover has the whole label)
LAYER_SCALE = "Viridis"  # sequential: a layer's colour says how deep it is
LEGEND_ABOVE = dict(orientation="h", yanchor="bottom", y=1.0, x=0)   # between the title and the plot, clear of the x title


def severity_names(thresholds: Thresholds) -> dict[str, str]:
    """The legend entry of each bar colour (severity class)."""
    return {"shallow": f"layers < {thresholds.shallow_layers} (not judged)", "ok": "below warning",
            "warning": f"warning (≥ {thresholds.warning:.0%})", "critical": f"critical (≥ {thresholds.critical:.0%})"}


def sink_bars(sinks: LayerSinks, thresholds: Thresholds = Thresholds()) -> go.Figure:
    """Sink mass per layer, one bar trace (and legend entry) per severity colour, with the baseline
    and thresholds as lines labelled in the right margin (never under a bar) and ratio flags."""
    layers = np.array(sinks.layer_ids or range(len(sinks.sink_mass)))   # hybrids: gaps where no attention
    severity = np.array(sinks.severity)
    fig = go.Figure()
    for name, label in severity_names(thresholds).items():
        rows = np.flatnonzero(severity == name)
        if len(rows):
            fig.add_trace(go.Bar(
                x=layers[rows], y=sinks.sink_mass[rows], name=label, marker_color=SEVERITY_COLORS[name],
                offsetgroup="sink mass", customdata=sinks.ratio[rows],
                hovertemplate=f"layer %{{x}}<br>sink mass %{{y:.1%}}<br>%{{customdata:.1f}}x uniform<br>{label}"
                              "<extra></extra>"))
    per_layer = np.ptp(sinks.baselines) > 0                                  # sliding windows: each its own
    lines = [(thresholds.warning, "warning", "dash"), (thresholds.critical, "critical", "dash")]
    if per_layer:
        fig.add_trace(go.Scatter(x=layers, y=sinks.baselines, mode="markers", marker_symbol="line-ew-open",
                                 marker_size=22, marker_line_width=2, marker_color="#555",
                                 name="uniform baseline (each layer's window)",
                                 hovertemplate="layer %{x}<br>uniform %{y:.1%}<extra></extra>"))
    else:
        lines.insert(0, (float(sinks.baselines[0]), "uniform baseline", "dot"))   # every layer's (windowed alike too)
    for (y, label, dash), shift in zip(lines, margin_label_shifts([y for y, _, _ in lines])):
        fig.add_hline(y=y, line_dash=dash, line_color="#555")
        fig.add_annotation(x=1.0, xref="paper", xanchor="left", y=y, yref="y", yshift=shift, showarrow=False,
                           text=f"{label} {y:.1%}" if y < 0.1 else f"{label} {y:.0%}", font_size=11)
    flagged = np.flatnonzero(sinks.flagged)
    if sinks.learned_sink is not None:
        fig.add_trace(go.Bar(x=layers, y=sinks.learned_sink, name="learned sink (no token)", marker_color="#54a24b",
                             offsetgroup="learned sink",
                             hovertemplate="layer %{x}<br>learned sink %{y:.1%}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=layers[flagged], y=np.minimum(sinks.sink_mass[flagged] + 0.04, 1.04), mode="markers",
        marker_symbol="triangle-down", marker_size=9, marker_color="black",
        name=f"> {thresholds.ratio_flag:g}x uniform", hoverinfo="skip"))
    fig.update_layout(
        title=f"Attention on the first {sinks.first_n} tokens, per layer "
              f"(mean over heads and over queries i ≥ {sinks.first_n})",
        xaxis_title="layer", yaxis_title="sink mass", yaxis_tickformat=".0%", barmode="group",
        yaxis_range=[0, 1.08], legend=LEGEND_ABOVE, margin_t=80,
        margin_r=150, height=420)
    return whole_layer_ticks(fig, layers)


def margin_label_shifts(ys: list[float], gap: float = 0.05, step: int = 12) -> list[int]:
    """Pixels to lift each label of lines at heights ``ys`` (fractions of the 0..1 axis) so that
    labels of lines closer than ``gap`` do not print over each other."""
    shifts, last = [0] * len(ys), None
    for i in sorted(range(len(ys)), key=lambda i: ys[i]):
        if last is not None and ys[i] - ys[last] < gap:
            shifts[i] = shifts[last] + step
        last = i
    return shifts


def whole_layer_ticks(fig: go.Figure, layers) -> go.Figure:
    """A layer x axis ticked at whole layers: Plotly would put ticks at 0.5, 1.5, ... on a model of
    a few layers (more than 16 layers: Plotly's own whole-number ticks)."""
    layers = list(layers)
    if layers and max(layers) - min(layers) <= 16:
        fig.update_xaxes(tickmode="linear", tick0=0, dtick=1)
    return fig


def plotly_text(text: str) -> str:
    """Text for a Plotly label, title or legend: Plotly reads <s>, <b>, <br>, ... as markup, so a
    token such as Llama's BOS '<s>' would strike through the rest of the label; & < > escaped."""
    return html.escape(text, quote=False)


def bin_labels(tokens: tuple[str, ...], width: int) -> list[str]:
    """One label per map bin, the token as readable text: "i: 'token'" for single tokens,
    "i–k: 'first token' …" for pooled bins."""
    if width == 1:
        return [f"{i}: {plotly_text(quoted(t))}" for i, t in enumerate(tokens)]
    return [f"{s}–{min(s + width, len(tokens)) - 1}: {plotly_text(quoted(tokens[s]))} …"
            for s in range(0, len(tokens), width)]


def thinned_ticks(labels: list[str], also: list[str] = (), most: int = MAX_TICK_LABELS,
                  chars: int = TICK_CHARS) -> dict:
    """Axis settings that name every k-th category of ``labels``, k = ceil(len / most), and every
    one of ``also`` (categories after them: a k-th label closer than k/2 to those is left out, so
    the two do not print over each other), each name cut to ``chars`` characters (the hover keeps
    the whole label)."""
    step = -(-len(labels) // most) if labels else 1
    shown = [labels[i] for i in range(0, len(labels), step) if not (also and len(labels) - i <= step // 2)]
    shown += list(also)
    return dict(tickmode="array", tickvals=shown, tickfont_size=10,
                ticktext=[label if len(html.unescape(label)) <= chars
                          else plotly_text(html.unescape(label)[:chars - 1]) + "…" for label in shown])


def layer_map(stats: AttentionStats, layer: int, head: int | None = None) -> np.ndarray:
    """[bins, bins] map of one layer: one head, or the mean over heads. A head of an analysis
    that kept the head mean only (an audit's row) raises ValueError: never the mean in its place."""
    maps = stats.maps[layer]
    if head is not None and not stats.head_maps:
        raise ValueError(f"head {head}'s map was not kept (an audit keeps the mean over heads only)")
    return maps.mean(axis=0) if head is None else maps[head]


def learned_sink_column(stats: AttentionStats, layer: int, head: int | None = None) -> np.ndarray | None:
    """[bins] the learned sink's share of each map row (head mean by default); None without one."""
    if stats.learned_sink_map is None:
        return None
    column = stats.learned_sink_map[layer]
    return column.mean(axis=0) if head is None else column[head]


def map_for_display(z: np.ndarray, width: int, hide_first: bool, log: bool) -> np.ndarray:
    """Copy of a map with invisible (causally masked) cells and, optionally, the first column
    blanked; in log10 when ``log``."""
    z = z.astype(float).copy()
    if width == 1:
        z[np.triu_indices_from(z, k=1)] = np.nan
    if hide_first:
        z[:, 0] = np.nan
    return np.log10(np.clip(z, 1e-6, None)) if log else z


def attention_heatmap(stats: AttentionStats, tokens: tuple[str, ...], layer: int,
                      head: int | None = None, hide_first: bool = False, log: bool = False,
                      last_queries: int | None = None) -> go.Figure:
    """One layer's map (head mean by default), token strings on hover, the learned sink as a
    last column where the model has one; ``last_queries`` keeps only the last rows (to align
    variants on a shared suffix)."""
    z = map_for_display(layer_map(stats, layer, head), stats.bin_width, hide_first, log)
    rows = keys = labels = bin_labels(tokens, stats.bin_width)
    sink = learned_sink_column(stats, layer, head)
    if sink is not None:   # a column of its own, right of the keys: each row then sums to 1
        z = np.column_stack([z, np.log10(np.clip(sink, 1e-6, None)) if log else sink])
        labels = keys + ["learned sink"]
    if last_queries:
        z, rows = z[-last_queries:], rows[-last_queries:]
    who = "mean over heads" if head is None else f"head {head}"
    pooled = (f", pooled: {stats.bin_width} tokens per bin (mean over the bin's queries of the "
              "mass on its keys)") if stats.bin_width > 1 else ""
    hidden = ", first column hidden" if hide_first else ""
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=rows, colorscale="Viridis", hoverongaps=False,
        colorbar_title="log10 a" if log else "attention",
        hovertemplate="query %{y}<br>key %{x}<br>" + ("log10 a %{z:.2f}" if log else "a %{z:.3f}")
                      + "<extra></extra>"))
    fig.update_layout(title=f"Layer {stats.layer_ids[layer]}, {who}{pooled}{hidden}", height=640,
                      xaxis_title="key", yaxis_title="query", yaxis_autorange="reversed")
    fig.update_xaxes(**thinned_ticks(keys, also=labels[len(keys):]), tickangle=-60)
    fig.update_yaxes(**thinned_ticks(rows))
    return fig


def coarsen(z: np.ndarray, factor: int) -> np.ndarray:
    """Pool a [B, B] map by ``factor``: keys summed, queries averaged (rows still sum to 1)."""
    if factor == 1:
        return z
    bins = -(-z.shape[0] // factor)
    padded = np.full((bins * factor, bins * factor), np.nan)
    padded[:z.shape[0], :z.shape[1]] = z
    blocks = padded.reshape(bins, factor, bins, factor)
    return np.nanmean(np.nansum(blocks, axis=3), axis=1)


def all_layers_grid(stats: AttentionStats, hide_first: bool = False, log: bool = False,
                    cols: int = 6) -> go.Figure:
    """Small multiples: every layer's head-mean map, coarsened to at most SMALL_MAP_BINS."""
    rows = -(-stats.n_layers // cols)
    factor = -(-stats.maps.shape[-1] // SMALL_MAP_BINS)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"L{l}" for l in stats.layer_ids],
                        horizontal_spacing=0.02, vertical_spacing=0.04)
    for layer in range(stats.n_layers):
        z = map_for_display(coarsen(layer_map(stats, layer), factor), stats.bin_width * factor,
                            hide_first, log)
        fig.add_trace(go.Heatmap(z=z, coloraxis="coloraxis", hovertemplate=
                                 f"layer {stats.layer_ids[layer]}<br>query bin %{{y}}<br>key bin %{{x}}<br>%{{z:.3f}}<extra></extra>"),
                      row=layer // cols + 1, col=layer % cols + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    fig.update_layout(coloraxis_colorscale="Viridis", height=150 * rows + 60, margin_t=50,
                      title=f"All layers, mean over heads ({stats.bin_width * factor} token(s) per cell)")
    return fig


def position_heatmap(stats: AttentionStats, position: int, token: str) -> go.Figure:
    """Attention received by one position, per layer x head (mean over queries i >= position)."""
    z = stats.received[:, :, position]                                               # [layers, heads]
    fig = go.Figure(go.Heatmap(z=z, x=[f"h{h}" for h in range(stats.n_heads)], y=list(stats.layer_ids),
                               colorscale="Viridis",
                               zmin=0, zmax=1, colorbar_title="received",
                               hovertemplate="layer %{y}, %{x}<br>%{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"Attention received by position {position} ({plotly_text(repr(token))}), per layer "
                            "and head",
                      xaxis_title="head", yaxis_title="layer", height=520)
    fig.update_yaxes(type="category")    # one row per attention layer (a hybrid's ids have gaps)
    return fig


def norm_ratio_lines(norms: np.ndarray, tokens: tuple[str, ...], what: str, positions: int = 5,
                     layers=None) -> go.Figure:
    """Norm of each first position / the layer's median norm, per layer (x: ``layers``), on a log
    axis ticked at round numbers, the median token's 1x line labelled where it is."""
    ratio = norm_vs_median(norms, positions)                                         # [layers, positions]
    x = np.arange(len(ratio)) if layers is None else list(layers)
    fig = go.Figure([go.Scatter(x=x, y=ratio[:, p], mode="lines+markers", name=f"{p}: {plotly_text(quoted(tokens[p]))}",
                                hovertemplate="layer %{x}: %{y:.3g}× median<extra></extra>")
                     for p in range(ratio.shape[1])])
    ticks = log_ticks(ratio)
    fig.add_hline(y=1.0, line_dash="dot", line_color="#555")
    fig.add_annotation(x=1.0, xref="paper", xanchor="right", y=0.0, yref="y", yanchor="bottom",  # log10(1)
                       text="median token (1×)", showarrow=False, font_size=11)
    fig.update_layout(title=f"{what} norm of the first tokens / median token, per layer",
                      xaxis_title="layer", yaxis_title="× median", height=380)
    fig.update_yaxes(type="log", tickmode="array", tickvals=ticks, ticktext=[f"{t:,g}" for t in ticks])
    whole_layer_ticks(fig, x)
    return fig


def log_ticks(values: np.ndarray) -> list[float]:
    """Round ticks for a log axis over the finite positive ``values`` and 1: the powers of ten
    from the one at or below the smallest to the one at or above the largest, with 1-2-5 steps
    between them where the values span less than two decades, 1-1.5-2-3-5-7 within one (else a
    plot of values between 0.55 and 1.4 shows the single tick 1)."""
    seen = values[np.isfinite(values) & (values > 0)]
    lo, hi = min(seen.min(initial=1.0), 1.0), max(seen.max(initial=1.0), 1.0)
    decades = [float(10.0 ** e) for e in np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1)]
    if np.log10(hi / lo) >= 2:
        return decades
    steps = (1, 2, 5) if np.log10(hi / lo) >= 1 else (1, 1.5, 2, 3, 5, 7)
    return [m * d for d in decades for m in steps if m * d <= decades[-1]]


def entropy_lines(entropy_by_layer: np.ndarray, uniform_entropy, layers=None) -> go.Figure:
    """Mean attention entropy per layer (x: ``layers``, default 0..n-1), with the entropy uniform
    attention would have: one value, or [layers] values where sliding windows make them differ."""
    x = np.arange(len(entropy_by_layer)) if layers is None else list(layers)
    fig = go.Figure(go.Scatter(x=x, y=entropy_by_layer, mode="lines+markers", name="mean entropy"))
    uniform = np.atleast_1d(np.asarray(uniform_entropy, dtype=float))
    if np.ptp(uniform) > 0:
        fig.add_trace(go.Scatter(x=x, y=uniform, mode="lines", line_dash="dot", line_color="#555",
                                 name="uniform attention (each layer's window)"))
    else:
        fig.add_hline(y=float(uniform[0]), line_dash="dot", annotation_text="uniform attention")
    fig.update_layout(title="Attention entropy per layer (nats, mean over heads and queries)",
                      xaxis_title="layer", yaxis_title="nats", height=340)
    return whole_layer_ticks(fig, x)


def compare_sink_lines(labels: list[str], sinks: list[LayerSinks]) -> go.Figure:
    """Sink mass per layer of every variant on one chart."""
    fig = go.Figure([go.Scatter(x=list(s.layer_ids or range(len(s.sink_mass))), y=s.sink_mass,
                                mode="lines+markers",
                                name=label) for label, s in zip(labels, sinks)])
    fig.update_layout(title=f"Sink mass per layer (first {sinks[0].first_n} tokens)",
                      xaxis_title="layer", yaxis_title="sink mass", yaxis_tickformat=".0%", height=380)
    return fig


def compare_difference(labels: list[str], sinks: list[LayerSinks]) -> go.Figure:
    """Sink mass of each variant minus the first variant's, per layer."""
    base = sinks[0].sink_mass
    x = list(sinks[0].layer_ids or range(len(base)))
    fig = go.Figure([go.Bar(x=x, y=s.sink_mass - base, name=f"{label} − {labels[0]}")
                     for label, s in zip(labels[1:], sinks[1:])])
    fig.update_layout(title=f"Difference from {labels[0]} (percentage points)", xaxis_title="layer",
                      yaxis_title="Δ sink mass", yaxis_tickformat="+.0%", barmode="group", height=340)
    return fig


def sweep_lines(lengths: list[int], sink_mass: np.ndarray, first_n: int) -> go.Figure:
    """Sink mass vs context length (log x, ticked at the lengths), one line per layer coloured
    along a sequential scale (early layers dark, late ones light; the colour bar names them) and
    the mean over layers in red; sink_mass is [lengths, layers]."""
    layers = list(range(sink_mass.shape[1]))
    colors = sample_colorscale(LAYER_SCALE, np.linspace(0, 1, len(layers)))
    fig = go.Figure([go.Scatter(x=lengths, y=sink_mass[:, k], mode="lines", line=dict(color=colors[k], width=1.5),
                                name=f"layer {layer}", showlegend=False,
                                hovertemplate=f"layer {layer}<br>%{{x:,}} tokens: %{{y:.1%}}<extra></extra>")
                     for k, layer in enumerate(layers)])
    fig.add_trace(go.Scatter(x=[lengths[0]], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(color=[layers[0]], colorscale=LAYER_SCALE, cmin=layers[0], cmax=layers[-1],
                                         showscale=True, colorbar=dict(title="layer", thickness=14))))
    fig.add_trace(go.Scatter(x=lengths, y=np.nanmean(sink_mass, axis=1), mode="lines+markers",
                             name="mean over layers", line=dict(color="#d62728", width=4),
                             hovertemplate="mean over layers<br>%{x:,} tokens: %{y:.1%}<extra></extra>"))
    fig.update_layout(title=f"Sink mass (first {first_n} tokens) as the context grows, per layer",
                      xaxis_title="context length (tokens)", xaxis_type="log", yaxis_title="sink mass",
                      yaxis_tickformat=".0%", legend=LEGEND_ABOVE, margin_t=80, height=480)
    fig.update_xaxes(tickmode="array", tickvals=list(lengths), ticktext=[f"{n:,}" for n in lengths])
    return fig


def before_after_bars(labels: tuple[str, str], sinks: tuple[LayerSinks, LayerSinks]) -> go.Figure:
    """Sink mass per layer before and after a change, side by side."""
    fig = go.Figure([go.Bar(x=np.arange(len(s.sink_mass)), y=s.sink_mass, name=label)
                     for label, s in zip(labels, sinks)])
    fig.update_layout(title=f"Sink mass per layer (first {sinks[0].first_n} tokens), before and after",
                      xaxis_title="layer", yaxis_title="sink mass", yaxis_tickformat=".0%",
                      barmode="group", height=380)
    return fig


def kl_by_position(kl: np.ndarray, tokens: tuple[str, ...]) -> go.Figure:
    """KL divergence of each position's next-token distribution, before vs after (nats)."""
    fig = go.Figure(go.Bar(x=np.arange(len(kl)), y=kl, customdata=[repr(t) for t in tokens],
                           hovertemplate="position %{x} %{customdata}<br>KL %{y:.4f} nats<extra></extra>"))
    fig.update_layout(title="KL(before ‖ after) of the next-token distribution at each position",
                      xaxis_title="position", yaxis_title="nats", height=340)
    return fig


def rolling_mean(values: np.ndarray, width: int) -> np.ndarray:
    """Mean of the last ``width`` values at each index (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    return (sums[idx] - sums[np.maximum(0, idx - width)]) / np.minimum(idx, width)


def window_losses(curves: dict[str, np.ndarray], window: int, smooth: int = 32) -> go.Figure:
    """Per-token loss against position (rolling mean over ``smooth`` tokens), one line per setup."""
    fig = go.Figure([go.Scatter(x=np.arange(1, len(loss) + 1), y=rolling_mean(loss, smooth), name=name,
                                mode="lines") for name, loss in curves.items()])
    fig.add_vline(x=window, line_dash="dot", annotation_text="window full")
    fig.update_layout(title=f"Per-token loss by position (nats, rolling mean over {smooth} tokens)",
                      xaxis_title="position of the predicted token", yaxis_title="loss (nats)", height=420)
    return fig
