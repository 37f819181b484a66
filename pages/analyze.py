"""Analyze: one prompt -> sink bars, heatmaps, position-0 inspector, entropy, verdict, export."""

import json

import numpy as np
import streamlit as st

from pages.common import (EXAMPLES, URL_PROMPT_LIMIT, PageUrl, analysis_by_key, device_dtype_pickers, guarded,
                          kept_figure, model_picker, named_key, not_found, run_analysis, settings_params, sink_intro,
                          step_progress, store, threshold_inputs, thresholds_params, through_app, url_settings,
                          url_thresholds)
from sinkviz.numbers.calibration import (TYPICAL, calibrate, calibration_key, calibration_prompts, judge_readings,
                                         load_calibration, sentences)
from sinkviz.output import figures, segment_figures
from sinkviz.flow.analysis import Analysis, Settings
from sinkviz.errors import SinkvizError
from sinkviz.output.export import layers_csv, metadata, npz_bytes
from sinkviz.output.html_report import analysis_report
from sinkviz.numbers.metrics import (Thresholds, deep_mean, layer_entropy, layer_sinks, norm_vs_median, sink_rate,
                                    uniform_entropies)
from sinkviz.output.readable import quoted
from sinkviz.numbers.segments import BLOCK_RULES, openings, segment_shares, segment_table, segments_of
from sinkviz.output.report import report_dict
from sinkviz.output.verdict import uniform_sentence, verdict, verdict_layer

TABS = ["Sink mass per layer", "Segments", "Heatmaps", "Position-0 inspector", "Entropy", "Tokens", "Export"]
MAP_SIZES = [32, 64, 128, 192, 256]
through_app()
# The page's state lives in the URL (PageUrl): the analysis shown (its key, its prompt when short
# enough, its settings) and how it is viewed. Every widget starts from there.
url = PageUrl("analyze", key=None, prompt=None, **settings_params(Settings()), n=3, eps=0.3,
              **thresholds_params(Thresholds()), tab=TABS[0], layer=None, head=None, log=False, hide=False,
              pos=0, blocks="turns only")
view: dict = {}   # what the result's widgets show, filled while rendering, written to the URL at the end


def fill_example() -> None:
    choice = st.session_state.an_example
    if choice in EXAMPLES:
        st.session_state.an_prompt = EXAMPLES[choice]


link_key = url.get("key")
shown: Analysis | None = analysis_by_key(link_key) if link_key else None   # the link's analysis
start = shown.settings if shown else url_settings(url)
if shown:
    start_prompt = shown.prompt
elif link_key:
    start_prompt = url.get("prompt", "")       # never the example under a link's key
else:
    start_prompt = url.get("prompt", EXAMPLES["Helpful assistant"])

st.title("Analyze a prompt")
sink_intro(expanded=shown is None and link_key is None and url.get("prompt") is None)
with st.container(border=True):
    model = model_picker("an", start.model)
    st.selectbox("Example prompts", ["(your own)"] + list(EXAMPLES), key="an_example", on_change=fill_example)
    prompt = st.text_area("Prompt", start_prompt, key="an_prompt", height=140)
    c1, c2, c3 = st.columns([1, 2, 1])
    use_template = c1.toggle("Chat template", start.use_template, key="an_template",
                             help="Wrap the prompt as a user turn of the model's chat template; "
                                  "its own tokens are analysed too.")
    first_n = c2.slider("Sink = the first N tokens", 1, 8, url.get("n", lo=1, hi=8), key="an_first_n")
    run = c3.button("Analyze", type="primary", use_container_width=True)
    with st.expander("More settings"):
        system = st.text_input("System turn (chat template only; empty = the template's default)",
                               start.system or "", key="an_system")
        map_size = st.select_slider("Full L × L maps up to (tokens; pooled above)", MAP_SIZES,
                                    start.map_size if start.map_size in MAP_SIZES
                                    else Settings().map_size, key="an_map")
        device, dtype = device_dtype_pickers("an", start.device, start.dtype)
        thresholds = threshold_inputs("an", url_thresholds(url))
        epsilon = st.number_input("Sink-rate epsilon (Gu et al.)", 0.01, 0.99, url.get("eps", lo=0.01, hi=0.99),
                                  0.05, key="an_eps")

try:
    settings = Settings(model=model, use_template=use_template, system=system.strip() or None,
                        map_size=map_size, device=device, dtype=dtype)
except SinkvizError as err:
    st.error(str(err))
    settings = Settings()

# A link with a prompt and no key is analysed once on arrival; an unknown key is not.
arrived = url.get("prompt") is not None and link_key is None and st.session_state.get("an_tried") != url.params
if run or arrived:
    st.session_state.an_tried = url.params
    shown = run_analysis(prompt, settings)
elif link_key and shown is None:
    not_found(f"analysis with {named_key(link_key)}",
              "Its prompt and settings are in the boxes above: press Analyze to compute it." if url.get("prompt")
              else "The link has no prompt (a prompt over 4,000 characters travels by key alone): paste it above "
                   "and press Analyze.")
if shown is not None:
    inputs = {**settings_params(shown.settings), "key": shown.key,
              "prompt": shown.prompt if len(shown.prompt) <= URL_PROMPT_LIMIT else None}
elif run or not (link_key or url.get("prompt")):
    inputs = {**settings_params(settings), "key": None, "prompt": None}
else:
    inputs = {}   # a link whose analysis is not shown keeps naming it


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
    m = st.columns([0.7, 1.5, 0.9, 0.9, 1.6] if user else [0.8, 1.6, 1, 1])   # room for tokens as text
    m[0].metric("Tokens", stats.n_tokens, help="including template tokens" if a.tokens.templated else None)
    special = a.tokens.special[0]
    m[1].metric("Position 0", tokens[0] if special else quoted(tokens[0]), "special token" if special else "text token",
                delta_color="off", delta_arrow="off", help=f"The first token of the sequence: {tokens[0]!r}")
    m[2].metric(f"Sink rate (ε = {epsilon:g})", f"{sink_rate(stats, epsilon):.1f}%",
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
    st.info(f"**By fixed thresholds (warning {thresholds.warning:.0%}, critical {thresholds.critical:.0%}).** "
            + verdict(sinks, stats, tokens, a.tokens.special, thresholds))
    st.caption(f"{a.model.label} · {a.model.architecture} · {a.model.device} · {a.model.dtype} · "
               f"key {a.key}" + (" · from the result store" if a.cached else ""))
    if a.settings.use_template and not a.tokens.templated:
        st.caption("This model's tokenizer has no chat template: the prompt was analysed as raw text (the "
                   "Chat template switch changes nothing here).")
    if a.model.eager_attention:
        st.caption("This model computes attention its own way; sinkviz takes its eager attention maps "
                   "(output_attentions), exactly, but they exist all at once, so the memory guard allows "
                   "shorter prompts here, and value-vector norms are not available.")
    if stats.layer_kinds:
        st.caption("Layers without softmax attention, left out of every chart and table: " + ", ".join(
            f"{i} ({kind})" for i, kind in enumerate(stats.layer_kinds) if kind != "attention"))
    sections = [lambda: render_bars(a, sinks), lambda: render_segments(a), lambda: render_heatmaps(a, sinks), lambda: render_position0(a),
                lambda: render_entropy(a), lambda: render_tokens(a), lambda: render_export(a)]
    if "an_tab" not in st.session_state:   # (not through default=: tabs whose default changes are new tabs)
        st.session_state.an_tab = url.get("tab", choices=TABS)
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
    st.plotly_chart(segment_figures.percentile_lines(judge_readings(cal, a, first_n, thresholds), TYPICAL,
                                                     a.stats.layer_ids),
                    key="an_percentiles")


def render_bars(a: Analysis, sinks) -> None:
    st.plotly_chart(kept_figure(bars_figure, a, first_n, thresholds), key="an_bars")
    render_percentiles(a)
    st.caption(f"Averaged over queries i ≥ {first_n} (each query's attention to the first {first_n} "
               f"tokens), then over heads. " + uniform_sentence(sinks, a.stats))
    windowed = [(layer, w) for layer, w in zip(a.stats.layer_ids, a.stats.windows) if w and w < a.stats.n_tokens]
    if windowed:
        st.warning(f"{'Layer' if len(windowed) == 1 else 'Layers'} {', '.join(str(l) for l, _ in windowed)} "
                   f"{'uses' if len(windowed) == 1 else 'use'} a sliding window of {', '.join(sorted({f'{w}' for _, w in windowed}))} tokens: queries "
                   "further away cannot see position 0 there, and uniform attention there is measured within "
                   "the window.")


BLOCK_CHOICES = {"turns only": None, **{f"blocks: {rule}": rule for rule in BLOCK_RULES}}


def render_segments(a: Analysis) -> None:
    choices = list(BLOCK_CHOICES)
    choice = st.selectbox("Parts of the sequence", choices, choices.index(url.get("blocks", choices=choices)),
                          key="an_blocks",
                          help="Template, system turn and user turn; or the user's text cut into blocks. "
                               + " ".join(f"{rule}: {text}." for rule, text in BLOCK_RULES.items()))
    view["blocks"] = choice
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
    ids = list(stats.layer_ids)
    linked = url.get("layer", None, choices=ids, kind=int)
    start = ids.index(linked) if linked is not None else (verdict_layer(sinks, stats, thresholds) or 0)
    opened = (a.key, first_n, thresholds)
    if st.session_state.get("an_layer_for") != opened or "an_layer" not in st.session_state:
        st.session_state.an_layer_for = opened       # an analysis opens on the link's layer, else the verdict's
        st.session_state.an_layer = start
    layer = c[0].selectbox("Layer", range(stats.n_layers), key="an_layer", format_func=lambda row: f"{ids[row]}")
    heads = ["mean over heads"] + [f"head {h}" for h in range(stats.n_heads)] * stats.head_maps
    head_label = c[1].selectbox("Head", heads, 1 + url.get("head", -1, lo=-1, hi=len(heads) - 2),
                                key="an_head" if stats.head_maps else "an_head_mean", disabled=not stats.head_maps,
                                help=None if stats.head_maps else AUDIT_KEPT_MEAN)
    log = c[2].toggle("Log colour scale", url.get("log"), key="an_log")
    hide = c[3].toggle("Hide position 0", url.get("hide"), key="an_hide",
                       help="Blank the first column so the rest of the map gets the colour range")
    head = None if head_label.startswith("mean") else int(head_label.split()[1])
    view.update(layer=ids[layer], head=head, log=log, hide=hide)
    if not stats.head_maps:
        offer_head_maps(a)
    st.plotly_chart(kept_figure(heatmap_figure, a, layer, head, hide, log), key="an_map_big")
    st.plotly_chart(kept_figure(grid_figure, a, hide, log), key="an_grid")


AUDIT_KEPT_MEAN = ("This analysis is an audit's row: an audit keeps each layer's map as the mean over heads only "
                   "(single heads are most of an analysis's bytes).")


def offer_head_maps(a: Analysis) -> None:
    """A note that single heads were not kept, and a button that captures this prompt again with them."""
    c = st.columns([3, 1])
    c[0].info(f"{AUDIT_KEPT_MEAN} Capture the prompt again to see each head.")
    if c[1].button("Capture every head", key="an_head_maps", use_container_width=True):
        if run_analysis(a.prompt, a.settings) is not None:   # replaces the stored row under the same key
            st.rerun()


def render_position0(a: Analysis) -> None:
    stats, tokens = a.stats, a.tokens.shown
    first = min(5, stats.n_tokens)
    hidden = norm_vs_median(stats.hidden_norm, first).mean(axis=0)
    value = norm_vs_median(stats.value_norm, first).mean(axis=0)
    st.dataframe({"position": range(first), "id": a.tokens.token_ids[:first], "token": tokens[:first],
                  "special": a.tokens.special[:first],
                  "received (mean over layers, heads)": stats.received[:, :, :first].mean(axis=(0, 1)),
                  "hidden norm × median": hidden, "value norm × median": value}, hide_index=True)
    pos = st.radio("Position", range(first), url.get("pos", lo=0, hi=first - 1), horizontal=True, key="an_pos",
                   format_func=lambda p: f"{p}: {tokens[p]!r}")
    view["pos"] = pos
    st.plotly_chart(kept_figure(position_figure, a, pos), key="an_pos_map")
    st.plotly_chart(kept_figure(norms_figure, a, "Hidden-state", first), key="an_hidden")
    st.plotly_chart(kept_figure(norms_figure, a, "Value-vector", first), key="an_value")
    st.caption("Sink tokens often carry 'massive activations' (Sun et al. 2024): a hidden-state norm many "
               "times the median token's, with a small value vector, so attending to them changes little.")


# Figure builders: each depends on its arguments only, so kept_figure can keep what it builds.
def bars_figure(a: Analysis, n: int, limits):
    return figures.sink_bars(layer_sinks(a.stats, n, limits), limits)


def segments_figure(a: Analysis, rule):
    return segment_figures.segment_share_bars(segment_shares(a.stats, segments_of(a.tokens, rule)), a.stats.layer_ids)


def openings_figure(a: Analysis, rule, n: int):
    return segment_figures.opening_lines(openings(a.stats, segments_of(a.tokens, rule), n), a.stats.layer_ids)


def entropy_figure(a: Analysis):
    return figures.entropy_lines(layer_entropy(a.stats), uniform_entropies(a.stats), a.stats.layer_ids)


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


if shown is not None:
    render(shown)
    view["tab"] = st.session_state.get("an_tab")
else:
    st.caption("Pick a model, paste a prompt and press Analyze. Results are kept on disk: "
               "the same request later opens instantly.")
url.keep(**inputs, n=first_n, eps=epsilon, **thresholds_params(thresholds), **view)
