"""Compare: two to four opening variants of a prompt, ranked by one reading, side by side."""

import streamlit as st

from pages.common import EXAMPLES, guarded, model_picker, run_analysis, store
from sinkviz.output import segment_figures
from sinkviz.flow.analysis import Settings
from sinkviz.errors import SinkvizError
from sinkviz.numbers.metrics import Thresholds
from sinkviz.numbers.calibration import judge_value, load_calibration, ordinal
from sinkviz.numbers.readings import READINGS, compare_readings, reading_title
from sinkviz.output.html_report import compare_report

SHALLOW = Thresholds().shallow_layers
st.title("Compare opening variants")
st.caption("The same prompt with a different first line can move the sink. Each variant is analysed "
           "with the same model and settings; results come from the store when they exist.")
with st.container(border=True):
    model = model_picker("cmp")
    c1, c2, c3 = st.columns(3)
    count = c1.number_input("Variants", 2, 4, 2, key="cmp_count")
    use_template = c2.toggle("Chat template", True, key="cmp_template",
                             help="With a template, its own tokens (and a default system turn) come first, so "
                                  "position 0 is the template's in every variant; the default reading measures "
                                  "your text's opening instead.")
    first_n = c3.slider("Sink = the first N tokens", 1, 8, 3, key="cmp_first_n")
    reading = st.radio("Reading", list(READINGS), format_func=READINGS.get, horizontal=True, key="cmp_reading")
    defaults = [EXAMPLES["Prompt A (seed 003)"], EXAMPLES["Prompt B (seed 003)"],
                EXAMPLES["Placeholder at position 0"], "Answer concisely. You are a helpful assistant."]
    cols = st.columns(int(count))
    prompts = [col.text_area(f"Variant {chr(65 + i)}", defaults[i], key=f"cmp_prompt_{i}", height=120)
               for i, col in enumerate(cols)]
    run = st.button("Compare", type="primary")

inputs = (model, use_template, tuple(prompts))
if run:
    settings = Settings(model=model, use_template=use_template)
    st.session_state.pop("cmp_results", None)       # never leave old results under new inputs
    results = [run_analysis(p, settings, f"Variant {chr(65 + i)}") for i, p in enumerate(prompts)]
    if all(r is not None for r in results):
        st.session_state.cmp_results, st.session_state.cmp_inputs = results, inputs


def headline(results, readings) -> None:
    what = READINGS[reading].replace("N", str(first_n))
    st.subheader(f"Ranked by {what}")
    st.caption(f"Value = mean over layers ≥ {SHALLOW} (the layers Analyze judges), of "
               + ("the attention on your text's first tokens from every query that can see them."
                  if reading == "user" else "the attention queries i ≥ N give to positions 0..N−1."))
    if use_template and reading == "user":
        st.info(f"Position 0 is the template's {results[0].tokens.shown[0]!r} in every variant; the ranking "
                "compares the openings of your own text.")
    ranked = sorted(readings, key=lambda v: -v.mean)
    cal = guarded(lambda: load_calibration(results[0].settings, store()), "Loading the calibration")
    for rank, (col, v) in enumerate(zip(st.columns(len(ranked)), ranked), start=1):
        delta = "reference" if v.label == "A" else f"{100 * v.diff:+.1f} pts · {v.ratio:.2f}× A"
        col.metric(f"#{rank} · Variant {v.label}", f"{v.mean:.1%}", delta, delta_color="off", delta_arrow="off")
        judged = ""
        if cal is not None:
            pct, text = judge_value(cal, v.mean, reading, first_n)
            judged = f" · {ordinal(pct)} percentile for this model, {text}"
        col.caption(f"measures: {v.opening}{judged}")


def show(results) -> None:
    readings = compare_readings(results, first_n, reading)
    labels = [v.label for v in readings]
    headline(results, readings)
    what = reading_title(reading, first_n)
    values = [v.per_layer for v in readings]
    st.plotly_chart(segment_figures.compare_lines(labels, values, what), key="cmp_lines")
    st.plotly_chart(segment_figures.compare_difference(labels, values, what), key="cmp_diff")
    n_layers = results[0].stats.n_layers
    layer = st.selectbox("Layer for the heatmaps", range(n_layers), index=min(3, n_layers - 1), key="cmp_layer",
                         format_func=lambda row: f"{results[0].stats.layer_ids[row]}")
    rows = segment_figures.aligned_rows(results)
    if rows:
        st.caption(f"Rows: the {rows} query tokens all variants end with, aligned; columns: every key.")
    maps = segment_figures.compare_heatmaps(labels, results, layer)
    for i, (col, fig) in enumerate(zip(st.columns(len(results)), maps)):
        col.plotly_chart(fig, key=f"cmp_map_{i}")
    st.download_button("One-file report (HTML)", lambda: compare_report(
                           results, first_n, reading, load_calibration(results[0].settings, store()), layer),
                       "sinkviz-compare-report.html", "text/html", type="primary",
                       help="This comparison in one file that opens offline: the ranking, each variant's prompt and "
                            "verdict, every chart and the method.")


results = st.session_state.get("cmp_results")
if results and st.session_state.get("cmp_inputs") != inputs:
    st.session_state.pop("cmp_results", None)
    st.info("The inputs changed since the last comparison; press Compare to see the new one.")
elif results:
    try:
        show(results)
    except SinkvizError as err:
        st.error(str(err))
