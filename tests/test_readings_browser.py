"""Issue 15 in headless Chromium with realistic prompts: the user's own text in the Audit's first-tokens
column and in Compare (position 0 named as the template's), readable Japanese and emoji tokens in the
verdict, inspector, token table and audit, no stale Compare results, and the Audit's percentile column
filled (equal to the engine's). Every expected value comes from the engine, run here on the same
prompts; the page's values are read from its text and from its tables' own CSV export.

Screenshots land in test-artifacts/readings-*.png. Needs Debian's chromium (tests/browser.py).
"""

import csv
import io
import math

import pytest

from browser import ARTIFACTS, analyze_in_page, open_app, require_chromium, streamlit_server
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.flow.store import ResultStore
from sinkviz.numbers.readings import compare_readings, opening_tokens

require_chromium()

SUPPORT = ("You are the support assistant of Acme Cloud. Answer billing questions politely and cite the "
           "policy section.\n\nCustomer: my invoice shows the wrong VAT number.")
BLANK_LINE = "Hello team,\n\nplease summarise the call below in three bullet points."
HASHES = "### Refund policy\nRefunds are possible within 30 days of purchase."
GERMAN = "Bitte fasse die folgende E-Mail in zwei Sätzen zusammen: Der Termin am Montag fällt aus."
JAPANESE = "請求書の税番号が間違っています。\n直してください。"
EMOJI = "🙏🏽 Can you fix my invoice? 🧾 The VAT number is wrong 😕"
TICKETS = [("t-1", "ana", SUPPORT), ("t-2", "ben", BLANK_LINE), ("t-3", "chi", HASHES), ("t-4", "dan", GERMAN),
           ("t-5", "eve", JAPANESE), ("t-6", "fay", EMOJI)]
FFFD = "\ufffd"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, default_model_dir):
    return tmp_path_factory.mktemp("readings-store")


@pytest.fixture(scope="module")
def server(store_dir):
    """The dashboard on its own store, so the test can read the calibration the page made."""
    with streamlit_server(store_dir) as url:
        yield url


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The engine's analysis of a prompt (default model, template on unless told), on a private store."""
    store = ResultStore(tmp_path_factory.mktemp("engine-store"))
    return lambda prompt, template=True: analyze(prompt, Settings(use_template=template), store=store)


def idle(page):
    page.wait_for_timeout(500)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')


def table_csv(page, frame) -> list[dict[str, str]]:
    """The rows of a st.dataframe as its own toolbar's 'Download as CSV' gives them (as a download:
    without the File System Access API, which would open a save dialog)."""
    page.evaluate("delete window.showSaveFilePicker; window.showSaveFilePicker = undefined")
    frame.hover()
    with page.expect_download() as download:   # a DOM click: the toolbar fades in, so it is never "stable"
        frame.get_by_role("button", name="Download as CSV").dispatch_event("click")
    text = open(download.value.path(), encoding="utf-8-sig").read()
    return list(csv.DictReader(io.StringIO(text)))


def metrics(page) -> list[tuple[str, str, str]]:
    """(label, value, delta) of each st.metric on the page, in page order."""
    out = []
    for m in page.locator('[data-testid="stMetric"]').all():
        delta = m.locator('[data-testid="stMetricDelta"]')
        out.append((m.locator('[data-testid="stMetricLabel"]').inner_text().strip(),
                    m.locator('[data-testid="stMetricValue"]').inner_text().strip(),
                    delta.inner_text().strip() if delta.count() else ""))
    return out


def test_japanese_and_emoji_tokens_read_as_text(server, browser, engine):
    for name, prompt in (("japanese", JAPANESE), ("emoji", EMOJI)):
        page = open_app(browser, server)
        analyze_in_page(page, prompt)
        want = engine(prompt)
        user = [m for m in metrics(page) if m[0].startswith("Your text's first 3 tokens")]
        assert user and user[0][2] == opening_tokens(want.tokens, 3) and FFFD not in user[0][2]
        verdict = page.locator('[data-testid="stAlert"]').filter(has_text="fixed thresholds").inner_text()
        assert "Severity:" in verdict and FFFD not in verdict
        page.get_by_role("tab", name="Tokens").click()
        rows = table_csv(page, page.locator('[data-testid="stDataFrame"]').first)
        assert [r["token"] for r in rows] == list(want.tokens.shown)
        assert FFFD not in "".join(want.tokens.shown) and "↵" in want.tokens.shown   # the template's newlines
        page.screenshot(path=ARTIFACTS / f"readings-analyze-{name}-tokens.png", full_page=True)
    page = open_app(browser, server)
    page.get_by_text("Chat template", exact=True).click()   # off: the inspector's first five are the user's
    analyze_in_page(page, JAPANESE)
    raw = engine(JAPANESE, template=False)
    page.get_by_role("tab", name="Position-0 inspector").click()
    page.wait_for_selector("text=Attention received by position 0")
    first = [r["token"] for r in table_csv(page, page.locator('[data-testid="stDataFrame"]').first)]
    assert first == list(raw.tokens.shown[:5]) and FFFD not in "".join(first) and first[0].startswith("請")
    page.screenshot(path=ARTIFACTS / "readings-analyze-japanese-inspector.png", full_page=True)


def fill_variants(page, prompts):
    count = page.get_by_role("spinbutton", name="Variants")
    count.fill(str(len(prompts)))
    count.press("Enter")
    idle(page)
    for i, prompt in enumerate(prompts):
        box = page.get_by_label(f"Variant {chr(65 + i)}", exact=True)
        box.fill(prompt)
        box.press("Control+Enter")
        idle(page)


def ranked(page) -> dict[str, tuple[str, str, str]]:
    """Variant letter -> (value, delta, caption) as the headline shows them."""
    out = {}
    for col in page.locator('[data-testid="stColumn"]').filter(has=page.locator('[data-testid="stMetric"]')).all():
        label = col.locator('[data-testid="stMetricLabel"]').inner_text()
        out[label.split("Variant ")[1].strip()] = (col.locator('[data-testid="stMetricValue"]').inner_text().strip(),
                                                   col.locator('[data-testid="stMetricDelta"]').inner_text().strip(),
                                                   col.locator('[data-testid="stCaptionContainer"]').inner_text())
    return out


def test_compare_shows_the_users_openings_and_never_stale_results(server, browser, engine):
    page = open_app(browser, server, "Compare")
    variants = [SUPPORT, BLANK_LINE, HASHES]
    fill_variants(page, variants)
    page.get_by_role("button", name="Compare").click()
    page.wait_for_selector("text=Difference from A", timeout=300_000)
    idle(page)
    note = page.locator('[data-testid="stAlert"]').filter(has_text="Position 0").inner_text()
    assert note.startswith("Position 0 is the template's '<|im_start|>' in every variant")
    want = {v.label: v for v in compare_readings([engine(p) for p in variants], 3, "user")}
    shown = ranked(page)
    assert set(shown) == {"A", "B", "C"}
    for label, (value, delta, caption) in shown.items():
        assert value == f"{want[label].mean:.1%}"
        assert caption.startswith(f"measures: {want[label].opening}") and "<|im_start|>" not in caption
        assert delta == ("reference" if label == "A" else f"{100 * want[label].diff:+.1f} pts · {want[label].ratio:.2f}× A")
    assert shown["C"][2].startswith("measures: '###'") and shown["B"][2].startswith("measures: 'Hello'")
    page.screenshot(path=ARTIFACTS / "readings-compare.png", full_page=True)

    box = page.get_by_label("Variant B", exact=True)            # edit a variant: the old results go at once
    box.fill(GERMAN)
    box.press("Control+Enter")
    page.wait_for_selector("text=The inputs changed since the last comparison")
    idle(page)
    assert page.locator('[data-testid="stMetric"]').count() == 0 and page.locator(".js-plotly-plot").count() == 0
    page.screenshot(path=ARTIFACTS / "readings-compare-edited.png", full_page=True)
    page.get_by_role("button", name="Compare").click()
    page.wait_for_selector("text=Difference from A", timeout=300_000)
    idle(page)
    german = compare_readings([engine(p) for p in (SUPPORT, GERMAN, HASHES)], 3, "user")[1]
    assert ranked(page)["B"][0] == f"{german.mean:.1%}" and ranked(page)["B"][2].startswith(f"measures: {german.opening}")
    count = page.get_by_role("spinbutton", name="Variants")                        # fewer variants: the three vanish too
    count.fill("2")
    count.press("Enter")
    page.wait_for_selector("text=The inputs changed since the last comparison")
    idle(page)
    assert page.locator('[data-testid="stMetric"]').count() == 0 and page.locator(".js-plotly-plot").count() == 0


def test_audit_shows_the_users_opening_and_its_percentile(server, browser, store_dir, tmp_path):
    from sinkviz.flow.audit import audit, read_prompts
    from sinkviz.flow.audit_table import judged
    from sinkviz.numbers.calibration import calibrate
    data = ("id,owner,prompt\n" + "".join(
        f'{i},{o},"{p.replace(chr(34), chr(34) * 2)}"\n' for i, o, p in TICKETS)).encode()
    page = open_app(browser, server, "Audit")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        files=[{"name": "tickets.csv", "mimeType": "text/csv", "buffer": data}])
    idle(page)
    page.get_by_role("button", name="Run audit").click()
    page.wait_for_selector(f"text=done: {len(TICKETS)} prompts", timeout=590_000)
    idle(page)
    page.wait_for_selector('[data-testid="stDataFrame"]')
    page.screenshot(path=ARTIFACTS / "readings-audit.png", full_page=True)
    table = table_csv(page, page.locator('[data-testid="stDataFrame"]').first)

    cal = calibrate(Settings(), ResultStore(store_dir), progress=pytest.fail)      # the page made it
    rows = audit(read_prompts(data, "tickets.csv"), Settings(), 3, store=ResultStore(tmp_path / "s"))
    marks = {r.row: m for r, m in zip(rows, judged(rows, cal, "user", 3))}
    by_row = {r.row: r for r in rows}
    assert [t["id"] for t in table] == [f"t-{r.row}" for r in sorted(rows, key=lambda r: -marks[r.row]["percentile"])]
    for shown in table:
        row = by_row[int(shown["row"])]
        assert shown["your first tokens"] == row.first_tokens and "<|im_start|>" not in shown["your first tokens"]
        assert FFFD not in shown["your first tokens"]
        assert shown["percentile"] != "" and math.isfinite(float(shown["percentile"]))
        assert float(shown["percentile"]) == pytest.approx(marks[row.row]["percentile"], abs=1e-9)
        assert shown["against this model"] == marks[row.row]["against_model"]
    assert by_row[3].first_tokens.startswith("'###'") and by_row[2].first_tokens.startswith("'Hello'")
    assert "↵" in by_row[3].first_tokens or "↵" in by_row[2].first_tokens


def test_analyze_against_the_model_after_the_audit_calibrated(server, browser, store_dir, engine):
    from sinkviz.numbers.calibration import calibrate, sentences
    page = open_app(browser, server)
    analyze_in_page(page, SUPPORT)
    idle(page)
    cal = calibrate(Settings(), ResultStore(store_dir), progress=pytest.fail)
    headline = page.locator('[data-testid="stAlert"]').filter(has_text="Against this model").inner_text()
    for sentence in sentences(cal, engine(SUPPORT), 3):
        assert sentence.replace("**", "") in headline.replace("\n", " ")
    page.wait_for_selector("text=Percentile per layer among")
    page.screenshot(path=ARTIFACTS / "readings-analyze-support.png", full_page=True)
