"""End to end in headless Chromium: paste, run, switch pages, compare, reopen, shared URL.

Screenshots land in test-artifacts/. Needs Debian's chromium (/usr/bin/chromium); skipped
with a reason where it is missing, unless SINKVIZ_REQUIRE_E2E=1 (CI), where that fails.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LONG_PROMPT = " ".join(["The committee reviewed the quarterly report and noted steady growth."] * 16)

if not Path(CHROMIUM).exists():
    if os.environ.get("SINKVIZ_REQUIRE_E2E") == "1":
        raise RuntimeError("SINKVIZ_REQUIRE_E2E=1 but chromium is missing (apt-get install chromium)")
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_dir):
    port = free_port()
    env = {**os.environ, "SINKVIZ_STORE_DIR": str(tmp_path_factory.mktemp("e2e-store"))}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                             "--server.port", str(port), "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.25)
        else:
            raise RuntimeError("streamlit did not start")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


def new_page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.set_default_timeout(120_000)
    return page


def open_app(browser, server: str, link: str | None = None):
    """A new page on the app, once st.navigation's menu is there; then on ``link``'s page."""
    page = new_page(browser)
    page.goto(server)
    page.wait_for_selector("text=Analyze a prompt")   # the menu, not the transient file list
    if link:
        page.get_by_role("link", name=link, exact=True).click()
    return page


def analyze_in_page(page, prompt: str) -> float:
    """Type a prompt, press Analyze, wait for the bars; seconds from click to rendered chart."""
    box = page.get_by_label("Prompt", exact=True)
    box.fill(prompt)
    box.press("Control+Enter")
    start = time.perf_counter()
    page.get_by_role("button", name="Analyze").click()
    page.wait_for_selector("text=done (", timeout=120_000)
    page.wait_for_selector(".js-plotly-plot")
    return time.perf_counter() - start


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
    page.wait_for_selector(".js-plotly-plot")
    from_history = time.perf_counter() - start
    assert "Assistant: helpful and concise." in page.get_by_label("Prompt", exact=True).input_value()
    page.screenshot(path=ARTIFACTS / "reopened-from-history.png", full_page=True)

    other = new_page(browser)
    start = time.perf_counter()
    other.goto(shared)
    other.wait_for_selector("text=from the result store")
    other.wait_for_selector(".js-plotly-plot")
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
