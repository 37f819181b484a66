"""Audit: many prompts at once, one row each, through the store (re-runs are instant)."""

import math

import streamlit as st

from pages.common import (URL_PROMPT_LIMIT, PageUrl, guarded, model_picker, open_in_analyze, step_progress, store,
                          through_app, url_model)
from sinkviz.flow.analysis import Settings
from sinkviz.flow.embedded import DEFAULT_MODEL
from sinkviz.flow.audit import MAX_FILE_BYTES, MAX_ROWS, audit, prompts_from_lines, read_prompts
from sinkviz.flow.audit_table import extra_names, file_columns, filtered_csv, judged
from sinkviz.numbers.calibration import TYPICAL, calibrate, calibration_prompts
from sinkviz.numbers.readings import READINGS

BANDS = {"unusual, high": lambda p: p > TYPICAL[1], "typical": lambda p: TYPICAL[0] <= p <= TYPICAL[1],
         "unusual, low": lambda p: p < TYPICAL[0], "not judged": lambda p: math.isnan(p)}

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
    inputs = {"model": settings.model, "template": settings.use_template, "n": first_n, "calibrate": calibrated,
              "file": upload.name if upload is not None else None,
              "text": pasted if upload is None and len(pasted) <= URL_PROMPT_LIMIT else ""}
    return {"rows": rows, "extras": extras, "settings": settings, "cal": cal, "first_n": first_n, "inputs": inputs}


def same_inputs(run: dict) -> bool:
    """Whether the URL names the audit ``run`` (its inputs, pasted prompts included)."""
    return all(url.get(k, kind=type(v) if v is not None else str) == v for k, v in run["inputs"].items())


shown = st.session_state.get("au_run")
# A link to an audit of pasted prompts runs it once on arrival (every prompt then comes from the store).
arrived = (url.get("ran") and url.get("text") and not (shown and same_inputs(shown))
           and st.session_state.get("au_tried") != url.params)
if run or arrived:
    st.session_state.au_tried = url.params
    done = guarded(lambda: run_audit(Settings(model=model, use_template=use_template)), "Audit")
    if done is not None:
        shown = st.session_state.au_run = done


def one_line(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", " ↵ ")


def show(run: dict) -> None:
    rows, extras, n = run["rows"], run["extras"], run["first_n"]
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
                bands=",".join(c for c, band in BAND_CODES.items() if band in bands))
    keep = [(r, m) for r, m in zip(rows, marks)
            if (r.severity or "error") in severities and any(BANDS[b](m["percentile"]) for b in bands)]
    keep.sort(key=lambda rm: -rm[1]["percentile"] if not math.isnan(rm[1]["percentile"]) else math.inf)
    names = extra_names(extras)
    table = [{"prompt": one_line(r.prompt), **{k: (extras[r.row - 1] if r.row - 1 < len(extras) else {}).get(k, "")
                                               for k in names},
              "your first tokens" if run["settings"].use_template else "first tokens": r.first_tokens,
              "reading": m["reading"], "percentile": m["percentile"], "against this model": m["against_model"],
              "worst layer": r.worst_layer, "sink mass (worst layer)": r.worst_sink_mass,
              "× uniform": r.ratio_to_uniform, "severity (fixed)": r.severity or "error",
              "share: template": r.share_template, "share: system": r.share_system, "share: your text": r.share_user,
              "tokens": r.n_tokens, "row": r.row, "error": r.error} for r, m in keep]
    pct = st.column_config.NumberColumn(format="percent")
    st.dataframe(table, hide_index=True, key="au_table", row_height=60,
                 column_config={"prompt": st.column_config.TextColumn(width="large", pinned=True,
                                                                      help="The full text: pick the row below"),
                                "reading": pct, "sink mass (worst layer)": pct, "share: template": pct,
                                "share: system": pct, "share: your text": pct,
                                "percentile": st.column_config.NumberColumn(format="%.0f")})
    st.caption(f"{len(keep)} of {len(rows)} rows, highest percentile first. Reading: mean over layers ≥ 2 of "
               + ("the attention on the first N tokens of your text, from every query that can see them"
                  if reading == "user" else "the attention queries i ≥ N give to the sequence's first N tokens")
               + (f"; percentile among {run['cal'].n_prompts} calibration prompts on this model (typical: "
                  f"{TYPICAL[0]:.0f}th–{TYPICAL[1]:.0f}th)." if run["cal"] else "; not judged against the model."))
    st.download_button("Download these rows (CSV)",
                       filtered_csv([r for r, _ in keep], extras, [m for _, m in keep]), "sinkviz-audit.csv", "text/csv")
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
