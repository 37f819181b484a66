"""Audit: many prompts at once, one row each, through the store (re-runs are instant)."""

import streamlit as st

from pages.common import (URL_PROMPT_LIMIT, PageUrl, guarded, model_picker, open_in_analyze, step_progress, store,
                          through_app, url_model)
from sinkviz.flow.analysis import Settings
from sinkviz.flow.embedded import DEFAULT_MODEL
from sinkviz.flow.audit import MAX_FILE_BYTES, MAX_ROWS, audit_chunks, audited_model, prompts_from_lines, read_prompts
from sinkviz.flow.audit_table import (BANDS, band, file_columns, filtered_csv, judged, most_unusual_first, one_line,
                                      table_rows)
from sinkviz.flow.progress import Eta, rate_line
from sinkviz.numbers.calibration import TYPICAL, calibrate, calibration_prompts
from sinkviz.numbers.readings import READINGS
from sinkviz.output.html_report import audit_report

PAGE_CHUNK = 8   # prompts per step: rows appear, and a stop takes effect, this often

SEVERITIES = ["critical", "warning", "ok", "error"]
BAND_CODES = dict(zip(["high", "typical", "low", "unjudged"], BANDS))   # the bands' names in the URL
through_app()
url = PageUrl("audit", model=DEFAULT_MODEL, template=True, n=3, calibrate=True, text="", file=None, ran=False,
              reading="user", bands=",".join(BAND_CODES), severities=",".join(SEVERITIES), row=None)
st.title("Batch prompt audit")
st.caption(f"Upload a CSV (column 'prompt', else the first column; quote prompts that hold commas) or JSONL (field 'prompt'), or paste "
           f"one prompt per line. Up to {MAX_ROWS} prompts and {MAX_FILE_BYTES // 2**20} MB. Every prompt "
           "is kept in the store, so a re-run is instant and an interrupted audit resumes. The file's other "
           "columns (id, owner, …) are kept in the table and the CSV.")
with st.container(border=True):
    model = model_picker("au", url_model(url))
    upload = st.file_uploader("Prompts file", type=["csv", "jsonl", "json"], key="au_file")
    if url.get("ran") and upload is None and not url.get("text"):
        what = f"the file {url.get('file')[:100]!r}" if url.get("file") else "pasted prompts over 4,000 characters"
        st.caption(f"The link's audit was of {what}, which a link cannot carry: give them again and press Run audit.")
    pasted = st.text_area("…or paste prompts, one per line", url.get("text"), key="au_text", height=120)
    c1, c2, c3 = st.columns(3)
    use_template = c1.toggle("Chat template", url.get("template"), key="au_template")
    first_n = c2.slider("Sink = the first N tokens", 1, 8, url.get("n", lo=1, hi=8), key="au_first_n")
    calibrated = c3.toggle("Judge against this model", url.get("calibrate"), key="au_calibrate",
                           help=f"Runs {len(calibration_prompts())} shipped, varied prompts once per model and keeps "
                                "their distribution; each row then gets its percentile in it.")
    run = st.button("Run audit", type="primary")


def load_prompts():
    if upload is not None:
        data = upload.getvalue()
        return read_prompts(data, upload.name), file_columns(data, upload.name)
    return prompts_from_lines(pasted), []


def run_audit(settings: Settings) -> None:
    """Audit the prompts, a chunk at a time; session state holds the rows done after each chunk."""
    st.session_state.pop("au_run", None)
    prompts, extras = load_prompts()
    cal = None
    if calibrated:
        bar = st.progress(0.0, text="calibrating …")
        cal = calibrate(settings, store(), progress=step_progress(bar, "calibration prompt"))
        bar.empty()
    inputs = {"model": settings.model, "template": settings.use_template, "n": first_n, "calibrate": calibrated,
              "file": upload.name if upload is not None else None,
              "text": pasted if upload is None and len(pasted) <= URL_PROMPT_LIMIT else ""}
    done = {"rows": [], "total": len(prompts), "finished": False, "extras": extras, "settings": settings,
            "cal": cal, "first_n": first_n, "inputs": inputs}
    st.session_state.au_run = done
    stop = st.empty()
    stop.button("Stop", key="au_stop", help="Keeps the rows done (they are in the store); Run audit again "
                                            "computes only the missing ones.")
    bar, live, eta = st.progress(0.0, text=f"prompt 0/{len(prompts)}"), st.empty(), Eta()
    for rows in audit_chunks(prompts, settings, first_n, store=store(), chunk=PAGE_CHUNK):
        # A click during the run stops this script at its next st call: what is done is kept first.
        done = st.session_state.au_run = {**done, "rows": done["rows"] + rows}
        bar.progress(len(done["rows"]) / len(prompts),
                     text=rate_line("prompt", len(done["rows"]), len(prompts), eta.elapsed(), "prompts"))
        live.dataframe(live_table(done["rows"]), hide_index=True,
                       column_config={"sink mass (worst layer)": st.column_config.NumberColumn(format="percent")})
    bar.progress(1.0, text=f"done: {len(prompts)} prompts")
    live.empty()
    stop.empty()
    st.session_state.au_run = {**done, "finished": True}


def live_table(rows) -> list[dict]:
    """The rows done so far, in file order, while the audit runs."""
    return [{"row": r.row, "prompt": one_line(r.prompt), "first tokens": r.first_tokens, "worst layer": r.worst_layer,
             "sink mass (worst layer)": r.worst_sink_mass, "severity (fixed)": r.severity or "error", "error": r.error}
            for r in rows]


def same_inputs(run: dict) -> bool:
    """Whether the URL names the audit ``run`` (its inputs, pasted prompts included)."""
    return all(url.get(k, kind=type(v) if v is not None else str) == v for k, v in run["inputs"].items())


shown = st.session_state.get("au_run")
# A link to an audit of pasted prompts runs it once on arrival (every prompt then comes from the store).
arrived = (url.get("ran") and url.get("text") and not (shown and same_inputs(shown))
           and st.session_state.get("au_tried") != url.params)
if run or arrived:
    st.session_state.au_tried = url.params
    guarded(lambda: run_audit(Settings(model=model, use_template=use_template)), "Audit")
    shown = st.session_state.get("au_run")


def show(run: dict) -> None:
    rows, extras, n = run["rows"], run["extras"], run["first_n"]
    if not run["finished"]:
        st.warning(f"The audit stopped at row {len(rows)} of {run['total']}. The rows done are in the store: "
                   f"Run audit again to compute only the other {run['total'] - len(rows)}.")
    c1, c2 = st.columns([2, 3])
    readings = list(READINGS)
    reading = c1.radio("Judge by", readings, readings.index(url.get("reading", choices=readings)), key="au_reading",
                       horizontal=False, format_func=lambda r: READINGS[r].replace("N", str(n)))
    marks = judged(rows, run["cal"], reading, n)
    bands = c2.multiselect("Show (against this model)", list(BANDS), key="au_bands",
                           default=[BAND_CODES[c] for c in url.get("bands").split(",") if c in BAND_CODES])
    severities = c2.multiselect("Show (fixed thresholds on sink mass)", SEVERITIES, key="au_filter",
                                default=[v for v in url.get("severities").split(",") if v in SEVERITIES])
    view.update(reading=reading, severities=",".join(severities),
                bands=",".join(c for c, name in BAND_CODES.items() if name in bands))
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
        numbers = [r.row for r in openable]
        pick = st.selectbox("Read or open a row", range(len(openable)), key="au_pick",
                            index=numbers.index(url.get("row", numbers[0], choices=numbers, kind=int)),
                            format_func=lambda i: f"row {openable[i].row}: {one_line(openable[i].prompt)[:70]}")
        view["row"] = numbers[pick]
        st.text(openable[pick].prompt)
        if st.button("Open in Analyze"):
            chosen = openable[pick]
            open_in_analyze(run["settings"], chosen.key, n)


view: dict = {}
if shown:
    show(shown)
    url.keep(**shown["inputs"], ran=True, **view)
else:
    url.keep(model=model, template=use_template, n=first_n, calibrate=calibrated, ran=None,
             file=upload.name if upload is not None else None,
             text=pasted if upload is None and len(pasted) <= URL_PROMPT_LIMIT else "")
