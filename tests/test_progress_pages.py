"""AppTest: the pages' progress lines, the Audit page's stop and resume, and tab switches that
build no figure twice."""

import json
import os

import numpy as np
import pytest

os.environ["SINKVIZ_WARM"] = "0"
from streamlit.delta_generator import DeltaGenerator  # noqa: E402
from streamlit.elements.lib.mutable_status_container import StatusContainer  # noqa: E402
from streamlit.runtime.scriptrunner_utils.exceptions import StopException  # noqa: E402

from conftest import analyze_page, app_store  # noqa: E402
from plotly_json import by_title  # noqa: E402
from sinkviz.engine import capture  # noqa: E402
from sinkviz.flow import models, progress  # noqa: E402
from sinkviz.flow.analysis import Settings, analyze_many  # noqa: E402
from sinkviz.numbers.metrics import layer_sinks  # noqa: E402
from sinkviz.output import figures as figure_builders  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def page_store(tmp_path_factory, default_model_dir):
    with app_store(tmp_path_factory.mktemp("progress-page-store")):
        yield


@pytest.fixture
def ticking_clock(monkeypatch):
    """progress.clock: 0, 2, 4, ... seconds, two more at every reading."""
    times = iter(range(0, 20_000, 2))
    monkeypatch.setattr(progress, "clock", lambda: float(next(times)))


@pytest.fixture
def shown_lines(monkeypatch) -> list[str]:
    """Every label a status box and every text a progress bar shows, in order."""
    lines, update, bar = [], StatusContainer.update, DeltaGenerator.progress

    def status_update(self, *, label=None, **kwargs):
        lines.append(label)
        return update(self, label=label, **kwargs)

    def bar_progress(self, value, text=None, **kwargs):
        lines.append(text)
        return bar(self, value, text, **kwargs)
    monkeypatch.setattr(StatusContainer, "update", status_update)
    monkeypatch.setattr(DeltaGenerator, "progress", bar_progress)
    return lines


def unique(text: str) -> str:
    return f"{text} ({os.urandom(3).hex()})"


def test_analyze_shows_each_layer_and_the_time_left(ticking_clock, shown_lines):
    at = analyze_page(unique("You are a helpful assistant. Answer concisely."))
    layers = [line for line in shown_lines if line.startswith("forward pass · ")]
    assert layers == [f"forward pass · layer {k}/30 · ~{2 * (30 - k)} s left …" for k in range(1, 30)] + \
        ["forward pass · layer 30/30 …"]                        # 2 s a layer on the fake clock
    assert shown_lines[:4] == ["looking up the store …", "loading model …", "tokenizing …", "forward pass …"]
    assert shown_lines[-2] == "saving …" and shown_lines[-1].startswith("done (computed): looking up the store ")
    assert by_title(at, "Attention on the first 3 tokens")


def test_sweep_page_shows_lengths_and_layers_and_one_unit(ticking_clock, shown_lines):
    from streamlit.testing.v1 import AppTest
    from conftest import APP
    from sinkviz.flow.sweep import run_sweep, shipped_text
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("pages/sweep.py").run()
    at.number_input(key="sw_max").set_value(300)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert shown_lines[0] == "length 1/2 (256 tokens)"                      # then every layer of each length
    assert shown_lines[1] == "length 1/2 (256 tokens) · layer 1/30 · ~4 min left"   # 4 s for 1/30 of 256/556
    assert shown_lines[31] == "length 2/2 (300 tokens) · ~1 min left"
    assert shown_lines[-2] == "length 2/2 (300 tokens) · layer 30/30"
    assert len(shown_lines) == 2 * 31 + 1 and shown_lines[-1].startswith("done: 2 lengths")
    points = run_sweep(shipped_text(), Settings(), max_tokens=300)
    mass = np.stack([p.sink_mass[:, 2] for p in points])
    table = at.dataframe[0].value
    np.testing.assert_allclose(table["mean sink mass"], mass.mean(axis=1), rtol=1e-6)
    config = json.loads(at.dataframe[0].proto.columns)
    assert {config[c]["type_config"]["format"] for c in ("mean sink mass", "max sink mass")} == {"percent"}
    fig = by_title(at, "Sink mass (first 3 tokens) as the context grows")
    assert fig["layout"]["yaxis"]["tickformat"] == ".0%"


def test_tab_switches_build_no_figure_twice(monkeypatch):
    built = []
    for name in ("sink_bars", "attention_heatmap", "all_layers_grid", "position_heatmap", "norm_ratio_lines",
                 "entropy_lines"):
        real = getattr(figure_builders, name)
        monkeypatch.setattr(figure_builders, name,
                            lambda *a, _real=real, _name=name, **k: built.append(_name) or _real(*a, **k))
    at = analyze_page(unique("Use the documents below to answer."))
    for tab in ["Heatmaps", "Position-0 inspector", "Entropy", "Sink mass per layer", "Heatmaps",
                "Position-0 inspector", "Entropy", "Sink mass per layer", "Heatmaps"]:
        at.session_state["an_tab"] = tab
        at.run()
        assert not at.exception
    assert sorted(built) == sorted(["sink_bars", "attention_heatmap", "all_layers_grid", "position_heatmap",
                                    "norm_ratio_lines", "norm_ratio_lines", "entropy_lines"])
    at.toggle(key="an_log").set_value(True).run()       # a new setting builds the figures it changes
    assert sorted(built[7:]) == ["all_layers_grid", "attention_heatmap"]


PROMPTS = [f"Audit prompt {i}: you are a {word} assistant." for i, word in
           enumerate(["helpful", "concise", "careful", "kind", "terse", "formal", "warm", "calm", "exact", "brief",
                      "quiet", "patient", "polite", "clear", "honest", "plain", "gentle", "strict", "calm, warm", "wise"])]


def audit_row_of(prompt: str):
    """The stored analysis of an audited prompt, as the audit kept it (analyze() would capture it
    again for its single heads)."""
    (_, found), = analyze_many([prompt], Settings(), head_maps=False)
    assert found.cached
    return found


def test_audit_stop_keeps_the_rows_done_and_a_rerun_computes_only_the_rest(monkeypatch, ticking_clock, shown_lines):
    """The page stops in the 2nd chunk's forward pass (as a Stop click stops the script at its next
    st call); the 8 rows of the first chunk are stored and shown, and Run audit again captures only
    the other 12."""
    from streamlit.testing.v1 import AppTest
    from conftest import APP
    from sinkviz.flow.store import ResultStore
    captured, real = [], capture.capture_batch

    def batch(model, sequences, *args, **kwargs):
        if len(captured) >= 8 and stopping:
            raise StopException()
        captured.extend(sequences)
        return real(model, sequences, *args, **kwargs)
    monkeypatch.setattr(capture, "capture_batch", batch)
    models.get_model(Settings().model)    # loaded (its load probes with capture()) before capture() is forbidden
    monkeypatch.setattr(capture, "capture", lambda *a, **k: pytest.fail("captured a prompt alone"))
    stopping = True
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("pages/audit.py").run()
    at.text_area(key="au_text").set_value("\n".join(PROMPTS))
    at.toggle(key="au_calibrate").set_value(False)
    at.button[0].click().run()                          # stopped in its second chunk
    assert len(captured) == 8 and "prompt 8/20 · 4 prompts/s · ~3 s left" in shown_lines
    at.run()                                            # the rerun a Stop click makes
    assert not at.exception and not at.error
    assert at.warning[0].value == ("The audit stopped at row 8 of 20. The rows done are in the store: "
                                   "Run audit again to compute only the other 12.")
    shown = at.dataframe[0].value
    assert sorted(shown["row"]) == list(range(1, 9))
    stored = {m["prompt"] for m in ResultStore().metas()}
    assert set(PROMPTS[:8]) <= stored and not stored & set(PROMPTS[8:])
    for _, row in shown.iterrows():
        mass = layer_sinks(audit_row_of(PROMPTS[row["row"] - 1]).stats, 3).sink_mass
        assert row["sink mass (worst layer)"] == pytest.approx(mass[2:].max())
    stopping, captured[:] = False, []
    at.button[0].click().run()
    assert not at.exception and not at.warning
    assert sorted(tuple(s) for s in captured) == sorted(tuple(audit_row_of(p).tokens.token_ids)
                                                       for p in PROMPTS[8:])   # the missing 12, each once
    assert sorted(at.dataframe[0].value["row"]) == list(range(1, 21))
