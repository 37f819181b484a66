"""Headless Chromium and a streamlit server for the browser tests.

Debian's /usr/bin/chromium driven by playwright (never ``playwright install``). ``require_chromium()``
skips a test module where chromium is missing, unless SINKVIZ_REQUIRE_E2E=1 (CI), where that fails.
The ``browser`` and ``server`` fixtures (conftest.py) are built from the helpers here.
"""

import collections
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'   # the script has finished its run


def require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    if os.environ.get("SINKVIZ_REQUIRE_E2E") == "1":
        raise RuntimeError("SINKVIZ_REQUIRE_E2E=1 but chromium is missing (apt-get install chromium)")
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(store_dir: Path, log: Path | None = None, **env: str):
    """``streamlit run app.py`` on a free loopback port with its own result store (and ``env``), in
    its own process group; yields its URL once /_stcore/health answers, stops the group after.
    ``log``: where its output goes."""
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                             "--server.port", str(port), "--server.headless", "true"],
                            cwd=ROOT, env={**os.environ, "SINKVIZ_STORE_DIR": str(store_dir), **env},
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
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
        if log:
            out.close()


WARNING = re.compile(r"warn|error|exception|traceback", re.IGNORECASE)


def warnings_in(log: Path) -> collections.Counter:
    """Warning-like lines of a server log, timestamps dropped, with their counts."""
    lines = [re.sub(r"^\d{4}-\d\d-\d\d [\d:.]+ ", "", line) for line in log.read_text().splitlines()]
    return collections.Counter(line for line in lines if WARNING.search(line))


def new_page(browser, height: int = 2400):
    """A page in a fresh browser context (its own cookies and storage: a new visitor)."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.set_default_timeout(120_000)
    return page


def open_page(browser, url: str, heading: str, height: int = 2400):
    """A new visitor's page on ``url``, once ``heading`` is shown."""
    page = new_page(browser, height)
    page.goto(url)
    page.wait_for_selector(f"text={heading}")
    return page


def open_app(browser, server: str, link: str | None = None, height: int = 2400):
    """A new page on the app, once st.navigation's menu is there; then on ``link``'s page."""
    page = open_page(browser, server, "Analyze a prompt", height)   # the menu, not the transient file list
    if link:
        page.get_by_role("link", name=link, exact=True).click()
    return page


def settle(page) -> None:
    """Wait until the app's script has finished its run (and any rerun it asked for)."""
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE)


def type_into(page, label: str, value: str) -> None:
    """Fill the widget labelled ``label`` and commit it (Ctrl+Enter in a text area, else Enter)."""
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Control+Enter" if box.evaluate("e => e.tagName") == "TEXTAREA" else "Enter")
    settle(page)


def analyze_in_page(page, prompt: str, timeout: int = 120_000) -> float:
    """Type a prompt, press Analyze, wait for the bars; seconds from click to rendered chart."""
    box = page.get_by_label("Prompt", exact=True)
    box.fill(prompt)
    box.press("Control+Enter")
    start = time.perf_counter()
    page.get_by_role("button", name="Analyze").click()
    page.wait_for_selector("text=done (", timeout=timeout)
    page.wait_for_selector("text=Attention on the first", timeout=timeout)   # the bars, not the intro's chart
    page.wait_for_selector(IDLE, timeout=timeout)                            # and the run (URL included) done
    return time.perf_counter() - start
