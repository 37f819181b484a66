"""History: every analysis in the store, newest first; open one in Analyze."""

from datetime import datetime

import streamlit as st

from pages.common import open_in_analyze, store, through_app
from sinkviz.flow.analysis import Settings, history

through_app()
st.title("History")
metas = history(store())
if store().quarantined:
    st.warning(f"{len(store().quarantined)} row(s) of the result store were not written by sinkviz and were "
               "quarantined, unread (see the server log): " + "; ".join(store().quarantined[:3]))


def show(metas: list[dict]) -> None:
    rows = [{"when": datetime.fromtimestamp(m["created"]).strftime("%Y-%m-%d %H:%M:%S"),
             "model": m["model"]["model_id"],
             "tokens": len(m["tokens"]["token_ids"]),
             "first tokens": " · ".join(repr(t) for t in m["tokens"]["tokens"][:4]),
             "worst layer (N=3)": m["worst_layer_by_n"][2][0] if len(m["worst_layer_by_n"]) > 2 else None,
             "its sink mass": m["worst_layer_by_n"][2][1] if len(m["worst_layer_by_n"]) > 2 else None,
             "prompt": m["prompt"][:80]} for m in metas]
    st.caption(f"{len(rows)} analyses in {store().directory}.")
    picked = st.dataframe(rows, hide_index=True, on_select="rerun", selection_mode="single-row", key="hist_table",
                          column_config={"its sink mass": st.column_config.ProgressColumn(
                              format="percent", min_value=0.0, max_value=1.0)})
    selected = picked.selection.rows if picked else []
    labels = [f"{r['when']} · {r['model']} · {r['prompt'][:60]!r}" for r in rows]
    choice = st.selectbox("Analysis to open", range(len(rows)), format_func=labels.__getitem__,
                          index=selected[0] if selected else 0, key="hist_pick")
    if st.button("Open in Analyze", type="primary"):
        meta = metas[choice]
        open_in_analyze(Settings(**meta["settings"]), meta["key"])


if metas:
    show(metas)
else:
    st.info("No analyses yet. Run one on the Analyze page; it will be listed here.")
