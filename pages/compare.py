"""Compare: two to four opening variants of a prompt, side by side."""

import streamlit as st

from pages.common import EXAMPLES, model_picker, run_analysis
from sinkviz import figures
from sinkviz.analysis import Settings
from sinkviz.errors import SinkvizError
from sinkviz.metrics import layer_sinks

st.title("Compare opening variants")
st.caption("The same prompt with a different first line can move the sink. Each variant is analysed "
           "with the same model and settings; results come from the store when they exist.")
with st.container(border=True):
    model = model_picker("cmp")
    c1, c2, c3 = st.columns(3)
    count = c1.number_input("Variants", 2, 4, 2, key="cmp_count")
    use_template = c2.toggle("Chat template", False, key="cmp_template",
                             help="Off by default: with a template, its own tokens (and a default "
                                  "system turn) come first, so every variant shares position 0.")
    first_n = c3.slider("Sink = the first N tokens", 1, 8, 3, key="cmp_first_n")
    defaults = [EXAMPLES["Prompt A (seed 003)"], EXAMPLES["Prompt B (seed 003)"],
                EXAMPLES["Placeholder at position 0"], "Answer concisely. You are a helpful assistant."]
    cols = st.columns(int(count))
    prompts = [col.text_area(f"Variant {chr(65 + i)}", defaults[i], key=f"cmp_prompt_{i}", height=120)
               for i, col in enumerate(cols)]
    run = st.button("Compare", type="primary")

if run:
    settings = Settings(model=model, use_template=use_template)
    results = [run_analysis(p, settings, f"Variant {chr(65 + i)}") for i, p in enumerate(prompts)]
    if all(r is not None for r in results):
        st.session_state.cmp_keys = [r.key for r in results]
        st.session_state.cmp_results = results



def shared_suffix(token_ids: list[tuple[int, ...]]) -> int:
    """How many final tokens all variants share."""
    n = 0
    while n < min(map(len, token_ids)) and len({ids[-1 - n] for ids in token_ids}) == 1:
        n += 1
    return n


def show(results, sinks) -> None:
    labels = [chr(65 + i) for i in range(len(results))]
    for col, label, r, s in zip(st.columns(len(results)), labels, results, sinks):
        col.metric(f"Variant {label}: position 0", repr(r.tokens.tokens[0]),
                   f"mean sink mass {s.sink_mass.mean():.0%}", delta_color="off", delta_arrow="off")
        col.caption("first tokens: " + " · ".join(repr(t) for t in r.tokens.tokens[:6]))
    st.plotly_chart(figures.compare_sink_lines(labels, sinks), key="cmp_lines")
    st.plotly_chart(figures.compare_difference(labels, sinks), key="cmp_diff")
    n_layers = results[0].stats.n_layers
    layer = st.selectbox("Layer for the heatmaps", range(n_layers), index=min(3, n_layers - 1), key="cmp_layer",
                         format_func=lambda row: f"{results[0].stats.layer_ids[row]}")
    suffix = shared_suffix([r.tokens.token_ids for r in results])
    rows = suffix if suffix and all(r.stats.bin_width == 1 for r in results) else None
    if rows:
        st.caption(f"Rows: the {rows} query tokens all variants end with, aligned; columns: every key.")
    for i, (col, label, r) in enumerate(zip(st.columns(len(results)), labels, results)):
        fig = figures.attention_heatmap(r.stats, r.tokens.tokens, layer, last_queries=rows)
        fig.update_layout(title=f"{label}: layer {layer}", height=480)
        col.plotly_chart(fig, key=f"cmp_map_{i}")


results = st.session_state.get("cmp_results")
if results:
    try:
        show(results, [layer_sinks(r.stats, first_n) for r in results])
    except SinkvizError as err:
        st.error(str(err))
