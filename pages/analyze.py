"""Analyze: one prompt -> sink bars, heatmaps, position-0 inspector, entropy, verdict, export."""

import json

import numpy as np
import streamlit as st

from pages.common import (EXAMPLES, URL_PROMPT_LIMIT, device_dtype_pickers, first_n_from_params, guarded,
                          kept_figure, model_picker, open_stored, run_analysis, settings_from_params,
                          settings_to_params, step_progress, store, threshold_inputs)
from sinkviz.numbers.calibration import (TYPICAL, calibrate, calibration_key, calibration_prompts, judge_readings,
                                         load_calibration, sentences)
from sinkviz.output import figures, segment_figures
from sinkviz.flow.analysis import Analysis, Settings
from sinkviz.errors import SinkvizError
from sinkviz.output.export import layers_csv, metadata, npz_bytes
from sinkviz.output.html_report import analysis_report
from sinkviz.numbers.metrics import deep_mean, layer_entropy, layer_sinks, norm_vs_median, sink_rate, uniform_entropy
from sinkviz.output.readable import quoted
from sinkviz.numbers.segments import BLOCK_RULES, openings, segment_shares, segment_table, segments_of
from sinkviz.output.report import report_dict
from sinkviz.output.verdict import verdict, verdict_layer

TABS = ["Sink mass per layer", "Segments", "Heatmaps", "Position-0 inspector", "Entropy", "Tokens", "Export"]
MAP_SIZES = [32, 64, 128, 192, 256]
# Every widget starts from the URL (a shared link, or the last analysis of this session) through
# its default value, not through st.session_state: Streamlit drops widget keys that the browser
# did not report when it sees a page change, and a seeded widget then fell to its minimum.
params = st.query_params
url_settings = settings_from_params(params)


def fill_example() -> None:
    choice = st.session_state.an_example
    if choice in EXAMPLES:
        st.session_state.an_prompt = EXAMPLES[choice]


if not st.session_state.get("an_ready"):  # this session's first run here, or open_in_analyze
    st.session_state.update(an_ready=True, an_auto=("prompt" in params or "key" in params))

st.title("Analyze a prompt")
with st.container(border=True):
    model = model_picker("an", url_settings.model)
    st.selectbox("Example prompts", ["(your own)"] + list(EXAMPLES), key="an_example", on_change=fill_example)
    prompt = st.text_area("Prompt", params.get("prompt", EXAMPLES["Prompt A (seed 003)"]), key="an_prompt",
                          height=140)
    c1, c2, c3 = st.columns([1, 2, 1])
    use_template = c1.toggle("Chat template", url_settings.use_template, key="an_template",
                             help="Wrap the prompt as a user turn of the model's chat template; "
                                  "its own tokens are analysed too.")
    first_n = c2.slider("Sink = the first N tokens", 1, 8, first_n_from_params(params), key="an_first_n")
    run = c3.button("Analyze", type="primary", use_container_width=True)
    with st.expander("More settings"):
        system = st.text_input("System turn (chat template only; empty = the template's default)",
                               url_settings.system or "", key="an_system")
        map_size = st.select_slider("Full L × L maps up to (tokens; pooled above)", MAP_SIZES,
                                    url_settings.map_size if url_settings.map_size in MAP_SIZES
                                    else Settings().map_size, key="an_map")
        device, dtype = device_dtype_pickers("an", None, None)
        thresholds = threshold_inputs("an")
        epsilon = st.number_input("Sink-rate epsilon (Gu et al.)", 0.01, 0.99, 0.3, 0.05, key="an_eps")

try:
    settings = Settings(model=model, use_template=use_template, system=system.strip() or None,
                        map_size=map_size, device=device, dtype=dtype)
except SinkvizError as err:
    st.error(str(err))
    settings = Settings()

result: Analysis | None = None
if run or st.session_state.pop("an_auto", False):
    stored = open_stored(params["key"]) if (not run and "key" in params) else None
    result = stored or run_analysis(prompt, settings)
    if result is not None:
        st.session_state.an_key = result.key
        shared = {**settings_to_params(result.settings), "n": str(first_n), "key": result.key}
        if len(result.prompt) <= URL_PROMPT_LIMIT:
            shared["prompt"] = result.prompt
        st.query_params.from_dict(shared)
elif st.session_state.get("an_key"):
    result = open_stored(st.session_state.an_key)


def render(a: Analysis) -> None:
    try:
        sinks = layer_sinks(a.stats, first_n, thresholds)
    except SinkvizError as err:
        st.error(str(err))
        return
    stats, tokens = a.stats, a.tokens.shown
    deep = np.array(stats.layer_ids) >= thresholds.shallow_layers
    strongest = int(np.where(deep, sinks.sink_mass, -1).argmax())
    opens = openings(stats, segments_of(a.tokens), first_n)
    user = "user text" in opens.names and a.tokens.templated
    m = st.columns(5 if user else 4)
    m[0].metric("Tokens", stats.n_tokens, help="including template tokens" if a.tokens.templated else None)
    m[1].metric("Position 0", repr(tokens[0]), "special token" if a.tokens.special[0] else "text token",
                delta_color="off", delta_arrow="off")
    m[2].metric(f"Sink rate (ε = {epsilon:g})", f"{sink_rate(stats, epsilon):.1f} %",
                help="Gu et al.: share of (layer, head) pairs whose attention to position 0 exceeds ε")
    m[3].metric(f"Strongest layer (≥ {thresholds.shallow_layers})", f"L{stats.layer_ids[strongest]}",
                f"{sinks.sink_mass[strongest]:.0%} on first {first_n}", delta_color="off", delta_arrow="off")
    if user:
        k = opens.names.index("user text")
        m[4].metric(f"Your text's first {first_n} tokens", f"{deep_mean(opens.mass[:, k], thresholds):.1%}",
                    " · ".join(quoted(tokens[p]) for p in opens.positions[k]), delta_color="off", delta_arrow="off",
                    help=f"Mean over layers ≥ {thresholds.shallow_layers} of the attention that the queries able to "
                         "see your text's opening give to it (Segments tab). Position 0 is the template's.")
    render_baseline(a)
    st.info("**By seed 000's fixed thresholds.** " + verdict(sinks, stats, tokens, a.tokens.special, thresholds))
    st.caption(f"{a.model.label} · {a.model.architecture} · {a.model.device} · {a.model.dtype} · "
               f"key {a.key}" + (" · from the result store" if a.cached else ""))
    if a.model.eager_attention:
        st.caption("This model computes attention its own way; sinkviz takes its eager attention maps "
                   "(output_attentions), exactly, but they exist all at once, so the memory guard allows "
                   "shorter prompts here, and value-vector norms are not available.")
    if stats.layer_kinds:
        st.caption("Layers without softmax attention, left out of every chart and table: " + ", ".join(
            f"{i} ({kind})" for i, kind in enumerate(stats.layer_kinds) if kind != "attention"))
    sections = [lambda: render_bars(a, sinks), lambda: render_segments(a), lambda: render_heatmaps(a, sinks), lambda: render_position0(a),
                lambda: render_entropy(a), lambda: render_tokens(a), lambda: render_export(a)]
    for tab, draw in zip(st.tabs(TABS, key="an_tab", on_change="rerun"), sections):
        if tab.open:  # only the open tab is computed and sent to the browser
            with tab:
                draw()


def render_baseline(a: Analysis) -> None:
    """The headline: this prompt against what is normal for this model (its calibration)."""
    cal = guarded(lambda: load_calibration(a.settings, store()), "Loading the calibration")
    if cal is None and st.button(f"Judge against this model (runs {len(calibration_prompts())} shipped prompts once)",
                                 key="an_calibrate"):
        bar = st.progress(0.0, text="calibrating …")
        cal = guarded(lambda: calibrate(a.settings, store(), progress=step_progress(bar, "calibration prompt")),
                      "Calibration")
        bar.empty()
    if cal is not None:
        st.success("**Against this model.** " + " ".join(sentences(cal, a, first_n, thresholds)))
        st.session_state["an_calibration"] = cal
    else:
        st.caption("Not yet judged against this model: the button runs a shipped set of varied prompts once and "
                   "keeps their distribution, so each reading gets a percentile (Method page).")


def render_percentiles(a: Analysis) -> None:
    """Each layer's reading as a percentile of the same layer's calibration values."""
    cal = st.session_state.get("an_calibration")
    if cal is None or cal.key != guarded(lambda: calibration_key(a.settings), "Calibration"):
        return
    st.plotly_chart(segment_figures.percentile_lines(judge_readings(cal, a, first_n, thresholds), TYPICAL),
                    key="an_percentiles")


def render_bars(a: Analysis, sinks) -> None:
    st.plotly_chart(kept_figure(bars_figure, a, first_n, thresholds), key="an_bars")
    render_percentiles(a)
    st.caption(f"Averaged over queries i ≥ {first_n} (each query's attention to the first {first_n} "
               f"tokens), then over heads. Uniform attention would give {sinks.baseline:.1%}; the "
               f"largest possible ratio at this length is {sinks.max_ratio:.1f}×.")
    windows = a.stats.windows
    if any(windows):
        st.warning(f"Layers {[l for l, w in enumerate(windows) if w]} use a sliding window of "
                   f"{max(w for w in windows if w)} tokens: queries further away cannot see position 0 there.")


BLOCK_CHOICES = {"turns only": None, **{f"blocks: {rule}": rule for rule in BLOCK_RULES}}


def render_segments(a: Analysis) -> None:
    choice = st.selectbox("Parts of the sequence", list(BLOCK_CHOICES), key="an_blocks",
                          help="Template, system turn and user turn; or the user's text cut into blocks. "
                               + " ".join(f"{rule}: {text}." for rule, text in BLOCK_RULES.items()))
    segs = segments_of(a.tokens, BLOCK_CHOICES[choice])
    shares = segment_shares(a.stats, segs)
    st.plotly_chart(kept_figure(segments_figure, a, BLOCK_CHOICES[choice]), key="an_segments")
    st.dataframe(segment_table(shares, a.tokens, thresholds.shallow_layers),
                 hide_index=True, key="an_segment_table",
                 column_config={c: st.column_config.NumberColumn(format="percent")
                                for c in ("share of tokens", "uniform share", "attention share")})
    st.caption(f"Share of a part = mean over every query of the attention it gives to the part's tokens (that it "
               f"can see); all parts{' and the learned sink' if a.stats.learned_sink is not None else ''} sum to "
               f"100 % in every layer. Table: mean over layers ≥ {thresholds.shallow_layers}. Uniform share: the "
               "same if every query spread its attention evenly over the keys it sees. Parts come from the "
               "tokenizer's character offsets; a token belongs to the part holding most of its characters.")
    st.plotly_chart(kept_figure(openings_figure, a, BLOCK_CHOICES[choice], first_n), key="an_openings")
    st.caption(f"Opening mass of a part: the attention on its first {first_n} tokens, averaged over the queries "
               "that can see them (from the part's first token on). For the sequence this counts its first "
               f"{first_n} queries too, so it is a little above the sink mass of the bars.")


def render_entropy(a: Analysis) -> None:
    st.plotly_chart(kept_figure(entropy_figure, a), key="an_entropy")
    st.caption("Low entropy with high sink mass: the heads park their attention on the sink.")


def render_tokens(a: Analysis) -> None:
    st.dataframe({"position": range(a.stats.n_tokens), "id": a.tokens.token_ids, "token": a.tokens.shown,
                  "special": a.tokens.special,
                  "received (mean over layers, heads)": a.stats.received.mean(axis=(0, 1))}, hide_index=True)


def render_heatmaps(a: Analysis, sinks) -> None:
    stats = a.stats
    c = st.columns(4)
    opened = (a.key, first_n, thresholds)
    if st.session_state.get("an_layer_for") != opened or "an_layer" not in st.session_state:
        st.session_state.an_layer_for = opened       # an analysis (or reading) opens on the verdict's layer
        st.session_state.an_layer = verdict_layer(sinks, stats, thresholds) or 0
    layer = c[0].selectbox("Layer", range(stats.n_layers), key="an_layer",
                           format_func=lambda row: f"{stats.layer_ids[row]}")
    head_label = c[1].selectbox("Head", ["mean over heads"] + [f"head {h}" for h in range(stats.n_heads)],
                                key="an_head")
    log = c[2].toggle("Log colour scale", key="an_log")
    hide = c[3].toggle("Hide position 0", key="an_hide",
                       help="Blank the first column so the rest of the map gets the colour range")
    head = None if head_label.startswith("mean") else int(head_label.split()[1])
    st.plotly_chart(kept_figure(heatmap_figure, a, layer, head, hide, log), key="an_map_big")
    st.plotly_chart(kept_figure(grid_figure, a, hide, log), key="an_grid")


def render_position0(a: Analysis) -> None:
    stats, tokens = a.stats, a.tokens.shown
    first = min(5, stats.n_tokens)
    hidden = norm_vs_median(stats.hidden_norm, first).mean(axis=0)
    value = norm_vs_median(stats.value_norm, first).mean(axis=0)
    st.dataframe({"position": range(first), "id": a.tokens.token_ids[:first], "token": tokens[:first],
                  "special": a.tokens.special[:first],
                  "received (mean over layers, heads)": stats.received[:, :, :first].mean(axis=(0, 1)),
                  "hidden norm × median": hidden, "value norm × median": value}, hide_index=True)
    pos = st.radio("Position", range(first), horizontal=True, key="an_pos",
                   format_func=lambda p: f"{p}: {tokens[p]!r}")
    st.plotly_chart(kept_figure(position_figure, a, pos), key="an_pos_map")
    st.plotly_chart(kept_figure(norms_figure, a, "Hidden-state", first), key="an_hidden")
    st.plotly_chart(kept_figure(norms_figure, a, "Value-vector", first), key="an_value")
    st.caption("Sink tokens often carry 'massive activations' (Sun et al. 2024): a hidden-state norm many "
               "times the median token's, with a small value vector, so attending to them changes little.")


# Figure builders: each depends on its arguments only, so kept_figure can keep what it builds.
def bars_figure(a: Analysis, n: int, limits):
    return figures.sink_bars(layer_sinks(a.stats, n, limits), limits)


def segments_figure(a: Analysis, rule):
    return segment_figures.segment_share_bars(segment_shares(a.stats, segments_of(a.tokens, rule)))


def openings_figure(a: Analysis, rule, n: int):
    return segment_figures.opening_lines(openings(a.stats, segments_of(a.tokens, rule), n))


def entropy_figure(a: Analysis):
    uniform = uniform_entropy(a.stats.n_tokens, a.stats.causal)
    return figures.entropy_lines(layer_entropy(a.stats), uniform, a.stats.layer_ids)


def heatmap_figure(a: Analysis, layer: int, head, hide: bool, log: bool):
    big = figures.attention_heatmap(a.stats, a.tokens.shown, layer, head, hide, log)
    return segment_figures.mark_segments(big, segments_of(a.tokens), a.stats.bin_width)   # where each turn starts


def grid_figure(a: Analysis, hide: bool, log: bool):
    return figures.all_layers_grid(a.stats, hide, log)


def position_figure(a: Analysis, pos: int):
    return figures.position_heatmap(a.stats, pos, a.tokens.shown[pos])


def norms_figure(a: Analysis, what: str, first: int):
    norms = a.stats.hidden_norm if what == "Hidden-state" else a.stats.value_norm
    return figures.norm_ratio_lines(norms, a.tokens.shown, what, first, a.stats.layer_ids)


def render_export(a: Analysis) -> None:
    report = report_dict(a, first_n, epsilon, thresholds)
    stem = f"sinkviz-{a.key[:10]}"
    st.download_button("One-file report (HTML)", lambda: analysis_report(
                           a, first_n, epsilon, thresholds, calibration=load_calibration(a.settings, store())),
                       f"{stem}-report.html", "text/html", type="primary",
                       help="Everything on this page in one file that opens offline: prompt, model, settings, "
                            "verdicts, every chart, the tables and the method.")
    c = st.columns(3)
    c[0].download_button("Per-layer metrics (CSV)", layers_csv(report), f"{stem}-layers.csv", "text/csv")
    c[1].download_button("Maps and statistics (NPZ)", lambda: npz_bytes(a), f"{stem}.npz",
                         "application/octet-stream")
    c[2].download_button("Metadata (JSON)", json.dumps(metadata(a), indent=1), f"{stem}.json",
                         "application/json")
    builders = {"sink mass per layer": lambda: figures.sink_bars(layer_sinks(a.stats, first_n, thresholds), thresholds),
                "all-layer heatmaps": lambda: figures.all_layers_grid(a.stats),
                "position-0 received": lambda: figures.position_heatmap(a.stats, 0, a.tokens.shown[0])}
    pick = st.selectbox("Figure as standalone HTML", list(builders), key="an_fig_pick")
    st.download_button("Download figure (HTML)", lambda: builders[pick]().to_html(include_plotlyjs=True),
                       f"{stem}-{pick.replace(' ', '-')}.html", "text/html")


if result is not None:
    render(result)
else:
    st.caption("Pick a model, paste a prompt and press Analyze. Results are kept on disk: "
               "the same request later opens instantly.")
