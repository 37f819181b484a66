"""In headless Chromium: a long analysis shows its layers and the time left, and opens its heatmap
on the verdict's layer; an audit shows prompts/s, stops on Stop with its rows kept, and a re-run
finishes it. Screenshots land in test-artifacts/ (progress-*.png)."""

import re

from browser import ARTIFACTS, IDLE, open_app, require_chromium
from sinkviz.flow.sweep import shipped_text

require_chromium()

LAYER_LINE = re.compile(r"forward pass · layer (\d+)/30 · ~\d+ (s|min) left")
ROLES = ["support agent for Acme Cloud", "travel planner", "careful legal assistant", "math tutor for children",
         "friendly barista", "code reviewer", "museum guide", "fitness coach", "tax adviser", "poetry critic",
         "hotel concierge", "bank teller"]
AUDIT = [f"You are a {role}. Answer in {n} sentences and cite your sources." for role in ROLES
         for n in ("two", "three", "four", "five")]


def test_long_analysis_shows_layer_progress_and_opens_on_the_verdicts_layer(server, browser):
    page = open_app(browser, server, height=1400)
    box = page.get_by_label("Prompt", exact=True)
    box.fill(shipped_text()[:4000])                            # ~840 tokens with the template
    box.press("Control+Enter")
    page.get_by_role("button", name="Analyze").click()
    line = page.wait_for_selector(f"text=/{LAYER_LINE.pattern}/", timeout=300_000).inner_text()
    page.screenshot(path=ARTIFACTS / "progress-analyze-running.png")
    assert LAYER_LINE.search(line), line
    page.wait_for_selector("text=done (", timeout=900_000)
    page.wait_for_selector(IDLE)
    strongest = re.search(r"The strongest is layer (\d+):", page.locator("text=Severity:").inner_text()).group(1)
    page.get_by_role("tab", name="Heatmaps").click()
    page.wait_for_selector(f"text=Layer {strongest}, mean over heads, pooled")
    page.wait_for_selector(IDLE)
    page.set_viewport_size({"width": 1400, "height": 3000})
    page.screenshot(path=ARTIFACTS / "progress-analyze-heatmap.png")


def test_audit_shows_its_rate_stops_on_stop_and_resumes(server, browser):
    page = open_app(browser, server, "Audit")
    box = page.get_by_label("…or paste prompts, one per line")
    box.fill("\n".join(AUDIT))
    box.press("Control+Enter")
    page.get_by_text("Judge against this model").click()      # calibration off: it has its own tests
    page.get_by_role("button", name="Run audit").click()
    line = page.wait_for_selector("text=/prompt 8\\/48 · [0-9.]+ prompts\\/s · ~/", timeout=300_000).inner_text()
    page.screenshot(path=ARTIFACTS / "progress-audit-running.png")
    page.get_by_role("button", name="Stop").click()
    stopped = page.wait_for_selector("text=The audit stopped at row").inner_text()
    page.wait_for_selector(IDLE)
    page.screenshot(path=ARTIFACTS / "progress-audit-stopped.png")
    done = int(re.search(r"stopped at row (\d+) of 48", stopped).group(1))
    assert 8 <= done < 48 and done % 8 == 0, (line, stopped)
    assert page.locator("text=/^" + re.escape(f"{done} of {done} rows") + "/").count() == 1
    page.get_by_role("button", name="Run audit").click()
    page.wait_for_selector("text=done: 48 prompts", timeout=300_000)
    page.wait_for_selector(IDLE)
    assert page.locator("text=The audit stopped").count() == 0 and page.locator("text=48 of 48 rows").count() == 1
    assert page.get_by_role("button", name="Stop").count() == 0
    page.screenshot(path=ARTIFACTS / "progress-audit-done.png")
