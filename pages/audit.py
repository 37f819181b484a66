"""Audit: many prompts at once, one row each, through the store (re-runs are instant)."""

import streamlit as st

from pages.common import guarded, model_picker, open_in_analyze, step_progress, store
from sinkviz.analysis import Settings
from sinkviz.audit import MAX_FILE_BYTES, MAX_ROWS, audit, audit_csv, prompts_from_lines, read_prompts

st.title("Batch prompt audit")
st.caption(f"Upload a CSV (column 'prompt', else the first column; quote prompts that hold commas) or JSONL (field 'prompt'), or paste "
           f"one prompt per line. Up to {MAX_ROWS} prompts and {MAX_FILE_BYTES // 2**20} MB. Every prompt "
           "is kept in the store, so a re-run is instant and an interrupted audit resumes.")
with st.container(border=True):
    model = model_picker("au")
    upload = st.file_uploader("Prompts file", type=["csv", "jsonl", "json"], key="au_file")
    pasted = st.text_area("…or paste prompts, one per line", key="au_text", height=120)
    c1, c2 = st.columns(2)
    use_template = c1.toggle("Chat template", True, key="au_template")
    first_n = c2.slider("Sink = the first N tokens", 1, 8, 3, key="au_first_n")
    run = st.button("Run audit", type="primary")


def load_prompts() -> list[str]:
    if upload is not None:
        return read_prompts(upload.getvalue(), upload.name)
    return prompts_from_lines(pasted)


if run:
    bar = st.progress(0.0, text="reading prompts …")
    settings = Settings(model=model, use_template=use_template)
    audited = guarded(lambda: audit(load_prompts(), settings, first_n, store=store(),
                                    progress=step_progress(bar, "prompt")), "Audit")
    if audited is None:
        bar.empty()
    else:
        st.session_state.au_rows, st.session_state.au_settings = audited, settings
        bar.progress(1.0, text=f"done: {len(audited)} prompts")

rows = st.session_state.get("au_rows")
if rows:
    shown = st.multiselect("Show severities", ["critical", "warning", "ok", "error"],
                           ["critical", "warning", "ok", "error"], key="au_filter")
    visible = [r for r in rows if (r.severity or "error") in shown]
    st.dataframe([{"row": r.row, "first tokens": r.first_tokens, "tokens": r.n_tokens,
                   "worst layer": r.worst_layer, "sink mass": r.worst_sink_mass,
                   "× uniform": r.ratio_to_uniform, "layers > flag": r.flagged_layers,
                   "severity": r.severity or "error", "prompt": r.prompt[:100], "error": r.error}
                  for r in visible], hide_index=True, key="au_table",
                 column_config={"sink mass": st.column_config.ProgressColumn(
                     format="percent", min_value=0.0, max_value=1.0)})
    st.download_button("Download the table (CSV)", audit_csv(rows), "sinkviz-audit.csv", "text/csv")
    openable = [r for r in visible if r.key]
    if openable:
        pick = st.selectbox("Open a row in Analyze", range(len(openable)), key="au_pick",
                            format_func=lambda i: f"row {openable[i].row}: {openable[i].prompt[:70]!r}")
        if st.button("Open in Analyze"):
            chosen = openable[pick]
            open_in_analyze(st.session_state.au_settings, chosen.key, chosen.prompt, first_n)
