"""AppTest: the segment shares, openings and readable tokens the pages show are the engine's."""

import os

import numpy as np
import pytest

os.environ["SINKVIZ_WARM"] = "0"
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import APP, analyze_page, app_store  # noqa: E402
from plotly_json import array, by_title  # noqa: E402
from sinkviz.flow.analysis import Settings, analyze  # noqa: E402
from sinkviz.numbers.metrics import deep_mean  # noqa: E402
from sinkviz.numbers.segments import openings, segment_shares, segments_of  # noqa: E402

SUPPORT = ("You are the support assistant of Acme Cloud.\n\n---\n\nCustomer: my invoice shows the "
           "wrong VAT number.\n\n---\n\nAnswer politely and cite the policy section.")
JAPANESE = "請求書の税番号が間違っています。直してください 🙏"


@pytest.fixture(scope="module", autouse=True)
def page_store(tmp_path_factory, default_model_dir):
    with app_store(tmp_path_factory.mktemp("segment-page-store")):
        yield


def test_segment_bars_and_openings_equal_engine():
    at = analyze_page(SUPPORT, tab="Segments")
    at.selectbox(key="an_blocks").set_value("blocks: auto").run()
    result = analyze(SUPPORT, Settings())
    segs = segments_of(result.tokens, "auto")
    shares = segment_shares(result.stats, segs)
    bars = by_title(at, "Share of attention per segment")
    assert [t["name"] for t in bars["data"]] == ["template", "system turn", "block 1", "block 2", "block 3"]
    plotted = np.stack([array(t["y"]) for t in bars["data"]], -1)                   # [layers, S]
    np.testing.assert_allclose(plotted, shares.share, rtol=1e-6)
    np.testing.assert_allclose(plotted.sum(-1), 1.0, atol=1e-5)
    table = at.dataframe[0].value
    np.testing.assert_allclose(table["attention share"], deep_mean(shares.share), rtol=1e-6)
    opens = openings(result.stats, segs, 3)
    lines = by_title(at, "Attention on the first 3 tokens of each part")
    assert [t["name"] for t in lines["data"]] == ["sequence", "system turn", "user text"]
    np.testing.assert_allclose(np.stack([array(t["y"]) for t in lines["data"]], -1), opens.mass, rtol=1e-6)
    user = at.metric[4]
    assert user.value == f"{deep_mean(opens.mass[:, 2]):.1%}" and user.delta == "'You' · '␣are' · '␣the'"


def test_japanese_tokens_are_readable_everywhere():
    at = analyze_page(JAPANESE, tab="Tokens")
    shown = list(at.dataframe[0].value["token"])
    assert "\ufffd" not in "".join(shown) and "↵" in shown
    assert any(label.startswith("請") and "⟨0x" in label for label in shown)
    assert "\ufffd" not in at.info[0].value


def test_compare_never_shows_results_under_changed_inputs():
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/compare.py").run()
    at.number_input(key="cmp_count").set_value(3).run()
    at.button[0].click().run()
    assert len(at.metric) == 3 and not at.exception
    at.text_area(key="cmp_prompt_1").set_value("Completely different: list three colours.").run()
    assert not at.metric and not at.get("plotly_chart")
    assert "inputs changed" in at.info[0].value
    at.button[0].click().run()
    assert len(at.metric) == 3
    at.number_input(key="cmp_count").set_value(2).run()          # fewer variants: the old three vanish
    assert not at.metric and not at.get("plotly_chart")


@pytest.fixture
def few_calibration_prompts(monkeypatch):
    """Six of the shipped calibration prompts, so the page test calibrates in seconds."""
    from sinkviz.numbers import calibration
    few = calibration.calibration_prompts()[:40:7]                    # six of the 40 short ones
    monkeypatch.setattr(calibration, "calibration_prompts", lambda: few)
    return few


def test_analyze_judges_against_the_model_after_calibrating(few_calibration_prompts):
    from sinkviz.numbers.calibration import calibrate, sentences
    from sinkviz.flow.store import ResultStore
    at = analyze_page(SUPPORT, tab="Sink mass per layer")
    assert not at.success and "Not yet judged" in at.caption[0].value
    at.button(key="an_calibrate").click().run()
    assert not at.exception, at.exception
    cal = calibrate(Settings(), ResultStore(), progress=pytest.fail)     # made by the page, kept
    assert cal.n_prompts == 6
    want = " ".join(sentences(cal, analyze(SUPPORT, Settings()), 3))
    assert at.success[0].value == "**Against this model.** " + want
    assert "percentile of 6 calibration prompts" in want and "Layer " in want
    assert at.info[0].value.startswith("**By fixed thresholds (warning 35%, critical 50%).** Severity:")


AUDIT_CSV = ("id,owner,prompt\n"
             "t-1,ana,\"### Refund policy\nRefunds are possible within 30 days.\"\n"
             "t-2,ben,\"Hello team,\n\nplease summarise the call below.\"\n"
             "t-3,chi,請求書の税番号が間違っています。\n"
             "t-4,dan,What is the capital of France?\n")


def test_audit_keeps_the_files_columns_and_judges_the_users_text(few_calibration_prompts):
    from sinkviz.flow.audit import audit, read_prompts
    from sinkviz.flow.audit_table import file_columns, filtered_csv, judged
    from sinkviz.numbers.calibration import calibrate
    from sinkviz.flow.store import ResultStore
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("pages/audit.py").run()
    at.file_uploader(key="au_file").upload("tickets.csv", AUDIT_CSV.encode(), "text/csv")
    at.button[0].click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    table = at.dataframe[0].value
    assert list(table.columns[:4]) == ["prompt", "id", "owner", "your first tokens"]
    by_id = table.set_index("id")
    assert by_id.loc["t-1", "your first tokens"] == "'###' · '␣Ref' · 'und' · '␣policy'"
    assert by_id.loc["t-1", "prompt"] == "### Refund policy ↵ Refunds are possible within 30 days."
    assert "\ufffd" not in by_id.loc["t-3", "your first tokens"] and by_id.loc["t-3", "owner"] == "chi"
    cal = calibrate(Settings(), ResultStore(), progress=pytest.fail)
    rows = audit(read_prompts(AUDIT_CSV.encode(), "t.csv"), Settings(), 3, store=ResultStore())
    marks = judged(rows, cal, "user", 3)
    for row, mark in zip(rows, marks):
        shown = table[table["row"] == row.row].iloc[0]
        assert shown["percentile"] == pytest.approx(mark["percentile"]) and shown["against this model"] == mark["against_model"]
        assert shown["reading"] == pytest.approx(row.user_opening_mass)
    assert list(table["percentile"]) == sorted(table["percentile"], reverse=True)    # most unusual first
    at.multiselect(key="au_bands").set_value(["typical"]).run()
    kept = at.dataframe[0].value
    assert set(kept["row"]) == {r.row for r, m in zip(rows, marks) if 5 <= m["percentile"] <= 95}
    import csv
    import io
    shown = [(r, m) for r, m in zip(rows, marks) if r.row in set(kept["row"])]
    out = list(csv.DictReader(io.StringIO(filtered_csv([r for r, _ in shown], file_columns(AUDIT_CSV.encode(), "t.csv"),
                                                       [m for _, m in shown]))))
    assert list(out[0])[:6] == ["prompt", "id", "owner", "reading", "percentile", "against_model"]
    assert [(o["id"], o["owner"]) for o in out] == [(f"t-{r.row}", "abcd"[r.row - 1] + {1: "na", 2: "en", 3: "hi", 4: "an"}[r.row])
                                                    for r, _ in shown]


def test_layer_percentiles_plotted_after_calibrating(few_calibration_prompts):
    from sinkviz.numbers.calibration import calibrate, judge
    from sinkviz.numbers.readings import per_layer_reading
    from sinkviz.flow.store import ResultStore
    at = analyze_page(PROMPT_JA_OPENING, tab="Sink mass per layer")
    if any(b.key == "an_calibrate" for b in at.button):    # not yet made by an earlier test of this module
        at.button(key="an_calibrate").click().run()
    cal = calibrate(Settings(), ResultStore(), progress=pytest.fail)
    result = analyze(PROMPT_JA_OPENING, Settings())
    lines = by_title(at, "Percentile per layer among 6 calibration prompts")
    assert [t["name"] for t in lines["data"]] == ["your text's first 3", "sequence's first 3 (sink mass)"]
    for trace, reading in zip(lines["data"], ("user", "sequence")):
        want = judge(cal, per_layer_reading(result, 3, reading), reading)
        np.testing.assert_allclose(array(trace["y"]), want.layer_percentiles)
        assert np.all((want.layer_percentiles >= 0) & (want.layer_percentiles <= 100))


PROMPT_JA_OPENING = "請求書について質問があります。\n\nThe VAT number on invoice 1042 is wrong."


def test_heatmap_marks_where_each_turn_starts():
    at = analyze_page(SUPPORT, tab="Heatmaps")
    result = analyze(SUPPORT, Settings())
    layer = at.selectbox(key="an_layer").value                          # the verdict's layer
    big = by_title(at, f"Layer {layer}, ")                              # not the intro's "Layer N: ..."
    starts = sorted(a for s in segments_of(result.tokens) for a, _ in s.spans if a > 0)
    assert sorted(s["x0"] + 0.5 for s in big["layout"]["shapes"]) == starts
    names = {s.name for s in segments_of(result.tokens)}
    assert {a["text"] for a in big["layout"]["annotations"]} == names


def test_typical_band_is_visible_on_the_plot_background():
    """The shaded 'typical for this model' band differs clearly from the plot's background (Plotly's
    template #E5ECF6, or white under streamlit's theme): before, #e8eef5 on #E5ECF6 was invisible."""
    import plotly.io as pio

    from sinkviz.numbers.calibration import TYPICAL, Judgement
    from sinkviz.output.segment_figures import percentile_lines
    j = Judgement("sequence", 0.5, 50.0, "typical for this model", np.full(4, 0.5), np.array([10, 50, 90, 99.0]), 40)
    fig = percentile_lines({"sequence": j}, TYPICAL)
    band = fig.layout.shapes[0]
    assert (band.y0, band.y1) == TYPICAL and fig.layout.annotations[0].text == "typical for this model"

    def rgb(color: str) -> np.ndarray:
        return np.array([int(color.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)], float)

    backgrounds = [pio.templates["plotly"].layout.plot_bgcolor, "#FFFFFF"]
    assert backgrounds[0].upper() == "#E5ECF6"
    for background in backgrounds:      # at least 40 of 441 in RGB distance: plainly visible
        assert np.linalg.norm(rgb(band.fillcolor) - rgb(background)) > 40, (band.fillcolor, background)


def test_audit_not_judged_shows_no_blank_percentile_column():
    """Audited with 'Judge against this model' off, the table has no percentile columns (before, an
    empty 'percentile' column read as missing numbers) and the caption says it was not judged."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("pages/audit.py").run()
    at.toggle(key="au_calibrate").set_value(False)
    at.text_area(key="au_text").set_value("What is the capital of France?\nList three colours.")
    at.button[0].click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    table = at.dataframe[0].value
    assert "percentile" not in table.columns and "against this model" not in table.columns
    assert [t.split(" · ")[0] for t in table["your first tokens"]] == ["'What'", "'List'"]   # the user's text
    assert any("not judged against the model" in c.value for c in at.caption)
