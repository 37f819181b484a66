"""The one-file report: an analysis, a comparison or an audit as one HTML file that opens offline.

plotly.js is embedded once (``plotly.offline.get_plotlyjs``); each figure travels as its Plotly JSON
in an inert ``<script type="application/json">`` block (``<``, ``>`` and ``&`` written as \\u escapes,
so no text in it can end the block) and is drawn by ``Plotly.newPlot``. Every text a user gave
(prompt, system turn, tokens, a file's columns) is HTML-escaped, and the page's Content-Security-Policy
runs only its own two scripts and loads nothing from the network. The figures come from the builders
the pages use, called with the same arguments, so a report and its page show the same numbers.
"""

import base64
import hashlib
import html
import math
from datetime import datetime, timezone

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from sinkviz.flow.analysis import Analysis, Settings
from sinkviz.flow.audit import AuditRow
from sinkviz.flow.audit_table import BANDS, band, judged, most_unusual_first, table_rows
from sinkviz.numbers.calibration import TYPICAL, Calibration, judge_readings, judge_value, ordinal, sentences
from sinkviz.numbers.metrics import (Thresholds, deep_mean, layer_entropy, layer_sinks, norm_vs_median,
                                     uniform_entropies)
from sinkviz.numbers.readings import READINGS, compare_readings, reading_title
from sinkviz.numbers.segments import openings, segment_shares, segment_table, segments_of
from sinkviz.output import figures, segment_figures
from sinkviz.output.readable import quoted
from sinkviz.output.report import report_dict
from sinkviz.output.verdict import uniform_sentence, verdict

PROMPT_CHARS = 500        # an audit row shows this much of its prompt (the CSV has it all)
OPEN_TOKEN_TABLE = 256    # longer token tables start folded
DRAW = ("document.querySelectorAll('figure.chart').forEach(function (f) {"
        " var spec = JSON.parse(f.querySelector('script').textContent);"
        " Plotly.newPlot(f.querySelector('.plot'), spec.data, spec.layout,"
        " {displaylogo: false, responsive: true}); });")
WIDE = """
main { max-width: 1320px; }
@page { size: A4 landscape; }
@media print { main { width: 1320px; zoom: 0.78; } }
"""
STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1f2328; margin: 0; }
main { max-width: 960px; margin: 0 auto; padding: 16px 16px 48px; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 18px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 15px; margin: 20px 0 4px; }
pre.prompt { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f8fa; border: 1px solid #d0d7de;
             padding: 10px; max-height: 420px; overflow: auto; font-size: 13px; }
.verdict { background: #eef4fb; border-left: 4px solid #4c78a8; padding: 8px 12px; margin: 8px 0; }
.verdict.model { background: #edf7ed; border-left-color: #54a24b; }
table { border-collapse: collapse; font-size: 12.5px; margin: 8px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { overflow-wrap: break-word; }
table.audit td:first-child { min-width: 260px; }
table.meta th { width: 230px; font-weight: 600; }
.sev-critical { color: #d62728; font-weight: 600; } .sev-warning { color: #c45a00; font-weight: 600; }
figure.chart { margin: 12px 0; break-inside: avoid; }
.note, figcaption { color: #57606a; font-size: 12.5px; }
dt { font-weight: 600; margin-top: 6px; } dd { margin-left: 16px; }
@page { size: A4; margin: 12mm; }
@media print {
  main { width: 960px; max-width: none; zoom: 0.73; padding: 0; }
  pre.prompt { max-height: none; overflow: visible; }
  h2, h3 { break-after: avoid; }
  tr { break-inside: avoid; }
  thead { display: table-header-group; }
  .modebar-container { display: none !important; }
}
"""
METHOD = """
<h2>Method</h2>
<p class="note">Layer l, head h, query i, key j, attention a[l,h,i,j] (each row sums to 1; a causal model's
query i sees keys j ≤ i), L tokens.</p>
<dl>
<dt>Sink mass (first N tokens)</dt><dd>m_N[l,h] = mean over queries i ≥ N of Σ_{j&lt;N} a[l,h,i,j];
a layer's value is the mean over its heads.</dd>
<dt>Uniform baseline and ratio</dt><dd>b_N = mean over i ≥ N of N/(i+1) (N/L for a bidirectional model):
m_N if every query spread its attention evenly over the keys it sees. Ratio to uniform = m_N / b_N; it
cannot exceed 1/b_N, so the flag means little on short prompts.</dd>
<dt>Severity (fixed thresholds)</dt><dd>In layers beyond the first two: warning when m_N reaches the warning
threshold, critical at the critical one (the settings above).</dd>
<dt>Against this model</dt><dd>A reading's mean over layers ≥ 2, placed among the same value of the P shipped,
varied prompts (51, less those longer than the model takes) on the same model: percentile = 100 × (#{v &lt; x} +
½ #{v = x}) / P; between the 5th and the
95th percentile it is typical for this model.</dd>
<dt>Opening mass</dt><dd>The attention on a part's first N tokens, averaged over every query that can see
them (from the part's first token on), and over heads.</dd>
<dt>Segment share</dt><dd>The mean over every query of the attention it gives to a part's tokens; all parts
(and a learned sink) sum to 100 % in every layer. Its uniform share is the same under even attention.</dd>
<dt>Sink rate (Gu et al., ICLR 2025)</dt><dd>100 × the share of (layer, head) pairs whose attention to
position 0, α_0 = mean over queries of a[l,h,i,0], exceeds ε.</dd>
<dt>Received attention</dt><dd>Of key j: mean over queries i ≥ j of a[l,h,i,j].</dd>
<dt>Entropy</dt><dd>−Σ_j a ln a of a query's row, in nats, averaged over queries and heads.</dd>
<dt>Heatmaps</dt><dd>The full map up to the map size; above it, bins holding the mean over the bin's queries
of the mass on the bin's keys (rows still sum to 1). Blank cells: keys a causal query cannot see.</dd>
<dt>Norms</dt><dd>The hidden-state and value-vector norm of each first token over its layer's median
token's.</dd>
</dl>
<p class="note">Attention weights show where probability mass goes, not the causal story of the output. Every
statistic is tested against transformers' eager attention in float64.</p>
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def script_json(text: str) -> str:
    """JSON safe inside a <script> block: <, > and & as \\u escapes (the same JSON once parsed)."""
    for char, code in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                       ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, code)
    return text


def chart(fig: go.Figure, caption: str = "") -> str:
    """A figure as its Plotly JSON beside the div it is drawn in."""
    note = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (f'<figure class="chart"><div class="plot"></div><script type="application/json">'
            f"{script_json(fig.to_json())}</script>{note}</figure>")


FORMATS = {"%": "{:.1%}", "×": "{:.1f}×", "×2": "{:.2f}×", "pts": "{:+.1f} pts", "f3": "{:.3f}", "f0": "{:.0f}"}


def cell(value, fmt: str = "") -> str:
    """One table cell: numbers in FORMATS[fmt] ('%': a fraction as percent), NaN and None as '–',
    booleans as 'yes' or nothing, text escaped."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return '<td class="num">–</td>'
    if isinstance(value, (bool, np.bool_)):
        return f"<td>{'yes' if value else ''}</td>"
    if fmt:
        return f'<td class="num">{FORMATS[fmt].format(value)}</td>'
    if isinstance(value, (int, np.integer, float, np.floating)):
        return f'<td class="num">{value}</td>'
    css = f' class="sev-{value}"' if value in ("critical", "warning") else ' class="text"'
    return f"<td{css}>{esc(value)}</td>"


def table(columns: dict[str, list], formats: dict[str, str] | None = None, css: str = "") -> str:
    """An HTML table of ``columns`` (name -> values, all the same length)."""
    formats = formats or {}
    head = "".join(f"<th>{esc(name)}</th>" for name in columns)
    body = "".join("<tr>" + "".join(cell(v, formats.get(name, "")) for name, v in zip(columns, row)) + "</tr>"
                   for row in zip(*columns.values()))
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def facts(rows: dict[str, str]) -> str:
    """A two-column table of label -> text (both escaped)."""
    return '<table class="meta">' + "".join(f"<tr><th>{esc(k)}</th><td class=\"text\">{esc(v)}</td></tr>"
                                            for k, v in rows.items()) + "</table>"


def when(timestamp: float | datetime) -> str:
    moment = timestamp if isinstance(timestamp, datetime) else datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def csp_hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


def document(title: str, body: str, with_charts: bool, wide: bool = False) -> str:
    """The whole file: styles (``wide``: a wider page, printed landscape), ``body``, and plotly.js
    once plus the drawing script where there are charts. Its Content-Security-Policy allows those
    two scripts only and no network at all."""
    scripts = [get_plotlyjs().replace("</script", "<\\/script"), DRAW] if with_charts else []
    allowed = " ".join(csp_hash(s) for s in scripts) or "'none'"
    policy = f"default-src 'none'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:; script-src {allowed}"
    tags = "".join(f"<script>{s}</script>" for s in scripts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}{WIDE if wide else ''}</style></head>"
            f"<body><main>{body}{METHOD}</main>{tags}</body></html>\n")


def model_facts(model, created: float | None, generated: datetime) -> dict[str, str]:
    """Model, device and dates (``model``: a models.ModelInfo, or None where unknown)."""
    out = {}
    if model is not None:
        out["Model"] = model.label if model.label == model.model_id else f"{model.label} · {model.model_id}"
        out["Architecture"] = (f"{model.architecture}, {model.n_layers} layers, {model.n_heads} heads "
                               f"({model.n_kv_heads} key/value heads)")
        out["Device"] = f"{model.device} · {model.dtype}"
    if created is not None:
        out["Computed"] = when(created)
    out["Report made"] = when(generated)
    return out


def threshold_text(t: Thresholds) -> str:
    return (f"warning at {t.warning:.0%}, critical at {t.critical:.0%} of sink mass in layers ≥ "
            f"{t.shallow_layers}; layers above {t.ratio_flag:g}× uniform flagged")


def template_facts(settings: Settings, templated: bool | None = None) -> dict[str, str]:
    """The template choice and the system turn; ``templated``: whether the template was applied (a model
    without one takes the raw prompt), where known."""
    if settings.use_template and templated is False:
        return {"Chat template": "off: this model has no chat template, the raw prompt"}
    if not settings.use_template:
        return {"Chat template": "off: the raw prompt"}
    return {"Chat template": "on: the prompt is a user turn",
            "System turn": "the template's default" if settings.system is None else settings.system}


def strongest(sinks, stats, thresholds: Thresholds) -> int:
    """Row of the deep layer with the highest sink mass: the layer the verdict names."""
    deep = np.array(stats.layer_ids) >= thresholds.shallow_layers
    return int(np.where(deep, sinks.sink_mass, -1.0).argmax())


def analysis_report(a: Analysis, first_n: int = 3, epsilon: float = 0.3, thresholds: Thresholds = Thresholds(),
                    blocks: str | None = None, calibration: Calibration | None = None,
                    generated: datetime | None = None) -> str:
    """Everything Analyze shows for ``a`` as one HTML file: prompt, model, settings, both verdicts,
    every chart (the large heatmap of the verdict's layer, mean over heads), the per-layer, segment,
    position-0 and token tables, and the method. ``blocks``: the segment rule (None: turns only)."""
    report = report_dict(a, first_n, epsilon, thresholds, blocks)
    sinks = layer_sinks(a.stats, first_n, thresholds)
    layer = strongest(sinks, a.stats, thresholds)
    settings = {"Sink": f"the first {first_n} tokens (mean over queries i ≥ {first_n}, then heads)",
                **template_facts(a.settings, a.tokens.templated),
                "Segments": f"blocks: {blocks}" if blocks else "turns only",
                "Thresholds": threshold_text(thresholds), "Sink-rate ε": f"{epsilon:g}",
                "Maps": f"full L × L up to {a.settings.map_size} tokens; here {a.stats.bin_width} token(s) per cell",
                "Large heatmap": f"layer {a.stats.layer_ids[layer]} (the verdict's), mean over heads"}
    body = [f"<h1>Attention sinks in one prompt</h1><p class=\"note\">sinkviz report · key {esc(a.key)}</p>",
            facts({**model_facts(a.model, a.created, generated or datetime.now(timezone.utc)),
                   "Tokens": f"{a.stats.n_tokens:,}" + (" (template included)" if a.tokens.templated else "")}),
            "<h2>Prompt</h2>", f'<pre class="prompt">{esc(a.prompt)}</pre>',
            "<h2>Settings</h2>", facts(settings),
            verdict_section(a, sinks, report, calibration, first_n, thresholds),
            bars_section(a, sinks, report, calibration, first_n, thresholds),
            segments_section(a, blocks, first_n, thresholds),
            heatmaps_section(a, layer), position0_section(a), entropy_section(a), tokens_section(a, report)]
    return document(f"sinkviz report: {a.prompt[:60]}", "".join(body), with_charts=True)


def verdict_section(a: Analysis, sinks, report: dict, cal, first_n: int, thresholds: Thresholds) -> str:
    """Both readings of severity and the page's key numbers."""
    out = ["<h2>Verdict</h2>"]
    if cal is not None:
        out.append('<div class="verdict model"><b>Against this model.</b> '
                   + esc(" ".join(sentences(cal, a, first_n, thresholds))) + "</div>")
    else:
        out.append('<p class="note">Not judged against this model (its calibration was not made).</p>')
    out.append(f'<div class="verdict"><b>By the fixed thresholds.</b> '
               f"{esc(verdict(sinks, a.stats, a.tokens.shown, a.tokens.special, thresholds))}</div>")
    worst = strongest(sinks, a.stats, thresholds)
    numbers = {"Position 0": f"{quoted(a.tokens.shown[0])} ({'special' if a.tokens.special[0] else 'text'} token)",
               f"Sink rate (ε = {report['epsilon']:g})": f"{report['sink_rate']:.1f}%",
               f"Strongest layer (≥ {thresholds.shallow_layers})":
                   f"layer {a.stats.layer_ids[worst]}: {sinks.sink_mass[worst]:.1%} on the first {first_n}"}
    opens = openings(a.stats, segments_of(a.tokens), first_n)
    if a.tokens.templated and "user text" in opens.names:
        k = opens.names.index("user text")
        numbers[f"Your text's first {first_n} tokens"] = (
            f"{deep_mean(opens.mass[:, k], thresholds):.1%} (mean over layers ≥ {thresholds.shallow_layers}): "
            + " · ".join(quoted(a.tokens.shown[p]) for p in opens.positions[k]))
    return "".join(out) + facts(numbers)


def bars_section(a: Analysis, sinks, report: dict, cal, first_n: int, thresholds: Thresholds) -> str:
    out = ["<h2>Sink mass per layer</h2>",
           chart(figures.sink_bars(sinks, thresholds),
                 uniform_sentence(sinks, a.stats))]
    if cal is not None:
        out.append(chart(segment_figures.percentile_lines(judge_readings(cal, a, first_n, thresholds), TYPICAL,
                                                          a.stats.layer_ids)))
    rows = report["layers"]
    columns = {"layer": [r["layer"] for r in rows], "sink mass": [r["sink_mass"] for r in rows],
               "× uniform": [r["ratio_to_uniform"] for r in rows], "flagged": [r["flagged"] for r in rows],
               "severity": [r["severity"] for r in rows], "entropy (nats)": [r["entropy_nats"] for r in rows],
               "top sink": [f"{r['top_sink_position']}: {quoted(report['tokens_readable'][r['top_sink_position']])}"
                            for r in rows],
               "received by top sink": [r["top_sink_received"] for r in rows]}
    if report["learned_sink"]:
        columns["learned sink"] = [r["learned_sink"] for r in rows]
    formats = {"sink mass": "%", "× uniform": "×", "entropy (nats)": "f3", "received by top sink": "%",
               "learned sink": "%"}
    return "".join(out) + "<h3>Per layer</h3>" + table(columns, formats)


def segments_section(a: Analysis, blocks: str | None, first_n: int, thresholds: Thresholds) -> str:
    segs = segments_of(a.tokens, blocks)
    shares = segment_shares(a.stats, segs)
    return ("<h2>Segments</h2>" + chart(segment_figures.segment_share_bars(shares, a.stats.layer_ids))
            + table(segment_table(shares, a.tokens, thresholds.shallow_layers),
                    {"share of tokens": "%", "uniform share": "%", "attention share": "%", "× uniform": "×"})
            + f'<p class="note">Table: mean over layers ≥ {thresholds.shallow_layers}.</p>'
            + chart(segment_figures.opening_lines(openings(a.stats, segs, first_n), a.stats.layer_ids)))


def heatmaps_section(a: Analysis, layer: int) -> str:
    big = figures.attention_heatmap(a.stats, a.tokens.shown, layer)
    segment_figures.mark_segments(big, segments_of(a.tokens), a.stats.bin_width)
    return "<h2>Heatmaps</h2>" + chart(big) + chart(figures.all_layers_grid(a.stats))


def position0_section(a: Analysis) -> str:
    stats, tokens = a.stats, a.tokens.shown
    first = min(5, stats.n_tokens)
    columns = {"position": list(range(first)), "id": list(a.tokens.token_ids[:first]), "token": list(tokens[:first]),
               "special": list(a.tokens.special[:first]),
               "received (mean over layers, heads)": list(stats.received[:, :, :first].mean(axis=(0, 1))),
               "hidden norm × median": list(norm_vs_median(stats.hidden_norm, first).mean(axis=0)),
               "value norm × median": list(norm_vs_median(stats.value_norm, first).mean(axis=0))}
    return ("<h2>Position-0 inspector</h2>"
            + table(columns, {"received (mean over layers, heads)": "f3", "hidden norm × median": "f3",
                              "value norm × median": "f3"})
            + chart(figures.position_heatmap(stats, 0, tokens[0]))
            + chart(figures.norm_ratio_lines(stats.hidden_norm, tokens, "Hidden-state", first, stats.layer_ids))
            + chart(figures.norm_ratio_lines(stats.value_norm, tokens, "Value-vector", first, stats.layer_ids)))


def entropy_section(a: Analysis) -> str:
    return "<h2>Entropy</h2>" + chart(figures.entropy_lines(layer_entropy(a.stats), uniform_entropies(a.stats),
                                                             a.stats.layer_ids))


def tokens_section(a: Analysis, report: dict) -> str:
    """Every token: position, id, readable text, special, its part, attention received."""
    part = [""] * a.stats.n_tokens
    for p in report["segments"]["parts"]:
        for start, stop in p["spans"]:
            part[start:stop] = [p["name"]] * (stop - start)
    columns = {"position": list(range(a.stats.n_tokens)), "id": list(a.tokens.token_ids), "token": list(a.tokens.shown),
               "special": list(a.tokens.special), "part": part,
               "received (mean over layers, heads)": list(a.stats.received.mean(axis=(0, 1)))}
    folded = "" if a.stats.n_tokens <= OPEN_TOKEN_TABLE else " (click to open)"
    return (f"<h2>Tokens</h2><details{' open' if not folded else ''}><summary>{a.stats.n_tokens:,} tokens{folded}"
            f"</summary>{table(columns, {'received (mean over layers, heads)': 'f3'})}</details>")


def compare_report(results: list[Analysis], first_n: int = 3, reading: str = "user",
                   calibration: Calibration | None = None, layer: int | None = None,
                   thresholds: Thresholds = Thresholds(), generated: datetime | None = None) -> str:
    """Compare's page as one HTML file: the variants ranked by ``reading`` (difference from A, ratio,
    percentile), their charts and heatmaps of row ``layer`` (default: A's strongest), and each
    variant's prompt and fixed-threshold verdict."""
    readings = compare_readings(results, first_n, reading, thresholds)
    labels = [v.label for v in readings]
    first = results[0]
    if layer is None:
        layer = strongest(layer_sinks(first.stats, first_n, thresholds), first.stats, thresholds)
    what = reading_title(reading, first_n)
    settings = {"Reading": READINGS[reading].replace("N", str(first_n)),
                "Value": f"mean over layers ≥ {thresholds.shallow_layers}", **template_facts(first.settings, first.tokens.templated),
                "Thresholds": threshold_text(thresholds), "Heatmaps": f"layer {first.stats.layer_ids[layer]}"}
    body = [f"<h1>Opening variants compared</h1><p class=\"note\">sinkviz report · {len(results)} variants</p>",
            facts(model_facts(first.model, max(r.created for r in results), generated or datetime.now(timezone.utc))),
            "<h2>Settings</h2>", facts(settings),
            f"<h2>Ranked by {esc(READINGS[reading].replace('N', str(first_n)))}</h2>",
            ranking_table(readings, calibration, reading, first_n, thresholds),
            chart(segment_figures.compare_lines(labels, [v.per_layer for v in readings], what)),
            chart(segment_figures.compare_difference(labels, [v.per_layer for v in readings], what)),
            "<h2>Heatmaps</h2>"]
    rows = segment_figures.aligned_rows(results)
    if rows:
        body.append(f'<p class="note">Rows: the {rows} query tokens all variants end with, aligned; columns: '
                    "every key.</p>")
    body += [chart(fig) for fig in segment_figures.compare_heatmaps(labels, results, layer)]
    body.append("<h2>Variants</h2>")
    for label, r in zip(labels, results):
        sinks = layer_sinks(r.stats, first_n, thresholds)
        body += [f"<h3>Variant {esc(label)} · {r.stats.n_tokens} tokens · key {esc(r.key)}</h3>",
                 f'<pre class="prompt">{esc(r.prompt)}</pre>',
                 f'<div class="verdict"><b>By the fixed thresholds.</b> '
                 f"{esc(verdict(sinks, r.stats, r.tokens.shown, r.tokens.special, thresholds))}</div>"]
    return document(f"sinkviz report: {len(results)} opening variants", "".join(body), with_charts=True)


def ranking_table(readings, cal, reading: str, first_n: int, thresholds: Thresholds) -> str:
    ranked = sorted(readings, key=lambda v: -v.mean)
    columns = {"rank": list(range(1, len(ranked) + 1)), "variant": [v.label for v in ranked],
               "value": [v.mean for v in ranked], "− A": [100 * v.diff for v in ranked],
               "× A": [v.ratio for v in ranked], "measures": [v.opening for v in ranked]}
    if cal is not None:
        judged_values = [judge_value(cal, v.mean, reading, first_n, thresholds) for v in ranked]
        columns["against this model"] = [f"{ordinal(p)} percentile, {text}" for p, text in judged_values]
    return table(columns, {"value": "%", "− A": "pts", "× A": "×2"})


def audit_report(rows: list[AuditRow], extras: list[dict[str, str]], settings: Settings, first_n: int = 3,
                 reading: str = "user", calibration: Calibration | None = None, model=None,
                 audited: int | None = None, filters: str = "", generated: datetime | None = None) -> str:
    """An audit as one HTML file: model and settings, the severity and percentile summary, and one table
    row per prompt (most unusual first) with the file's own columns and the key numbers; no charts, so
    no plotly.js. ``audited``: how many rows the audit had when ``rows`` is a filtered part."""
    marks = judged(rows, calibration, reading, first_n)
    pairs = most_unusual_first(list(zip(rows, marks)))
    scope = f"{len(rows):,} prompts" + (f" of {audited:,} audited ({filters})" if audited is not None else "")
    setup = {"Reading": READINGS[reading].replace("N", str(first_n)) + ", mean over layers ≥ 2",
             "Against this model": f"percentile among {calibration.n_prompts} calibration prompts (typical: "
                                   f"{TYPICAL[0]:.0f}th–{TYPICAL[1]:.0f}th)" if calibration else "not judged",
             **template_facts(settings), "Thresholds": threshold_text(Thresholds())}
    body = [f"<h1>Prompt audit</h1><p class=\"note\">sinkviz report · {esc(scope)}</p>",
            facts(model_facts(model, None, generated or datetime.now(timezone.utc))),
            "<h2>Settings</h2>", facts(setup), "<h2>Summary</h2>", audit_summary(rows, marks),
            "<h2>Prompts</h2>",
            f'<p class="note">Highest percentile first. Prompts longer than {PROMPT_CHARS} characters are cut '
            "(the CSV download has them whole); ↵ marks a line break.</p>", audit_table(pairs, extras, settings)]
    return document(f"sinkviz audit report: {scope}", "".join(body), with_charts=False, wide=True)


def audit_summary(rows: list[AuditRow], marks: list[dict]) -> str:
    """Counts per fixed-threshold severity and per band against the model, and the reading's spread."""
    severities = [r.severity or "error" for r in rows]
    bands = [band(m["percentile"]) for m in marks]
    values = np.array([m["reading"] for m in marks], dtype=float)
    values = values[np.isfinite(values)]
    levels = ["critical", "warning", "ok", "error"]
    spread = (f"median {np.median(values):.1%}, range {values.min():.1%} to {values.max():.1%}" if values.size
              else "no prompt has numbers")
    return (table({"severity (fixed)": levels, "prompts": [severities.count(s) for s in levels]})
            + table({"against this model": list(BANDS), "prompts": [bands.count(b) for b in BANDS]})
            + facts({"Reading over the prompts": spread}))


def audit_table(pairs, extras: list[dict[str, str]], settings: Settings) -> str:
    shown = table_rows(pairs, extras, settings.use_template)
    for (r, _), row in zip(pairs, shown):
        if len(r.prompt) > PROMPT_CHARS:
            row["prompt"] = row["prompt"][:PROMPT_CHARS] + f" … ({len(r.prompt):,} characters)"
    columns = {name: [row[name] for row in shown] for name in (shown[0] if shown else {"prompt": None})}
    percent = ("reading", "sink mass (worst layer)", "share: template", "share: system", "share: your text")
    return table(columns, {**dict.fromkeys(percent, "%"), "percentile": "f0", "× uniform": "×"}, css="audit")
