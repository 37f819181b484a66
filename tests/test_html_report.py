"""The one-file report: escaped user text, model, settings and verdicts, plotly.js once, and figures
whose numbers are the engine's; the CLI's --report; an audit of 2,000 rows stays a table."""

import html
import json
import re
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from plotly_json import array, decode, sink_mass_bars
from sinkviz.cli import main
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.flow.audit import AuditRow, audit
from sinkviz.flow.audit_table import file_columns
from sinkviz.numbers.metrics import Thresholds, layer_entropy, layer_sinks
from sinkviz.numbers.readings import compare_readings
from sinkviz.numbers.segments import segment_shares, segments_of
from sinkviz.output import figures
from sinkviz.output.html_report import analysis_report, audit_report, chart, compare_report
from sinkviz.output.verdict import verdict

HOSTILE = "Summarise <b>this</b> & \"that\".</script><script>alert(1)</script>\n\nSecond block <img src=x onerror=alert(2)>"
FIGURE = re.compile(r'<script type="application/json">(.*?)</script>', re.S)
SCRIPT = re.compile(r"<script(?P<attrs>[^>]*)>", re.S)


def embedded_figures(page: str) -> list[dict]:
    """Every figure of a report, its JSON parsed and its typed arrays decoded, in page order."""
    return [decode(json.loads(block)) for block in FIGURE.findall(page)]


def titled(found: list[dict], start: str) -> dict:
    hits = [f for f in found if str(f["layout"].get("title", {}).get("text", "")).startswith(start)]
    assert len(hits) == 1, f"{len(hits)} figures titled {start!r}"
    return hits[0]


@pytest.fixture(scope="module")
def hostile(default_model_dir, tmp_path_factory):
    """The default model's analysis of a prompt full of markup, with a hostile system turn."""
    from sinkviz.flow.store import ResultStore
    store = ResultStore(tmp_path_factory.mktemp("report-store"))
    return analyze(HOSTILE, Settings(system="Be <i>brief</i></script>"), store=store), store


def test_analysis_report_carries_escaped_text_settings_verdict_and_one_plotly(hostile):
    a, _ = hostile
    t = Thresholds(warning=0.3, critical=0.6, ratio_flag=4.0)
    made = datetime(2026, 11, 25, 9, 30, tzinfo=timezone.utc)
    page = analysis_report(a, first_n=4, epsilon=0.25, thresholds=t, blocks="blank lines", generated=made)
    assert html.escape(HOSTILE) in page and html.escape("Be <i>brief</i></script>") in page
    assert "<script>alert" not in page and "<img src=x" not in page and "<i>brief" not in page
    scripts = [m["attrs"] for m in SCRIPT.finditer(page)]
    assert scripts.count("") == 2                           # plotly.js and the drawing call, nothing else runs
    assert all(s in ("", ' type="application/json"') for s in scripts)
    assert page.count(get_plotlyjs()) == 1
    for text in (a.model.label, a.model.architecture, f"{a.model.device} · {a.model.dtype}", "2026-11-25 09:30 UTC",
                 "the first 4 tokens", "blocks: blank lines", "warning at 30%, critical at 60%", "above 4×",
                 'Sink-rate ε</th><td class="text">0.25', "on: the prompt is a user turn"):
        assert text in page, text
    sinks = layer_sinks(a.stats, 4, t)
    assert html.escape(verdict(sinks, a.stats, a.tokens.shown, a.tokens.special, t)) in page
    for label in a.tokens.shown:                            # the token table, every token escaped
        assert f'<td class="text">{html.escape(label)}</td>' in page


def test_analysis_figures_hold_the_engine_numbers(hostile):
    a, _ = hostile
    stats, t = a.stats, Thresholds()
    found = embedded_figures(analysis_report(a, first_n=3, blocks="blank lines"))
    assert len(found) == 9
    sinks = layer_sinks(stats, 3, t)
    np.testing.assert_array_equal(sink_mass_bars(titled(found, "Attention on the first 3 tokens, per layer"))[1],
                                  sinks.sink_mass)
    shares = segment_shares(stats, segments_of(a.tokens, "blank lines"))
    bars = titled(found, "Share of attention per segment")["data"]
    assert [b["name"] for b in bars] == list(shares.names) and "block 2" in shares.names
    for s, trace in enumerate(bars):
        np.testing.assert_array_equal(array(trace["y"]), shares.share[:, s])
    deep = np.array(stats.layer_ids) >= t.shallow_layers
    strongest = int(np.where(deep, sinks.sink_mass, -1).argmax())   # the verdict's layer
    z = array(titled(found, f"Layer {strongest}, mean over heads")["data"][0]["z"])
    expected = figures.layer_map(stats, strongest)
    seen = np.isfinite(z)
    np.testing.assert_array_equal(seen, np.tril(np.ones_like(seen)))
    np.testing.assert_allclose(z[seen], expected[seen], rtol=1e-6)
    grid = titled(found, "All layers, mean over heads")["data"]
    assert len(grid) == stats.n_layers
    np.testing.assert_array_equal(array(titled(found, "Attention received by position 0")["data"][0]["z"]),
                                  stats.received[:, :, 0])
    np.testing.assert_array_equal(array(titled(found, "Attention entropy per layer")["data"][0]["y"]),
                                  layer_entropy(stats))


def test_script_blocks_cannot_be_closed_by_figure_text():
    fig = go.Figure(go.Bar(x=["</script><script>alert(1)</script>", "a & b"], y=[1, 2]),
                    layout_title_text="<!-- </SCRIPT> \u2028")
    block = chart(fig)
    assert block.lower().count("</script") == 1 and "<!--" not in block and "\u2028" not in block
    parsed = json.loads(FIGURE.search(block).group(1))
    assert parsed["data"][0]["x"] == ["</script><script>alert(1)</script>", "a & b"]
    assert parsed["layout"]["title"]["text"] == "<!-- </SCRIPT> \u2028"


def test_compare_report_ranks_variants_with_their_verdicts(hostile):
    first, store = hostile
    second = analyze("Assistant: helpful and concise.\nYou are a helpful assistant.", Settings(system=first.settings.system),
                     store=store)
    page = compare_report([first, second], first_n=3, reading="user")
    readings = compare_readings([first, second], 3, "user")
    for v in readings:
        assert f'<td class="num">{v.mean:.1%}</td>' in page
    assert f'<td class="num">{100 * readings[1].diff:+.1f} pts</td>' in page
    for r in (first, second):
        assert html.escape(r.prompt) in page
        sinks = layer_sinks(r.stats, 3)
        assert html.escape(verdict(sinks, r.stats, r.tokens.shown, r.tokens.special)) in page
    assert page.count(get_plotlyjs()) == 1
    found = embedded_figures(page)
    lines = titled(found, "Your text's first 3 tokens per layer")["data"]
    for v, trace in zip(readings, lines):
        np.testing.assert_array_equal(array(trace["y"]), v.per_layer)
    assert len([f for f in found if f["data"][0]["type"] == "heatmap"]) == 2


def test_audit_report_keeps_the_file_columns_escaped(default_model_dir, store):
    data = ("id,owner,prompt\nq1,<b>ops</b>,You are a helpful assistant.\n"
            "q2,=cmd|' /C calc'!A0,\"Say hi <script>alert(3)</script>\"\n").encode()
    prompts = ["You are a helpful assistant.", "Say hi <script>alert(3)</script>"]
    rows = audit(prompts, Settings(), store=store)
    page = audit_report(rows, file_columns(data, "lib.csv"), Settings(), 3)
    assert "<script" not in page and "plotly" not in page.lower()     # a table, no charts
    assert "&lt;b&gt;ops&lt;/b&gt;" in page and "Say hi &lt;script&gt;alert(3)&lt;/script&gt;" in page
    for r in rows:
        assert f'<td class="num">{r.worst_sink_mass:.1%}</td>' in page and f'<td class="num">{r.row}</td>' in page
    severities = [r.severity for r in rows]
    for severity, css in (("critical", "sev-critical"), ("warning", "sev-warning"), ("ok", "text")):
        assert f'<tr><td class="{css}">{severity}</td><td class="num">{severities.count(severity)}</td></tr>' in page


def test_audit_report_of_2000_rows_is_one_table_of_reasonable_size():
    rng = np.random.default_rng(0)
    rows = [AuditRow(i, f"prompt {i}: " + "word " * 150, "'You' · '␣are'", 60, 5, float(m), 4.0, 1, "critical",
                     f"{i:032x}", user_opening_mass=float(m) / 10)
            for i, m in enumerate(rng.uniform(0.5, 0.9, 2000), start=1)]
    extras = [{"id": f"q{i}"} for i in range(1, 2001)]
    page = audit_report(rows, extras, Settings(), 3)
    assert re.search(r'<table class="audit">(.*?)</table>', page, re.S).group(1).count("<tr>") == 2001
    assert '<td class="num">2000</td>' in page and '<td class="text">q2000</td>' in page
    assert len(page.encode()) < 3_000_000
    assert "<figure" not in page and "<script" not in page


@pytest.fixture
def private_store(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(tmp_path / "store"))


def test_cli_writes_the_report(private_store, tmp_path, capsys, default_model_dir):
    out = tmp_path / "report.html"
    assert main(["analyze", "--prompt", HOSTILE, "--first", "5", "--report", str(out)]) == 0
    captured = capsys.readouterr()
    assert "sink mass = attention on the first 5 tokens" in captured.out
    assert captured.err.startswith(f"sinkviz: report written to {out} (") and captured.err.count("\n") == 1
    page = out.read_text(encoding="utf-8")
    assert html.escape(HOSTILE) in page and "the first 5 tokens" in page and page.count(get_plotlyjs()) == 1


def test_cli_audit_report(private_store, tmp_path, capsys, default_model_dir):
    source, out = tmp_path / "lib.csv", tmp_path / "audit.html"
    source.write_text("id,prompt\nalpha-7,You are a helpful assistant.\nbeta-9,Answer concisely.\n", encoding="utf-8")
    assert main(["audit", str(source), "--report", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "alpha-7" in page and "beta-9" in page and "2 prompts" in page
    assert "SmolLM2-135M-Instruct" in page


@pytest.mark.parametrize("where,reason", [("missing/report.html", "there is no folder"), (".", "it is a folder"),
                                          ("file.txt/report.html", "there is no folder")])
def test_cli_refuses_an_unwritable_report_before_any_work(tmp_path, capsys, where, reason):
    (tmp_path / "file.txt").write_text("x")
    target = tmp_path / where
    assert main(["analyze", "--prompt", "x", "--model", "./no-such-model", "--report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"sinkviz: cannot write the report to {target}: {reason}" + \
        (f" {target.parent}\n" if reason == "there is no folder" else "\n")


def test_module_entry_point_report_error_has_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sinkviz", "audit", "prompts.csv", "--report",
                           str(tmp_path / "nowhere" / "r.html")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"sinkviz: cannot write the report to {tmp_path / 'nowhere' / 'r.html'}: there is no " \
                          f"folder {tmp_path / 'nowhere'}\n"


def test_learned_sink_has_its_column_in_the_table_and_the_heatmap(sink_models, store):
    from conftest import random_words
    a = analyze(random_words(40), Settings(model=sink_models["gpt-oss"], use_template=False), store=store)
    page = analysis_report(a)
    assert "<th>learned sink</th>" in page
    for value in a.stats.learned_sink.mean(axis=1):
        assert f'<td class="num">{value:.1%}</td>' in page
    heatmap = next(f for f in embedded_figures(page) if str(f["layout"]["title"]["text"]).startswith("Layer "))
    assert heatmap["data"][0]["x"][-1] == "learned sink"
