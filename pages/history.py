"""History: every analysis in the store, newest first; open one in Analyze."""

from datetime import datetime

import streamlit as st

from pages.common import store

st.title("History")
metas = store().metas()


def show(metas: list[dict]) -> None:
    rows = [{"when": datetime.fromtimestamp(m["created"]).strftime("%Y-%m-%d %H:%M:%S"),
             "model": m["model"]["model_id"],
             "tokens": len(m["tokens"]["token_ids"]),
             "first tokens": " · ".join(repr(t) for t in m["tokens"]["tokens"][:4]),
             "worst layer (N=3)": m["worst_layer_by_n"][2][0] if len(m["worst_layer_by_n"]) > 2 else None,
             "its sink mass": m["worst_layer_by_n"][2][1] if len(m["worst_layer_by_n"]) > 2 else None,
             "prompt": m["prompt"][:80]} for m in metas]
    st.caption(f"{len(rows)} analyses in {store().directory}. Select a row to open it.")
    picked = st.dataframe(rows, hide_index=True, on_select="rerun", selection_mode="single-row", key="hist_table",
                          column_config={"its sink mass": st.column_config.ProgressColumn(
                              format="percent", min_value=0.0, max_value=1.0)})
    selected = picked.selection.rows if picked else []
    if selected:
        meta = metas[selected[0]]
        st.write(f"**{meta['prompt'][:200]}**")
        if st.button("Open in Analyze", type="primary"):
            st.session_state.pop("an_ready", None)
            st.session_state.pop("an_key", None)
            params = {"key": meta["key"], "model": meta["settings"]["model"],
                      "template": "1" if meta["settings"]["use_template"] else "0",
                      "map": str(meta["settings"]["map_size"]), "prompt": meta["prompt"][:4000]}
            if meta["settings"].get("system"):
                params["system"] = meta["settings"]["system"]
            st.switch_page("pages/analyze.py", query_params=params)


if metas:
    show(metas)
else:
    st.info("No analyses yet. Run one on the Analyze page; it will be listed here.")
