"""Mitigation lab: attention scaling and sink tokens for windowed attention (StreamingLLM)."""

import streamlit as st

from pages.common import EXAMPLES, URL_PROMPT_LIMIT, PageUrl, guarded, model_picker, through_app, url_model
from sinkviz.output import figures
from sinkviz.flow.analysis import Settings
from sinkviz.flow.embedded import DEFAULT_MODEL
from sinkviz.numbers.metrics import layer_sinks
from sinkviz.flow.mitigation import WindowResult, attention_scaling, sink_token_experiment
from sinkviz.flow.progress import Eta, fraction_line
from sinkviz.flow.sweep import shipped_text

TABS = ["Attention scaling", "Sink tokens for windowed attention"]
through_app()
url = PageUrl("lab", model=DEFAULT_MODEL, prompt=EXAMPLES["Helpful assistant"], k=10, gamma=0.85, scaled=False,
              window=128, sinks=4, tokens=384, windowed=False, cut=0)
linked = (url.get("prompt"), url_model(url), url.get("k", lo=1, hi=64), url.get("gamma", lo=0.05, hi=4.0))
st.title("Mitigation lab")
model = model_picker("lab", linked[1])
# Tabs that rerun on a switch would stop a running experiment, so the URL does not hold the open tab.
scale_tab, window_tab = st.tabs(TABS, default=TABS[url.get("windowed") and not url.get("scaled")])


with scale_tab:
    st.caption("Multiply the attention logits of the first K keys by γ in every layer, then "
               "compare the sink mass and what the model predicts.")
    cut = url.get("cut", lo=0, hi=10**9)     # the sender's prompt was too long for the link
    if cut and "lab_prompt" not in st.session_state:
        st.info(f"The shared experiment's prompt had {cut:,} characters, more than a link "
                f"holds ({URL_PROMPT_LIMIT:,}): paste it below and press Run scaling to see its result.")
    prompt = st.text_area("Prompt", linked[0], key="lab_prompt")
    c1, c2 = st.columns(2)
    k = c1.number_input("K (first keys scaled)", 1, 64, linked[2], key="lab_k")
    gamma = c2.number_input("γ (logit factor)", 0.05, 4.0, linked[3], 0.05, key="lab_gamma")
    # A link to a scaling result runs it again on arrival (two forward passes: seconds).
    arrived = (url.get("scaled") and st.session_state.get("lab_scale_inputs") != linked
               and st.session_state.get("lab_tried") != url.params)
    if st.button("Run scaling", type="primary") or arrived:
        st.session_state.lab_tried = url.params
        bar = st.progress(0.0, text="two forward passes …")
        st.session_state.lab_scale = guarded(
            lambda: attention_scaling(prompt, Settings(model=model), k, gamma,
                                      progress=lambda tick: bar.progress(tick.fraction, text=tick.text)), "Experiment")
        st.session_state.lab_scale_inputs = (prompt, model, k, gamma)
        bar.empty()
    r = st.session_state.get("lab_scale")
    if r is not None:
        m = st.columns(3)
        m[0].metric("Perplexity of the prompt", f"{r.perplexity_after:.2f}",
                    f"{r.perplexity_after - r.perplexity_before:+.2f} vs {r.perplexity_before:.2f}", delta_color="inverse")
        m[1].metric("Largest KL at a position", f"{r.kl.max():.4f} nats")
        m[2].metric("Mean KL", f"{r.kl.mean():.4f} nats")
        sinks = (layer_sinks(r.before, 3), layer_sinks(r.after, 3))
        st.plotly_chart(figures.before_after_bars(("before", f"after (K={r.first_keys}, γ={r.gamma:g})"), sinks),
                        key="lab_bars")
        st.plotly_chart(figures.kl_by_position(r.kl, r.tokens.shown), key="lab_kl")
        st.dataframe({"rank": range(1, 6), "before": [f"{t!r} {p:.1%}" for t, p in r.top5_before],
                      "after": [f"{t!r} {p:.1%}" for t, p in r.top5_after]}, hide_index=True)

with window_tab:
    st.caption("Decode a long text token by token through a KV cache of W entries, keeping the first S "
               "tokens or not (Xiao et al. 2023). Entries are evicted, never recomputed. CPU: ~75 ms a token.")
    c1, c2, c3 = st.columns(3)
    window = c1.number_input("W (cache entries)", 16, 4096, url.get("window", lo=16, hi=4096), 16, key="lab_window")
    sinks_n = c2.number_input("S (sink tokens kept)", 1, 16, url.get("sinks", lo=1, hi=16), key="lab_sinks")
    limit = c3.number_input("Tokens of the shipped text", 64, 4096, url.get("tokens", lo=64, hi=4096), 64,
                            key="lab_tokens")
    if url.get("windowed") and st.session_state.get("lab_window_result") is None:
        st.info("The link showed this experiment's result, which is not kept: press Run windowed perplexity to "
                "compute it again (token by token, so it takes a while).")
    if st.button("Run windowed perplexity", type="primary"):
        bar, eta = st.progress(0.0, text="full attention …"), Eta()
        st.session_state.lab_window_result = guarded(lambda: sink_token_experiment(
            shipped_text(), Settings(model=model), window, sinks_n, limit,
            progress=lambda f: bar.progress(f, text=fraction_line("window KV cache", f, eta.left(f, 1.0)))),
            "Experiment")
        st.session_state.lab_window_inputs = (window, sinks_n, limit)
        bar.empty()
    w = st.session_state.get("lab_window_result")
    if w is not None:
        m = st.columns(3)
        m[0].metric("Perplexity, full attention", f"{WindowResult.perplexity(w.loss_full):.2f}")
        m[1].metric(f"Window {w.window} + {w.sinks} sink tokens", f"{WindowResult.perplexity(w.loss_sinks):.2f}")
        m[2].metric(f"Window {w.window}, no sink tokens", f"{WindowResult.perplexity(w.loss_no_sinks):.2f}")
        st.plotly_chart(figures.window_losses({"full attention": w.loss_full,
                                               f"window + {w.sinks} sinks": w.loss_sinks,
                                               "window, no sinks": w.loss_no_sinks}, w.window), key="lab_losses")
# The URL holds the settings of what is shown: a result's own, else the boxes'.
scaled = st.session_state.lab_scale_inputs if r is not None else (prompt, model, k, gamma)
short = len(scaled[0]) <= URL_PROMPT_LIMIT
windowed = st.session_state.lab_window_inputs if w is not None else (window, sinks_n, limit)
url.keep(prompt=scaled[0] if short else "", cut=0 if short else len(scaled[0]), model=scaled[1], k=scaled[2], gamma=scaled[3],
         scaled=r is not None and short, **dict(zip(("window", "sinks", "tokens"), windowed)), windowed=w is not None)
