"""AppTest: the numbers each page plots are the engine's numbers."""

import os

import numpy as np
import pytest

os.environ["SINKVIZ_WARM"] = "0"
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import APP, analyze_page, app_store  # noqa: E402
from plotly_json import array, by_title, figures, sink_mass_bars  # noqa: E402
from sinkviz.flow.analysis import Settings, analyze  # noqa: E402
from sinkviz.output.figures import layer_map, map_for_display  # noqa: E402
from sinkviz.numbers.metrics import layer_sinks  # noqa: E402
from sinkviz.output.verdict import verdict_layer  # noqa: E402

PROMPT_A = "You are a helpful assistant. Answer concisely."
PROMPT_B = "Assistant: helpful and concise.\nYou are a helpful assistant. Answer concisely."
TIMEOUT = 120


@pytest.fixture(scope="module", autouse=True)
def page_store(tmp_path_factory, default_model_dir):
    with app_store(tmp_path_factory.mktemp("page-store")):
        yield


def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


@pytest.mark.parametrize("first_n", [3, 5])
def test_analyze_bars_equal_engine(first_n):
    at = analyze_page(PROMPT_A, first_n)
    engine = layer_sinks(analyze(PROMPT_A, Settings()).stats, first_n)
    bars = by_title(at, f"Attention on the first {first_n} tokens")
    layers, mass = sink_mass_bars(bars)
    np.testing.assert_allclose(mass, engine.sink_mass, rtol=1e-6)
    np.testing.assert_allclose(layers, np.arange(30))
    baseline = [s for s in bars["layout"]["shapes"] if s.get("line", {}).get("dash") == "dot"][0]
    assert baseline["y0"] == pytest.approx(engine.baseline)
    marks = [t for t in bars["data"] if t["name"] == "> 5x uniform"][0]
    flagged = array(marks["x"]) if marks.get("x") is not None else np.array([])
    np.testing.assert_array_equal(flagged, np.flatnonzero(engine.flagged))


def test_analyze_heatmaps_and_position0_equal_engine():
    at = analyze_page(PROMPT_A, tab="Heatmaps")
    stats = analyze(PROMPT_A, Settings()).stats
    assert not [f for f in figures(at) if "per layer" in f["layout"]["title"]["text"]]  # lazy tabs
    layer = verdict_layer(layer_sinks(stats, 3), stats)                # it opens on the verdict's layer
    assert at.selectbox(key="an_layer").value == layer != 3
    big = by_title(at, f"Layer {layer}, mean over heads")
    np.testing.assert_allclose(array(big["data"][0]["z"]),
                               map_for_display(layer_map(stats, layer), 1, False, False), rtol=1e-6)
    assert big["data"][0]["x"][0] == "0: '&lt;|im_start|&gt;'"   # escaped: Plotly reads <s> as strikethrough
    at.session_state["an_tab"] = "Position-0 inspector"
    at.run()
    pos0 = by_title(at, "Attention received by position 0")
    np.testing.assert_allclose(array(pos0["data"][0]["z"]), stats.received[:, :, 0], rtol=1e-6)
    assert at.metric[1].value == "<|im_start|>" and at.metric[1].delta == "special token"  # no quotes: room


def test_hide_position0_and_log_scale():
    at = analyze_page(PROMPT_A, tab="Heatmaps")
    at.toggle(key="an_hide").set_value(True)
    at.toggle(key="an_log").set_value(True).run()
    stats = analyze(PROMPT_A, Settings()).stats
    at.selectbox(key="an_layer").set_value(3).run()
    big = by_title(at, "Layer 3, mean over heads")
    z = array(big["data"][0]["z"])
    assert np.isnan(z[:, 0]).all()
    np.testing.assert_allclose(z, map_for_display(layer_map(stats, 3), 1, True, True), rtol=1e-6)


def test_bad_prompt_shows_message_and_page_keeps_working():
    at = analyze_page("   ")
    assert [e.value for e in at.error] == ["the prompt is empty"]
    at.text_area(key="an_prompt").set_value(PROMPT_B)
    at.button[0].click().run()
    assert not at.error and by_title(at, "Attention on the first 3 tokens")


def test_shared_url_reproduces_the_analysis():
    at = app()
    at.query_params["prompt"] = PROMPT_B
    at.query_params["n"] = "2"
    at.query_params["template"] = "0"
    at.run()
    assert not at.exception
    result = analyze(PROMPT_B, Settings(use_template=False))
    engine = layer_sinks(result.stats, 2)
    bars = by_title(at, "Attention on the first 2 tokens")
    np.testing.assert_allclose(sink_mass_bars(bars)[1], engine.sink_mass, rtol=1e-6)
    assert at.metric[1].value == repr(result.tokens.tokens[0]) == "'Ass'"


def test_settings_survive_streamlit_dropping_widget_state():
    """Streamlit drops widget keys the browser did not report when it sees a page change; the
    settings must come back from the URL, not fall to the widgets' minimum (what the load test
    caught: map=32, n=1, template off)."""
    at = app()
    at.query_params.update(prompt=PROMPT_A, n="5", map="256", template="1", system="Be brief.")
    at.session_state["an_ready"] = True  # a later run of this session whose widget keys were dropped
    at.run()
    at.button[0].click().run()
    assert (at.slider(key="an_first_n").value, at.select_slider(key="an_map").value,
            at.toggle(key="an_template").value, at.text_input(key="an_system").value,
            at.text_area(key="an_prompt").value) == (5, 256, True, "Be brief.", PROMPT_A)
    assert at.query_params["key"] == analyze(PROMPT_A, Settings(system="Be brief.", map_size=256)).key


def test_embedded_encoder_from_the_picker():
    from sinkviz.flow.embedded import EMBEDDED
    from sinkviz.numbers.metrics import uniform_entropy
    at = app()
    at.run()
    at.selectbox(key="an_model_choice").set_value(EMBEDDED["all-minilm-l6-v2"].label)
    at.text_area(key="an_prompt").set_value(PROMPT_A)
    at.session_state["an_tab"] = "Entropy"
    at.button[0].click().run()
    assert not at.exception and not at.error
    result = analyze(PROMPT_A, Settings(model="all-minilm-l6-v2"))
    assert (at.metric[0].value, at.metric[1].value) == (str(result.stats.n_tokens), "[CLS]")
    uniform = by_title(at, "Attention entropy per layer (nats, mean over heads and queries)")["layout"]["shapes"]
    assert uniform[0]["y0"] == pytest.approx(uniform_entropy(result.stats.n_tokens, causal=False))


def test_compare_plots_every_variant_and_the_difference():
    """Defaults: the chat template on, the reading on each variant's own text (not position 0)."""
    from sinkviz.numbers.readings import compare_readings
    at = app()
    at.switch_page("pages/compare.py").run()
    at.button[0].click().run()
    assert not at.exception
    results = [analyze(p, Settings()) for p in (PROMPT_A, PROMPT_B)]
    a, b = compare_readings(results, 3, "user")
    lines = by_title(at, "Your text's first 3 tokens per layer")
    np.testing.assert_allclose(array(lines["data"][0]["y"]), a.per_layer, rtol=1e-6)
    np.testing.assert_allclose(array(lines["data"][1]["y"]), b.per_layer, rtol=1e-6)
    diff = by_title(at, "Difference from A")
    np.testing.assert_allclose(array(diff["data"][0]["y"]), b.per_layer - a.per_layer, atol=1e-6)
    assert len([f for f in figures(at) if "layer 3" in str(f["layout"]["title"]["text"])]) == 2
    first, second = sorted([a, b], key=lambda v: -v.mean)
    assert [(m.label, m.value) for m in at.metric] == [(f"#1 · Variant {first.label}", f"{first.mean:.1%}"),
                                                       (f"#2 · Variant {second.label}", f"{second.mean:.1%}")]
    assert at.metric[[first.label, second.label].index("B")].delta == f"{100 * b.diff:+.1f} pts · {b.ratio:.2f}× A"
    assert (a.opening, b.opening) == ("'You' · '␣are' · '␣a'", "'Ass' · 'istant' · ':'")  # each variant's own text
    assert "Position 0 is the template's '<|im_start|>'" in at.info[0].value


def test_history_lists_the_store():
    prompt = f"History check {os.urandom(4).hex()}: {PROMPT_A}"
    analyze_page(prompt)
    at = app()
    at.switch_page("pages/history.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    row = table[table["prompt"] == prompt].iloc[0]
    mass = layer_sinks(analyze(prompt, Settings()).stats, 3).sink_mass
    assert row["worst layer (N=3)"] == int(mass.argmax())
    assert row["its sink mass"] == pytest.approx(mass.max())


def test_learned_sink_is_plotted_as_captured(sink_models):
    """gpt-oss's learned sink: its own bars beside the first-N mass, its own heatmap column,
    a sentence in the verdict; every plotted number equals the engine's."""
    from conftest import random_words
    prompt, folder = random_words(40), sink_models["gpt-oss"]
    at = app()
    at.query_params.update(prompt=prompt, model=folder, template="0")
    at.session_state["an_tab"] = "Heatmaps"
    at.run()
    assert not at.exception and not at.error
    result = analyze(prompt, Settings(model=folder, use_template=False))
    stats = result.stats
    assert "learned sink, a softmax column no token owns" in at.info[0].value
    layer = verdict_layer(layer_sinks(stats, 3), stats)
    big = by_title(at, f"Layer {layer}, mean over heads")
    assert big["data"][0]["x"][-1] == "learned sink" == big["layout"]["xaxis"]["tickvals"][-1]
    np.testing.assert_allclose(array(big["data"][0]["z"])[:, -1], stats.learned_sink_map[layer].mean(0), rtol=1e-6)
    np.testing.assert_allclose(array(big["data"][0]["z"])[:, :-1],
                               map_for_display(layer_map(stats, layer), 1, False, False), rtol=1e-6)
    at.session_state["an_tab"] = "Sink mass per layer"
    at.run()
    bars = by_title(at, "Attention on the first 3 tokens")
    learned = [t for t in bars["data"] if t.get("name") == "learned sink (no token)"][0]
    np.testing.assert_allclose(array(learned["y"]), stats.learned_sink.mean(1), rtol=1e-6)
    assert stats.learned_sink.mean() > 0.05
    note = "This model's tokenizer has no chat template: the prompt was analysed as raw text"
    assert not any(c.value.startswith(note) for c in at.caption)      # the switch is off in this link
    at.toggle(key="an_template").set_value(True)                        # on: nothing to wrap with, and said so
    next(b for b in at.button if b.label == "Analyze").click()
    at.run()
    assert not at.exception and not at.error
    assert any(c.value.startswith(note) for c in at.caption)


def test_method_page_states_the_formulas():
    at = app()
    at.switch_page("pages/method.py").run()
    text = " ".join(m.value for m in at.markdown)
    assert "Sink mass" in text and "Uniform baseline" in text and "0.3" in text
    assert "Learned sink" in text and "Soft caps" in text


def test_history_reopens_in_analyze():
    prompt = f"Reopen check {os.urandom(4).hex()}: {PROMPT_A}"
    analyze_page(prompt)
    at = app()
    at.switch_page("pages/history.py").run()
    table = at.dataframe[0].value
    at.selectbox(key="hist_pick").set_value(int(table.index[table["prompt"] == prompt][0]))
    at.button[0].click().run()
    assert not at.exception
    assert at.query_params["key"] == analyze(prompt, Settings()).key
    mass = layer_sinks(analyze(prompt, Settings()).stats, 3).sink_mass
    np.testing.assert_allclose(sink_mass_bars(by_title(at, "Attention on the first 3"))[1], mass, rtol=1e-6)
    assert "from the result store" in " ".join(c.value for c in at.caption)


def test_shared_url_of_a_stored_result_names_its_model_in_the_sidebar():
    from sinkviz.flow.store import ResultStore
    stored = analyze(PROMPT_B, Settings(model="all-minilm-l6-v2"), store=ResultStore())
    at = app()
    at.query_params.update(key=stored.key, model="all-minilm-l6-v2")
    at.run()
    assert not at.exception and "from the result store" in " ".join(c.value for c in at.caption)
    assert stored.model.label in at.sidebar.markdown[-1].value


def test_failed_model_load_leaves_the_page_usable():
    at = app().run()
    at.selectbox(key="an_model_choice").set_value("Other: a Hugging Face id or a local folder").run()
    at.text_input(key="an_model_text").set_value("./no/such/model")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["no model folder at ./no/such/model"]
    at.selectbox(key="an_model_choice").set_value("SmolLM2-135M-Instruct (embedded, offline)")
    at.button[0].click().run()
    assert not at.error and by_title(at, "Attention on the first 3 tokens")


def test_megabyte_paste_is_refused_with_a_message():
    at = analyze_page("x" * 1_000_001)
    assert [e.value for e in at.error] == ["the prompt has 1,000,001 characters; the limit is 1,000,000"]


def test_out_of_memory_shows_a_message_and_the_next_run_works(monkeypatch):
    import torch

    from sinkviz.engine import capture
    real = capture.capture
    monkeypatch.setattr(capture, "capture", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    prompt = f"OOM check {os.urandom(4).hex()}"
    at = analyze_page(prompt)
    assert [e.value for e in at.error] == [
        f"cpu ran out of memory on a {len(analyze_tokens(prompt))}-token prompt; memory was released, try a shorter prompt"]
    monkeypatch.setattr(capture, "capture", real)
    at.button[0].click().run()
    assert not at.error and by_title(at, "Attention on the first 3 tokens")


def analyze_tokens(prompt: str) -> tuple[int, ...]:
    from sinkviz.flow.models import get_model
    from sinkviz.flow.prompts import tokenize
    return tokenize(get_model("smollm2-135m-instruct").tokenizer, prompt).token_ids
