"""Click through every page of a fresh dashboard for a while, then count the server log's warnings.

    .venv/bin/python bench/click_through.py [--minutes 30]

Each round, in a new browser session: analyse a prompt and open every Analyze tab, then
Compare, Sweep, Audit, Lab (attention scaling), History and Method through the sidebar; every
third round also an audit of four pasted prompts, a 300-token sweep and Lab's windowed
experiment (64 tokens). Prints the rounds, then every warning-like log line with its count;
exits 1 if one occurs more than once. Needs Debian's chromium (tests/browser.py).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from browser import CHROMIUM, CHROMIUM_ARGS, settle, streamlit_server, type_into, warnings_in  # noqa: E402

PROMPTS = ["You are a helpful assistant. Answer concisely.", "Summarise the quarterly report in three bullet points.",
           "Translate 'good morning' into French, German and Japanese.", "Write a haiku about attention sinks."]
PAGES = [("Compare", "Compare opening variants", "Compare", "Difference from A"),
         ("Sweep", "Context-length sweep", None, None), ("Audit", "Batch prompt audit", None, None),
         ("Lab", "Mitigation lab", "Run scaling", "KL(before"), ("History", "analyses in", None, None),
         ("Method", "Sink mass", None, None), ("Analyze", "Analyze a prompt", None, None)]


def go(page, link: str, ready: str) -> None:
    page.get_by_role("link", name=link, exact=True).click()
    page.wait_for_selector(f"text={ready}")
    settle(page)


def press(page, button: str, done: str, timeout: int = 180_000) -> None:
    page.get_by_role("button", name=button).click()
    page.wait_for_selector(f"text={done}", timeout=timeout)
    settle(page)


def one_round(page, url: str, i: int) -> None:
    page.goto(url)
    page.wait_for_selector("text=Analyze a prompt")
    type_into(page, "Prompt", f"{PROMPTS[i % len(PROMPTS)]} ({i})")
    press(page, "Analyze", "done (")
    for tab in ["Segments", "Heatmaps", "Position-0 inspector", "Entropy", "Tokens", "Export", "Sink mass per layer"]:
        page.get_by_role("tab", name=tab).click()
        settle(page)
    for link, ready, button, done in PAGES:
        go(page, link, ready)
        if button:
            press(page, button, done)
    if i % 3 == 0:
        go(page, "Audit", "Batch prompt audit")
        type_into(page, "…or paste prompts, one per line", "\n".join(PROMPTS))
        page.get_by_text("Judge against this model").click()
        press(page, "Run audit", f"done: {len(PROMPTS)} prompts", 300_000)
        go(page, "Sweep", "Context-length sweep")
        type_into(page, "Longest prefix (tokens; 0 = the whole text)", "300")
        press(page, "Run sweep", "done:", 300_000)
        go(page, "Lab", "Mitigation lab")
        page.get_by_role("tab", name="Sink tokens for windowed attention").click()
        type_into(page, "W (cache entries)", "16")
        type_into(page, "Tokens of the shipped text", "64")
        press(page, "Run windowed perplexity", "Per-token loss by position", 300_000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    folder = Path(tempfile.mkdtemp(prefix="sinkviz-click-"))
    log = folder / "server.log"
    with streamlit_server(folder / "store", log=log) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        start, rounds, failed = time.time(), 0, 0
        while time.time() - start < args.minutes * 60:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.set_default_timeout(180_000)
            try:
                one_round(page, url, rounds)
            except Exception as err:   # a page that broke: count it, keep clicking
                failed += 1
                print(f"round {rounds + 1} failed: {type(err).__name__}: {str(err)[:200]}")
            page.close()
            rounds += 1
            print(f"round {rounds} done at {time.time() - start:.0f} s", flush=True)
        browser.close()
    warnings = warnings_in(log)
    print(f"{rounds} rounds ({failed} failed) in {args.minutes:g} min; log: {len(log.read_text().splitlines())} "
          f"lines, {sum(warnings.values())} warning-like ({log})")
    for line, n in warnings.most_common():
        print(f"{n:6d}  {line[:200]}")
    return 1 if failed or any(n > 1 for n in warnings.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
