"""Sweep: sink mass per layer as the context grows (each length cached)."""

import numpy as np
import streamlit as st

from pages.common import guarded, model_picker, show_model_in_sidebar, store
from sinkviz.output import figures
from sinkviz.flow.analysis import Settings
from sinkviz.flow.sweep import run_sweep, shipped_text

st.title("Context-length sweep")
st.caption("The first 256, 512, 1024, … tokens of one text, each analysed (raw text, no chat template) "
           "and kept in the store, so a repeated or interrupted sweep recomputes nothing it has.")
with st.container(border=True):
    model = model_picker("sw")
    source = st.radio("Text", ["Shipped: US Declaration of Independence (1776, ~1,700 tokens)",
                               "Paste", "Upload a .txt file"], key="sw_source", horizontal=True)
    text = shipped_text()
    if source == "Paste":
        text = st.text_area("Text", key="sw_text", height=160)
    elif source.startswith("Upload"):
        upload = st.file_uploader("Plain text (UTF-8)", type=["txt", "md"], key="sw_file")
        text = upload.getvalue().decode("utf-8", errors="replace") if upload else ""
    c1, c2 = st.columns(2)
    first_n = c1.slider("Sink = the first N tokens", 1, 8, 3, key="sw_first_n")
    max_tokens = c2.number_input("Longest prefix (tokens; 0 = the whole text)", 0, 1_000_000, 0, 256,
                                 key="sw_max")
    run = st.button("Run sweep", type="primary")

if run:
    bar = st.progress(0.0, text="tokenizing …")
    points = guarded(lambda: run_sweep(text, Settings(model=model), max_tokens=max_tokens or None, store=store(),
                                       progress=lambda tick: bar.progress(tick.fraction, text=tick.text)), "Sweep")
    if points is None:
        bar.empty()
    else:
        bar.progress(1.0, text=f"done: {len(points)} lengths, {sum(p.cached for p in points)} from the store")
        st.session_state.sw_points = points
        show_model_in_sidebar(points[-1].model)

points = st.session_state.get("sw_points")
if points:
    lengths = [p.n_tokens for p in points]
    mass = np.stack([p.sink_mass[:, first_n - 1] for p in points])                 # [lengths, layers]
    st.plotly_chart(figures.sweep_lines(lengths, mass, first_n), key="sw_lines")
    st.dataframe({"tokens": lengths, "mean sink mass": np.nanmean(mass, axis=1),
                  "max sink mass": np.nanmax(mass, axis=1), "from the store": [p.cached for p in points]},
                 hide_index=True, column_config={c: st.column_config.NumberColumn(format="percent")
                                                 for c in ("mean sink mass", "max sink mass")})
