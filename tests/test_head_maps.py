"""An audit keeps each layer's head-mean map, not every head's: the rest of its numbers are the
analysis's own, a single head is never drawn from the mean, and Analyze captures the prompt again
when single heads are asked for."""

import os

import numpy as np
import pytest

os.environ["SINKVIZ_WARM"] = "0"
from streamlit.testing.v1 import AppTest  # noqa: E402

from conftest import APP, app_store, random_words  # noqa: E402
from plotly_json import array, figures as page_figures  # noqa: E402
from sinkviz.flow.analysis import Settings, analyze, load_stored  # noqa: E402
from sinkviz.flow.audit import audit_rows  # noqa: E402
from sinkviz.flow.store import ResultStore  # noqa: E402
from sinkviz.output import figures  # noqa: E402

OTHER = ("sink_mass", "entropy", "received", "hidden_norm", "value_norm")


@pytest.fixture
def llama(tiny_models):
    return Settings(model=tiny_models["llama-gqa"], map_size=16, use_template=False)


def test_an_audit_stores_the_head_mean_and_everything_else_whole(llama, store, tmp_path):
    prompts = [random_words(n) for n in (12, 40, 33)]
    rows = list(audit_rows(prompts, llama, store=store))
    full = ResultStore(tmp_path / "full")
    for row, prompt in zip(rows, prompts):
        light = load_stored(store, row.key)
        whole = analyze(prompt, llama, store=full)
        assert whole.key == row.key and whole.stats.head_maps and not light.stats.head_maps
        heads = whole.stats.n_heads
        assert light.stats.maps.shape == (whole.stats.n_layers, 1, *whole.stats.maps.shape[2:]) and heads > 1
        np.testing.assert_allclose(light.stats.maps[:, 0], whole.stats.maps.mean(axis=1), rtol=0, atol=1e-7)
        for name in OTHER:
            np.testing.assert_allclose(getattr(light.stats, name), getattr(whole.stats, name), rtol=0, atol=1e-6)
        np.testing.assert_allclose(figures.layer_map(light.stats, 1), figures.layer_map(whole.stats, 1), atol=1e-7)
        with pytest.raises(ValueError, match="head 0's map was not kept"):
            figures.layer_map(light.stats, 1, head=0)


def test_analyze_captures_an_audited_prompt_again_with_every_head(llama, store):
    prompt = random_words(30)
    (row,) = audit_rows([prompt], llama, store=store)
    again = analyze(prompt, llama, store=store)
    assert again.key == row.key and not again.cached and again.stats.head_maps
    assert load_stored(store, row.key).stats.head_maps          # the row was replaced, same key
    assert analyze(prompt, llama, store=store).cached


def test_analyze_page_offers_single_heads_of_an_audit_row(tmp_path):
    with app_store(tmp_path / "store"):
        prompt = "The quarterly report is due on Friday; summarise the three risks first."
        (row,) = audit_rows([prompt], Settings(use_template=False), store=ResultStore())
        at = AppTest.from_file(APP, default_timeout=300)
        at.session_state["an_tab"] = "Heatmaps"
        at.query_params.update(key=row.key)
        at.run()
        head = at.selectbox(key="an_head_mean")
        assert head.options == ["mean over heads"] and head.disabled
        assert any("keeps each layer's map as the mean over heads only" in i.value for i in at.info)
        mean = big_map(at)
        at.button(key="an_head_maps").click().run()
        assert not at.exception and not at.error
        head = at.selectbox(key="an_head")
        assert len(head.options) == 1 + 9 and not head.disabled        # SmolLM2: 9 heads
        assert load_stored(ResultStore(), row.key).stats.head_maps
        again = big_map(at)
        np.testing.assert_allclose(again, mean, atol=1e-6, equal_nan=True)


def big_map(at) -> np.ndarray:
    """The large heatmap's cells (its title: 'Layer N, mean over heads ...')."""
    (fig,) = [f for f in page_figures(at) if str(f["layout"]["title"]["text"]).startswith("Layer ")
              and "mean over heads" in f["layout"]["title"]["text"]]
    return array(fig["data"][0]["z"])
