"""The one-file report in headless Chromium: opened from disk with the network off it draws every
chart, and the plotted values are the engine's; each page's download gives that report.

Screenshots land in test-artifacts/ (report-*.png, *-report-button.png).
"""

import html
import json
import re

import numpy as np

from browser import ARTIFACTS, analyze_in_page, open_app, require_chromium
from plotly_json import array, decode, sink_mass_bars
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.numbers.metrics import layer_entropy, layer_sinks
from sinkviz.output import figures
from sinkviz.output.html_report import analysis_report

require_chromium()

PROMPT = ("Use the documents below to answer.\n\nDocument 1: The Eiffel Tower was completed in 1889 for the "
          "World's Fair in Paris.\n\nQuestion: When was it completed? </script><script>alert(1)</script>")
PLOTTED = """() => {
  const plain = v => {
    if (v && v._inputArray) v = v._inputArray;                      // a decoded {dtype, bdata} array
    if (ArrayBuffer.isView(v) || Array.isArray(v)) return Array.from(v, plain);
    return (typeof v === 'number' && Number.isNaN(v)) ? null : v;
  };
  return Array.from(document.querySelectorAll('.js-plotly-plot'), gd => ({
    title: gd.layout.title.text,
    traces: gd.data.map(t => ({type: t.type, name: t.name, x: plain(t.x), y: plain(t.y), z: plain(t.z)}))}));
}"""


def by_title(charts: list[dict], start: str) -> dict:
    hits = [c for c in charts if str(c["title"]).startswith(start)]
    assert len(hits) == 1, f"{len(hits)} charts titled {start!r}"
    return hits[0]


def test_report_opens_offline_and_plots_the_engine_numbers(browser, store, tmp_path, default_model_dir):
    a = analyze(PROMPT, Settings(), store=store)
    path = tmp_path / "report.html"
    path.write_text(analysis_report(a), encoding="utf-8")
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    context.set_offline(True)
    requests, problems = [], []

    def only_the_file(route):
        requests.append(route.request.url)
        route.continue_() if route.request.url.startswith("file:") else route.abort()
    context.route("**/*", only_the_file)
    page = context.new_page()
    page.on("dialog", lambda d: (problems.append(f"dialog {d.message}"), d.dismiss()))
    page.on("pageerror", lambda err: problems.append(f"error {err}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console {m.text}"))
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length"
                           " === document.querySelectorAll('figure.chart').length", timeout=60_000)
    charts = page.evaluate(PLOTTED)
    assert len(charts) == 9
    page.screenshot(path=ARTIFACTS / "report-top.png")
    page.locator("figure.chart").nth(3).screenshot(path=ARTIFACTS / "report-heatmap.png")
    context.close()
    assert requests == [path.as_uri()] and problems == []

    stats = a.stats
    sinks = layer_sinks(stats, 3)
    layers, mass = bar_values(by_title(charts, "Attention on the first 3 tokens, per layer")["traces"])
    np.testing.assert_array_equal(mass, sinks.sink_mass)
    assert layers.tolist() == list(stats.layer_ids)
    deep = np.array(stats.layer_ids) >= 2
    strongest = int(np.where(deep, sinks.sink_mass, -1).argmax())
    z = array(by_title(charts, f"Layer {strongest}, mean over heads")["traces"][0]["z"])
    seen = np.isfinite(z)
    np.testing.assert_array_equal(seen, np.tril(np.ones_like(seen)))
    np.testing.assert_allclose(z[seen], figures.layer_map(stats, strongest)[seen], rtol=1e-6)
    np.testing.assert_array_equal(np.array(by_title(charts, "Attention entropy per layer")["traces"][0]["y"]),
                                  layer_entropy(stats))
    np.testing.assert_array_equal(array(by_title(charts, "Attention received by position 0")["traces"][0]["z"]),
                                  stats.received[:, :, 0])


def downloaded_report(page, button: str, shot: str, tmp_path) -> str:
    """Screenshot ``button`` in place, click it, and return the file it downloads."""
    target = page.get_by_role("button", name=button)
    target.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / shot)
    with page.expect_download() as download:
        target.click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    return saved.read_text(encoding="utf-8")


def bar_values(traces: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a chart's bars, gathered over its bar traces (one per colour) in x order."""
    pairs = sorted((x, y) for t in traces if t["type"] == "bar" for x, y in zip(t["x"], t["y"]))
    return np.array([x for x, _ in pairs]), np.array([y for _, y in pairs], dtype=float)


def report_figures(text: str) -> list[dict]:
    return [decode(json.loads(b)) for b in re.findall(r'<script type="application/json">(.*?)</script>', text, re.S)]


def test_each_page_downloads_its_report(server, browser, tmp_path):
    page = open_app(browser, server)
    analyze_in_page(page, PROMPT)
    bars = [c for c in page.evaluate(PLOTTED) if "Attention on the first 3 tokens" in str(c["title"])]
    shown = bar_values(bars[0]["traces"])[1]                       # the page's own sink-mass bars (not the intro's map)
    page.get_by_role("tab", name="Export").click()
    text = downloaded_report(page, "One-file report (HTML)", "analyze-report-button.png", tmp_path)
    assert html.escape(PROMPT) in text and "<script>alert" not in text
    bars = report_figures(text)[0]
    assert bars["layout"]["title"]["text"].startswith("Attention on the first 3 tokens, per layer")
    np.testing.assert_array_equal(sink_mass_bars(bars)[1], shown)

    page.get_by_role("link", name="Compare", exact=True).click()
    page.get_by_role("button", name="Compare").click()
    page.wait_for_selector("text=Difference from A", timeout=180_000)
    text = downloaded_report(page, "One-file report (HTML)", "compare-report-button.png", tmp_path)
    assert "Opening variants compared" in text and html.escape("Assistant: helpful and concise.") in text
    assert len(report_figures(text)) == 4                              # lines, difference, two heatmaps

    page.get_by_role("link", name="Audit", exact=True).click()
    box = page.get_by_label("…or paste prompts, one per line")
    box.fill("You are a helpful assistant. Answer concisely.\n:\nWhat is the capital of France?")
    box.press("Control+Enter")
    page.get_by_text("Judge against this model", exact=True).click()     # no calibration run: quicker
    page.get_by_role("button", name="Run audit").click()
    page.wait_for_selector("text=done: 3 prompts", timeout=300_000)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    text = downloaded_report(page, "Report of these rows (HTML)", "audit-report-button.png", tmp_path)
    assert "Prompt audit" in text and "3 prompts of 3 audited" in text
    assert "What is the capital of France?" in text and "SmolLM2-135M-Instruct" in text
    assert '<th>Against this model</th><td class="text">not judged</td>' in text
