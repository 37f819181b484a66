"""Context-length sweep (engine, CLI, page) and the memory guard."""

import json

import numpy as np
import pytest

from conftest import random_words
from sinkviz.engine import capture
from sinkviz.flow import memory
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.cli import main
from sinkviz.errors import BadPrompt
from sinkviz.flow.models import load_model
from sinkviz.flow.sweep import run_sweep, shipped_text, sweep_lengths


@pytest.mark.parametrize("available,lengths", [(2, [2]), (256, [256]), (257, [256, 257]),
                                               (1701, [256, 512, 1024, 1701]), (100, [100])])
def test_sweep_lengths(available, lengths):
    assert sweep_lengths(available) == lengths


def test_sweep_points_equal_analyses_and_repeat_from_the_store(tiny_models, store, monkeypatch):
    settings = Settings(model=tiny_models["llama-gqa"], map_size=16)
    text = random_words(600)
    points = run_sweep(text, settings, store=store)
    assert [p.n_tokens for p in points] == [256, 512]      # capped at the model's 512-token context
    words = text.split()
    for p in points:
        direct = analyze(" ".join(words[:p.n_tokens - 1]), Settings(model=settings.model, map_size=16,
                                                                     use_template=False), store=store)
        assert direct.cached and direct.key == p.key
        np.testing.assert_array_equal(p.sink_mass, direct.stats.sink_mass.mean(axis=1))
    monkeypatch.setattr(capture, "capture", lambda *a, **k: pytest.fail("recomputed a stored length"))
    again = run_sweep(text, settings, store=store)
    assert all(p.cached for p in again) and [p.key for p in again] == [p.key for p in points]


def test_cli_sweep_json(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(tmp_path / "store"))
    text_file = tmp_path / "text.txt"
    text_file.write_text(random_words(300))
    assert main(["sweep", "--file", str(text_file), "--model", tiny_models["gpt2"], "--json", "--first", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["n_tokens"] for p in out["points"]] == [256, 301]
    first = analyze(" ".join(text_file.read_text().split()[:255]),
                    Settings(model=tiny_models["gpt2"], use_template=False))
    np.testing.assert_allclose(out["points"][0]["sink_mass"], first.stats.sink_mass.mean(axis=1)[:, 0])


def test_sweep_page_plots_the_engine_numbers(app_test):
    from plotly_json import array, by_title
    at = app_test()
    at.switch_page("pages/sweep.py").run()
    at.number_input(key="sw_max").set_value(600)
    at.button[0].click().run()
    assert not at.exception and not at.error
    fig = by_title(at, "Sink mass (first 3 tokens) as the context grows")
    points = run_sweep(shipped_text(), Settings(), max_tokens=600)
    assert all(p.cached for p in points)
    np.testing.assert_allclose(array(fig["data"][0]["x"]), [p.n_tokens for p in points])
    np.testing.assert_allclose(array(fig["data"][5]["y"]), [p.sink_mass[5, 2] for p in points], rtol=1e-6)
    assert at.session_state["last_model_info"] == points[-1].model     # what app.py's sidebar shows


def test_estimate_grows_with_length_and_longest_fit_is_tight():
    shape = memory.Shape(layers=32, hidden=4096, mlp=14336, heads=32, head_dim=128, dtype_bytes=2)
    sizes = [memory.estimate_bytes(shape, n, 128, "cuda") for n in (1024, 8192, 65536)]
    assert sizes == sorted(sizes) and sizes[0] > 0
    budget = 5 * 2**30
    fit = memory.longest_fitting(shape, budget, 128, "cuda")
    assert memory.estimate_bytes(shape, fit, 128, "cuda") <= budget < memory.estimate_bytes(shape, fit + 1, 128, "cuda")


def test_guard_refuses_with_the_longest_length_that_fits(tiny_models, monkeypatch):
    loaded = load_model(tiny_models["llama-gqa"], device="cpu")
    shape = memory.Shape.of(loaded.model)
    free = memory.estimate_bytes(shape, 300, 64, "cpu")        # exactly enough for 300 tokens / 0.9
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(free / memory.HEADROOM) + 1)
    memory.check_fits(loaded.model, 300, 64)
    fit = memory.longest_fitting(shape, int((int(free / memory.HEADROOM) + 1) * memory.HEADROOM), 64, "cpu")
    with pytest.raises(BadPrompt) as info:
        memory.check_fits(loaded.model, 5000, 64)
    assert str(info.value).startswith("a 5,000-token prompt needs about ")
    assert str(info.value).endswith(f"the longest that fits is about {fit:,} tokens")
    assert 300 <= fit < 5000


def test_encoder_sweep_counts_cls_and_sep_and_stops_at_its_context():
    from sinkviz.flow.models import get_model
    from sinkviz.flow.sweep import prefix_prompts, shipped_text
    settings = Settings(model="all-minilm-l6-v2", use_template=False)
    tokenizer = get_model(settings.model).tokenizer
    lengths = [len(tokenizer(p)["input_ids"]) for p in prefix_prompts(shipped_text(), settings)]
    assert lengths == [256, 512]
