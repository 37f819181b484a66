"""Plotly figures of segments and openings: pure functions, numbers plotted as the engine gives them."""

import numpy as np
import plotly.graph_objects as go

from sinkviz.numbers.segments import LEARNED_SINK, Openings, SegmentShares
from sinkviz.output import figures
from sinkviz.output.figures import LEGEND_ABOVE

KIND_COLORS = {"sequence": "#4c78a8", "template": "#9aa5b1", "system": "#72b7b2", "user": "#4c78a8",
               LEARNED_SINK: "#54a24b"}
BLOCK_COLORS = ("#4c78a8", "#f58518", "#e45756", "#b279a2", "#eeca3b", "#ff9da6", "#9d755d", "#bab0ac")
OPENING_COLORS = {"sequence": "#9aa5b1", "system turn": "#72b7b2", "user text": "#d62728"}
TYPICAL_BAND = "#d4ecc9"   # light green: visible on Plotly's #E5ECF6 plot and on white


def segment_colors(shares: SegmentShares) -> list[str]:
    """One colour per segment: by kind; blocks take distinct colours in order."""
    kinds = [s.kind for s in shares.segments] + ([LEARNED_SINK] if len(shares.names) > len(shares.segments) else [])
    blocks = iter(BLOCK_COLORS * 8)
    return [next(blocks) if k == "block" else KIND_COLORS[k] for k in kinds]


def segment_share_bars(shares: SegmentShares, layers=None) -> go.Figure:
    """Stacked bars per layer (x: ``layers``, the model layer of each row; default 0..n-1): each
    segment's share of attention (they sum to 1); hover gives the segment's share of the tokens
    and its share under uniform attention."""
    layers = np.arange(shares.share.shape[0]) if layers is None else np.array(layers)
    fig = go.Figure()
    for s, (name, color) in enumerate(zip(shares.names, segment_colors(shares))):
        custom = np.stack([np.full(len(layers), shares.token_share[s]), shares.uniform[:, s]], -1)
        fig.add_trace(go.Bar(x=layers, y=shares.share[:, s], name=name, marker_color=color, customdata=custom,
                             hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.1%}} of attention<br>"
                                           "%{customdata[0]:.1%} of the tokens, %{customdata[1]:.1%} "
                                           "under uniform attention<extra></extra>"))
    fig.update_layout(barmode="stack", title="Share of attention per segment, per layer (mean over queries and heads)",
                      xaxis_title="layer", yaxis_title="share of attention", yaxis_tickformat=".0%",
                      yaxis_range=[0, 1.0001], legend=LEGEND_ABOVE, margin_t=80, height=420)
    return figures.whole_layer_ticks(fig, layers)


def opening_lines(opens: Openings, layers=None) -> go.Figure:
    """Opening mass per layer (x: ``layers``, default 0..n-1) of the sequence, the system turn and
    the user's text."""
    layers = np.arange(opens.mass.shape[0]) if layers is None else np.array(layers)
    fig = go.Figure([go.Scatter(x=layers, y=opens.mass[:, k], mode="lines+markers", name=name,
                                line_color=OPENING_COLORS.get(name, "#333"),
                                hovertemplate=f"{name}: first {len(opens.positions[k])} tokens<br>"
                                              "layer %{x}: %{y:.1%}<extra></extra>")
                     for k, name in enumerate(opens.names)])
    fig.update_layout(title=f"Attention on the first {opens.first_n} tokens of each part "
                            "(mean over the queries that can see them, and heads)",
                      xaxis_title="layer", yaxis_title="opening mass", yaxis_tickformat=".0%",
                      yaxis_range=[0, 1.04], legend=LEGEND_ABOVE, margin_t=80, height=380)
    return figures.whole_layer_ticks(fig, layers)


VARIANT_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2")


def compare_lines(labels: list[str], values: list[np.ndarray], what: str) -> go.Figure:
    """values: per variant, [layers] of the reading ``what``; one distinct colour per variant."""
    fig = go.Figure([go.Scatter(x=np.arange(len(v)), y=v, mode="lines+markers", name=label,
                                line_color=VARIANT_COLORS[i % len(VARIANT_COLORS)])
                     for i, (label, v) in enumerate(zip(labels, values))])
    fig.update_layout(title=f"{what} per layer", xaxis_title="layer", yaxis_title=what,
                      yaxis_tickformat=".0%", legend_orientation="h", height=380)
    return fig


def compare_difference(labels: list[str], values: list[np.ndarray], what: str) -> go.Figure:
    """Each variant's reading minus the first variant's, per layer, in its variant's colour."""
    base = values[0]
    fig = go.Figure([go.Bar(x=np.arange(len(base)), y=v - base, name=f"{label} − {labels[0]}",
                            marker_color=VARIANT_COLORS[(i + 1) % len(VARIANT_COLORS)])
                     for i, (label, v) in enumerate(zip(labels[1:], values[1:]))])
    fig.update_layout(title=f"Difference from {labels[0]} (percentage points): {what}", xaxis_title="layer",
                      yaxis_title="Δ", yaxis_tickformat="+.0%", barmode="group", height=340)
    return fig


def shared_suffix(token_ids: list[tuple[int, ...]]) -> int:
    """How many final tokens all variants share."""
    n = 0
    while n < min(map(len, token_ids)) and len({ids[-1 - n] for ids in token_ids}) == 1:
        n += 1
    return n


def aligned_rows(results) -> int | None:
    """Query rows to keep so the variants' heatmaps line up: the tokens they all end with (None: every
    row, where they share none or a map is pooled)."""
    suffix = shared_suffix([r.tokens.token_ids for r in results])
    return suffix if suffix and all(r.stats.bin_width == 1 for r in results) else None


def compare_heatmaps(labels: list[str], results, layer: int) -> list[go.Figure]:
    """One head-mean heatmap of row ``layer`` per variant, rows aligned by ``aligned_rows``."""
    rows = aligned_rows(results)
    out = []
    for label, r in zip(labels, results):
        fig = figures.attention_heatmap(r.stats, r.tokens.shown, layer, last_queries=rows)
        fig.update_layout(title=f"{label}: layer {r.stats.layer_ids[layer]}", height=480)
        out.append(fig)
    return out


def percentile_lines(judgements: dict, typical: tuple[float, float], layers=None) -> go.Figure:
    """judgements: reading name -> calibration.Judgement; each layer's percentile among the same
    layer's calibration values (x: ``layers``, default 0..n-1), with the typical band shaded."""
    fig = go.Figure()
    fig.add_hrect(y0=typical[0], y1=typical[1], fillcolor=TYPICAL_BAND, line_width=0, layer="below",
                  annotation_text="typical for this model", annotation_position="top left")
    n_layers = len(next(iter(judgements.values())).layer_percentiles) if judgements else 0
    x = np.arange(n_layers) if layers is None else np.array(layers)
    for k, (name, j) in enumerate(judgements.items()):
        fig.add_trace(go.Scatter(x=x, y=j.layer_percentiles, mode="lines+markers", name=name,
                                 line_color=VARIANT_COLORS[k % len(VARIANT_COLORS)], customdata=j.layer_values,
                                 hovertemplate="layer %{x}: %{customdata:.1%}, percentile %{y:.0f}<extra></extra>"))
    n = next(iter(judgements.values())).n_prompts if judgements else 0
    fig.update_layout(title=f"Percentile per layer among {n} calibration prompts on this model",
                      xaxis_title="layer", yaxis_title="percentile", yaxis_range=[0, 101], legend_orientation="h",
                      margin_t=60, height=340)
    return figures.whole_layer_ticks(fig, x)


LABEL_ROW_PX = 13     # height of a row of part names above a heatmap
PLOT_WIDTH_PX = 700   # the plot area of the large heatmap, roughly, for spacing the names


def mark_segments(fig: go.Figure, segments, bin_width: int) -> go.Figure:
    """Dashed lines on a heatmap (keys along x) where each part's spans start, named at the top;
    positions in bins of ``bin_width`` tokens (category index - 0.5 is the left edge of a cell).
    Names that would overlap go to the next row up (at most three rows)."""
    if len(segments) < 2:
        return fig
    starts = sorted((start / bin_width - 0.5, seg.name) for seg in segments for start, _ in seg.spans if start > 0)
    n_bins = max(len(fig.data[0].x if fig.data and fig.data[0].x is not None else ()), 1)
    px_per_bin = PLOT_WIDTH_PX / n_bins
    row_ends = [-1e9] * 3                                      # where each row's last name ends, in bins
    for x, name in starts:
        row = next((r for r, end in enumerate(row_ends) if end <= x), int(np.argmin(row_ends)))
        row_ends[row] = x + (len(name) * 6 + 8) / px_per_bin   # ~6 px a character at 10 px
        fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line_dash="dash",
                      line_color="white", line_width=1)
        fig.add_annotation(x=x, y=1.0, yref="paper", text=name, showarrow=False, xanchor="left",
                           yanchor="bottom", font_size=10, yshift=row * LABEL_ROW_PX)
    fig.update_layout(margin_t=max(fig.layout.margin.t or 100, 60 + 3 * LABEL_ROW_PX))
    return fig
    for seg in segments:
        for start, _ in seg.spans:
            if start == 0:
                continue
            x = start / bin_width - 0.5
            fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line_dash="dash",
                          line_color="white", line_width=1)
            fig.add_annotation(x=x, y=1.0, yref="paper", text=seg.name, showarrow=False, xanchor="left",
                               yanchor="bottom", font_size=10, textangle=-30)
    return fig
