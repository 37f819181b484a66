"""Sweep: sink mass per layer as the context grows (each length cached)."""

import numpy as np
import streamlit as st

from pages.common import (URL_PROMPT_LIMIT, PageUrl, guarded, model_picker, not_found, show_model_in_sidebar,
                          store, stored_from_url, through_app, url_model)
from sinkviz.output import figures
from sinkviz.flow.analysis import Settings
from sinkviz.flow.embedded import DEFAULT_MODEL
from sinkviz.flow.sweep import run_sweep, shipped_text, sweep_point

SOURCES = {"shipped": "Shipped: US Declaration of Independence (1776, ~1,700 tokens)", "paste": "Paste",
           "upload": "Upload a .txt file"}
through_app()
url = PageUrl("sweep", model=DEFAULT_MODEL, source="shipped", text="", n=3, max=0, keys=None)
keys, linked = stored_from_url(url, "keys")      # the sweep the URL names, each length from the store
points = st.session_state.get("sw_points")
if keys and [p.key for p in points or []] != keys:
    points = st.session_state.sw_points = [sweep_point(a) for a in linked] if all(linked) else None
st.title("Context-length sweep")
st.caption("The first 256, 512, 1024, … tokens of one text, each analysed (raw text, no chat template) "
           "and kept in the store, so a repeated or interrupted sweep recomputes nothing it has.")
with st.container(border=True):
    model = model_picker("sw", url_model(url))
    names = list(SOURCES)
    source = st.radio("Text", names, names.index(url.get("source", choices=names)), format_func=SOURCES.get,
                      key="sw_source", horizontal=True)
    text = shipped_text()
    if source == "paste":
        text = st.text_area("Text", url.get("text"), key="sw_text", height=160)
    elif source == "upload":
        upload = st.file_uploader("Plain text (UTF-8)", type=["txt", "md"], key="sw_file")
        text = upload.getvalue().decode("utf-8", errors="replace") if upload else ""
    if points and keys and source != "shipped" and not url.get("text"):
        st.caption("This link does not carry the text (an upload, or over 4,000 characters); the results below "
                   "come from the store.")
    c1, c2 = st.columns(2)
    first_n = c1.slider("Sink = the first N tokens", 1, 8, url.get("n", lo=1, hi=8), key="sw_first_n")
    max_tokens = c2.number_input("Longest prefix (tokens; 0 = the whole text)", 0, 1_000_000,
                                 url.get("max", lo=0, hi=1_000_000), 256, key="sw_max")
    run = st.button("Run sweep", type="primary")

if keys and not points:
    not_found("analysis for some of the link's lengths", "Press Run sweep to compute them.")
if run:
    bar = st.progress(0.0, text="tokenizing …")
    done = guarded(lambda: run_sweep(text, Settings(model=model), max_tokens=max_tokens or None, store=store(),
                                     progress=lambda tick: bar.progress(tick.fraction, text=tick.text)), "Sweep")
    if done is None:
        bar.empty()
    else:
        bar.progress(1.0, text=f"done: {len(done)} lengths, {sum(p.cached for p in done)} from the store")
        points = st.session_state.sw_points = done
        show_model_in_sidebar(done[-1].model)

if points:
    lengths = [p.n_tokens for p in points]
    mass = np.stack([p.sink_mass[:, first_n - 1] for p in points])                 # [lengths, layers]
    st.plotly_chart(figures.sweep_lines(lengths, mass, first_n), key="sw_lines")
    st.dataframe({"tokens": lengths, "mean sink mass": np.nanmean(mass, axis=1),
                  "max sink mass": np.nanmax(mass, axis=1), "from the store": [p.cached for p in points]},
                 hide_index=True, column_config={c: st.column_config.NumberColumn(format="percent")
                                                 for c in ("mean sink mass", "max sink mass")})
url.keep(model=model, source=source, text=text if source == "paste" and len(text) <= URL_PROMPT_LIMIT else "",
         n=first_n, max=max_tokens, keys=",".join(p.key for p in points) if points else None)
