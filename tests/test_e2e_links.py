"""Links that reproduce: on every page, set state, copy the URL, open it as a new visitor (a fresh
browser context) and find the same state and the same numbers. Plus: a key-only link of a long
prompt, an unknown key, the sidebar's memory of each page, and the menu on a direct first load.

Headless Chromium (see tests/browser.py); screenshots land in test-artifacts/.
"""

import json
import re
import urllib.parse

import numpy as np
import pytest
from playwright.sync_api import expect

from browser import ARTIFACTS, analyze_in_page, new_page, open_page, require_chromium, settle, streamlit_server, type_into
from plotly_json import decode
from sinkviz.flow.analysis import Settings, result_key
from sinkviz.flow.models import identity

require_chromium()

expect.set_options(timeout=60_000)
TITLES = ["Analyze", "Compare", "Sweep", "Audit", "Lab", "History", "Method"]
HEADINGS = {"": "Analyze a prompt", "compare": "Compare opening variants", "sweep": "Context-length sweep",
            "audit": "Batch prompt audit", "lab": "Mitigation lab", "history": "History", "method": "Method"}
PROMPT = "Paris is the capital of France. Tell me about its museums and when they open."
PLOTS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(e => JSON.stringify({
    title: e.layout.title && e.layout.title.text, shapes: (e.layout.shapes || []).map(s => [s.y0, s.y1]),
    data: e.data.map(t => [t.name, t.x, t.y, t.z])},
    (k, v) => ArrayBuffer.isView(v) ? Array.from(v) : v))"""


def charts(page) -> list[dict]:
    """Every chart's title (without the theme's bold tags), lines and data as drawn by plotly.js in
    the page (arrays decoded)."""
    found = [decode(json.loads(chart)) for chart in page.evaluate(PLOTS)]
    return [{**c, "title": re.sub("</?b>", "", c["title"] or "")} for c in found]


def same_charts(first, second) -> None:
    """The same charts, every plotted number equal (NaN where NaN)."""
    expect(second.locator(".js-plotly-plot")).to_have_count(first.locator(".js-plotly-plot").count())
    a, b = charts(first), charts(second)
    assert [(c["title"], c["shapes"]) for c in b] == [(c["title"], c["shapes"]) for c in a]
    for chart_a, chart_b in zip(a, b):
        assert len(chart_a["data"]) == len(chart_b["data"]), chart_a["title"]
        for trace_a, trace_b in zip(chart_a["data"], chart_b["data"]):
            for x, y in zip(trace_a, trace_b):
                np.testing.assert_array_equal(np.asarray(y, dtype=object if isinstance(y, (str, list)) else None),
                                              np.asarray(x, dtype=object if isinstance(x, (str, list)) else None),
                                              err_msg=chart_a["title"])


def texts(page, testid: str) -> list[str]:
    """The text of every element with this test id, spaces collapsed (hidden tabs' too)."""
    return [" ".join(t.split()) for t in page.locator(f'[data-testid="{testid}"]').all_text_contents()]


def query(page, after: str | None = None) -> dict:
    """The page URL's query parameters; ``after``: first wait until that parameter is in the URL (the
    last action's rerun writes it, and on a slow machine that rerun may start after settle() returned)."""
    if after:
        page.wait_for_function("p => new URLSearchParams(location.search).has(p)", arg=after, timeout=60_000)
    return dict(urllib.parse.parse_qsl(urllib.parse.urlparse(page.url).query))


def choose(page, label: str, option: str, typed: str | None = None) -> None:
    box = page.get_by_role("combobox", name=label)
    box.click()
    box.fill(typed or option)                          # filters the list, then the exact option
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def slide(page, label: str, steps: int) -> None:
    """Move the slider called ``label`` by ``steps`` with the keyboard."""
    slider(page, label).focus()
    for _ in range(abs(steps)):
        page.keyboard.press("ArrowRight" if steps > 0 else "ArrowLeft")
    settle(page)


RANGES = '[data-testid="stSlider"] input[type="range"]'


def slider(page, label: str):
    return page.locator('[data-testid="stSlider"]').filter(has_text=label).locator('input[type="range"]')


def visitor(browser, url: str, ready: str):
    """``url`` opened by someone else (a fresh browser context), once ``ready`` is on the page."""
    page = new_page(browser)
    page.goto(url)
    page.wait_for_selector(ready)
    settle(page)
    return page


def same_page(first, second, inputs: list[str], boxes=(), captions: bool = True) -> None:
    """Both pages show the same inputs, sliders, messages, metrics, captions and charts."""
    for x in inputs:   # (the browser fills a long text box a moment after the run: expect() waits for it)
        expect(second.get_by_label(x, exact=True)).to_have_value(first.get_by_label(x, exact=True).input_value())
    for b in boxes:
        expect(second.get_by_role("combobox", name=b)).to_have_value(first.get_by_role("combobox", name=b).input_value())
    values = [r.input_value() for r in first.locator(RANGES).all()]
    expect(second.locator(RANGES)).to_have_count(len(values))
    for i, value in enumerate(values):
        expect(second.locator(RANGES).nth(i)).to_have_value(value)
    for testid in ("stAlert", "stMetric") + (("stCaption",) if captions else ()):
        assert texts(second, testid) == texts(first, testid), testid
    same_charts(first, second)


def test_analyze_link_shows_the_same_analysis_view_and_severity(server, browser):
    page = open_page(browser, server, "Analyze a prompt")
    page.get_by_text("More settings").click()
    type_into(page, "Warning at", "0.20")
    type_into(page, "Critical at", "0.40")
    type_into(page, "Sink-rate epsilon (Gu et al.)", "0.50")
    slide(page, "Sink = the first N tokens", 2)
    analyze_in_page(page, PROMPT)
    page.get_by_role("tab", name="Heatmaps").click()
    settle(page)
    choose(page, "Layer", "24")
    choose(page, "Head", "head 2")
    assert {k: v for k, v in query(page, after="head").items() if k != "key"} == {
        "prompt": PROMPT, "warn": "0.2", "crit": "0.4", "eps": "0.5", "n": "5", "tab": "Heatmaps", "layer": "24",
        "head": "2"}
    page.screenshot(path=ARTIFACTS / "link-analyze-sender.png", full_page=True)

    other = visitor(browser, page.url, "text=from the result store")
    other.get_by_text("More settings").click()
    settle(other)
    same_page(page, other, ["Prompt", "Warning at", "Critical at", "Flag above × uniform",
                            "Sink-rate epsilon (Gu et al.)", "System turn (chat template only; empty = the "
                            "template's default)"], boxes=["Layer", "Head", "Model"], captions=False)
    assert other.get_by_role("tab", selected=True).inner_text() == "Heatmaps"
    assert "Layer 24, head 2" in [c["title"] for c in charts(other)]
    assert "By fixed thresholds (warning 20%, critical 40%). Severity: critical" in texts(other, "stAlert")[0]
    other.screenshot(path=ARTIFACTS / "link-analyze-receiver.png", full_page=True)


def test_key_only_link_restores_a_long_prompt(server, browser):
    long_prompt = "\n\n".join(f"Section {i}. The committee reviewed the quarterly report, noted steady growth "
                              "in every region and asked for a shorter summary next time." for i in range(40))
    assert len(long_prompt) > 4000
    page = open_page(browser, server, "Analyze a prompt")
    analyze_in_page(page, long_prompt)
    assert set(query(page)) == {"key"}                  # too long for the URL: the key alone
    other = visitor(browser, page.url, "text=from the result store")
    expect(other.get_by_label("Prompt", exact=True)).to_have_value(long_prompt)
    assert texts(other, "stMetric") == texts(page, "stMetric")
    same_charts(page, other)


def test_unknown_key_says_not_found_and_analyses_nothing(server, browser):
    unknown = "0123456789abcdef0123456789abcdef"
    page = visitor(browser, f"{server}/?key={unknown}&n=4", "text=Not found")
    assert texts(page, "stAlert")[0].startswith(
        f"Not found: this server's result store has no analysis with the key {unknown}.")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("")     # never the example prompt
    assert [c["title"] for c in charts(page) if "where each token's attention goes" not in c["title"]] == []
    assert page.locator("text=done (").count() == 0
    expect(slider(page, "Sink = the first N tokens")).to_have_value("4")
    page.screenshot(path=ARTIFACTS / "link-unknown-key.png", full_page=True)
    analyze_in_page(page, PROMPT)                  # the offer: press Analyze
    assert query(page)["key"] == result_key(identity("smollm2-135m-instruct"), Settings(), PROMPT)
    assert texts(page, "stAlert")[0].startswith("By fixed")

    with_prompt = visitor(browser, f"{server}/?key={unknown}&prompt=Hello+there.", "text=Not found")
    expect(with_prompt.get_by_label("Prompt", exact=True)).to_have_value("Hello there.")
    assert with_prompt.locator("text=done (").count() == 0


def test_compare_link(server, browser):
    page = open_page(browser, f"{server}/compare", "Compare opening variants")
    settle(page)
    type_into(page, "Variants", "3")
    type_into(page, "Variant C", "Summary first: you are a helpful assistant.")
    slide(page, "Sink = the first N tokens", -1)
    page.get_by_text("the sequence's first N tokens").click()
    settle(page)
    page.get_by_role("button", name="Compare").click()
    page.wait_for_selector("text=Difference from A")
    settle(page)
    choose(page, "Layer for the heatmaps", "5")
    assert {k: v for k, v in query(page, after="layer").items() if k != "keys"} == {
        "count": "3", "n": "2", "reading": "sequence", "layer": "5", "c": "Summary first: you are a helpful assistant."}
    other = visitor(browser, page.url, "text=Difference from A")
    same_page(page, other, ["Variant A", "Variant B", "Variant C", "Variants"], boxes=["Layer for the heatmaps"])
    other.screenshot(path=ARTIFACTS / "link-compare-receiver.png", full_page=True)


def test_sweep_link(server, browser):
    page = open_page(browser, f"{server}/sweep", "Context-length sweep")
    settle(page)
    type_into(page, "Longest prefix (tokens; 0 = the whole text)", "600")
    slide(page, "Sink = the first N tokens", 2)
    page.get_by_role("button", name="Run sweep").click()
    page.wait_for_selector("text=done: 3 lengths", timeout=300_000)
    settle(page)
    assert {k for k in query(page)} == {"n", "max", "keys"} and len(query(page)["keys"].split(",")) == 3
    other = visitor(browser, page.url, "text=as the context grows")
    same_page(page, other, ["Longest prefix (tokens; 0 = the whole text)"])
    other.screenshot(path=ARTIFACTS / "link-sweep-receiver.png", full_page=True)


def test_audit_link(server, browser):
    page = open_page(browser, f"{server}/audit", "Batch prompt audit")
    settle(page)
    type_into(page, "…or paste prompts, one per line", "You are a helpful assistant.\n:\nHi there\nSummarise the report.")
    page.get_by_text("Judge against this model").click()
    slide(page, "Sink = the first N tokens", -1)
    page.get_by_role("button", name="Run audit").click()
    page.wait_for_selector("text=done: 4 prompts", timeout=180_000)
    settle(page)
    page.get_by_text("the sequence's first 2 tokens").click()
    settle(page)
    choose(page, "Read or open a row", "row 3: Hi there", "row 3")
    assert {k: v for k, v in query(page, after="row").items() if k != "text"} == {"calibrate": "0", "n": "2", "ran": "1",
                                                                       "reading": "sequence", "row": "3"}
    other = visitor(browser, page.url, "text=of 4 rows")
    same_page(page, other, ["…or paste prompts, one per line"], boxes=["Read or open a row"])
    rows = []
    for p in (page, other):   # the rows shown, as the CSV download has them
        with p.expect_download() as download:
            p.get_by_role("button", name="Download these rows (CSV)").click()
        rows.append(download.value.path().read_bytes())
    assert rows[0] == rows[1] and rows[0].count(b"\n") == 5


def test_lab_link(server, browser):
    page = open_page(browser, f"{server}/lab", "Mitigation lab")
    settle(page)
    type_into(page, "K (first keys scaled)", "4")
    type_into(page, "γ (logit factor)", "0.50")
    page.get_by_role("button", name="Run scaling").click()
    page.wait_for_selector("text=KL(before")
    settle(page)
    page.get_by_role("tab", name="Sink tokens for windowed attention").click()
    type_into(page, "W (cache entries)", "64")
    assert query(page, after="window") == {"k": "4", "gamma": "0.5", "scaled": "1", "window": "64"}
    other = visitor(browser, page.url, "text=KL(before")
    same_page(page, other, ["Prompt", "K (first keys scaled)", "γ (logit factor)", "W (cache entries)",
                            "S (sink tokens kept)", "Tokens of the shipped text"])


def test_sidebar_returns_to_each_page_as_it_was_left(server, browser):
    page = open_page(browser, server, "Analyze a prompt")
    analyze_in_page(page, PROMPT)
    page.get_by_role("tab", name="Position-0 inspector").click()
    settle(page)
    assert query(page, after="tab")["tab"] == "Position-0 inspector"
    left = page.url
    page.get_by_role("link", name="Compare", exact=True).click()
    page.wait_for_selector("text=Compare opening variants")
    settle(page)
    type_into(page, "Variant B", "A different opening line. You are a helpful assistant.")
    page.get_by_role("link", name="Analyze", exact=True).click()
    page.wait_for_selector("text=from the result store")
    settle(page)
    assert page.url == left and page.get_by_role("tab", selected=True).inner_text() == "Position-0 inspector"
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(PROMPT)
    page.get_by_role("link", name="Compare", exact=True).click()
    page.wait_for_selector("text=Compare opening variants")
    settle(page)
    expect(page.get_by_label("Variant B", exact=True)).to_have_value("A different opening line. You are a helpful assistant.")


@pytest.mark.parametrize("path", list(HEADINGS))
def test_direct_first_load_shows_only_the_real_pages(path, browser, tmp_path, default_model_dir):
    """The first request to a fresh server is this page's own URL (Streamlit's pages/ folder mode)."""
    with streamlit_server(tmp_path / "store", SINKVIZ_WARM="0") as url:
        page = new_page(browser)
        page.goto(f"{url}/{path}")
        page.wait_for_selector(f"h1:has-text('{HEADINGS[path]}')")
        page.wait_for_selector('[data-testid="stSidebar"] a:has-text("Method")')
        settle(page)
        links = page.locator('[data-testid="stSidebar"] a')
        assert [links.nth(i).inner_text().split("\n")[-1] for i in range(links.count())] == TITLES
        assert "sinkviz" in page.locator('[data-testid="stSidebar"]').inner_text()   # app.py's sidebar ran
        assert page.get_by_role("link", name="common").count() == page.get_by_role("link", name="app").count() == 0
        if path == "sweep":
            page.screenshot(path=ARTIFACTS / "direct-first-load-sweep.png", full_page=True)
