"""Mitigation lab: attention scaling (seed 000) and sink tokens for windowed attention (StreamingLLM)."""

import streamlit as st

from pages.common import EXAMPLES, guarded, model_picker
from sinkviz.output import figures
from sinkviz.flow.analysis import Settings
from sinkviz.numbers.metrics import layer_sinks
from sinkviz.flow.mitigation import WindowResult, attention_scaling, sink_token_experiment
from sinkviz.flow.progress import Eta, fraction_line
from sinkviz.flow.sweep import shipped_text

st.title("Mitigation lab")
model = model_picker("lab")
scale_tab, window_tab = st.tabs(["Attention scaling", "Sink tokens for windowed attention"])


with scale_tab:
    st.caption("Multiply the attention logits of the first K keys by γ in every layer (seed 000), then "
               "compare the sink mass and what the model predicts.")
    prompt = st.text_area("Prompt", EXAMPLES["Prompt A (seed 003)"], key="lab_prompt")
    c1, c2 = st.columns(2)
    k = c1.number_input("K (first keys scaled)", 1, 64, 10, key="lab_k")
    gamma = c2.number_input("γ (logit factor)", 0.05, 4.0, 0.85, 0.05, key="lab_gamma")
    if st.button("Run scaling", type="primary"):
        bar = st.progress(0.0, text="two forward passes …")
        st.session_state.lab_scale = guarded(
            lambda: attention_scaling(prompt, Settings(model=model), k, gamma,
                                      progress=lambda tick: bar.progress(tick.fraction, text=tick.text)), "Experiment")
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
    window = c1.number_input("W (cache entries)", 16, 4096, 128, 16, key="lab_window")
    sinks_n = c2.number_input("S (sink tokens kept)", 1, 16, 4, key="lab_sinks")
    limit = c3.number_input("Tokens of the shipped text", 64, 4096, 384, 64, key="lab_tokens")
    if st.button("Run windowed perplexity", type="primary"):
        bar, eta = st.progress(0.0, text="full attention …"), Eta()
        st.session_state.lab_window_result = guarded(lambda: sink_token_experiment(
            shipped_text(), Settings(model=model), window, sinks_n, limit,
            progress=lambda f: bar.progress(f, text=fraction_line("window KV cache", f, eta.left(f, 1.0)))),
            "Experiment")
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
