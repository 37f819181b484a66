"""End to end in headless Chromium: paste, run, switch pages, compare, reopen, shared URL.

Screenshots land in test-artifacts/. Needs Debian's chromium (/usr/bin/chromium); skipped
with a reason where it is missing, unless SINKVIZ_REQUIRE_E2E=1 (CI), where that fails
(tests/browser.py).
"""

import time
import urllib.parse

from browser import ARTIFACTS, analyze_in_page, new_page, open_app, require_chromium

LONG_PROMPT = " ".join(["The committee reviewed the quarterly report and noted steady growth."] * 16)
require_chromium()


def test_analyze_compare_history_and_shared_url(server, browser):
    page = open_app(browser, server)
    first = analyze_in_page(page, LONG_PROMPT)
    assert page.locator("text=Severity:").count() == 1
    page.screenshot(path=ARTIFACTS / "analyze.png", full_page=True)
    shared = page.url
    assert "key=" in shared and "prompt=" in shared

    page.get_by_role("tab", name="Heatmaps").click()
    page.wait_for_selector("text=All layers, mean over heads")
    page.screenshot(path=ARTIFACTS / "heatmaps.png", full_page=True)
    page.get_by_role("tab", name="Position-0 inspector").click()
    page.wait_for_selector("text=Attention received by position 0")
    page.screenshot(path=ARTIFACTS / "position0.png", full_page=True)

    page.get_by_role("link", name="Compare", exact=True).click()
    page.get_by_role("button", name="Compare").click()
    page.wait_for_selector("text=Difference from A", timeout=120_000)
    page.screenshot(path=ARTIFACTS / "compare.png", full_page=True)

    page.get_by_role("link", name="History", exact=True).click()
    page.wait_for_selector("text=analyses in")
    page.screenshot(path=ARTIFACTS / "history.png", full_page=True)
    page.get_by_label("Analysis to open").click()           # newest first: Compare's variant B
    page.get_by_role("option").filter(has_text="Assistant: helpful").first.click()
    start = time.perf_counter()
    page.get_by_role("button", name="Open in Analyze").click()
    page.wait_for_selector("text=from the result store")
    page.wait_for_selector(".js-plotly-plot:visible")
    from_history = time.perf_counter() - start
    assert "Assistant: helpful and concise." in page.get_by_label("Prompt", exact=True).input_value()
    page.screenshot(path=ARTIFACTS / "reopened-from-history.png", full_page=True)

    other = new_page(browser)
    start = time.perf_counter()
    other.goto(shared)
    other.wait_for_selector("text=from the result store")
    other.wait_for_selector(".js-plotly-plot:visible")
    reopen = time.perf_counter() - start
    other.screenshot(path=ARTIFACTS / "shared-url.png", full_page=True)
    assert urllib.parse.parse_qs(urllib.parse.urlparse(shared).query)["prompt"][0] == LONG_PROMPT
    print(f"\nfirst analysis of a ~200-token prompt rendered in {first:.2f} s; reopened from "
          f"History in {from_history:.2f} s; shared URL in a new tab (page load included) in {reopen:.2f} s")


def test_bad_input_in_the_browser(server, browser):
    page = open_app(browser, server)
    box = page.get_by_label("Prompt", exact=True)
    box.fill("   ")
    box.press("Control+Enter")
    page.get_by_role("button", name="Analyze").click()
    page.wait_for_selector("text=the prompt is empty")
    page.screenshot(path=ARTIFACTS / "bad-input.png", full_page=True)
    analyze_in_page(page, "Short and fine.")
    assert page.locator("text=Severity:").count() == 1


def test_sweep_page(server, browser):
    page = open_app(browser, server, "Sweep")
    page.get_by_role("button", name="Run sweep").click()
    page.wait_for_selector("text=as the context grows", timeout=300_000)
    page.wait_for_selector("text=done: 4 lengths")
    assert page.get_by_role("link", name="common").count() == 0   # no file-based page list
    assert "Architecture: LlamaForCausalLM" in page.locator("section[data-testid='stSidebar']").inner_text()
    page.screenshot(path=ARTIFACTS / "sweep.png", full_page=True)


def test_audit_page_and_open_a_row(server, browser):
    page = open_app(browser, server, "Audit")
    box = page.get_by_label("…or paste prompts, one per line")
    box.fill("You are a helpful assistant. Answer concisely.\n:\nYou are a helpful assistant.\n   \nHi")
    box.press("Control+Enter")
    page.get_by_role("button", name="Run audit").click()
    page.wait_for_selector("text=done: 4 prompts", timeout=180_000)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    page.wait_for_selector('[data-testid="stDataFrame"]')
    page.screenshot(path=ARTIFACTS / "audit.png", full_page=True)
    page.get_by_role("button", name="Open in Analyze").click()
    page.wait_for_selector("text=from the result store")
    assert page.get_by_label("Prompt", exact=True).input_value() == "You are a helpful assistant. Answer concisely."


def test_lab_page(server, browser):
    page = open_app(browser, server, "Lab")
    page.get_by_role("button", name="Run scaling").click()
    page.wait_for_selector("text=KL(before", timeout=180_000)
    page.get_by_role("tab", name="Sink tokens for windowed attention").click()
    tokens = page.get_by_label("Tokens of the shipped text")
    tokens.fill("192")
    tokens.press("Enter")
    page.get_by_role("button", name="Run windowed perplexity").click()
    page.wait_for_selector("text=Per-token loss by position", timeout=300_000)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    page.screenshot(path=ARTIFACTS / "lab-window.png", full_page=True)
    page.get_by_role("tab", name="Attention scaling").click()
    page.screenshot(path=ARTIFACTS / "lab-scaling.png", full_page=True)
