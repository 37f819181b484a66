"""A bounded load test on loopback: several browser sessions analysing at once.

Each of SESSIONS headless-Chromium sessions runs REQUESTS analyses of its own prompts (two
sessions also send one identical prompt at the same moment). Every result is checked against
the engine: the store key in the shared URL and the token count on the page. Prints the
counts; any wrong or lost result fails. Skipped without chromium, like the e2e test.
"""

import asyncio
import os
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest

from sinkviz.flow.analysis import Settings, result_key
from sinkviz.flow.models import get_model, identity
from sinkviz.flow.prompts import tokenize

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SESSIONS, REQUESTS = 4, 3  # 3 x 2 passed with the settings bug about half the time; 5 x 3 never did
if not Path(CHROMIUM).exists():
    if os.environ.get("SINKVIZ_REQUIRE_E2E") == "1":
        raise RuntimeError("SINKVIZ_REQUIRE_E2E=1 but chromium is missing")
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)

from browser import server  # noqa: E402,F401  (the loopback server fixture)


def expected(prompt: str) -> tuple[str, int]:
    ident = identity("smollm2-135m-instruct")
    n = len(tokenize(get_model("smollm2-135m-instruct").tokenizer, prompt).token_ids)
    return result_key(ident, Settings(), prompt), n


async def session(browser, url: str, prompts: list[str], counts: dict) -> None:
    page = await browser.new_page(viewport={"width": 1200, "height": 1400})
    page.set_default_timeout(180_000)
    await page.goto(url)
    await page.wait_for_selector("text=Analyze a prompt")
    for prompt in prompts:
        try:
            box = page.get_by_label("Prompt", exact=True)
            await box.fill(prompt)
            await box.press("Control+Enter")
            await page.get_by_role("button", name="Analyze").click()
            await page.wait_for_function(   # this request's result, not the previous one's
                "p => new URLSearchParams(location.search).get('prompt') === p", arg=prompt)
            await page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
            await page.wait_for_selector("text=Severity:")
            key = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["key"][0]
            tokens = int(await page.locator('[data-testid="stMetricValue"]').first.inner_text())
            counts["served"] += 1
            want = expected(prompt)
            if (key, tokens) != want:
                counts["wrong"] += 1
                counts["errors"].append(f"wrong: {prompt!r} gave {(key, tokens)}, expected {want} at {page.url}")
        except Exception as err:  # a timeout or a broken page: the request is lost
            counts["lost"] += 1
            counts["errors"].append(f"{type(err).__name__}: {str(err)[:120]}")
    await page.close()


def test_concurrent_sessions_get_their_own_correct_results(server):  # noqa: F811
    from playwright.async_api import async_playwright
    tag = os.urandom(3).hex()
    shared = f"Load test {tag}: the same prompt from two sessions at once."
    plans = [[f"Load test {tag} session {s} request {r}: describe the tides." for r in range(REQUESTS)]
             for s in range(SESSIONS)]
    plans[0][0] = plans[1][0] = shared
    counts = {"served": 0, "wrong": 0, "lost": 0, "errors": []}

    async def main():
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            await asyncio.wait_for(asyncio.gather(*(session(browser, server, plan, counts) for plan in plans)),
                                   timeout=600)
            await browser.close()
    start = time.perf_counter()
    asyncio.run(main())
    print(f"\nload test: {SESSIONS} sessions x {REQUESTS} requests in {time.perf_counter() - start:.1f} s: "
          f"served {counts['served']}, wrong {counts['wrong']}, lost {counts['lost']} {counts['errors']}")
    assert counts == {"served": SESSIONS * REQUESTS, "wrong": 0, "lost": 0, "errors": []}
