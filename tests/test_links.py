"""Links and the landing intro, page by page with AppTest (the browser side: test_e2e_links.py)."""

import os

import numpy as np
import pytest

os.environ["SINKVIZ_WARM"] = "0"
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import APP, app_store  # noqa: E402
from plotly_json import array, by_title, figures  # noqa: E402
from sinkviz.flow.analysis import Settings, analyze  # noqa: E402
from sinkviz.flow.store import ResultStore  # noqa: E402
from sinkviz.output.intro import intro_heatmap, load_intro_example, write_intro_example  # noqa: E402

LONG = "\n\n".join(f"Part {i}: the board asked for the figures of every region by Friday." for i in range(80))


@pytest.fixture(scope="module", autouse=True)
def page_store(tmp_path_factory, default_model_dir):
    with app_store(tmp_path_factory.mktemp("links-store")):
        yield


def test_intro_numbers_are_a_fresh_capture(tmp_path):
    shipped = load_intro_example()
    fresh = write_intro_example(tmp_path / "intro.json")
    assert (shipped.model, shipped.prompt, shipped.tokens, shipped.layer) == (
        fresh.model, fresh.prompt, fresh.tokens, fresh.layer) == (
        "SmolLM2-135M-Instruct", fresh.prompt, fresh.tokens, 24)
    np.testing.assert_allclose(shipped.attention, fresh.attention, atol=1e-4)   # shipped: 4 decimals
    assert shipped.first_token_share == pytest.approx(fresh.first_token_share, abs=1e-4)
    assert shipped.first_token_share == pytest.approx(fresh.attention[1:, 0].mean(), abs=1e-4)


def test_landing_page_draws_the_shipped_intro():
    at = AppTest.from_file(APP, default_timeout=120).run()
    example = load_intro_example()
    chart = by_title(at, f"Layer {example.layer}: where each token's attention goes")
    z = array(chart["data"][0]["z"])
    lower = np.tril_indices_from(z)
    np.testing.assert_array_equal(z[lower], example.attention[lower])
    assert np.isnan(z[np.triu_indices_from(z, k=1)]).all()
    assert chart["data"][0]["x"][0] == "0: Paris"
    assert intro_heatmap(example).data[0].x == tuple(chart["data"][0]["x"])
    intro = " ".join(m.value for m in at.markdown)
    assert f"**{example.first_token_share:.0%}** of their attention to its first word, 'Paris'" in intro


def test_history_opens_a_long_prompt_whole():
    """The link History opens carries the key alone; the prompt box gets the whole prompt back
    from the store (it used to get the URL's first 4,000 characters)."""
    stored = analyze(LONG, Settings(), store=ResultStore())
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("pages/history.py").run()
    table = at.dataframe[0].value
    at.selectbox(key="hist_pick").set_value(int(table.index[table["prompt"] == LONG[:80]][0]))
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert dict(at.query_params) == {"key": stored.key}
    assert at.text_area(key="an_prompt").value == LONG


@pytest.mark.parametrize("key", ["../../etc/passwd", ",", "0" * 32])
def test_a_key_the_store_lacks_is_not_found_and_nothing_runs(key):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(key=key, n="4")
    at.run()
    named = f"the key {key}" if key == "0" * 32 else "the link's key"
    assert [e.value for e in at.error] == [
        f"Not found: this server's result store has no analysis with {named}. The link was made on another "
        "server, or the store was cleared since. The link has no prompt (a prompt over 4,000 characters travels "
        "by key alone): paste it above and press Analyze."]
    assert at.text_area(key="an_prompt").value == "" and at.slider(key="an_first_n").value == 4
    assert [f["layout"]["title"]["text"] for f in figures(at)] == ["Layer 24: where each token's attention goes"]
    assert dict(at.query_params) == {"key": key, "n": "4"}          # the link stays as it came


def test_a_lab_prompt_too_long_for_a_link_is_announced_not_replaced():
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/lab.py").run()
    at.text_area(key="lab_prompt").set_value("word " * 1000).run()             # 5,000 characters
    sent = dict(at.query_params)
    assert (sent["prompt"], sent["cut"]) == ("", "5000")
    receiver = AppTest.from_file(APP, default_timeout=120)
    receiver.query_params.update(sent)
    receiver.switch_page("pages/lab.py").run()
    assert not receiver.exception
    assert [i.value for i in receiver.info] == [
        "The shared experiment's prompt had 5,000 characters, more than a link holds (4,000): paste it below "
        "and press Run scaling to see its result."]
    assert receiver.text_area(key="lab_prompt").value == ""
