"""Compare: two to four opening variants of a prompt, ranked by one reading, side by side."""

import streamlit as st

from pages.common import (EXAMPLES, URL_PROMPT_LIMIT, PageUrl, guarded, model_picker, not_found, run_analysis,
                          store, stored_from_url, through_app, url_model)
from sinkviz.output import segment_figures
from sinkviz.flow.analysis import Settings
from sinkviz.flow.embedded import DEFAULT_MODEL
from sinkviz.errors import SinkvizError
from sinkviz.numbers.metrics import Thresholds
from sinkviz.numbers.calibration import judge_value, load_calibration, ordinal
from sinkviz.numbers.readings import READINGS, compare_readings, reading_title
from sinkviz.output.html_report import compare_report

SHALLOW = Thresholds().shallow_layers
LABELS = "abcd"      # the variants' names in the URL
DEFAULTS = [EXAMPLES["Helpful assistant"], EXAMPLES["Helpful assistant, a role line first"],
            EXAMPLES["Placeholder at position 0"], "Answer concisely. You are a helpful assistant."]
through_app()
url = PageUrl("compare", model=DEFAULT_MODEL, count=2, template=True, n=3, reading="user", layer=None, keys=None,
              **dict(zip(LABELS, DEFAULTS)))


def inputs_of(results) -> tuple:
    return results[0].settings.model, results[0].settings.use_template, tuple(r.prompt for r in results)


keys, linked = stored_from_url(url, "keys")      # the comparison the URL names, each variant from the store
found = len(keys) in (2, 3, 4) and all(linked)
texts = [url.get(label) for label in LABELS]  # "" for one too long for a link
if found:
    start_model, start_template, texts[:len(keys)] = inputs_of(linked)
else:
    start_model, start_template = url_model(url), url.get("template")
st.title("Compare opening variants")
st.caption("The same prompt with a different first line can move the sink. Each variant is analysed "
           "with the same model and settings; results come from the store when they exist.")
with st.container(border=True):
    model = model_picker("cmp", start_model)
    c1, c2, c3 = st.columns(3)
    count = c1.number_input("Variants", 2, 4, len(keys) if found else url.get("count", lo=2, hi=4),
                            key="cmp_count")
    use_template = c2.toggle("Chat template", start_template, key="cmp_template",
                             help="With a template, its own tokens (and a default system turn) come first, so "
                                  "position 0 is the template's in every variant; the default reading measures "
                                  "your text's opening instead.")
    first_n = c3.slider("Sink = the first N tokens", 1, 8, url.get("n", lo=1, hi=8), key="cmp_first_n")
    readings = list(READINGS)
    reading = st.radio("Reading", readings, readings.index(url.get("reading", choices=readings)),
                       format_func=READINGS.get, horizontal=True, key="cmp_reading")
    cols = st.columns(int(count))
    prompts = [col.text_area(f"Variant {chr(65 + i)}", texts[i], key=f"cmp_prompt_{i}", height=120)
               for i, col in enumerate(cols)]
    run = st.button("Compare", type="primary")

inputs = (model, use_template, tuple(prompts))
results = None
if run:
    settings = Settings(model=model, use_template=use_template)
    computed = [run_analysis(p, settings, f"Variant {chr(65 + i)}") for i, p in enumerate(prompts)]
    results = computed if all(r is not None for r in computed) else None
elif found and inputs_of(linked) == inputs:
    results = linked
elif found:   # never leave old results under new inputs
    st.info("The inputs changed since the last comparison; press Compare to see the new one.")
elif keys:
    missing = [chr(65 + i) for i, r in enumerate(linked) if r is None]
    not_found(f"analysis of variant{'s' if len(missing) > 1 else ''} {', '.join(missing)} under the link's keys",
              "The variants the link carries are in the boxes above (a long one is not): press Compare.")


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
    ids = list(results[0].stats.layer_ids)
    layer = st.selectbox("Layer for the heatmaps", range(n_layers), key="cmp_layer", format_func=lambda row: f"{ids[row]}",
                         index=ids.index(url.get("layer", ids[min(3, n_layers - 1)], choices=ids, kind=int)))
    view["layer"] = ids[layer]
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


view: dict = {}
if results:
    try:
        show(results)
    except SinkvizError as err:
        st.error(str(err))
url.keep(model=model, count=int(count), template=use_template, n=first_n, reading=reading, **view,
         keys=",".join(r.key for r in results) if results else None,
         **{label: (text if len(text) <= URL_PROMPT_LIMIT else "") if i < count else None
            for i, (label, text) in enumerate(zip(LABELS, prompts + [None] * 4))})
