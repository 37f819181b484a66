"""Audit: many prompts at once, one row each, through the store (re-runs are instant)."""

import streamlit as st

from pages.common import guarded, model_picker, open_in_analyze, step_progress, store
from sinkviz.flow.analysis import Settings
from sinkviz.flow.audit import MAX_FILE_BYTES, MAX_ROWS, audit, audited_model, prompts_from_lines, read_prompts
from sinkviz.flow.audit_table import (BANDS, band, file_columns, filtered_csv, judged, most_unusual_first, one_line,
                                      table_rows)
from sinkviz.numbers.calibration import TYPICAL, calibrate, calibration_prompts
from sinkviz.numbers.readings import READINGS
from sinkviz.output.html_report import audit_report

st.title("Batch prompt audit")
st.caption(f"Upload a CSV (column 'prompt', else the first column; quote prompts that hold commas) or JSONL (field 'prompt'), or paste "
           f"one prompt per line. Up to {MAX_ROWS} prompts and {MAX_FILE_BYTES // 2**20} MB. Every prompt "
           "is kept in the store, so a re-run is instant and an interrupted audit resumes. The file's other "
           "columns (id, owner, …) are kept in the table and the CSV.")
with st.container(border=True):
    model = model_picker("au")
    upload = st.file_uploader("Prompts file", type=["csv", "jsonl", "json"], key="au_file")
    pasted = st.text_area("…or paste prompts, one per line", key="au_text", height=120)
    c1, c2, c3 = st.columns(3)
    use_template = c1.toggle("Chat template", True, key="au_template")
    first_n = c2.slider("Sink = the first N tokens", 1, 8, 3, key="au_first_n")
    calibrated = c3.toggle("Judge against this model", True, key="au_calibrate",
                           help=f"Runs {len(calibration_prompts())} shipped, varied prompts once per model and keeps "
                                "their distribution; each row then gets its percentile in it.")
    run = st.button("Run audit", type="primary")


def load_prompts():
    if upload is not None:
        data = upload.getvalue()
        return read_prompts(data, upload.name), file_columns(data, upload.name)
    return prompts_from_lines(pasted), []


def run_audit(settings: Settings):
    prompts, extras = load_prompts()
    cal = None
    if calibrated:
        bar = st.progress(0.0, text="calibrating …")
        cal = calibrate(settings, store(), progress=step_progress(bar, "calibration prompt"))
        bar.empty()
    bar = st.progress(0.0, text="reading prompts …")
    rows = audit(prompts, settings, first_n, store=store(), progress=step_progress(bar, "prompt"))
    bar.progress(1.0, text=f"done: {len(rows)} prompts")
    return {"rows": rows, "extras": extras, "settings": settings, "cal": cal, "first_n": first_n}


if run:
    done = guarded(lambda: run_audit(Settings(model=model, use_template=use_template)), "Audit")
    if done is not None:
        st.session_state.au_run = done


def show(run: dict) -> None:
    rows, extras, n = run["rows"], run["extras"], run["first_n"]
    c1, c2 = st.columns([2, 3])
    reading = c1.radio("Judge by", list(READINGS), key="au_reading", horizontal=False,
                       format_func=lambda r: READINGS[r].replace("N", str(n)))
    marks = judged(rows, run["cal"], reading, n)
    bands = c2.multiselect("Show (against this model)", list(BANDS), list(BANDS), key="au_bands")
    severities = c2.multiselect("Show (seed 000's fixed thresholds)", ["critical", "warning", "ok", "error"],
                                ["critical", "warning", "ok", "error"], key="au_filter")
    keep = most_unusual_first([(r, m) for r, m in zip(rows, marks)
                               if (r.severity or "error") in severities and band(m["percentile"]) in bands])
    table = table_rows(keep, extras, run["settings"].use_template)
    if run["cal"] is None:          # not judged: no columns of blanks that read as missing numbers
        table = [{k: v for k, v in row.items() if k not in ("percentile", "against this model")} for row in table]
    pct = st.column_config.NumberColumn(format="percent")
    st.dataframe(table, hide_index=True, key="au_table", row_height=60,
                 column_config={"prompt": st.column_config.TextColumn(width="medium", pinned=True,
                                                                      help="The full text: pick the row below"),
                                "reading": pct, "sink mass (worst layer)": pct, "share: template": pct,
                                "share: system": pct, "share: your text": pct,
                                "percentile": st.column_config.NumberColumn(format="%.0f")})
    st.caption(f"{len(keep)} of {len(rows)} rows, highest percentile first. Reading: mean over layers ≥ 2 of "
               + ("the attention on the first N tokens of your text, from every query that can see them"
                  if reading == "user" else "the attention queries i ≥ N give to the sequence's first N tokens")
               + (f"; percentile among {run['cal'].n_prompts} calibration prompts on this model (typical: "
                  f"{TYPICAL[0]:.0f}th–{TYPICAL[1]:.0f}th)." if run["cal"] else "; not judged against the model."))
    left, right = st.columns(2)
    left.download_button("Download these rows (CSV)",
                         filtered_csv([r for r, _ in keep], extras, [m for _, m in keep]), "sinkviz-audit.csv",
                         "text/csv")
    shown = f"bands: {' / '.join(bands) or 'none'}; severities: {' / '.join(severities) or 'none'}"
    right.download_button("Report of these rows (HTML)", lambda: audit_report(
                              [r for r, _ in keep], extras, run["settings"], n, reading, run["cal"],
                              audited_model(rows, store()), audited=len(rows), filters=shown),
                          "sinkviz-audit-report.html", "text/html", type="primary",
                          help="These rows in one file that opens offline: the summary, the table with the file's "
                               "columns, the settings and the method.")
    openable = sorted((r for r, _ in keep if r.key), key=lambda r: r.row)
    if openable:
        pick = st.selectbox("Read or open a row", range(len(openable)), key="au_pick",
                            format_func=lambda i: f"row {openable[i].row}: {one_line(openable[i].prompt)[:70]}")
        st.text(openable[pick].prompt)
        if st.button("Open in Analyze"):
            chosen = openable[pick]
            open_in_analyze(run["settings"], chosen.key, chosen.prompt, n)


if st.session_state.get("au_run"):
    show(st.session_state.au_run)
